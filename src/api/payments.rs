//! Deposits and withdrawals: create (202 pending), read, a user's list, and the admin
//! view of the gateways.
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    auth::{require_admin, require_self_or_admin},
    error::{gateway_unavailable, ApiError},
    extract::{self, json_body, PageQuery},
    idempotency::Idempotency,
    openapi::schemas::{self as doc, IdempotencyHeader, PageParams, PaymentPath, PaymentStateQuery, UserPath},
    AppState,
};
use crate::{
    domain::{Caller, RoutableId},
    payments::{method::PaymentMethod, state::State as PaymentState, store, PaymentKind},
};

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewPayment {
    #[schema(schema_with = doc::user_id)]
    user_id: String,
    #[schema(schema_with = doc::currency)]
    currency: String,
    #[serde(default)]
    #[schema(schema_with = doc::amount_input, required = true)]
    amount: serde_json::Value,
    /// A configured gateway's name (`GET /v1/admin/gateways` lists them).
    #[schema(example = "gateway_a")]
    gateway: String,
    #[serde(default)]
    #[schema(value_type = doc::PaymentMethodInput, required = true)]
    payment_method: serde_json::Value,
}

/// Money in from a card or bank account through a gateway: `202`, pending (follow it
/// with `GET /v1/payments/{payment_id}`); the wallet is credited when the gateway
/// confirms. Needs an Idempotency-Key.
#[utoipa::path(post, path = "/v1/deposits", tag = "payments", security(("bearer" = [])),
    params(IdempotencyHeader), request_body = NewPayment,
    responses(
        (status = 202, description = "accepted, pending", body = doc::Payment),
        (status = 400, description = "invalid_request, invalid_amount, invalid_payment_method or idempotency_key_missing"),
        (status = 403, description = "forbidden: a user may only deposit to themself"),
        (status = 404, description = "user_not_found or wallet_not_found"),
        (status = 409, description = "idempotency_request_in_progress"),
        (status = 422, description = "gateway_not_found or idempotency_key_reused"),
        (status = 503, description = "gateway_unavailable: the gateway's circuit is open, retry after Retry-After; \
                                      or shard_unavailable / busy: retry later (with the same Idempotency-Key)",
            headers(("Retry-After" = u64, description = "with gateway_unavailable: seconds until a retry can succeed"))),
    )
)]
pub async fn deposit(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    create(state, caller, headers, body, PaymentKind::Deposit).await
}

/// Money out to a card or bank account through a gateway: `202`, pending; the amount is
/// held at once, and leaves the wallet when the gateway confirms (released if it
/// fails). Needs an Idempotency-Key.
#[utoipa::path(post, path = "/v1/withdrawals", tag = "payments", security(("bearer" = [])),
    params(IdempotencyHeader), request_body = NewPayment,
    responses(
        (status = 202, description = "accepted, pending", body = doc::Payment),
        (status = 400, description = "invalid_request, invalid_amount, invalid_payment_method or idempotency_key_missing"),
        (status = 403, description = "forbidden: a user may only withdraw from themself"),
        (status = 404, description = "user_not_found or wallet_not_found"),
        (status = 409, description = "idempotency_request_in_progress"),
        (status = 422, description = "gateway_not_found, insufficient_funds or idempotency_key_reused"),
        (status = 503, description = "gateway_unavailable: the gateway's circuit is open, retry after Retry-After; \
                                      or shard_unavailable / busy: retry later (with the same Idempotency-Key)",
            headers(("Retry-After" = u64, description = "with gateway_unavailable: seconds until a retry can succeed"))),
    )
)]
pub async fn withdraw(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    create(state, caller, headers, body, PaymentKind::Withdrawal).await
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    kind: PaymentKind,
) -> Result<Response, ApiError> {
    let (mut raw, req): (_, NewPayment) = json_body(&body)?;
    let user = extract::user_id(&req.user_id)?;
    let currency = extract::currency(&req.currency)?;
    let amount = extract::amount(&req.amount)?;
    let method =
        PaymentMethod::parse(&req.payment_method).map_err(|e| ApiError::invalid_payment_method(e.to_string()))?;
    require_self_or_admin(&caller, &user)?;
    let payments = &state.payments;
    let Some(gateway) = payments.gateways.get(&req.gateway) else {
        return Err(ApiError::gateway_not_found(StatusCode::UNPROCESSABLE_ENTITY, &req.gateway));
    };
    // The fingerprint sees the method masked plus a keyed digest, never the number.
    raw["payment_method"] = json!({ "masked": method.masked(), "digest": payments.sealer.fingerprint(&method) });
    let path = format!("/v1/{}s", kind.as_str());
    let idem = Idempotency::from_request(&caller, &headers, "POST", &path, &raw)?;
    let shard = state.router.for_user(&user);
    if let Err(wait) = gateway.breaker.admits_new_payments() {
        // A retry of a payment already accepted gets its answer; a new one is refused
        // before its Idempotency-Key is claimed, so a retry after Retry-After runs.
        if let Some(stored) = idem.stored(shard).await? {
            return Ok(stored);
        }
        return Ok(gateway_unavailable(&req.gateway, wait));
    }
    let sealed = payments.sealer.seal(&method)?;
    let now = chrono::Utc::now();
    let new = store::NewPayment {
        payment_id: state.router.new_id_for(&user),
        kind,
        user: &user,
        currency: &currency,
        amount: &amount,
        gateway: &gateway.name,
        method: &method,
        sealed: &sealed,
        deadline: now + chrono::Duration::seconds(payments.settings.deadline_secs as i64),
        redrive_at: now + chrono::Duration::milliseconds(payments.settings.query_after_ms as i64),
    };
    let (response, committed) = idem.run(shard, StatusCode::ACCEPTED, async |tx| store::create(tx, &new).await).await?;
    if committed {
        payments.wakers.wake(crate::messaging::outbox::Outbox::Payments, shard.index);
    }
    Ok(response)
}

/// A payment (its user and admins only).
#[utoipa::path(get, path = "/v1/payments/{payment_id}", tag = "payments", security(("bearer" = [])),
    params(PaymentPath),
    responses(
        (status = 200, description = "the payment", body = doc::Payment),
        (status = 403, description = "forbidden: another user's payment"),
        (status = 404, description = "payment_not_found"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(payment_id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = ApiError::payment_not_found;
    let id = RoutableId::parse(&payment_id).ok_or_else(not_found)?;
    let shard = state.router.for_id(&id).map_err(|_| not_found())?;
    let client = shard.client().await?;
    let payment = store::get(&client, id.uuid()).await?.ok_or_else(not_found)?;
    if !(caller.is_admin() || caller.subject == payment.view.user_id) {
        return Err(ApiError::forbidden("this payment is not yours"));
    }
    Ok(Json(payment.view).into_response())
}

/// A user's deposits and withdrawals, newest first.
#[utoipa::path(get, path = "/v1/users/{user_id}/payments", tag = "payments", security(("bearer" = [])),
    params(UserPath, PageParams),
    responses(
        (status = 200, description = "a page of payments", body = doc::PaymentPage),
        (status = 400, description = "invalid_request: a malformed user id, limit or cursor"),
        (status = 403, description = "forbidden: another user's data"),
        (status = 404, description = "user_not_found"),
    )
)]
pub async fn list_for_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (limit, cursor) = (page.limit()?, page.cursor::<uuid::Uuid>()?);
    let (user, client) = extract::visible_user(&state, &caller, &user_id, true).await?;
    let (data, next) = store::list(&client, &user, limit, cursor).await?;
    Ok(Json(json!({ "data": data, "next_cursor": next })).into_response())
}

/// Each gateway's breaker state, recent error rate and payments in flight (admin only).
#[utoipa::path(get, path = "/v1/admin/gateways", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "every configured gateway", body = doc::GatewayList),
        (status = 403, description = "forbidden: admins only"),
    )
)]
pub async fn admin_gateways(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let in_flight = state.payments.in_flight().await?;
    let data: Vec<_> = state
        .payments
        .gateways
        .iter()
        .map(|g| {
            let (rate, calls) = g.breaker.error_rate();
            json!({
                "gateway": g.name,
                "protocol": g.protocol,
                "circuit": g.breaker.circuit(),
                "recent_error_rate": rate,
                "recent_calls": calls,
                "in_flight": in_flight.get(&g.name).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}

/// Payments in one state over every shard, newest first (admin only); by default those
/// in `needs_review`: past their deadline while the gateway may hold them, hold kept.
#[utoipa::path(get, path = "/v1/admin/payments", tag = "admin", security(("bearer" = [])),
    params(PaymentStateQuery, PageParams),
    responses(
        (status = 200, description = "a page of payments", body = doc::PaymentPage),
        (status = 400, description = "invalid_request: an unknown state, a malformed limit or cursor"),
        (status = 403, description = "forbidden: admins only"),
    )
)]
pub async fn admin_list(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<extract::StateQuery>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let wanted = match filter.state.as_deref() {
        None => PaymentState::NeedsReview,
        Some(text) => PaymentState::parse(text).ok_or_else(|| {
            ApiError::invalid_request("state must be created, submitted, needs_review, succeeded or failed")
        })?,
    };
    let (limit, cursor) = (page.limit()?, page.cursor::<uuid::Uuid>()?);
    let (data, next) = extract::page_over_shards(
        &state.router,
        limit,
        |p: &store::PaymentView| p.payment_id,
        |client| async move { store::list_in_state(&client, wanted, limit + 1, cursor).await },
    )
    .await?;
    Ok(Json(json!({ "data": data, "next_cursor": next })).into_response())
}

#[derive(Deserialize)]
struct Resolution {
    outcome: String,
    note: String,
}

/// An operator settles a payment still pending — typically one in `needs_review` —
/// after checking with the gateway: `succeeded` posts it (a withdrawal's hold becomes
/// the debit), `failed` releases a withdrawal's hold. Needs an Idempotency-Key; a final
/// payment is `409 payment_final`.
#[utoipa::path(post, path = "/v1/admin/payments/{payment_id}/resolve", tag = "admin", security(("bearer" = [])),
    params(PaymentPath, IdempotencyHeader), request_body = doc::PaymentResolution,
    responses(
        (status = 200, description = "resolved", body = doc::Payment),
        (status = 400, description = "invalid_request (outcome, note) or idempotency_key_missing"),
        (status = 403, description = "forbidden: admins only"),
        (status = 404, description = "payment_not_found"),
        (status = 409, description = "payment_final: already succeeded or failed; or idempotency_request_in_progress"),
        (status = 422, description = "idempotency_key_reused"),
    )
)]
pub async fn admin_resolve(
    State(state): State<AppState>,
    caller: Caller,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let id = RoutableId::parse(&payment_id).ok_or_else(ApiError::payment_not_found)?;
    let shard = state.router.for_id(&id).map_err(|_| ApiError::payment_not_found())?;
    let (raw, req): (_, Resolution) = json_body(&body)?;
    let succeeded = match req.outcome.as_str() {
        "succeeded" => true,
        "failed" => false,
        _ => return Err(ApiError::invalid_request("outcome must be succeeded or failed")),
    };
    let note = req.note.trim();
    if note.is_empty() || note.chars().count() > 1000 {
        return Err(ApiError::invalid_request("note must be 1-1000 characters: say why"));
    }
    let path = format!("/v1/admin/payments/{}/resolve", id.uuid());
    let idem = Idempotency::from_request(&caller, &headers, "POST", &path, &raw)?;
    let timing = state.payments.timing(std::time::Duration::ZERO);
    let (response, _) = idem
        .run(shard, StatusCode::OK, async |tx| {
            store::resolve(tx, id.uuid(), succeeded, &caller.subject, note, timing).await
        })
        .await?;
    Ok(response)
}
