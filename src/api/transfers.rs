//! Transfers: create (same shard: completed at once; cross shard: 202 pending), read,
//! and a user's list.
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};

use super::{
    auth::require_admin,
    auth::require_self_or_admin,
    error::ApiError,
    extract::{self, json_body, PageQuery},
    idempotency::Idempotency,
    openapi::schemas::{
        self as doc, AdminsOnly, IdempotencyHeader, OthersData, PageParams, TransferPath, TransferStateQuery, UserPath,
    },
    AppState,
};
use crate::{
    domain::{Amount, Caller, Currency, RoutableId, UserId},
    ledger::{local, local::TransferRequest, queries},
    transfer::{self, admission::Overloaded},
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct TransferPage {
    data: Vec<queries::TransferView>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    #[schema(value_type = Option<String>)]
    next_cursor: Option<uuid::Uuid>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewTransfer {
    #[schema(schema_with = doc::user_id)]
    from_user_id: String,
    #[schema(schema_with = doc::user_id)]
    to_user_id: String,
    #[schema(schema_with = doc::currency)]
    currency: String,
    #[serde(default)]
    #[schema(schema_with = doc::amount_input, required = true)]
    amount: serde_json::Value,
    /// At most 500 characters.
    #[schema(max_length = 500)]
    description: Option<String>,
}

/// Sends money. Same shard: `201`, completed. Across shards: `202`, pending (follow it
/// with `GET /v1/transfers/{transfer_id}`). Needs an Idempotency-Key.
#[utoipa::path(post, path = "/v1/transfers", tag = "transfers", security(("bearer" = [])),
    params(IdempotencyHeader), request_body = NewTransfer,
    responses(
        (status = 201, description = "completed (same shard)", body = queries::TransferView),
        (status = 202, description = "accepted, pending (cross shard)", body = queries::TransferView),
        (status = 400, description = "invalid_request, invalid_amount or idempotency_key_missing"),
        (status = 403, description = "forbidden: a user may only send from themself"),
        (status = 404, description = "user_not_found or wallet_not_found"),
        (status = 409, description = "idempotency_request_in_progress"),
        (status = 422, description = "insufficient_funds, currency_mismatch, same_account or idempotency_key_reused"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (raw, req): (_, NewTransfer) = json_body(&body)?;
    let checked = req.check(&caller)?;
    let idem = Idempotency::from_request(&caller, &headers, "POST", PATH, &raw)?;
    send(&state, &checked, &idem).await
}

/// The path a single transfer is posted to, and fingerprinted with.
pub(super) const PATH: &str = "/v1/transfers";

/// A transfer request with its fields parsed and the caller allowed to send it.
pub(super) struct Checked {
    pub from: UserId,
    pub to: UserId,
    pub currency: Currency,
    pub amount: Amount,
    pub description: Option<String>,
}

impl NewTransfer {
    /// The checks of a request's fields, in the order a single request makes them.
    pub(super) fn check(&self, caller: &Caller) -> Result<Checked, ApiError> {
        let from = extract::user_id(&self.from_user_id)?;
        let to = extract::user_id(&self.to_user_id)?;
        let currency = extract::currency(&self.currency)?;
        let amount = extract::amount(&self.amount)?;
        if self.description.as_ref().is_some_and(|d| d.len() > 500) {
            return Err(ApiError::invalid_request("description must be at most 500 characters"));
        }
        require_self_or_admin(caller, &from)?;
        Ok(Checked { from, to, currency, amount, description: self.description.clone() })
    }
}

impl Checked {
    pub(super) fn request(&self, transfer_id: RoutableId) -> TransferRequest<'_> {
        TransferRequest {
            transfer_id,
            from: &self.from,
            to: &self.to,
            currency: &self.currency,
            amount: &self.amount,
            description: self.description.as_deref(),
        }
    }
}

/// A checked transfer, sent once per Idempotency-Key: the answer a single request gets.
pub(super) async fn send(state: &AppState, checked: &Checked, idem: &Idempotency) -> Result<Response, ApiError> {
    let (from, to) = (&checked.from, &checked.to);
    let bucket = state.router.bucket_of_user(from);
    let shard = state.router.for_user(from);
    let cross_shard = !state.router.same_shard(from, to);
    // Admission first, so a refusal costs no read on the receiver's shard. A refused
    // request is not stored under its key (a retry goes through once there is room),
    // but a retry of a transfer accepted earlier gets that answer, overloaded or not.
    let admitted = match cross_shard.then(|| state.admission.admit(shard.index)).transpose() {
        Ok(admitted) => admitted,
        Err(refused) => {
            return Ok(match idem.stored(&state.router, bucket).await? {
                Some(replay) => replay,
                None => overloaded(&refused),
            })
        }
    };
    let request = checked.request(state.router.new_id_for(from));
    let success = if cross_shard { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    if !cross_shard {
        // The common case in one round trip; anything else (a refusal, a moved bucket,
        // a retry) goes the general way below, which decides again.
        let at = now_as_stored();
        let receiver_bucket = state.router.bucket_of_user(to);
        let view = local::completed_view(&request, at);
        let done = idem
            .try_in_one_call(&state.router, bucket, success, &view, async |client, answer| {
                transfer::complete_local_in_one_call(client, &request, receiver_bucket, at, answer).await
            })
            .await?;
        if let Some(response) = done {
            crate::telemetry::metrics::transfer_created(true, false);
            return Ok(response);
        }
    }
    // A cross-shard transfer whose receiver is ready starts in one round trip too; when
    // that writes nothing, the general way below decides again.
    if cross_shard
        && state.settings.transfers.direct_credit
        && transfer::tcc::receiver_ready(&state.router, &state.receivers, to, checked.currency.as_str()).await
    {
        let at = now_as_stored();
        let view = transfer::direct_view(&request, at);
        let done = idem
            .try_in_one_call(&state.router, bucket, success, &view, async |client, answer| {
                transfer::start_direct_in_one_call(client, &request, at, answer).await
            })
            .await;
        // An error may come after the server committed (a connection lost on the way
        // back): answered as an error, not retried here, so the client's retry with its
        // key finds out (it replays the 202 or starts the transfer).
        if let Some(response) = done? {
            if let Some(admitted) = admitted {
                admitted.finish(true);
            }
            crate::telemetry::metrics::transfer_created(true, true);
            state.wakers.wake(crate::messaging::outbox::Outbox::Stages, shard.index);
            return Ok(response);
        }
    }
    // The route is decided on each attempt: a retry after a bucket moved may find the
    // users on other shards than the first attempt did.
    let outcome = idem
        .run(&state.router, bucket, success, async |tx| {
            let direct = state.settings.transfers.direct_credit;
            let route =
                transfer::Route::decide(&state.router, &state.receivers, from, to, &checked.currency, direct).await;
            transfer::start(tx, route, &request, state.try_timeout()).await
        })
        .await;
    let committed = matches!(outcome, Ok((_, true)));
    if let Some(admitted) = admitted {
        admitted.finish(committed);
    }
    crate::telemetry::metrics::transfer_created(committed, cross_shard);
    if committed && cross_shard {
        state.wakers.wake(crate::messaging::outbox::Outbox::Stages, state.router.for_user(from).index);
    }
    Ok(outcome?.0)
}

/// Now, at the microseconds the server stores time in (so an answer written before its
/// row reads back the same).
pub(super) fn now_as_stored() -> chrono::DateTime<chrono::Utc> {
    chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6)
}

pub(super) fn overloaded(refused: &Overloaded) -> Response {
    tracing::info!(why = %refused.why, "cross-shard transfer refused: overloaded");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many cross-shard transfers are in flight; retry after the Retry-After delay with the same Idempotency-Key",
    )
    .with_retry_after(refused.retry_after)
}

/// A transfer (its parties and admins only).
#[utoipa::path(get, path = "/v1/transfers/{transfer_id}", tag = "transfers", security(("bearer" = [])),
    params(TransferPath),
    responses(
        (status = 200, description = "the transfer", body = queries::TransferView),
        (status = 403, description = "forbidden: not a party"),
        (status = 404, description = "transfer_not_found"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(transfer_id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("transfer_not_found", "transfer not found");
    let (id, bucket) = extract::routed(&state.router, &transfer_id, not_found)?;
    let view =
        extract::owner_read(&state.router, bucket, async |tx| Ok(queries::get_transfer(tx, id.uuid()).await?)).await?;
    if !(caller.is_admin() || caller.subject == view.from_user_id || caller.subject == view.to_user_id) {
        return Err(ApiError::forbidden("you are not a party to this transfer"));
    }
    Ok(Json(view).into_response())
}

/// A user's transfers, sent and received, newest first.
#[utoipa::path(get, path = "/v1/users/{user_id}/transfers", tag = "transfers", security(("bearer" = [])),
    params(UserPath, PageParams),
    responses(
        (status = 200, description = "a page of transfers", body = TransferPage),
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
        Ok(queries::user_transfers(tx, &user, limit, cursor).await?)
    })
    .await?;
    Ok(Json(TransferPage { data, next_cursor: next }).into_response())
}

/// Cross-shard and same-shard transfers over every shard by state, newest first (admin
/// only); `stuck` (the default) lists those the sweeper stopped re-driving.
#[utoipa::path(get, path = "/v1/admin/transfers", tag = "admin", security(("bearer" = [])),
    params(TransferStateQuery, PageParams),
    responses(
        (status = 200, description = "a page of transfers", body = TransferPage),
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
    let wanted = filter.state.as_deref().unwrap_or("stuck");
    if wanted != "stuck" && crate::domain::SenderState::parse(wanted).is_none() {
        return Err(ApiError::invalid_request("state must be stuck, trying, confirming, completed or cancelled"));
    }
    let (limit, cursor) = (page.limit()?, page.cursor::<uuid::Uuid>()?);
    let (data, next) = extract::page_over_shards(
        &state.router,
        limit,
        |t: &queries::TransferView| t.transfer_id,
        |client| async move { queries::transfers_in_state(&client, wanted, limit + 1, cursor).await },
    )
    .await?;
    Ok(Json(TransferPage { data, next_cursor: next }).into_response())
}

/// Re-emits the stage a cross-shard transfer's state calls for and clears its stuck
/// mark (admin only). Stages are idempotent, so a re-drive never repeats an effect.
#[utoipa::path(post, path = "/v1/admin/transfers/{transfer_id}/redrive", tag = "admin", security(("bearer" = [])),
    params(TransferPath),
    responses(
        (status = 202, description = "the stage was queued again", body = queries::TransferView),
        AdminsOnly,
        (status = 404, description = "transfer_not_found"),
        (status = 409, description = "transfer_final: completed, same-shard, or its cancel acknowledged"),
    )
)]
pub async fn admin_redrive(
    State(state): State<AppState>,
    caller: Caller,
    Path(transfer_id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let not_found = || ApiError::not_found("transfer_not_found", "transfer not found");
    let id = RoutableId::parse(&transfer_id).ok_or_else(not_found)?;
    let view = transfer::sweeper::redrive_by_operator(&state.router, &state.wakers, id.uuid()).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
