//! Transfers: create (same shard: completed at once; cross shard: 202 pending), read,
//! and a user's list.
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    auth::require_self_or_admin,
    error::ApiError,
    extract::{self, json_body, PageQuery},
    idempotency::Idempotency,
    AppState,
};
use crate::{
    domain::{Caller, RoutableId},
    ledger::{self, local::TransferRequest, queries},
    transfer::{self, admission::Overloaded},
};

#[derive(Deserialize)]
pub struct NewTransfer {
    from_user_id: String,
    to_user_id: String,
    currency: String,
    #[serde(default)]
    amount: serde_json::Value,
    description: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (raw, req): (_, NewTransfer) = json_body(&body)?;
    let from = extract::user_id(&req.from_user_id)?;
    let to = extract::user_id(&req.to_user_id)?;
    let currency = extract::currency(&req.currency)?;
    let amount = extract::amount(&req.amount)?;
    if req.description.as_ref().is_some_and(|d| d.len() > 500) {
        return Err(ApiError::invalid_request("description must be at most 500 characters"));
    }
    require_self_or_admin(&caller, &from)?;
    let idem = Idempotency::from_request(&caller, &headers, "POST", "/v1/transfers", &raw)?;
    let route =
        transfer::Route::decide(&state.router, &from, &to, &currency, state.settings.transfers.direct_credit).await;
    let cross_shard = route.is_cross_shard();
    let shard = state.router.for_user(&from);
    let request = TransferRequest {
        transfer_id: state.router.new_id_for(&from),
        from: &from,
        to: &to,
        currency: &currency,
        amount: &amount,
        description: req.description.as_deref(),
    };
    let success = if cross_shard { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    if cross_shard {
        // Refused before the key is claimed: a retry with the same key goes through
        // once there is room.
        if let Err(refused) = state.admission.admit(shard.index) {
            return Ok(overloaded(&refused));
        }
    }
    let outcome =
        idem.run(shard, success, async |tx| transfer::start(tx, route, &request, state.try_timeout()).await).await;
    let committed = matches!(outcome, Ok((_, true)));
    if cross_shard {
        state.admission.finish(shard.index, committed);
    }
    if committed && cross_shard {
        state.wakers.wake(shard.index);
    }
    Ok(outcome?.0)
}

fn overloaded(refused: &Overloaded) -> Response {
    tracing::info!(why = %refused.why, "cross-shard transfer refused: overloaded");
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many cross-shard transfers are in flight; retry after the Retry-After delay with the same Idempotency-Key",
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&refused.retry_after.as_secs().to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(transfer_id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("transfer_not_found", "transfer not found");
    let id = RoutableId::parse(&transfer_id).ok_or_else(not_found)?;
    let shard = state.router.for_id(&id).map_err(|_| not_found())?;
    let client = shard.client().await?;
    let view = queries::get_transfer(&client, id.uuid()).await?;
    if !(caller.is_admin() || caller.subject == view.from_user_id || caller.subject == view.to_user_id) {
        return Err(ApiError::forbidden("you are not a party to this transfer"));
    }
    Ok(Json(view).into_response())
}

pub async fn list_for_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let user = extract::user_id(&user_id)?;
    require_self_or_admin(&caller, &user)?;
    let limit = page.limit()?;
    let cursor = match &page.cursor {
        None => None,
        Some(c) => Some(
            uuid::Uuid::parse_str(c).map_err(|_| ApiError::invalid_request("cursor is not one this API returned"))?,
        ),
    };
    let client = state.router.for_user(&user).client().await?;
    if !ledger::accounts::user_exists(&client, &user).await? {
        return Err(ledger::Error::UserNotFound.into());
    }
    let (data, next) = queries::user_transfers(&client, &user, limit, cursor).await?;
    Ok(Json(json!({ "data": data, "next_cursor": next })).into_response())
}
