//! The Try/Confirm/Cancel state machine of cross-shard transfers: every state and
//! every transition is in this file.
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
    incoming::Recorded,
    messages::{self, Stage, StageMessage, TransferFacts, FACTS_COLUMNS},
};
use crate::{
    domain::{Currency, RoutableId, UserId},
    ledger::{self, accounts, holds, Error},
    sharding::Router,
};

/// The sender's states (`transfers.state` of a cross-shard transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderState {
    Trying,
    Confirming,
    Completed,
    Cancelled,
}

impl SenderState {
    pub const ALL: [SenderState; 4] = [Self::Trying, Self::Confirming, Self::Completed, Self::Cancelled];

    /// Where a transfer on the full protocol starts (a hold placed, TryCredit sent).
    pub const INITIAL: SenderState = Self::Trying;
    /// Where a direct credit starts (debited to transit, DirectCredit sent).
    pub const INITIAL_DIRECT: SenderState = Self::Confirming;

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trying => "trying",
            Self::Confirming => "confirming",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
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

/// The receiver's branch record (`incoming_transfers.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverState {
    Tried,
    Rejected,
    Confirmed,
    Cancelled,
}

impl ReceiverState {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "tried" => Self::Tried,
            "rejected" => Self::Rejected,
            "confirmed" => Self::Confirmed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
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
pub async fn handle(router: &Router, msg: &StageMessage) -> ledger::Result<usize> {
    if msg.stage.for_receiver() {
        handle_receiver(router, msg).await
    } else {
        let event = match &msg.stage {
            Stage::Tried { ok, reason } => SenderEvent::Tried { ok: *ok, reason: reason.clone() },
            Stage::Cancelled => SenderEvent::CancelAcked,
            _ => SenderEvent::Confirmed,
        };
        handle_sender(router, msg.facts.transfer_id, &event).await
    }
}

/// Applies an event to the sender's transfer (from a message or the sweeper).
pub async fn handle_sender(router: &Router, transfer_id: Uuid, event: &SenderEvent) -> ledger::Result<usize> {
    let id = RoutableId::from_uuid(transfer_id).ok_or(Error::TransferNotFound)?;
    let shard = router.for_id(&id)?;
    let mut client = shard.client().await?;
    let tx = client.transaction().await?;
    let row = tx
        .cached_query_opt(
            &format!(
                "SELECT state, {FACTS_COLUMNS} FROM transfers WHERE transfer_id = $1 AND route = 'cross_shard' FOR UPDATE"
            ),
            &[&transfer_id],
        )
        .await?
        .ok_or(Error::TransferNotFound)?;
    let state: String = row.get(0);
    let state = SenderState::parse(&state).ok_or_else(|| Error::Invariant(format!("unknown state {state}")))?;
    let facts = TransferFacts::from_row(&row, 1);
    let step = sender_step(state, event);
    tracing::debug!(?state, ?event, ?step, "sender transition");
    match &step {
        // The statements of one step are independent: they travel in one round trip.
        SenderStep::Confirm => {
            let next = facts.message(Stage::ConfirmCredit);
            futures::try_join!(
                holds::debit_to_transit(&tx, transfer_id, id.bucket(), &facts.currency),
                set_state(&tx, transfer_id, SenderState::Confirming, None),
                messages::enqueue(&tx, &next),
            )?;
        }
        SenderStep::Cancel { reason } => {
            let next = facts.message(Stage::CancelCredit);
            futures::try_join!(
                holds::release_hold(&tx, transfer_id),
                set_state(&tx, transfer_id, SenderState::Cancelled, Some(reason)),
                messages::enqueue(&tx, &next),
            )?;
        }
        SenderStep::Complete => set_state(&tx, transfer_id, SenderState::Completed, None).await?,
        SenderStep::AckCancel => {
            tx.cached_execute(
                "UPDATE transfers SET cancel_acked_at = now() WHERE transfer_id = $1 AND cancel_acked_at IS NULL",
                &[&transfer_id],
            )
            .await?;
        }
        SenderStep::Ignore => {}
    }
    tx.commit().await?;
    match &step {
        SenderStep::Complete => crate::telemetry::metrics::cross_shard_completed(),
        SenderStep::Cancel { reason } => crate::telemetry::metrics::cross_shard_cancelled(reason),
        SenderStep::Confirm | SenderStep::AckCancel | SenderStep::Ignore => {}
    }
    Ok(shard.index)
}

async fn set_state(
    tx: &Transaction<'_>,
    transfer_id: Uuid,
    state: SenderState,
    reason: Option<&str>,
) -> ledger::Result<()> {
    let state = state.as_str();
    tx.cached_execute(
        "UPDATE transfers SET state = $2, reason = coalesce($3, reason), updated_at = now(),
             completed_at = CASE WHEN $2 IN ('completed', 'cancelled') THEN now() END
         WHERE transfer_id = $1",
        &[&transfer_id, &state, &reason],
    )
    .await?;
    Ok(())
}

async fn handle_receiver(router: &Router, msg: &StageMessage) -> ledger::Result<usize> {
    let to = UserId::parse(&msg.facts.to_user_id).map_err(|e| Error::Invariant(e.to_string()))?;
    let shard = router.for_user(&to);
    let mut client = shard.client().await?;
    let tx = client.transaction().await?;
    let seen = read_receiver(&tx, msg, &to).await?;
    let step = receiver_step(seen.barriers, seen.state, &msg.stage);
    tracing::debug!(barriers = ?seen.barriers, state = ?seen.state, ?step, "receiver transition");
    let bucket = router.bucket_of_user(&to) as u16;
    apply_receiver_step(&tx, &step, &seen, msg, &to, bucket).await?;
    tx.commit().await?;
    Ok(shard.index)
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
async fn read_receiver(tx: &Transaction<'_>, msg: &StageMessage, to: &UserId) -> ledger::Result<ReceiverView> {
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
) -> ledger::Result<()> {
    let id = msg.facts.transfer_id;
    let answer = |stage| msg.facts.message(stage);
    match step {
        ReceiverStep::Try => {
            let reason = seen.refusal.clone();
            let recorded = if reason.is_none() { "tried" } else { "rejected" };
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
        ReceiverStep::Confirm | ReceiverStep::CreditDirect => credit(tx, step, seen, msg, to, bucket).await?,
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
                        "UPDATE incoming_transfers SET state = 'cancelled', updated_at = now()
                         WHERE transfer_id = $1 AND state = 'tried'",
                        &[&id],
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
    step: &ReceiverStep,
    seen: &ReceiverView,
    msg: &StageMessage,
    to: &UserId,
    bucket: u16,
) -> ledger::Result<()> {
    let id = msg.facts.transfer_id;
    let direct = matches!(step, ReceiverStep::CreditDirect);
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
            true => record_incoming(tx, msg, "confirmed", None).await,
            false => set_incoming(tx, id, "confirmed").await,
        }
    };
    futures::try_join!(
        barrier(tx, id, "confirm"),
        incoming,
        holds::credit_from_transit(tx, id, bucket, to, &currency, &amount),
        messages::enqueue(tx, &confirmed),
    )?;
    Ok(())
}

async fn barrier(tx: &Transaction<'_>, id: Uuid, branch: &str) -> ledger::Result<()> {
    tx.cached_execute("INSERT INTO tcc_barriers (transfer_id, branch) VALUES ($1, $2)", &[&id, &branch]).await?;
    Ok(())
}

/// The receiver's record of an incoming transfer.
async fn record_incoming(
    tx: &Transaction<'_>,
    msg: &StageMessage,
    state: &str,
    reason: Option<&str>,
) -> ledger::Result<()> {
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
            &state,
            &reason,
        ],
    )
    .await?;
    Ok(())
}

async fn set_incoming(tx: &Transaction<'_>, id: Uuid, state: &str) -> ledger::Result<()> {
    tx.cached_execute(
        "UPDATE incoming_transfers SET state = $2, updated_at = now() WHERE transfer_id = $1",
        &[&id, &state],
    )
    .await?;
    Ok(())
}

/// `None` when the receiver can be credited in `currency`, else the reason code.
async fn check_receiver(
    client: &impl deadpool_postgres::GenericClient,
    to: &UserId,
    currency: &str,
) -> ledger::Result<Option<String>> {
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

async fn rejection_reason(tx: &Transaction<'_>, id: Uuid) -> ledger::Result<Option<String>> {
    Ok(tx
        .cached_query_opt("SELECT reason FROM incoming_transfers WHERE transfer_id = $1", &[&id])
        .await?
        .and_then(|r| r.get(0)))
}

/// The receiver's Try as a read: whether `to`'s shard already has `to`'s wallet in
/// `currency`. Only a certain yes counts; a refusal, an error or a slow shard leaves the
/// decision to the full protocol (TryCredit), which then records the reason.
pub async fn receiver_ready(router: &Router, to: &UserId, currency: &str) -> bool {
    let read = async {
        let client = router.for_user(to).client().await?;
        check_receiver(&client, to, currency).await
    };
    matches!(tokio::time::timeout(std::time::Duration::from_secs(1), read).await, Ok(Ok(None)))
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

#[cfg(test)]
mod tests;
