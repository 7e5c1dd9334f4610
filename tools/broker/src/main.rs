//! The local cluster's broker: nisshi (Tansu) 0.8.1 built as a library with only the
//! storage engines `scripts/cluster.sh` uses, so that a first `make run` does not build
//! the whole `nisshi` command line. Takes the arguments `nisshi broker` takes for them
//! (with or without the word `broker` first).
use std::{process::ExitCode, time::Duration};

use clap::Parser;
use nisshi_broker::{
    broker::Broker,
    coordinator::group::administrator::{Controller, GroupCoordinatorConfig},
    otel, TracingFormat, NODE_ID,
};
use nisshi_storage::ArcDynStorage;
use url::Url;

#[derive(Debug, Parser)]
#[command(name = "shardwallet-broker", version, about)]
struct Args {
    /// All members of one cluster use the same id.
    #[arg(long, env = "CLUSTER_ID", default_value = "nisshi_cluster")]
    cluster_id: String,
    /// Where the broker listens.
    #[arg(long, env = "LISTENER_URL", default_value = "tcp://127.0.0.1:9092")]
    listener_url: Url,
    /// Where clients are told to connect (metadata).
    #[arg(long, env = "ADVERTISED_LISTENER_URL", default_value = "tcp://127.0.0.1:9092")]
    advertised_listener_url: Url,
    /// memory://nisshi/ or postgres://user@host:port/database.
    #[arg(long, env = "STORAGE_ENGINE", default_value = "memory://nisshi/")]
    storage_engine: Url,
    /// How long the first rebalance of an empty consumer group waits for more members.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    group_initial_rebalance_delay: Duration,
    /// How often a held JoinGroup or SyncGroup reads its group from storage.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    group_poll_interval: Duration,
    /// No banner.
    #[arg(long)]
    silent: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    // `nisshi broker ARGS` and `shardwallet-broker [broker] ARGS` take the same words.
    let args =
        Args::parse_from(std::env::args().enumerate().filter(|(i, a)| !(*i == 1 && a == "broker")).map(|(_, a)| a));
    let _guard = match otel::init(TracingFormat::Text) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: tracing: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    if args.group_poll_interval.is_zero() {
        eprintln!("error: --group-poll-interval must be longer than zero");
        return ExitCode::FAILURE;
    }
    if !args.silent {
        println!(
            "shardwallet-broker (nisshi 0.8.1): listener {}, storage {}",
            args.listener_url,
            args.storage_engine.scheme()
        );
    }
    let started = tokio::time::Instant::now();
    let broker = Broker::<Controller<ArcDynStorage>, ArcDynStorage>::builder()
        .node_id(NODE_ID)
        .cluster_id(args.cluster_id)
        .incarnation_id(uuid::Uuid::now_v7())
        .advertised_listener(args.advertised_listener_url)
        .otlp_endpoint_url(None)
        .storage(args.storage_engine)
        .listener(args.listener_url)
        .silent(args.silent)
        .group_coordinator(GroupCoordinatorConfig {
            initial_rebalance_delay: args.group_initial_rebalance_delay,
            poll_interval: args.group_poll_interval,
        })
        .build()
        .await;
    let outcome = match broker {
        Ok(broker) => broker.main(started).await,
        Err(e) => {
            eprintln!("error: starting the broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
