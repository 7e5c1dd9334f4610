//! `shardwallet bench`: load-tests a running service through its public API.
//!
//! 1. same-shard transfers, closed loop (`--clients`, `--duration`): TPS and latency;
//! 2. pgbench tpcb-like with the same clients and duration, and the ratio;
//! 3. cross-shard transfers, open loop: a sweep of offered rates finds the capacity (the
//!    highest rate whose p99 completion stays under 1 s with nothing cancelled), then a
//!    run at half of it and an overload run at twice it. Completion times are the
//!    transfers' own `created_at` → `completed_at`, read from the shards.
//!
//! Every phase also reports the CPU time of the service, Postgres and the broker per
//! 1,000 transfers.
//!
//! - `setup`: bench users with funded wallets, split into same-shard and cross-shard pairs.
//! - `load`: the HTTP target and the closed-loop same-shard phase.
//! - `openloop`: the fixed-rate scheduler; `completion`: transfer outcomes from the shards.
//! - `sweep`: which rates to try and what passes (pure); `cross`: runs the steps.
//! - `cpu`: `/proc` readings; `pgbench`: the baseline; `report`: summary and JSON.
mod batch;
mod completion;
mod cpu;
mod cross;
mod load;
mod openloop;
mod pgbench;
mod report;
mod reshard;
mod setup;
mod sweep;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;

use crate::{api::auth::Auth, config::Settings, domain::Currency, startup};
use load::Target;
use report::{Local, Pgbench, Results};

/// Where `scripts/cluster.sh` records the broker's pid, relative to the repository
/// (`scripts/bench.sh` runs the bench from there).
const BROKER_PID_FILE: &str = ".local/nisshi.pid";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Local,
    Cross,
    Both,
    /// Same- and cross-shard load before and while buckets move (`bench::reshard`).
    Reshard,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the running service. This flag, --service-pid and --json may be
    /// repeated, the last one wins (scripts/bench.sh passes them before BENCH_ARGS).
    #[arg(long, default_value = "http://127.0.0.1:8080", overrides_with = "url")]
    pub url: String,
    /// Same-shard and pgbench clients; each waits for its answer before the next request.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of the same-shard phase and of pgbench.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Mode,
    /// Bench users to create, spread evenly over the shards.
    #[arg(long, default_value_t = 300)]
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
    /// Cross-shard offered rates to try (per second, comma-separated) instead of the
    /// search from a quarter of the same-shard TPS; stops at the first failing one.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Seconds of each cross-shard sweep step and of the half-capacity run.
    #[arg(long, default_value_t = 10.0)]
    pub step_secs: f64,
    /// Seconds of the overload run at twice the capacity.
    #[arg(long, default_value_t = 30.0)]
    pub overload_secs: f64,
    /// Most cross-shard requests waiting for an answer; more are not sent but counted.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Most sweep steps of the search (without --rates).
    #[arg(long, default_value_t = 8)]
    pub max_steps: usize,
    /// Seconds to wait after a step for its transfers to become final (default:
    /// transfers.try_timeout_secs + 2 × transfers.sweep_interval_secs + 10).
    #[arg(long)]
    pub drain_secs: Option<f64>,
    /// Pid of the service, for its CPU time (scripts/bench.sh passes it).
    #[arg(long, overrides_with = "service_pid")]
    pub service_pid: Option<u32>,
    /// Pid of the broker, for its CPU time (default: the pid in .local/nisshi.pid).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// `--mode reshard`: the extra shard buckets move onto (added when missing) ...
    #[arg(long, default_value = "shard-bench")]
    pub reshard_shard: String,
    /// ... and where its database is (created when missing).
    #[arg(long, default_value = "postgres://shardwallet@127.0.0.1:5441/shardwallet_bench")]
    pub reshard_url: String,
    /// `--mode reshard`: cross-shard transfers per second beside the same-shard clients.
    #[arg(long, default_value_t = 50.0)]
    pub reshard_cross_rate: f64,
    /// `--mode reshard`: buckets per fence at most.
    #[arg(long, default_value_t = crate::resharding::mover::BATCH)]
    pub reshard_batch: usize,
    /// `--mode reshard`: the mover's fence budget in milliseconds (as `reshard move
    /// --fence-budget-ms`; 0: always --reshard-batch buckets per fence).
    #[arg(long, default_value_t = crate::resharding::mover::FENCE_BUDGET.as_millis() as u64)]
    pub reshard_fence_budget_ms: u64,
    /// `--mode reshard`: the mover's rest between batches, in multiples of the batch's
    /// time (as `reshard move --nice-ratio`).
    #[arg(long, default_value_t = crate::resharding::mover::NICE_RATIO)]
    pub reshard_nice_ratio: f64,
    /// `--mode reshard`: move only the first N buckets of the rebalance plan (0: all of
    /// it), so that a pass stays short on a long history.
    #[arg(long, default_value_t = 0)]
    pub reshard_buckets: usize,
    /// Transfers per request of the batch phase (same-shard, after pgbench; 0 skips it).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, overrides_with = "json")]
    pub json: Option<PathBuf>,
}

pub async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let router = startup::current_router(settings).await?;
    let auth = Auth::from_settings(&settings.auth);
    let http = reqwest::Client::builder().timeout(load::REQUEST_TIMEOUT).build()?;
    let fixture = setup::prepare(&http, &router, &auth, &args).await?;
    println!("{}", fixture.describe());
    let probe = cpu::Probe {
        service: args.service_pid,
        broker_given: args.broker_pid,
        broker_file: PathBuf::from(BROKER_PID_FILE),
        ticks_per_sec: cpu::clock_ticks(),
    };
    for (name, pid) in [("--service-pid", args.service_pid), ("--broker-pid", args.broker_pid)] {
        if let Some(pid) = pid.filter(|&p| !cpu::alive(p)) {
            eprintln!("warning: {name} {pid}: no such process; its CPU time will be n/a");
        }
    }
    let drain = Duration::from_secs_f64(
        args.drain_secs
            .unwrap_or((settings.transfers.try_timeout_secs + 2 * settings.transfers.sweep_interval_secs + 10) as f64),
    );
    let settings_line = describe(&args, &probe, drain, fixture.per_shard());
    let target = Arc::new(Target::new(&args, fixture.users));
    if args.mode == Mode::Reshard {
        let (local, cross) = (Arc::new(fixture.local_pairs), Arc::new(fixture.cross_pairs));
        return reshard::run(&router, &target, local, cross, &args, drain).await;
    }
    let mut results = Results {
        settings: settings_line,
        clients: args.clients,
        duration: args.duration,
        local: None,
        pgbench: Pgbench::Skipped("--mode cross"),
        batch: None,
        cross: None,
    };
    if args.mode != Mode::Cross {
        results.local = Some(local_phase(&target, &fixture.local_pairs, &probe, &args).await);
        results.pgbench = pgbench_phase(&args, &probe).await;
        if args.batch_size > 0 {
            results.batch = Some(batch_phase(&target, &fixture.local_pairs, &probe, &args).await);
        }
    }
    if args.mode != Mode::Local {
        let local_tps = results.local.as_ref().and_then(|l| l.as_ref().ok()).map(|l| l.stats.tps());
        let plan = if args.rates.is_empty() {
            sweep::Plan::Search { start: sweep::start_rate(local_tps), max_steps: args.max_steps }
        } else {
            let mut rates = args.rates.clone();
            rates.sort_by(f64::total_cmp);
            sweep::Plan::Rates(rates)
        };
        let ctx = cross::Ctx {
            target: target.clone(),
            pairs: Arc::new(fixture.cross_pairs),
            router: &router,
            probe: &probe,
            step: Duration::from_secs_f64(args.step_secs),
            overload: Duration::from_secs_f64(args.overload_secs),
            max_in_flight: args.max_in_flight,
            drain,
        };
        results.cross = Some(cross_phase(&http, &ctx, &plan).await);
    }
    println!("\n{}", report::summary(&results));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::json(&results))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    // The figures are out; a phase that could not be measured still fails the run.
    let failed: Vec<&str> = [
        ("same-shard", results.local.as_ref().is_some_and(|r| r.is_err())),
        ("pgbench", matches!(results.pgbench, Pgbench::Failed(_))),
        ("batch", results.batch.as_ref().is_some_and(|r| r.is_err())),
        ("cross-shard", results.cross.as_ref().is_some_and(|r| r.is_err())),
    ]
    .into_iter()
    .filter_map(|(name, failed)| failed.then_some(name))
    .collect();
    anyhow::ensure!(failed.is_empty(), "the {} phase(s) failed (see the summary above)", failed.join(", "));
    Ok(())
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    Currency::parse(&args.currency).map_err(|e| anyhow::anyhow!("--currency: {e}"))?;
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 second");
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    anyhow::ensure!(args.rates.iter().all(|r| r.is_finite() && *r > 0.0), "--rates must be positive");
    for (name, secs) in [("--step-secs", args.step_secs), ("--overload-secs", args.overload_secs)] {
        anyhow::ensure!(secs.is_finite() && secs >= 1.0, "{name} must be at least 1 second");
    }
    anyhow::ensure!(args.drain_secs.is_none_or(|d| d.is_finite() && d >= 0.0), "--drain-secs must be ≥ 0");
    anyhow::ensure!(args.max_in_flight >= 1, "--max-in-flight must be at least 1");
    anyhow::ensure!(args.max_steps >= 1, "--max-steps must be at least 1");
    Ok(())
}

fn describe(args: &BenchArgs, probe: &cpu::Probe, drain: Duration, per_shard: &[usize]) -> String {
    let mut parts = Vec::new();
    if args.mode != Mode::Cross {
        parts.push(format!("{} clients, same-shard and pgbench {} s each", args.clients, args.duration));
    }
    if args.mode != Mode::Local {
        parts.push(format!(
            "cross-shard open loop: steps of {} s, overload {} s, at most {} requests in flight, up to {} s for a \
             step's transfers to become final",
            args.step_secs,
            args.overload_secs,
            args.max_in_flight,
            report::secs(drain)
        ));
    }
    let broker = match (probe.broker_given, probe.broker()) {
        (None, Some(pid)) => format!("{pid} (from {BROKER_PID_FILE})"),
        (None, None) => format!("not given, none in {BROKER_PID_FILE}"),
        (Some(pid), _) => pid.to_string(),
    };
    let service = probe.service.map_or("not given".to_string(), |p| p.to_string());
    parts.push(format!("{} users (per shard {per_shard:?})", args.users));
    parts.push(format!("service pid {service}, broker pid {broker}, CLK_TCK {}", probe.ticks_per_sec));
    parts.join("; ")
}

async fn local_phase(
    target: &Arc<Target>,
    pairs: &[(usize, usize)],
    probe: &cpu::Probe,
    args: &BenchArgs,
) -> anyhow::Result<Local> {
    anyhow::ensure!(!pairs.is_empty(), "no same-shard pairs among the bench users");
    println!("\n-- same-shard transfers, closed loop: {} clients, {} s", args.clients, args.duration);
    let meter = probe.start();
    let stats =
        load::run_local(target, Arc::new(pairs.to_vec()), args.clients, Duration::from_secs(args.duration)).await?;
    let cpu = meter.finish();
    println!("{}", report::local_details(&stats));
    Ok(Local { stats, cpu })
}

async fn batch_phase(
    target: &Arc<Target>,
    pairs: &[(usize, usize)],
    probe: &cpu::Probe,
    args: &BenchArgs,
) -> anyhow::Result<report::Batch> {
    println!(
        "\n-- same-shard batches, closed loop: {} clients, {} transfers per batch, {} s",
        args.clients, args.batch_size, args.duration
    );
    let meter = probe.start();
    let stats = batch::run(target, pairs, args.clients, Duration::from_secs(args.duration), args.batch_size).await?;
    let cpu = meter.finish();
    println!("{}", report::batch_details(&stats));
    Ok(report::Batch { stats, cpu })
}

async fn pgbench_phase(args: &BenchArgs, probe: &cpu::Probe) -> Pgbench {
    if args.no_pgbench {
        return Pgbench::Skipped("--no-pgbench");
    }
    println!("\n-- pgbench tpcb-like: scale {}, {} clients, {} s", args.pgbench_scale, args.clients, args.duration);
    let binary = match pgbench::prepare(&args.pgbench_url, args.pgbench_scale).await {
        Ok(binary) => binary,
        Err(e) => return Pgbench::Failed(format!("{e:#}")),
    };
    let meter = probe.start();
    let outcome = pgbench::run(&binary, &args.pgbench_url, args.clients, args.duration).await;
    let cpu = meter.finish();
    match outcome {
        Ok(outcome) => {
            println!("{outcome}");
            Pgbench::Ran { scale: args.pgbench_scale, outcome, cpu }
        }
        Err(e) => Pgbench::Failed(format!("{e:#}")),
    }
}

/// Cross-shard transfers only complete when the broker is up: without it every step
/// would wait out its drain, so the phase is skipped with the reason instead.
async fn cross_phase(
    http: &reqwest::Client,
    ctx: &cross::Ctx<'_>,
    plan: &sweep::Plan,
) -> anyhow::Result<cross::CrossResult> {
    anyhow::ensure!(!ctx.pairs.is_empty(), "no cross-shard pairs among the bench users");
    let ready = http.get(format!("{}/ready", ctx.target.base)).send().await?;
    if !ready.status().is_success() {
        let body = ready.text().await.unwrap_or_default();
        anyhow::bail!("not run: GET /ready says the service is not ready ({body})");
    }
    cross::run(ctx, plan).await
}
