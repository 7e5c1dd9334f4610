//! Payment gateways: the `Gateway` trait, one module per protocol (`json`: gateway A,
//! `xml`: gateway B, each with its wire types in `transformers.rs`), the circuit
//! breaker, callback signatures, and the mock gateway servers (`mock`).
//!
//! Adding a gateway: write a module implementing `Gateway` (its requests, its replies,
//! its callback format), add a match arm in `build_client`, and a `[gateways.<name>]`
//! entry in shardwallet.toml with its `protocol`.
pub mod breaker;
pub mod json;
pub mod mock;
pub mod signature;
pub mod xml;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::http::HeaderMap;
use backon::{ExponentialBuilder, Retryable};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::{
    config::{GatewayProtocol, GatewaySettings},
    domain::payment_method::PaymentMethod,
};
pub use breaker::{Breaker, Circuit};

/// What a gateway says about a payment, when it says something we can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved { reference: Option<String> },
    Declined { reason: String, reference: Option<String> },
    Pending { reference: Option<String> },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Approved { .. } => "approved",
            Outcome::Declined { .. } => "declined",
            Outcome::Pending { .. } => "pending",
        }
    }

    pub fn reference(&self) -> Option<&str> {
        match self {
            Outcome::Approved { reference } | Outcome::Declined { reference, .. } | Outcome::Pending { reference } => {
                reference.as_deref()
            }
        }
    }
}

/// What we ask a gateway to do. `payment_id` is the idempotency key the gateway dedups on.
pub struct PaymentRequest<'a> {
    pub payment_id: Uuid,
    pub amount: &'a str,
    pub currency: &'a str,
    pub method: &'a PaymentMethod,
    pub callback_url: &'a str,
}

/// A verified callback.
#[derive(Debug, Clone)]
pub struct CallbackEvent {
    pub event_id: String,
    pub payment_id: Uuid,
    pub outcome: Outcome,
}

/// Why a call gave no outcome. The distinction that matters for money is whether the
/// gateway may have received the request: only `NotSent` and `CircuitOpen` say it
/// cannot have.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request never left: the connection could not be made. Safe to send again.
    #[error("gateway not reached: {0}")]
    NotSent(String),
    /// Sent, but no reply came back or the reply was a 5xx (a timeout, a dropped
    /// connection): the gateway may have executed it. Retried with the same key.
    #[error("transient gateway failure: {0}")]
    Transient(String),
    /// The gateway replied, but with nothing we may act on: a 409 (a request with this
    /// key in progress), another 4xx, an unknown status, an unreadable body. Not
    /// retried; the status query finds out.
    #[error("unclear gateway reply: {0}")]
    Unclear(String),
    /// The breaker is open: no call was made.
    #[error("circuit open; retry in {0:?}")]
    CircuitOpen(Duration),
}

impl GatewayError {
    /// Whether the same call is retried at once (with backoff, same idempotency key).
    pub fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Transient(_) | GatewayError::NotSent(_))
    }

    /// Whether the request may have reached the gateway.
    pub fn maybe_received(&self) -> bool {
        matches!(self, GatewayError::Transient(_) | GatewayError::Unclear(_))
    }

    /// Classifies an HTTP client error.
    pub fn from_http(e: reqwest::Error) -> Self {
        match e.status() {
            Some(s) => Self::from_status(s),
            None if e.is_connect() => GatewayError::NotSent(e.without_url().to_string()),
            None => GatewayError::Transient(e.without_url().to_string()),
        }
    }

    pub fn from_status(status: reqwest::StatusCode) -> Self {
        if status.is_server_error() {
            GatewayError::Transient(format!("status {status}"))
        } else {
            GatewayError::Unclear(format!("status {status}"))
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("missing, malformed, wrong or stale signature")]
    InvalidSignature,
    #[error("callback body: {0}")]
    Malformed(String),
}

/// One protocol's client.
#[async_trait]
pub trait Gateway: Send + Sync {
    async fn deposit(&self, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError>;
    async fn withdraw(&self, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError>;
    /// The gateway's view of a payment; `None` when it never received it.
    async fn query(&self, payment_id: Uuid) -> Result<Option<Outcome>, GatewayError>;
    /// Checks the signature (HMAC-SHA256, tolerance window) and parses the body.
    fn verify_callback(&self, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<CallbackEvent, CallbackError>;
}

/// A configured gateway: its client, breaker and retry policy.
pub struct Configured {
    pub name: String,
    pub protocol: GatewayProtocol,
    pub client: Box<dyn Gateway>,
    pub breaker: Breaker,
    retry: ExponentialBuilder,
}

impl Configured {
    /// Runs `op` through the breaker, retrying transient failures with exponential
    /// backoff and jitter, bounded by the configured attempts.
    ///
    /// When a later attempt finds the breaker open or cannot connect after an earlier
    /// one may have reached the gateway, the result is `Transient`: what counts is
    /// whether any attempt may have been received.
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, GatewayError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GatewayError>>,
    {
        let received = std::sync::atomic::AtomicBool::new(false);
        let attempt = || {
            let permit = self.breaker.try_acquire();
            let fut = op();
            let received = &received;
            async move {
                let started = std::time::Instant::now();
                let result = match permit {
                    Err(wait) => Err(GatewayError::CircuitOpen(wait)),
                    Ok(()) => {
                        let result = fut.await;
                        self.breaker.record(!matches!(&result, Err(e) if e.is_transient()));
                        result
                    }
                };
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(GatewayError::NotSent(_)) => "not_sent",
                    Err(GatewayError::Transient(_)) => "error",
                    Err(GatewayError::Unclear(_)) => "unclear",
                    Err(GatewayError::CircuitOpen(_)) => "circuit_open",
                };
                if matches!(&result, Err(e) if e.maybe_received()) {
                    received.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                crate::telemetry::metrics::gateway_call(&self.name, outcome, started);
                let all = Circuit::ALL.map(Circuit::as_str);
                crate::telemetry::metrics::circuit_state(&self.name, self.breaker.circuit().as_str(), &all);
                result
            }
        };
        let result = attempt
            .retry(self.retry)
            .sleep(tokio::time::sleep)
            .when(GatewayError::is_transient)
            .notify(
                |e, after| tracing::warn!(gateway = %self.name, error = %e, retry_in = ?after, "gateway call failed"),
            )
            .await;
        match result {
            Err(e @ (GatewayError::NotSent(_) | GatewayError::CircuitOpen(_)))
                if received.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Err(GatewayError::Transient(format!("{e}, after an earlier attempt that may have been received")))
            }
            other => other,
        }
    }
}

/// Every configured gateway, by name.
#[derive(Clone, Default)]
pub struct Gateways(Arc<BTreeMap<String, Arc<Configured>>>);

impl Gateways {
    pub fn from_settings(settings: &BTreeMap<String, GatewaySettings>) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        for (name, s) in settings {
            let client = build_client(s)?;
            let retry = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(s.retry_min_delay_ms))
                .with_max_delay(Duration::from_millis(s.retry_max_delay_ms))
                .with_max_times(s.retry_max_attempts.saturating_sub(1))
                .with_jitter();
            let breaker = Breaker::new(s.breaker_failure_threshold, Duration::from_millis(s.breaker_open_ms));
            let configured = Configured { name: name.clone(), protocol: s.protocol, client, breaker, retry };
            map.insert(name.clone(), Arc::new(configured));
        }
        Ok(Self(Arc::new(map)))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Configured>> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Configured>> {
        self.0.values()
    }
}

fn build_client(s: &GatewaySettings) -> anyhow::Result<Box<dyn Gateway>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(s.timeout_ms))
        .connect_timeout(Duration::from_millis(s.timeout_ms.min(2000)))
        .build()?;
    let base = s.base_url.trim_end_matches('/').to_string();
    // The current key, then the one it replaces: both verify callbacks while the
    // gateway switches.
    let secrets = std::iter::once(&s.signing_secret)
        .chain(&s.previous_signing_secret)
        .map(|secret| secret.expose_secret().as_bytes().to_vec())
        .collect();
    Ok(match s.protocol {
        GatewayProtocol::Json => Box::new(json::GatewayA::new(http, base, secrets)),
        GatewayProtocol::Xml => Box::new(xml::GatewayB::new(http, base, secrets)),
    })
}
