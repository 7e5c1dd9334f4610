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
        Result,
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

/// A message of the batch: its index, the message, and the bucket it is applied for
/// (the receiver's for a DirectCredit, the transfer's for a Confirmed).
type Item<'a> = (usize, &'a StageMessage, u32);

/// Applies what it can of `msgs` (distinct transfers; `None` for what did not parse)
/// with one statement per shard and kind of stage.
pub async fn apply(router: &Router, msgs: &[Option<StageMessage>]) -> Applied {
    type Groups<'a> = BTreeMap<usize, (Arc<Shard>, Vec<Item<'a>>)>;
    let (mut credits, mut confirms) = (Groups::new(), Groups::new());
    for (i, msg) in msgs.iter().enumerate() {
        let Some(msg) = msg else { continue };
        let (groups, bucket) = match msg.stage {
            Stage::DirectCredit => {
                let Ok(to) = UserId::parse(&msg.facts.to_user_id) else { continue };
                (&mut credits, router.bucket_of_user(&to))
            }
            Stage::Confirmed => {
                let Some(id) = RoutableId::from_uuid(msg.facts.transfer_id) else { continue };
                (&mut confirms, u32::from(id.bucket()))
            }
            _ => continue,
        };
        if let Ok(shard) = router.for_bucket(bucket) {
            groups.entry(shard.index).or_insert_with(|| (shard, Vec::new())).1.push((i, msg, bucket));
        }
    }
    let credits = credits
        .into_values()
        .filter(|(_, items)| items.len() >= MIN_BATCH)
        .map(|(shard, items)| async move { (shard.index, credit_direct(&shard, &items).await, items) });
    let confirms = confirms
        .into_values()
        .filter(|(_, items)| items.len() >= MIN_BATCH)
        .map(|(shard, items)| async move { (shard.index, complete(&shard, &items).await, items) });
    let (credits, confirms) = futures::join!(futures::future::join_all(credits), futures::future::join_all(confirms));
    let mut applied = Applied { done: vec![false; msgs.len()], woken: Vec::new() };
    let outcomes = credits.into_iter().map(|c| (true, c)).chain(confirms.into_iter().map(|c| (false, c)));
    for (credit, (shard, outcome, items)) in outcomes {
        let done = match outcome {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, credit, items = items.len(), "a batch of stages failed; they go one by one");
                continue;
            }
        };
        // A credit answers Confirmed in its shard's outbox; a completion writes nothing there.
        if credit && done.iter().any(|d| *d) {
            applied.woken.push(shard);
        }
        for ((i, _, _), done) in items.into_iter().zip(done) {
            if !credit && done {
                crate::telemetry::metrics::cross_shard_completed();
            }
            applied.done[i] = done;
        }
    }
    applied
}

/// The CreditDirect step (`receiver_step` with no barrier and no record) for each of
/// `items` on `shard`, in one statement (V17 `credit_direct_batch`).
async fn credit_direct(shard: &Shard, items: &[Item<'_>]) -> Result<Vec<bool>> {
    let column = |f: fn(&StageMessage) -> &str| items.iter().map(|(_, m, _)| f(m)).collect::<Vec<_>>();
    // Fresh ids that route to each item's bucket: the postings, then each of their legs.
    let new_ids = || items.iter().map(|&(_, _, b)| RoutableId::new(b as u16).uuid()).collect::<Vec<Uuid>>();
    let buckets: Vec<i32> = items.iter().map(|&(_, _, b)| b as i32).collect();
    let transfers: Vec<Uuid> = items.iter().map(|(_, m, _)| m.facts.transfer_id).collect();
    let descriptions: Vec<Option<&str>> = items.iter().map(|(_, m, _)| m.facts.description.as_deref()).collect();
    let payloads =
        items.iter().map(|(_, m, _)| m.facts.message(Stage::Confirmed).payload()).collect::<Result<Vec<_>>>()?;
    let client = shard.client().await?;
    let row = client
        .cached_query_one(
            "SELECT credit_direct_batch($1, $2, $3, $4, $5, $6::text[]::numeric[], $7, $8, $9, $10, $11)",
            &[
                &buckets,
                &transfers,
                &column(|m| &m.facts.from_user_id),
                &column(|m| &m.facts.to_user_id),
                &column(|m| &m.facts.currency),
                &column(|m| &m.facts.amount),
                &descriptions,
                &new_ids(),
                &new_ids(),
                &new_ids(),
                &payloads,
            ],
        )
        .await?;
    let outcome: Vec<String> = row.get(0);
    tracing::debug!(
        items = items.len(),
        credited = outcome.iter().filter(|o| *o == "credited").count(),
        "DirectCredit batch"
    );
    Ok(outcome.iter().map(|o| o == "credited").collect())
}

/// The Complete step (`sender_step`: confirming + Confirmed) for each of `items` on
/// `shard`, in one statement (V17 `complete_confirmed_batch`).
async fn complete(shard: &Shard, items: &[Item<'_>]) -> Result<Vec<bool>> {
    let ids: Vec<Uuid> = items.iter().map(|(_, m, _)| m.facts.transfer_id).collect();
    let buckets: Vec<i32> = items.iter().map(|&(_, _, b)| b as i32).collect();
    let client = shard.client().await?;
    let rows = client.cached_query("SELECT complete_confirmed_batch($1, $2)", &[&buckets, &ids]).await?;
    let completed: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    tracing::debug!(items = ids.len(), completed = completed.len(), "Confirmed batch");
    Ok(ids.iter().map(|id| completed.contains(id)).collect())
}
