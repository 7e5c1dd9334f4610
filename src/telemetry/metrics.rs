//! Every Prometheus metric of the service: its name, its labels and the one function
//! that records it. Call sites elsewhere are one line (`metrics::transfer_created(..)`),
//! so the names and label sets live here and nowhere else.
//!
//! The recorder is process-wide (the `metrics` facade has one global recorder): it is
//! installed on first use by [`handle`], and `GET /metrics` renders it.
use std::{sync::OnceLock, time::Instant};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "shardwallet_http_requests_total";
pub const HTTP_DURATION: &str = "shardwallet_http_request_duration_seconds";
pub const TRANSFERS_STARTED: &str = "shardwallet_transfers_started_total";
pub const TRANSFERS_COMPLETED: &str = "shardwallet_transfers_completed_total";
pub const TRANSFERS_CANCELLED: &str = "shardwallet_transfers_cancelled_total";
pub const STAGES_HANDLED: &str = "shardwallet_stages_handled_total";
pub const STAGE_RETRIES: &str = "shardwallet_stage_retries_total";
pub const STAGE_DURATION: &str = "shardwallet_stage_handling_duration_seconds";
pub const OUTBOX_PUBLISHED: &str = "shardwallet_outbox_published_total";
pub const OUTBOX_DEPTH: &str = "shardwallet_outbox_depth";
pub const OUTBOX_OLDEST_AGE: &str = "shardwallet_outbox_oldest_age_seconds";
pub const CONSUMER_LAG: &str = "shardwallet_consumer_lag_messages";
pub const DEAD_LETTERED: &str = "shardwallet_dead_lettered_total";
pub const DEAD_LETTERS_RETAINED: &str = "shardwallet_dead_letters_retained";
pub const MESSAGES_REJECTED: &str = "shardwallet_messages_rejected_total";
pub const MESSAGES_UNSIGNED_ACCEPTED: &str = "shardwallet_messages_unsigned_accepted_total";
pub const POOL_SIZE: &str = "shardwallet_db_pool_connections";
pub const POOL_AVAILABLE: &str = "shardwallet_db_pool_available";
pub const POOL_WAITING: &str = "shardwallet_db_pool_waiting";
pub const POOL_MAX: &str = "shardwallet_db_pool_max_size";
pub const RATE_LIMITED: &str = "shardwallet_rate_limited_total";
pub const GATEWAY_CALLS: &str = "shardwallet_gateway_calls_total";
pub const GATEWAY_DURATION: &str = "shardwallet_gateway_call_duration_seconds";
pub const CIRCUIT_STATE: &str = "shardwallet_gateway_circuit_state";
pub const SAMPLER_ERRORS: &str = "shardwallet_sampler_errors_total";
pub const TRANSFERS_STUCK: &str = "shardwallet_transfers_stuck_total";
pub const RESHARD_FENCE: &str = "shardwallet_reshard_fence_seconds";
pub const PAYMENT_STEPS: &str = "shardwallet_payment_steps_total";
pub const PAYMENTS_NEEDS_REVIEW: &str = "shardwallet_payments_needs_review_total";

/// Latency buckets (seconds) of every histogram: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once, and returns the handle that renders it.
/// When another recorder was installed first (an embedding program), a detached one is
/// returned: it renders an empty exposition rather than failing the server.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
        };
        match builder().install_recorder() {
            Ok(handle) => {
                describe();
                handle
            }
            Err(e) => {
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                builder().build_recorder().handle()
            }
        }
    })
}

/// The text exposition (Prometheus format 0.0.4).
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route template, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request latency by route template, method and status");
    describe_counter!(TRANSFERS_STARTED, "transfers accepted, by route (local, cross_shard)");
    describe_counter!(TRANSFERS_COMPLETED, "transfers completed, by route");
    describe_counter!(TRANSFERS_CANCELLED, "transfers cancelled, by route and reason");
    describe_counter!(STAGES_HANDLED, "TCC stage messages handled (or dead-lettered), by stage");
    describe_counter!(STAGE_RETRIES, "transient failures of a stage handler that were retried, by stage");
    describe_histogram!(RESHARD_FENCE, Unit::Seconds, "how long a bucket move held the bucket's writes (one fence)");
    describe_histogram!(STAGE_DURATION, Unit::Seconds, "time to handle one TCC stage message, retries included");
    describe_counter!(OUTBOX_PUBLISHED, "outbox rows published to Kafka, by shard");
    describe_gauge!(OUTBOX_DEPTH, "outbox rows not yet published, by shard (sampled)");
    describe_gauge!(OUTBOX_OLDEST_AGE, Unit::Seconds, "age of the oldest unpublished outbox row, by shard (sampled)");
    describe_gauge!(CONSUMER_LAG, "stage topic messages not yet committed by the consumer group (sampled)");
    describe_counter!(DEAD_LETTERED, "stage messages this process dead-lettered");
    describe_gauge!(DEAD_LETTERS_RETAINED, "messages retained on the dead-letter topic (sampled)");
    describe_counter!(MESSAGES_REJECTED, "messages refused for a missing or invalid tag, by topic and reason");
    describe_counter!(MESSAGES_UNSIGNED_ACCEPTED, "untagged messages applied under kafka.accept_unsigned, by topic");
    describe_gauge!(POOL_SIZE, "open database connections, by shard (sampled)");
    describe_gauge!(POOL_AVAILABLE, "idle database connections, by shard (sampled)");
    describe_gauge!(POOL_WAITING, "requests waiting for a database connection, by shard (sampled)");
    describe_gauge!(POOL_MAX, "the pool's maximum size, by shard");
    describe_counter!(RATE_LIMITED, "requests refused with 429, by endpoint class");
    describe_counter!(GATEWAY_CALLS, "payment gateway calls, by gateway and outcome");
    describe_histogram!(GATEWAY_DURATION, Unit::Seconds, "payment gateway call latency, by gateway and outcome");
    describe_gauge!(CIRCUIT_STATE, "1 for a gateway's current circuit breaker state, 0 for the others");
    describe_counter!(SAMPLER_ERRORS, "failed samples of the periodic sampler, by source");
    describe_counter!(
        TRANSFERS_STUCK,
        "cross-shard transfers marked stuck: re-driven redrive_max times without moving"
    );
    describe_counter!(PAYMENT_STEPS, "payment state-machine steps taken, by step (contradiction: kept, not applied)");
    describe_counter!(PAYMENTS_NEEDS_REVIEW, "payments that reached their deadline in doubt (needs_review, hold kept)");
}

// --- HTTP ----------------------------------------------------------------------

/// One served request; `route` is the matched route template (`/v1/users/{user_id}`).
pub fn http_request(route: &str, method: &str, status: u16, started: Instant) {
    let labels = [("route", route.to_string()), ("method", method.to_string()), ("status", status.to_string())];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
}

pub fn rate_limited(class: &'static str) {
    counter!(RATE_LIMITED, "class" => class).increment(1);
}

// --- transfers -----------------------------------------------------------------

fn route_label(cross_shard: bool) -> &'static str {
    if cross_shard {
        "cross_shard"
    } else {
        "local"
    }
}

/// A transfer request was handled; counts only when it committed a new transfer (a
/// replay or a refusal is not a start). A same-shard transfer completes at once.
pub fn transfer_created(committed: bool, cross_shard: bool) {
    if !committed {
        return;
    }
    counter!(TRANSFERS_STARTED, "route" => route_label(cross_shard)).increment(1);
    if !cross_shard {
        counter!(TRANSFERS_COMPLETED, "route" => "local").increment(1);
    }
}

/// A cross-shard transfer completed (its sender's transition committed).
pub fn cross_shard_completed() {
    counter!(TRANSFERS_COMPLETED, "route" => "cross_shard").increment(1);
}

/// A cross-shard transfer was cancelled, and why.
pub fn cross_shard_cancelled(reason: &str) {
    counter!(TRANSFERS_CANCELLED, "route" => "cross_shard", "reason" => reason.to_string()).increment(1);
}

/// Times the handling of one stage message (retries included) from creation to drop.
pub struct StageTimer {
    stage: &'static str,
    started: Instant,
}

impl StageTimer {
    pub fn start(stage: &'static str) -> Self {
        Self::started_at(stage, Instant::now())
    }

    /// For a stage whose handling began at `started` (one of a batch).
    pub fn started_at(stage: &'static str, started: Instant) -> Self {
        Self { stage, started }
    }
}

impl Drop for StageTimer {
    fn drop(&mut self) {
        counter!(STAGES_HANDLED, "stage" => self.stage).increment(1);
        histogram!(STAGE_DURATION, "stage" => self.stage).record(self.started.elapsed().as_secs_f64());
    }
}

/// A stage handler failed transiently and will be retried.
/// A transfer the sweeper stopped re-driving (`transfers.redrive_max`).
pub fn reshard_fence(took: std::time::Duration) {
    histogram!(RESHARD_FENCE).record(took.as_secs_f64());
}

pub fn transfer_stuck() {
    counter!(TRANSFERS_STUCK).increment(1);
}

pub fn stage_retried(stage: &'static str) {
    counter!(STAGE_RETRIES, "stage" => stage).increment(1);
}

/// A stage message went to the dead-letter topic.
pub fn dead_lettered() {
    counter!(DEAD_LETTERED).increment(1);
}

/// A message on `topic` (`stages`, `payments`) without a valid tag was refused;
/// `reason` is `unsigned`, `unknown_key` or `bad_mac`.
pub fn message_rejected(topic: &'static str, reason: &'static str) {
    counter!(MESSAGES_REJECTED, "topic" => topic, "reason" => reason).increment(1);
}

/// An untagged message was applied because `kafka.accept_unsigned` is on.
pub fn message_unsigned_accepted(topic: &'static str) {
    counter!(MESSAGES_UNSIGNED_ACCEPTED, "topic" => topic).increment(1);
}

// --- messaging and storage (the sampler and the relay) -------------------------

pub fn outbox_published(shard: &str, rows: usize) {
    counter!(OUTBOX_PUBLISHED, "shard" => shard.to_string()).increment(rows as u64);
}

pub fn outbox_sample(shard: &str, depth: i64, oldest_age_secs: f64) {
    gauge!(OUTBOX_DEPTH, "shard" => shard.to_string()).set(depth as f64);
    gauge!(OUTBOX_OLDEST_AGE, "shard" => shard.to_string()).set(oldest_age_secs);
}

pub fn consumer_lag(topic: &str, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string()).set(lag.max(0) as f64);
}

pub fn dead_letters_retained(topic: &str, count: i64) {
    gauge!(DEAD_LETTERS_RETAINED, "topic" => topic.to_string()).set(count.max(0) as f64);
}

pub fn pool_sample(shard: &str, status: &deadpool_postgres::Status) {
    let shard = shard.to_string();
    gauge!(POOL_SIZE, "shard" => shard.clone()).set(status.size as f64);
    gauge!(POOL_AVAILABLE, "shard" => shard.clone()).set(status.available as f64);
    gauge!(POOL_WAITING, "shard" => shard.clone()).set(status.waiting as f64);
    gauge!(POOL_MAX, "shard" => shard).set(status.max_size as f64);
}

pub fn sampler_error(source: &'static str) {
    counter!(SAMPLER_ERRORS, "source" => source).increment(1);
}

// --- payment gateways (recorded by `gateways::Configured::call`) ----------------

/// One call (attempt) to a payment gateway and its latency; `outcome` is `ok` (the
/// gateway answered with an outcome), `error` (sent, no reply or a 5xx), `unclear` (a
/// reply we cannot act on), `not_sent` (no connection) or `circuit_open` (no call made).
pub fn gateway_call(gateway: &str, outcome: &str, started: Instant) {
    counter!(GATEWAY_CALLS, "gateway" => gateway.to_string(), "outcome" => outcome.to_string()).increment(1);
    histogram!(GATEWAY_DURATION, "gateway" => gateway.to_string(), "outcome" => outcome.to_string())
        .record(started.elapsed().as_secs_f64());
}

/// A gateway's circuit breaker is now in `state`, one of `all`: that series is set to 1
/// and the others to 0, so `max by (gateway)` shows the state.
pub fn circuit_state(gateway: &str, state: &'static str, all: &[&'static str]) {
    for s in all {
        let value = if *s == state { 1.0 } else { 0.0 };
        gauge!(CIRCUIT_STATE, "gateway" => gateway.to_string(), "state" => *s).set(value);
    }
}

// --- payments ---------------------------------------------------------------------

/// One payment state-machine step, by its name (`payments::state::Step::name`);
/// `needs_review` is counted on its own too.
pub fn payment_step(name: &'static str) {
    counter!(PAYMENT_STEPS, "step" => name).increment(1);
    if name == "needs_review" {
        counter!(PAYMENTS_NEEDS_REVIEW).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        let _ = handle();
        gateway_call("unit-test-gw", "ok", Instant::now());
        circuit_state("unit-test-gw", "open", &["closed", "open", "half_open"]);
        http_request("/unit/{id}", "GET", 200, Instant::now());
        let text = render();
        assert!(text.contains(r#"shardwallet_gateway_calls_total{gateway="unit-test-gw",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"shardwallet_gateway_circuit_state{gateway="unit-test-gw",state="open"} 1"#));
        assert!(text.contains(r#"shardwallet_gateway_circuit_state{gateway="unit-test-gw",state="closed"} 0"#));
        assert!(text.contains(r#"shardwallet_http_request_duration_seconds_bucket{route="/unit/{id}",method="GET",status="200",le="0.005"}"#), "{text}");
    }
}
