//! `POST /v1/transfers/batch`: up to 1,000 transfers in one request.
//!
//! Each item is a single `POST /v1/transfers` with its Idempotency-Key beside it, and is
//! fingerprinted as that request: a retried batch replays each item, and a single
//! request with an item's key replays the item.
//!
//! * `atomic: false`: every item gets the answer its single request would have had, in
//!   request order. Same-shard items of one sender shard are applied together in one
//!   transaction and one commit (`transfer::complete_local_batch`); whatever that cannot
//!   simply complete (a moved bucket, a missing wallet, a key stored before) and every
//!   cross-shard item goes the single request's way, one at a time. Items are decided in
//!   request order per sender shard: an item that goes the single way first applies the
//!   same-shard items before it.
//! * `atomic: true`: all or nothing, in one transaction on the senders' shard (`422
//!   batch_spans_shards` when they are on several); the cross-shard legs start together
//!   once it commits. The first item that fails fails the batch with its index.
use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    error::{ApiError, Problem},
    extract::json_body,
    idempotency::{self, Idempotency},
    transfers::{self, Checked, NewTransfer},
    AppState,
};
use crate::{
    domain::Caller,
    ledger::{self, local},
    transfer,
};

/// The most items one batch may carry.
pub const MAX_ITEMS: usize = 1000;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewBatch {
    /// 1 to 1,000 transfers, each as the body of `POST /v1/transfers` plus its own
    /// `idempotency_key`.
    #[schema(value_type = Vec<BatchTransfer>, min_items = 1, max_items = 1000)]
    transfers: Vec<serde_json::Value>,
    /// `true`: all or nothing (every sender on one shard). Default `false`: each item on
    /// its own.
    #[serde(default)]
    atomic: bool,
}

/// One item of a batch (documentation only: items are read one by one, so that a bad
/// item is that item's answer).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct BatchTransfer {
    #[serde(flatten)]
    transfer: NewTransfer,
    /// The item's Idempotency-Key (1-255 visible ASCII characters).
    idempotency_key: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    atomic: bool,
    /// One per item, in request order.
    results: Vec<ItemAnswer>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemAnswer {
    index: usize,
    idempotency_key: Option<String>,
    /// The status the item's single request would have had (201, 202, 4xx, 503…).
    status: u16,
    /// The item's answer was stored by an earlier request with its key.
    replayed: bool,
    /// The transfer (2xx) or the problem (otherwise), as the single request answers it.
    #[schema(value_type = Object)]
    body: Box<RawValue>,
}

/// An atomic batch refused: the problem of the item that failed it, and its index.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchProblem {
    #[serde(flatten)]
    problem: Problem,
    index: usize,
}

/// Sends up to 1,000 transfers: each on its own (`atomic: false`, `200` with one answer
/// per item) or all or nothing (`atomic: true`). Every `from_user_id` must be the caller
/// unless an admin calls. Each item carries its own `idempotency_key`.
#[utoipa::path(post, path = "/v1/transfers/batch", tag = "transfers", security(("bearer" = [])),
    request_body = NewBatch,
    responses(
        (status = 200, description = "one answer per item, in order (atomic: all succeeded)", body = BatchAnswer),
        (status = 400, description = "invalid_request: not 1-1,000 items; atomic: an invalid item (with its index)"),
        (status = 403, description = "forbidden: an item sends from another user (with its index)"),
        (status = 422, description = "batch_spans_shards (atomic, senders on several shards); atomic: the failing item's problem with its `index` (BatchProblem)"),
        (status = 503, description = "atomic: overloaded, bucket_moving or shard_unavailable; nothing was stored"),
    )
)]
pub async fn create(State(state): State<AppState>, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let (_, batch): (_, NewBatch) = json_body(&body)?;
    if batch.transfers.is_empty() || batch.transfers.len() > MAX_ITEMS {
        return Err(ApiError::invalid_request(format!("transfers must hold 1 to {MAX_ITEMS} items")));
    }
    let items: Vec<Item> = batch.transfers.iter().map(|raw| Item::read(&caller, raw)).collect();
    if let Some(index) = items
        .iter()
        .position(|item| matches!(item, Item::Invalid { error: ApiError::Problem { code: "forbidden", .. }, .. }))
    {
        return Ok(refused(index, ApiError::forbidden("every from_user_id of a batch must be the caller")));
    }
    if batch.atomic {
        return all_or_nothing(&state, items).await;
    }
    let results = each_on_its_own(&state, &caller, &items).await?;
    Ok(Json(BatchAnswer { atomic: false, results }).into_response())
}

enum Item {
    Invalid { key: Option<String>, error: ApiError },
    Ready { checked: Checked, idem: Idempotency },
}

impl Item {
    /// An item as its single request: the body is the item without its key.
    fn read(caller: &Caller, raw: &serde_json::Value) -> Self {
        let Some(object) = raw.as_object() else {
            return Item::Invalid { key: None, error: ApiError::invalid_request("every item must be a JSON object") };
        };
        let mut body = object.clone();
        let key = body.remove("idempotency_key");
        let key_text = key.as_ref().and_then(|k| k.as_str()).map(str::to_string);
        let invalid = |error| Item::Invalid { key: key_text.clone(), error };
        if key.as_ref().is_some_and(|k| !k.is_string()) {
            return invalid(ApiError::invalid_request("idempotency_key must be a string"));
        }
        let body = serde_json::Value::Object(body);
        let parsed: NewTransfer = match serde_json::from_value(body.clone()) {
            Ok(parsed) => parsed,
            Err(e) => return invalid(ApiError::invalid_request(format!("request body: {e}"))),
        };
        let checked = match parsed.check(caller) {
            Ok(checked) => checked,
            Err(e) => return invalid(e),
        };
        match Idempotency::new(caller, key_text.as_deref(), "POST", transfers::PATH, &body) {
            Ok(idem) => Item::Ready { checked, idem },
            Err(e) => invalid(e),
        }
    }
}

fn answer(
    index: usize,
    key: Option<&str>,
    status: StatusCode,
    replayed: bool,
    body: Vec<u8>,
) -> Result<ItemAnswer, ApiError> {
    let text = String::from_utf8(body).map_err(anyhow::Error::from)?;
    let body = RawValue::from_string(text).map_err(anyhow::Error::from)?;
    Ok(ItemAnswer { index, idempotency_key: key.map(str::to_string), status: status.as_u16(), replayed, body })
}

fn problem_answer(index: usize, key: Option<&str>, error: &ApiError) -> Result<ItemAnswer, ApiError> {
    let (status, problem) = error.problem();
    answer(index, key, status, false, serde_json::to_vec(&problem).map_err(anyhow::Error::from)?)
}

/// A single request's answer as an item's.
async fn answer_of(index: usize, key: &str, sent: Result<Response, ApiError>) -> Result<ItemAnswer, ApiError> {
    match sent {
        Ok(response) => {
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.map_err(anyhow::Error::from)?;
            answer(index, Some(key), status, replayed, body.to_vec())
        }
        Err(error) => problem_answer(index, Some(key), &error),
    }
}

async fn each_on_its_own(state: &AppState, caller: &Caller, items: &[Item]) -> Result<Vec<ItemAnswer>, ApiError> {
    let mut answers: Vec<Option<ItemAnswer>> = (0..items.len()).map(|_| None).collect();
    // Same-shard items waiting to be applied together, by sender shard.
    let mut waiting: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        match item {
            Item::Invalid { key, error } => answers[index] = Some(problem_answer(index, key.as_deref(), error)?),
            Item::Ready { checked, idem } => {
                let shard = state.router.for_user(&checked.from).index;
                if checked.from != checked.to && state.router.same_shard(&checked.from, &checked.to) {
                    waiting.entry(shard).or_default().push(index);
                    continue;
                }
                if let Some(group) = waiting.remove(&shard) {
                    for (i, a) in together(state, caller, items, &group).await? {
                        answers[i] = Some(a);
                    }
                }
                answers[index] = Some(answer_of(index, idem.key(), transfers::send(state, checked, idem).await).await?);
            }
        }
    }
    let groups =
        futures::future::try_join_all(waiting.values().map(|group| together(state, caller, items, group))).await?;
    for (i, a) in groups.into_iter().flatten() {
        answers[i] = Some(a);
    }
    answers.into_iter().map(|a| a.ok_or_else(|| anyhow::anyhow!("a batch item went unanswered").into())).collect()
}

/// Same-shard items of one sender shard (`group`, in request order) in one transaction;
/// those it did not complete or refuse go the single request's way, in order.
async fn together(
    state: &AppState,
    caller: &Caller,
    items: &[Item],
    group: &[usize],
) -> Result<Vec<(usize, ItemAnswer)>, ApiError> {
    let ready: Vec<(usize, &Checked, &Idempotency)> = group
        .iter()
        .filter_map(|&i| match &items[i] {
            Item::Ready { checked, idem } => Some((i, checked, idem)),
            Item::Invalid { .. } => None,
        })
        .collect();
    let Some(&(_, first, _)) = ready.first() else { return Ok(Vec::new()) };
    let router = &state.router;
    let at = transfers::now_as_stored();
    let requests: Vec<_> = ready.iter().map(|(_, c, _)| c.request(router.new_id_for(&c.from))).collect();
    let bodies = requests
        .iter()
        .map(|req| serde_json::to_vec(&local::completed_view(req, at)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::from)?;
    let (_, refusal) = ApiError::from(ledger::Error::InsufficientFunds).problem();
    let refusal = serde_json::to_vec(&refusal).map_err(anyhow::Error::from)?;
    let outcomes = {
        let batch: Vec<local::BatchItem<'_>> = ready
            .iter()
            .zip(requests)
            .zip(&bodies)
            .map(|(((_, checked, idem), req), body)| {
                let bucket = router.bucket_of_user(&checked.from);
                local::BatchItem {
                    receiver_bucket: router.bucket_of_user(&checked.to),
                    answer: idem.answer(router, bucket, StatusCode::CREATED, body),
                    req,
                }
            })
            .collect();
        let shard = router.for_user(&first.from);
        let applied = match shard.client().await {
            Ok(mut client) => transfer::complete_local_batch(&mut client, &batch, at, &caller.subject, &refusal).await,
            Err(e) => Err(transfer::Error::Ledger(ledger::Error::Shard(e))),
        };
        match applied {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // Nothing of it committed, or all of it did and each key replays: the
                // single requests find out which.
                tracing::warn!(error = %e, items = batch.len(), "batch statement failed; sending its items one by one");
                vec![local::BatchOutcome::NotDone; batch.len()]
            }
        }
    };
    let mut answers = Vec::with_capacity(ready.len());
    for (((index, checked, idem), outcome), body) in ready.into_iter().zip(outcomes).zip(bodies) {
        let item = match outcome {
            local::BatchOutcome::Completed => {
                crate::telemetry::metrics::transfer_created(true, false);
                answer(index, Some(idem.key()), StatusCode::CREATED, false, body)?
            }
            local::BatchOutcome::InsufficientFunds => {
                answer(index, Some(idem.key()), StatusCode::UNPROCESSABLE_ENTITY, false, refusal.clone())?
            }
            local::BatchOutcome::NotDone => {
                answer_of(index, idem.key(), transfers::send(state, checked, idem).await).await?
            }
        };
        answers.push((index, item));
    }
    Ok(answers)
}

/// An atomic batch's refusal: the item's problem with its index.
fn refused(index: usize, error: ApiError) -> Response {
    let (status, problem) = error.problem();
    let mut response = (status, Json(BatchProblem { problem, index })).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, "application/problem+json".parse().expect("static"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(1u64));
    }
    response
}

async fn all_or_nothing(state: &AppState, items: Vec<Item>) -> Result<Response, ApiError> {
    let mut ready = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Item::Invalid { error, .. } => return Ok(refused(index, error)),
            Item::Ready { checked, idem } => ready.push((checked, idem)),
        }
    }
    let router = &state.router;
    let spans = || {
        let first = router.for_user(&ready[0].0.from).index;
        ready.iter().any(|(c, _)| router.for_user(&c.from).index != first)
    };
    let spans_shards = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_spans_shards",
            "an atomic batch needs every sender on one shard; send it with atomic: false or split it by sender",
        )
    };
    if spans() {
        return Err(spans_shards());
    }
    let cross: Vec<bool> = ready.iter().map(|(c, _)| !router.same_shard(&c.from, &c.to)).collect();
    let mut admitted = Vec::new();
    if cross.iter().any(|&c| c) {
        let shard = router.for_user(&ready[0].0.from).index;
        for _ in cross.iter().filter(|&&c| c) {
            match state.admission.admit(shard) {
                Ok(a) => admitted.push(a),
                Err(refused) => {
                    tracing::info!(why = %refused.why, "atomic batch refused: overloaded");
                    return Ok(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "too many cross-shard transfers are in flight; retry the batch after the Retry-After delay",
                    )
                    .with_retry_after(refused.retry_after));
                }
            }
        }
    }
    let mut tries = 0;
    let results = loop {
        tries += 1;
        if spans() {
            return Err(spans_shards());
        }
        match in_one_transaction(state, &ready).await? {
            Atomic::Done(results) => break results,
            Atomic::Refused(response) => return Ok(response),
            Atomic::Moved(why) if tries > 1 => return Err(why.into()),
            Atomic::Moved(_) => {
                router.refresh().await;
            }
        }
    };
    for a in admitted {
        a.finish(true);
    }
    let started = results.iter().filter(|r| !r.replayed).count();
    for (r, &c) in results.iter().zip(&cross) {
        if !r.replayed {
            crate::telemetry::metrics::transfer_created(true, c);
        }
    }
    if started > 0 && cross.iter().any(|&c| c) {
        state.wakers.wake(crate::messaging::outbox::Outbox::Stages, router.for_user(&ready[0].0.from).index);
    }
    Ok(Json(BatchAnswer { atomic: true, results }).into_response())
}

enum Atomic {
    Done(Vec<ItemAnswer>),
    Refused(Response),
    Moved(crate::sharding::Error),
}

/// One try of an atomic batch on the shard the map names for its senders.
async fn in_one_transaction(state: &AppState, ready: &[(Checked, Idempotency)]) -> Result<Atomic, ApiError> {
    let router = &state.router;
    let shard = router.for_user(&ready[0].0.from);
    let mut client = shard.client().await?;
    let tx = client.transaction().await?;
    // Claims in bucket order, then every wallet the batch writes here in account order:
    // two batches, or a batch and a fence, cannot wait on each other in a circle.
    let mut buckets: Vec<u32> = ready
        .iter()
        .flat_map(|(c, _)| {
            let local = router.same_shard(&c.from, &c.to);
            [Some(router.bucket_of_user(&c.from)), local.then(|| router.bucket_of_user(&c.to))]
        })
        .flatten()
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    for &bucket in &buckets {
        if let Some(moved) = shard.moved_away(&tx, bucket).await? {
            return Ok(Atomic::Moved(moved));
        }
    }
    let users: Vec<&str> = ready
        .iter()
        .flat_map(|(c, _)| {
            let local = router.same_shard(&c.from, &c.to);
            [Some(c.from.as_str()), local.then(|| c.to.as_str())]
        })
        .flatten()
        .collect();
    ledger::accounts::lock_users_wallets(&tx, &users).await.map_err(ApiError::from)?;
    let mut results = Vec::with_capacity(ready.len());
    for (index, (checked, idem)) in ready.iter().enumerate() {
        let bucket = router.bucket_of_user(&checked.from);
        match idem.replay(&tx).await {
            Ok(Some(replay)) => {
                results.push(answer_of(index, idem.key(), Ok(replay)).await?);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Ok(Atomic::Refused(refused(index, e))),
        }
        let request = checked.request(router.new_id_for(&checked.from));
        let direct = state.settings.transfers.direct_credit;
        let route =
            transfer::Route::decide(router, &state.receivers, &checked.from, &checked.to, &checked.currency, direct)
                .await;
        let success =
            if matches!(route, transfer::Route::Local { .. }) { StatusCode::CREATED } else { StatusCode::ACCEPTED };
        match transfer::start(&tx, route, &request, state.try_timeout()).await {
            Ok(view) => {
                let body = serde_json::to_vec(&view).map_err(anyhow::Error::from)?;
                if !idem.store_for(&tx, router, bucket, success, &body).await? {
                    return Ok(Atomic::Refused(refused(index, idempotency::in_progress())));
                }
                results.push(answer(index, Some(idem.key()), success, false, body)?);
            }
            Err(e) => {
                let error = ApiError::from(e);
                if error.is_internal() {
                    return Err(error);
                }
                return Ok(Atomic::Refused(refused(index, error)));
            }
        }
    }
    tx.commit().await?;
    Ok(Atomic::Done(results))
}
