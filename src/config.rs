//! Settings: one TOML file plus `SHARDWALLET__SECTION__KEY` environment overrides.
use std::{path::Path, time::Duration};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use secrecy::SecretString;
use serde::Deserialize;

/// Secrets are `SecretString`s: their `Debug` prints `[REDACTED]`, so no settings dump
/// or log line shows one (`crate::secrets` checks them at start).
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub shards: ShardSettings,
    pub auth: AuthSettings,
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub transfers: TransferSettings,
    #[serde(default)]
    pub idempotency: IdempotencySettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub rate_limits: RateLimitSettings,
    #[serde(default)]
    pub payments: PaymentSettings,
    /// One entry per payment gateway, keyed by its name (`gateway_a`, ...).
    #[serde(default)]
    pub gateways: std::collections::BTreeMap<String, GatewaySettings>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServerSettings {
    pub listen: String,
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// `production` (the default) refuses known or weak secrets; `dev` accepts them
    /// with a warning (`crate::secrets`).
    #[serde(default)]
    pub profile: Profile,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Dev,
    #[default]
    Production,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ShardSettings {
    pub map_path: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// How often a running instance asks the shards whether the map changed (a shard
    /// added, a bucket moved), to route by it and start the new shards' workers. A write
    /// never waits for this: a shard refuses a bucket it gave away, and the instance
    /// refreshes at once.
    #[serde(default = "default_map_refresh")]
    pub map_refresh_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuthSettings {
    /// HS256 key that signs and verifies tokens (SHARDWALLET__AUTH__JWT_SECRET).
    pub jwt_secret: SecretString,
    /// Former keys, still accepted for verification while tokens they signed may live
    /// (rotation: docs/ARCHITECTURE.md, "Secrets").
    #[serde(default)]
    pub previous_jwt_secrets: Vec<SecretString>,
    /// `iss` of the tokens we mint, required of the tokens we accept.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// `aud` of the tokens we mint, required of the tokens we accept.
    #[serde(default = "default_audience")]
    pub audience: String,
}

impl AuthSettings {
    /// `secret` with no previous keys and the default issuer and audience.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            jwt_secret: secret.into(),
            previous_jwt_secrets: Vec::new(),
            issuer: default_issuer(),
            audience: default_audience(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub group_id: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u64,
    /// How long the broker may hold a fetch with no new data: the latency of each stage
    /// hop against the broker's idle polling.
    #[serde(default = "default_fetch_wait")]
    pub fetch_wait_max_ms: u64,
    /// The same for the payments consumer: a payment waits on its gateway for hundreds
    /// of milliseconds or more, so its hop can be slower and its idle polling rarer.
    #[serde(default = "default_payments_fetch_wait")]
    pub payments_fetch_wait_max_ms: u64,
    /// How often handled stage messages are deleted from the topic (0: never; then the
    /// broker's retention applies).
    #[serde(default = "default_trim_interval")]
    pub trim_interval_secs: u64,
    /// The keys that authenticate stage and payment messages (`messaging::auth`).
    #[serde(flatten)]
    pub messages: MessageKeySettings,
    /// SASL and TLS towards the broker, for every client (`messaging::kafka`).
    #[serde(flatten)]
    pub security: KafkaSecurity,
}

/// `[kafka] message_keys`, `message_key_id`, `accept_unsigned`: every message on the
/// stage and payments topics carries an HMAC-SHA-256 tag made with `message_key_id`;
/// a tag made with any key of `message_keys` verifies (rotation: add the new key to
/// every instance, then switch `message_key_id`, then drop the old key).
/// Key ids are lower-case (environment overrides are lower-cased by the loader):
/// SHARDWALLET__KAFKA__MESSAGE_KEYS__K2=<secret>.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MessageKeySettings {
    #[serde(default)]
    pub message_keys: std::collections::BTreeMap<String, secrecy::SecretString>,
    #[serde(default)]
    pub message_key_id: String,
    /// Transitional, for a rolling upgrade from a version that did not sign: a message
    /// with no tag at all is applied (and counted); a message with a wrong tag is still
    /// refused. Off by default (docs/EVENTS.md, "Rolling upgrade").
    #[serde(default)]
    pub accept_unsigned: bool,
}

/// How the Kafka clients authenticate and encrypt (librdkafka properties). The typed
/// fields cover SASL (PLAIN, SCRAM-SHA-256/512) and TLS; `properties` passes anything
/// else to librdkafka as is, for every client (producer, consumers, admin).
#[derive(Clone, Default, Deserialize)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SHARDWALLET__KAFKA__SASL_PASSWORD.
    #[serde(default)]
    pub sasl_password: Option<secrecy::SecretString>,
    /// The CA bundle (PEM) that signs the broker's certificate; default: the system's.
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// `[kafka.properties]`: further librdkafka properties, applied after the above.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Property values may be secrets too (ssl.key.password): only their names show.
        f.debug_struct("KafkaSecurity")
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "<redacted>"))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TransferSettings {
    /// A cross-shard transfer whose Try has no answer by then is cancelled.
    pub try_timeout_secs: u64,
    /// How often the sweeper looks for stuck transfers.
    pub sweep_interval_secs: u64,
    /// A transfer untouched this long gets its stage message re-emitted.
    pub redrive_after_secs: u64,
    /// Released holds of final transfers, and the receiver's barriers of transfers
    /// whose record is final, are deleted this long after (0: never). See "Growth" in
    /// docs/ARCHITECTURE.md for why nothing that can still be needed goes.
    pub prune_after_secs: u64,
    /// Re-emits of one transfer's stage before the sweeper marks it stuck and leaves
    /// it to an operator (0: no cap).
    pub redrive_max: u32,
    /// Whether this process publishes its shards' outboxes (tests turn it off to stand
    /// for a process killed between commit and publish).
    pub relay_enabled: bool,
    /// Whether a cross-shard transfer whose receiver's wallet is found by a read skips
    /// TryCredit/Tried (DirectCredit); off, every cross-shard transfer runs the full
    /// Try/Confirm/Cancel exchange.
    pub direct_credit: bool,
    /// Outbox relays per shard in this process.
    pub relays_per_shard: usize,
    /// Whether this process consumes stage messages.
    pub consumer_enabled: bool,
    /// Admission control: new cross-shard transfers from a shard are refused (503
    /// `overloaded`) while that shard has this many in flight (0: no bound).
    pub admission_max_in_flight: u64,
    /// ... or while its oldest unpublished stage message is this old (0: no bound).
    pub admission_max_outbox_age_ms: u64,
    /// The `Retry-After` of an `overloaded` refusal.
    pub admission_retry_after_secs: u64,
    /// How often each shard's backlog is sampled.
    pub admission_sample_ms: u64,
}

impl Default for TransferSettings {
    fn default() -> Self {
        Self {
            try_timeout_secs: 30,
            sweep_interval_secs: 5,
            redrive_after_secs: 10,
            // With redrive_after_secs = 10: about 17 minutes of re-emits.
            redrive_max: 100,
            prune_after_secs: PRUNE_AFTER_SECS,
            relay_enabled: true,
            relays_per_shard: 2,
            direct_credit: true,
            consumer_enabled: true,
            admission_max_in_flight: 400,
            // Not lower: on a loaded machine one slow publish would refuse a whole
            // shard's cross-shard traffic (seen in the test suite at 1000 ms).
            admission_max_outbox_age_ms: 5000,
            admission_retry_after_secs: 1,
            admission_sample_ms: 100,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct IdempotencySettings {
    pub retention_hours: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self { retention_hours: 24 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct MetricsSettings {
    /// How often the sampler reads outbox depth, pool usage and consumer lag.
    pub sample_interval_secs: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { sample_interval_secs: 5 }
    }
}

/// Per-caller GCRA limits (`api::rate_limit`): a class of endpoint allows `burst`
/// requests at once and then `per_second` on average.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Whether admin tokens are limited too (they are exempt by default).
    pub limit_admins: bool,
    /// Money-moving POSTs (transfers, adjustments, reversals, payments).
    pub write: Limit,
    /// Reads (GET).
    pub read: Limit,
    /// Unauthenticated gateway callbacks, keyed by client IP.
    pub callback: Limit,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            limit_admins: false,
            write: Limit { per_second: 20.0, burst: 40 },
            read: Limit { per_second: 100.0, burst: 200 },
            callback: Limit { per_second: 50.0, burst: 100 },
        }
    }
}

/// Deposits and withdrawals.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PaymentSettings {
    /// AES-256-GCM key (64 hex digits) sealing card numbers and IBANs until the gateway
    /// has them (SHARDWALLET__PAYMENTS__ENCRYPTION_KEY). The default is a development
    /// key, refused by the production profile.
    pub encryption_key: SecretString,
    /// The base URL gateways call back (`<public_url>/v1/gateways/<name>/callbacks`);
    /// when empty, `http://127.0.0.1:<bound port>`.
    pub public_url: String,
    /// A payment the gateway holds as pending is queried after this long.
    pub query_after_ms: u64,
    /// Status queries that find no answer back off, doubling from `query_after_ms` up
    /// to this.
    pub query_backoff_max_ms: u64,
    /// A payment still pending this long after creation is failed as `expired` when the
    /// gateway cannot hold it, and goes to `needs_review` (hold kept) when it may.
    pub deadline_secs: u64,
    /// How often each shard's payment reconciler runs.
    pub sweep_interval_ms: u64,
    /// How many payment-topic messages one worker handles at once.
    pub concurrency: usize,
    pub worker_enabled: bool,
    /// Whether this process publishes its shards' payment outboxes.
    pub relay_enabled: bool,
    /// Recorded callbacks and released holds of final payments are deleted this long
    /// after (0: never).
    pub prune_after_secs: u64,
    /// Fault injection for tests: the worker forgets the gateway's answer, as if the
    /// process died between the gateway call and recording it. Never set in production.
    pub drop_gateway_answers: bool,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            encryption_key: DEV_PAYMENT_KEY.into(),
            public_url: String::new(),
            query_after_ms: 10_000,
            // With query_after_ms = 10 s, queries at ~10, 30, 60, 90 s...: a gateway
            // that answers 5xx for a minute is settled within two.
            query_backoff_max_ms: 30_000,
            deadline_secs: 3600,
            sweep_interval_ms: 1000,
            concurrency: 32,
            worker_enabled: true,
            relay_enabled: true,
            prune_after_secs: PRUNE_AFTER_SECS,
            drop_gateway_answers: false,
        }
    }
}

/// The protocols a gateway client (and the mock gateway) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GatewayProtocol {
    /// Gateway A's: JSON over REST.
    Json,
    /// Gateway B's: SOAP-style XML.
    Xml,
}

impl GatewayProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Xml => "xml",
        }
    }
}

/// One payment gateway: where it is, how it signs, how we retry and when we stop calling.
#[derive(Clone, Debug, Deserialize)]
pub struct GatewaySettings {
    /// Which client speaks to it: `json` (gateway A's protocol) or `xml` (gateway B's).
    pub protocol: GatewayProtocol,
    pub base_url: String,
    /// HMAC-SHA256 key of its callbacks (SHARDWALLET__GATEWAYS__<NAME>__SIGNING_SECRET).
    pub signing_secret: SecretString,
    /// The former key, still accepted on callbacks while the gateway switches to the new
    /// one (SHARDWALLET__GATEWAYS__<NAME>__PREVIOUS_SIGNING_SECRET).
    #[serde(default)]
    pub previous_signing_secret: Option<SecretString>,
    #[serde(default = "default_gateway_timeout")]
    pub timeout_ms: u64,
    /// Attempts per call on transient failures (timeout, refused, 5xx), with
    /// exponential backoff and full jitter between `retry_min_delay_ms` and `_max_`.
    #[serde(default = "default_retry_attempts")]
    pub retry_max_attempts: usize,
    #[serde(default = "default_retry_min")]
    pub retry_min_delay_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_delay_ms: u64,
    /// Consecutive failed calls that open the circuit breaker.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before one half-open probe is let through.
    #[serde(default = "default_breaker_open")]
    pub breaker_open_ms: u64,
}

impl Settings {
    /// Reads `path`, then applies `SHARDWALLET__SECTION__KEY` overrides.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Figment::new()
            .merge(Toml::file_exact(path))
            .merge(Env::prefixed("SHARDWALLET__").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration ({}): {e}", path.display()))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.shards.connect_timeout_ms)
    }
}

fn default_grace() -> u64 {
    20
}
fn default_pool_size() -> usize {
    16
}
fn default_connect_timeout() -> u64 {
    2000
}
fn default_map_refresh() -> u64 {
    2000
}
fn default_partitions() -> i32 {
    6
}
fn default_session_timeout() -> u64 {
    3_000
}
fn default_trim_interval() -> u64 {
    5
}
fn default_fetch_wait() -> u64 {
    20
}

fn default_payments_fetch_wait() -> u64 {
    250
}
/// Released holds, barriers and settled payments' callbacks are pruned this long after
/// they can no longer be read (30 days: far past any retry, re-drive, callback
/// tolerance or operator's look).
const PRUNE_AFTER_SECS: u64 = 30 * 24 * 3600;

/// Local development only: `crate::secrets` lists it as known, so the production
/// profile refuses to start without SHARDWALLET__PAYMENTS__ENCRYPTION_KEY.
pub const DEV_PAYMENT_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn default_issuer() -> String {
    "shardwallet".into()
}
fn default_audience() -> String {
    "shardwallet-api".into()
}
fn default_gateway_timeout() -> u64 {
    5000
}
fn default_retry_attempts() -> usize {
    4
}
fn default_retry_min() -> u64 {
    100
}
fn default_retry_max() -> u64 {
    2000
}
fn default_breaker_threshold() -> u32 {
    5
}
fn default_breaker_open() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that names only what has no default gets every section's one `Default`.
    #[test]
    fn sections_left_out_or_half_written_take_their_defaults() {
        let text = r#"
            [server]
            listen = "127.0.0.1:0"
            [shards]
            map_path = "shard-map.toml"
            [auth]
            jwt_secret = "x"
            [kafka]
            brokers = "127.0.0.1:9092"
            topic_prefix = "t."
            group_id = "g"
            [transfers]
            try_timeout_secs = 7
            [payments]
            deadline_secs = 9
        "#;
        let settings: Settings = toml::from_str(text).expect("minimal settings");
        assert_eq!(settings.transfers.try_timeout_secs, 7);
        assert_eq!(settings.transfers.redrive_max, TransferSettings::default().redrive_max);
        assert_eq!(settings.transfers.admission_max_outbox_age_ms, 5000);
        assert_eq!(settings.payments.deadline_secs, 9);
        assert_eq!(settings.payments.query_backoff_max_ms, 30_000);
        assert_eq!(settings.rate_limits.write, Limit { per_second: 20.0, burst: 40 });
        assert_eq!(settings.idempotency.retention_hours, 24);
        assert!(settings.transfers.relay_enabled && settings.payments.worker_enabled && settings.rate_limits.enabled);
    }
}
