//! Logging: `RUST_LOG` filters (default `info`); `SHARDWALLET_LOG_FORMAT=json` for JSON lines.
//! Metrics: [`metrics`] (names and recording functions), [`sampler`] (periodic gauges).
pub mod metrics;

use tracing_subscriber::{fmt, EnvFilter};

/// `default` applies when RUST_LOG is unset: `info` for the server, `warn` for one-shot
/// commands whose output is their report.
pub fn init(default: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{default},rdkafka=warn")));
    let json = std::env::var("SHARDWALLET_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true);
    // A second init (tests spawn many apps) is harmless: keep the first subscriber.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
