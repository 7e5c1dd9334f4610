//! A fetched batch of stages applied with one statement per shard (V17): the
//! DirectCredits whose receivers one shard owns, and the Confirmed answers whose senders
//! one shard owns. Each SQL function takes only the step the state machine (`super`)
//! takes in the common case, CreditDirect and Complete, and says per item what it did;
//! every item it did not apply is handled by itself afterwards (`super::handle`), which
//! decides exactly as it would have without the batch.
use std::{collections::BTreeMap, sync::Arc};

use uuid::Uuid;

use crate::{
    domain::{RoutableId, UserId},
    sharding::{Router, Shard},
    storage::Cached,
    transfer::{
        messages::{Stage, StageMessage},
        Error, Result,
    },
};

/// Fewer items than this go one by one: a single stage has its own one-statement path.
const MIN_BATCH: usize = 2;

/// What a batch did: per message, whether it was applied (the others are the caller's to
/// handle one by one), and the shards whose stage outbox got new rows.
#[derive(Debug, Default)]
pub struct Applied {
    pub done: Vec<bool>,
    pub woken: Vec<usize>,
}

/// Applies what it can of `msgs` (distinct transfers; `None` for what did not parse)
/// with one statement per shard and kind of stage.
pub async fn apply(router: &Router, msgs: &[Option<StageMessage>]) -> Applied {
    type Groups = BTreeMap<usize, (Arc<Shard>, Vec<usize>)>;
    let (mut credits, mut confirms) = (Groups::new(), Groups::new());
    for (i, msg) in msgs.iter().enumerate() {
        let Some(msg) = msg else { continue };
        match msg.stage {
            Stage::DirectCredit => {
                let Ok(to) = UserId::parse(&msg.facts.to_user_id) else { continue };
                if let Ok(shard) = router.for_bucket(router.bucket_of_user(&to)) {
                    credits.entry(shard.index).or_insert_with(|| (shard, Vec::new())).1.push(i);
                }
            }
            Stage::Confirmed => {
                let Some(id) = RoutableId::from_uuid(msg.facts.transfer_id) else { continue };
                if let Ok(shard) = router.for_id(&id) {
                    confirms.entry(shard.index).or_insert_with(|| (shard, Vec::new())).1.push(i);
                }
            }
            _ => {}
        }
    }
    let credits = credits
        .into_values()
        .filter(|(_, items)| items.len() >= MIN_BATCH)
        .map(|(shard, items)| async move { (shard.index, credit_direct(router, &shard, msgs, &items).await, items) });
    let confirms = confirms
        .into_values()
        .filter(|(_, items)| items.len() >= MIN_BATCH)
        .map(|(shard, items)| async move { (shard.index, complete(&shard, msgs, &items).await, items) });
    let (credits, confirms) = futures::join!(futures::future::join_all(credits), futures::future::join_all(confirms));
    let mut applied = Applied { done: vec![false; msgs.len()], woken: Vec::new() };
    for (shard, outcome, items) in credits {
        match outcome {
            Ok(done) => {
                if done.iter().any(|d| *d) {
                    applied.woken.push(shard);
                }
                for (i, done) in items.into_iter().zip(done) {
                    applied.done[i] = done;
                }
            }
            Err(e) => tracing::debug!(error = %e, "a batch of DirectCredits failed; they go one by one"),
        }
    }
    for (_, outcome, items) in confirms {
        match outcome {
            Ok(done) => {
                for (i, done) in items.into_iter().zip(done) {
                    if done {
                        crate::telemetry::metrics::cross_shard_completed();
                    }
                    applied.done[i] = done;
                }
            }
            Err(e) => tracing::debug!(error = %e, "a batch of Confirmed failed; they go one by one"),
        }
    }
    applied
}

/// The CreditDirect step (`receiver_step` with no barrier and no record) for each of
/// `items` on shard `shard`, in one statement (V17 `credit_direct_batch`).
async fn credit_direct(
    router: &Router,
    shard: &Shard,
    msgs: &[Option<StageMessage>],
    items: &[usize],
) -> Result<Vec<bool>> {
    let n = items.len();
    let (mut b, mut t_id, mut from, mut to, mut cur, mut amt, mut descr) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut p_id, mut wallet_entry, mut transit_entry, mut payload) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for &i in items {
        let Some(msg) = &msgs[i] else { return Err(Error::Invariant("an unparsed message in a batch".into())) };
        let facts = &msg.facts;
        let to_user = UserId::parse(&facts.to_user_id).map_err(|e| Error::Invariant(e.to_string()))?;
        let bucket = router.bucket_of_user(&to_user);
        let id = || RoutableId::new(bucket as u16).uuid();
        b.push(bucket as i32);
        t_id.push(facts.transfer_id);
        from.push(facts.from_user_id.as_str());
        to.push(facts.to_user_id.as_str());
        cur.push(facts.currency.as_str());
        amt.push(facts.amount.as_str());
        descr.push(facts.description.as_deref());
        p_id.push(id());
        wallet_entry.push(id());
        transit_entry.push(id());
        payload.push(
            serde_json::to_string(&facts.message(Stage::Confirmed))
                .map_err(|e| Error::Invariant(format!("stage message does not serialise: {e}")))?,
        );
    }
    let client = shard.client().await?;
    let row = client
        .cached_query_one(
            "SELECT credit_direct_batch($1, $2, $3, $4, $5, $6::text[]::numeric[], $7, $8, $9, $10, $11)",
            &[&b, &t_id, &from, &to, &cur, &amt, &descr, &p_id, &wallet_entry, &transit_entry, &payload],
        )
        .await?;
    let outcome: Vec<String> = row.get(0);
    tracing::debug!(items = n, credited = outcome.iter().filter(|o| *o == "credited").count(), "DirectCredit batch");
    Ok(outcome.iter().map(|o| o == "credited").collect())
}

/// The Complete step (`sender_step`: confirming + Confirmed) for each of `items` on
/// shard `shard`, in one statement (V17 `complete_confirmed_batch`).
async fn complete(shard: &Shard, msgs: &[Option<StageMessage>], items: &[usize]) -> Result<Vec<bool>> {
    let mut ids = Vec::with_capacity(items.len());
    let mut buckets = Vec::with_capacity(items.len());
    for &i in items {
        let Some(msg) = &msgs[i] else { return Err(Error::Invariant("an unparsed message in a batch".into())) };
        let id = RoutableId::from_uuid(msg.facts.transfer_id)
            .ok_or_else(|| Error::Invariant("a transfer id without a bucket".into()))?;
        ids.push(msg.facts.transfer_id);
        buckets.push(i32::from(id.bucket()));
    }
    let client = shard.client().await?;
    let rows = client.cached_query("SELECT complete_confirmed_batch($1, $2)", &[&buckets, &ids]).await?;
    let completed: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    tracing::debug!(items = ids.len(), completed = completed.len(), "Confirmed batch");
    Ok(ids.iter().map(|id| completed.contains(id)).collect())
}
