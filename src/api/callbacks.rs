//! POST /v1/gateways/{gateway}/callbacks: authenticated by the gateway's signature (no
//! bearer token), recorded once per gateway event id, applied idempotently.
use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{error::ApiError, AppState};
use crate::{
    gateways::CallbackError,
    payments::{state::Step, CallbackResult},
};

pub async fn receive(
    State(state): State<AppState>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(configured) = state.payments.gateways.get(&gateway) else {
        return Err(ApiError::gateway_not_found(StatusCode::NOT_FOUND, &gateway));
    };
    let event =
        configured.client.verify_callback(&headers, &body, chrono::Utc::now().timestamp()).map_err(|e| match e {
            CallbackError::InvalidSignature => {
                tracing::warn!(%gateway, "callback refused: invalid signature");
                ApiError::invalid_signature()
            }
            CallbackError::Malformed(_) => ApiError::invalid_request(e.to_string()),
        })?;
    let result = state.payments.record_callback(&gateway, event).await?;
    let body = match result {
        CallbackResult::UnknownPayment => return Err(ApiError::payment_not_found()),
        CallbackResult::Duplicate => json!({ "recorded": true, "duplicate": true, "applied": false }),
        CallbackResult::Recorded(step) => {
            let applied = !matches!(step, Step::Ignore | Step::Contradiction);
            json!({ "recorded": true, "duplicate": false, "applied": applied })
        }
    };
    Ok(Json(body).into_response())
}
