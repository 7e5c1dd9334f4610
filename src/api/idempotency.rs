//! Idempotent money-moving requests (Stripe / IETF draft semantics).
//!
//! The key is stored on the shard where the effect happens, in the same transaction
//! as the effect and with its response, with (caller, key) as primary key. A
//! concurrent duplicate waits on that key, then rolls its own attempt back and
//! replays; the same key with another request is 422; a retry gets the original
//! status and body byte for byte. Business refusals (4xx) are stored too,
//! so a retry cannot turn a refusal into an effect; internal errors roll back and leave
//! the key free.
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::Response,
};
use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{problem_response, ApiError};
use crate::ledger::local::StoredAnswer;
use crate::storage::Cached;
use crate::{
    domain::{Caller, IdempotencyKey},
    sharding::{Attempt, Router, Shard},
};

pub const HEADER: &str = "idempotency-key";

pub struct Idempotency {
    caller: String,
    /// The caller is a user (an admin's keys are always stored with their bucket).
    user_caller: bool,
    key: IdempotencyKey,
    fingerprint: Vec<u8>,
}

impl Idempotency {
    /// Reads the key and fingerprints the request (method, path and the JSON body with
    /// its keys sorted, so formatting does not matter).
    pub fn from_request(
        caller: &Caller,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Self, ApiError> {
        let raw = headers.get(HEADER).map(|raw| raw.to_str().unwrap_or("\u{0}"));
        Self::new(caller, raw, method, path, body)
    }

    /// As `from_request`, for a key given beside the request rather than in its header
    /// (an item of `POST /v1/transfers/batch`, fingerprinted as its single request).
    pub fn new(
        caller: &Caller,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Self, ApiError> {
        let raw = key.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_missing",
                "this request needs an Idempotency-Key header",
            )
        })?;
        let key = IdempotencyKey::parse(raw)
            .map_err(|_| ApiError::invalid_request("Idempotency-Key must be 1-255 visible ASCII characters"))?;
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        hash.update([0]);
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(body.to_string().as_bytes());
        Ok(Self {
            caller: caller.subject.clone(),
            user_caller: !caller.is_admin(),
            key,
            fingerprint: hash.finalize().to_vec(),
        })
    }

    pub fn key(&self) -> &str {
        self.key.as_str()
    }

    /// Whether the key is found through its caller (a user's key on their own bucket,
    /// V9) rather than recorded with `bucket`.
    fn own(&self, router: &Router, bucket: u32) -> bool {
        self.user_caller && router.layout().map.bucket_of(&self.caller) == bucket
    }

    /// What an effect that stores its own key writes beside it: `body` answered with
    /// `status`, for a request routed by `bucket`.
    pub fn answer<'a>(&'a self, router: &Router, bucket: u32, status: StatusCode, body: &'a [u8]) -> StoredAnswer<'a> {
        StoredAnswer {
            caller: &self.caller,
            key: self.key.as_str(),
            request_hash: &self.fingerprint,
            status: status.as_u16(),
            body,
            bucket,
            own: self.own(router, bucket),
        }
    }

    /// Runs `op` once per key on `shard`: runs the effect, then stores the key with its
    /// response and commits, all in one transaction. The boolean is true only when this
    /// call committed a new effect.
    ///
    /// The key is written last, in one statement with its response: a duplicate in
    /// flight holds it until that duplicate commits, so the insert waits for it, then
    /// finds the key taken; whatever this call's effect did is rolled back and the
    /// stored response is replayed. (A duplicate of the same sender usually waits
    /// earlier already, on the sender's wallet lock.)
    ///
    /// The transaction runs on the owner of `bucket` and first checks, inside itself,
    /// that the shard owns it (`sharding::ownership`): when the bucket moved, nothing is
    /// stored, the map is refreshed and the whole request runs once more on the new owner.
    pub async fn run<T: Serialize, E: Into<ApiError>>(
        &self,
        router: &Router,
        bucket: u32,
        success: StatusCode,
        op: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<(Response, bool), ApiError> {
        // A user's key on their own bucket is found through the caller (V9); any other
        // is recorded with the bucket its request routed by.
        let own = self.own(router, bucket);
        router
            .with_owner(bucket, op, |shard, op| async move { self.attempt(&shard, bucket, own, success, op).await })
            .await
    }

    /// `run` for an effect that completes in one statement of its own (V13): `call` runs
    /// once on the owner of `bucket` with the answer a success stores beside it, `value`
    /// serialised. `None` when it wrote nothing (a refusal, a moved bucket, a key already
    /// taken): then `run` decides, under its own locks, and stores or replays the answer.
    pub async fn try_in_one_call<T: Serialize, E: Into<ApiError>>(
        &self,
        router: &Router,
        bucket: u32,
        success: StatusCode,
        value: &T,
        call: impl AsyncFnOnce(&deadpool_postgres::Client, &StoredAnswer<'_>) -> Result<bool, E>,
    ) -> Result<Option<Response>, ApiError> {
        let shard = router.for_bucket(bucket)?;
        let client = shard.client().await?;
        let body = serde_json::to_vec(value).map_err(anyhow::Error::from)?;
        let answer = self.answer(router, bucket, success, &body);
        let committed = call(&client, &answer).await.map_err(Into::into)?;
        Ok(committed.then(|| problem_response(success, body)))
    }

    async fn attempt<T: Serialize, E: Into<ApiError>, Op: AsyncFnOnce(&Transaction<'_>) -> Result<T, E>>(
        &self,
        shard: &Shard,
        bucket: u32,
        own: bool,
        success: StatusCode,
        op: Op,
    ) -> Result<Attempt<(Response, bool), Op>, ApiError> {
        let mut client = shard.client().await?;
        let tx = client.transaction().await?;
        if let Some(moved) = shard.moved_away(&tx, bucket).await? {
            return Ok(Attempt::Moved(op, moved));
        }
        let (status, body) = match op(&tx).await {
            Ok(value) => (success, serde_json::to_vec(&value).map_err(anyhow::Error::from)?),
            Err(e) => {
                let err: ApiError = e.into();
                if err.is_internal() || matches!(&err, ApiError::Problem { status, .. } if status.is_server_error()) {
                    return Err(err);
                }
                let (status, problem) = err.problem();
                (status, serde_json::to_vec(&problem).map_err(anyhow::Error::from)?)
            }
        };
        if self.store(&tx, bucket, own, status, &body).await? {
            tx.commit().await?;
            Ok(Attempt::Done((problem_response(status, body), status.is_success())))
        } else {
            tx.rollback().await?;
            // The insert found the key taken, so it is there to replay.
            let replay = self.replay(&client).await?.ok_or_else(|| anyhow::anyhow!("idempotency key vanished"))?;
            Ok(Attempt::Done((replay, false)))
        }
    }

    /// Stores the key with its answer inside `tx`, the effect's transaction; false when
    /// another request stored it first (after waiting for that one to commit).
    async fn store(
        &self,
        tx: &impl GenericClient,
        bucket: u32,
        own: bool,
        status: StatusCode,
        body: &[u8],
    ) -> Result<bool, ApiError> {
        let stored = tx
            .cached_execute(
                // NULL only while the caller's user row is here to find the key by
                // (a refusal for a user not yet known keeps its bucket).
                "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, bucket)
                 VALUES ($1, $2, $3, $4, $5,
                         CASE WHEN $7::boolean AND EXISTS (SELECT 1 FROM users WHERE user_id = $1) THEN NULL ELSE $6::integer END)
                 ON CONFLICT DO NOTHING",
                &[
                    &self.caller,
                    &self.key.as_str(),
                    &self.fingerprint,
                    &(status.as_u16() as i16),
                    &body,
                    &(bucket as i32),
                    &own,
                ],
            )
            .await;
        match stored {
            Ok(n) => Ok(n == 1),
            Err(e) if crate::storage::is_lock_timeout(&e) => Err(in_progress()),
            Err(e) => Err(e.into()),
        }
    }

    /// `store` for a request routed by `bucket`.
    pub async fn store_for(
        &self,
        tx: &impl GenericClient,
        router: &Router,
        bucket: u32,
        status: StatusCode,
        body: &[u8],
    ) -> Result<bool, ApiError> {
        self.store(tx, bucket, self.own(router, bucket), status, body).await
    }

    /// The stored response when this key was used before (422 when for another
    /// request), without running anything.
    pub async fn stored(&self, router: &Router, bucket: u32) -> Result<Option<Response>, ApiError> {
        let client = super::extract::owner_client(router, bucket).await?;
        self.replay(&client).await
    }

    /// The stored response of a key used before (422 when it was used for another
    /// request); `None` when the key is unknown.
    pub async fn replay(&self, client: &impl GenericClient) -> Result<Option<Response>, ApiError> {
        let Some(row) = client
            .cached_query_opt(
                "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE caller = $1 AND key = $2",
                &[&self.caller, &self.key.as_str()],
            )
            .await?
        else {
            return Ok(None);
        };
        let (hash, status, body): (Vec<u8>, i16, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        if hash != self.fingerprint {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
        let status = StatusCode::from_u16(status as u16).map_err(anyhow::Error::from)?;
        let mut response = problem_response(status, body);
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Some(response))
    }
}

/// 409 `idempotency_request_in_progress`: another request holds the key uncommitted.
pub fn in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_request_in_progress",
        "a request with this Idempotency-Key is still in progress; retry later",
    )
}
