//! The sweeper of one shard: cancels transfers whose Try timed out (releasing their
//! holds), re-emits the stage message of transfers that have not moved for a while (a
//! lost or dead-lettered message must not leave money held forever, nor a receiver's
//! record `tried` forever), and prunes old idempotency keys.
use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    messages::{Stage, TransferFacts},
    tcc::{self, SenderEvent},
};
use crate::{
    ledger,
    messaging::outbox::{self, Wakers},
    sharding::{Router, Shard},
};

pub struct Sweeper {
    pub router: Arc<Router>,
    pub shard: Arc<Shard>,
    pub wakers: Wakers,
    pub interval: Duration,
    pub redrive_after: Duration,
    pub key_retention: Duration,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub timed_out: usize,
    pub redriven: usize,
    pub keys_pruned: u64,
}

impl Sweeper {
    #[tracing::instrument(name = "sweeper", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => break,
            }
            match self.sweep().await {
                Ok(r) if r == SweepReport::default() => {}
                Ok(r) => {
                    tracing::info!(timed_out = r.timed_out, redriven = r.redriven, keys_pruned = r.keys_pruned, "swept")
                }
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    }

    pub async fn sweep(&self) -> ledger::Result<SweepReport> {
        Ok(SweepReport {
            timed_out: self.expire_holds().await?,
            redriven: self.redrive().await?,
            keys_pruned: self.prune_keys().await?,
        })
    }

    /// Holds past their expiry belong to transfers whose Try was never answered in
    /// time: cancel them. The state machine ignores the event for anything past `trying`.
    async fn expire_holds(&self) -> ledger::Result<usize> {
        let client = self.shard.client().await?;
        let rows = client
            .query(
                "SELECT h.transfer_id FROM holds h JOIN transfers t USING (transfer_id)
                 WHERE h.released_at IS NULL AND h.expires_at < now() AND t.state = 'trying' LIMIT 500",
                &[],
            )
            .await?;
        drop(client);
        for row in &rows {
            let id: Uuid = row.get(0);
            let shard = tcc::handle_sender(&self.router, id, &SenderEvent::TryTimedOut).await?;
            self.wakers.wake(shard);
        }
        Ok(rows.len())
    }

    /// Re-emits TryCredit / ConfirmCredit / CancelCredit for transfers untouched for
    /// `redrive_after` (a cancelled one until its receiver acknowledged the Cancel).
    /// Receivers answer duplicates again without repeating effects.
    async fn redrive(&self) -> ledger::Result<usize> {
        let mut client = self.shard.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "UPDATE transfers SET updated_at = now()
                 WHERE transfer_id IN (
                     SELECT transfer_id FROM transfers
                     WHERE (state IN ('trying', 'confirming')
                            OR (state = 'cancelled' AND route = 'cross_shard' AND cancel_acked_at IS NULL))
                       AND updated_at < now() - $1 * interval '1 millisecond'
                     ORDER BY updated_at LIMIT 500 FOR UPDATE SKIP LOCKED)
                 RETURNING transfer_id, state, from_user, to_user, currency, amount::text, description, direct",
                &[&(self.redrive_after.as_millis() as f64)],
            )
            .await?;
        for row in &rows {
            let facts = TransferFacts {
                transfer_id: row.get(0),
                from_user_id: row.get(2),
                to_user_id: row.get(3),
                currency: row.get(4),
                amount: row.get(5),
                description: row.get(6),
            };
            let stage = match row.get::<_, &str>(1) {
                "trying" => Stage::TryCredit,
                "confirming" if row.get::<_, bool>(7) => Stage::DirectCredit,
                "confirming" => Stage::ConfirmCredit,
                "cancelled" => Stage::CancelCredit,
                // The query selects only the states above.
                other => return Err(ledger::Error::Invariant(format!("re-drive of a transfer in state {other}"))),
            };
            tracing::info!(transfer_id = %facts.transfer_id, stage = stage.name(), "re-emitting stage of a stuck transfer");
            outbox::enqueue(&tx, &facts.message(stage)).await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            self.wakers.wake(self.shard.index);
        }
        Ok(rows.len())
    }

    async fn prune_keys(&self) -> ledger::Result<u64> {
        let client = self.shard.client().await?;
        Ok(client
            .execute(
                "DELETE FROM idempotency_keys WHERE ctid IN (
                     SELECT ctid FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second' LIMIT 10000)",
                &[&(self.key_retention.as_secs() as f64)],
            )
            .await?)
    }
}
