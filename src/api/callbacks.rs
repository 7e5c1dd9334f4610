//! POST /v1/gateways/{gateway}/callbacks: authenticated by the gateway's signature (no
//! bearer token), recorded once per gateway event id, applied idempotently.
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    error::ApiError,
    openapi::schemas::{CallbackSignature, GatewayPath},
    AppState,
};
use crate::{
    gateways::CallbackError,
    payments::{state::Step, CallbackResult},
};

/// A notification is a few hundred bytes; anything this big is refused before its
/// signature is checked, so an unauthenticated caller cannot make us hash megabytes.
pub const MAX_BODY: usize = 64 * 1024;

/// The route's body limit (axum's default is 2 MB).
pub fn body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_BODY)
}

/// What became of a callback: `duplicate` when this gateway event id was recorded
/// before; `applied` false when it changes nothing or contradicts a final state.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CallbackAck {
    recorded: bool,
    duplicate: bool,
    applied: bool,
}

/// A gateway's notification of a payment's outcome, in its own format (gateway A: JSON,
/// gateway B: XML), signed with the gateway's secret instead of a bearer token. Recorded
/// once per gateway event id; a repeat answers `200` with `duplicate: true`.
#[utoipa::path(post, path = "/v1/gateways/{gateway}/callbacks", tag = "payments", security(()),
    params(GatewayPath, CallbackSignature),
    request_body(description = "the gateway's notification, raw (the signature covers these exact bytes)",
        content((String = "application/json"), (String = "application/xml"))),
    responses(
        (status = 200, description = "recorded (or a duplicate)", body = CallbackAck),
        (status = 400, description = "invalid_request: a signed body that is not a notification"),
        (status = 401, description = "invalid_signature: missing, malformed, wrong or stale signature"),
        (status = 404, description = "gateway_not_found, or payment_not_found: no payment of this gateway has that id"),
        (status = 413, description = "payload_too_large: a body over 64 KiB"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(MAX_BODY),
        _ => ApiError::invalid_request(e.body_text()),
    })?;
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
        CallbackResult::Duplicate => CallbackAck { recorded: true, duplicate: true, applied: false },
        CallbackResult::Recorded(step) => {
            let applied = !matches!(step, Step::Ignore | Step::Contradiction);
            CallbackAck { recorded: true, duplicate: false, applied }
        }
    };
    Ok(Json(body).into_response())
}
