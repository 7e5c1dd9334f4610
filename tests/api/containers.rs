//! Test servers in containers (`testcontainers`), for machines with a Docker engine and
//! no local cluster: three PostgreSQL servers and one Kafka broker (KRaft), started once
//! per test process and left to Docker when it exits (`docker ps` shows them; they are
//! labelled by testcontainers). `helpers::env()` uses them only when
//! SHARDWALLET_TEST_PG is unset and a Docker engine answers.
use std::{path::Path, sync::OnceLock};

use testcontainers_modules::{
    kafka::apache,
    postgres::Postgres,
    testcontainers::{runners::AsyncRunner, ContainerAsync, ImageExt},
};

/// Whether a Docker engine is reachable (DOCKER_HOST or the default socket).
pub fn docker_available() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    let socket = Path::new("/var/run/docker.sock");
    socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok()
}

struct Running {
    _postgres: Vec<ContainerAsync<Postgres>>,
    _kafka: Option<ContainerAsync<apache::Kafka>>,
}

/// Keeps the containers (and the runtime that drives their clients) for the whole
/// process: tests run on many runtimes, and a container is removed when dropped.
static RUNNING: OnceLock<(tokio::runtime::Runtime, Running)> = OnceLock::new();

/// Starts the servers; returns (PostgreSQL admin URLs, Kafka bootstrap address).
/// `kafka` is an address to use instead of starting a broker.
pub fn start(shards: usize, kafka: Option<String>) -> (Vec<String>, String) {
    // Runs on a thread of its own: callers may be inside a test's runtime.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("container runtime");
        let (urls, bootstrap, running) = runtime.block_on(async move {
            let mut urls = Vec::new();
            let mut postgres = Vec::new();
            for _ in 0..shards {
                let container = Postgres::default()
                    .with_host_auth()
                    .with_tag("16-alpine")
                    .start()
                    .await
                    .expect("start a PostgreSQL container");
                let port = container.get_host_port_ipv4(5432).await.expect("postgres port");
                urls.push(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
                postgres.push(container);
            }
            let (bootstrap, kafka) = match kafka {
                Some(address) => (address, None),
                None => {
                    let container = apache::Kafka::default().start().await.expect("start a Kafka container");
                    let port = container.get_host_port_ipv4(apache::KAFKA_PORT).await.expect("kafka port");
                    (format!("127.0.0.1:{port}"), Some(container))
                }
            };
            (urls, bootstrap, Running { _postgres: postgres, _kafka: kafka })
        });
        if RUNNING.set((runtime, running)).is_err() {
            panic!("test containers started twice");
        }
        (urls, bootstrap)
    })
    .join()
    .expect("starting the test containers")
}
