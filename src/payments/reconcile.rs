//! The payment reconciler of one shard. No payment stays pending unseen:
//! - a `created` payment whose message was not acted on in time is re-emitted (the
//!   worker ignores it when another message got there first);
//! - a `submitted` or `needs_review` payment whose answer has not come is queried from
//!   its gateway, with backoff, and the answer goes through the state machine like a
//!   callback; a gateway that says it never saw it makes it `created` again (resent
//!   with the same idempotency key); a failed or unclear query only schedules the next;
//! - past its deadline a `created` payment (no gateway holds it) is failed as
//!   `expired`; a `submitted` one is queried one last time and, without an answer,
//!   goes to `needs_review` with its hold kept — queried on, at the longest backoff,
//!   until the gateway or an operator settles it.
use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{outbox, state::Event, worker::defer, Payments, Result};
use crate::{
    gateways::GatewayError,
    sharding::{ownership::nothing_incoming, Shard},
};

/// How often the pruning queries run (they find nothing new in between).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Reconciler {
    pub payments: Arc<Payments>,
    pub shard: Arc<Shard>,
}

impl Reconciler {
    #[tracing::instrument(name = "payment_reconciler", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.payments.settings.sweep_interval_ms.max(10));
        let mut last_prune: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "payment reconciliation failed");
            }
            let every = PRUNE_EVERY.min(Duration::from_secs(self.payments.settings.prune_after_secs.max(1)));
            if last_prune.is_none_or(|t| t.elapsed() >= every) {
                last_prune = Some(std::time::Instant::now());
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e, "pruning settled payments' records failed");
                }
            }
        }
    }

    /// One pass over the payments that are due. Returns how many were looked at.
    pub async fn pass(&self) -> Result<usize> {
        let client = self.shard.client().await?;
        let rows = client
            .query(
                // Only payments of buckets this shard owns: a copy left behind by a move
                // is the new owner's to settle.
                "SELECT payment_id, state, gateway, deadline < now() FROM payments p
                 WHERE state IN ('created', 'submitted', 'needs_review')
                   AND (next_attempt_at <= now() OR (deadline < now() AND state <> 'needs_review'))
                   AND EXISTS (SELECT 1 FROM bucket_owners b WHERE b.bucket = id_bucket(p.payment_id) AND b.state = 'owned')
                 ORDER BY next_attempt_at LIMIT 200",
                &[],
            )
            .await?;
        drop(client);
        let due: Vec<(Uuid, String, String, bool)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        let jobs = due.iter().map(|(id, state, gateway, expired)| async move {
            let result = if state != "created" {
                self.query(*id, gateway, *expired).await
            } else {
                self.redrive(*id, gateway, *expired).await
            };
            if let Err(e) = result {
                tracing::warn!(payment_id = %id, error = %e, "reconciling a payment failed");
            }
        });
        futures::future::join_all(jobs).await;
        Ok(due.len())
    }

    /// Deletes, `prune_after_secs` after a payment is final, its released hold and its
    /// recorded callbacks: a final payment never moves again (the state machine ignores
    /// or only records every later event), and a callback that old fails its
    /// signature's timestamp check anyway. Returns how many rows went.
    pub async fn prune(&self) -> Result<u64> {
        let secs = self.payments.settings.prune_after_secs;
        if secs == 0 {
            return Ok(0);
        }
        let secs = secs as f64;
        let client = self.shard.client().await?;
        let holds = client
            .execute(
                concat!(
                    "DELETE FROM payment_holds WHERE payment_id IN (
                     SELECT h.payment_id FROM payment_holds h JOIN payments p USING (payment_id)
                     WHERE p.state IN ('succeeded', 'failed') AND p.completed_at < now() - $1 * interval '1 second'
                       AND ",
                    nothing_incoming!(),
                    " LIMIT 10000)"
                ),
                &[&secs],
            )
            .await?;
        let events = client
            .execute(
                concat!(
                    "DELETE FROM payment_events WHERE (gateway, event_id) IN (
                     SELECT e.gateway, e.event_id FROM payment_events e JOIN payments p USING (payment_id)
                     WHERE p.state IN ('succeeded', 'failed') AND p.completed_at < now() - $1 * interval '1 second'
                       AND ",
                    nothing_incoming!(),
                    " LIMIT 10000)"
                ),
                &[&secs],
            )
            .await?;
        Ok(holds + events)
    }

    async fn query(&self, id: Uuid, gateway: &str, expired: bool) -> Result<()> {
        let p = &self.payments;
        let answer = match p.gateways.get(gateway) {
            Some(gw) => gw.call(|| gw.client.query(id)).await,
            None => Err(GatewayError::NotSent("gateway not configured".into())),
        };
        match answer {
            Ok(Some(outcome)) => {
                tracing::info!(payment_id = %id, outcome = outcome.label(), "status query answered");
                p.apply(id, &Event::Answer(outcome), Duration::ZERO).await?;
            }
            Ok(None) => {
                tracing::info!(payment_id = %id, "the gateway never received the payment");
                p.apply(id, &Event::NotFound, Duration::ZERO).await?;
            }
            Err(GatewayError::CircuitOpen(wait)) => self.later(id, wait).await?,
            Err(e) => {
                tracing::warn!(payment_id = %id, error = %e, "status query gave no answer; will ask again");
                p.apply(id, &Event::Unclear, Duration::ZERO).await?;
            }
        }
        if expired {
            // created (not found just now): failed, nothing held; submitted: in review.
            p.apply(id, &Event::Expire, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn redrive(&self, id: Uuid, gateway: &str, expired: bool) -> Result<()> {
        let p = &self.payments;
        if expired {
            p.apply(id, &Event::Expire, Duration::ZERO).await?;
            return Ok(());
        }
        if let Some(Err(wait)) = p.gateways.get(gateway).map(|g| g.breaker.admits_new_payments()) {
            return self.later(id, wait).await;
        }
        let mut client = self.shard.client().await?;
        let tx = client.transaction().await?;
        let touched = tx
            .execute(
                "UPDATE payments SET next_attempt_at = now() + $2 * interval '1 millisecond'
                 WHERE payment_id = $1 AND state = 'created'",
                &[&id, &(p.query_after().as_millis() as f64)],
            )
            .await?;
        if touched == 1 {
            outbox::enqueue(&tx, id).await?;
        }
        tx.commit().await?;
        p.wakers.wake(crate::messaging::outbox::Outbox::Payments, self.shard.index);
        Ok(())
    }

    async fn later(&self, id: Uuid, wait: Duration) -> Result<()> {
        let mut client = self.shard.client().await?;
        let tx = client.transaction().await?;
        defer(&tx, id, wait).await?;
        tx.commit().await?;
        Ok(())
    }
}
