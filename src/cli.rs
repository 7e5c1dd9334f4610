//! The `shardwallet` subcommands.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    api::auth::Auth,
    config::Settings,
    domain::Role,
    ledger::verify,
    messaging::{dlq, kafka},
    sharding::ShardMap,
    startup::{self, Application},
    storage::{identity, migrate},
};

#[derive(Parser)]
#[command(name = "shardwallet", version, about = "A sharded wallet and ledger service")]
pub struct Cli {
    /// Configuration file; every key can be overridden with SHARDWALLET__SECTION__KEY.
    #[arg(long, global = true, env = "SHARDWALLET_CONFIG", default_value = "shardwallet.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and run the transfer workers until SIGINT/SIGTERM.
    Serve,
    /// Create missing databases, apply migrations and record the shard map on every shard.
    Migrate {
        /// Record the current shard map even where a shard recorded another one (after
        /// you moved the affected users' data).
        #[arg(long)]
        accept_new_shard_map: bool,
    },
    /// Print a signed bearer token.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Audit every shard; exits non-zero on any discrepancy.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Load the predefined users of testdata/testdata.sql (skips what exists).
    Testdata {
        #[arg(long, default_value = "testdata/testdata.sql")]
        file: PathBuf,
    },
    /// Load-test a running service and compare with pgbench.
    Bench(crate::bench::BenchArgs),
    /// Run a mock payment gateway (JSON: gateway A's protocol, XML: gateway B's).
    MockGateway {
        #[arg(long, value_enum)]
        protocol: crate::gateways::mock::Protocol,
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: String,
        /// Callback signing secret (the gateway's `signing_secret` in shardwallet.toml).
        #[arg(long, env = "MOCK_GATEWAY_SECRET", default_value = "mock-gateway-secret", hide_env_values = true)]
        secret: String,
        /// Where to send callbacks when a request names no callback URL.
        #[arg(long)]
        callback_url: Option<String>,
        #[arg(long, default_value_t = 1000)]
        callback_delay_ms: u64,
        /// How long amounts ending in 08 take to answer a payment request.
        #[arg(long, default_value_t = 10_000)]
        slow_reply_ms: u64,
        /// How long amounts ending in 09 answer 5xx after executing the payment.
        #[arg(long, default_value_t = 60_000)]
        flaky_for_ms: u64,
    },
    /// Dead-lettered stage messages.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// How many messages were dead-lettered and how many are not replayed yet.
    Count,
    /// Publish every pending dead letter back to the stage topic.
    Replay,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    User,
    Admin,
}

impl Cli {
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Serve | Command::MockGateway { .. })
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let settings = || Settings::load(&self.config);
        match self.command {
            Command::Serve => {
                let app = Application::build(settings()?).await?;
                app.run_until_stopped(shutdown_signal()).await?;
            }
            Command::Migrate { accept_new_shard_map } => migrate_all(&settings()?, accept_new_shard_map).await?,
            Command::Token { sub, role, ttl } => {
                let role = match role {
                    RoleArg::User => Role::User,
                    RoleArg::Admin => Role::Admin,
                };
                println!("{}", Auth::from_settings(&settings()?.auth).token(&sub, role, parse_ttl(&ttl)?)?);
            }
            Command::Verify { json } => {
                let router = startup::router(&settings()?)?;
                let report = verify::run(&router).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{report}");
                }
                if !report.ok {
                    return Ok(ExitCode::FAILURE);
                }
            }
            Command::Testdata { file } => {
                let router = startup::router(&settings()?)?;
                let loaded = crate::testdata::load(&router, &file).await?;
                println!(
                    "testdata: {} wallet(s) created and funded, {} already present",
                    loaded.created, loaded.skipped
                );
            }
            Command::Bench(args) => crate::bench::run(&settings()?, args).await?,
            Command::MockGateway {
                protocol,
                listen,
                secret,
                callback_url,
                callback_delay_ms,
                slow_reply_ms,
                flaky_for_ms,
            } => {
                let listener =
                    tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
                tracing::info!(?protocol, %listen, "mock gateway serving");
                let config = crate::gateways::mock::MockConfig {
                    protocol,
                    secret: secret.into_bytes(),
                    callback_url,
                    callback_delay: Duration::from_millis(callback_delay_ms),
                    slow_reply: Duration::from_millis(slow_reply_ms),
                    flaky_for: Duration::from_millis(flaky_for_ms),
                };
                crate::gateways::mock::serve(listener, config, shutdown_signal()).await?;
            }
            Command::Dlq { command } => {
                let settings = settings()?;
                let topics = kafka::Topics::new(&settings.kafka.topic_prefix);
                match command {
                    DlqCommand::Count => {
                        let kafka = settings.kafka.clone();
                        let counts = tokio::task::spawn_blocking(move || dlq::counts(&kafka, &topics)).await??;
                        println!("{}", serde_json::to_string_pretty(&counts)?);
                    }
                    DlqCommand::Replay => {
                        let producer = kafka::producer(&settings.kafka)?;
                        let n = dlq::replay(&settings.kafka, &topics, &producer).await?;
                        println!("replayed {n} dead-lettered message(s)");
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Applies migrations and records the shard map on every shard.
pub async fn migrate_all(settings: &Settings, accept_new_shard_map: bool) -> anyhow::Result<()> {
    let map = ShardMap::load(std::path::Path::new(&settings.shards.map_path))?;
    for spec in map.shards() {
        ensure_database(&spec.config).await.with_context(|| format!("shard '{}'", spec.name))?;
        let applied =
            migrate::run(&spec.name, &spec.config).await.with_context(|| format!("migrating shard '{}'", spec.name))?;
        let (client, conn) = spec.config.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let expected = identity::Identity::expected(&map, spec);
        match identity::read(&client).await? {
            Some(recorded) if recorded == expected => {}
            Some(recorded) if !accept_new_shard_map => {
                anyhow::bail!(identity::mismatch(&recorded, &expected).unwrap_or_default())
            }
            _ => identity::write(&client, &expected).await?,
        }
        drop(client);
        let _ = conn.await;
        println!("shard {}: {applied} migration(s) applied, buckets {} recorded", spec.name, spec.ranges_text());
    }
    Ok(())
}

/// Creates the shard's database when its server is up but the database is not there.
async fn ensure_database(config: &tokio_postgres::Config) -> anyhow::Result<()> {
    let Some(name) = config.get_dbname() else { return Ok(()) };
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code().map(|c| c.code()) != Some("3D000") => return Err(e.into()),
        Err(_) => {}
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&format!("CREATE DATABASE {quoted}")).await {
        Ok(()) => println!("created database {name}"),
        Err(e) if e.code().map(|c| c.code()) == Some("42P04") => {}
        Err(e) => return Err(e.into()),
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().with_context(|| format!("bad ttl '{text}': expected e.g. 30m, 1h, 7d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("bad ttl unit in '{text}': use s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
