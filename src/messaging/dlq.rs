//! The dead-letter topic: counts for the admin API, and `shardwallet dlq replay`, which
//! publishes dead letters back to the stage topic (handlers are idempotent, so a
//! message that did get handled after all is harmless). A replay carries the original
//! authentication headers and nothing else: a genuine message verifies again, a forged
//! or unsigned one is refused again (and dead-lettered again).
use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    message::Message,
    producer::{FutureProducer, FutureRecord},
};

use super::{auth, consumer::committed, kafka};
use crate::config::KafkaSettings;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetters)]
pub struct DeadLetterCounts {
    pub topic: String,
    /// Messages ever dead-lettered (still retained by the broker).
    pub total: i64,
    /// Dead letters not replayed yet.
    pub pending: i64,
}

fn replay_group(settings: &KafkaSettings) -> String {
    format!("{}.dlq-replay", settings.group_id)
}

fn replay_consumer(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    Ok(kafka::consumer_config(settings, &replay_group(settings))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "true")
        .create()?)
}

/// Blocking (rdkafka's metadata calls are synchronous): call from `spawn_blocking`.
pub fn counts(settings: &KafkaSettings, topics: &kafka::Topics) -> anyhow::Result<DeadLetterCounts> {
    let consumer = replay_consumer(settings)?;
    let (low, high) = consumer.fetch_watermarks(&topics.dead_letters, 0, Duration::from_secs(5))?;
    let done = committed(&consumer, &topics.dead_letters, 1)?.max(low);
    Ok(DeadLetterCounts { topic: topics.dead_letters.clone(), total: high - low, pending: (high - done).max(0) })
}

/// Republishes every pending dead letter to the stage topic; returns how many.
pub async fn replay(
    settings: &KafkaSettings,
    topics: &kafka::Topics,
    producer: &FutureProducer,
) -> anyhow::Result<usize> {
    let consumer = replay_consumer(settings)?;
    let (_, high) = consumer.fetch_watermarks(&topics.dead_letters, 0, Duration::from_secs(5))?;
    consumer.subscribe(&[&topics.dead_letters])?;
    let mut replayed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut position = committed(&consumer, &topics.dead_letters, 1).unwrap_or(0);
    while position < high && tokio::time::Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = result?;
        let mut record = FutureRecord::to(&topics.stages).headers(auth::tag_headers(m.headers()));
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(payload) = m.payload() {
            record = record.payload(payload);
        }
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
        position = m.offset() + 1;
        replayed += 1;
        consumer.commit_message(&m, CommitMode::Sync)?;
    }
    Ok(replayed)
}
