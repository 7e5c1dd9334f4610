//! The receiver's side of the TCC state machine (`super`): one stage in one
//! transaction on the receiver's shard, read under the transfer's advisory lock, then
//! the writes of the step `super::receiver_step` chose.
use deadpool_postgres::Transaction;
use futures::TryFutureExt;
use uuid::Uuid;

use super::{receiver_step, Barriers, ReceiverState, ReceiverStep};
use crate::{
    domain::{Currency, RoutableId, UserId},
    ledger::{accounts, holds},
    sharding::Router,
    storage::Cached,
    transfer::{
        incoming::Recorded,
        messages::{self, Stage, StageMessage},
        Error, Result,
    },
};

pub(super) async fn handle_receiver(router: &Router, msg: &StageMessage) -> Result<usize> {
    let to = UserId::parse(&msg.facts.to_user_id).map_err(|e| Error::Invariant(e.to_string()))?;
    let bucket = router.bucket_of_user(&to);
    if msg.stage == Stage::DirectCredit {
        if let Some(shard) = credit_direct_in_one_call(router, msg, bucket).await? {
            return Ok(shard);
        }
    }
    let to = &to;
    // A stage that reaches a shard the receiver's bucket left is followed to the new
    // owner, never dead-lettered for it.
    router
        .on_owner(bucket, |shard| async move {
            let mut client = shard.client().await?;
            let tx = client.transaction().await?;
            shard.check_write(&tx, bucket).await?;
            let seen = read_receiver(&tx, msg, to).await?;
            let step = receiver_step(seen.barriers, seen.state, &msg.stage);
            tracing::debug!(barriers = ?seen.barriers, state = ?seen.state, ?step, "receiver transition");
            apply_receiver_step(&tx, &step, &seen, msg, to, bucket as u16).await?;
            tx.commit().await?;
            Ok(shard.index)
        })
        .await
}

/// A DirectCredit that finds nothing recorded of its transfer, the common case of every
/// direct cross-shard transfer's first hop, as one statement on the receiver's shard
/// (V16): the CreditDirect step (`receiver_step` with no barrier and no record) with the
/// claim, the lock and every write of the general path, one round trip and one implicit
/// transaction instead of eleven statements. `None` when it wrote nothing (the bucket is
/// not owned here, something of the transfer is recorded, a wallet is missing): then
/// the general path reads the records under the same lock and decides, exactly as before.
async fn credit_direct_in_one_call(router: &Router, msg: &StageMessage, bucket: u32) -> Result<Option<usize>> {
    let Ok(shard) = router.for_bucket(bucket) else { return Ok(None) };
    let facts = &msg.facts;
    let bucket16 = bucket as u16;
    let ids = [RoutableId::new(bucket16).uuid(), RoutableId::new(bucket16).uuid(), RoutableId::new(bucket16).uuid()];
    let payload = facts.message(Stage::Confirmed).payload()?;
    let client = shard.client().await?;
    let outcome = client
        .cached_query_one(
            "SELECT credit_direct_in_one_call($1, $2, $3, $4, $5, $6::text::numeric, $7, $8, $9, $10, $11, $12)",
            &[
                &(bucket as i32),
                &facts.transfer_id,
                &facts.from_user_id,
                &facts.to_user_id,
                &facts.currency,
                &facts.amount,
                &facts.description,
                &ids[0],
                &ids[1],
                &ids[2],
                &facts.transfer_id.to_string(),
                &payload,
            ],
        )
        .await?;
    let outcome: &str = outcome.get(0);
    tracing::debug!(outcome, "direct credit in one call");
    Ok((outcome == "credited").then_some(shard.index))
}

/// What the receiver's shard knows of a transfer, read under its per-transfer lock.
struct ReceiverView {
    barriers: Barriers,
    state: Option<ReceiverState>,
    recorded: Option<Recorded>,
    /// For a TryCredit: `None` when the receiver can take the money, else why not.
    refusal: Option<String>,
}

/// Takes the transfer's advisory lock and reads its barriers and record (and, for a
/// Try, whether the receiver can be credited), in one round trip.
async fn read_receiver(tx: &Transaction<'_>, msg: &StageMessage, to: &UserId) -> Result<ReceiverView> {
    let id = msg.facts.transfer_id;
    // Serialises Try, Confirm and Cancel of one transfer on this shard, so a Try and a
    // Cancel handled at the same moment by two instances cannot miss each other. The
    // reads are pipelined behind the lock: the server runs them once it is granted.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
    // Only a Try asks whether the receiver can take the money: a DirectCredit was sent
    // because the API found the wallet, and wallets are never deleted (were it gone,
    // `credit_from_transit` refuses with an invariant error).
    let needs_receiver_check = matches!(msg.stage, Stage::TryCredit);
    // The lock is prepared beforehand so that it is the first statement on the wire even
    // when the reads' statements still have to be prepared on this connection.
    let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))").await?;
    let (_, barrier_rows, state_row, checked) = futures::try_join!(
        async { Ok::<_, Error>(tx.execute(&lock, &params).await?) },
        async { Ok(tx.cached_query("SELECT branch FROM tcc_barriers WHERE transfer_id = $1", &params).await?) },
        async {
            Ok(tx
                .cached_query_opt(
                    "SELECT state, from_user, to_user, currency, amount::text FROM incoming_transfers
                     WHERE transfer_id = $1",
                    &params,
                )
                .await?)
        },
        async {
            match needs_receiver_check {
                true => check_receiver(tx, to, &msg.facts.currency).await,
                false => Ok(None),
            }
        },
    )?;
    let mut barriers = Barriers::default();
    for row in &barrier_rows {
        match row.get::<_, &str>(0) {
            "try" => barriers.tried = true,
            "confirm" => barriers.confirmed = true,
            _ => barriers.cancelled = true,
        }
    }
    let state = state_row.as_ref().and_then(|r| ReceiverState::parse(r.get(0)));
    let recorded =
        state_row.map(|r| Recorded { from_user: r.get(1), to_user: r.get(2), currency: r.get(3), amount: r.get(4) });
    Ok(ReceiverView { barriers: barriers.or(Barriers::implied_by(state)), state, recorded, refusal: checked })
}

/// Writes what `step` does on the receiver's shard, in the caller's transaction.
async fn apply_receiver_step(
    tx: &Transaction<'_>,
    step: &ReceiverStep,
    seen: &ReceiverView,
    msg: &StageMessage,
    to: &UserId,
    bucket: u16,
) -> Result<()> {
    let id = msg.facts.transfer_id;
    let answer = |stage| msg.facts.message(stage);
    match step {
        ReceiverStep::Try => {
            let reason = seen.refusal.clone();
            let recorded = if reason.is_none() { ReceiverState::Tried } else { ReceiverState::Rejected };
            let tried = answer(Stage::Tried { ok: reason.is_none(), reason: reason.clone() });
            futures::try_join!(
                barrier(tx, id, "try"),
                record_incoming(tx, msg, recorded, reason.as_deref()),
                messages::enqueue(tx, &tried),
            )?;
        }
        ReceiverStep::Suspend => {
            tracing::warn!("Try arrived after Cancel (suspension): ignored");
            barrier(tx, id, "try").await?;
        }
        ReceiverStep::AnswerTriedAgain { ok } => {
            let reason = if *ok { None } else { rejection_reason(tx, id).await? };
            messages::enqueue(tx, &answer(Stage::Tried { ok: *ok, reason })).await?;
        }
        // Confirm after a Try, or a direct credit (no Try: its incoming record is new).
        ReceiverStep::Confirm => credit(tx, false, seen, msg, to, bucket).await?,
        ReceiverStep::CreditDirect => credit(tx, true, seen, msg, to, bucket).await?,
        ReceiverStep::AnswerConfirmedAgain => messages::enqueue(tx, &answer(Stage::Confirmed)).await?,
        ReceiverStep::EmptyRollback => {
            tracing::info!("Cancel arrived before Try (empty rollback): barrier recorded");
            let cancelled = answer(Stage::Cancelled);
            futures::try_join!(barrier(tx, id, "cancel"), messages::enqueue(tx, &cancelled))?;
        }
        ReceiverStep::Cancel => {
            let cancelled = answer(Stage::Cancelled);
            futures::try_join!(
                barrier(tx, id, "cancel"),
                async {
                    tx.cached_execute(
                        "UPDATE incoming_transfers SET state = $2, updated_at = now()
                         WHERE transfer_id = $1 AND state = $3",
                        &[&id, &ReceiverState::Cancelled.as_str(), &ReceiverState::Tried.as_str()],
                    )
                    .await?;
                    Ok(())
                },
                messages::enqueue(tx, &cancelled),
            )?;
        }
        ReceiverStep::AnswerCancelledAgain => messages::enqueue(tx, &answer(Stage::Cancelled)).await?,
        ReceiverStep::Ignore => {}
        ReceiverStep::Violation(what) => return Err(Error::Invariant(what.to_string())),
    }
    Ok(())
}

/// Credits the receiver from transit and answers Confirmed: a Confirm credits what its
/// Try recorded, and a message that says otherwise contradicts the protocol and is
/// refused (dead-lettered), never applied; a direct credit records the transfer first.
async fn credit(
    tx: &Transaction<'_>,
    direct: bool,
    seen: &ReceiverView,
    msg: &StageMessage,
    to: &UserId,
    bucket: u16,
) -> Result<()> {
    let id = msg.facts.transfer_id;
    let (currency, amount) = match (direct, &seen.recorded) {
        (false, Some(recorded)) => {
            if let Some(why) = recorded.mismatch(msg) {
                return Err(Error::Invariant(why));
            }
            (recorded.currency.as_str(), recorded.amount.as_str())
        }
        (false, None) => return Err(Error::Invariant("ConfirmCredit without a Try record".into())),
        (true, _) => (msg.facts.currency.as_str(), msg.facts.amount.as_str()),
    };
    let currency = Currency::parse(currency).map_err(|e| Error::Invariant(e.to_string()))?;
    let amount = accounts::parse_numeric(amount)?;
    let confirmed = msg.facts.message(Stage::Confirmed);
    let incoming = async {
        match direct {
            true => record_incoming(tx, msg, ReceiverState::Confirmed, None).await,
            false => set_incoming(tx, id, ReceiverState::Confirmed).await,
        }
    };
    futures::try_join!(
        barrier(tx, id, "confirm"),
        incoming,
        holds::credit_from_transit(tx, id, bucket, to, &currency, &amount).err_into(),
        messages::enqueue(tx, &confirmed),
    )?;
    Ok(())
}

async fn barrier(tx: &Transaction<'_>, id: Uuid, branch: &str) -> Result<()> {
    tx.cached_execute("INSERT INTO tcc_barriers (transfer_id, branch) VALUES ($1, $2)", &[&id, &branch]).await?;
    Ok(())
}

/// The receiver's record of an incoming transfer.
async fn record_incoming(
    tx: &Transaction<'_>,
    msg: &StageMessage,
    state: ReceiverState,
    reason: Option<&str>,
) -> Result<()> {
    tx.cached_execute(
        "INSERT INTO incoming_transfers (transfer_id, from_user, to_user, currency, amount, description, state, reason)
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6, $7, $8)",
        &[
            &msg.facts.transfer_id,
            &msg.facts.from_user_id,
            &msg.facts.to_user_id,
            &msg.facts.currency,
            &msg.facts.amount,
            &msg.facts.description,
            &state.as_str(),
            &reason,
        ],
    )
    .await?;
    Ok(())
}

async fn set_incoming(tx: &Transaction<'_>, id: Uuid, state: ReceiverState) -> Result<()> {
    tx.cached_execute(
        "UPDATE incoming_transfers SET state = $2, updated_at = now() WHERE transfer_id = $1",
        &[&id, &state.as_str()],
    )
    .await?;
    Ok(())
}

/// `None` when the receiver can be credited in `currency`, else the reason code.
async fn check_receiver(
    client: &impl deadpool_postgres::GenericClient,
    to: &UserId,
    currency: &str,
) -> Result<Option<String>> {
    let row = client
        .cached_query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1),
                    EXISTS (SELECT 1 FROM accounts WHERE user_id = $1 AND currency = $2)",
            &[&to.as_str(), &currency],
        )
        .await?;
    Ok(match (row.get(0), row.get(1)) {
        (false, _) => Some("user_not_found".into()),
        (true, false) => Some("currency_mismatch".into()),
        (true, true) => None,
    })
}

async fn rejection_reason(tx: &Transaction<'_>, id: Uuid) -> Result<Option<String>> {
    Ok(tx
        .cached_query_opt("SELECT reason FROM incoming_transfers WHERE transfer_id = $1", &[&id])
        .await?
        .and_then(|r| r.get(0)))
}

/// The receivers found ready in this process: a user with a wallet in a currency. Users
/// and wallets are never deleted (a bucket move re-homes them, it removes nobody), so a
/// yes stays true and is not read again; a no is never kept. Bounded: past
/// `KnownReceivers::MAX` entries it starts again from empty.
#[derive(Default)]
pub struct KnownReceivers(std::sync::Mutex<std::collections::HashSet<String>>);

impl KnownReceivers {
    pub(super) const MAX: usize = 100_000;

    fn key(to: &UserId, currency: &str) -> String {
        format!("{}\u{0}{currency}", to.as_str())
    }

    pub(super) fn knows(&self, key: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
    }

    pub(super) fn learn(&self, key: String) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= Self::MAX {
            known.clear();
        }
        known.insert(key);
    }
}

/// The receiver's Try as a read: whether `to`'s shard already has `to`'s wallet in
/// `currency`. Only a certain yes counts; a refusal, an error or a slow shard leaves the
/// decision to the full protocol (TryCredit), which then records the reason. A yes read
/// before, by this process, is not read again (`KnownReceivers`).
pub async fn receiver_ready(router: &Router, known: &KnownReceivers, to: &UserId, currency: &str) -> bool {
    let key = KnownReceivers::key(to, currency);
    if known.knows(&key) {
        return true;
    }
    let read = async {
        let client = router.for_user(to).client().await?;
        check_receiver(&client, to, currency).await
    };
    let ready = matches!(tokio::time::timeout(std::time::Duration::from_secs(1), read).await, Ok(Ok(None)));
    if ready {
        known.learn(key);
    }
    ready
}
