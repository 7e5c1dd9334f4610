//! The test harness: `spawn_app()` and the typed helpers on `TestApp`.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use shardwallet::{
    api::auth::Auth,
    config::{
        AuthSettings, GatewayProtocol, GatewaySettings, IdempotencySettings, KafkaSecurity, KafkaSettings, Limit,
        MessageKeySettings, MetricsSettings, PaymentSettings, Profile, RateLimitSettings, ServerSettings, Settings,
        ShardSettings, TransferSettings,
    },
    domain::{Role, UserId},
    ledger::verify,
    sharding::{Router, ShardMap},
    startup::{self, Application},
    storage::{identity, migrate},
};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

pub const JWT_SECRET: &str = "test-secret";

/// The key id and key that sign every test app's stage and payment messages.
pub const MESSAGE_KEY_ID: &str = "test1";
pub const MESSAGE_KEY: &str = "test-message-key-of-thirty-two-bytes!";

pub fn message_keys() -> MessageKeySettings {
    MessageKeySettings {
        message_keys: [(MESSAGE_KEY_ID.to_string(), MESSAGE_KEY.into())].into_iter().collect(),
        message_key_id: MESSAGE_KEY_ID.into(),
        accept_unsigned: false,
    }
}

/// Where the test servers are.
#[derive(Clone)]
pub struct TestEnv {
    pub pg: Vec<String>,
    pub kafka: String,
    pub nisshi: Option<String>,
}

static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();

/// The local cluster when `make test` set SHARDWALLET_TEST_PG (SHARDWALLET_TEST_KAFKA,
/// default 127.0.0.1:9092); else, when a Docker engine answers, PostgreSQL and Kafka in
/// containers (`containers`); chosen once per process and printed.
pub fn env() -> TestEnv {
    ENV.get_or_init(|| {
        let kafka = std::env::var("SHARDWALLET_TEST_KAFKA").ok();
        let nisshi = std::env::var("SHARDWALLET_TEST_NISSHI").ok();
        if let Ok(pg) = std::env::var("SHARDWALLET_TEST_PG") {
            let kafka = kafka.unwrap_or_else(|| "127.0.0.1:9092".into());
            announce(&format!("local cluster (SHARDWALLET_TEST_PG={pg}, kafka {kafka})"));
            return TestEnv { pg: pg.split(',').map(str::to_string).collect(), kafka, nisshi };
        }
        if !crate::containers::docker_available() {
            panic!(
                "SHARDWALLET_TEST_PG is not set and no Docker engine answers: run the tests with `make test`, \
                 which starts the local cluster"
            );
        }
        let (pg, kafka) = crate::containers::start(SHARDS, kafka);
        announce(&format!("testcontainers (postgres {pg:?}, kafka {kafka})"));
        TestEnv { pg, kafka, nisshi }
    })
    .clone()
}

/// Written past the test harness's output capture, so it shows once per run.
fn announce(choice: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "test servers: {choice}");
}

pub const ROOMY: Limit = Limit { per_second: 100_000.0, burst: 100_000 };

pub const SHARDS: usize = 3;
pub const RANGES: [&str; SHARDS] = ["0-5460", "5461-10921", "10922-16383"];

/// A shard map for `urls` (one per shard) with the standard bucket ranges.
pub fn shard_map_text(urls: &[String], ranges: &[&str; SHARDS]) -> String {
    let mut text = String::from("buckets = 16384\n");
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"shard-{}\"\nurl = \"{url}\"\nbuckets = [\"{}\"]\n",
            i + 1,
            ranges[i]
        ));
    }
    text
}

fn with_db(server_url: &str, db: &str) -> String {
    let base = server_url.rsplit_once('/').map_or(server_url, |(b, _)| b);
    format!("{base}/{db}")
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

fn migrations_hash() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("migrations dir").flatten().map(|e| e.path()).collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend(std::fs::read(&f).expect("migration file"));
    }
    format!("{:012x}", xxhash_rust::xxh3::xxh3_64(&all) & 0xffff_ffff_ffff)
}

static TEMPLATES: OnceCell<String> = OnceCell::const_new();

/// Creates (once per server, under an advisory lock shared by all test processes) a
/// database with every migration applied, to clone per test.
async fn template() -> &'static str {
    TEMPLATES
        .get_or_init(|| async {
            let name = format!("sw_template_{}", migrations_hash());
            for server in &env().pg {
                let admin = connect(server).await;
                admin.execute("SELECT pg_advisory_lock(727274)", &[]).await.expect("lock");
                // The last tests of an earlier run may have exited before their cleanup
                // thread dropped their databases: drop those nobody is connected to (a
                // test process running beside this one keeps its own: DROP refuses).
                let leftovers = admin
                    .query("SELECT datname FROM pg_database WHERE datname ~ '^t[0-9a-f]{12}_s[0-9]+$'", &[])
                    .await
                    .expect("list test databases");
                for db in leftovers.iter().map(|r| r.get::<_, String>(0)) {
                    if let Err(e) = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).await {
                        tracing::debug!(error = %e, %db, "test database in use; left alone");
                    }
                }
                let exists = admin
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                    .await
                    .expect("query")
                    .is_some();
                if !exists {
                    let building = format!("{name}_building");
                    admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                        .await
                        .expect("drop");
                    admin.batch_execute(&format!("CREATE DATABASE {building}")).await.expect("create template");
                    let config: tokio_postgres::Config = with_db(server, &building).parse().expect("url");
                    migrate::run("template", &config).await.expect("migrate template");
                    admin.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}")).await.expect("rename");
                }
                admin.execute("SELECT pg_advisory_unlock(727274)", &[]).await.expect("unlock");
            }
            name
        })
        .await
}

/// One test's infrastructure: a database per shard and a Kafka topic prefix. Dropped
/// (databases and topics) when the last app using it is gone.
pub struct Deployment {
    pub id: String,
    pub db_urls: Vec<String>,
    dbs: Vec<(String, String)>,
    pub kafka: String,
    dir: PathBuf,
    /// Base URLs of this test's mock gateways (JSON: gateway_a, XML: gateway_b).
    pub mock_a: String,
    pub mock_b: String,
}

pub const GATEWAY_SECRET: &str = "test-gateway-secret";
/// How long the test mocks answer 5xx about a payment whose amount ends in 09.
pub const FLAKY_FOR: Duration = Duration::from_secs(6);

/// The test mocks' configuration.
pub fn mock_config(protocol: shardwallet::gateways::mock::Protocol) -> shardwallet::gateways::mock::MockConfig {
    shardwallet::gateways::mock::MockConfig {
        protocol,
        secret: GATEWAY_SECRET.as_bytes().to_vec(),
        callback_url: None,
        callback_delay: Duration::from_millis(300),
        // Longer than the apps' gateway timeout (2 s, `gateway_settings`).
        slow_reply: Duration::from_secs(4),
        flaky_for: FLAKY_FOR,
    }
}

/// Starts a mock gateway on a free port for the rest of the test; returns its base URL.
pub async fn start_mock_gateway(protocol: shardwallet::gateways::mock::Protocol) -> String {
    serve_mock_gateway(mock_config(protocol)).await
}

pub async fn serve_mock_gateway(config: shardwallet::gateways::mock::MockConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind mock gateway");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(shardwallet::gateways::mock::serve(listener, config, std::future::pending()));
    format!("http://127.0.0.1:{port}")
}

pub fn gateway_settings(protocol: GatewayProtocol, base_url: &str) -> GatewaySettings {
    GatewaySettings {
        protocol,
        base_url: base_url.into(),
        signing_secret: GATEWAY_SECRET.into(),
        previous_signing_secret: None,
        timeout_ms: 2000,
        retry_max_attempts: 4,
        retry_min_delay_ms: 20,
        retry_max_delay_ms: 200,
        breaker_failure_threshold: 5,
        breaker_open_ms: 1000,
    }
}

impl Deployment {
    pub async fn new() -> Arc<Self> {
        Self::with_kafka(&env().kafka).await
    }

    pub async fn with_kafka(kafka: &str) -> Arc<Self> {
        let env = env();
        let template = template().await;
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut dbs = Vec::new();
        let mut db_urls = Vec::new();
        for shard in 0..SHARDS {
            let server = &env.pg[shard % env.pg.len()];
            let db = format!("{id}_s{}", shard + 1);
            let admin = connect(server).await;
            let mut attempt = 0;
            loop {
                match admin.batch_execute(&format!("CREATE DATABASE {db} TEMPLATE {template}")).await {
                    Ok(()) => break,
                    // Another clone of the template is starting; try again shortly.
                    Err(e) if attempt < 50 => {
                        attempt += 1;
                        tracing::debug!(error = %e, "clone template");
                        tokio::time::sleep(Duration::from_millis(50 + 20 * attempt)).await;
                    }
                    Err(e) => panic!("create {db}: {e}"),
                }
            }
            dbs.push((server.clone(), db.clone()));
            db_urls.push(with_db(server, &db));
        }
        let dir = std::env::temp_dir().join(format!("shardwallet-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mock_a = start_mock_gateway(shardwallet::gateways::mock::Protocol::Json).await;
        let mock_b = start_mock_gateway(shardwallet::gateways::mock::Protocol::Xml).await;
        let deployment = Self { id, db_urls, dbs, kafka: kafka.to_string(), dir, mock_a, mock_b };
        // Record the standard map's identity on each shard, as `shardwallet migrate` does.
        let map = ShardMap::parse(&shard_map_text(&deployment.db_urls, &RANGES), |_| None).expect("map");
        let members: Vec<(String, String)> = map
            .shards()
            .iter()
            .map(|s| (s.name.clone(), shardwallet::sharding::url_without_password(&s.config)))
            .collect();
        for (spec, url) in map.shards().iter().zip(&deployment.db_urls) {
            let client = connect(url).await;
            identity::write(&client, &identity::Identity::expected(&map, spec)).await.expect("identity");
            shardwallet::sharding::ownership::record_initial(&client, &spec.name, &spec.ranges, &members)
                .await
                .expect("bucket ownership");
        }
        Arc::new(deployment)
    }

    /// Settings for an app on this deployment, with shards reached at `urls`.
    pub fn settings_for(&self, urls: &[String], ranges: &[&str; SHARDS]) -> Settings {
        let path = self.dir.join(format!("shard-map-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, shard_map_text(urls, ranges)).expect("write shard map");
        Settings {
            // The harness's secrets are in the repository: a development deployment
            // (tests/api/secrets.rs checks the production profile).
            server: ServerSettings { listen: "127.0.0.1:0".into(), shutdown_grace_secs: 10, profile: Profile::Dev },
            shards: ShardSettings {
                map_path: path.display().to_string(),
                pool_size: 8,
                connect_timeout_ms: 1000,
                map_refresh_ms: 500,
            },
            auth: AuthSettings::with_secret(JWT_SECRET),
            kafka: KafkaSettings {
                brokers: self.kafka.clone(),
                topic_prefix: format!("{}.", self.id),
                group_id: self.id.clone(),
                partitions: 3,
                session_timeout_ms: 3000,
                fetch_wait_max_ms: 10,
                payments_fetch_wait_max_ms: 10,
                trim_interval_secs: 5,
                messages: message_keys(),
                security: KafkaSecurity::default(),
            },
            transfers: TransferSettings {
                try_timeout_secs: 30,
                sweep_interval_secs: 1,
                redrive_after_secs: 5,
                ..TransferSettings::default()
            },
            idempotency: IdempotencySettings { retention_hours: 24 },
            metrics: MetricsSettings { sample_interval_secs: 1 },
            // On, but roomy: some tests fire hundreds of requests as one user at once.
            // tests/api/rate_limit.rs sets tight limits.
            rate_limits: RateLimitSettings {
                write: ROOMY,
                read: ROOMY,
                callback: ROOMY,
                ..RateLimitSettings::default()
            },
            payments: PaymentSettings {
                query_after_ms: 1500,
                query_backoff_max_ms: 5000,
                deadline_secs: 60,
                sweep_interval_ms: 100,
                ..PaymentSettings::default()
            },
            gateways: [
                ("gateway_a".to_string(), gateway_settings(GatewayProtocol::Json, &self.mock_a)),
                ("gateway_b".to_string(), gateway_settings(GatewayProtocol::Xml, &self.mock_b)),
            ]
            .into_iter()
            .collect(),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings_for(&self.db_urls, &RANGES)
    }

    pub async fn spawn(self: &Arc<Self>, settings: Settings) -> TestApp {
        // RUST_LOG=shardwallet=debug shows what the apps do; quiet by default.
        shardwallet::telemetry::init("error");
        let app = Application::build(settings.clone()).await.expect("build app");
        let port = app.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let router = Arc::new(startup::router(&settings).expect("router"));
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
            auth: Auth::new(JWT_SECRET),
            router,
            settings,
            deployment: self.clone(),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn spawn_default(self: &Arc<Self>) -> TestApp {
        self.spawn(self.settings()).await
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let dbs = std::mem::take(&mut self.dbs);
        let kafka = self.kafka.clone();
        let prefix = format!("{}.", self.id);
        let dir = self.dir.clone();
        // Drop runs inside the test's runtime: clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                for (server, db) in dbs {
                    if let Ok((client, conn)) = tokio_postgres::connect(&server, NoTls).await {
                        tokio::spawn(conn);
                        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
                    }
                }
                let settings = KafkaSettings {
                    brokers: kafka,
                    topic_prefix: prefix.clone(),
                    group_id: String::new(),
                    partitions: 1,
                    session_timeout_ms: 3000,
                    fetch_wait_max_ms: 10,
                    payments_fetch_wait_max_ms: 10,
                    trim_interval_secs: 0,
                    messages: message_keys(),
                    security: KafkaSecurity::default(),
                };
                // Deleting a topic starts a rebalance in the consumers still subscribed
                // to it, and librdkafka aborts the whole process when a consumer is
                // closed in the middle of one (`rd_kafka_cgrp_terminated: assert:
                // !rd_kafka_assignment_in_progress`). The test's runtime closes them as
                // it shuts down, after this drop: so wait for that first.
                tokio::time::sleep(Duration::from_secs(5)).await;
                let topics = shardwallet::messaging::kafka::Topics::new(&prefix);
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    shardwallet::messaging::kafka::delete_topics(
                        &settings,
                        &[&topics.stages, &topics.dead_letters, &topics.payments],
                    ),
                )
                .await;
            });
            let _ = std::fs::remove_dir_all(dir);
        });
        // Not joined: the test's runtime must be able to shut down (closing the apps'
        // consumers) while this waits to delete the topics.
        drop(cleanup);
    }
}

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub auth: Auth,
    pub router: Arc<Router>,
    pub settings: Settings,
    pub deployment: Arc<Deployment>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    Deployment::new().await.spawn_default().await
}

impl TestApp {
    /// Stops the app gracefully and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("app run");
        }
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        self.auth.token(sub, role, Duration::from_secs(3600)).expect("token")
    }

    pub fn admin(&self) -> String {
        self.token("ops-admin", Role::Admin)
    }

    pub fn user_token(&self, user: &str) -> String {
        self.token(user, Role::User)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value, key: Option<&str>) -> Response {
        let mut request = self.http.post(self.url(path)).bearer_auth(token).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("POST")
    }

    pub async fn create_user(&self, user: &str) -> Response {
        self.post("/v1/users", &self.admin(), &json!({ "user_id": user }), None).await
    }

    pub async fn create_wallet(&self, user: &str, currency: &str) -> Response {
        self.post(&format!("/v1/users/{user}/wallets"), &self.admin(), &json!({ "currency": currency }), None).await
    }

    pub async fn adjust(&self, user: &str, currency: &str, amount: &str, direction: &str, key: &str) -> Response {
        let body = json!({ "user_id": user, "currency": currency, "amount": amount, "direction": direction, "reason": "test" });
        self.post("/v1/admin/adjustments", &self.admin(), &body, Some(key)).await
    }

    /// A user with a wallet in `currency` holding `amount`.
    pub async fn funded_user(&self, user: &str, currency: &str, amount: &str) {
        assert_eq!(self.create_user(user).await.status(), StatusCode::CREATED, "create {user}");
        assert_eq!(self.create_wallet(user, currency).await.status(), StatusCode::CREATED, "wallet {user}");
        if amount != "0" {
            let key = format!("fund-{user}-{currency}");
            assert_eq!(self.adjust(user, currency, amount, "credit", &key).await.status(), StatusCode::CREATED);
        }
    }

    /// A fresh user id, built from `base`, that the router places on shard `index`.
    pub fn user_on_shard(&self, base: &str, index: usize) -> String {
        (0..10_000)
            .map(|n| format!("{base}-{n}"))
            .find(|u| self.router.for_user(&UserId::parse(u).expect("user id")).index == index)
            .expect("a user id on that shard")
    }

    pub async fn transfer(
        &self,
        token: &str,
        from: &str,
        to: &str,
        currency: &str,
        amount: &str,
        key: &str,
    ) -> Response {
        let body = json!({ "from_user_id": from, "to_user_id": to, "currency": currency, "amount": amount });
        self.post("/v1/transfers", token, &body, Some(key)).await
    }

    /// `transfer` as a well-behaved client sends it: a 503 (`overloaded`, `busy`,
    /// `shard_unavailable` when a loaded machine makes requests queue) is retried with
    /// the same key after its Retry-After, for up to a minute.
    pub async fn transfer_retrying(
        &self,
        token: &str,
        from: &str,
        to: &str,
        currency: &str,
        amount: &str,
        key: &str,
    ) -> Response {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.transfer(token, from, to, currency, amount, key).await;
            if r.status() != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return r;
            }
            let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            tokio::time::sleep(Duration::from_millis(wait.map_or(200, |s| s * 1000))).await;
        }
    }

    pub async fn wallet(&self, user: &str, currency: &str) -> Value {
        let response = self.get(&format!("/v1/users/{user}/wallets/{currency}"), &self.admin()).await;
        assert_eq!(response.status(), StatusCode::OK, "wallet {user}/{currency}");
        response.json().await.expect("wallet json")
    }

    pub async fn balance(&self, user: &str, currency: &str) -> String {
        self.wallet(user, currency).await["balance"].as_str().expect("balance").to_string()
    }

    pub async fn get_transfer(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/transfers/{id}"), &self.admin()).await;
        assert_eq!(response.status(), StatusCode::OK, "transfer {id}");
        response.json().await.expect("transfer json")
    }

    /// Polls a transfer until it is completed or cancelled.
    pub async fn wait_final(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(10);
        loop {
            let transfer = self.get_transfer(id).await;
            if transfer["status"] != "pending" {
                return transfer;
            }
            assert!(Instant::now() < deadline, "transfer {id} still pending after {within:?}: {transfer}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    pub async fn verify(&self) -> verify::Report {
        verify::run(&self.router).await.expect("verify")
    }

    /// Asserts the audit is clean and returns the grand total of a currency.
    pub async fn assert_verified(&self) -> verify::Report {
        let report = self.verify().await;
        assert!(report.ok, "verify found problems:\n{report}");
        report
    }

    /// A direct connection to shard `index`'s database.
    pub async fn shard_db(&self, index: usize) -> tokio_postgres::Client {
        connect(&self.deployment.db_urls[index]).await
    }
}

/// Polls `check` until it returns `Some`, backing off, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

pub async fn body(response: Response) -> Value {
    response.json().await.expect("json body")
}

/// Asserts a problem response: status, content type and stable code.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status for expected code {code}");
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(content_type, "application/problem+json");
    let problem = body(response).await;
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["status"], status.as_u16());
    problem
}

/// A TCP proxy the test can cut and restore, standing between the app and a server.
pub struct Proxy {
    pub port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mut proxy = Self { port, target: target.to_string(), task: None };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Refuses new connections and cuts the open ones.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind proxy");
        self.serve(listener);
    }
}

/// host:port of a postgres URL.
pub fn host_port(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("url");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432))
}

/// The value of an unlabelled counter in the app's `/metrics` (0 when absent).
pub async fn counter(app: &TestApp, name: &str) -> f64 {
    let text = app.http.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}
