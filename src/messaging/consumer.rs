//! The stage topic's consumer loop: takes messages in batches, checks each one's tag,
//! and hands the verified payloads to a `Handler` (the stage worker is
//! `transfer::worker::StageHandler`); what the handler refuses is dead-lettered.
//!
//! Messages are taken in batches; within a batch, messages with the same key (one
//! transfer) run in order and different transfers run concurrently. Offsets are stored
//! only after the whole batch's transactions committed, committed every 100 ms, and
//! committed synchronously when partitions are revoked. Redelivery after a crash or a
//! rebalance is harmless: every handler is idempotent.
//!
//! A message is verified (`auth`) before it is parsed: one without a valid tag is
//! dead-lettered with the reason and never handled.
//!
//! Handled messages are trimmed from the topic (DeleteRecords below the handled offset)
//! every `kafka.trim_interval_secs`: the stage topic is a work queue whose durable
//! record is the shards' own tables, and the local broker's in-memory storage reads
//! every batch of a partition on each fetch, so an untrimmed topic makes every hop
//! slower as it grows (measured: completion p50 16 ms on a fresh broker, 111 ms after
//! ~100k messages, at 150 transfers/s).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::FutureExt;
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::{Header, Message, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    ClientContext, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;

use super::{
    auth::{self, MessageAuth, Purpose},
    kafka::Topics,
};

/// Why a handler gave up on a message: it is dead-lettered with this text.
#[derive(Debug)]
pub struct Refused(pub String);

/// What the consumer does with a verified message. Handlers are idempotent (a message
/// may come again after a crash or a rebalance) and retry what is worth retrying
/// themselves; an `Err` is final for this delivery.
#[async_trait::async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, payload: &[u8]) -> Result<(), Refused>;

    /// Applies what it can of verified payloads of distinct keys together (one
    /// transaction per shard, say), before any of them is handled by itself; returns, per
    /// payload, whether it was handled. `handle` then runs for every one that was not.
    async fn handle_together(&self, payloads: &[&[u8]]) -> Vec<bool> {
        vec![false; payloads.len()]
    }
}

const MAX_BATCH: usize = 512;

/// Commits stored offsets before partitions are taken away, so the next owner does
/// not redo work that is already done.
pub struct CommitOnRevoke;

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
        }
    }
}

pub type StageConsumer = StreamConsumer<CommitOnRevoke>;

pub struct Worker {
    pub consumer: crate::messaging::kafka::ClosedApart<StageConsumer>,
    /// Told when this process's relays publish stage messages (`Idle`).
    pub wakers: crate::messaging::outbox::Wakers,
    pub handler: Arc<dyn Handler>,
    pub producer: FutureProducer,
    pub topics: std::sync::Arc<Topics>,
    pub auth: MessageAuth,
    /// Deletes handled messages from the stage topic; `None` keeps them.
    pub trim: Option<(AdminClient<DefaultClientContext>, Duration)>,
}

impl Worker {
    #[tracing::instrument(name = "consumer", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut handled: HashMap<i32, i64> = HashMap::new();
        let mut last_trim = Instant::now();
        let mut idle = Idle::new(&self.topics.stages);
        while let Some(batch) = idle.next_batch(&self.consumer, &self.wakers, &shutdown).await {
            self.process(&batch).await;
            store_offsets(&*self.consumer, &batch);
            for m in &batch {
                let next = handled.entry(m.partition()).or_default();
                *next = (*next).max(m.offset() + 1);
            }
            if let Some((admin, every)) = &self.trim {
                if last_trim.elapsed() >= *every && !handled.is_empty() {
                    last_trim = Instant::now();
                    self.trim(admin, std::mem::take(&mut handled));
                }
            }
        }
        finish(&*self.consumer);
    }

    /// Deletes the records below `handled` (partition -> next offset) in the background.
    fn trim(&self, admin: &AdminClient<DefaultClientContext>, handled: HashMap<i32, i64>) {
        let mut list = TopicPartitionList::new();
        for (partition, next) in handled {
            if list.add_partition_offset(&self.topics.stages, partition, Offset::Offset(next)).is_err() {
                return;
            }
        }
        let deleted = admin.delete_records(&list, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))));
        tokio::spawn(async move {
            if let Err(e) = deleted.await {
                tracing::debug!(error = %e, "trimming handled stage messages failed; the next trim covers them");
            }
        });
    }

    async fn process(&self, batch: &[OwnedMessage]) {
        let mut verified = Vec::with_capacity(batch.len());
        for m in batch {
            match self.auth.admit(Purpose::Stage, m) {
                Ok(()) => verified.push(m),
                Err(rejection) => self.dead_letter(m, &format!("rejected: {rejection}")).await,
            }
        }
        // The only message of its key in the batch may be applied together with others:
        // nothing of its transfer comes before it here.
        let mut per_key: HashMap<Option<&[u8]>, usize> = HashMap::new();
        for m in &verified {
            *per_key.entry(m.key()).or_default() += 1;
        }
        let alone: Vec<usize> =
            (0..verified.len()).filter(|&i| verified[i].key().is_some() && per_key[&verified[i].key()] == 1).collect();
        let payloads: Vec<&[u8]> = alone.iter().map(|&i| verified[i].payload().unwrap_or_default()).collect();
        let mut done = vec![false; verified.len()];
        for (&i, handled) in alone.iter().zip(self.handler.handle_together(&payloads).await) {
            done[i] = handled;
        }
        let mut lanes: HashMap<Option<&[u8]>, Vec<&OwnedMessage>> = HashMap::new();
        for (m, _) in verified.into_iter().zip(done).filter(|(_, done)| !done) {
            lanes.entry(m.key()).or_default().push(m);
        }
        let lanes = lanes.into_values().map(|lane| async move {
            for m in lane {
                self.process_one(m).await;
            }
        });
        futures::future::join_all(lanes).await;
    }

    /// Handles one verified message; dead-letters it when the handler refuses it.
    async fn process_one(&self, m: &OwnedMessage) {
        if let Err(Refused(why)) = self.handler.handle(m.payload().unwrap_or_default()).await {
            self.dead_letter(m, &why).await;
        }
    }

    async fn dead_letter(&self, m: &OwnedMessage, error: &str) {
        crate::telemetry::metrics::dead_lettered();
        tracing::error!(
            error,
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            "message dead-lettered"
        );
        // The tag travels along, so a replay is exactly as valid as the original.
        let headers = auth::tag_headers(m.headers())
            .insert(Header { key: "error", value: Some(error) })
            .insert(Header { key: "source", value: Some(&format!("{}/{}/{}", m.topic(), m.partition(), m.offset())) });
        let record = || {
            let mut record = FutureRecord::to(&self.topics.dead_letters).headers(headers.clone());
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            if let Some(payload) = m.payload() {
                record = record.payload(payload);
            }
            record
        };
        // Keep trying: the offset must not move past a message that is neither handled
        // nor dead-lettered.
        let mut backoff = Duration::from_millis(100);
        while let Err((e, _)) = self.producer.send(record(), Duration::from_secs(10)).await {
            tracing::warn!(error = %e, "dead-letter publish failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// How long the stage consumer goes without a message before it pauses its partitions.
pub const IDLE_AFTER: Duration = Duration::from_secs(5);
/// While paused, how often it resumes to look for messages other instances published.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a look lasts when it finds nothing: a fetch's round trip (the fetch wait,
/// 20 ms, and a busy broker's answer) many times over, so that a look on a loaded
/// cluster still sees what waits for it.
const PROBE_FOR: Duration = Duration::from_millis(250);

/// An idle stage consumer stops fetching. Against nisshi (the local broker) every
/// fetch with nothing to return costs the broker a re-read of every partition at
/// halving intervals until `fetch.wait.max.ms` is over, 50 fetches a second at the
/// 20 ms wait a hop needs: most of an idle cluster's CPU. After `IDLE_AFTER` without a
/// message the consumer pauses its assignment; it resumes at once when a relay of this
/// process publishes stage messages (`Wakers::stages_published`), and every
/// `PROBE_EVERY` for `PROBE_FOR` to find what other instances published. librdkafka
/// decides a resumed partition's next fetch on its broker thread, which a resume does not
/// wake (it sleeps up to a second): a watermark query to the partition's leader does.
struct Idle {
    topic: String,
    paused: bool,
    /// When to pause if no message comes first.
    until: tokio::time::Instant,
}

impl Idle {
    fn new(topic: &str) -> Self {
        Self { topic: topic.to_string(), paused: false, until: tokio::time::Instant::now() + IDLE_AFTER }
    }

    async fn next_batch(
        &mut self,
        consumer: &StageConsumer,
        wakers: &crate::messaging::outbox::Wakers,
        shutdown: &CancellationToken,
    ) -> Option<Vec<OwnedMessage>> {
        loop {
            let first = tokio::select! {
                m = consumer.recv() => m,
                _ = shutdown.cancelled() => return None,
                _ = wakers.stages_published(), if self.paused => {
                    self.resume(consumer, IDLE_AFTER);
                    continue;
                }
                _ = tokio::time::sleep_until(self.until) => {
                    if self.paused {
                        self.resume(consumer, PROBE_FOR);
                    } else {
                        self.pause(consumer);
                    }
                    continue;
                }
            };
            match first {
                Ok(m) => {
                    if self.paused {
                        // From a partition a rebalance gave it while paused: take the others too.
                        self.resume(consumer, IDLE_AFTER);
                    }
                    self.until = tokio::time::Instant::now() + IDLE_AFTER;
                    return Some(with_what_is_fetched(consumer, m.detach(), MAX_BATCH));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn pause(&mut self, consumer: &StageConsumer) {
        self.until = tokio::time::Instant::now() + PROBE_EVERY;
        match consumer.assignment() {
            Ok(assigned) if assigned.count() > 0 => match consumer.pause(&assigned) {
                Ok(()) => self.paused = true,
                Err(e) => tracing::debug!(error = %e, "pausing the idle consumer"),
            },
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "the idle consumer's assignment"),
        }
    }

    fn resume(&mut self, consumer: &StageConsumer, stay: Duration) {
        self.until = tokio::time::Instant::now() + stay;
        self.paused = false;
        let assigned = match consumer.assignment() {
            Ok(assigned) => assigned,
            // Still paused: the next look (`PROBE_EVERY`) or publish tries again.
            Err(e) => return tracing::warn!(error = %e, "the idle consumer's assignment, to resume it"),
        };
        if let Err(e) = consumer.resume(&assigned) {
            tracing::warn!(error = %e, "resuming the consumer");
        }
        // Wake the broker thread: a request through it does the moment it is queued, so
        // the query does not wait for its answer (a millisecond at most on this thread).
        let Some(partition) = assigned.elements_for_topic(&self.topic).first().map(|e| e.partition()) else { return };
        if let Err(e) = consumer.fetch_watermarks(&self.topic, partition, Duration::from_millis(1)) {
            tracing::trace!(error = %e, "the watermark query that wakes the consumer's broker thread");
        }
    }
}

/// Waits for the next message, then takes what else is already fetched, up to `max`
/// messages in all. `None` once `shutdown` is cancelled. For the payments worker
/// (`payments::worker`); the stage worker's consumer also idles (`Idle::next_batch`).
pub async fn next_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    max: usize,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedMessage>> {
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.cancelled() => return None,
        };
        match first {
            Ok(m) => return Some(with_what_is_fetched(consumer, m.detach(), max)),
            Err(e) => {
                tracing::warn!(error = %e, "consume failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// `first`, then what else is already fetched, up to `max` messages in all.
fn with_what_is_fetched<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    first: OwnedMessage,
    max: usize,
) -> Vec<OwnedMessage> {
    let mut batch = vec![first];
    while batch.len() < max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m.detach()),
            _ => break,
        }
    }
    batch
}

/// Marks a handled batch for the next (periodic) offset commit.
pub fn store_offsets<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, batch: &[OwnedMessage]) {
    for m in batch {
        if let Err(e) = consumer.store_offset(m.topic(), m.partition(), m.offset()) {
            tracing::warn!(error = %e, "store offset");
        }
    }
}

/// Commits what was handled; the consumer closes on its own thread when its worker
/// drops it (`kafka::ClosedApart`).
pub fn finish<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>) {
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
    // No unsubscribe here: dropping the consumer closes it, which leaves the group
    // and waits for the unassignment to finish. An unsubscribe right before the
    // drop let librdkafka terminate the group with that unassignment still in
    // progress (`rd_kafka_cgrp_terminated: assert: !rd_kafka_assignment_in_progress`,
    // an abort of the whole process, seen in the test suite).
}

pub fn subscribe(consumer: &StageConsumer, topics: &Topics) -> anyhow::Result<()> {
    consumer.subscribe(&[&topics.stages])?;
    Ok(())
}

/// Offsets a consumer group has committed on a topic (for the dead-letter counts).
pub fn committed<C: ConsumerContext, T: Consumer<C>>(
    consumer: &T,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5))?;
    Ok(committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o >= 0).sum())
}
