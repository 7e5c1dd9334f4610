//! `reshard move` and `reshard rebalance`: drives each bucket through `moves` (the state
//! machine) with `copy` (the rows), one bucket at a time, resumable after a kill at any
//! point, printing progress.
use std::{
    io::IsTerminal,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use deadpool_postgres::GenericClient;

use super::{
    copy,
    moves::{self, MoveState, Step},
};
use crate::sharding::{ownership::Claim, Router, Shard};

/// One mover at a time in a cluster: it holds this advisory lock on the map's first shard.
const MOVER_LOCK: i64 = 0x5357_4d4f_5645_5221;

/// How long the fence may wait for the bucket's writes in flight, and for the outbox
/// rows they committed to be published, before it gives up and tries again later.
const FENCE_LOCK_TIMEOUT: &str = "2s";
const OUTBOX_DRAIN: Duration = Duration::from_secs(2);
const FENCE_ATTEMPTS: usize = 20;

/// What a run did, for the closing lines and `bench --mode reshard`.
#[derive(Debug, Default)]
pub struct Report {
    pub moved: usize,
    pub already_there: usize,
    pub rows: u64,
    pub fences: Vec<Duration>,
    pub elapsed: Duration,
}

impl Report {
    /// (p50, p99, max) of the fences.
    pub fn fence_quantiles(&self) -> Option<(Duration, Duration, Duration)> {
        let mut sorted = self.fences.clone();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)];
        (!sorted.is_empty()).then(|| (at(0.5), at(0.99), sorted[sorted.len() - 1]))
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.rows as f64 / self.elapsed.as_secs_f64().max(0.001);
        write!(
            f,
            "{} bucket(s) moved, {} already there; {} rows copied in {:.1} s ({rate:.0} rows/s)",
            self.moved,
            self.already_there,
            self.rows,
            self.elapsed.as_secs_f64()
        )?;
        if let Some((p50, p99, max)) = self.fence_quantiles() {
            write!(f, "; fence p50 {} ms, p99 {} ms, max {} ms", p50.as_millis(), p99.as_millis(), max.as_millis())?;
        }
        Ok(())
    }
}

/// A progress bar on a terminal, a log line per bucket otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    lines: bool,
}

impl Progress {
    fn new(buckets: usize) -> Self {
        let lines = !std::io::stderr().is_terminal();
        let bar = if lines {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(buckets as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} buckets {msg}") {
                bar.set_style(style);
            }
            bar
        };
        Self { bar, lines }
    }

    fn bucket(&self, bucket: u32, report: &Report, rows: u64, fence: Option<Duration>, from: &str, to: &str) {
        let rate = report.rows as f64 / report.elapsed.as_secs_f64().max(0.001);
        let fence = fence.map_or_else(|| "-".into(), |f| format!("{} ms", f.as_millis()));
        let msg = format!("rows {} ({rate:.0}/s), last fence {fence}", report.rows);
        self.bar.inc(1);
        self.bar.set_message(msg);
        if self.lines {
            println!("bucket {bucket}: {from} -> {to}, {rows} rows, fence {fence}; total {} rows", report.rows);
        }
    }
}

/// Moves `buckets` to `target` from whichever shards own them now.
pub async fn move_buckets(router: &Router, buckets: &[u32], target: &str) -> anyhow::Result<Report> {
    router.refresh().await;
    let layout = router.layout();
    let Some(target) = layout.shards.iter().find(|s| s.name == target).cloned() else {
        bail!("no shard named '{target}' in the cluster (add it with `shardwallet shards add`)");
    };
    if let Some(&past) = buckets.iter().find(|&&b| b >= layout.map.buckets()) {
        bail!("bucket {past} is past the last bucket {}", layout.map.buckets() - 1);
    }
    let lock_client = layout.shards[0].client().await?;
    let locked: bool = lock_client.query_one("SELECT pg_try_advisory_lock($1)", &[&MOVER_LOCK]).await?.get(0);
    if !locked {
        bail!("another mover is running in this cluster (it holds the mover lock on {})", layout.shards[0].name);
    }
    let started = Instant::now();
    let progress = Progress::new(buckets.len());
    let mut report = Report::default();
    let result = async {
        for &bucket in buckets {
            let (rows, fence, source) = move_one(router, &target, bucket)
                .await
                .with_context(|| format!("moving bucket {bucket} to {}", target.name))?;
            report.elapsed = started.elapsed();
            match (&source, fence) {
                (Some(from), fence) => {
                    report.moved += 1;
                    report.rows += rows;
                    report.fences.extend(fence);
                    progress.bucket(bucket, &report, rows, fence, from, &target.name);
                }
                (None, _) => {
                    report.already_there += 1;
                    progress.bar.inc(1);
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    progress.bar.finish_and_clear();
    let _ = lock_client.query_one("SELECT pg_advisory_unlock($1)", &[&MOVER_LOCK]).await;
    result?;
    report.elapsed = started.elapsed();
    router.refresh().await;
    Ok(report)
}

/// Drives one bucket to `target`. Returns the rows copied, the fence's length (when this
/// run fenced it) and the source (`None` when the bucket was there already).
async fn move_one(
    router: &Router,
    target: &Arc<Shard>,
    bucket: u32,
) -> anyhow::Result<(u64, Option<Duration>, Option<String>)> {
    let mut rows = 0;
    let mut fence = None;
    let mut source_name = None;
    for _ in 0..FENCE_ATTEMPTS + 4 {
        router.refresh().await;
        let source = source_of(router, target, bucket).await?;
        let Some(source) = source else {
            return Ok((rows, fence, source_name));
        };
        source_name = Some(source.name.clone());
        let source_claim = claim(&source.client().await?, bucket).await?;
        let target_claim = claim(&target.client().await?, bucket).await?;
        match moves::next(&target.name, source_claim.as_ref(), target_claim.as_ref()) {
            Step::Begin => begin(router, &source, target, bucket).await?,
            Step::Fence => match fenced_copy(router, &source, target, bucket).await? {
                Some((copied, took)) => {
                    rows = copied;
                    fence = Some(took);
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Step::FinishSwitch { epoch } => finish_switch(target, bucket, epoch, fence).await?,
            Step::Done => return Ok((rows, fence, source_name)),
            Step::Refuse(why) => bail!("{why} (source {}, target {})", source.name, target.name),
        }
    }
    bail!("the bucket's fence could not be taken in {FENCE_ATTEMPTS} attempts (writes or the outbox kept it busy)")
}

/// The shard the bucket leaves: the one a move in progress recorded, or its owner by the
/// map; `None` when the target owns it and no move of it is in progress.
async fn source_of(router: &Router, target: &Arc<Shard>, bucket: u32) -> anyhow::Result<Option<Arc<Shard>>> {
    let client = target.client().await?;
    let record = client
        .query_opt("SELECT source, state FROM bucket_moves WHERE bucket = $1", &[&(bucket as i32)])
        .await?
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
    let in_progress =
        record.filter(|(_, state)| matches!(MoveState::parse(state), Some(MoveState::Copying | MoveState::Fenced)));
    let layout = router.layout();
    let by_name = |name: &str| layout.shards.iter().find(|s| s.name == name).cloned();
    if let Some((source, _)) = in_progress {
        return by_name(&source).map(Some).with_context(|| format!("the move's source '{source}' is not a member"));
    }
    let owner = router.for_bucket(bucket)?;
    Ok((owner.name != target.name).then_some(owner))
}

async fn claim(client: &impl GenericClient, bucket: u32) -> anyhow::Result<Option<(Claim, i64)>> {
    let row = client
        .query_opt("SELECT state, owner, epoch FROM bucket_owners WHERE bucket = $1", &[&(bucket as i32)])
        .await?;
    Ok(row.and_then(|r| {
        let (state, owner, epoch): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let claim = match state.as_str() {
            "owned" => Claim::Owned,
            "incoming" => Claim::Incoming,
            "moved" => Claim::Moved { owner },
            _ => return None,
        };
        Some((claim, epoch))
    }))
}

/// copying: the target records the move and holds the bucket as 'incoming'.
async fn begin(router: &Router, source: &Shard, target: &Shard, bucket: u32) -> anyhow::Result<()> {
    let client = target.client().await?;
    client
        .execute(
            "INSERT INTO bucket_owners (bucket, state, owner, epoch) VALUES ($1, 'incoming', $2, $3)
             ON CONFLICT (bucket) DO UPDATE SET state = 'incoming', owner = $2, changed_at = now()
             WHERE bucket_owners.state = 'moved'",
            &[&(bucket as i32), &target.name, &router.epoch().max(1)],
        )
        .await?;
    client
        .execute(
            "INSERT INTO bucket_moves (bucket, source, target, state) VALUES ($1, $2, $3, 'copying')
             ON CONFLICT (bucket) DO UPDATE SET source = $2, target = $3, state = 'copying', epoch = NULL,
                 rows_copied = 0, fence_ms = NULL, started_at = now(), switched_at = NULL, cleaned_at = NULL",
            &[&(bucket as i32), &source.name, &target.name],
        )
        .await?;
    Ok(())
}

/// fenced → switched (source side): under the bucket's row lock on the source, copies
/// the bucket, compares, commits the copy on the target, then flips the source. `None`
/// when the fence could not be taken now (writes or the outbox kept it busy).
async fn fenced_copy(
    router: &Router,
    source: &Shard,
    target: &Shard,
    bucket: u32,
) -> anyhow::Result<Option<(u64, Duration)>> {
    let epoch = newest_epoch(router).await? + 1;
    let mut source_client = source.client().await?;
    let stx = source_client.transaction().await?;
    stx.batch_execute(&format!("SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'")).await?;
    let locked =
        stx.query_opt("SELECT state FROM bucket_owners WHERE bucket = $1 FOR UPDATE", &[&(bucket as i32)]).await;
    let state: String = match locked {
        Ok(Some(row)) => row.get(0),
        Ok(None) => bail!("the source has no record of the bucket"),
        Err(e) if crate::storage::is_lock_timeout(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if state != Claim::Owned.as_str() {
        return Ok(None);
    }
    let fence_began = Instant::now();
    // Every write to the bucket has committed; what they put in the outboxes must be
    // published before the bucket leaves (outbox rows do not move).
    if !outbox_drained(&stx).await? {
        return Ok(None);
    }
    let snapshot = copy::read(&stx, bucket).await?;
    let expected = copy::digest(&stx, bucket).await?;
    let mut target_client = target.client().await?;
    let ttx = target_client.transaction().await?;
    let rows = copy::write(&ttx, &snapshot).await?;
    let unbalanced = copy::unbalanced(&ttx, bucket).await?;
    let copied = copy::digest(&ttx, bucket).await?;
    let differing: Vec<&str> = copy::DIGEST_PARTS
        .iter()
        .zip(expected.iter().zip(&copied))
        .filter(|(_, (a, b))| a != b)
        .map(|(name, _)| *name)
        .collect();
    if unbalanced > 0 || !differing.is_empty() {
        // Both transactions roll back: the source keeps the bucket, nothing switched.
        bail!(
            "refusing to switch: the copy differs from the source in {} ({} posting(s) do not balance on the target)",
            if differing.is_empty() { "nothing compared".to_string() } else { differing.join(", ") },
            unbalanced
        );
    }
    ttx.execute(
        "UPDATE bucket_moves SET state = 'fenced', epoch = $2, rows_copied = $3 WHERE bucket = $1",
        &[&(bucket as i32), &epoch, &(rows as i64)],
    )
    .await?;
    ttx.commit().await?;
    copy::split_on_source(&stx, bucket).await?;
    stx.execute(
        "UPDATE bucket_owners SET state = 'moved', owner = $2, epoch = $3, changed_at = now() WHERE bucket = $1",
        &[&(bucket as i32), &target.name, &epoch],
    )
    .await?;
    stx.commit().await?;
    let took = fence_began.elapsed();
    crate::telemetry::metrics::reshard_fence(took);
    Ok(Some((rows, took)))
}

/// Waits (bounded) until every outbox row committed before the fence is published.
async fn outbox_drained(stx: &impl GenericClient) -> anyhow::Result<bool> {
    let marks = stx
        .query_one(
            "SELECT coalesce((SELECT max(id) FROM outbox), 0), coalesce((SELECT max(id) FROM payment_outbox), 0)",
            &[],
        )
        .await?;
    let (stages, payments): (i64, i64) = (marks.get(0), marks.get(1));
    let deadline = Instant::now() + OUTBOX_DRAIN;
    loop {
        let pending: bool = stx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE id <= $1) OR EXISTS (SELECT 1 FROM payment_outbox WHERE id <= $2)",
                &[&stages, &payments],
            )
            .await?
            .get(0);
        if !pending {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// switched (target side): the target takes the bucket at the epoch the source recorded.
async fn finish_switch(target: &Shard, bucket: u32, epoch: i64, fence: Option<Duration>) -> anyhow::Result<()> {
    let client = target.client().await?;
    client
        .execute(
            "UPDATE bucket_owners SET state = 'owned', owner = $2, epoch = $3, changed_at = now()
             WHERE bucket = $1 AND state = 'incoming'",
            &[&(bucket as i32), &target.name, &epoch],
        )
        .await?;
    client
        .execute(
            "UPDATE bucket_moves SET state = 'switched', switched_at = now(), epoch = $2,
                 fence_ms = coalesce($3, fence_ms) WHERE bucket = $1",
            &[&(bucket as i32), &epoch, &fence.map(|f| f.as_millis() as i32)],
        )
        .await?;
    Ok(())
}

/// The newest epoch any shard recorded.
async fn newest_epoch(router: &Router) -> anyhow::Result<i64> {
    let mut newest = router.epoch();
    for shard in router.shards() {
        let client = shard.client().await?;
        let row = client
            .query_one(
                "SELECT greatest((SELECT max(epoch) FROM bucket_owners), (SELECT max(added_epoch) FROM cluster_shards))",
                &[],
            )
            .await?;
        newest = newest.max(row.get::<_, Option<i64>>(0).unwrap_or(0));
    }
    Ok(newest)
}

/// Parses `0-1023,2000,4096-8191`.
pub fn parse_buckets(text: &str) -> anyhow::Result<Vec<u32>> {
    let mut buckets = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let range = crate::sharding::parse_range(part)
            .with_context(|| format!("bad bucket range '{part}' (expected FIRST-LAST or N)"))?;
        buckets.extend(range);
    }
    if buckets.is_empty() {
        bail!("no bucket named");
    }
    buckets.sort_unstable();
    buckets.dedup();
    Ok(buckets)
}

/// The moves that leave every shard owning an equal share (±1 bucket): shards over their
/// share give their highest buckets to those under it. (bucket, from, to), in order.
pub fn rebalance_plan(owners: &[u16], shards: usize) -> Vec<(u32, usize, usize)> {
    let total = owners.len();
    let share = |i: usize| total / shards + usize::from(i < total % shards);
    let mut owned: Vec<Vec<u32>> = vec![Vec::new(); shards];
    for (bucket, &owner) in owners.iter().enumerate() {
        if let Some(list) = owned.get_mut(owner as usize) {
            list.push(bucket as u32);
        }
    }
    let mut plan = Vec::new();
    let mut under: Vec<usize> = (0..shards).filter(|&i| owned[i].len() < share(i)).collect();
    for from in 0..shards {
        while owned[from].len() > share(from) {
            let Some(&to) = under.first() else { break };
            let Some(bucket) = owned[from].pop() else { break };
            plan.push((bucket, from, to));
            owned[to].push(bucket);
            if owned[to].len() >= share(to) {
                under.remove(0);
            }
        }
    }
    plan.sort_by_key(|&(bucket, from, to)| (to, from, bucket));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lists_parse_and_merge() {
        assert_eq!(parse_buckets("0-3,2,7").expect("ok"), vec![0, 1, 2, 3, 7]);
        assert!(parse_buckets("5-1").is_err());
        assert!(parse_buckets("").is_err());
    }

    #[test]
    fn a_rebalance_onto_a_new_shard_leaves_equal_shares_and_moves_only_what_it_must() {
        // Three shards of 16384 buckets, a fourth with none.
        let mut owners = vec![0u16; 16384];
        for (b, o) in owners.iter_mut().enumerate() {
            *o = match b {
                0..=5460 => 0,
                5461..=10921 => 1,
                _ => 2,
            };
        }
        let plan = rebalance_plan(&owners, 4);
        assert_eq!(plan.len(), 4096, "the new shard's share, and nothing more");
        for &(bucket, from, to) in &plan {
            assert_eq!(to, 3);
            owners[bucket as usize] = 3;
            assert_ne!(from, 3);
        }
        let counts: Vec<usize> = (0..4).map(|i| owners.iter().filter(|&&o| o == i as u16).count()).collect();
        assert!(counts.iter().all(|&c| c == 4096), "{counts:?}");
        assert!(rebalance_plan(&owners, 4).is_empty(), "a balanced cluster needs no move");
    }
}
