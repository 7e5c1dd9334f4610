//! Two `shardwallet serve` processes behind a client that retries on the other one,
//! random transfers, and one of them killed with SIGKILL every few seconds (restarted
//! 4 s later): nothing is lost or doubled, every user's balance is exactly what the
//! completed transfers say, and nothing is left in flight once the load stops.
//!
//! The run lasts `SHARDWALLET_FAILOVER_SECS` (default 30 s; the run is 60 s)
//! and prints its figures (completion latency, cancellations by reason); timing goals
//! are benchmark figures, not assertions.
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Mutex;

use crate::helpers::*;

const USERS: usize = 12;
const FUNDS: i64 = 1_000_000;
const WORKERS: usize = 8;

/// One `shardwallet serve` child process on a fixed port.
struct Instance {
    port: u16,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("instance log");
        let child = Command::new(env!("CARGO_BIN_EXE_shardwallet"))
            .args(["--config", &self.config.display().to_string(), "serve"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start shardwallet serve");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// The settings of a child process, as a config file (product defaults for Kafka
/// session and admission, test-sized sweeper intervals). No rate limits: eight workers
/// back to back over twelve users pass the default 20 writes/s of a user, and a 429 is
/// a final answer here.
pub(crate) fn config_text(settings: &shardwallet::config::Settings, port: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 5\nprofile = \"dev\"\n\
         [shards]\nmap_path = \"{}\"\npool_size = 8\n\
         [auth]\njwt_secret = \"{JWT_SECRET}\"\n\
         [kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\ngroup_id = \"{}\"\npartitions = 6\n\
         message_key_id = \"{MESSAGE_KEY_ID}\"\nmessage_keys = {{ {MESSAGE_KEY_ID} = \"{MESSAGE_KEY}\" }}\n\
         [transfers]\nsweep_interval_secs = 1\nredrive_after_secs = 3\n\
         [rate_limits]\nenabled = false\n",
        settings.shards.map_path, settings.kafka.brokers, settings.kafka.topic_prefix, settings.kafka.group_id,
    )
}

/// Sends one transfer until an instance gives a final answer, switching instances on
/// transport errors and 5xx, waiting out `Retry-After` on 503. Returns the status and
/// the transfer id of an accepted transfer.
async fn send(
    http: &reqwest::Client,
    urls: &[String],
    token: &str,
    body: &serde_json::Value,
    key: &str,
) -> (StatusCode, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let sent = http
            .post(format!("{url}/v1/transfers"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_server_error() => {
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(Duration::from_millis(100), Duration::from_secs);
                tokio::time::sleep(wait).await;
            }
            Ok(r) => {
                let status = r.status();
                let id = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["transfer_id"].as_str().map(str::to_string));
                return (status, id);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(Instant::now() < deadline, "no instance gave an answer for key {key} within 120 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_killed_in_turn_lose_nothing_and_leave_nothing_in_flight() {
    let run_for =
        Duration::from_secs(std::env::var("SHARDWALLET_FAILOVER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30));
    let deployment = Deployment::new().await;
    let settings = deployment.settings();
    // An in-process app only to create the users; it consumes nothing.
    let mut setup_settings = settings.clone();
    setup_settings.transfers.consumer_enabled = false;
    let setup = deployment.spawn(setup_settings).await;
    let users: Vec<String> = (0..USERS).map(|i| setup.user_on_shard(&format!("f{i}"), i % SHARDS)).collect();
    for u in &users {
        setup.funded_user(u, "EUR", &FUNDS.to_string()).await;
    }
    let tokens: Vec<String> = users.iter().map(|u| setup.user_token(u)).collect();

    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("failover-{}", deployment.id));
    std::fs::create_dir_all(&out).expect("output dir");
    let mut instances: Vec<Instance> = (0..2)
        .map(|i| {
            let port = free_port();
            let config = out.join(format!("instance-{i}.toml"));
            std::fs::write(&config, config_text(&settings, port)).expect("config");
            Instance { port, config, log: out.join(format!("instance-{i}.log")), child: None }
        })
        .collect();
    for instance in &mut instances {
        instance.start();
    }
    let urls: Vec<String> = instances.iter().map(Instance::url).collect();
    let http = reqwest::Client::new();
    for url in &urls {
        let ready = format!("{url}/ready");
        eventually(Duration::from_secs(30), "the instances to be ready", || async {
            http.get(&ready).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
    }

    // Load: each worker sends random transfers back to back until the run is over.
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (http, urls, users, tokens, accepted) =
            (http.clone(), urls.clone(), users.clone(), tokens.clone(), accepted.clone());
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mut n = 0;
            while started.elapsed() < run_for {
                let (from, to) = (rng.gen_range(0..USERS), rng.gen_range(0..USERS));
                if from == to {
                    continue;
                }
                let amount = rng.gen_range(1..100).to_string();
                let body = json!({ "from_user_id": users[from], "to_user_id": users[to], "currency": "EUR", "amount": amount });
                n += 1;
                let (status, id) = send(&http, &urls, &tokens[from], &body, &format!("w{w}-{n}")).await;
                assert!(status == StatusCode::CREATED || status == StatusCode::ACCEPTED, "transfer refused: {status}");
                accepted.lock().await.push(id.expect("transfer id"));
            }
        });
    }
    // Kill one instance with SIGKILL every ~8 s, in turn, and restart it 4 s later.
    let mut victim = 0;
    let mut kills = 0;
    while started.elapsed() + Duration::from_secs(8) < run_for {
        tokio::time::sleep(Duration::from_secs(4)).await;
        instances[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_secs(4)).await;
        instances[victim].start();
        victim = 1 - victim;
    }
    while let Some(joined) = workers.join_next().await {
        joined.expect("load worker");
    }
    let load_stopped = Instant::now();

    // Nothing may stay in flight once the load stops (both instances up).
    let shards: Vec<tokio_postgres::Client> = futures::future::join_all((0..SHARDS).map(|i| setup.shard_db(i))).await;
    eventually(Duration::from_secs(90), "every transfer to reach a final state", || async {
        let mut in_flight = 0i64;
        for db in &shards {
            let row = db
                .query_one("SELECT count(*) FROM transfers WHERE state IN ('trying', 'confirming')", &[])
                .await
                .ok()?;
            in_flight += row.get::<_, i64>(0);
        }
        (in_flight == 0).then_some(())
    })
    .await;
    let settled_after = load_stopped.elapsed();

    // Every accepted transfer exists once, and balances are exactly what the completed
    // ones say.
    let accepted = accepted.lock().await.clone();
    let mut expected: HashMap<String, i64> = users.iter().map(|u| (u.clone(), FUNDS)).collect();
    let mut completion_ms = Vec::new();
    let mut cancelled: HashMap<String, usize> = HashMap::new();
    let mut found = 0;
    for db in &shards {
        let rows = db
            .query(
                "SELECT transfer_id::text, state, from_user, to_user, amount::bigint, coalesce(reason, ''),
                        route, (extract(epoch FROM completed_at - created_at) * 1000)::float8
                 FROM transfers WHERE transfer_id::text = ANY($1)",
                &[&accepted],
            )
            .await
            .expect("transfers");
        for row in rows {
            found += 1;
            let (state, from, to, amount): (String, String, String, i64) =
                (row.get(1), row.get(2), row.get(3), row.get(4));
            match state.as_str() {
                "completed" => {
                    *expected.get_mut(&from).expect("sender") -= amount;
                    *expected.get_mut(&to).expect("receiver") += amount;
                    if row.get::<_, String>(6) == "cross_shard" {
                        completion_ms.push(row.get::<_, f64>(7));
                    }
                }
                "cancelled" => *cancelled.entry(row.get(5)).or_default() += 1,
                other => panic!("transfer {} is {other}", row.get::<_, String>(0)),
            }
        }
    }
    assert_eq!(found, accepted.len(), "every accepted transfer is recorded exactly once");
    let unique: std::collections::HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "no transfer id was handed out twice");
    for u in &users {
        assert_eq!(setup.balance(u, "EUR").await, expected[u].to_string(), "balance of {u}");
    }
    setup.assert_verified().await;

    completion_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        completion_ms
            .get(((completion_ms.len() as f64 * p) as usize).min(completion_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "failover run: {:?}, {kills} kills, {} transfers accepted, {} cross-shard completed: completion p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; cancelled by reason {cancelled:?}; all final {:.1} s after the load stopped",
        run_for,
        accepted.len(),
        completion_ms.len(),
        pct(0.5),
        pct(0.99),
        completion_ms.last().copied().unwrap_or(0.0),
        settled_after.as_secs_f64(),
    );
    for instance in &mut instances {
        instance.kill();
    }
    setup.stop().await;
}
