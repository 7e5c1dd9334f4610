//! Payment rows: creating one (with its hold and outbox message), reading them, and
//! running one state-machine step on a locked row.
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use num_bigint::BigInt;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    ledger as legs,
    method::{MaskedMethod, MethodType, PaymentMethod},
    outbox,
    state::{self, Event, State, Status, Step},
    Error, PaymentKind, Result,
};
use crate::{
    domain::{Amount, Currency, RoutableId, UserId},
    ledger::{self, accounts},
    sharding::Router,
};

// What the API shows; its OpenAPI schema (`Payment`) is derived here, so it cannot
// drift from what is sent.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Payment)]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub kind: PaymentKind,
    pub user_id: String,
    pub currency: String,
    /// Minor units, as a string.
    #[schema(example = "5000")]
    pub amount: String,
    #[schema(example = "gateway_a")]
    pub gateway: String,
    pub status: Status,
    pub state: State,
    /// Why it failed (the gateway's decline reason, `expired`, `resolved_failed`, ...).
    pub reason: Option<String>,
    /// The gateway's id for the payment, once it has one.
    pub gateway_reference: Option<String>,
    pub payment_method: MaskedMethod,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The operator who resolved it by hand (the token's subject), and their note.
    pub resolved_by: Option<String>,
    pub resolution_note: Option<String>,
}

/// A payment as the workers need it: what the API shows (with its parsed state and
/// kind), plus its deadline and the sealed method (never serialised).
pub struct PaymentRow {
    pub sealed: Option<Vec<u8>>,
    pub deadline: DateTime<Utc>,
    pub view: PaymentView,
}

const COLUMNS: &str = "payment_id, kind, user_id, currency, amount::text, gateway, state, reason, gateway_reference,
     method_type, method_last4, created_at, updated_at, completed_at, method_sealed, deadline, resolved_by,
     resolution_note";

fn parse_row(row: &Row) -> Result<PaymentRow> {
    let state_text: &str = row.get(6);
    let state = State::parse(state_text).ok_or_else(|| Error::Invariant(format!("payment state {state_text}")))?;
    let kind_text: &str = row.get(1);
    let kind = PaymentKind::parse(kind_text).ok_or_else(|| Error::Invariant(format!("payment kind {kind_text}")))?;
    let method_text: &str = row.get(9);
    let method =
        MethodType::parse(method_text).ok_or_else(|| Error::Invariant(format!("payment method {method_text}")))?;
    let view = PaymentView {
        payment_id: row.get(0),
        kind,
        user_id: row.get(2),
        currency: row.get(3),
        amount: row.get(4),
        gateway: row.get(5),
        status: state.status(),
        state,
        reason: row.get(7),
        gateway_reference: row.get(8),
        payment_method: MaskedMethod { kind: method, last4: row.get(10) },
        created_at: row.get(11),
        updated_at: row.get(12),
        completed_at: row.get(13),
        resolved_by: row.get(16),
        resolution_note: row.get(17),
    };
    Ok(PaymentRow { sealed: row.get(14), deadline: row.get(15), view })
}

pub struct NewPayment<'a> {
    pub payment_id: RoutableId,
    pub kind: PaymentKind,
    pub user: &'a UserId,
    pub currency: &'a Currency,
    pub amount: &'a Amount,
    pub gateway: &'a str,
    pub method: &'a PaymentMethod,
    pub sealed: &'a [u8],
    pub deadline: DateTime<Utc>,
    /// When the reconciler may re-emit the message if the worker has not picked it up.
    pub redrive_at: DateTime<Utc>,
}

/// Records a payment in `created` (a withdrawal holds its amount at once) and commits
/// its message to the payment outbox, in the caller's transaction.
#[tracing::instrument(skip_all, fields(payment_id = %p.payment_id, kind = p.kind.as_str()))]
pub async fn create(tx: &Transaction<'_>, p: &NewPayment<'_>) -> Result<PaymentView> {
    let Some(wallet) = accounts::lock_wallets(tx, &[p.user], p.currency).await?.pop() else {
        return Err(accounts::missing_wallet_error(tx, p.user).await?.into());
    };
    let amount = p.amount.to_string();
    if p.kind == PaymentKind::Withdrawal && wallet.available() < BigInt::from(p.amount.value().clone()) {
        return Err(ledger::Error::InsufficientFunds.into());
    }
    let id = p.payment_id.uuid();
    let masked = p.method.masked();
    let sql = format!(
        "INSERT INTO payments (payment_id, kind, user_id, currency, amount, gateway, state, method_type, method_last4,
                               method_sealed, deadline, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6, 'created', $7, $8, $9, $10, $11)
         RETURNING {COLUMNS}"
    );
    let row = tx
        .query_one(
            &sql,
            &[
                &id,
                &p.kind.as_str(),
                &p.user.as_str(),
                &p.currency.as_str(),
                &amount,
                &p.gateway,
                &masked.kind.as_str(),
                &masked.last4,
                &p.sealed,
                &p.deadline,
                &p.redrive_at,
            ],
        )
        .await?;
    if p.kind == PaymentKind::Withdrawal {
        legs::hold(tx, id, wallet.account_id, &amount).await?;
    }
    outbox::enqueue(tx, id).await?;
    Ok(parse_row(&row)?.view)
}

pub async fn get(client: &impl GenericClient, payment_id: Uuid) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {COLUMNS} FROM payments WHERE payment_id = $1");
    client.query_opt(&sql, &[&payment_id]).await?.as_ref().map(parse_row).transpose()
}

pub async fn lock(tx: &Transaction<'_>, payment_id: Uuid) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {COLUMNS} FROM payments WHERE payment_id = $1 FOR UPDATE");
    tx.query_opt(&sql, &[&payment_id]).await?.as_ref().map(parse_row).transpose()
}

/// Runs `op` on a payment's row, locked in a new transaction on the payment's shard;
/// `op` commits the transaction or drops it (rolling back). `None`, and nothing run,
/// when no payment has this id: not a routable id, a bucket no shard has, or no row.
pub async fn with_locked<T>(
    router: &Router,
    payment_id: Uuid,
    op: impl AsyncFnOnce(Transaction<'_>, PaymentRow) -> Result<T>,
) -> Result<Option<T>> {
    let Some(id) = RoutableId::from_uuid(payment_id) else { return Ok(None) };
    if router.for_id(&id).is_err() {
        return Ok(None);
    }
    let bucket = u32::from(id.bucket());
    // The transaction first checks that its shard owns the payment's bucket; when the
    // bucket moved, `op` is handed back unrun and runs on the new owner.
    router
        .with_owner(bucket, op, |shard, op| async move {
            let mut client = shard.client().await?;
            let tx = client.transaction().await?;
            if let Some(moved) = shard.moved_away(&tx, bucket).await? {
                return Ok(crate::sharding::Attempt::Moved(op, moved));
            }
            let Some(row) = lock(&tx, payment_id).await? else { return Ok(crate::sharding::Attempt::Done(None)) };
            op(tx, row).await.map(|v| crate::sharding::Attempt::Done(Some(v)))
        })
        .await
}

/// A page of a user's payments, newest first (ids sort by creation time).
pub async fn list(
    client: &impl GenericClient,
    user: &UserId,
    limit: i64,
    cursor: Option<Uuid>,
) -> Result<(Vec<PaymentView>, Option<Uuid>)> {
    let sql = format!(
        "SELECT {COLUMNS} FROM payments WHERE user_id = $1 AND ($2::uuid IS NULL OR payment_id < $2)
         ORDER BY payment_id DESC LIMIT $3"
    );
    let rows = client.query(&sql, &[&user.as_str(), &cursor, &(limit + 1)]).await?;
    let mut views = rows.iter().map(|r| parse_row(r).map(|p| p.view)).collect::<Result<Vec<_>>>()?;
    let next = if views.len() as i64 > limit {
        views.truncate(limit as usize);
        views.last().map(|v| v.payment_id)
    } else {
        None
    };
    Ok((views, next))
}

/// A page of one shard's payments in `state`, newest first.
pub async fn list_in_state(
    client: &impl GenericClient,
    state: State,
    limit: i64,
    cursor: Option<Uuid>,
) -> Result<Vec<PaymentView>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM payments WHERE state = $1 AND ($2::uuid IS NULL OR payment_id < $2)
           AND EXISTS (SELECT 1 FROM bucket_owners b WHERE b.bucket = id_bucket(payment_id) AND b.state = 'owned')
         ORDER BY payment_id DESC LIMIT $3"
    );
    let rows = client.query(&sql, &[&state.as_str(), &cursor, &limit]).await?;
    rows.iter().map(|r| parse_row(r).map(|p| p.view)).collect()
}

/// Timing of the steps that schedule the next look at a payment.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// After a submit or a pending answer: when to query the gateway.
    pub query_after: Duration,
    /// After `NotSent` / `NotFound`: when to try again.
    pub retry_in: Duration,
    /// The longest pause between two status queries.
    pub backoff_max: Duration,
}

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

/// Runs one state-machine step on a payment locked in `tx`.
#[tracing::instrument(skip_all, fields(payment_id = %p.view.payment_id, state = p.view.state.as_str()))]
pub async fn transition(tx: &Transaction<'_>, p: &PaymentRow, event: &Event, timing: Timing) -> Result<Step> {
    let step = state::step(p.view.state, event);
    let reference = match event {
        Event::Answer(o) => o.reference().map(str::to_string),
        _ => None,
    };
    let id = p.view.payment_id;
    let bucket = RoutableId::from_uuid(id).map(|r| r.bucket()).unwrap_or_default();
    // The next status query: `query_after`, doubling per query that found no answer, at
    // most `backoff_max`.
    let backoff = "now() + least($2 * power(2, least(queries, 20)), $3) * interval '1 millisecond'";
    match &step {
        Step::MarkSubmitted => {
            tx.execute(
                "UPDATE payments SET state = 'submitted', attempts = attempts + 1, queries = 0, updated_at = now(),
                     next_attempt_at = now() + $2 * interval '1 millisecond' WHERE payment_id = $1",
                &[&id, &millis(timing.query_after)],
            )
            .await?;
        }
        Step::BackToCreated => {
            tx.execute(
                "UPDATE payments SET state = 'created', updated_at = now(),
                     next_attempt_at = now() + $2 * interval '1 millisecond' WHERE payment_id = $1",
                &[&id, &millis(timing.retry_in)],
            )
            .await?;
        }
        Step::AwaitAnswer | Step::QueryLater => {
            // A pending answer means the gateway has the payment: the full number is no
            // longer needed. An unclear one keeps it, to send again if the gateway turns
            // out never to have received it.
            let sql = format!(
                "UPDATE payments SET state = $4, gateway_reference = coalesce($5, gateway_reference),
                     method_sealed = CASE WHEN $6 THEN NULL ELSE method_sealed END, queries = queries + 1,
                     updated_at = now(), next_attempt_at = {backoff} WHERE payment_id = $1"
            );
            let next = state::next(p.view.state, &step);
            let drop_method = matches!(step, Step::AwaitAnswer);
            tx.execute(
                &sql,
                &[
                    &id,
                    &millis(timing.query_after),
                    &millis(timing.backoff_max),
                    &next.as_str(),
                    &reference,
                    &drop_method,
                ],
            )
            .await?;
        }
        Step::Review => {
            // Past the deadline, the gateway may hold it: the hold stays, queries go on
            // (at the longest backoff) until an answer or an operator settles it. No
            // resend can follow from here, so the number goes.
            tracing::warn!(payment_id = %id, "payment past its deadline in doubt: needs review (hold kept)");
            tx.execute(
                "UPDATE payments SET state = 'needs_review', method_sealed = NULL, updated_at = now(),
                     next_attempt_at = now() + $2 * interval '1 millisecond' WHERE payment_id = $1",
                &[&id, &millis(timing.backoff_max)],
            )
            .await?;
        }
        Step::Succeed => {
            let currency = Currency::parse(&p.view.currency).map_err(|e| Error::Invariant(e.to_string()))?;
            match p.view.kind {
                PaymentKind::Deposit => {
                    let user = UserId::parse(&p.view.user_id).map_err(|e| Error::Invariant(e.to_string()))?;
                    let amount = accounts::parse_numeric(&p.view.amount)?;
                    legs::settle_deposit(tx, id, bucket, &user, &currency, &p.view.gateway, amount).await?;
                }
                PaymentKind::Withdrawal => {
                    legs::settle_withdrawal(tx, id, bucket, &p.view.currency, &p.view.gateway).await?
                }
            }
            finish(tx, id, "succeeded", None, reference.as_deref()).await?;
        }
        Step::Fail { reason } => {
            legs::release(tx, id, "failed").await?;
            finish(tx, id, "failed", Some(reason), reference.as_deref()).await?;
        }
        Step::Ignore => {}
        Step::Contradiction => {
            tracing::warn!(payment_id = %id, ?event, "gateway answer contradicts the final state; not applied")
        }
    }
    if let Some(name) = step.name() {
        crate::telemetry::metrics::payment_step(name);
    }
    Ok(step)
}

/// An operator's decision on a payment still pending (typically `needs_review`): runs
/// `Resolve` and records who and why. A final payment is refused with `PaymentFinal`.
#[tracing::instrument(skip(tx, note, timing))]
pub async fn resolve(
    tx: &Transaction<'_>,
    payment_id: Uuid,
    succeeded: bool,
    by: &str,
    note: &str,
    timing: Timing,
) -> Result<PaymentView> {
    let row = lock(tx, payment_id).await?.ok_or(Error::PaymentNotFound)?;
    if row.view.state.is_final() {
        return Err(Error::PaymentFinal);
    }
    transition(tx, &row, &Event::Resolve { succeeded }, timing).await?;
    tx.execute(
        "UPDATE payments SET resolved_by = $2, resolution_note = $3 WHERE payment_id = $1",
        &[&payment_id, &by, &note],
    )
    .await?;
    tracing::warn!(%payment_id, succeeded, by, "payment resolved by an operator");
    Ok(lock(tx, payment_id).await?.ok_or(Error::PaymentNotFound)?.view)
}

async fn finish(
    tx: &Transaction<'_>,
    id: Uuid,
    state: &str,
    reason: Option<&str>,
    reference: Option<&str>,
) -> Result<()> {
    tx.execute(
        "UPDATE payments SET state = $2, reason = $3, gateway_reference = coalesce($4, gateway_reference),
             method_sealed = NULL, updated_at = now(), completed_at = now() WHERE payment_id = $1",
        &[&id, &state, &reason, &reference],
    )
    .await?;
    Ok(())
}
