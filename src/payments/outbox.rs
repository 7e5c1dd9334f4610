//! The payment outbox: a payment's message is written in the transaction that creates
//! (or redrives) it; a relay per shard publishes committed rows to the payments topic
//! and deletes them once the broker acknowledged. Kept apart from the transfer outbox
//! so the two evolve independently.
use std::{sync::Arc, time::Duration};

use deadpool_postgres::Transaction;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sharding::Shard;

const BATCH: i64 = 256;
const POLL: Duration = Duration::from_millis(500);

/// The one message on the payments topic: "call the gateway for this payment". It
/// carries no amount, no card number: the worker reads the row.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SubmitPayment {
    /// Schema version (1).
    #[serde(default = "version")]
    pub v: u32,
    pub payment_id: Uuid,
}

fn version() -> u32 {
    1
}

pub async fn enqueue(tx: &Transaction<'_>, payment_id: Uuid) -> crate::ledger::Result<()> {
    let payload = serde_json::to_string(&SubmitPayment { v: 1, payment_id })
        .map_err(|e| crate::ledger::Error::Invariant(format!("payment message does not serialise: {e}")))?;
    tx.execute("INSERT INTO payment_outbox (msg_key, payload) VALUES ($1, $2)", &[&payment_id.to_string(), &payload])
        .await?;
    Ok(())
}

/// Wakes this process's payment relays right after a commit.
#[derive(Clone, Default)]
pub struct Wakers(Arc<Vec<Notify>>);

impl Wakers {
    pub fn new(shards: usize) -> Self {
        Self(Arc::new((0..shards).map(|_| Notify::new()).collect()))
    }

    pub fn wake(&self, shard: usize) {
        if let Some(n) = self.0.get(shard) {
            n.notify_one();
        }
    }
}

pub struct Relay {
    pub shard: Arc<Shard>,
    pub producer: FutureProducer,
    pub topic: String,
    pub wakers: Wakers,
}

impl Relay {
    #[tracing::instrument(name = "payment_relay", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "payment relay failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            let Some(wake) = self.wakers.0.get(self.shard.index) else { break };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Err(e) = self.publish_batch().await {
            tracing::info!(error = %e, "final payment outbox pass failed; the next start publishes the rest");
        }
    }

    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut client = self.shard.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id, msg_key, payload FROM payment_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&BATCH],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let sends = rows.iter().map(|row| {
            let key: &str = row.get(1);
            let payload: &str = row.get(2);
            self.producer.send(FutureRecord::to(&self.topic).key(key).payload(payload), Duration::from_secs(10))
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                anyhow::bail!("publish to {}: {e}", self.topic);
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        tx.execute("DELETE FROM payment_outbox WHERE id = ANY($1)", &[&ids]).await?;
        tx.commit().await?;
        Ok(ids.len())
    }
}
