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
    sharding::{ownership, ShardMap},
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
    Bench(Box<crate::bench::BenchArgs>),
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
    /// The cluster's shards: add one, list them, print the current map.
    Shards {
        #[command(subcommand)]
        command: ShardsCommand,
    },
    /// Move buckets between shards while the service serves (resumable: run it again
    /// after a crash and it continues).
    Reshard {
        #[command(subcommand)]
        command: ReshardCommand,
    },
}

/// How a mover paces its batches (`reshard move`, `reshard rebalance`).
#[derive(clap::Args)]
struct PaceArgs {
    /// Buckets fenced and switched together at most (one short stop of their writes).
    #[arg(long, default_value_t = crate::resharding::mover::BATCH)]
    batch: usize,
    /// Keep each fence within this many milliseconds: the batch halves after a longer
    /// fence and grows after short ones, up to --batch, and buckets with long histories
    /// are fenced in smaller groups (0: always --batch buckets in one fence).
    #[arg(long, default_value_t = crate::resharding::mover::FENCE_BUDGET.as_millis() as u64)]
    fence_budget_ms: u64,
    /// Rest this many times as long as each batch took before the next one, so that
    /// the move leaves the shards to the requests they serve (0: as fast as it can).
    #[arg(long, default_value_t = crate::resharding::mover::NICE_RATIO)]
    nice_ratio: f64,
}

impl PaceArgs {
    fn pace(&self) -> crate::resharding::mover::Pace {
        crate::resharding::mover::Pace::within(self.batch, Duration::from_millis(self.fence_budget_ms))
            .resting(self.nice_ratio)
    }
}

#[derive(Subcommand)]
enum ReshardCommand {
    /// Move buckets (e.g. `0-1023,4096`) to a shard, from whichever shards own them now.
    Move {
        #[arg(long)]
        buckets: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Move buckets so that every shard owns an equal share (±1); prints the plan first.
    Rebalance {
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Delete from the old shards what moves left behind (moves switched at least
    /// --grace-secs ago; the copy was compared with the target before the switch).
    Cleanup {
        #[arg(long, default_value_t = crate::resharding::cleanup::GRACE.as_secs())]
        grace_secs: u64,
        /// Rest this many times as long as each transaction (up to 16 buckets) took
        /// before the next (0: as fast as it can).
        #[arg(long, default_value_t = crate::resharding::mover::NICE_RATIO)]
        nice_ratio: f64,
    },
}

#[derive(Subcommand)]
enum ShardsCommand {
    /// Create (if missing), migrate and record a new shard that owns no bucket yet.
    Add {
        #[arg(long)]
        name: String,
        /// postgres://user@host:port/db (a password is better given in
        /// SHARDWALLET_SHARD_<NAME>_PASSWORD: it is never recorded).
        #[arg(long)]
        url: String,
    },
    /// Every shard with its buckets, users and wallets, the map epoch, and moves in progress.
    List {
        #[arg(long)]
        json: bool,
    },
    /// The current map in shard-map.toml's format.
    Map,
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
                let router = startup::current_router(&settings()?).await?;
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
                let router = startup::current_router(&settings()?).await?;
                let loaded = crate::testdata::load(&router, &file).await?;
                println!(
                    "testdata: {} wallet(s) created and funded, {} already present",
                    loaded.created, loaded.skipped
                );
            }
            Command::Bench(args) => crate::bench::run(&settings()?, *args).await?,
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
            Command::Shards { command } => {
                let router = startup::current_router(&settings()?).await?;
                match command {
                    ShardsCommand::Add { name, url } => {
                        let epoch = crate::resharding::members::add(&router, &name, &url).await?;
                        println!(
                            "shard {name} is a member at map epoch {epoch}; it owns no bucket yet \
                             (move some with `shardwallet reshard move` or `reshard rebalance`)"
                        );
                    }
                    ShardsCommand::List { json } => {
                        let cluster = crate::resharding::members::list(&router).await?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&cluster)?);
                        } else {
                            print!("{cluster}");
                        }
                    }
                    ShardsCommand::Map => print!("{}", router.layout().map.to_toml()),
                }
            }
            Command::Reshard { command } => {
                use crate::resharding::mover;
                let router = startup::current_router(&settings()?).await?;
                match command {
                    ReshardCommand::Move { buckets, to, pace } => {
                        let buckets = mover::parse_buckets(&buckets)?;
                        println!("moving {} bucket(s) to {to}", buckets.len());
                        let report = mover::move_paced(&router, &buckets, &to, pace.pace()).await?;
                        println!("{report}");
                    }
                    ReshardCommand::Cleanup { grace_secs, nice_ratio } => {
                        let grace = Duration::from_secs(grace_secs);
                        println!("{}", crate::resharding::cleanup::run_paced(&router, grace, nice_ratio).await?);
                    }
                    ReshardCommand::Rebalance { dry_run, pace } => {
                        let pace = pace.pace();
                        let layout = router.layout();
                        let names: Vec<String> = layout.map.shards().iter().map(|s| s.name.clone()).collect();
                        let plan = mover::rebalance_plan(layout.map.owners(), names.len());
                        if plan.is_empty() {
                            println!("balanced: every shard owns its share of {} buckets", layout.map.buckets());
                            return Ok(ExitCode::SUCCESS);
                        }
                        let mut groups: Vec<(usize, usize, Vec<u32>)> = Vec::new();
                        for (bucket, from, to) in plan {
                            match groups.last_mut() {
                                Some((f, t, list)) if *f == from && *t == to => list.push(bucket),
                                _ => groups.push((from, to, vec![bucket])),
                            }
                        }
                        println!("plan:");
                        for (from, to, list) in &groups {
                            let ranges = crate::sharding::runs(list.iter().copied());
                            let text: Vec<String> =
                                ranges.iter().map(|r| format!("{}-{}", r.start(), r.end())).collect();
                            println!(
                                "  {} bucket(s) {} -> {}: {}",
                                list.len(),
                                names[*from],
                                names[*to],
                                text.join(",")
                            );
                        }
                        if dry_run {
                            return Ok(ExitCode::SUCCESS);
                        }
                        for (_, to, list) in &groups {
                            let report = mover::move_paced(&router, list, &names[*to], pace).await?;
                            println!("{report}");
                        }
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Applies migrations and records the shard map on every shard: the file's shards
/// first, then any the shards recorded since (`shards add`).
pub async fn migrate_all(settings: &Settings, accept_new_shard_map: bool) -> anyhow::Result<()> {
    let file = ShardMap::load(std::path::Path::new(&settings.shards.map_path))?;
    for spec in file.shards() {
        migrate_one(spec).await?;
    }
    let router = startup::current_router(settings).await?;
    let layout = router.layout();
    let recorded_moves = layout.map.epoch() > crate::sharding::FILE_EPOCH;
    if recorded_moves && accept_new_shard_map {
        anyhow::bail!(
            "the shards recorded a newer map (epoch {}) than shard-map.toml: buckets are moved with \
             `shardwallet reshard`, not by re-recording the file",
            layout.map.epoch()
        );
    }
    let members: Vec<(String, String)> =
        file.shards().iter().map(|s| (s.name.clone(), crate::sharding::url_without_password(&s.config))).collect();
    for spec in layout.map.shards() {
        if !file.shards().iter().any(|f| f.name == spec.name) {
            migrate_one(spec).await?;
        }
        let (client, conn) = spec.config.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        if !recorded_moves {
            let expected = identity::Identity::expected(&file, spec);
            match identity::read(&client).await? {
                Some(recorded) if recorded == expected => {}
                Some(recorded) if !accept_new_shard_map => {
                    anyhow::bail!(identity::mismatch(&recorded, &expected).unwrap_or_default())
                }
                Some(_) => {
                    identity::write(&client, &expected).await?;
                    client.batch_execute("DELETE FROM bucket_owners; DELETE FROM cluster_shards").await?;
                }
                None => identity::write(&client, &expected).await?,
            }
            ownership::record_initial(&client, &spec.name, &spec.ranges, &members).await?;
        }
        let filled = backfill_buckets(&client, layout.map.buckets()).await?;
        drop(client);
        let _ = conn.await;
        let filled = if filled > 0 { format!(", {filled} user bucket(s) filled") } else { String::new() };
        println!(
            "shard {}: buckets {} recorded (map epoch {}){filled}",
            spec.name,
            spec.ranges_text(),
            layout.map.epoch()
        );
    }
    Ok(())
}

async fn migrate_one(spec: &crate::sharding::ShardSpec) -> anyhow::Result<()> {
    migrate::ensure_database(&spec.config).await.with_context(|| format!("shard '{}'", spec.name))?;
    let applied =
        migrate::run(&spec.name, &spec.config).await.with_context(|| format!("migrating shard '{}'", spec.name))?;
    println!("shard {}: {applied} migration(s) applied", spec.name);
    Ok(())
}

/// Writes the bucket of users created before `users.bucket` existed (V7).
async fn backfill_buckets(client: &tokio_postgres::Client, buckets: u32) -> anyhow::Result<u64> {
    let mut filled = 0;
    loop {
        let rows = client.query("SELECT user_id FROM users WHERE bucket IS NULL LIMIT 10000", &[]).await?;
        if rows.is_empty() {
            return Ok(filled);
        }
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let of: Vec<i32> = ids.iter().map(|id| crate::sharding::bucket_of(id, buckets) as i32).collect();
        filled += client
            .execute(
                "UPDATE users u SET bucket = v.bucket FROM unnest($1::text[], $2::int[]) AS v(user_id, bucket)
                 WHERE u.user_id = v.user_id",
                &[&ids, &of],
            )
            .await?;
    }
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
