//! `reshard cleanup`: deletes from a source shard the copy a move left behind, once the
//! move switched at least a grace period ago (a read that asked the source whether it
//! owned the bucket just before the switch has finished long since).
use std::time::Duration;

use anyhow::Context;

use crate::sharding::Router;

/// The default grace period between a switch and the deletion of its leftovers.
pub const GRACE: Duration = Duration::from_secs(60);

/// What one cleanup pass deleted.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub buckets: usize,
    pub rows: u64,
    /// Switched moves still inside their grace period.
    pub waiting: usize,
}

impl std::fmt::Display for Cleaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bucket(s) cleaned up, {} row(s) deleted", self.buckets, self.rows)?;
        if self.waiting > 0 {
            write!(f, "; {} switched less than the grace period ago (run again later)", self.waiting)?;
        }
        Ok(())
    }
}

/// The statements that delete one bucket's leftovers on its old shard, in order
/// (children before parents). `$1` is the bucket list. Only rows of the bucket's users
/// go, and only where no other user with rows here needs them: a same-shard transfer
/// with a user who stayed keeps its row and its split posting.
const DELETES: &[&str] = &[
    "CREATE TEMP TABLE gone_users ON COMMIT DROP AS SELECT user_id FROM users WHERE bucket = ANY(ARRAY[{buckets}]::int[])",
    "CREATE TEMP TABLE gone_accounts ON COMMIT DROP AS
         SELECT account_id FROM accounts WHERE user_id IN (SELECT user_id FROM gone_users)",
    // Postings that moved whole: every wallet leg gone, no `resharding` leg (a split
    // posting keeps its other legs and the leg standing for those that left).
    "CREATE TEMP TABLE gone_postings ON COMMIT DROP AS
         SELECT DISTINCT e.posting_id FROM entries e
         WHERE e.account_id IN (SELECT account_id FROM gone_accounts)
           AND NOT EXISTS (SELECT 1 FROM entries o JOIN accounts a USING (account_id)
                           WHERE o.posting_id = e.posting_id
                             AND ((a.user_id IS NOT NULL AND a.account_id NOT IN (SELECT account_id FROM gone_accounts))
                                  OR a.system_name = 'resharding'))",
    // Transfers none of whose users still has rows here: one with a user of another
    // bucket stays until that bucket's own cleanup, whether the shard still owns it or
    // not (a bucket the mover left between the two commits of its switch is taken over
    // from these rows, `mover::take_over`).
    "CREATE TEMP TABLE gone_transfers ON COMMIT DROP AS
         SELECT transfer_id FROM transfers t
         WHERE (t.from_user IN (SELECT user_id FROM gone_users) OR t.to_user IN (SELECT user_id FROM gone_users))
           AND NOT EXISTS (SELECT 1 FROM users u
                           WHERE u.user_id IN (t.from_user, t.to_user) AND u.bucket <> ALL(ARRAY[{buckets}]::int[]))",
    "DELETE FROM entries WHERE account_id IN (SELECT account_id FROM gone_accounts)
         OR posting_id IN (SELECT posting_id FROM gone_postings)",
    "DELETE FROM postings WHERE posting_id IN (SELECT posting_id FROM gone_postings)",
    "DELETE FROM holds WHERE account_id IN (SELECT account_id FROM gone_accounts)
         OR transfer_id IN (SELECT transfer_id FROM gone_transfers)",
    "DELETE FROM transfers WHERE transfer_id IN (SELECT transfer_id FROM gone_transfers)",
    "DELETE FROM tcc_barriers WHERE transfer_id IN
         (SELECT transfer_id FROM incoming_transfers WHERE to_user IN (SELECT user_id FROM gone_users))",
    "DELETE FROM incoming_transfers WHERE to_user IN (SELECT user_id FROM gone_users)",
    "DELETE FROM idempotency_keys WHERE bucket = ANY(ARRAY[{buckets}]::int[])
         OR (bucket IS NULL AND caller IN (SELECT user_id FROM gone_users))",
    "DELETE FROM payment_events WHERE payment_id IN
         (SELECT payment_id FROM payments WHERE user_id IN (SELECT user_id FROM gone_users))",
    "DELETE FROM payment_holds WHERE account_id IN (SELECT account_id FROM gone_accounts)",
    "DELETE FROM payments WHERE user_id IN (SELECT user_id FROM gone_users)",
    "DELETE FROM accounts WHERE account_id IN (SELECT account_id FROM gone_accounts)",
    "DELETE FROM users WHERE user_id IN (SELECT user_id FROM gone_users)",
];

/// Buckets whose leftovers one transaction deletes at most: a move's leftovers can be
/// millions of rows, and one transaction for all of them would hold back vacuum and
/// write its WAL in one burst while the shard serves. Cleaning buckets apart is what
/// moves cleaned at different times do anyway: a posting shared by two buckets of
/// different chunks gets a stand-in leg per chunk, and still balances.
pub const CHUNK: usize = 16;

/// Deletes the leftovers of every move that switched at least `grace` ago, shard by
/// shard, `CHUNK` buckets per transaction, and marks the moves cleaned. Safe to re-run:
/// a deletion already done finds nothing.
pub async fn run(router: &Router, grace: Duration) -> anyhow::Result<Cleaned> {
    run_paced(router, grace, 0.0).await
}

/// `run`, resting `nice` times as long as each chunk took before the next, as the mover
/// rests between its batches (`mover::Pace`: fixed batches of `CHUNK` buckets).
pub async fn run_paced(router: &Router, grace: Duration, nice: f64) -> anyhow::Result<Cleaned> {
    let pace = super::mover::Pace::fixed(CHUNK).resting(nice);
    router.refresh().await;
    let layout = router.layout();
    let mut cleaned = Cleaned::default();
    for target in &layout.shards {
        let client = target.client().await?;
        let rows = client
            .query(
                "SELECT m.bucket, m.source, m.switched_at < now() - $1 * interval '1 millisecond'
                 FROM bucket_moves m JOIN bucket_owners b ON b.bucket = m.bucket AND b.state = 'owned'
                 WHERE m.state = 'switched' AND m.target = $2 ORDER BY m.source, m.bucket",
                &[&(grace.as_millis() as f64), &target.name],
            )
            .await?;
        let mut by_source: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
        for row in &rows {
            if row.get::<_, bool>(2) {
                by_source.entry(row.get(1)).or_default().push(row.get(0));
            } else {
                cleaned.waiting += 1;
            }
        }
        for (source, buckets) in by_source {
            let shard = layout
                .shards
                .iter()
                .find(|s| s.name == source)
                .with_context(|| format!("the moves' source '{source}' is not a member"))?;
            let mut deleted = 0;
            let mut last = Duration::ZERO;
            for (index, chunk) in buckets.chunks(pace.size()).enumerate() {
                if index > 0 {
                    tokio::time::sleep(pace.rest_after(last)).await;
                }
                let began = std::time::Instant::now();
                deleted += delete_leftovers(shard, &target.name, chunk).await?;
                client
                    .execute(
                        "UPDATE bucket_moves SET state = 'cleaned', cleaned_at = now() WHERE bucket = ANY($1)",
                        &[&chunk],
                    )
                    .await?;
                cleaned.buckets += chunk.len();
                last = began.elapsed();
            }
            cleaned.rows += deleted;
            // The source's statistics, for the next move's plans (see mover::TargetStats).
            if deleted > 1000 {
                shard.client().await?.batch_execute(&super::copy::quick_analyze()).await?;
            }
        }
    }
    Ok(cleaned)
}

/// On the old shard, in one transaction: only buckets it says it gave to `target`.
async fn delete_leftovers(source: &crate::sharding::Shard, target: &str, buckets: &[i32]) -> anyhow::Result<u64> {
    let mut client = source.client().await?;
    let tx = client.transaction().await?;
    let moved: Vec<i32> = tx
        .query(
            "SELECT bucket FROM bucket_owners WHERE bucket = ANY($1) AND state = 'moved' AND owner = $2 FOR UPDATE",
            &[&buckets, &target],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if moved.is_empty() {
        return Ok(0);
    }
    write_standins(&tx, &moved).await?;
    let deleted = delete_rows(&tx, &moved).await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Before the legs that left are deleted: one leg per split posting (one with a leg
/// that stays: a wallet of another bucket, or a `resharding` leg) on the source's
/// `resharding` account, summing the legs of `buckets`' wallets, so the posting still
/// balances once they are gone. Only for buckets whose fence left this to cleanup
/// (`standins_pending`, V11); the same split as the copy's (`copy.rs`). The ids are
/// derived from the legs they stand for and the switch's epoch, negated: apart from the
/// ids of the legs a target writes for a copy (the epoch the source got the bucket at,
/// which for the bucket coming back here is this switch's), and the same on a re-run.
async fn write_standins(tx: &deadpool_postgres::Transaction<'_>, buckets: &[i32]) -> anyhow::Result<()> {
    tx.execute(
        "WITH gone AS (
             SELECT e.entry_id, e.posting_id, e.amount, e.created_at, a.currency, o.epoch
             FROM bucket_owners o JOIN users u ON u.bucket = o.bucket
                  JOIN accounts a ON a.user_id = u.user_id
                  JOIN entries e ON e.account_id = a.account_id
             WHERE o.bucket = ANY($1) AND o.standins_pending)
         INSERT INTO entries (entry_id, posting_id, account_id, amount, created_at)
         SELECT resharding_leg_id(min(g.entry_id::text)::uuid, -max(g.epoch)), g.posting_id, r.account_id,
                sum(g.amount), min(g.created_at)
         FROM gone g JOIN accounts r ON r.system_name = 'resharding' AND r.currency = g.currency
         WHERE EXISTS (SELECT 1 FROM entries x JOIN accounts xa ON xa.account_id = x.account_id
                                LEFT JOIN users xu ON xu.user_id = xa.user_id
                       WHERE x.posting_id = g.posting_id
                         AND (xa.system_name = 'resharding' OR (xa.user_id IS NOT NULL AND xu.bucket <> ALL($1))))
         GROUP BY g.posting_id, r.account_id
         HAVING sum(g.amount) <> 0
         ORDER BY min(g.created_at)
         ON CONFLICT (entry_id) DO NOTHING",
        &[&buckets],
    )
    .await?;
    tx.execute("UPDATE bucket_owners SET standins_pending = false WHERE bucket = ANY($1)", &[&buckets]).await?;
    Ok(())
}

/// Deletes, inside `tx`, the rows of `buckets`' users that no user the shard still
/// serves needs (`DELETES`). Also used by a fence to drop a target's provisional copy.
pub(crate) async fn delete_rows(tx: &deadpool_postgres::Transaction<'_>, buckets: &[i32]) -> anyhow::Result<u64> {
    // The append-only triggers let this transaction, and only it, delete.
    tx.batch_execute("SET LOCAL shardwallet.cleanup = 'on'").await?;
    // Bucket numbers are integers: safe to write into the SQL (CREATE TABLE AS takes no
    // parameters).
    let list = buckets.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let mut deleted = 0;
    for statement in DELETES {
        deleted += tx.execute(&statement.replace("{buckets}", &list), &[]).await?;
    }
    tx.batch_execute("DROP TABLE gone_users, gone_accounts, gone_postings, gone_transfers").await?;
    Ok(deleted)
}
