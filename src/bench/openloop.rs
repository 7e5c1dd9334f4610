//! Open-loop load: cross-shard transfers sent at a fixed offered rate, request `i` at
//! `t0 + i / rate` whatever the answers, with at most `max_in_flight` requests waiting
//! for an answer. A request due while that many are in flight is not sent and counted
//! as "client saturated", so a slow service cannot quietly lower the offered rate.
use std::{sync::Arc, time::Duration};

use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::{sync::Semaphore, time::Instant};
use uuid::Uuid;

use super::load::{error_key, histogram, micros, Errors, Target, REQUEST_TIMEOUT};

/// When each request of a step is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    /// The requests whose due time `i / rate` falls inside `duration`.
    pub fn new(rate: f64, duration: Duration) -> Self {
        // Request i is due at i / rate < duration, so there are ceil(rate × duration);
        // the epsilon keeps 0.3/s × 10 s (3.0000000000000004) from becoming 4.
        let total = (rate * duration.as_secs_f64() - 1e-9).ceil().max(0.0) as u64;
        Self { rate, total }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Offset of request `i` from the step's start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// What one open-loop step saw. Latencies are in microseconds, from the moment the
/// request was actually sent.
pub struct OpenRun {
    pub rate: f64,
    pub duration: Duration,
    pub scheduled: u64,
    pub sent: u64,
    /// Due while `max_in_flight` requests were waiting: not sent.
    pub saturated: u64,
    /// 202: the transfers to follow in the shards.
    pub accepted: Vec<Uuid>,
    pub accepted_latency: Histogram<u64>,
    /// Every 503, whatever its code; `errors` says which codes.
    pub refused: u64,
    pub refused_latency: Histogram<u64>,
    pub refused_with_retry_after: u64,
    /// Every answer other than 202, by `error_key`, and transport errors.
    pub errors: Errors,
    /// How late requests were sent against their due time (client-side lag).
    pub send_lag: Histogram<u64>,
}

impl OpenRun {
    /// Adds a later window's figures at the same rate.
    pub fn append(&mut self, other: OpenRun) -> anyhow::Result<()> {
        self.duration += other.duration;
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.saturated += other.saturated;
        self.accepted.extend(other.accepted);
        self.accepted_latency.add(&other.accepted_latency)?;
        self.refused += other.refused;
        self.refused_latency.add(&other.refused_latency)?;
        self.refused_with_retry_after += other.refused_with_retry_after;
        self.errors.merge(other.errors);
        self.send_lag.add(&other.send_lag)?;
        Ok(())
    }

    /// Answers other than 202 and 503.
    pub fn other_errors(&self) -> u64 {
        self.errors.total() - self.refused
    }
}

enum Reply {
    Accepted(Uuid),
    /// A 503, whatever its code.
    Refused {
        key: String,
        body: String,
        retry_after: bool,
    },
    Failed {
        key: String,
        body: String,
    },
}

/// Sends cross-shard transfers over random `pairs` at `rate` per second for `duration`
/// and waits for every answer.
pub async fn run(
    target: &Arc<Target>,
    pairs: &Arc<Vec<(usize, usize)>>,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> anyhow::Result<OpenRun> {
    let schedule = Schedule::new(rate, duration);
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let (replies, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut rng = StdRng::from_entropy();
    let mut run = OpenRun::new(rate, duration, schedule.total())?;
    let start = Instant::now();
    for i in 0..schedule.total() {
        let due = start + schedule.due(i);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            run.saturated += 1;
            continue;
        };
        run.sent += 1;
        run.send_lag.saturating_record(micros(Instant::now().saturating_duration_since(due)));
        let (from, to) = pairs[rng.gen_range(0..pairs.len())];
        let (target, http, replies) = (target.clone(), http.clone(), replies.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let reply = match target.transfer(&http, from, to).await {
                Err(e) => Reply::Failed { key: "transport".into(), body: format!("{:#}", anyhow::Error::from(e)) },
                Ok(a) if a.status == StatusCode::ACCEPTED => accepted_id(a.body),
                Ok(a) if a.status == StatusCode::SERVICE_UNAVAILABLE => {
                    Reply::Refused { key: error_key(a.status, &a.body), body: a.body, retry_after: a.retry_after }
                }
                Ok(a) => Reply::Failed { key: error_key(a.status, &a.body), body: a.body },
            };
            let _ = replies.send((reply, sent.elapsed()));
            drop(permit);
        });
    }
    drop(replies);
    while let Some((reply, latency)) = received.recv().await {
        run.record(reply, latency);
    }
    Ok(run)
}

fn accepted_id(body: String) -> Reply {
    let id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("transfer_id").and_then(|t| t.as_str()).and_then(|t| Uuid::try_parse(t).ok()));
    match id {
        Some(id) => Reply::Accepted(id),
        None => Reply::Failed { key: "202 without transfer_id".into(), body },
    }
}

impl OpenRun {
    fn new(rate: f64, duration: Duration, scheduled: u64) -> anyhow::Result<Self> {
        Ok(Self {
            rate,
            duration,
            scheduled,
            sent: 0,
            saturated: 0,
            accepted: Vec::new(),
            accepted_latency: histogram()?,
            refused: 0,
            refused_latency: histogram()?,
            refused_with_retry_after: 0,
            errors: Errors::default(),
            send_lag: histogram()?,
        })
    }

    fn record(&mut self, reply: Reply, latency: Duration) {
        match reply {
            Reply::Accepted(id) => {
                self.accepted.push(id);
                self.accepted_latency.saturating_record(micros(latency));
            }
            Reply::Refused { key, body, retry_after } => {
                self.refused += 1;
                self.refused_latency.saturating_record(micros(latency));
                self.refused_with_retry_after += u64::from(retry_after);
                self.errors.add(key, &body);
            }
            Reply::Failed { key, body } => self.errors.add(key, &body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_sends_rate_times_duration_requests_evenly_spaced() {
        let s = Schedule::new(200.0, Duration::from_secs(10));
        assert_eq!(s.total(), 2000);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(5));
        assert_eq!(s.due(1999), Duration::from_millis(9995));
        // Every request is due inside the step.
        assert!(s.due(s.total() - 1) < Duration::from_secs(10));
    }

    #[test]
    fn fractional_rates_and_durations_round_up_to_whole_requests() {
        assert_eq!(Schedule::new(10.0, Duration::from_secs(1)).total(), 10);
        assert_eq!(Schedule::new(0.3, Duration::from_secs(10)).total(), 3);
        assert_eq!(Schedule::new(2.5, Duration::from_millis(1500)).total(), 4);
        let s = Schedule::new(3.0, Duration::from_secs(1));
        assert_eq!(s.due(2), Duration::from_secs_f64(2.0 / 3.0));
    }

    #[test]
    fn replies_are_counted_by_kind() {
        let mut run = OpenRun::new(1.0, Duration::from_secs(1), 4).expect("histograms");
        let id = Uuid::new_v4();
        let accepted = accepted_id(format!(r#"{{"transfer_id":"{id}","status":"pending"}}"#));
        let refused = |key: &str, retry_after| Reply::Refused { key: key.into(), body: "{}".into(), retry_after };
        let ms = Duration::from_millis;
        run.record(accepted, ms(5));
        run.record(refused("503 overloaded", true), ms(1));
        run.record(refused("503 busy", false), ms(2));
        run.record(accepted_id("{}".into()), ms(3));
        run.record(Reply::Failed { key: "transport".into(), body: "reset".into() }, ms(30));
        assert_eq!(run.accepted, vec![id]);
        assert_eq!((run.refused, run.refused_with_retry_after, run.refused_latency.len()), (2, 1, 2));
        assert_eq!(run.errors.counts.get("503 overloaded"), Some(&1));
        assert_eq!(run.errors.counts.get("202 without transfer_id"), Some(&1));
        assert_eq!(run.other_errors(), 2);
    }
}
