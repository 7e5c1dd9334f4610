//! Admission control for cross-shard transfers: a transfer accepted with 202 must not
//! be cancelled merely because the service queued it too long, so when a sender
//! shard's backlog passes a bound, new cross-shard transfers from that shard are
//! refused (503 `overloaded`, not stored under the Idempotency-Key) instead.
//!
//! The backlog is read from the shard itself, so every instance sees the same figure:
//! a sampler per shard counts the transfers in flight (`trying` or `confirming`) and the
//! age of the oldest unpublished outbox row every `admission_sample_ms`. To each sample
//! this instance adds the transfers it admitted that are not committed yet, and those
//! that committed since the sample started (the sample may not have seen them), so a
//! burst cannot overshoot the bound by more than what other instances admit meanwhile.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{config::TransferSettings, domain::transfer_state::states_sql, sharding::Shard, storage::Cached};

/// Why a cross-shard transfer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overloaded {
    pub retry_after: Duration,
    pub why: String,
}

#[derive(Default)]
struct Backlog {
    /// The estimate the bound is checked against.
    in_flight: AtomicU64,
    /// Age of the oldest outbox row at the last sample, in milliseconds.
    outbox_age_ms: AtomicU64,
    /// Admitted here, request still running (not visible to a sample).
    pending: AtomicU64,
    /// Admitted here and committed, ever (to tell which committed since a sample began).
    committed: AtomicU64,
}

/// The bounds and the latest backlog of every shard.
pub struct Admission {
    max_in_flight: u64,
    max_outbox_age_ms: u64,
    retry_after: Duration,
    shards: Vec<Backlog>,
}

impl Admission {
    pub fn new(settings: &TransferSettings, shards: usize) -> Self {
        Self {
            max_in_flight: settings.admission_max_in_flight,
            max_outbox_age_ms: settings.admission_max_outbox_age_ms,
            retry_after: Duration::from_secs(settings.admission_retry_after_secs.max(1)),
            shards: (0..shards).map(|_| Backlog::default()).collect(),
        }
    }

    /// Admits one cross-shard transfer from `shard`, or says why not. The place is held
    /// until the returned guard is finished (or dropped: a request that ends early, e.g.
    /// its client went away, committed nothing and frees its place).
    pub fn admit(&self, shard: usize) -> Result<Admitted<'_>, Overloaded> {
        let admitted = Admitted { admission: self, shard, finished: false };
        let Some(backlog) = self.shards.get(shard) else { return Ok(admitted) };
        let in_flight = backlog.in_flight.load(Ordering::Relaxed);
        let age = backlog.outbox_age_ms.load(Ordering::Relaxed);
        let why = if self.max_in_flight > 0 && in_flight >= self.max_in_flight {
            format!("{in_flight} cross-shard transfers in flight on the sender's shard (bound {})", self.max_in_flight)
        } else if self.max_outbox_age_ms > 0 && age >= self.max_outbox_age_ms {
            format!("stage messages wait {age} ms to be published (bound {} ms)", self.max_outbox_age_ms)
        } else {
            backlog.in_flight.fetch_add(1, Ordering::Relaxed);
            backlog.pending.fetch_add(1, Ordering::Relaxed);
            return Ok(admitted);
        };
        Err(Overloaded { retry_after: self.retry_after, why })
    }

    /// The request of an admitted transfer is over: it committed a new transfer, or
    /// not (refused, replayed, failed).
    fn finish(&self, shard: usize, committed: bool) {
        if let Some(backlog) = self.shards.get(shard) {
            let _ = backlog.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if committed {
                backlog.committed.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = backlog.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
    }

    /// Whether a transfer admitted here is still running or committed since
    /// `committed_before` (the sampler of an idle shard then samples at once).
    fn active_since(&self, shard: usize, committed_before: u64) -> bool {
        self.shards.get(shard).is_some_and(|b| {
            b.pending.load(Ordering::Relaxed) > 0 || b.committed.load(Ordering::Relaxed) != committed_before
        })
    }

    fn committed(&self, shard: usize) -> u64 {
        self.shards.get(shard).map_or(0, |b| b.committed.load(Ordering::Relaxed))
    }

    /// A sample whose query began when this instance had committed `committed_before`.
    fn record(&self, shard: usize, in_flight: u64, outbox_age_ms: u64, committed_before: u64) {
        if let Some(backlog) = self.shards.get(shard) {
            let unseen = backlog.pending.load(Ordering::Relaxed)
                + backlog.committed.load(Ordering::Relaxed).saturating_sub(committed_before);
            backlog.in_flight.store(in_flight + unseen, Ordering::Relaxed);
            backlog.outbox_age_ms.store(outbox_age_ms, Ordering::Relaxed);
        }
    }
}

/// A place taken by `Admission::admit`, given back by `finish` or on drop.
pub struct Admitted<'a> {
    admission: &'a Admission,
    shard: usize,
    finished: bool,
}

impl Admitted<'_> {
    /// The request is over: it committed a new transfer, or not.
    pub fn finish(mut self, committed: bool) {
        self.finished = true;
        self.admission.finish(self.shard, committed);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.admission.finish(self.shard, false);
        }
    }
}

/// How often the backlog of an idle shard (nothing in flight, no stage message
/// waiting) is sampled: a quiet cluster should stay quiet (ten queries a second per
/// shard and instance were a third of an idle server's CPU). A transfer admitted here
/// ends the wait at once; one admitted by another instance is seen at the next sample,
/// which the bound tolerates as it tolerates the interval's staleness.
const IDLE_SAMPLE: Duration = Duration::from_secs(1);

/// Samples one shard's backlog until shutdown.
pub struct Sampler {
    pub admission: Arc<Admission>,
    pub shard: Arc<Shard>,
    pub interval: Duration,
}

impl Sampler {
    #[tracing::instrument(name = "admission", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let committed_before = self.admission.committed(self.shard.index);
            let idle = match self.sample().await {
                Ok((in_flight, age)) => {
                    self.admission.record(self.shard.index, in_flight, age, committed_before);
                    in_flight == 0 && age == 0
                }
                Err(e) => {
                    tracing::debug!(error = %e, "backlog sample failed");
                    false
                }
            };
            // An idle shard is sampled again after IDLE_SAMPLE, or as soon as this
            // instance admits a transfer on it; a busy one every `interval`.
            let mut waited = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = shutdown.cancelled() => return,
                }
                waited += self.interval;
                if !idle || waited >= IDLE_SAMPLE || self.admission.active_since(self.shard.index, committed_before) {
                    break;
                }
            }
        }
    }

    async fn sample(&self) -> anyhow::Result<(u64, u64)> {
        let client = self.shard.client().await?;
        let row = client
            .cached_query_one(
                // Literals, so the count can use the partial index `transfers_to_redrive`
                // (`domain::transfer_state`).
                concat!(
                    "SELECT (SELECT count(*) FROM transfers WHERE state IN ",
                    states_sql!(Sender::Trying, Sender::Confirming),
                    "), (SELECT coalesce(extract(epoch FROM now() - min(created_at)) * 1000, 0)::bigint FROM outbox)"
                ),
                &[],
            )
            .await?;
        let (in_flight, age): (i64, i64) = (row.get(0), row.get(1));
        Ok((in_flight.max(0) as u64, age.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_in_flight: u64, max_age: u64) -> Admission {
        let settings = TransferSettings {
            admission_max_in_flight: max_in_flight,
            admission_max_outbox_age_ms: max_age,
            ..TransferSettings::default()
        };
        Admission::new(&settings, 2)
    }

    #[test]
    fn refuses_past_the_in_flight_bound_counting_its_own_admissions() {
        let a = admission(3, 0);
        a.record(0, 1, 0, 0);
        let first = a.admit(0).expect("room for a second");
        let _second = a.admit(0).expect("room for a third");
        let refused = a.admit(0).err().expect("third is over the bound");
        assert!(refused.why.contains("in flight"), "{}", refused.why);
        // The other shard has its own backlog.
        assert!(a.admit(1).is_ok());
        // A request that committed nothing frees its place at once.
        first.finish(false);
        let again = a.admit(0).expect("room again");
        // So does one that ended without finishing (its client went away).
        drop(again);
        assert!(a.admit(0).is_ok());
    }

    #[test]
    fn a_sample_that_missed_a_commit_still_counts_it() {
        let a = admission(1, 0);
        a.record(0, 0, 0, a.committed(0));
        let admitted = a.admit(0).expect("room");
        // A sample that began before the commit and saw nothing...
        let before = a.committed(0);
        admitted.finish(true);
        a.record(0, 0, 0, before);
        assert!(a.admit(0).is_err(), "the committed transfer is still counted");
        // ...and the next one sees it in the table.
        a.record(0, 1, 0, a.committed(0));
        assert!(a.admit(0).is_err());
        a.record(0, 0, 0, a.committed(0));
        assert!(a.admit(0).is_ok(), "room once it is no longer in flight");
    }

    #[test]
    fn refuses_when_the_outbox_lags_and_zero_disables_a_bound() {
        let a = admission(0, 500);
        a.record(0, 1_000_000, 499, 0);
        assert!(a.admit(0).is_ok(), "no in-flight bound when it is 0");
        a.record(0, 0, 500, 0);
        assert_eq!(a.admit(0).err().expect("outbox too old").retry_after, Duration::from_secs(1));
    }
}
