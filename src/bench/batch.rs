//! The batch phase: closed-loop clients, each sending `POST /v1/transfers/batch` with
//! `size` same-shard transfers of one sender (its own token) to receivers on its shard,
//! and waiting for the answer before the next batch.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::task::JoinSet;

use super::load::{error_key, histogram, micros, Errors, Target, REQUEST_TIMEOUT};

/// What the batch phase saw: batches sent, items answered 201, item and request errors.
pub struct BatchStats {
    pub size: usize,
    pub batches: u64,
    pub ok: u64,
    pub errors: Errors,
    /// Whole-batch latencies, microseconds.
    pub request: Histogram<u64>,
    pub elapsed: Duration,
}

impl BatchStats {
    fn new(size: usize) -> anyhow::Result<Self> {
        Ok(Self { size, batches: 0, ok: 0, errors: Errors::default(), request: histogram()?, elapsed: Duration::ZERO })
    }

    fn merge(&mut self, other: BatchStats) -> anyhow::Result<()> {
        self.batches += other.batches;
        self.ok += other.ok;
        self.errors.merge(other.errors);
        self.request.add(&other.request)?;
        Ok(())
    }

    /// Transfers completed per second.
    pub fn tps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Runs `clients` closed-loop batch clients over the same-shard `pairs` for `duration`.
pub async fn run(
    target: &Arc<Target>,
    pairs: &[(usize, usize)],
    clients: usize,
    duration: Duration,
    size: usize,
) -> anyhow::Result<BatchStats> {
    let mut receivers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(from, to) in pairs {
        receivers.entry(from).or_default().push(to);
    }
    let receivers: Arc<Vec<(usize, Vec<usize>)>> = Arc::new(receivers.into_iter().collect());
    anyhow::ensure!(!receivers.is_empty(), "no same-shard pairs among the bench users");
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        set.spawn(client(target.clone(), receivers.clone(), deadline, size));
    }
    let mut total = BatchStats::new(size)?;
    while let Some(joined) = set.join_next().await {
        total.merge(joined??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn client(
    target: Arc<Target>,
    receivers: Arc<Vec<(usize, Vec<usize>)>>,
    deadline: Instant,
    size: usize,
) -> anyhow::Result<BatchStats> {
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let mut rng = StdRng::from_entropy();
    let mut stats = BatchStats::new(size)?;
    while Instant::now() < deadline {
        let (from, to) = &receivers[rng.gen_range(0..receivers.len())];
        let tos: Vec<usize> = (0..size).map(|_| to[rng.gen_range(0..to.len())]).collect();
        let started = Instant::now();
        let answer = target.batch(&http, *from, &tos).await;
        stats.request.saturating_record(micros(started.elapsed()));
        stats.batches += 1;
        match answer {
            Err(e) => {
                stats.errors.add("transport".into(), &format!("{:#}", anyhow::Error::from(e)));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(a) if !a.status.is_success() => stats.errors.add(error_key(a.status, &a.body), &a.body),
            Ok(a) => {
                let parsed: serde_json::Value = serde_json::from_str(&a.body)?;
                for item in parsed["results"].as_array().into_iter().flatten() {
                    match item["status"].as_u64() {
                        Some(201) => stats.ok += 1,
                        other => {
                            let body = item["body"].to_string();
                            let status = other.and_then(|s| reqwest::StatusCode::from_u16(s as u16).ok());
                            let key = status.map_or("item without status".into(), |s| error_key(s, &body));
                            stats.errors.add(format!("item {key}"), &body);
                        }
                    }
                }
            }
        }
    }
    Ok(stats)
}
