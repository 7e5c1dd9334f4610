//! The REST API. Handlers parse into domain types, ask the router for the shard, and
//! call the ledger / transfer layers; errors become problems in `error`.
pub mod auth;
mod batch;
mod callbacks;
pub mod error;
pub mod extract;
mod health;
pub mod http_metrics;
pub mod idempotency;
pub mod openapi;
mod payments;
pub mod rate_limit;
mod rejections;
mod transfers;
mod users;

use std::{sync::Arc, time::Duration};

use axum::{
    middleware,
    routing::{get, post},
    Router as Routes,
};
use rdkafka::producer::FutureProducer;

use crate::{config::Settings, messaging::outbox::Wakers, sharding::Router, transfer::admission::Admission};
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub router: Arc<Router>,
    pub auth: auth::Auth,
    pub settings: Arc<Settings>,
    pub wakers: Wakers,
    pub producer: FutureProducer,
    pub admission: Arc<Admission>,
    pub payments: Arc<crate::payments::Payments>,
    /// Signs what the relays publish and verifies what the consumers take.
    pub messages: crate::messaging::auth::MessageAuth,
    /// This deployment's topic names, from `kafka.topic_prefix` once at start.
    pub topics: Arc<crate::messaging::kafka::Topics>,
    /// Receivers found ready for a direct credit (`tcc::receiver_ready`).
    pub receivers: Arc<crate::transfer::tcc::KnownReceivers>,
}

impl AppState {
    pub fn try_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.transfers.try_timeout_secs)
    }
}

pub fn routes(state: AppState) -> Routes {
    let limits = rate_limit::RateLimits::new(&state.settings.rate_limits, state.auth.clone());
    Routes::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/v1/users", post(users::create_user))
        .route("/v1/users/{user_id}", get(users::get_user))
        .route("/v1/users/{user_id}/wallets", post(users::create_wallet).get(users::list_wallets))
        .route("/v1/users/{user_id}/wallets/{currency}", get(users::get_wallet))
        .route("/v1/users/{user_id}/wallets/{currency}/entries", get(users::entries))
        .route("/v1/users/{user_id}/transfers", get(transfers::list_for_user))
        .route("/v1/transfers", post(transfers::create))
        .route("/v1/transfers/batch", post(batch::create))
        .route("/v1/transfers/{transfer_id}", get(transfers::get))
        .route("/v1/entries/{entry_id}/reversal", post(users::reverse_entry))
        .route("/v1/admin/adjustments", post(users::adjust))
        .route("/v1/admin/transfers", get(transfers::admin_list))
        .route("/v1/admin/transfers/{transfer_id}/redrive", post(transfers::admin_redrive))
        .route("/v1/admin/audit", get(health::audit))
        .route("/v1/admin/dead-letters", get(health::dead_letters))
        .route("/v1/admin/shards", get(health::shards))
        .route("/metrics", get(http_metrics::scrape))
        .merge(openapi::routes())
        .route("/v1/deposits", post(payments::deposit))
        .route("/v1/withdrawals", post(payments::withdraw))
        .route("/v1/payments/{payment_id}", get(payments::get))
        .route("/v1/users/{user_id}/payments", get(payments::list_for_user))
        .route("/v1/gateways/{gateway}/callbacks", post(callbacks::receive).layer(callbacks::body_limit()))
        .route("/v1/admin/gateways", get(payments::admin_gateways))
        .route("/v1/admin/payments", get(payments::admin_list))
        .route("/v1/admin/payments/{payment_id}/resolve", post(payments::admin_resolve))
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        // Layers run bottom-up: metrics see every response, 429s included.
        .layer(middleware::from_fn(rejections::as_problems))
        .layer(middleware::from_fn_with_state(limits, rate_limit::enforce))
        .layer(middleware::from_fn(http_metrics::track))
        .with_state(state)
}
