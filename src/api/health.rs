//! Liveness, readiness, and the operator views (audit, dead letters).
use std::{collections::BTreeMap, time::Duration};

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use rdkafka::producer::Producer;

use super::{auth::require_admin, error::ApiError, openapi::schemas::AdminsOnly, AppState};
use crate::{domain::Caller, ledger::verify, messaging::dlq};

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "alive")]
    status: &'static str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    /// What did not answer.
    down: Vec<String>,
    /// Per shard name and `broker`.
    checks: BTreeMap<String, CheckState>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Up,
    Down,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "alive", body = Health)))]
pub async fn health() -> impl IntoResponse {
    Json(Health { status: "alive" })
}

/// 200 when every shard and the broker answer within a second; else 503 naming what
/// is down.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "every shard and the broker answer", body = Readiness),
        (status = 503, description = "something is down", body = Readiness),
    )
)]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let shards = state.router.shards();
    let probes = shards.iter().map(|shard| async move {
        let probe = async {
            let client = shard.client().await.map_err(|e| e.to_string())?;
            client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let result = match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        };
        (shard.name.clone(), result)
    });
    let shards = futures::future::join_all(probes).await;
    let producer = state.producer.clone();
    // Only this deployment's stage topic: the metadata of every topic on a shared broker
    // can take longer than the second a probe has.
    let stages = state.topics.stages.clone();
    let broker = tokio::task::spawn_blocking(move || {
        if let Some((_, reason)) = producer.client().fatal_error() {
            return Err(format!("producer failed fatally: {reason}"));
        }
        producer.client().fetch_metadata(Some(&stages), Duration::from_secs(1)).map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));

    let mut down = Vec::new();
    let mut checks = BTreeMap::new();
    for (name, result) in shards.into_iter().chain([("broker".to_string(), broker)]) {
        match result {
            Ok(()) => checks.insert(name, CheckState::Up),
            Err(e) => {
                tracing::warn!(component = %name, error = %e, "not ready");
                down.push(name.clone());
                checks.insert(name, CheckState::Down)
            }
        };
    }
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness { status: if down.is_empty() { "ready" } else { "unavailable" }, down, checks };
    (status, Json(body))
}

/// Audits every shard (admin only): balances, postings, holds, totals.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "the audit report", body = verify::Report),
        AdminsOnly,
    )
)]
pub async fn audit(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    require_admin(&caller)?;
    Ok(Json(verify::run(&state.router).await?))
}

/// Dead-lettered stage messages (admin only).
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "counts", body = dlq::DeadLetterCounts),
        AdminsOnly,
    )
)]
pub async fn dead_letters(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    require_admin(&caller)?;
    let (settings, topics) = (state.settings.kafka.clone(), state.topics.clone());
    let counts =
        tokio::task::spawn_blocking(move || dlq::counts(&settings, &topics)).await.map_err(anyhow::Error::from)??;
    Ok(Json(counts))
}

/// Every shard of the cluster with its buckets, users and wallets, the map epoch and
/// any move in progress (admin only); the same as `shardwallet shards list --json`.
#[utoipa::path(get, path = "/v1/admin/shards", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "the cluster", body = crate::resharding::members::Cluster),
        AdminsOnly,
    )
)]
pub async fn shards(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    require_admin(&caller)?;
    Ok(Json(crate::resharding::members::list(&state.router).await?))
}
