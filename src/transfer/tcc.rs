//! The Try/Confirm/Cancel state machine of cross-shard transfers: every transition is
//! in this file (the states' names, which the ledger reads too, in `domain::transfer_state`).
//!
//! ```text
//! sender shard (transfers.state)            receiver shard (barriers + incoming_transfers.state)
//!
//! API: hold funds ──► trying ──TryCredit──► [try]  user+wallet ok? ─► tried ──Tried{ok}──┐
//!                       │                     │                                          │
//!                       │                     └─ no ─► rejected ──Tried{fail}─┐          │
//!      Tried{fail} or   │ ◄───────────────────────────────────────────────────┘          │
//!      try timeout      ▼                                                                │
//!                   cancelled ──CancelCredit──► [cancel] tried ─► cancelled              │
//!                  (hold released)  ▲            no try yet ─► empty rollback:           │
//!                       │           │              cancel barrier, a later Try is        │
//!                       │           │              suspended (ignored)                   │
//!                       │           └── re-sent by the sweeper until ──┐                 │
//!                 cancel acknowledged ◄──────────── Cancelled ◄────────┘ (every Cancel)  │
//!      Tried{ok} ◄───────────────────────────────────────────────────────────────────────┘
//!         ▼
//!    confirming ──ConfirmCredit──► [confirm] credit wallet from transit ─► confirmed ──Confirmed──┐
//!  (debit to transit,                                                                            │
//!   hold released)                                                                               │
//!    completed ◄─────────────────────────────────────────────────────────────────────────────────┘
//! ```
//! **Direct credit.** When the sender's API request finds the receiver's user and wallet
//! by a read on the receiver's shard, that read is the Try (the receiver's Try reserves
//! nothing, and users and wallets are never removed): the transfer starts in
//! `confirming`, debited to transit, and DirectCredit replaces TryCredit, Tried and
//! ConfirmCredit (two hops instead of four). Otherwise (receiver unknown, receiver's
//! shard unreachable) the full protocol above runs and decides.
//!
//! ```text
//! API: read receiver ok ─► confirming ──DirectCredit──► [direct] credit from transit ─► confirmed ──Confirmed──┐
//!     (debit to transit)                                                                                    │
//!      completed ◄──────────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Once `confirming` is decided the transfer is never cancelled; the sweeper re-emits
//! ConfirmCredit until Confirmed arrives, and likewise CancelCredit until Cancelled
//! arrives, so a lost stage in either direction is recovered by the protocol itself. Each handler is one local transaction, and is
//! idempotent: the sender's transitions are guarded by the current state (row locked),
//! the receiver's by barrier primary keys under a per-transfer advisory lock.
use crate::storage::Cached;
use chrono::Utc;
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::{
    messages::{self, facts_columns, Stage, StageMessage, TransferFacts},
    Error, Result,
};
use crate::{
    domain::RoutableId,
    ledger::{self, holds},
    sharding::Router,
};
use futures::TryFutureExt;

/// The states themselves, and their names in the database, are in `domain` (the
/// ledger's audit reads them too); where each transition starts is decided here.
pub use crate::domain::{ReceiverState, SenderState};

impl SenderState {
    /// Where a transfer on the full protocol starts (a hold placed, TryCredit sent).
    pub const INITIAL: SenderState = Self::Trying;
    /// Where a direct credit starts (debited to transit, DirectCredit sent).
    pub const INITIAL_DIRECT: SenderState = Self::Confirming;
}

/// What happens to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    Tried {
        ok: bool,
        reason: Option<String>,
    },
    TryTimedOut,
    Confirmed,
    /// The receiver handled CancelCredit.
    CancelAcked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderStep {
    /// trying -> confirming: debit the held amount to transit, emit ConfirmCredit.
    Confirm,
    /// trying -> cancelled: release the hold, emit CancelCredit.
    Cancel { reason: String },
    /// confirming -> completed.
    Complete,
    /// cancelled: the receiver's record is final; stop re-sending CancelCredit.
    AckCancel,
    /// A duplicate or late message: nothing changes.
    Ignore,
}

pub fn sender_step(state: SenderState, event: &SenderEvent) -> SenderStep {
    use SenderEvent as E;
    use SenderState as S;
    match (state, event) {
        (S::Trying, E::Tried { ok: true, .. }) => SenderStep::Confirm,
        (S::Trying, E::Tried { ok: false, reason }) => {
            SenderStep::Cancel { reason: reason.clone().unwrap_or_else(|| "rejected".into()) }
        }
        (S::Trying, E::TryTimedOut) => SenderStep::Cancel { reason: "timeout".into() },
        (S::Confirming, E::Confirmed) => SenderStep::Complete,
        (S::Cancelled, E::CancelAcked) => SenderStep::AckCancel,
        // Confirming is never cancelled; late answers to an already decided Try, and
        // repeated Confirmed, change nothing.
        _ => SenderStep::Ignore,
    }
}

/// What the receiver's shard has recorded about one transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Barriers {
    pub tried: bool,
    pub confirmed: bool,
    pub cancelled: bool,
}

impl Barriers {
    /// What a receiver record in `state` implies was recorded. The sweeper prunes the
    /// barriers of transfers whose record is final (`docs/ARCHITECTURE.md`, "Growth");
    /// the record alone then gives every stage the answer the barriers gave.
    pub fn implied_by(state: Option<ReceiverState>) -> Self {
        let none = Self::default();
        match state {
            None => none,
            Some(ReceiverState::Tried | ReceiverState::Rejected) => Self { tried: true, ..none },
            Some(ReceiverState::Confirmed) => Self { confirmed: true, ..none },
            Some(ReceiverState::Cancelled) => Self { tried: true, cancelled: true, ..none },
        }
    }

    pub fn or(self, other: Self) -> Self {
        Self {
            tried: self.tried || other.tried,
            confirmed: self.confirmed || other.confirmed,
            cancelled: self.cancelled || other.cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverStep {
    /// First Try: check the receiver, record tried or rejected, answer Tried.
    Try,
    /// Try after Cancel (suspension): record the barrier, change nothing, answer nothing.
    Suspend,
    /// Repeated Try: answer again with what was recorded (the first answer may be lost).
    AnswerTriedAgain { ok: bool },
    /// First Confirm: credit the receiver from transit, answer Confirmed.
    Confirm,
    /// Repeated Confirm: answer Confirmed again, credit nothing.
    AnswerConfirmedAgain,
    /// First DirectCredit: record the transfer as confirmed, credit the receiver from
    /// transit, answer Confirmed.
    CreditDirect,
    /// Cancel with no Try (empty rollback): record the barrier so a late Try is
    /// suspended, answer Cancelled.
    EmptyRollback,
    /// Cancel after Try: drop the reserved credit, answer Cancelled.
    Cancel,
    /// Repeated Cancel: answer Cancelled again (the first answer may be lost).
    AnswerCancelledAgain,
    /// A duplicate with nothing to say.
    Ignore,
    /// A message the protocol never sends in this state: an error, kept for operators.
    Violation(&'static str),
}

pub fn receiver_step(b: Barriers, state: Option<ReceiverState>, stage: &Stage) -> ReceiverStep {
    use ReceiverState as R;
    match stage {
        Stage::TryCredit if b.tried => match state {
            Some(R::Tried | R::Confirmed) => ReceiverStep::AnswerTriedAgain { ok: true },
            Some(R::Rejected) => ReceiverStep::AnswerTriedAgain { ok: false },
            _ => ReceiverStep::Ignore,
        },
        // A directly credited transfer never sent a Try; a stray one gets the answer it
        // would have had.
        Stage::TryCredit if b.confirmed => ReceiverStep::AnswerTriedAgain { ok: true },
        Stage::TryCredit if b.cancelled => ReceiverStep::Suspend,
        Stage::TryCredit => ReceiverStep::Try,
        Stage::ConfirmCredit | Stage::DirectCredit if b.confirmed => ReceiverStep::AnswerConfirmedAgain,
        Stage::DirectCredit if b.tried || b.cancelled => {
            ReceiverStep::Violation("DirectCredit for a transfer that went through Try or Cancel")
        }
        Stage::DirectCredit => ReceiverStep::CreditDirect,
        Stage::ConfirmCredit => match state {
            Some(R::Tried) if !b.cancelled => ReceiverStep::Confirm,
            _ => ReceiverStep::Violation("ConfirmCredit for a transfer that was not tried successfully"),
        },
        Stage::CancelCredit if b.cancelled => ReceiverStep::AnswerCancelledAgain,
        Stage::CancelCredit if b.confirmed => ReceiverStep::Violation("CancelCredit for a confirmed transfer"),
        Stage::CancelCredit if !b.tried => ReceiverStep::EmptyRollback,
        Stage::CancelCredit => match state {
            Some(R::Confirmed) => ReceiverStep::Violation("CancelCredit for a confirmed transfer"),
            _ => ReceiverStep::Cancel,
        },
        Stage::Tried { .. } | Stage::Confirmed | Stage::Cancelled => {
            ReceiverStep::Violation("sender stage sent to the receiver")
        }
    }
}

/// Handles one stage message in one transaction on the shard it concerns. Returns the
/// index of the shard whose outbox got a new message (so its relay can be woken).
#[tracing::instrument(skip_all, fields(transfer_id = %msg.facts.transfer_id, stage = msg.stage.name()))]
pub async fn handle(router: &Router, msg: &StageMessage) -> Result<usize> {
    if msg.stage.for_receiver() {
        handle_receiver(router, msg).await
    } else {
        let event = match &msg.stage {
            Stage::Tried { ok, reason } => SenderEvent::Tried { ok: *ok, reason: reason.clone() },
            Stage::Cancelled => SenderEvent::CancelAcked,
            _ => {
                if let Some(shard) = complete_if_confirming(router, msg.facts.transfer_id).await? {
                    crate::telemetry::metrics::cross_shard_completed();
                    return Ok(shard);
                }
                SenderEvent::Confirmed
            }
        };
        handle_sender(router, msg.facts.transfer_id, &event).await
    }
}

/// Confirmed for a transfer in `confirming` (`sender_step`: Complete), the common case of
/// every cross-shard transfer's last hop, as one statement on the sender's shard: the
/// bucket's claim (`claim_bucket`, the lock and check of `ownership::check_write`; its
/// query sees what committed before the lock was granted, so a fence's flip) and the
/// conditional UPDATE together, one round trip and one implicit transaction instead of
/// five round trips. `None` when it changed nothing (the bucket is not owned here, or
/// the transfer is unknown, already final, or in another state): then the general path
/// (`handle_sender`) decides, exactly as before.
async fn complete_if_confirming(router: &Router, transfer_id: Uuid) -> Result<Option<usize>> {
    let Some(id) = RoutableId::from_uuid(transfer_id) else { return Ok(None) };
    let Ok(shard) = router.for_id(&id) else { return Ok(None) };
    let client = shard.client().await?;
    let completed = client
        .cached_execute(
            "UPDATE transfers SET state = $3, updated_at = now(), completed_at = now()
             WHERE transfer_id = $1 AND state = $4 AND route = 'cross_shard'
               AND (SELECT c.state FROM claim_bucket($2) c) = 'owned'",
            &[
                &transfer_id,
                &i32::from(id.bucket()),
                &SenderState::Completed.as_str(),
                &SenderState::Confirming.as_str(),
            ],
        )
        .await?;
    Ok((completed == 1).then_some(shard.index))
}

/// Applies an event to the sender's transfer (from a message or the sweeper).
pub async fn handle_sender(router: &Router, transfer_id: Uuid, event: &SenderEvent) -> Result<usize> {
    let (shard, step) = with_sender_locked(router, transfer_id, async |tx, t| {
        if !t.cross_shard {
            return Err(ledger::Error::TransferNotFound.into());
        }
        let state =
            SenderState::parse(&t.state).ok_or_else(|| Error::Invariant(format!("unknown state {}", t.state)))?;
        let step = sender_step(state, event);
        tracing::debug!(?state, ?event, ?step, "sender transition");
        apply_sender_step(&tx, &step, &t).await?;
        tx.commit().await?;
        Ok(step)
    })
    .await?;
    match &step {
        SenderStep::Complete => crate::telemetry::metrics::cross_shard_completed(),
        SenderStep::Cancel { reason } => crate::telemetry::metrics::cross_shard_cancelled(reason),
        SenderStep::Confirm | SenderStep::AckCancel | SenderStep::Ignore => {}
    }
    Ok(shard)
}

/// The writes of one sender step. Its statements are independent: they travel in one
/// round trip.
async fn apply_sender_step(tx: &Transaction<'_>, step: &SenderStep, t: &LockedTransfer) -> Result<()> {
    let (transfer_id, facts) = (t.facts.transfer_id, &t.facts);
    match step {
        SenderStep::Confirm => {
            let next = facts.message(Stage::ConfirmCredit);
            futures::try_join!(
                holds::debit_to_transit(tx, transfer_id, t.id.bucket(), &facts.currency).err_into(),
                set_state(tx, transfer_id, SenderState::Confirming, None),
                messages::enqueue(tx, &next),
            )?;
        }
        SenderStep::Cancel { reason } => {
            let next = facts.message(Stage::CancelCredit);
            futures::try_join!(
                holds::release_hold(tx, transfer_id).err_into(),
                set_state(tx, transfer_id, SenderState::Cancelled, Some(reason)),
                messages::enqueue(tx, &next),
            )?;
        }
        SenderStep::Complete => set_state(tx, transfer_id, SenderState::Completed, None).await?,
        SenderStep::AckCancel => {
            tx.cached_execute(
                "UPDATE transfers SET cancel_acked_at = now() WHERE transfer_id = $1 AND cancel_acked_at IS NULL",
                &[&transfer_id],
            )
            .await?;
        }
        SenderStep::Ignore => {}
    }
    Ok(())
}

/// A transfer as its sender's shard records it, read `FOR UPDATE`.
pub struct LockedTransfer {
    pub id: RoutableId,
    pub state: String,
    pub direct: bool,
    pub cross_shard: bool,
    pub cancel_acked: bool,
    pub facts: TransferFacts,
}

/// Runs `op` on a transfer's row, locked in a new transaction on its sender's shard;
/// `op` commits the transaction or drops it (rolling back). Returns the shard's index
/// with what `op` returned; `TransferNotFound` when no transfer has this id.
pub async fn with_sender_locked<T>(
    router: &Router,
    transfer_id: Uuid,
    op: impl AsyncFnOnce(Transaction<'_>, LockedTransfer) -> Result<T>,
) -> Result<(usize, T)> {
    let not_found = || Error::from(ledger::Error::TransferNotFound);
    let id = RoutableId::from_uuid(transfer_id).ok_or_else(not_found)?;
    router.for_id(&id).map_err(|_| not_found())?;
    let bucket = u32::from(id.bucket());
    // The transaction first checks that its shard owns the transfer's bucket; when the
    // bucket moved, `op` is handed back unrun and runs on the new owner.
    router.with_owner(bucket, op, |shard, op| locked_on(shard, id, op)).await
}

async fn locked_on<T, Op: AsyncFnOnce(Transaction<'_>, LockedTransfer) -> Result<T>>(
    shard: std::sync::Arc<crate::sharding::Shard>,
    id: RoutableId,
    op: Op,
) -> Result<crate::sharding::Attempt<(usize, T), Op>> {
    let not_found = || Error::from(ledger::Error::TransferNotFound);
    let transfer_id = id.uuid();
    let mut client = shard.client().await?;
    let tx = client.transaction().await?;
    if let Some(moved) = shard.moved_away(&tx, u32::from(id.bucket())).await? {
        return Ok(crate::sharding::Attempt::Moved(op, moved));
    }
    let row = tx
        .cached_query_opt(
            concat!(
                "SELECT state, direct, route = 'cross_shard', cancel_acked_at IS NOT NULL, ",
                facts_columns!(),
                " FROM transfers WHERE transfer_id = $1 FOR UPDATE"
            ),
            &[&transfer_id],
        )
        .await?
        .ok_or_else(not_found)?;
    let locked = LockedTransfer {
        id,
        state: row.get(0),
        direct: row.get(1),
        cross_shard: row.get(2),
        cancel_acked: row.get(3),
        facts: TransferFacts::from_row(&row, 4),
    };
    Ok(crate::sharding::Attempt::Done((shard.index, op(tx, locked).await?)))
}

async fn set_state(tx: &Transaction<'_>, transfer_id: Uuid, state: SenderState, reason: Option<&str>) -> Result<()> {
    tx.cached_execute(
        "UPDATE transfers SET state = $2, reason = coalesce($3, reason), updated_at = now(),
             completed_at = CASE WHEN $4 THEN now() END
         WHERE transfer_id = $1",
        &[&transfer_id, &state.as_str(), &reason, &state.is_final()],
    )
    .await?;
    Ok(())
}

/// The stage a sender re-emits for a transfer in `state` that has not moved (sweeper,
/// operator re-drive); `None` when nothing is due (a final transfer).
pub fn redrive_stage(state: &str, direct: bool) -> Option<Stage> {
    Some(match SenderState::parse(state)? {
        SenderState::Trying => Stage::TryCredit,
        SenderState::Confirming if direct => Stage::DirectCredit,
        SenderState::Confirming => Stage::ConfirmCredit,
        SenderState::Cancelled => Stage::CancelCredit,
        SenderState::Completed => return None,
    })
}

/// The deadline of a new cross-shard transfer's Try.
pub fn try_deadline(timeout: std::time::Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::seconds(30))
}

pub mod batch;
mod receiver;
use receiver::handle_receiver;
pub use receiver::{receiver_ready, KnownReceivers};

#[cfg(test)]
mod tests;
