//! The sweeper of one shard: cancels transfers whose Try timed out (releasing their
//! holds), re-emits the stage message of transfers that have not moved for a while (a
//! lost or dead-lettered message must not leave money held forever, nor a receiver's
//! record `tried` forever), and prunes old idempotency keys.
//!
//! Errors are per row and per task: one transfer that cannot be handled is logged and
//! skipped, and the other tasks of the pass run all the same. A transfer re-emitted
//! `redrive_max` times without moving is marked stuck (counted, listed for operators)
//! and no longer re-emitted: only an operator re-drives it.
use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    messages::{self, facts_columns, TransferFacts},
    tcc::{self, SenderEvent},
};
use crate::{
    domain::transfer_state::{state_sql, states_sql},
    ledger,
    messaging::outbox::{Outbox, Wakers},
    sharding::{ownership::nothing_incoming, Router, Shard},
};

/// How often the pruning queries run (they find nothing new in between).
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Sweeper {
    pub router: Arc<Router>,
    pub shard: Arc<Shard>,
    pub wakers: Wakers,
    pub interval: Duration,
    pub redrive_after: Duration,
    /// Re-emits of one transfer before it is marked stuck (0: no cap).
    pub redrive_max: u32,
    pub key_retention: Duration,
    /// How long after a transfer is final its released hold and the receiver's
    /// barriers are kept (`None`: forever).
    pub prune_after: Option<Duration>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub timed_out: usize,
    pub redriven: usize,
    pub stuck: usize,
    pub keys_pruned: u64,
    /// Rows or tasks that failed this pass (logged; tried again next pass).
    pub errors: usize,
}

impl Sweeper {
    #[tracing::instrument(name = "sweeper", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_prune: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => break,
            }
            let due = |horizon: &Duration| last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY.min(*horizon));
            if let Some(horizon) = self.prune_after.filter(due) {
                last_prune = Some(std::time::Instant::now());
                match self.prune_final(horizon).await {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(rows, "pruned final transfers' holds and barriers"),
                    Err(e) => tracing::warn!(error = %e, "pruning final transfers' holds and barriers failed"),
                }
            }
            let r = self.sweep().await;
            if r != SweepReport::default() {
                tracing::info!(
                    timed_out = r.timed_out,
                    redriven = r.redriven,
                    stuck = r.stuck,
                    keys_pruned = r.keys_pruned,
                    errors = r.errors,
                    "swept"
                );
            }
        }
    }

    /// One pass; every task runs even when another failed.
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        match self.expire_holds().await {
            Ok((timed_out, errors)) => (report.timed_out, report.errors) = (timed_out, errors),
            Err(e) => self.failed("expiring holds", &e, &mut report),
        }
        match self.redrive().await {
            Ok((redriven, stuck)) => (report.redriven, report.stuck) = (redriven, stuck),
            Err(e) => self.failed("re-driving", &e, &mut report),
        }
        match self.prune_keys().await {
            Ok(pruned) => report.keys_pruned = pruned,
            Err(e) => self.failed("pruning idempotency keys", &e, &mut report),
        }
        report
    }

    fn failed(&self, task: &str, e: &super::Error, report: &mut SweepReport) {
        tracing::warn!(error = %e, task, "sweep task failed; next pass tries again");
        report.errors += 1;
    }

    /// Holds past their expiry belong to transfers whose Try was never answered in
    /// time: cancel them. The state machine ignores the event for anything past `trying`.
    /// Returns (cancelled, failed).
    async fn expire_holds(&self) -> super::Result<(usize, usize)> {
        let client = self.shard.client().await?;
        let rows = client
            .query(
                concat!(
                    "SELECT h.transfer_id FROM holds h JOIN transfers t USING (transfer_id)
                     JOIN bucket_owners b ON b.bucket = id_bucket(t.transfer_id) AND b.state = 'owned'
                     WHERE h.released_at IS NULL AND h.expires_at < now() AND t.state = ",
                    state_sql!(Sender::Trying),
                    " LIMIT 500"
                ),
                &[],
            )
            .await?;
        drop(client);
        let mut failed = 0;
        for row in &rows {
            let id: Uuid = row.get(0);
            match tcc::handle_sender(&self.router, id, &SenderEvent::TryTimedOut).await {
                Ok(shard) => self.wakers.wake(Outbox::Stages, shard),
                Err(e) => {
                    tracing::warn!(transfer_id = %id, error = %e, "cancelling a timed-out transfer failed");
                    failed += 1;
                }
            }
        }
        Ok((rows.len() - failed, failed))
    }

    /// Re-emits TryCredit / ConfirmCredit / CancelCredit for transfers untouched for
    /// `redrive_after` (a cancelled one until its receiver acknowledged the Cancel).
    /// Receivers answer duplicates again without repeating effects. One re-emitted past
    /// `redrive_max` times is marked stuck instead. Returns (re-emitted, newly stuck).
    async fn redrive(&self) -> super::Result<(usize, usize)> {
        let mut client = self.shard.client().await?;
        let tx = client.transaction().await?;
        let cap = if self.redrive_max == 0 { i32::MAX } else { self.redrive_max.min(i32::MAX as u32) as i32 };
        let rows = tx
            .query(
                // The predicate is the one of the partial index `transfers_to_redrive`,
                // in literals, so the planner can match it (`domain::transfer_state`).
                concat!(
                    "UPDATE transfers SET updated_at = now(), redrives = redrives + 1,
                         stuck_at = CASE WHEN redrives >= $2 THEN now() END
                     WHERE transfer_id IN (
                         SELECT t.transfer_id FROM transfers t
                         JOIN bucket_owners b ON b.bucket = id_bucket(t.transfer_id) AND b.state = 'owned'
                         WHERE (t.state IN ",
                    states_sql!(Sender::Trying, Sender::Confirming),
                    " OR (t.state = ",
                    state_sql!(Sender::Cancelled),
                    " AND t.route = 'cross_shard' AND t.cancel_acked_at IS NULL))
                           AND t.stuck_at IS NULL
                           AND t.updated_at < now() - $1 * interval '1 millisecond'
                         ORDER BY t.updated_at LIMIT 500
                         FOR UPDATE OF t SKIP LOCKED FOR KEY SHARE OF b SKIP LOCKED)
                     RETURNING state, direct, stuck_at IS NOT NULL, redrives, ",
                    facts_columns!()
                ),
                &[&(self.redrive_after.as_millis() as f64), &cap],
            )
            .await?;
        let mut stuck = 0;
        for row in &rows {
            let facts = TransferFacts::from_row(row, 4);
            if row.get::<_, bool>(2) {
                let redrives: i32 = row.get(3);
                tracing::error!(transfer_id = %facts.transfer_id, redrives, "transfer stuck: re-driven too often without moving; an operator must look");
                crate::telemetry::metrics::transfer_stuck();
                stuck += 1;
                continue;
            }
            let Some(stage) = tcc::redrive_stage(row.get(0), row.get(1)) else {
                return Err(super::Error::Invariant(format!(
                    "re-drive of a transfer in state {}",
                    row.get::<_, &str>(0)
                )));
            };
            tracing::info!(transfer_id = %facts.transfer_id, stage = stage.name(), "re-emitting stage of a stuck transfer");
            messages::enqueue(&tx, &facts.message(stage)).await?;
        }
        tx.commit().await?;
        if rows.len() > stuck {
            self.wakers.wake(Outbox::Stages, self.shard.index);
        }
        Ok((rows.len() - stuck, stuck))
    }

    /// Deletes what no transition can read again: the released hold of a transfer the
    /// sender has finished (only `trying` reads or releases a hold), and the barriers of
    /// a transfer whose receiver record is final (the record itself implies them; see
    /// `tcc::Barriers::implied_by`). A Cancel barrier without a record (an empty
    /// rollback) is kept: it is all that suspends a late Try.
    pub async fn prune_final(&self, horizon: Duration) -> super::Result<u64> {
        let client = self.shard.client().await?;
        let secs = horizon.as_secs_f64();
        let holds = client
            .execute(
                concat!(
                    "DELETE FROM holds WHERE transfer_id IN (
                     SELECT h.transfer_id FROM holds h JOIN transfers t USING (transfer_id)
                     WHERE h.released_at < now() - $1 * interval '1 second'
                       AND ",
                    nothing_incoming!(),
                    "
                       AND (t.state = ",
                    state_sql!(Sender::Completed),
                    " OR (t.state = ",
                    state_sql!(Sender::Cancelled),
                    " AND t.cancel_acked_at IS NOT NULL))
                     LIMIT 10000)"
                ),
                &[&secs],
            )
            .await?;
        let barriers = client
            .execute(
                concat!(
                    "DELETE FROM tcc_barriers WHERE transfer_id IN (
                     SELECT transfer_id FROM incoming_transfers
                     WHERE state IN ",
                    states_sql!(Receiver::Confirmed, Receiver::Rejected, Receiver::Cancelled),
                    " AND updated_at < now() - $1 * interval '1 second'
                       AND ",
                    nothing_incoming!(),
                    "
                       AND EXISTS (SELECT 1 FROM tcc_barriers b WHERE b.transfer_id = incoming_transfers.transfer_id)
                     LIMIT 10000)"
                ),
                &[&secs],
            )
            .await?;
        Ok(holds + barriers)
    }

    async fn prune_keys(&self) -> super::Result<u64> {
        let client = self.shard.client().await?;
        Ok(client
            .execute(
                concat!(
                    "DELETE FROM idempotency_keys WHERE ctid IN (
                     SELECT ctid FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second' AND ",
                    nothing_incoming!(),
                    " LIMIT 10000)"
                ),
                &[&(self.key_retention.as_secs() as f64)],
            )
            .await?)
    }
}

/// An operator's re-drive of a cross-shard transfer (`POST /v1/admin/transfers/{id}/redrive`):
/// clears the stuck mark and the re-drive count and re-emits the stage its state calls
/// for. A transfer with nothing left to send is `TransferFinal`.
#[tracing::instrument(skip(router, wakers))]
pub async fn redrive_by_operator(
    router: &Router,
    wakers: &Wakers,
    transfer_id: Uuid,
) -> super::Result<ledger::TransferView> {
    let (shard, (view, name)) = tcc::with_sender_locked(router, transfer_id, async |tx, t| {
        let due = t.cross_shard && !(t.state == tcc::SenderState::Cancelled.as_str() && t.cancel_acked);
        let Some(stage) = due.then(|| tcc::redrive_stage(&t.state, t.direct)).flatten() else {
            return Err(super::Error::TransferFinal);
        };
        let name = stage.name();
        messages::enqueue(&tx, &t.facts.message(stage)).await?;
        tx.execute(
            "UPDATE transfers SET stuck_at = NULL, redrives = 0, updated_at = now() WHERE transfer_id = $1",
            &[&transfer_id],
        )
        .await?;
        let view = ledger::queries::get_transfer(&tx, transfer_id).await?;
        tx.commit().await?;
        Ok((view, name))
    })
    .await?;
    wakers.wake(Outbox::Stages, shard);
    tracing::warn!(%transfer_id, stage = name, "transfer re-driven by an operator");
    Ok(view)
}
