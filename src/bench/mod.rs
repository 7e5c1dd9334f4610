//! `shardwallet bench`: load-tests a running service through its public API and
//! compares same-shard transfer throughput with pgbench's tpcb-like run.
//!
//! - `setup`: bench users with funded wallets, split into same-shard and cross-shard pairs.
//! - `load`: closed-loop clients (one request in flight each) and their statistics.
//! - `report`: the printed figures.
//! - `pgbench`: creates the pgbench database, initialises it and runs pgbench.
mod load;
mod pgbench;
mod report;
mod setup;

use std::{sync::Arc, time::Duration};

use crate::{api::auth::Auth, config::Settings, domain::Currency, startup};
use load::{Kind, Stats, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Local,
    Cross,
    Both,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent clients; each waits for its answer before sending the next request.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Mode,
    /// Bench users to create, spread evenly over the shards.
    #[arg(long, default_value_t = 64)]
    pub users: usize,
    #[arg(long, default_value = "postgres://shardwallet@127.0.0.1:5441/pgbench")]
    pub pgbench_url: String,
    #[arg(long, default_value_t = 10)]
    pub pgbench_scale: u32,
    /// Skip the pgbench comparison.
    #[arg(long)]
    pub no_pgbench: bool,
    #[arg(long, default_value = "BNC")]
    pub currency: String,
}

pub async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let router = startup::router(settings)?;
    let auth = Auth::new(&settings.auth.jwt_secret);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let fixture = setup::prepare(&http, &router, &auth, &args).await?;
    println!("{}", fixture.describe());
    let target = Arc::new(Target::new(&args, fixture.users));
    let mut summary = vec![format!("== shardwallet bench: {} clients, {} s per phase ==", args.clients, args.duration)];
    let mut local_tps = None;
    if args.mode != Mode::Cross {
        let stats = phase(&target, Kind::Local, fixture.local_pairs, &args).await;
        local_tps = stats.as_ref().ok().filter(|s| s.ok > 0).map(Stats::tps);
        summary.push(outcome_line("local (same-shard) transfers", stats.map(|s| s.local_line())));
    }
    if args.mode != Mode::Local {
        let stats = cross_phase(&http, &target, fixture.cross_pairs, &args).await;
        summary.push(outcome_line("cross-shard transfers", stats.map(|s| s.cross_line())));
    }
    pgbench_lines(&args, local_tps, &mut summary).await;
    println!("\n{}", summary.join("\n"));
    Ok(())
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    Currency::parse(&args.currency).map_err(|e| anyhow::anyhow!("--currency: {e}"))?;
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 second");
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    Ok(())
}

async fn phase(
    target: &Arc<Target>,
    kind: Kind,
    pairs: Vec<(usize, usize)>,
    args: &BenchArgs,
) -> anyhow::Result<Stats> {
    anyhow::ensure!(!pairs.is_empty(), "no {} pairs among the bench users", kind.name());
    println!("\n-- {}: {} clients, {} s", kind.name(), args.clients, args.duration);
    let duration = Duration::from_secs(args.duration);
    let stats = load::run_phase(target, kind, Arc::new(pairs), args.clients, duration).await?;
    println!("{}", stats.details(kind));
    Ok(stats)
}

/// Cross-shard transfers only complete when the broker is up: without it every client
/// would wait out the 30 s deadline, so the phase is skipped with the reason instead.
async fn cross_phase(
    http: &reqwest::Client,
    target: &Arc<Target>,
    pairs: Vec<(usize, usize)>,
    args: &BenchArgs,
) -> anyhow::Result<Stats> {
    let ready = http.get(format!("{}/ready", target.base)).send().await?;
    if !ready.status().is_success() {
        let body = ready.text().await.unwrap_or_default();
        anyhow::bail!("not run: GET /ready says the service is not ready ({body})");
    }
    phase(target, Kind::Cross, pairs, args).await
}

async fn pgbench_lines(args: &BenchArgs, local_tps: Option<f64>, summary: &mut Vec<String>) {
    if args.no_pgbench {
        summary.push("pgbench: skipped (--no-pgbench)".into());
        return;
    }
    println!("\n-- pgbench tpcb-like: scale {}, {} clients, {} s", args.pgbench_scale, args.clients, args.duration);
    let run = pgbench::run(&args.pgbench_url, args.pgbench_scale, args.clients, args.duration).await;
    let label =
        format!("pgbench tpcb-like (scale {}, {} clients, {} s)", args.pgbench_scale, args.clients, args.duration);
    let pg_tps = run.as_ref().ok().map(|r| r.tps);
    summary.push(outcome_line(&label, run.map(|r| r.to_string())));
    let ratio = match (local_tps, pg_tps) {
        (Some(local), Some(pg)) if pg > 0.0 => format!("{:.2}", local / pg),
        _ => "n/a (needs both a local and a pgbench figure)".into(),
    };
    summary.push(format!("ratio local ÷ pgbench: {ratio}"));
}

fn outcome_line(label: &str, outcome: anyhow::Result<String>) -> String {
    match outcome {
        Ok(line) => format!("{label}: {line}"),
        Err(e) => format!("{label}: failed: {e:#}"),
    }
}
