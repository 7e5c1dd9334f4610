//! `reshard move` and `reshard rebalance`: drives buckets through `moves` (the state
//! machine) with `copy` (the rows), a batch of buckets per fence, resumable after a kill
//! at any point, printing progress.
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
use crate::{
    sharding::{
        ownership::{Claim, BUCKET_LOCKS, SWITCH_LOCK},
        Router, Shard,
    },
    storage::cached::Cached,
};

/// One mover at a time in a cluster: it holds this advisory lock on the map's first shard.
const MOVER_LOCK: i64 = 0x5357_4d4f_5645_5221;

/// How long the fence may wait for the bucket's writes in flight, and for the outbox
/// rows they committed to be published, before it gives up and tries again later.
const FENCE_LOCK_TIMEOUT: &str = "2s";
const OUTBOX_DRAIN: Duration = Duration::from_secs(2);
const FENCE_ATTEMPTS: usize = 20;

/// Crash tests: `SHARDWALLET_MOVER_FAILPOINT=<name>` aborts the process at that point,
/// as a kill -9 would (connections drop, open transactions roll back). Points: `begun`
/// (a batch recorded as copying), `fenced` (inside the fence, buckets locked), `copied`
/// (the catch-up written and compared, nothing committed), `source-switched` (the
/// source committed its flip, the target not its copy), `switched` (both committed).
fn failpoint(name: &str) {
    if std::env::var("SHARDWALLET_MOVER_FAILPOINT").is_ok_and(|p| p == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Tests: `SHARDWALLET_MOVER_PAUSE=<point>:<file>` makes the mover create
/// `<file>.reached` at that point and wait there while `<file>` exists, so a test can
/// change a shard between two steps. Point: `precopied` (the copy committed on the
/// target and compared, the fence not yet taken).
async fn pause(name: &str) {
    let Ok(setting) = std::env::var("SHARDWALLET_MOVER_PAUSE") else { return };
    let Some((point, file)) = setting.split_once(':') else { return };
    if point != name {
        return;
    }
    let gate = std::path::Path::new(file);
    if let Err(e) = std::fs::write(format!("{file}.reached"), name) {
        eprintln!("pause {name}: cannot write {file}.reached: {e}");
    }
    while gate.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a run did, for the closing lines and `bench --mode reshard`.
#[derive(Debug, Default)]
pub struct Report {
    pub moved: usize,
    pub already_there: usize,
    pub rows: u64,
    pub fences: Vec<Duration>,
    /// Fences whose catch-up did not reproduce the source (digests differed) and that
    /// copied the buckets in full instead: correct, but as long as a first copy.
    pub full_copies: usize,
    pub elapsed: Duration,
}

impl Report {
    /// (p50, p99, max) of the fences.
    pub fn fence_quantiles(&self) -> Option<(Duration, Duration, Duration)> {
        quantiles(&self.fences)
    }
}

/// (p50, p99, max) of fence lengths; `None` when there were none.
pub fn quantiles(fences: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut sorted = fences.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)];
    (!sorted.is_empty()).then(|| (at(0.5), at(0.99), sorted[sorted.len() - 1]))
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
        if self.full_copies > 0 {
            write!(f, "; {} fence(s) copied in full", self.full_copies)?;
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

    fn batch(&self, buckets: &[u32], report: &Report, done: &Batch, to: &str) {
        let rate = report.rows as f64 / report.elapsed.as_secs_f64().max(0.001);
        let fence = done.fences.last().map_or_else(|| "-".into(), |f| format!("{} ms", f.as_millis()));
        let msg = format!("rows {} ({rate:.0}/s), last fence {fence}", report.rows);
        self.bar.inc(buckets.len() as u64);
        self.bar.set_message(msg);
        if self.lines {
            let from = if done.sources.is_empty() { "(already there)".to_string() } else { done.sources.join(",") };
            println!(
                "buckets {}-{} ({}): {from} -> {to}, {} moved, {} rows, fence {fence}; total {} buckets, {} rows ({rate:.0} rows/s)",
                buckets[0],
                buckets[buckets.len() - 1],
                buckets.len(),
                done.moved,
                done.rows,
                report.moved + report.already_there,
                report.rows
            );
        }
    }
}

/// Buckets fenced, copied and switched together at most, by default: one fence per batch.
pub const BATCH: usize = 64;

/// How long a fence may stop a batch's writes, by default, before the mover makes its
/// batches smaller (`--fence-budget-ms`).
pub const FENCE_BUDGET: Duration = Duration::from_millis(150);

/// How long the mover (and cleanup) rests after each batch, by default, in multiples of
/// the batch's own time (`--nice-ratio`, see `Pace`): none (docs/ARCHITECTURE.md,
/// "A mover that rests", says why).
pub const NICE_RATIO: f64 = 0.0;

/// How many buckets the next batch takes. Fixed, or paced by the fences: what a fence
/// does grows with its batch (the rows it catches up, counts and hashes), and how long
/// it takes with how busy the shards are, which the mover cannot know beforehand. So a
/// paced mover halves its batch after a fence over the budget and grows it by half after
/// one under half the budget, between one bucket and `max` (the way TCP paces a window).
///
/// Between batches the mover also rests, `nice` times as long as the batch took (the
/// way gh-ost's `--nice-ratio` does): a move is background work, and its copies (a
/// snapshot read on the source, bulk writes on the target) take CPU and I/O from the
/// requests the shards serve meanwhile. Resting as long as it worked halves the load a
/// move adds, for a move twice as long; 0 moves as fast as the shards allow.
///
/// A bucket's history weighs too: a fence counts every row of its buckets on the source,
/// and a few users with long histories made one fence of a batch take twice as long as
/// the others. So a paced mover also caps the history one fence takes (its buckets'
/// wallets' entries, counted before the copy: `copy::history`), halving the cap to half
/// of what a fence over the budget took and growing it by half after fences under half
/// the budget; a batch's buckets on one source are fenced in as many groups as the cap
/// asks (a bucket over the cap alone).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    size: usize,
    max: usize,
    budget: Option<Duration>,
    nice: f64,
    history: Option<u64>,
}

/// The history cap a paced mover starts with: entries of the fenced buckets' wallets
/// (under `make bench`'s load, 14,000 such entries took a fence of about 200 ms). Small:
/// a move's first fences know nothing of how busy the shards are (one of 37,000 rows in
/// all took 292 ms right after the bench's overload phase), and the cap grows by half
/// after every batch of short fences.
const HISTORY_START: u64 = 2_000;
const HISTORY_MAX: u64 = 10_000_000;
/// The cap never goes below this: a fence over the budget with less history was long
/// for another reason (a busy server), which the batch's size answers.
const HISTORY_MIN: u64 = 500;

impl Pace {
    /// `batch` buckets per fence, whatever the fences take.
    pub fn fixed(batch: usize) -> Self {
        Self { size: batch.max(1), max: batch.max(1), budget: None, nice: 0.0, history: None }
    }

    /// Batches of up to `max` buckets whose fences stay within `budget`, starting at a
    /// quarter of `max` (at most 16): a busy cluster's first fence is not the longest.
    pub fn within(max: usize, budget: Duration) -> Self {
        let max = max.max(1);
        if budget.is_zero() {
            return Self::fixed(max);
        }
        Self { size: (max / 4).clamp(1, 16), max, budget: Some(budget), nice: 0.0, history: Some(HISTORY_START) }
    }

    /// Rests `nice` times as long as each batch took before the next one (negative or
    /// not a number: 0).
    pub fn resting(self, nice: f64) -> Self {
        Self { nice: if nice.is_finite() { nice.max(0.0) } else { 0.0 }, ..self }
    }

    /// How long to rest after a batch that took `took`.
    pub fn rest_after(&self, took: Duration) -> Duration {
        took.mul_f64(self.nice)
    }

    /// The next batch's size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The most history one fence may take (`None`: unbounded, fixed batches).
    pub fn history(&self) -> Option<u64> {
        self.history
    }

    /// Takes the last batch's fences, with the history each took, into account for the
    /// history cap.
    pub fn after_history(&mut self, fences: &[Duration], histories: &[u64]) {
        let (Some(budget), Some(cap)) = (self.budget, self.history) else { return };
        if fences.is_empty() {
            return;
        }
        let over = fences.iter().zip(histories).filter(|(took, &h)| **took > budget && h > 0).map(|(_, &h)| h).min();
        self.history = Some(match over {
            Some(history) => cap.min((history / 2).max(HISTORY_MIN)),
            None if fences.iter().all(|took| *took < budget / 2) => (cap + cap.div_ceil(2)).min(HISTORY_MAX),
            None => cap,
        });
    }

    /// Takes the fences of the last batch into account.
    pub fn after(&mut self, fences: &[Duration]) {
        let (Some(budget), Some(&longest)) = (self.budget, fences.iter().max()) else { return };
        if longest > budget {
            self.size = (self.size / 2).max(1);
        } else if longest < budget / 2 {
            self.size = (self.size + self.size.div_ceil(2)).min(self.max);
        }
    }
}

/// Moves `buckets` to `target` from whichever shards own them now, `batch` buckets per
/// fence.
pub async fn move_buckets(router: &Router, buckets: &[u32], target: &str, batch: usize) -> anyhow::Result<Report> {
    move_paced(router, buckets, target, Pace::fixed(batch)).await
}

/// Moves `buckets` to `target` from whichever shards own them now, in batches as `pace`
/// says.
pub async fn move_paced(router: &Router, buckets: &[u32], target: &str, mut pace: Pace) -> anyhow::Result<Report> {
    router.refresh().await;
    let layout = router.layout();
    let Some(target) = layout.shards.iter().find(|s| s.name == target).cloned() else {
        bail!("no shard named '{target}' in the cluster (add it with `shardwallet shards add`)");
    };
    if let Some(&past) = buckets.iter().find(|&&b| b >= layout.map.buckets()) {
        bail!("bucket {past} is past the last bucket {}", layout.map.buckets() - 1);
    }
    // The lock lives as long as this session: taken out of the pool, the connection closes
    // when the run ends (or the process dies), and the lock goes with it.
    let lock_client = deadpool_postgres::Object::take(layout.shards[0].client().await?);
    let locked: bool = lock_client.query_one("SELECT pg_try_advisory_lock($1)", &[&MOVER_LOCK]).await?.get(0);
    if !locked {
        bail!("another mover is running in this cluster (it holds the mover lock on {})", layout.shards[0].name);
    }
    let started = Instant::now();
    let progress = Progress::new(buckets.len());
    let mut report = Report::default();
    let mut stats = TargetStats::default();
    let columns = copy::Columns::of(&target.client().await?).await?;
    let result = async {
        let mut rest = buckets;
        while !rest.is_empty() {
            let (chunk, later) = rest.split_at(pace.size().min(rest.len()));
            rest = later;
            let batch_began = Instant::now();
            let done = move_batch(router, &lock_client, &target, chunk, pace.history(), &mut stats, &columns)
                .await
                .with_context(|| {
                    format!("moving buckets {}..={} to {}", chunk[0], chunk[chunk.len() - 1], target.name)
                })?;
            pace.after(&done.fences);
            pace.after_history(&done.fences, &done.histories);
            report.elapsed = started.elapsed();
            report.moved += done.moved;
            report.already_there += chunk.len() - done.moved;
            report.rows += done.rows;
            report.fences.extend(&done.fences);
            report.full_copies += done.full_copies;
            progress.batch(chunk, &report, &done, &target.name);
            if !rest.is_empty() {
                tokio::time::sleep(pace.rest_after(batch_began.elapsed())).await;
            }
        }
        anyhow::Ok(())
    }
    .await;
    progress.bar.finish_and_clear();
    // Closing the session releases the lock too, but only once the server has seen it
    // close: a next run started at once (the move back of `bench --mode reshard`) would
    // find it still held.
    let unlocked = lock_client.execute("SELECT pg_advisory_unlock($1)", &[&MOVER_LOCK]).await;
    drop(lock_client);
    result?;
    unlocked?;
    report.elapsed = started.elapsed();
    router.refresh().await;
    Ok(report)
}

/// Keeps the target's planner statistics current while copies grow its tables: a
/// bucket's rows are found by index only while the planner knows the tables are large,
/// and autovacuum's ANALYZE comes late (a fence planned on an empty table's statistics
/// took 1.8 s instead of 0.1). Analyzed after the run's first copy, then whenever the
/// rows written since reach the target's entries (the tables doubled): a logarithmic
/// number of ANALYZEs, each up to a second of a busy server's CPU (a tenth made one
/// every other batch of a small cluster's move).
#[derive(Default)]
struct TargetStats {
    analyzed: bool,
    written: u64,
}

impl TargetStats {
    async fn after_copy(&mut self, target: &Shard, rows: u64) -> anyhow::Result<()> {
        self.written += rows;
        let client = target.client().await?;
        let entries: f32 =
            client.query_one("SELECT reltuples FROM pg_class WHERE oid = 'entries'::regclass", &[]).await?.get(0);
        let threshold = f64::from(entries.max(0.0)).max(2000.0);
        if self.analyzed && (self.written as f64) < threshold {
            return Ok(());
        }
        client.batch_execute(&copy::quick_analyze()).await?;
        (self.analyzed, self.written) = (true, 0);
        Ok(())
    }
}

/// What one batch did.
#[derive(Debug, Default)]
struct Batch {
    moved: usize,
    rows: u64,
    fences: Vec<Duration>,
    /// Each fence's history (`copy::history`; 0 when not counted).
    histories: Vec<u64>,
    full_copies: usize,
    sources: Vec<String>,
}

/// Drives a batch of buckets to `target`: each bucket's step comes from what the shards
/// record (`moves::next`), and the buckets at the same step on the same source take it
/// together (the fence: one transaction on each side for all of them).
async fn move_batch(
    router: &Router,
    lock: &tokio_postgres::Client,
    target: &Arc<Shard>,
    buckets: &[u32],
    history_cap: Option<u64>,
    stats: &mut TargetStats,
    columns: &copy::Columns,
) -> anyhow::Result<Batch> {
    let mut done = Batch::default();
    let mut moving: Vec<u32> = Vec::new();
    // Switched by this run (its record says so in the same statement): no record to mend.
    let mut switched: Vec<u32> = Vec::new();
    // The map was read when the run began; within it only this mover changes owners, and
    // a bucket it switched is read from the shards' records below (the source says
    // `moved`, the target `owned`), so the map is not read again per batch (a full read
    // of every shard's records, which the fences' epochs would make every time).
    for _ in 0..FENCE_ATTEMPTS + 4 {
        let target_claims = claims(&target.client().await?, buckets).await?;
        let sources = sources_of(router, target, buckets).await?;
        // What each source says of its buckets: one query per source.
        let mut source_claims = std::collections::HashMap::new();
        let mut by_source: Vec<(Arc<Shard>, Vec<u32>)> = Vec::new();
        for (&bucket, source) in buckets.iter().zip(&sources) {
            let Some(source) = source else { continue };
            match by_source.iter_mut().find(|(s, _)| s.name == source.name) {
                Some((_, list)) => list.push(bucket),
                None => by_source.push((source.clone(), vec![bucket])),
            }
        }
        for (source, list) in &by_source {
            source_claims.extend(claims(&source.client().await?, list).await?);
        }
        let mut fence: Vec<(Arc<Shard>, Vec<u32>)> = Vec::new();
        let mut beginning: Vec<(&Arc<Shard>, u32)> = Vec::new();
        let mut done_buckets: Vec<i32> = Vec::new();
        let mut pending = false;
        for (&bucket, source) in buckets.iter().zip(&sources) {
            let Some(source) = source else { continue };
            if !moving.contains(&bucket) {
                moving.push(bucket);
            }
            match moves::next(&target.name, source_claims.get(&bucket), target_claims.get(&bucket)) {
                Step::Begin => beginning.push((source, bucket)),
                Step::Fence => match fence.iter_mut().find(|(s, _)| s.name == source.name) {
                    Some((_, list)) => list.push(bucket),
                    None => fence.push((source.clone(), vec![bucket])),
                },
                Step::TakeOver { epoch } => {
                    // A run that stopped between the switch's two commits. Under the
                    // audit's lock: the bucket is counted on the source until then.
                    let one = [bucket];
                    let taken = take_over(source, target, &one, epoch, columns);
                    let (source_name, target_name) = (&source.name, &target.name);
                    done.rows += crate::storage::holding(lock, SWITCH_LOCK, crate::storage::LockMode::Exclusive, taken)
                        .await
                        .with_context(|| {
                            format!("taking bucket {bucket} over from {source_name} onto {target_name}")
                        })?;
                    switched.push(bucket);
                    pending = true;
                }
                Step::Done if !switched.contains(&bucket) => done_buckets.push(bucket as i32),
                Step::Done => {}
                Step::Refuse(why) => bail!("bucket {bucket}: {why} (source {}, target {})", source.name, target.name),
            }
        }
        if !beginning.is_empty() {
            begin(router, target, &beginning).await?;
            failpoint("begun");
            pending = true;
        }
        if !done_buckets.is_empty() {
            mark_switched(target, &done_buckets).await?;
        }
        for (source, list) in &fence {
            pending = true;
            let groups = match history_cap {
                Some(cap) => {
                    let history = copy::history(&source.client().await?, list).await?;
                    groups_within(list, &history, cap)
                }
                None => vec![(list.clone(), 0)],
            };
            for (group, history) in groups {
                // No switch while an audit runs (see SWITCH_LOCK); taken before the fence,
                // so a fence never waits for an audit.
                let fenced = fenced_copy(router, source, target, &group, stats, columns);
                match crate::storage::holding(lock, SWITCH_LOCK, crate::storage::LockMode::Exclusive, fenced).await? {
                    Some((rows, took, full)) => {
                        done.rows += rows;
                        done.full_copies += usize::from(full);
                        done.fences.push(took);
                        done.histories.push(history);
                        switched.extend(&group);
                        if !done.sources.contains(&source.name) {
                            done.sources.push(source.name.clone());
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        if !pending {
            done.moved = moving.len();
            return Ok(done);
        }
    }
    bail!("the buckets' fence could not be taken in {FENCE_ATTEMPTS} attempts (writes or the outbox kept it busy)")
}

/// `list` in consecutive groups whose history (`copy::history`, by bucket) stays within
/// `cap`, a bucket over it alone, each with its history.
fn groups_within(list: &[u32], history: &std::collections::HashMap<u32, u64>, cap: u64) -> Vec<(Vec<u32>, u64)> {
    let mut groups: Vec<(Vec<u32>, u64)> = Vec::new();
    for &bucket in list {
        let weight = history.get(&bucket).copied().unwrap_or(0);
        match groups.last_mut() {
            Some((group, sum)) if *sum + weight <= cap => {
                group.push(bucket);
                *sum += weight;
            }
            _ => groups.push((vec![bucket], weight)),
        }
    }
    groups
}

/// For each bucket, the shard it leaves: the one a move in progress recorded, or its
/// owner by the map; `None` when the target owns it and no move of it is in progress.
async fn sources_of(router: &Router, target: &Arc<Shard>, buckets: &[u32]) -> anyhow::Result<Vec<Option<Arc<Shard>>>> {
    let client = target.client().await?;
    let list: Vec<i32> = buckets.iter().map(|&b| b as i32).collect();
    let in_progress: std::collections::HashMap<u32, String> = client
        .query("SELECT bucket, source, state FROM bucket_moves WHERE bucket = ANY($1)", &[&list])
        .await?
        .iter()
        .filter(|r| matches!(MoveState::parse(r.get(2)), Some(MoveState::Copying | MoveState::Fenced)))
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, String>(1)))
        .collect();
    let layout = router.layout();
    let by_name = |name: &str| layout.shards.iter().find(|s| s.name == name).cloned();
    buckets
        .iter()
        .map(|&bucket| match in_progress.get(&bucket) {
            Some(source) => {
                by_name(source).map(Some).with_context(|| format!("the move's source '{source}' is not a member"))
            }
            None => {
                let owner = router.for_bucket(bucket)?;
                Ok((owner.name != target.name).then_some(owner))
            }
        })
        .collect()
}

async fn claims(
    client: &impl GenericClient,
    buckets: &[u32],
) -> anyhow::Result<std::collections::HashMap<u32, (Claim, i64)>> {
    let list: Vec<i32> = buckets.iter().map(|&b| b as i32).collect();
    let rows =
        client.query("SELECT bucket, state, owner, epoch FROM bucket_owners WHERE bucket = ANY($1)", &[&list]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let (bucket, state, owner, epoch): (i32, String, String, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let claim = match state.as_str() {
                "owned" => Claim::Owned,
                "incoming" => Claim::Incoming,
                "moved" => Claim::Moved { owner },
                _ => return None,
            };
            Some((bucket as u32, (claim, epoch)))
        })
        .collect())
}

/// copying: the target records the moves of `buckets` (each with its source) and holds
/// them as 'incoming'.
async fn begin(router: &Router, target: &Shard, buckets: &[(&Arc<Shard>, u32)]) -> anyhow::Result<()> {
    let list: Vec<i32> = buckets.iter().map(|&(_, b)| b as i32).collect();
    let sources: Vec<&str> = buckets.iter().map(|(s, _)| s.name.as_str()).collect();
    // One transaction: a bucket is never 'incoming' without the record naming its source.
    let mut client = target.client().await?;
    let client = client.transaction().await?;
    // A bucket comes back only onto a clean shard: the copy it left there earlier would
    // mix with the new one.
    if let Some(row) = client
        .cached_query_opt("SELECT bucket FROM users WHERE bucket = ANY($1) ORDER BY bucket LIMIT 1", &[&list])
        .await?
    {
        let bucket: i32 = row.get(0);
        bail!(
            "bucket {bucket} left a copy on {} when it moved away earlier: run `shardwallet reshard cleanup` \
             (after its grace period) before moving it back",
            target.name
        );
    }
    client
        .cached_execute(
            "INSERT INTO bucket_owners (bucket, state, owner, epoch)
             SELECT b, 'incoming', $2, $3 FROM unnest($1::int[]) AS b
             ON CONFLICT (bucket) DO UPDATE SET state = 'incoming', owner = $2, changed_at = now()
             WHERE bucket_owners.state = 'moved'",
            &[&list, &target.name, &router.epoch().max(1)],
        )
        .await?;
    client
        .cached_execute(
            "INSERT INTO bucket_moves (bucket, source, target, state)
             SELECT b, s, $3, 'copying' FROM unnest($1::int[], $2::text[]) AS x(b, s)
             ON CONFLICT (bucket) DO UPDATE SET source = EXCLUDED.source, target = $3, state = 'copying', epoch = NULL,
                 rows_copied = 0, fence_ms = NULL, started_at = now(), switched_at = NULL, cleaned_at = NULL",
            &[&list, &sources, &target.name],
        )
        .await?;
    client.commit().await?;
    Ok(())
}

/// copying → fenced → switched: copies the buckets while writes continue, then under
/// their locks on the source catches up, compares, and commits the source's flip, then
/// the target's copy with its switch: the rows copied, the fence's length and whether
/// it had to copy in full. `None` when the fence could not be taken now (writes or the
/// outbox kept it busy).
async fn fenced_copy(
    router: &Router,
    source: &Shard,
    target: &Shard,
    buckets: &[u32],
    stats: &mut TargetStats,
    columns: &copy::Columns,
) -> anyhow::Result<Option<(u64, Duration, bool)>> {
    let epoch = newest_epoch(router).await? + 1;
    let list: Vec<i32> = buckets.iter().map(|&b| b as i32).collect();
    // Copy while writes continue: one snapshot of the source, written to the target
    // (which holds the buckets as 'incoming'). The fence then takes only what changed.
    let (since, precopied, precopy_unbalanced, precopy_differs) = {
        let mut client = source.client().await?;
        let snapshot = crate::storage::read_snapshot(&mut client).await?;
        snapshot.batch_execute(copy::PLANNER).await?;
        let since = copy::since(&snapshot, buckets).await?;
        let rows = copy::read(&snapshot, buckets, None).await?;
        let expected = copy::digest(&snapshot, buckets).await?;
        snapshot.rollback().await?;
        let mut target_client = target.client().await?;
        let ttx = target_client.transaction().await?;
        ttx.batch_execute(copy::PLANNER).await?;
        copy::write(&ttx, &rows, columns).await?;
        // The copy's balance, checked before the fence (only the mover writes an
        // incoming bucket on the target); the fence checks the postings its catch-up adds.
        // So is its digest, against the snapshot's: the fence then hashes only what its
        // catch-up writes (`copy::hashes`).
        let (unbalanced, copied) = tokio::try_join!(copy::unbalanced(&ttx, buckets), copy::digest(&ttx, buckets))?;
        ttx.commit().await?;
        stats.after_copy(target, rows.rows).await?;
        (since, rows, unbalanced, copied != expected)
    };
    pause("precopied").await;
    // The keys the copy holds, and the target's counts of what it holds now (only the
    // mover writes an incoming bucket there): the fence counts on the target only the
    // rows its catch-up adds (`copy::counts_after_catch_up`), by key, not the history.
    let copied_keys = copy::KeySets::of(&precopied);
    // The target's transaction begins before the fence: the fence only writes in it.
    let mut target_client = target.client().await?;
    let ttx = target_client.transaction().await?;
    // The target's commit need not wait for its WAL flush: lost in a crash of the
    // target's server, it leaves the claims a stop between the two commits leaves (the
    // source says `moved`, the target `incoming`), which the next run takes over from
    // the source's rows, which no write changes any more; and the fence's record
    // (`record_fence`, a synchronous commit on the same server right after) flushes it
    // before this function returns. Requests for the buckets wait on this commit. Until
    // that flush, the target serves the buckets' reads (the same rows the source froze)
    // and any write there commits synchronously, which flushes the switch first; a
    // gateway query the target's reconciler might make in those milliseconds is an
    // idempotent read of the gateway.
    ttx.batch_execute(&format!("SET LOCAL synchronous_commit = off; {}", copy::PLANNER)).await?;
    let target_before = copy::counts(&ttx, buckets).await?;
    let mut source_client = source.client().await?;
    let stx = source_client.transaction().await?;
    stx.batch_execute(&format!("SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'; {}", copy::PLANNER)).await?;
    // A second connection to the source for half the catch-up's reads and for the
    // outbox check, so that the fence's reads use both of a server's cores and the
    // outbox polls do not queue before them (it only reads, after the locks).
    let mut aux_client = source.client().await?;
    let aux = aux_client.transaction().await?;
    aux.batch_execute(copy::PLANNER).await?;
    // A third for the source's counts, the fence's only scan of the buckets' history,
    // taken while the catch-up is read (they do not depend on it).
    let mut count_client = source.client().await?;
    let counter = count_client.transaction().await?;
    counter.batch_execute(copy::PLANNER).await?;
    // The buckets' locks (writes in flight hold them shared, `ownership::check_write`),
    // in bucket order, then their rows (background scans skip locked rows).
    let locked = async {
        stx.cached_execute(
            "SELECT pg_advisory_xact_lock($2, b) FROM (SELECT b FROM unnest($1::int[]) AS b ORDER BY b) s",
            &[&list, &BUCKET_LOCKS],
        )
        .await?;
        stx.cached_query("SELECT state FROM bucket_owners WHERE bucket = ANY($1) ORDER BY bucket FOR UPDATE", &[&list])
            .await
    }
    .await;
    let rows = match locked {
        Ok(rows) => rows,
        Err(e) if crate::storage::is_lock_timeout(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if rows.len() != buckets.len() || rows.iter().any(|r| r.get::<_, String>(0) != Claim::Owned.as_str()) {
        return Ok(None);
    }
    let fence_began = Instant::now();
    failpoint("fenced");
    // Every write to the buckets has committed; what they put in the outboxes must be
    // published before the buckets leave (outbox rows do not move): waited for while
    // the fence copies and compares, checked before anything commits. Only their rows
    // (and rows that name no bucket) are waited for, not the whole shard's backlog.
    let drain = async {
        let drained = outbox_drained(&aux, &list).await;
        (drained, fence_began.elapsed())
    };
    let work = async {
        let lanes = [&stx, &aux];
        let (delta, source_counts) =
            tokio::try_join!(copy::read_on(&lanes, buckets, Some(&since)), copy::counts(&counter, buckets))?;
        let read = fence_began.elapsed();
        // Each side's statements go together, one round trip per server, both servers
        // at work at once. The source: its hashes, then its flip (the buckets 'moved' to
        // the target). The target: the catch-up's writes, then its checks, then its
        // switch (the buckets 'owned', the move 'switched'); the server runs them in
        // order, so the checks see the writes. Neither side commits before the two
        // compare, and until a commit nobody sees the flip or the switch.
        let keys = copy::Keys::of(&delta, &copied_keys);
        let source_side = async {
            let (hashes, _) = tokio::try_join!(
                biased;
                copy::hashes(&stx, buckets, &keys),
                flip(&stx, &list, &target.name, epoch)
            )?;
            Ok::<_, tokio_postgres::Error>((copy::fence_digest(&source_counts, &hashes), fence_began.elapsed()))
        };
        let target_side = async {
            let writes = copy::prepare_write(&ttx, &delta, columns).await?;
            let (rows, unbalanced, counts, hashes, _) = tokio::try_join!(
                biased;
                writes.send(&ttx),
                copy::unbalanced_of(&ttx, &delta),
                copy::counts_after_catch_up(&ttx, buckets, &keys, &target_before),
                copy::hashes(&ttx, buckets, &keys),
                switch(&ttx, &list, &target.name, epoch, precopied.rows + delta.rows)
            )?;
            Ok::<_, tokio_postgres::Error>((
                rows,
                unbalanced,
                copy::fence_digest(&counts, &hashes),
                fence_began.elapsed(),
            ))
        };
        let (expected, written) = tokio::try_join!(source_side, target_side)?;
        Ok::<_, tokio_postgres::Error>((delta, read, expected, written))
    };
    let ((drained, drained_at), work) = tokio::join!(drain, work);
    let (delta, read, (mut expected, source_checked), (delta_rows, mut unbalanced, mut copied, target_checked)) = work?;
    if !drained? {
        return Ok(None);
    }
    let drained = drained_at;
    let digested = fence_began.elapsed();
    unbalanced += precopy_unbalanced;
    let mut copied_rows = precopied.rows + delta_rows;
    let mut full = false;
    if precopy_differs || unbalanced > 0 || copied != expected {
        // Something the delta cannot carry (a row deleted on the source since the copy,
        // say, by pruning): replace the target's provisional copy with a full one, and
        // compare every row.
        tracing::warn!(?buckets, "the copy and its catch-up differ from the source; copying in full inside the fence");
        (copied_rows, unbalanced, expected, copied) = copy_in_full(&stx, &ttx, buckets, columns).await?;
        full = true;
        switch(&ttx, &list, &target.name, epoch, copied_rows).await?;
    }
    let compared = fence_began.elapsed();
    tracing::debug!(
        ?drained,
        ?read,
        ?source_checked,
        ?target_checked,
        ?digested,
        ?compared,
        delta_rows = delta.rows,
        "fence phases"
    );
    // Both transactions roll back on a difference: the source keeps the buckets.
    refuse_if_different(&expected, &copied, unbalanced)?;
    failpoint("copied");
    // The source's commit is the switch: from it on the source refuses the buckets'
    // writes and reads, and its rows of them no longer change. The target commits its
    // catch-up and takes the buckets after it, never before, so no two shards own a
    // bucket at once; a stop between the two commits leaves the buckets to nobody
    // (requests are answered `bucket_moving`) until the next run takes them over from
    // the source's rows, which no write changes any more (`take_over`).
    stx.commit().await?;
    let committed = fence_began.elapsed();
    failpoint("source-switched");
    if let Err(e) = ttx.commit().await {
        // The buckets are nobody's until the target takes them: the batch's next
        // attempt finds the claims of a stop between the two commits and takes over.
        tracing::warn!(?buckets, error = %e, "the source gave the buckets, the target's commit failed; taking them over");
        return Ok(None);
    }
    failpoint("switched");
    let took = fence_began.elapsed();
    tracing::debug!(?committed, target_committed = ?took, "fence phases, commits");
    crate::telemetry::metrics::reshard_fence(took);
    record_fence(target, &list, took).await?;
    Ok(Some((copied_rows, took, full)))
}

const DIGEST_PARTS_LEN: usize = copy::DIGEST_PARTS.len();

/// Refuses a switch when the copy differs from its source (the names of the digest's
/// parts that differ) or a posting does not balance on the target.
fn refuse_if_different(expected: &[String], copied: &[String], unbalanced: i64) -> anyhow::Result<()> {
    // Every part compared, or nothing switches.
    if expected.len() != DIGEST_PARTS_LEN || copied.len() != DIGEST_PARTS_LEN {
        bail!("refusing to switch: a digest has {} and {} parts, not {DIGEST_PARTS_LEN}", expected.len(), copied.len());
    }
    let differing: Vec<&str> = copy::DIGEST_PARTS
        .iter()
        .zip(expected.iter().zip(copied))
        .filter(|(_, (a, b))| a != b)
        .map(|(name, _)| *name)
        .collect();
    if unbalanced > 0 || !differing.is_empty() {
        bail!(
            "refusing to switch: the copy differs from the source in {} ({} posting(s) do not balance on the target)",
            if differing.is_empty() { "nothing compared".to_string() } else { differing.join(", ") },
            unbalanced
        );
    }
    Ok(())
}

/// The source's flip, in the fence's transaction: the buckets 'moved' to the target at
/// the switch's epoch, keeping the epoch they were owned since (a copy read after the
/// flip names its stand-in legs after it, as the copy before, V15). The stand-in legs of
/// the buckets' split postings are written by cleanup (`standins_pending`, V11), on the
/// `resharding` accounts made sure of here.
async fn flip(stx: &impl GenericClient, list: &[i32], target: &str, epoch: i64) -> Result<u64, tokio_postgres::Error> {
    stx.cached_execute(
        "WITH standin_accounts AS (
             INSERT INTO accounts (system_name, currency)
             SELECT DISTINCT 'resharding', a.currency FROM accounts a JOIN users u USING (user_id)
             WHERE u.bucket = ANY($1)
             ON CONFLICT DO NOTHING)
         UPDATE bucket_owners SET state = 'moved', owner = $2, owned_since_epoch = epoch, epoch = $3,
             standins_pending = true, changed_at = now()
         WHERE bucket = ANY($1)",
        &[&list, &target, &epoch],
    )
    .await
}

/// The target's switch, in the transaction that holds its copy: the buckets 'owned' at
/// the epoch the source's flip records, the move 'switched' with the rows copied. One
/// statement, so one round trip.
async fn switch(
    ttx: &impl GenericClient,
    list: &[i32],
    target: &str,
    epoch: i64,
    rows: u64,
) -> Result<u64, tokio_postgres::Error> {
    ttx.cached_execute(
        "WITH owned AS (
             UPDATE bucket_owners SET state = 'owned', owner = $2, epoch = $3, changed_at = now()
             WHERE bucket = ANY($1) AND state = 'incoming')
         UPDATE bucket_moves SET state = 'switched', epoch = $3, rows_copied = $4, switched_at = now()
         WHERE bucket = ANY($1)",
        &[&list, &target, &epoch, &(rows as i64)],
    )
    .await
}

/// The source switched `buckets` to the target, but the target's commit did not follow
/// (the mover stopped between the two): the source's rows of them have not changed
/// since its commit (it refuses their writes), so the target replaces its copy with a
/// full one from them, compares every row and takes the buckets, in one transaction.
/// Returns the rows copied.
async fn take_over(
    source: &Shard,
    target: &Shard,
    buckets: &[u32],
    epoch: i64,
    columns: &copy::Columns,
) -> anyhow::Result<u64> {
    let list: Vec<i32> = buckets.iter().map(|&b| b as i32).collect();
    let mut source_client = source.client().await?;
    let snapshot = crate::storage::read_snapshot(&mut source_client).await?;
    snapshot.batch_execute(copy::PLANNER).await?;
    let given: i64 = snapshot
        .query_one(
            "SELECT count(*) FROM bucket_owners WHERE bucket = ANY($1) AND state = 'moved' AND owner = $2 AND epoch = $3",
            &[&list, &target.name, &epoch],
        )
        .await?
        .get(0);
    if given != list.len() as i64 {
        bail!("the source no longer says it gave the buckets to {} at epoch {epoch}", target.name);
    }
    let mut target_client = target.client().await?;
    let ttx = target_client.transaction().await?;
    ttx.batch_execute(copy::PLANNER).await?;
    let (copied_rows, unbalanced, expected, copied) = copy_in_full(&snapshot, &ttx, buckets, columns).await?;
    refuse_if_different(&expected, &copied, unbalanced)?;
    switch(&ttx, &list, &target.name, epoch, copied_rows).await?;
    ttx.commit().await?;
    snapshot.rollback().await?;
    Ok(copied_rows)
}

/// Replaces the target's copy of `buckets` (in `ttx`) with every row `source` reads of
/// them: the rows written, the target's postings that do not balance, and the source's
/// and the target's digests.
async fn copy_in_full(
    source: &impl GenericClient,
    ttx: &deadpool_postgres::Transaction<'_>,
    buckets: &[u32],
    columns: &copy::Columns,
) -> anyhow::Result<(u64, i64, Vec<String>, Vec<String>)> {
    let list: Vec<i32> = buckets.iter().map(|&b| b as i32).collect();
    super::cleanup::delete_rows(ttx, &list).await?;
    let rows = copy::read(source, buckets, None).await?;
    let copied_rows = copy::write(ttx, &rows, columns).await?;
    let (unbalanced, expected, copied) =
        tokio::try_join!(copy::unbalanced(ttx, buckets), copy::digest(source, buckets), copy::digest(ttx, buckets))?;
    Ok((copied_rows, unbalanced, expected, copied))
}

/// Records the fence's length on the target's move records. A synchronous commit that
/// changes rows (the buckets' records, written by `begin`; a commit that wrote nothing
/// would not flush): it flushes the target's WAL up to it, so the switch committed just
/// before (without waiting for its flush) is durable once this returns.
async fn record_fence(target: &Shard, list: &[i32], took: Duration) -> anyhow::Result<()> {
    let recorded = target
        .client()
        .await?
        .execute("UPDATE bucket_moves SET fence_ms = $2 WHERE bucket = ANY($1)", &[&list, &(took.as_millis() as i32)])
        .await?;
    if recorded == 0 {
        bail!("the move records of buckets {list:?} are gone from {}: the switch may not be on disk yet", target.name);
    }
    Ok(())
}

/// Waits (bounded) until the outbox rows of `buckets` committed before the fence (and
/// those that name no bucket) are published.
async fn outbox_drained(stx: &impl GenericClient, buckets: &[i32]) -> anyhow::Result<bool> {
    // The rows the buckets' transactions wrote (V12), and rows that name no bucket.
    let marks = stx
        .cached_query_one(
            "SELECT coalesce((SELECT max(id) FROM outbox WHERE buckets IS NULL OR buckets && $1), 0),
                    coalesce((SELECT max(id) FROM payment_outbox WHERE buckets IS NULL OR buckets && $1), 0)",
            &[&buckets],
        )
        .await?;
    let (stages, payments): (i64, i64) = (marks.get(0), marks.get(1));
    if stages == 0 && payments == 0 {
        return Ok(true);
    }
    let deadline = Instant::now() + OUTBOX_DRAIN;
    loop {
        let pending: bool = stx
            .cached_query_one(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE id <= $1 AND (buckets IS NULL OR buckets && $3))
                     OR EXISTS (SELECT 1 FROM payment_outbox WHERE id <= $2 AND (buckets IS NULL OR buckets && $3))",
                &[&stages, &payments, &buckets],
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

/// A move whose target flipped but whose record says otherwise (written by an earlier
/// version in two statements, a kill between them) is recorded as switched, so cleanup
/// finds it.
async fn mark_switched(target: &Shard, buckets: &[i32]) -> anyhow::Result<()> {
    target
        .client()
        .await?
        .cached_execute(
            "UPDATE bucket_moves SET state = 'switched', switched_at = coalesce(switched_at, now())
             WHERE bucket = ANY($1) AND state IN ('copying', 'fenced')",
            &[&buckets],
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
    fn a_paced_mover_halves_its_batch_after_a_long_fence_and_grows_it_after_short_ones() {
        let ms = Duration::from_millis;
        let mut pace = Pace::within(64, ms(150));
        assert_eq!(pace.size(), 16);
        pace.after(&[ms(40), ms(70)]);
        assert_eq!(pace.size(), 24, "every fence under half the budget");
        pace.after(&[ms(100)]);
        assert_eq!(pace.size(), 24, "within the budget: kept");
        pace.after(&[ms(20), ms(151)]);
        assert_eq!(pace.size(), 12, "the longest fence counts");
        for _ in 0..10 {
            pace.after(&[ms(900)]);
        }
        assert_eq!(pace.size(), 1, "never below one bucket");
        for _ in 0..20 {
            pace.after(&[ms(10)]);
        }
        assert_eq!(pace.size(), 64, "never above the batch asked for");
        pace.after(&[]);
        assert_eq!(pace.size(), 64, "a batch without a fence (already there) says nothing");
        let mut fixed = Pace::fixed(16);
        fixed.after(&[ms(900)]);
        assert_eq!(fixed.size(), 16);
        assert_eq!(Pace::within(8, Duration::ZERO).size(), 8, "budget 0: fixed batches");
    }

    #[test]
    fn a_paced_mover_fences_long_histories_in_smaller_groups_after_a_long_fence() {
        let ms = Duration::from_millis;
        let mut pace = Pace::within(64, ms(150));
        assert_eq!(pace.history(), Some(HISTORY_START));
        pace.after_history(&[ms(40), ms(220)], &[50_000, 3_000]);
        assert_eq!(pace.history(), Some(1_500), "half of what the long fence took");
        pace.after_history(&[ms(100)], &[1_000]);
        assert_eq!(pace.history(), Some(1_500), "within the budget: kept");
        pace.after_history(&[ms(30), ms(60)], &[1_000, 1_200]);
        assert_eq!(pace.history(), Some(2_250), "every fence under half the budget: grown by half");
        pace.after_history(&[ms(900)], &[0]);
        assert_eq!(pace.history(), Some(2_250), "a long fence without history: not the history's doing");
        pace.after_history(&[ms(900)], &[600]);
        assert_eq!(pace.history(), Some(HISTORY_MIN), "never below the floor");
        pace.after_history(&[], &[]);
        assert_eq!(pace.history(), Some(HISTORY_MIN), "a batch without a fence says nothing");
        let mut fixed = Pace::fixed(16);
        fixed.after_history(&[ms(900)], &[100_000]);
        assert_eq!(fixed.history(), None, "fixed batches take any history");

        // Consecutive groups within the cap; a bucket over it alone; empty buckets free.
        let history: std::collections::HashMap<u32, u64> = [(1, 3_000), (2, 4_000), (4, 9_000), (6, 500)].into();
        let groups = groups_within(&[1, 2, 3, 4, 5, 6, 7], &history, 5_000);
        assert_eq!(
            groups,
            vec![(vec![1], 3_000), (vec![2, 3], 4_000), (vec![4], 9_000), (vec![5, 6, 7], 500)],
            "each group within 5,000 entries"
        );
        assert_eq!(groups_within(&[1, 2, 3], &history, u64::MAX), vec![(vec![1, 2, 3], 7_000)]);
    }

    #[test]
    fn a_nice_mover_rests_in_proportion_to_its_batches() {
        let ms = Duration::from_millis;
        assert_eq!(Pace::fixed(4).rest_after(ms(300)), Duration::ZERO, "no rest unless asked");
        let nice = Pace::within(64, ms(150)).resting(1.5);
        assert_eq!(nice.rest_after(ms(200)), ms(300));
        assert_eq!(nice.size(), 16, "resting leaves the batch size alone");
        assert_eq!(Pace::fixed(4).resting(-1.0).rest_after(ms(300)), Duration::ZERO);
        assert_eq!(Pace::fixed(4).resting(f64::NAN).rest_after(ms(300)), Duration::ZERO);
    }

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
