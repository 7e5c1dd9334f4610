//! Builds the application from settings and runs it until a shutdown future resolves:
//! the HTTP server, and per shard an outbox relay and a sweeper, plus the stage consumer.
use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, auth::Auth, AppState},
    config::Settings,
    gateways::Gateways,
    messaging::{consumer, kafka, outbox},
    payments::{self, method::Sealer, Payments},
    sharding::{Router, Shard, ShardMap},
    storage::identity,
    transfer::{
        admission::{self, Admission},
        sweeper::Sweeper,
    },
};

/// Shards that may join while an instance runs and still get wake-ups (beyond that,
/// their relays poll).
const JOINING_SHARDS: usize = 16;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    port: u16,
}

/// Loads the shard map file and builds the router (no connection is made yet).
pub fn router(settings: &Settings) -> anyhow::Result<Router> {
    let map = ShardMap::load(std::path::Path::new(&settings.shards.map_path))?;
    Router::new(map, settings.shards.pool_size, settings.connect_timeout())
}

/// The router by the newest map: the file's, or the one the shards recorded when it is
/// newer (a shard added, buckets moved), said in one log line.
pub async fn current_router(settings: &Settings) -> anyhow::Result<Router> {
    let router = router(settings)?;
    if router.refresh().await {
        tracing::info!(
            epoch = router.epoch(),
            shards = router.layout().map.shards().len(),
            "using the shard map the shards recorded: it is newer than {}",
            settings.shards.map_path
        );
    }
    Ok(router)
}

/// Refuses to serve when a shard was migrated with a different shard map: with the
/// file's map (epoch 1), every shard must have recorded exactly its part of it; with a
/// newer recorded map, every shard must be the one its name says.
pub async fn check_shard_identities(router: &Router) -> anyhow::Result<()> {
    let layout = router.layout();
    for (shard, spec) in layout.shards.iter().zip(layout.map.shards()) {
        let client = shard.client().await.with_context(|| format!("connecting to shard '{}'", shard.name))?;
        let expected = identity::Identity::expected(&layout.map, spec);
        let recorded = identity::read(&**client).await.map_err(|e| {
            anyhow::anyhow!("shard '{}' has no shard identity ({e}); run `shardwallet migrate` first", shard.name)
        })?;
        match recorded {
            None => anyhow::bail!("shard '{}' has not been migrated: run `shardwallet migrate` first", shard.name),
            Some(recorded) if layout.map.epoch() > crate::sharding::FILE_EPOCH => {
                if recorded.shard_name != shard.name {
                    anyhow::bail!(
                        "the database named for shard '{}' is shard '{}': fix its url",
                        shard.name,
                        recorded.shard_name
                    );
                }
            }
            Some(recorded) => {
                if let Some(why) = identity::mismatch(&recorded, &expected) {
                    anyhow::bail!(why);
                }
            }
        }
    }
    Ok(())
}

impl Application {
    /// Refuses known or weak secrets first (`crate::secrets`), before any connection.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        crate::secrets::enforce(&settings)?;
        crate::telemetry::metrics::handle();
        let router = Arc::new(current_router(&settings).await?);
        check_shard_identities(&router).await?;
        let producer = kafka::producer(&settings.kafka)?;
        let messages = crate::messaging::auth::MessageAuth::new(&settings.kafka)?;
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let port = listener.local_addr()?.port();
        // One set for both outboxes of every shard; each relay waits on its own. Room for
        // shards that join while this instance runs (indices only grow).
        let wakers = outbox::Wakers::new(router.shards().len() + JOINING_SHARDS);
        let payments = Arc::new(payments_context(&settings, &router, port, wakers.clone())?);
        let topics = Arc::new(kafka::Topics::new(&settings.kafka.topic_prefix));
        let state = AppState {
            wakers,
            admission: Arc::new(Admission::new(&settings.transfers, router.shards().len())),
            router,
            auth: Auth::from_settings(&settings.auth),
            settings: Arc::new(settings),
            producer,
            payments,
            messages,
            topics,
            receivers: Arc::default(),
        };
        Ok(Self { listener, state, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// and background workers finish within the grace period, and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        // Two stages: the server stops accepting and drains first; only then do the
        // workers stop, so the relay's last pass publishes what draining requests committed.
        let server_stop = CancellationToken::new();
        let workers_stop = CancellationToken::new();
        let mut workers = spawn_workers(&self.state, &workers_stop);
        let grace = self.state.settings.shutdown_grace();
        // A 5xx the service chose (503 `overloaded`, `shard_unavailable`) is an answer, not
        // a fault: logged at WARN; internal errors are logged at ERROR where they happen
        // (api::error).
        let trace = tower_http::trace::TraceLayer::new_for_http()
            .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN));
        let app = api::routes(self.state).layer(trace);
        let stop = server_stop.clone();
        let server = tokio::spawn(async move {
            // The peer address keys the rate limits of unauthenticated callers.
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(self.listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
        });
        tracing::info!(port = self.port, "serving");
        shutdown.await;
        tracing::info!(grace = ?grace, "shutting down: draining requests, then workers");
        server_stop.cancel();
        let drained = tokio::time::timeout(grace, async {
            let served = server.await;
            workers_stop.cancel();
            while workers.join_next().await.is_some() {}
            served
        })
        .await;
        workers_stop.cancel();
        match drained {
            Ok(Ok(Ok(()))) => tracing::info!("stopped cleanly"),
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => tracing::warn!("grace period over: abandoning what is still running"),
        }
        Ok(())
    }
}

/// The payments context: gateways from `[gateways.*]`, the sealing key, and where the
/// gateways call back.
fn payments_context(
    settings: &Settings,
    router: &Arc<Router>,
    port: u16,
    wakers: outbox::Wakers,
) -> anyhow::Result<Payments> {
    let public_url = if settings.payments.public_url.is_empty() {
        format!("http://127.0.0.1:{port}")
    } else {
        settings.payments.public_url.clone()
    };
    Ok(Payments {
        router: router.clone(),
        gateways: Gateways::from_settings(&settings.gateways)?,
        sealer: Sealer::from_hex(settings.payments.encryption_key.expose_secret())?,
        settings: settings.payments.clone(),
        public_url,
        wakers,
    })
}

/// A relay of `outbox` on `shard`, sharing the process's producer, topics and wakers.
fn relay(state: &AppState, shard: &Arc<crate::sharding::Shard>, outbox: outbox::Outbox) -> outbox::Relay {
    outbox::Relay::new(
        shard.clone(),
        state.producer.clone(),
        state.settings.kafka.clone(),
        outbox,
        state.topics.clone(),
        state.wakers.clone(),
        state.messages.clone(),
    )
}

/// The payments-topic worker (the per-shard payment relay and reconciler start with the
/// shard's other workers).
fn spawn_payment_workers(state: &AppState, token: &CancellationToken, set: &mut JoinSet<()>) {
    let settings = &state.settings;
    if settings.payments.worker_enabled {
        let (state, token) = (state.clone(), token.clone());
        set.spawn(async move {
            let consumer = tokio::select! {
                c = start_payment_consumer(&state) => c,
                _ = token.cancelled() => return,
            };
            let auth = state.messages.clone();
            let consumer = kafka::ClosedApart::new(consumer);
            payments::worker::Worker { consumer, payments: state.payments.clone(), auth }.run(token).await;
        });
    }
}

async fn start_payment_consumer(state: &AppState) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let (settings, topics) = (&state.settings.kafka, &state.topics);
    until_subscribed("payments", settings, topics, || {
        let group = format!("{}.payments", settings.group_id);
        let consumer: rdkafka::consumer::StreamConsumer = kafka::consumer_config(settings, &group)
            .set("fetch.wait.max.ms", settings.payments_fetch_wait_max_ms.to_string())
            .create()?;
        consumer.subscribe(&[&topics.payments])?;
        Ok(consumer)
    })
    .await
}

/// Ensures the topics exist and runs `subscribe`, retrying with backoff while the
/// broker is away (a process may start before its broker).
async fn until_subscribed<C>(
    what: &str,
    settings: &crate::config::KafkaSettings,
    topics: &kafka::Topics,
    subscribe: impl Fn() -> anyhow::Result<C>,
) -> C {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            kafka::ensure_topics(settings, topics).await?;
            subscribe()
        };
        match attempt.await {
            Ok(consumer) => return consumer,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, consumer = what, "cannot start the consumer yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A shard's own workers: its stage relays, sweeper and admission sampler, its payment
/// relay and reconciler.
fn spawn_shard_workers(state: &AppState, shard: &Arc<Shard>, token: &CancellationToken, set: &mut JoinSet<()>) {
    let settings = &state.settings;
    // Several relays per shard: while one waits for the broker's acknowledgements,
    // another publishes what was committed meanwhile (SKIP LOCKED keeps them apart).
    let relays = if settings.transfers.relay_enabled { settings.transfers.relays_per_shard.max(1) } else { 0 };
    for _ in 0..relays {
        set.spawn(relay(state, shard, outbox::Outbox::Stages).run(token.clone()));
    }
    let sweeper = Sweeper {
        router: state.router.clone(),
        shard: shard.clone(),
        wakers: state.wakers.clone(),
        interval: Duration::from_secs(settings.transfers.sweep_interval_secs.max(1)),
        redrive_after: Duration::from_secs(settings.transfers.redrive_after_secs),
        redrive_max: settings.transfers.redrive_max,
        prune_after: (settings.transfers.prune_after_secs > 0)
            .then(|| Duration::from_secs(settings.transfers.prune_after_secs)),
        key_retention: Duration::from_secs(settings.idempotency.retention_hours * 3600),
    };
    set.spawn(sweeper.run(token.clone()));
    // Nothing to sample when both bounds are off.
    if settings.transfers.admission_max_in_flight > 0 || settings.transfers.admission_max_outbox_age_ms > 0 {
        let sampler = admission::Sampler {
            admission: state.admission.clone(),
            shard: shard.clone(),
            interval: Duration::from_millis(settings.transfers.admission_sample_ms.max(10)),
        };
        set.spawn(sampler.run(token.clone()));
    }
    if settings.payments.relay_enabled {
        set.spawn(relay(state, shard, outbox::Outbox::Payments).run(token.clone()));
    }
    let reconciler = payments::reconcile::Reconciler { payments: state.payments.clone(), shard: shard.clone() };
    set.spawn(reconciler.run(token.clone()));
}

/// Polls the shards for a newer map and starts the workers of shards that joined since
/// this instance started.
async fn watch_map(state: AppState, token: CancellationToken) {
    let mut started = state.router.shards().len();
    let mut joined = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(state.settings.shards.map_refresh_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = token.cancelled() => break,
        }
        state.router.refresh_if_newer().await;
        let shards = state.router.shards();
        for shard in &shards[started.min(shards.len())..] {
            tracing::info!(shard = %shard.name, "a shard joined the cluster: starting its workers");
            spawn_shard_workers(&state, shard, &token, &mut joined);
        }
        started = started.max(shards.len());
    }
    while joined.join_next().await.is_some() {}
}

fn spawn_workers(state: &AppState, token: &CancellationToken) -> JoinSet<()> {
    let settings = &state.settings;
    let mut set = JoinSet::new();
    for shard in state.router.shards() {
        spawn_shard_workers(state, &shard, token, &mut set);
    }
    set.spawn(watch_map(state.clone(), token.clone()));
    let sampler = crate::messaging::sampler::Sampler {
        router: state.router.clone(),
        kafka: settings.kafka.clone(),
        topics: state.topics.clone(),
        interval: Duration::from_secs(settings.metrics.sample_interval_secs.max(1)),
    };
    set.spawn(sampler.run(token.clone()));
    spawn_payment_workers(state, token, &mut set);
    if settings.transfers.consumer_enabled {
        let state = state.clone();
        let token = token.clone();
        set.spawn(async move {
            let worker = tokio::select! {
                w = start_consumer(&state) => w,
                _ = token.cancelled() => return,
            };
            worker.run(token).await;
        });
    }
    set
}

/// The stage consumer, once the broker answers.
async fn start_consumer(state: &AppState) -> consumer::Worker {
    let (settings, topics) = (&state.settings.kafka, &state.topics);
    let consumer = until_subscribed("stages", settings, topics, || {
        let consumer: consumer::StageConsumer =
            kafka::consumer_config(settings, &settings.group_id).create_with_context(consumer::CommitOnRevoke)?;
        consumer::subscribe(&consumer, topics)?;
        Ok(consumer)
    })
    .await;
    let handler = crate::transfer::worker::StageHandler {
        router: state.router.clone(),
        wakers: state.wakers.clone(),
        max_attempts: STAGE_ATTEMPTS,
    };
    consumer::Worker {
        consumer: kafka::ClosedApart::new(consumer),
        wakers: state.wakers.clone(),
        handler: Arc::new(handler),
        producer: state.producer.clone(),
        topics: state.topics.clone(),
        auth: state.messages.clone(),
        trim: match settings.trim_interval_secs {
            0 => None,
            secs => match kafka::admin(settings) {
                Ok(admin) => Some((admin, Duration::from_secs(secs))),
                Err(e) => {
                    tracing::warn!(error = %e, "no admin client: handled stage messages are not trimmed");
                    None
                }
            },
        },
    }
}

/// Attempts at one stage before it is dead-lettered: with backoff from 50 ms doubling
/// up to 2 s, about 5 s of a shard being away (longer outages: the sweeper re-drives).
const STAGE_ATTEMPTS: u32 = 8;
