//! The payment reconciler of one shard. No payment stays pending forever:
//! - a `created` payment whose message was not acted on in time is re-emitted (the
//!   worker ignores it when another message got there first);
//! - a `submitted` payment whose answer has not come after `query_after` is queried
//!   from its gateway, and the answer goes through the state machine like a callback;
//!   a gateway that never saw it makes it `created` again (resent with the same
//!   idempotency key);
//! - a payment past its deadline is queried one last time, then failed as `expired`
//!   (a withdrawal's hold released).
use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{outbox, state::Event, worker::defer, Payments};
use crate::{ledger::Result, sharding::Shard};

pub struct Reconciler {
    pub payments: Arc<Payments>,
    pub shard: Arc<Shard>,
}

impl Reconciler {
    #[tracing::instrument(name = "payment_reconciler", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.payments.settings.sweep_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "payment reconciliation failed");
            }
        }
    }

    /// One pass over the payments that are due. Returns how many were looked at.
    pub async fn pass(&self) -> Result<usize> {
        let client = self.shard.client().await?;
        let rows = client
            .query(
                "SELECT payment_id, state, gateway, deadline < now() FROM payments
                 WHERE state IN ('created', 'submitted') AND (next_attempt_at <= now() OR deadline < now())
                 ORDER BY next_attempt_at LIMIT 200",
                &[],
            )
            .await?;
        drop(client);
        let due: Vec<(Uuid, String, String, bool)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        let jobs = due.iter().map(|(id, state, gateway, expired)| async move {
            let result = if state == "submitted" {
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

    async fn query(&self, id: Uuid, gateway: &str, expired: bool) -> Result<()> {
        let p = &self.payments;
        let answer = match p.gateways.get(gateway) {
            Some(gw) => gw.call(|| gw.client.query(id)).await,
            None => Err(crate::gateways::GatewayError::Rejected("gateway not configured".into())),
        };
        match answer {
            Ok(Some(outcome)) => {
                tracing::info!(payment_id = %id, outcome = outcome.label(), "status query answered");
                p.apply(id, &Event::Answer(outcome), Duration::ZERO).await?;
            }
            Ok(None) if !expired => {
                tracing::info!(payment_id = %id, "gateway never received the payment; resending");
                p.apply(id, &Event::NotReached, Duration::ZERO).await?;
            }
            Ok(None) => {}
            Err(e) if !expired => {
                tracing::warn!(payment_id = %id, error = %e, "status query failed; will ask again");
                self.later(id, p.query_after()).await?;
            }
            Err(_) => {}
        }
        if expired {
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
        p.wakers.wake(self.shard.index);
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
