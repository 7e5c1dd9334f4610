//! Closed-loop load: each client sends one transfer and waits for its answer (for a
//! cross-shard transfer, for its final status) before it sends the next.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

use super::BenchArgs;

/// How long a client waits for a cross-shard transfer to reach a final status.
const COMPLETION_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Largest latency the histograms hold, in microseconds (longer ones saturate).
const MAX_MICROS: u64 = 600_000_000;

pub struct BenchUser {
    pub id: String,
    pub token: String,
}

pub struct Target {
    pub base: String,
    users: Vec<BenchUser>,
    currency: String,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Local,
    Cross,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Local => "local (same-shard)",
            Kind::Cross => "cross-shard",
        }
    }

    fn accepted(self) -> StatusCode {
        match self {
            Kind::Local => StatusCode::CREATED,
            Kind::Cross => StatusCode::ACCEPTED,
        }
    }
}

/// Runs `clients` closed-loop clients over random `pairs` until `duration` is over;
/// a client finishes the transfer it is on, so the phase can run a little longer.
pub async fn run_phase(
    target: &Arc<Target>,
    kind: Kind,
    pairs: Arc<Vec<(usize, usize)>>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        set.spawn(client(target.clone(), kind, pairs.clone(), deadline));
    }
    let mut total = Stats::new()?;
    while let Some(joined) = set.join_next().await {
        total.merge(joined??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn client(
    target: Arc<Target>,
    kind: Kind,
    pairs: Arc<Vec<(usize, usize)>>,
    deadline: Instant,
) -> anyhow::Result<Stats> {
    let http = reqwest::Client::builder().timeout(COMPLETION_DEADLINE).build()?;
    let mut rng = StdRng::from_entropy();
    let mut stats = Stats::new()?;
    while Instant::now() < deadline {
        let (from, to) = pairs[rng.gen_range(0..pairs.len())];
        let (from, to) = (&target.users[from], &target.users[to]);
        let started = Instant::now();
        let answer = target.transfer(&http, from, to).await;
        stats.request.saturating_record(micros(started.elapsed()));
        stats.sent += 1;
        match answer {
            Err(e) => stats.fail("transport".into(), &format!("{:#}", anyhow::Error::from(e))),
            Ok((status, body)) if status != kind.accepted() => stats.fail(status.as_str().into(), &body),
            Ok((_, body)) => {
                stats.ok += 1;
                if let Kind::Cross = kind {
                    target.follow(&http, from, &body, started, &mut stats).await;
                }
            }
        }
    }
    Ok(stats)
}

impl Target {
    pub fn new(args: &BenchArgs, users: Vec<BenchUser>) -> Self {
        let base = args.url.trim_end_matches('/').to_string();
        Self { base, users, currency: args.currency.clone() }
    }

    async fn transfer(
        &self,
        http: &reqwest::Client,
        from: &BenchUser,
        to: &BenchUser,
    ) -> reqwest::Result<(StatusCode, String)> {
        let body = json!({
            "from_user_id": from.id,
            "to_user_id": to.id,
            "currency": self.currency,
            "amount": "1",
        });
        let response = http
            .post(format!("{}/v1/transfers", self.base))
            .bearer_auth(&from.token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    /// Polls a 202'd transfer until it is completed or cancelled, or the deadline passes.
    async fn follow(
        &self,
        http: &reqwest::Client,
        user: &BenchUser,
        accepted: &str,
        started: Instant,
        stats: &mut Stats,
    ) {
        let parsed = serde_json::from_str::<serde_json::Value>(accepted).ok();
        let Some(id) = parsed.as_ref().and_then(|v| v["transfer_id"].as_str()) else {
            stats.poll_failure("202 body without transfer_id", accepted);
            return;
        };
        let url = format!("{}/v1/transfers/{id}", self.base);
        loop {
            stats.polls += 1;
            match self.status(http, &url, user).await {
                Ok(status) if status == "completed" => {
                    stats.completed += 1;
                    stats.completion.saturating_record(micros(started.elapsed()));
                    return;
                }
                Ok(status) if status == "cancelled" => {
                    stats.cancelled += 1;
                    return;
                }
                Ok(_) => {}
                Err(e) => stats.poll_failure("poll", &format!("{e:#}")),
            }
            if started.elapsed() >= COMPLETION_DEADLINE {
                stats.unfinished += 1;
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn status(&self, http: &reqwest::Client, url: &str, user: &BenchUser) -> anyhow::Result<String> {
        let response = http.get(url).bearer_auth(&user.token).send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status == StatusCode::OK, "GET transfer: {status}: {text}");
        let view: serde_json::Value = serde_json::from_str(&text)?;
        view["status"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("GET transfer: no status in {text}"))
    }
}

/// What one client, or a whole phase, saw. Latencies are in microseconds.
pub struct Stats {
    pub sent: u64,
    pub ok: u64,
    /// Failed requests by HTTP status (or `transport`), and the first body of each.
    pub errors: BTreeMap<String, u64>,
    pub samples: BTreeMap<String, String>,
    pub request: Histogram<u64>,
    /// Cross-shard: request sent -> `completed` seen, for completed transfers.
    pub completion: Histogram<u64>,
    pub completed: u64,
    pub cancelled: u64,
    /// Cross-shard transfers still pending at the deadline.
    pub unfinished: u64,
    pub polls: u64,
    pub poll_errors: u64,
    pub elapsed: Duration,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            samples: BTreeMap::new(),
            request: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
            completion: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
            completed: 0,
            cancelled: 0,
            unfinished: 0,
            polls: 0,
            poll_errors: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn fail(&mut self, key: String, body: &str) {
        self.samples.entry(key.clone()).or_insert_with(|| body.chars().take(300).collect());
        *self.errors.entry(key).or_default() += 1;
    }

    fn poll_failure(&mut self, key: &str, body: &str) {
        self.poll_errors += 1;
        self.samples.entry(key.into()).or_insert_with(|| body.chars().take(300).collect());
    }

    fn merge(&mut self, other: Stats) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.ok += other.ok;
        for (key, n) in other.errors {
            *self.errors.entry(key).or_default() += n;
        }
        for (key, sample) in other.samples {
            self.samples.entry(key).or_insert(sample);
        }
        self.request.add(&other.request)?;
        self.completion.add(&other.completion)?;
        self.completed += other.completed;
        self.cancelled += other.cancelled;
        self.unfinished += other.unfinished;
        self.polls += other.polls;
        self.poll_errors += other.poll_errors;
        Ok(())
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
