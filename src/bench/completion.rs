//! Completion of accepted cross-shard transfers, read from the sender's shard: the
//! service's own `created_at` → `completed_at`, not client polling. Once a step's
//! requests are answered, each shard is asked about the transfers still in flight, one
//! query per shard at most every `POLL_EVERY`, until every transfer is final or the
//! deadline passes.
use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use uuid::Uuid;

use super::load::histogram;
use crate::{
    domain::{RoutableId, SenderState},
    sharding::Router,
};

const POLL_EVERY: Duration = Duration::from_millis(200);

/// What became of a step's accepted transfers. Latencies are in microseconds.
pub struct Completion {
    /// `completed_at - created_at` of the completed ones.
    pub latency: Histogram<u64>,
    pub completed: u64,
    /// Cancelled, by `reason`.
    pub cancelled: BTreeMap<String, u64>,
    /// Still `trying`/`confirming` at the deadline, or not found.
    pub unfinished: u64,
    /// How long after the last answer every transfer was final (or the deadline).
    pub settle: Duration,
    pub queries: u64,
}

impl Completion {
    pub fn cancelled_total(&self) -> u64 {
        self.cancelled.values().sum()
    }
}

/// Follows `ids` until each is completed or cancelled, or `deadline` passes.
pub async fn settle(router: &Router, ids: &[Uuid], deadline: Duration) -> anyhow::Result<Completion> {
    let started = Instant::now();
    let mut pending: Vec<Vec<Uuid>> = vec![Vec::new(); router.shards().len()];
    let mut done = Completion {
        latency: histogram()?,
        completed: 0,
        cancelled: BTreeMap::new(),
        unfinished: 0,
        settle: Duration::ZERO,
        queries: 0,
    };
    for &id in ids {
        match RoutableId::from_uuid(id).and_then(|r| router.for_id(&r).ok()) {
            Some(shard) => pending[shard.index].push(id),
            None => done.unfinished += 1,
        }
    }
    while pending.iter().any(|p| !p.is_empty()) {
        let round = Instant::now();
        let shards = router.shards();
        let reads = shards.iter().zip(&pending).filter(|(_, p)| !p.is_empty()).map(|(shard, ids)| async move {
            let client = shard.client().await?;
            let rows = client
                .query(
                    "SELECT transfer_id, state, reason, created_at, completed_at
                     FROM transfers WHERE transfer_id = ANY($1)",
                    &[ids],
                )
                .await
                .with_context(|| format!("reading transfers on {}", shard.name))?;
            anyhow::Ok((shard.index, rows))
        });
        for (index, rows) in futures::future::try_join_all(reads).await? {
            done.queries += 1;
            let mut finished = HashSet::new();
            for row in rows {
                let id: Uuid = row.try_get(0)?;
                let state: String = row.try_get(1)?;
                let outcome = match SenderState::parse(&state) {
                    Some(SenderState::Completed) => {
                        let created: DateTime<Utc> = row.try_get(3)?;
                        let completed: Option<DateTime<Utc>> = row.try_get(4)?;
                        Outcome::Completed(completion_micros(created, completed))
                    }
                    Some(SenderState::Cancelled) => Outcome::Cancelled(row.try_get::<_, Option<String>>(2)?),
                    _ => continue,
                };
                done.record(outcome);
                finished.insert(id);
            }
            pending[index].retain(|id| !finished.contains(id));
        }
        if started.elapsed() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY.saturating_sub(round.elapsed())).await;
    }
    done.unfinished += pending.iter().map(|p| p.len() as u64).sum::<u64>();
    done.settle = started.elapsed();
    Ok(done)
}

enum Outcome {
    Completed(u64),
    Cancelled(Option<String>),
}

impl Completion {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed(micros) => {
                self.completed += 1;
                self.latency.saturating_record(micros);
            }
            Outcome::Cancelled(reason) => {
                *self.cancelled.entry(reason.unwrap_or_else(|| "none".into())).or_default() += 1;
            }
        }
    }
}

/// `completed_at - created_at` in microseconds; a completed row without `completed_at`
/// (which the service never writes) counts as 0 rather than failing the run.
fn completion_micros(created: DateTime<Utc>, completed: Option<DateTime<Utc>>) -> u64 {
    completed.and_then(|c| (c - created).num_microseconds()).map(|m| u64::try_from(m).unwrap_or(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_time_is_completed_at_minus_created_at() {
        let created = DateTime::parse_from_rfc3339("2026-11-21T14:00:00.100000Z").expect("time").with_timezone(&Utc);
        let completed = DateTime::parse_from_rfc3339("2026-11-21T14:00:01.350250Z").expect("time").with_timezone(&Utc);
        assert_eq!(completion_micros(created, Some(completed)), 1_250_250);
        assert_eq!(completion_micros(created, None), 0);
        assert_eq!(completion_micros(completed, Some(created)), 0);
    }
}
