//! Deposits and withdrawals: create (202 pending), read, a user's list, and the admin
//! view of the gateways.
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    auth::{require_admin, require_self_or_admin},
    error::{gateway_unavailable, ApiError},
    extract::{self, json_body, PageQuery},
    idempotency::Idempotency,
    openapi::schemas::{
        self as doc, AdminsOnly, GatewayUnavailable, IdempotencyHeader, OthersData, PageParams, PaymentPath,
        PaymentStateQuery, UserPath,
    },
    AppState,
};
use crate::{
    domain::Caller,
    gateways::breaker::Circuit,
    payments::{method::PaymentMethod, state::State as PaymentState, store, PaymentKind},
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct PaymentPage {
    data: Vec<store::PaymentView>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    #[schema(value_type = Option<String>)]
    next_cursor: Option<uuid::Uuid>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GatewayHealth {
    #[schema(example = "gateway_a")]
    gateway: String,
    /// `json` (gateway A's protocol) or `xml` (gateway B's).
    #[schema(example = "json")]
    protocol: &'static str,
    circuit: Circuit,
    /// Failed share of the recent calls, 0 to 1 (0 with no calls).
    #[schema(minimum = 0.0, maximum = 1.0)]
    recent_error_rate: f64,
    /// How many recent calls the rate is over (at most 50).
    recent_calls: usize,
    /// Payments of this gateway not final yet, over every shard.
    in_flight: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GatewayList {
    data: Vec<GatewayHealth>,
}

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
    #[schema(value_type = PaymentMethod, required = true)]
    payment_method: serde_json::Value,
}

/// Money in from a card or bank account through a gateway: `202`, pending (follow it
/// with `GET /v1/payments/{payment_id}`); the wallet is credited when the gateway
/// confirms. Needs an Idempotency-Key.
#[utoipa::path(post, path = "/v1/deposits", tag = "payments", security(("bearer" = [])),
    params(IdempotencyHeader), request_body = NewPayment,
    responses(
        (status = 202, description = "accepted, pending", body = store::PaymentView),
        (status = 400, description = "invalid_request, invalid_amount, invalid_payment_method or idempotency_key_missing"),
        (status = 403, description = "forbidden: a user may only deposit to themself"),
        (status = 404, description = "user_not_found or wallet_not_found"),
        (status = 409, description = "idempotency_request_in_progress"),
        (status = 422, description = "gateway_not_found or idempotency_key_reused"),
        GatewayUnavailable,
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
        (status = 202, description = "accepted, pending", body = store::PaymentView),
        (status = 400, description = "invalid_request, invalid_amount, invalid_payment_method or idempotency_key_missing"),
        (status = 403, description = "forbidden: a user may only withdraw from themself"),
        (status = 404, description = "user_not_found or wallet_not_found"),
        (status = 409, description = "idempotency_request_in_progress"),
        (status = 422, description = "gateway_not_found, insufficient_funds or idempotency_key_reused"),
        GatewayUnavailable,
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
    let bucket = state.router.bucket_of_user(&user);
    if let Err(wait) = gateway.breaker.admits_new_payments() {
        // A retry of a payment already accepted gets its answer; a new one is refused
        // before its Idempotency-Key is claimed, so a retry after Retry-After runs.
        if let Some(stored) = idem.stored(&state.router, bucket).await? {
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
    let (response, committed) =
        idem.run(&state.router, bucket, StatusCode::ACCEPTED, async |tx| store::create(tx, &new).await).await?;
    if committed {
        payments.wakers.wake(crate::messaging::outbox::Outbox::Payments, state.router.for_user(&user).index);
    }
    Ok(response)
}

/// A payment (its user and admins only).
#[utoipa::path(get, path = "/v1/payments/{payment_id}", tag = "payments", security(("bearer" = [])),
    params(PaymentPath),
    responses(
        (status = 200, description = "the payment", body = store::PaymentView),
        (status = 403, description = "forbidden: another user's payment"),
        (status = 404, description = "payment_not_found"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(payment_id): Path<String>,
) -> Result<Response, ApiError> {
    let (id, bucket) = extract::routed(&state.router, &payment_id, ApiError::payment_not_found)?;
    let payment = extract::owner_read(&state.router, bucket, async |tx| Ok(store::get(tx, id.uuid()).await?))
        .await?
        .ok_or_else(ApiError::payment_not_found)?;
    if !(caller.is_admin() || caller.subject == payment.view.user_id) {
        return Err(ApiError::forbidden("this payment is not yours"));
    }
    Ok(Json(payment.view).into_response())
}

/// A user's deposits and withdrawals, newest first.
#[utoipa::path(get, path = "/v1/users/{user_id}/payments", tag = "payments", security(("bearer" = [])),
    params(UserPath, PageParams),
    responses(
        (status = 200, description = "a page of payments", body = PaymentPage),
        (status = 400, description = "invalid_request: a malformed user id, limit or cursor"),
        OthersData,
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
    let (user, bucket) = extract::visible_user(&state.router, &caller, &user_id)?;
    let (data, next) = extract::owner_read(&state.router, bucket, async |tx| {
        extract::require_user(tx, &user).await?;
        Ok(store::list(tx, &user, limit, cursor).await?)
    })
    .await?;
    Ok(Json(PaymentPage { data, next_cursor: next }).into_response())
}

/// Each gateway's breaker state, recent error rate and payments in flight (admin only).
#[utoipa::path(get, path = "/v1/admin/gateways", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "every configured gateway", body = GatewayList),
        AdminsOnly,
    )
)]
pub async fn admin_gateways(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let in_flight = state.payments.in_flight().await?;
    let data = state
        .payments
        .gateways
        .iter()
        .map(|g| {
            let (rate, calls) = g.breaker.error_rate();
            GatewayHealth {
                gateway: g.name.clone(),
                protocol: g.protocol.as_str(),
                circuit: g.breaker.circuit(),
                recent_error_rate: rate,
                recent_calls: calls,
                in_flight: in_flight.get(&g.name).copied().unwrap_or(0),
            }
        })
        .collect();
    Ok(Json(GatewayList { data }).into_response())
}

/// Payments in one state over every shard, newest first (admin only); by default those
/// in `needs_review`: past their deadline while the gateway may hold them, hold kept.
#[utoipa::path(get, path = "/v1/admin/payments", tag = "admin", security(("bearer" = [])),
    params(PaymentStateQuery, PageParams),
    responses(
        (status = 200, description = "a page of payments", body = PaymentPage),
        (status = 400, description = "invalid_request: an unknown state, a malformed limit or cursor"),
        AdminsOnly,
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
    Ok(Json(PaymentPage { data, next_cursor: next }).into_response())
}

/// `POST /v1/admin/payments/{payment_id}/resolve`: an operator's decision.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PaymentResolution)]
pub struct Resolution {
    outcome: ResolutionOutcome,
    /// Why (kept with the payment), 1-1000 characters.
    #[schema(example = "confirmed paid in the gateway's dashboard")]
    note: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionOutcome {
    Succeeded,
    Failed,
}

/// An operator settles a payment still pending — typically one in `needs_review` —
/// after checking with the gateway: `succeeded` posts it (a withdrawal's hold becomes
/// the debit), `failed` releases a withdrawal's hold. Needs an Idempotency-Key; a final
/// payment is `409 payment_final`.
#[utoipa::path(post, path = "/v1/admin/payments/{payment_id}/resolve", tag = "admin", security(("bearer" = [])),
    params(PaymentPath, IdempotencyHeader), request_body = Resolution,
    responses(
        (status = 200, description = "resolved", body = store::PaymentView),
        (status = 400, description = "invalid_request (outcome, note) or idempotency_key_missing"),
        AdminsOnly,
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
    let (id, bucket) = extract::routed(&state.router, &payment_id, ApiError::payment_not_found)?;
    let (raw, req): (_, Resolution) = json_body(&body)?;
    let succeeded = matches!(req.outcome, ResolutionOutcome::Succeeded);
    let note = req.note.trim();
    if note.is_empty() || note.chars().count() > 1000 {
        return Err(ApiError::invalid_request("note must be 1-1000 characters: say why"));
    }
    let path = format!("/v1/admin/payments/{}/resolve", id.uuid());
    let idem = Idempotency::from_request(&caller, &headers, "POST", &path, &raw)?;
    let timing = state.payments.timing(std::time::Duration::ZERO);
    let (response, _) = idem
        .run(&state.router, bucket, StatusCode::OK, async |tx| {
            store::resolve(tx, id.uuid(), succeeded, &caller.subject, note, timing).await
        })
        .await?;
    Ok(response)
}
