//! The transactional outboxes: `enqueue` writes a stage message in the caller's
//! transaction (the payments module writes its own table, `payment_outbox`); a `Relay`
//! per shard and table publishes committed rows and deletes them once the broker
//! acknowledged. A crash between publish and delete publishes again (consumers are
//! idempotent); a crash before publish leaves the row for the next relay. The relay
//! signs each row's exact payload bytes as it publishes (`auth`), so rows need no tag
//! column and a row written by any instance goes out signed.
use crate::storage::Cached;
use std::{sync::Arc, time::Duration};

use deadpool_postgres::Transaction;
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    auth::{MessageAuth, Purpose},
    kafka,
};
use crate::{config::KafkaSettings, sharding::Shard};

const BATCH: i64 = 256;
const POLL: Duration = Duration::from_millis(500);
/// A relay whose polls keep finding nothing polls less often, up to this: rows this
/// process commits wake it at once whatever the poll, so the poll only finds rows of a
/// process that died between its commit and its wake-up (which the sweeper re-drives
/// too). An idle cluster then costs each shard a query per relay every few seconds.
const IDLE_POLL: Duration = Duration::from_secs(4);

/// Writes a message to `outbox`'s table in the caller's transaction; the relay publishes
/// it once that transaction has committed.
pub async fn enqueue(
    tx: &Transaction<'_>,
    outbox: Outbox,
    key: &str,
    payload: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.cached_execute(outbox.insert_sql(), &[&key, &payload]).await?;
    Ok(())
}

/// Wakes the relays of this process right after a commit, so a message does not wait
/// for the next poll. Other processes' relays find it by polling.
///
/// One `Notify` per outbox and shard: `notify_one` wakes a single waiting relay, so
/// were the stage and payment relays of a shard to share one, a stage commit could wake
/// the payment relay and leave the stage relay to its poll. The relays of one outbox and
/// shard do share one: any of them publishes the new rows.
///
/// It also carries the relays' word to this process's stage consumer that they
/// published stage messages (`stages_published`): an idle consumer pauses its fetching
/// (`consumer::Idle`) and resumes at once on it.
#[derive(Clone, Default)]
pub struct Wakers {
    relays: Arc<Vec<[Notify; Outbox::ALL.len()]>>,
    stages_published: Arc<Notify>,
}

impl Wakers {
    pub fn new(shards: usize) -> Self {
        Self {
            relays: Arc::new((0..shards).map(|_| std::array::from_fn(|_| Notify::new())).collect()),
            stages_published: Arc::default(),
        }
    }

    /// Resolves once a relay of this process published stage messages (at once when
    /// one did since the last call).
    pub async fn stages_published(&self) {
        self.stages_published.notified().await
    }

    /// After a commit that wrote to `outbox` on `shard`.
    pub fn wake(&self, outbox: Outbox, shard: usize) {
        if let Some(n) = self.get(outbox, shard) {
            n.notify_one();
        }
    }

    fn get(&self, outbox: Outbox, shard: usize) -> Option<&Notify> {
        self.relays.get(shard).map(|per_outbox| &per_outbox[outbox as usize])
    }
}

/// Which outbox table a relay drains, and to which topic of `kafka::Topics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbox {
    /// `outbox`: TCC stage messages, to the stage topic.
    Stages,
    /// `payment_outbox`: `SubmitPayment` messages, to the payments topic.
    Payments,
}

impl Outbox {
    pub const ALL: [Outbox; 2] = [Outbox::Stages, Outbox::Payments];

    fn insert_sql(self) -> &'static str {
        match self {
            Outbox::Stages => "INSERT INTO outbox (msg_key, payload) VALUES ($1, $2)",
            Outbox::Payments => "INSERT INTO payment_outbox (msg_key, payload) VALUES ($1, $2)",
        }
    }

    fn select_sql(self) -> &'static str {
        match self {
            Outbox::Stages => "SELECT id, msg_key, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            Outbox::Payments => {
                "SELECT id, msg_key, payload FROM payment_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
        }
    }

    fn delete_sql(self) -> &'static str {
        match self {
            Outbox::Stages => "DELETE FROM outbox WHERE id = ANY($1)",
            Outbox::Payments => "DELETE FROM payment_outbox WHERE id = ANY($1)",
        }
    }

    fn purpose(self) -> Purpose {
        match self {
            Outbox::Stages => Purpose::Stage,
            Outbox::Payments => Purpose::Payment,
        }
    }

    fn topic(self, topics: &kafka::Topics) -> &str {
        match self {
            Outbox::Stages => &topics.stages,
            Outbox::Payments => &topics.payments,
        }
    }
}

pub struct Relay {
    pub shard: Arc<Shard>,
    pub producer: FutureProducer,
    /// To create the topics again when a restarted broker (memory storage) forgot them.
    pub kafka: KafkaSettings,
    pub outbox: Outbox,
    topics: Arc<kafka::Topics>,
    /// Woken by this process's commits to this outbox on this shard.
    pub wakers: Wakers,
    auth: MessageAuth,
}

impl Relay {
    pub fn new(
        shard: Arc<Shard>,
        producer: FutureProducer,
        kafka: KafkaSettings,
        outbox: Outbox,
        topics: Arc<kafka::Topics>,
        wakers: Wakers,
        auth: MessageAuth,
    ) -> Self {
        Self { shard, producer, kafka, outbox, topics, wakers, auth }
    }

    #[tracing::instrument(name = "relay", skip_all, fields(shard = %self.shard.name, outbox = ?self.outbox))]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut poll = POLL;
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(n) => {
                    backoff = Duration::from_millis(50);
                    poll = if n > 0 { POLL } else { (poll * 2).min(IDLE_POLL) };
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            // A shard that joined after the wakers were made has none: it is polled.
            let woken = async {
                match self.wakers.get(self.outbox, self.shard.index) {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => poll = POLL,
                _ = tokio::time::sleep(poll) => {}
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
        let rows = tx.cached_query(self.outbox.select_sql(), &[&BATCH]).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let topic = self.outbox.topic(&self.topics);
        let sends = rows.iter().map(|row| {
            let key: &str = row.get(1);
            let payload: &str = row.get(2);
            let headers = self.auth.headers(self.outbox.purpose(), key.as_bytes(), payload.as_bytes());
            let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
            self.producer.send(record, Duration::from_secs(10))
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
                    tracing::warn!(topic, "the broker does not know the topic; creating it again");
                    kafka::ensure_topics(&self.kafka, &self.topics).await?;
                }
                anyhow::bail!("publish to {topic}: {e}");
            }
        }
        if self.outbox == Outbox::Stages {
            self.wakers.stages_published.notify_one();
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        tx.cached_execute(self.outbox.delete_sql(), &[&ids]).await?;
        tx.commit().await?;
        tracing::debug!(published = ids.len(), "outbox batch published");
        if self.outbox == Outbox::Stages {
            crate::telemetry::metrics::outbox_published(&self.shard.name, ids.len());
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_wake_reaches_the_relays_of_its_outbox_and_shard_only() {
        let wakers = Wakers::new(2);
        wakers.wake(Outbox::Stages, 1);
        let ready = |outbox, shard| wakers.get(outbox, shard).expect("a shard").notified().now_or_never().is_some();
        assert!(!ready(Outbox::Payments, 1), "a stage commit took the payment relay's wake");
        assert!(!ready(Outbox::Stages, 0), "another shard's relay was woken");
        assert!(ready(Outbox::Stages, 1));
        wakers.wake(Outbox::Payments, 0);
        assert!(ready(Outbox::Payments, 0));
        assert!(wakers.get(Outbox::Stages, 2).is_none(), "no shard 2");
    }
}
