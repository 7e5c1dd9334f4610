//! Request parsing: bodies, paths and queries turn into domain types or a 400 problem,
//! never a framework's plain-text rejection.
use axum::body::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::{Amount, Currency, RoutableId, UserId};

/// Parses a JSON body into the raw value (kept for the idempotency fingerprint) and `T`.
pub fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<(serde_json::Value, T), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid_request("request body must be a JSON object"));
    }
    let typed =
        serde_json::from_value(value.clone()).map_err(|e| ApiError::invalid_request(format!("request body: {e}")))?;
    Ok((value, typed))
}

pub fn user_id(text: &str) -> Result<UserId, ApiError> {
    UserId::parse(text).map_err(|e| ApiError::invalid_request(e.to_string()))
}

/// An amount from a JSON body field: a digit string or a positive integer.
pub fn amount(value: &serde_json::Value) -> Result<Amount, ApiError> {
    Amount::from_json(value).map_err(|e| ApiError::invalid_amount(e.to_string()))
}

pub fn currency(text: &str) -> Result<Currency, ApiError> {
    Currency::parse(text).map_err(|e| ApiError::invalid_request(e.to_string()))
}

/// `limit` (1-200, default 50) and an opaque `cursor`.
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match &self.limit {
            None => Ok(50),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=200).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid_request("limit must be an integer from 1 to 200")),
            },
        }
    }

    /// The cursor as the key of the page's order: a routable id (transfers, payments,
    /// `Uuid`) or an entry sequence number (`i64`).
    pub fn cursor<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| c.parse().map_err(|_| ApiError::invalid_request("cursor is not one this API returned")))
            .transpose()
    }
}

/// The user a path names, once the caller may see that user's data, and the bucket
/// that routes it.
pub fn visible_user(
    router: &crate::sharding::Router,
    caller: &crate::domain::Caller,
    user_id: &str,
) -> Result<(UserId, u32), ApiError> {
    let user = self::user_id(user_id)?;
    super::auth::require_self_or_admin(caller, &user)?;
    let bucket = router.bucket_of_user(&user);
    Ok((user, bucket))
}

/// 404 `user_not_found` for an unknown user (lists, where an empty page would hide a
/// typo); run inside the read, so it sees the same snapshot.
pub async fn require_user(client: &impl deadpool_postgres::GenericClient, user: &UserId) -> Result<(), ApiError> {
    if crate::ledger::accounts::user_exists(client, user).await? {
        Ok(())
    } else {
        Err(crate::ledger::Error::UserNotFound.into())
    }
}

/// A connection to the shard that owns `bucket`, once that shard confirms it owns it
/// (refreshing the map once when it says the bucket moved). For a lookup of one
/// statement whose stale answer is harmless (an idempotency key's stored response is
/// never changed, and a key not found there goes on to a write, which checks again);
/// other reads use `owner_read`.
pub async fn owner_client(
    router: &crate::sharding::Router,
    bucket: u32,
) -> Result<deadpool_postgres::Object, ApiError> {
    router
        .on_owner(bucket, |shard| async move {
            let client = shard.client().await?;
            shard.check_read(&client, bucket).await?;
            Ok::<_, ApiError>(client)
        })
        .await
}

/// Runs the read `op` on the owner of `bucket` in one `REPEATABLE READ READ ONLY`
/// transaction whose first statement finds the bucket owned: every row `op` reads comes
/// from the snapshot that saw the shard own it, so the copy a move leaves behind on its
/// source is never served as current (retried once on the new owner when it moved).
pub async fn owner_read<T>(
    router: &crate::sharding::Router,
    bucket: u32,
    op: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    in_owner_tx(router, bucket, Access::Read, op).await
}

/// Runs `op` in a transaction on the owner of `bucket` that first checks, inside
/// itself, that the shard owns it (retried once on the new owner when it moved).
pub async fn owner_tx<T>(
    router: &crate::sharding::Router,
    bucket: u32,
    op: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> crate::ledger::Result<T>,
) -> Result<T, ApiError> {
    in_owner_tx(router, bucket, Access::Write, op).await
}

/// What `in_owner_tx` opens: a write transaction that claims the bucket
/// (`check_write`), or a read-only snapshot that finds it owned (`check_read`).
#[derive(Clone, Copy)]
enum Access {
    Write,
    Read,
}

async fn in_owner_tx<T, E>(
    router: &crate::sharding::Router,
    bucket: u32,
    access: Access,
    op: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, E>,
) -> Result<T, ApiError>
where
    ApiError: From<E>,
{
    use crate::sharding::Attempt;
    router
        .with_owner(bucket, op, |shard, op| async move {
            let mut client = shard.client().await?;
            let (tx, moved) = match access {
                Access::Write => {
                    let tx = client.transaction().await?;
                    let moved = shard.moved_away(&tx, bucket).await?;
                    (tx, moved)
                }
                Access::Read => {
                    let tx = crate::storage::read_snapshot(&mut client).await?;
                    let moved = shard.not_serving(&tx, bucket).await?;
                    (tx, moved)
                }
            };
            if let Some(moved) = moved {
                return Ok(Attempt::Moved(op, moved));
            }
            let value = op(&tx).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(Attempt::Done(value))
        })
        .await
}

/// The id a path names (`/v1/payments/{payment_id}`, ...) and the bucket it routes by.
/// An id that is not one of ours, or whose bucket no shard map has, is `not_found` like
/// an id that is not there.
pub fn routed(
    router: &crate::sharding::Router,
    text: &str,
    not_found: impl Fn() -> ApiError,
) -> Result<(RoutableId, u32), ApiError> {
    let id = RoutableId::parse(text).ok_or_else(&not_found)?;
    router.for_id(&id).map_err(|_| not_found())?;
    Ok((id, u32::from(id.bucket())))
}

/// `?state=` of the admin listings.
#[derive(Debug, serde::Deserialize)]
pub struct StateQuery {
    pub state: Option<String>,
}

/// One page, newest first, over every shard: `read` fetches a shard's page of up to
/// `limit + 1` items after the cursor, newest first; the `limit` newest of all are
/// kept, with the cursor of the next page when there are more. Ids sort by creation
/// time.
pub async fn page_over_shards<T, F, Fut, E>(
    router: &crate::sharding::Router,
    limit: i64,
    id: impl Fn(&T) -> uuid::Uuid,
    read: F,
) -> Result<(Vec<T>, Option<uuid::Uuid>), ApiError>
where
    F: Fn(deadpool_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    E: Into<ApiError>,
{
    let shards = router.shards();
    let pages = shards.iter().map(|shard| async {
        let client = shard.client().await.map_err(ApiError::from)?;
        read(client).await.map_err(Into::<ApiError>::into)
    });
    let mut all: Vec<T> = futures::future::try_join_all(pages).await?.into_iter().flatten().collect();
    all.sort_by_key(|item| std::cmp::Reverse(id(item)));
    let next = if all.len() as i64 > limit {
        all.truncate(limit as usize);
        all.last().map(&id)
    } else {
        None
    };
    Ok((all, next))
}
