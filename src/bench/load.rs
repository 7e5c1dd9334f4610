//! The service under test (`Target`: one transfer request) and the same-shard phase:
//! closed-loop clients, each sending one transfer and waiting for its answer before it
//! sends the next.
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

/// A request that gets no answer within this is a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause of a closed-loop client after a transport error.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(50);
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

/// One answer to `POST /v1/transfers`.
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
    pub retry_after: bool,
}

impl Target {
    pub fn new(args: &BenchArgs, users: Vec<BenchUser>) -> Self {
        let base = args.url.trim_end_matches('/').to_string();
        Self { base, users, currency: args.currency.clone() }
    }

    /// Sends one transfer of 1 unit from user `from` to user `to` (indices).
    pub async fn transfer(&self, http: &reqwest::Client, from: usize, to: usize) -> reqwest::Result<Answer> {
        let (from, to) = (&self.users[from], &self.users[to]);
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
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        Ok(Answer { status, body: response.text().await?, retry_after })
    }
}

impl Target {
    /// Sends one non-atomic batch from user `from` (with its token) of 1 unit to each of
    /// `tos` (indices), every item with a fresh key.
    pub async fn batch(&self, http: &reqwest::Client, from: usize, tos: &[usize]) -> reqwest::Result<Answer> {
        let sender = &self.users[from];
        let items: Vec<serde_json::Value> = tos
            .iter()
            .map(|&to| {
                json!({
                    "from_user_id": sender.id,
                    "to_user_id": self.users[to].id,
                    "currency": self.currency,
                    "amount": "1",
                    "idempotency_key": uuid::Uuid::new_v4().to_string(),
                })
            })
            .collect();
        let response = http
            .post(format!("{}/v1/transfers/batch", self.base))
            .bearer_auth(&sender.token)
            .json(&json!({ "transfers": items, "atomic": false }))
            .send()
            .await?;
        let status = response.status();
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        Ok(Answer { status, body: response.text().await?, retry_after })
    }
}

/// How a refused request is counted: its status and the problem `code` of its body,
/// e.g. `503 overloaded`, or the status alone when the body is not a problem.
pub fn error_key(status: StatusCode, body: &str) -> String {
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string));
    match code {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_MICROS, 3)?)
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Failed requests by key (`error_key`, or `transport`), with the first body of each.
#[derive(Default)]
pub struct Errors {
    pub counts: BTreeMap<String, u64>,
    pub samples: BTreeMap<String, String>,
}

impl Errors {
    pub fn add(&mut self, key: String, body: &str) {
        self.samples.entry(key.clone()).or_insert_with(|| body.chars().take(300).collect());
        *self.counts.entry(key).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn merge(&mut self, other: Errors) {
        for (key, n) in other.counts {
            *self.counts.entry(key).or_default() += n;
        }
        for (key, sample) in other.samples {
            self.samples.entry(key).or_insert(sample);
        }
    }
}

/// What the same-shard phase saw. Latencies are in microseconds.
pub struct LocalStats {
    pub sent: u64,
    pub ok: u64,
    /// Of `ok`: answered 202, the pair's users on two shards for a while (a bucket moving).
    pub rerouted: u64,
    pub errors: Errors,
    pub request: Histogram<u64>,
    pub elapsed: Duration,
}

impl LocalStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: 0,
            ok: 0,
            rerouted: 0,
            errors: Errors::default(),
            request: histogram()?,
            elapsed: Duration::ZERO,
        })
    }

    fn merge(&mut self, other: LocalStats) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.ok += other.ok;
        self.rerouted += other.rerouted;
        self.errors.merge(other.errors);
        self.request.add(&other.request)?;
        Ok(())
    }

    /// Successful transfers per second of the phase.
    /// Adds a later window's figures (its time too).
    pub fn append(&mut self, other: LocalStats) -> anyhow::Result<()> {
        self.elapsed += other.elapsed;
        self.merge(other)
    }

    pub fn tps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Runs `clients` closed-loop clients over random same-shard `pairs` until `duration`
/// is over; a client finishes the request it is on, so the phase can run a little longer.
pub async fn run_local(
    target: &Arc<Target>,
    pairs: Arc<Vec<(usize, usize)>>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<LocalStats> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        set.spawn(client(target.clone(), pairs.clone(), deadline));
    }
    let mut total = LocalStats::new()?;
    while let Some(joined) = set.join_next().await {
        total.merge(joined??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn client(target: Arc<Target>, pairs: Arc<Vec<(usize, usize)>>, deadline: Instant) -> anyhow::Result<LocalStats> {
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let mut rng = StdRng::from_entropy();
    let mut stats = LocalStats::new()?;
    while Instant::now() < deadline {
        let (from, to) = pairs[rng.gen_range(0..pairs.len())];
        let started = Instant::now();
        let answer = target.transfer(&http, from, to).await;
        stats.request.saturating_record(micros(started.elapsed()));
        stats.sent += 1;
        match answer {
            Err(e) => {
                stats.errors.add("transport".into(), &format!("{:#}", anyhow::Error::from(e)));
                // A refused connection fails at once: do not spin on a dead service.
                tokio::time::sleep(TRANSPORT_BACKOFF).await;
            }
            Ok(a) if a.status == StatusCode::ACCEPTED => {
                stats.ok += 1;
                stats.rerouted += 1;
            }
            Ok(a) if a.status != StatusCode::CREATED => stats.errors.add(error_key(a.status, &a.body), &a.body),
            Ok(_) => stats.ok += 1,
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_keyed_by_status_and_problem_code() {
        let body = r#"{"type":"/problems/overloaded","status":503,"code":"overloaded"}"#;
        assert_eq!(error_key(StatusCode::SERVICE_UNAVAILABLE, body), "503 overloaded");
        assert_eq!(error_key(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>"), "502");
        assert_eq!(error_key(StatusCode::CONFLICT, r#"{"code":7}"#), "409");
    }
}
