//! The periodic sampler: every `metrics.sample_interval_secs` it reads what no request
//! path sees and sets the gauges of [`crate::telemetry::metrics`]: per shard the outbox depth and
//! the age of its oldest row and the connection pool's usage; the stage consumer
//! group's lag (committed offsets against high watermarks) and the dead-letter topic's
//! size. A failed sample is logged, counted and tried again next period.
use std::{sync::Arc, time::Duration};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::kafka;
use crate::{
    config::KafkaSettings,
    sharding::{Router, Shard},
    telemetry::metrics,
};

pub struct Sampler {
    pub router: Arc<Router>,
    pub kafka: KafkaSettings,
    pub topics: Arc<kafka::Topics>,
    pub interval: Duration,
}

impl Sampler {
    #[tracing::instrument(name = "sampler", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) {
        let kafka = Arc::new(KafkaProbe::new(&self.kafka, self.topics.clone()));
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let shards = self.router.shards();
            let shards = shards.iter().map(|shard| sample_shard(shard));
            let kafka = kafka.clone();
            let lag = tokio::task::spawn_blocking(move || kafka.sample());
            futures::future::join_all(shards).await;
            if let Err(e) = lag.await {
                tracing::warn!(error = %e, "kafka sample panicked");
            }
        }
    }
}

#[tracing::instrument(skip_all, fields(shard = %shard.name))]
async fn sample_shard(shard: &Shard) {
    metrics::pool_sample(&shard.name, &shard.pool.status());
    match tokio::time::timeout(Duration::from_secs(2), outbox_stats(shard)).await {
        Ok(Ok((depth, age))) => metrics::outbox_sample(&shard.name, depth, age),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "outbox sample failed");
            metrics::sampler_error("outbox");
        }
        Err(_) => metrics::sampler_error("outbox"),
    }
}

/// Unpublished outbox rows on a shard and the age in seconds of the oldest (0 if none).
pub async fn outbox_stats(shard: &Shard) -> anyhow::Result<(i64, f64)> {
    let client = shard.client().await?;
    let row = client
        .query_one("SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM outbox", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A consumer in the stage consumer's group that never subscribes: it only reads the
/// group's committed offsets and the topics' watermarks, so it takes no partitions.
struct KafkaProbe {
    consumer: Option<BaseConsumer>,
    topics: Arc<kafka::Topics>,
}

/// The probe is a member of the consumer group: closing it leaves the group, which can
/// wait on the broker indefinitely. It is dropped when the sampler task is, often on the
/// runtime's own thread while it shuts down, so it closes on a thread of its own (a hang
/// seen in the test suite: a test's runtime never finished shutting down).
impl Drop for KafkaProbe {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            kafka::close_in_background(consumer);
        }
    }
}

impl KafkaProbe {
    fn new(settings: &KafkaSettings, topics: Arc<kafka::Topics>) -> Self {
        let consumer = kafka::consumer_config(settings, &settings.group_id)
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
            .map_err(|e| tracing::warn!(error = %e, "no consumer lag metrics: cannot create the probe"))
            .ok();
        Self { consumer, topics }
    }

    /// Blocking (librdkafka's metadata calls are synchronous).
    fn sample(&self) {
        let Some(consumer) = &self.consumer else { return };
        let timeout = Duration::from_secs(2);
        let lag = || -> anyhow::Result<i64> {
            let metadata = consumer.fetch_metadata(Some(&self.topics.stages), timeout)?;
            let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            let mut list = rdkafka::TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition(&self.topics.stages, p);
            }
            let committed = consumer.committed_offsets(list, timeout)?;
            let mut lag = 0;
            for e in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(&self.topics.stages, e.partition(), timeout)?;
                let done = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low).max(low);
                lag += (high - done).max(0);
            }
            Ok(lag)
        };
        match lag() {
            Ok(lag) => metrics::consumer_lag(&self.topics.stages, lag),
            Err(e) => {
                tracing::debug!(error = %e, "consumer lag sample failed");
                metrics::sampler_error("consumer_lag");
            }
        }
        match consumer.fetch_watermarks(&self.topics.dead_letters, 0, timeout) {
            Ok((low, high)) => metrics::dead_letters_retained(&self.topics.dead_letters, high - low),
            Err(e) => {
                tracing::debug!(error = %e, "dead letter sample failed");
                metrics::sampler_error("dead_letters");
            }
        }
    }
}
