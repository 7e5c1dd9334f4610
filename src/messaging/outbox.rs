//! The transactional outbox: `enqueue` writes a stage message in the caller's
//! transaction; a `Relay` per shard publishes committed rows and deletes them once the
//! broker acknowledged. A crash between publish and delete publishes again (consumers
//! are idempotent); a crash before publish leaves the row for the next relay.
use crate::storage::Cached;
use std::{sync::Arc, time::Duration};

use deadpool_postgres::Transaction;
use rdkafka::{
    producer::{FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::kafka;
use crate::{config::KafkaSettings, sharding::Shard, transfer::messages::StageMessage};

const BATCH: i64 = 256;
const POLL: Duration = Duration::from_millis(500);

pub async fn enqueue(tx: &Transaction<'_>, msg: &StageMessage) -> crate::ledger::Result<()> {
    let payload = serde_json::to_string(msg)
        .map_err(|e| crate::ledger::Error::Invariant(format!("stage message does not serialise: {e}")))?;
    tx.cached_execute(
        "INSERT INTO outbox (msg_key, payload) VALUES ($1, $2)",
        &[&msg.transfer_id.to_string(), &payload],
    )
    .await?;
    Ok(())
}

/// Wakes the relays of this process right after a commit, so a message does not wait
/// for the next poll. Other processes' relays find it by polling.
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

    fn get(&self, shard: usize) -> Option<&Notify> {
        self.0.get(shard)
    }
}

pub struct Relay {
    pub shard: Arc<Shard>,
    pub producer: FutureProducer,
    /// To rebuild the producer after a fatal error (an idempotent producer whose broker
    /// forgot its id cannot continue).
    pub kafka: KafkaSettings,
    pub topic: String,
    pub wakers: Wakers,
}

impl Relay {
    #[tracing::instrument(name = "relay", skip_all, fields(shard = %self.shard.name))]
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay failed; retrying");
                    if let Some((code, reason)) = self.producer.client().fatal_error() {
                        tracing::error!(?code, reason, "producer failed fatally; building a new one");
                        match kafka::producer(&self.kafka) {
                            Ok(p) => self.producer = p,
                            Err(e) => tracing::error!(error = %e, "cannot build a new producer"),
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            let Some(wake) = self.wakers.get(self.shard.index) else { break };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // A last pass so messages committed just before shutdown go out now.
        if let Err(e) = self.publish_batch().await {
            tracing::info!(error = %e, "final outbox pass failed; the next start publishes the rest");
        }
    }

    /// Publishes up to one batch. Rows locked here are skipped by other relays.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut client = self.shard.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .cached_query(
                "SELECT id, msg_key, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
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
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownPartition
                            | RDKafkaErrorCode::UnknownTopic
                            | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                ) {
                    // A broker that lost its topics (memory storage, restarted): create
                    // them again; the rows stay in the outbox for the next attempt.
                    tracing::warn!(topic = %self.topic, "the broker does not know the stage topic; creating it again");
                    kafka::ensure_topics(&self.kafka, &kafka::Topics::new(&self.kafka.topic_prefix)).await?;
                }
                anyhow::bail!("publish to {}: {e}", self.topic);
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        tx.cached_execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids]).await?;
        tx.commit().await?;
        tracing::debug!(published = ids.len(), "outbox batch published");
        crate::telemetry::metrics::outbox_published(&self.shard.name, ids.len());
        Ok(ids.len())
    }
}
