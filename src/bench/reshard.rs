//! `bench --mode reshard`: steady same-shard (closed loop) and cross-shard (open loop)
//! load, first alone, then while buckets move: a rebalance onto an extra shard, its
//! cleanup, and the move back (so the cluster ends as it began), repeated until the
//! load window is over. Prints the fences, the copy rate, throughput and request p99
//! during the moves against before them, the 503s, and what was cancelled.
use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{completion, load, openloop, BenchArgs};
use crate::{
    resharding::{cleanup, members, mover},
    sharding::Router,
};

/// One load window: same-shard and cross-shard figures.
struct Window {
    local: load::LocalStats,
    cross: openloop::OpenRun,
}

/// The moves made during the window.
#[derive(Default)]
struct Moves {
    buckets: usize,
    rows: u64,
    fences: Vec<Duration>,
    full_copies: usize,
    moving: Duration,
    passes: usize,
}

pub async fn run(
    router: &Router,
    target: &Arc<load::Target>,
    local_pairs: Arc<Vec<(usize, usize)>>,
    cross_pairs: Arc<Vec<(usize, usize)>>,
    args: &BenchArgs,
    drain: Duration,
) -> anyhow::Result<()> {
    members::add(router, &args.reshard_shard, &args.reshard_url).await?;
    // What an earlier, interrupted run left behind would refuse the moves back.
    cleanup::run(router, Duration::ZERO).await?;
    let window = Duration::from_secs(args.duration);
    println!(
        "reshard: {} s of load ({} same-shard clients, {}/s cross-shard) before, then the same while buckets move onto {} and back (batches of up to {}, fence budget {} ms, nice ratio {})",
        args.duration,
        args.clients,
        args.reshard_cross_rate,
        args.reshard_shard,
        args.reshard_batch,
        args.reshard_fence_budget_ms,
        args.reshard_nice_ratio
    );
    let before = load_window(target, &local_pairs, &cross_pairs, args, window).await?;
    let original: Vec<u16> = router.layout().map.owners().to_vec();
    let names: Vec<String> = router.layout().map.shards().iter().map(|s| s.name.clone()).collect();
    let ends = Instant::now() + window;
    let mover = async {
        let mut moves = Moves::default();
        let started = Instant::now();
        // Whole passes (onto the extra shard, back again) until the window is over (the
        // load goes on until they end).
        while moves.passes == 0 || Instant::now() < ends {
            pass(router, &original, &names, args, &mut moves).await?;
            moves.passes += 1;
        }
        moves.moving = started.elapsed();
        anyhow::Ok(moves)
    };
    // The load goes on, in windows of up to 5 s, for as long as the moves take.
    let moving = std::sync::atomic::AtomicBool::new(true);
    let mover = async {
        let moves = mover.await;
        moving.store(false, std::sync::atomic::Ordering::Relaxed);
        moves
    };
    let load = async {
        let mut during =
            load_window(target, &local_pairs, &cross_pairs, args, window.min(Duration::from_secs(5))).await?;
        while moving.load(std::sync::atomic::Ordering::Relaxed) {
            let next =
                load_window(target, &local_pairs, &cross_pairs, args, window.min(Duration::from_secs(5))).await?;
            during.local.append(next.local)?;
            during.cross.append(next.cross)?;
        }
        anyhow::Ok(during)
    };
    let (during, moves) = tokio::join!(load, mover);
    let (during, moves) = (during?, moves?);
    let mut ids = before.cross.accepted.clone();
    ids.extend(&during.cross.accepted);
    let settled = completion::settle(router, &ids, drain).await?;
    let audit = crate::ledger::verify::run(router).await?;
    print_summary(&before, &during, &moves, &settled, audit.ok);
    anyhow::ensure!(audit.ok, "verify found problems after the reshard bench:\n{audit}");
    Ok(())
}

/// Onto the extra shard by the rebalance plan, clean up, back to the original owners,
/// clean up.
async fn pass(
    router: &Router,
    original: &[u16],
    names: &[String],
    args: &BenchArgs,
    moves: &mut Moves,
) -> anyhow::Result<()> {
    router.refresh().await;
    let layout = router.layout();
    let shards: Vec<String> = layout.map.shards().iter().map(|s| s.name.clone()).collect();
    let plan = mover::rebalance_plan(layout.map.owners(), shards.len());
    let mut onto: Vec<u32> =
        plan.iter().filter(|(_, _, to)| shards[*to] == args.reshard_shard).map(|(b, _, _)| *b).collect();
    if args.reshard_buckets > 0 {
        onto.truncate(args.reshard_buckets);
    }
    let pace = mover::Pace::within(args.reshard_batch, Duration::from_millis(args.reshard_fence_budget_ms))
        .resting(args.reshard_nice_ratio);
    record(moves, mover::move_paced(router, &onto, &args.reshard_shard, pace).await?);
    cleanup::run_paced(router, Duration::ZERO, args.reshard_nice_ratio).await?;
    for (index, name) in names.iter().enumerate() {
        let back: Vec<u32> = onto.iter().copied().filter(|&b| original[b as usize] as usize == index).collect();
        if !back.is_empty() {
            record(moves, mover::move_paced(router, &back, name, pace).await?);
        }
    }
    cleanup::run_paced(router, Duration::ZERO, args.reshard_nice_ratio).await?;
    Ok(())
}

fn record(moves: &mut Moves, report: mover::Report) {
    moves.buckets += report.moved;
    moves.rows += report.rows;
    moves.fences.extend(report.fences);
    moves.full_copies += report.full_copies;
}

async fn load_window(
    target: &Arc<load::Target>,
    local_pairs: &Arc<Vec<(usize, usize)>>,
    cross_pairs: &Arc<Vec<(usize, usize)>>,
    args: &BenchArgs,
    window: Duration,
) -> anyhow::Result<Window> {
    let (local, cross) = tokio::join!(
        load::run_local(target, local_pairs.clone(), args.clients, window),
        openloop::run(target, cross_pairs, args.reshard_cross_rate, window, args.max_in_flight)
    );
    Ok(Window { local: local?, cross: cross? })
}

fn print_summary(before: &Window, during: &Window, moves: &Moves, settled: &completion::Completion, verified: bool) {
    let (p50, p99_fence, max) = mover::quantiles(&moves.fences).unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    let (tps_before, tps_during) = (before.local.tps(), during.local.tps());
    let ratio = tps_during / tps_before.max(f64::EPSILON);
    let fence_p99 = ms(p99_fence);
    let moving_503 = |w: &Window| -> u64 {
        w.local.errors.counts.iter().filter(|(k, _)| k.contains("bucket_moving")).map(|(_, n)| n).sum::<u64>()
            + w.cross.errors.counts.iter().filter(|(k, _)| k.contains("bucket_moving")).map(|(_, n)| n).sum::<u64>()
    };
    let cancelled: u64 = settled.cancelled.values().sum();
    println!("\n== reshard ==");
    println!(
        "moves: {} pass(es), {} bucket moves, {} rows copied in {:.1} s ({:.0} rows/s), {} fences ({} copied in full)",
        moves.passes,
        moves.buckets,
        moves.rows,
        moves.moving.as_secs_f64(),
        moves.rows as f64 / moves.moving.as_secs_f64().max(0.001),
        moves.fences.len(),
        moves.full_copies
    );
    println!(
        "fence: p50 {:.0} ms, p99 {fence_p99:.0} ms, max {:.0} ms (goal p99 <= 250 ms: {})",
        ms(p50),
        ms(max),
        if fence_p99 <= 250.0 { "met" } else { "NOT met" }
    );
    println!(
        "same-shard TPS: {tps_before:.1} before, {tps_during:.1} during = {ratio:.2} (goal >= 0.70: {}); request p99 {:.1} ms before, {:.1} ms during",
        if ratio >= 0.7 { "met" } else { "NOT met" },
        p99(&before.local.request),
        p99(&during.local.request)
    );
    println!(
        "cross-shard: {} accepted before, {} during; request p99 {:.1} ms before, {:.1} ms during",
        before.cross.accepted.len(),
        during.cross.accepted.len(),
        p99(&before.cross.accepted_latency),
        p99(&during.cross.accepted_latency)
    );
    println!(
        "503 bucket_moving: {} before, {} during; other errors during: same-shard {}, cross-shard {}",
        moving_503(before),
        moving_503(during),
        during.local.errors.total(),
        during.cross.other_errors()
    );
    if during.local.rerouted > 0 {
        println!(
            "same-shard pairs answered 202 during (counted as done; their users on two shards while a bucket moved): {}",
            during.local.rerouted
        );
    }
    for (label, window) in [("before", before), ("during", during)] {
        if window.local.errors.total() > 0 {
            let codes: Vec<String> = window.local.errors.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("same-shard answers other than 201 {label}: {}", codes.join(", "));
        }
    }
    println!(
        "transfers: {} completed, {} cancelled (goal 0: {}), {} unfinished; verify {}",
        settled.completed,
        cancelled,
        if cancelled == 0 { "met" } else { "NOT met" },
        settled.unfinished,
        if verified { "clean" } else { "FOUND PROBLEMS" }
    );
}
