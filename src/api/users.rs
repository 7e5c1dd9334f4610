//! Users, wallets, history, adjustments and reversals.
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    auth::require_admin,
    error::ApiError,
    extract::{self, json_body, PageQuery},
    idempotency::Idempotency,
    openapi::schemas::{
        self as doc, AdminsOnly, CurrencyPath, EntryPath, IdempotencyHeader, OthersData, PageParams, UserPath,
    },
    AppState,
};
use crate::{
    domain::Caller,
    ledger::{accounts, local, queries},
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserWithWallets {
    user_id: String,
    created_at: DateTime<Utc>,
    wallets: Vec<queries::WalletView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WalletList {
    data: Vec<queries::WalletView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EntryPage {
    data: Vec<queries::EntryView>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    #[schema(schema_with = doc::user_id)]
    user_id: String,
}

/// Creates a user (admin only); `409 user_exists` when it exists.
#[utoipa::path(post, path = "/v1/users", tag = "users", security(("bearer" = [])),
    request_body = NewUser,
    responses(
        (status = 201, description = "created", body = accounts::UserView),
        AdminsOnly,
        (status = 409, description = "user_exists"),
    )
)]
pub async fn create_user(State(state): State<AppState>, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let (_, req): (_, NewUser) = json_body(&body)?;
    let user = extract::user_id(&req.user_id)?;
    let bucket = state.router.bucket_of_user(&user);
    let view =
        extract::owner_tx(&state.router, bucket, async |tx| accounts::create_user(tx, &user, bucket).await).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A user and their wallets.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users", security(("bearer" = [])), params(UserPath),
    responses(
        (status = 200, description = "the user", body = UserWithWallets),
        OthersData,
        (status = 404, description = "user_not_found"),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let (user, bucket) = extract::visible_user(&state.router, &caller, &user_id)?;
    let (view, wallets) = extract::owner_read(&state.router, bucket, async |tx| {
        Ok(futures::try_join!(accounts::get_user(tx, &user), queries::list_wallets(tx, &user))?)
    })
    .await?;
    Ok(Json(UserWithWallets { user_id: view.user_id, created_at: view.created_at, wallets }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewWallet {
    #[schema(schema_with = doc::currency)]
    currency: String,
}

/// Opens a wallet in a currency for a user (admin only).
#[utoipa::path(post, path = "/v1/users/{user_id}/wallets", tag = "users", security(("bearer" = [])),
    params(UserPath), request_body = NewWallet,
    responses(
        (status = 201, description = "created", body = queries::WalletView),
        AdminsOnly,
        (status = 404, description = "user_not_found"),
        (status = 409, description = "wallet_exists"),
    )
)]
pub async fn create_wallet(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let user = extract::user_id(&user_id)?;
    let (_, req): (_, NewWallet) = json_body(&body)?;
    let currency = extract::currency(&req.currency)?;
    let bucket = state.router.bucket_of_user(&user);
    let view = extract::owner_tx(&state.router, bucket, async |tx| accounts::create_wallet(tx, &user, &currency).await)
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A user's wallets.
#[utoipa::path(get, path = "/v1/users/{user_id}/wallets", tag = "users", security(("bearer" = [])), params(UserPath),
    responses(
        (status = 200, description = "the wallets", body = WalletList),
        OthersData,
        (status = 404, description = "user_not_found"),
    )
)]
pub async fn list_wallets(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let (user, bucket) = extract::visible_user(&state.router, &caller, &user_id)?;
    let data = extract::owner_read(&state.router, bucket, async |tx| {
        extract::require_user(tx, &user).await?;
        Ok(queries::list_wallets(tx, &user).await?)
    })
    .await?;
    Ok(Json(WalletList { data }).into_response())
}

/// One wallet: balance, held and available.
#[utoipa::path(get, path = "/v1/users/{user_id}/wallets/{currency}", tag = "users", security(("bearer" = [])),
    params(UserPath, CurrencyPath),
    responses(
        (status = 200, description = "the wallet", body = queries::WalletView),
        OthersData,
        (status = 404, description = "user_not_found or wallet_not_found"),
    )
)]
pub async fn get_wallet(
    State(state): State<AppState>,
    caller: Caller,
    Path((user_id, currency)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let currency = extract::currency(&currency)?;
    let (user, bucket) = extract::visible_user(&state.router, &caller, &user_id)?;
    let view =
        extract::owner_read(&state.router, bucket, async |tx| Ok(queries::get_wallet(tx, &user, &currency).await?))
            .await?;
    Ok(Json(view).into_response())
}

/// A wallet's ledger entries, newest first.
#[utoipa::path(get, path = "/v1/users/{user_id}/wallets/{currency}/entries", tag = "users",
    security(("bearer" = [])), params(UserPath, CurrencyPath, PageParams),
    responses(
        (status = 200, description = "a page of entries", body = EntryPage),
        OthersData,
        (status = 404, description = "user_not_found or wallet_not_found"),
    )
)]
pub async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    Path((user_id, currency)): Path<(String, String)>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let currency = extract::currency(&currency)?;
    let limit = page.limit()?;
    let cursor = page.cursor::<i64>()?;
    let (user, bucket) = extract::visible_user(&state.router, &caller, &user_id)?;
    let (data, next) = extract::owner_read(&state.router, bucket, async |tx| {
        Ok(queries::entries_page(tx, &user, &currency, limit, cursor).await?)
    })
    .await?;
    Ok(Json(EntryPage { data, next_cursor: next.map(|n| n.to_string()) }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Adjustment {
    #[schema(schema_with = doc::user_id)]
    user_id: String,
    #[schema(schema_with = doc::currency)]
    currency: String,
    #[serde(default)]
    #[schema(schema_with = doc::amount_input, required = true)]
    amount: serde_json::Value,
    direction: local::Direction,
    /// 1-500 characters.
    #[schema(min_length = 1, max_length = 500, example = "opening balance")]
    reason: String,
}

/// Credits or debits a wallet (admin only; needs an Idempotency-Key).
#[utoipa::path(post, path = "/v1/admin/adjustments", tag = "admin", security(("bearer" = [])),
    params(IdempotencyHeader), request_body = Adjustment,
    responses(
        (status = 201, description = "applied", body = local::AdjustmentView),
        (status = 400, description = "invalid_request, invalid_amount or idempotency_key_missing"),
        AdminsOnly,
        (status = 404, description = "user_not_found or wallet_not_found"),
        (status = 409, description = "idempotency_request_in_progress"),
        (status = 422, description = "insufficient_funds or idempotency_key_reused"),
    )
)]
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let (raw, req): (_, Adjustment) = json_body(&body)?;
    let user = extract::user_id(&req.user_id)?;
    let currency = extract::currency(&req.currency)?;
    let amount = extract::amount(&req.amount)?;
    if req.reason.trim().is_empty() || req.reason.len() > 500 {
        return Err(ApiError::invalid_request("reason must be 1-500 characters"));
    }
    let idem = Idempotency::from_request(&caller, &headers, "POST", "/v1/admin/adjustments", &raw)?;
    let bucket = state.router.bucket_of_user(&user);
    let (response, _) = idem
        .run(&state.router, bucket, StatusCode::CREATED, async |tx| {
            local::adjust(tx, bucket as u16, &user, &currency, &amount, req.direction, &req.reason).await
        })
        .await?;
    Ok(response)
}

/// Reverses the posting an entry belongs to (admin only; needs an Idempotency-Key).
#[utoipa::path(post, path = "/v1/entries/{entry_id}/reversal", tag = "admin", security(("bearer" = [])),
    params(EntryPath, IdempotencyHeader),
    responses(
        (status = 201, description = "reversed", body = local::ReversalView),
        (status = 400, description = "idempotency_key_missing or invalid_request"),
        AdminsOnly,
        (status = 404, description = "not_found: no such entry"),
        (status = 409, description = "already_reversed or idempotency_request_in_progress"),
        (status = 422, description = "not_reversible, insufficient_funds or idempotency_key_reused"),
    )
)]
pub async fn reverse_entry(
    State(state): State<AppState>,
    caller: Caller,
    Path(entry_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let (id, bucket) = extract::routed(&state.router, &entry_id, || ApiError::not_found("not_found", "no such entry"))?;
    let path = format!("/v1/entries/{id}/reversal");
    let idem = Idempotency::from_request(&caller, &headers, "POST", &path, &serde_json::Value::Null)?;
    let (response, _) =
        idem.run(&state.router, bucket, StatusCode::CREATED, async |tx| local::reverse(tx, &id).await).await?;
    Ok(response)
}
