//! Bucket ownership as the shards record it: the check every shard transaction makes,
//! and the recorded map the router refreshes from.
//!
//! Each shard keeps `bucket_owners` (V7): a row per bucket it owns ('owned'), is being
//! given ('incoming'), or gave away ('moved', naming the new owner). A write takes its
//! bucket's advisory lock in shared mode inside its own transaction and must then find
//! the row 'owned'; a move's fence holds that lock exclusively (and the row FOR UPDATE,
//! which background scans skip) while it copies the last rows and flips the row to
//! 'moved' in the same transaction. A write therefore either commits before the fence
//! (and is copied by it) or sees the flip and fails, whatever map its instance holds.
use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::Error;

/// Held (session advisory lock, on the map's first shard) exclusively by the mover from
/// before a fence until both sides of its switch have committed, and shared by
/// `verify` for its whole run: no bucket changes owner while an audit reads the shards
/// one after the other, so it counts every bucket once.
pub const SWITCH_LOCK: i64 = 0x5357_5357_4954_4348;

/// A condition for a shard's background deletes (pruning of final holds, barriers,
/// expired keys, settled payments' holds and callbacks): true while no bucket is being
/// copied onto the shard. An incoming bucket's rows must stay exactly what the mover
/// copied until its switch: the fence counts them before it and adds only what its
/// catch-up writes (`resharding::copy::counts_after_catch_up`). So a shard receiving
/// buckets prunes nothing until the move is over; pruning is housekeeping and catches up.
macro_rules! nothing_incoming {
    () => {
        "NOT EXISTS (SELECT 1 FROM bucket_owners WHERE state = 'incoming')"
    };
}

pub(crate) use nothing_incoming;

/// What a shard says about one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Owned,
    Incoming,
    Moved { owner: String },
}

impl Claim {
    pub fn as_str(&self) -> &'static str {
        match self {
            Claim::Owned => "owned",
            Claim::Incoming => "incoming",
            Claim::Moved { .. } => "moved",
        }
    }

    fn from_row(state: &str, owner: String) -> Option<Self> {
        match state {
            "owned" => Some(Claim::Owned),
            "incoming" => Some(Claim::Incoming),
            "moved" => Some(Claim::Moved { owner }),
            _ => None,
        }
    }
}

/// The advisory-lock key space of buckets (`claim_bucket`, V10): a fence takes
/// `pg_advisory_xact_lock(BUCKET_LOCKS, bucket)`, a write the shared one.
pub const BUCKET_LOCKS: i32 = 1_398_227_540;

/// Fails unless the shard owns `bucket` now; holds the bucket's advisory lock in shared
/// mode until the transaction ends (`claim_bucket`, V10), so a fence cannot begin under a
/// write in flight, and a write that waited for a fence reads the switched row.
pub async fn check_write(client: &impl GenericClient, bucket: u32) -> Result<(), Error> {
    check(client, bucket, "SELECT state, owner, epoch FROM claim_bucket($1)").await
}

/// Fails unless the shard owns `bucket` now (no lock). Reads made afterwards on the same
/// session read the owner's data: a copy left behind is deleted only a grace period
/// after its bucket moved.
pub async fn check_read(client: &impl GenericClient, bucket: u32) -> Result<(), Error> {
    check(client, bucket, "SELECT state, owner, epoch FROM bucket_owners WHERE bucket = $1").await
}

async fn check(client: &impl GenericClient, bucket: u32, sql: &str) -> Result<(), Error> {
    let statement = client.prepare_cached(sql).await.map_err(db_error)?;
    let row = client.query_opt(&statement, &[&(bucket as i32)]).await.map_err(db_error)?;
    verdict(client, bucket, row).await
}

fn db_error(source: tokio_postgres::Error) -> Error {
    Error::Db { shard: "(this shard)".into(), source }
}

/// Ok when owned; otherwise the error, naming this shard (read only on this rare path).
async fn verdict(client: &impl GenericClient, bucket: u32, row: Option<tokio_postgres::Row>) -> Result<(), Error> {
    let (claim, epoch) = match row {
        Some(row) => {
            let (state, owner, epoch): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            (Claim::from_row(&state, owner), epoch)
        }
        None => (None, 0),
    };
    if claim == Some(Claim::Owned) {
        return Ok(());
    }
    let shard = match client.query_opt("SELECT shard_name FROM shard_identity", &[]).await {
        Ok(Some(row)) => row.get(0),
        _ => "(unknown)".to_string(),
    };
    Err(match claim {
        Some(Claim::Incoming) => Error::Moving { bucket, shard },
        Some(Claim::Moved { owner }) => Error::NotOwner { bucket, shard, owner: Some(owner), epoch },
        _ => Error::NotOwner { bucket, shard, owner: None, epoch },
    })
}

/// One shard's records: its claims on buckets (with their epochs) and the members it
/// knows of.
#[derive(Debug, Default)]
pub struct Records {
    pub claims: Vec<(u32, Claim, i64)>,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub url: String,
    pub added_epoch: i64,
}

pub async fn read_records(client: &impl GenericClient) -> Result<Records, tokio_postgres::Error> {
    let claims = client
        .query("SELECT bucket, state, owner, epoch FROM bucket_owners ORDER BY bucket", &[])
        .await?
        .into_iter()
        .filter_map(|r| {
            let bucket: i32 = r.get(0);
            let state: String = r.get(1);
            Claim::from_row(&state, r.get(2)).map(|claim| (bucket as u32, claim, r.get(3)))
        })
        .collect();
    let members = client
        .query("SELECT name, url, added_epoch FROM cluster_shards ORDER BY added_epoch, name", &[])
        .await?
        .into_iter()
        .map(|r| Member { name: r.get(0), url: r.get(1), added_epoch: r.get(2) })
        .collect();
    Ok(Records { claims, members })
}

/// Who owns each bucket by the records of every shard read: the newest 'owned' or
/// 'moved' claim wins ('incoming' is never authority). `None` where no shard said.
#[derive(Debug, Default)]
pub struct Resolved {
    pub owner: BTreeMap<u32, String>,
    pub epoch: i64,
    pub members: BTreeMap<String, Member>,
}

pub fn resolve<'a>(records: impl IntoIterator<Item = (&'a str, &'a Records)>) -> Resolved {
    let mut best: BTreeMap<u32, (i64, String)> = BTreeMap::new();
    let mut resolved = Resolved::default();
    for (shard, records) in records {
        for member in &records.members {
            resolved.epoch = resolved.epoch.max(member.added_epoch);
            resolved.members.entry(member.name.clone()).or_insert_with(|| member.clone());
        }
        for (bucket, claim, epoch) in &records.claims {
            resolved.epoch = resolved.epoch.max(*epoch);
            let owner = match claim {
                Claim::Owned => shard.to_string(),
                Claim::Moved { owner } => owner.clone(),
                Claim::Incoming => continue,
            };
            match best.get(bucket) {
                Some((e, _)) if *e >= *epoch => {}
                _ => {
                    best.insert(*bucket, (*epoch, owner));
                }
            }
        }
    }
    resolved.owner = best.into_iter().map(|(b, (_, o))| (b, o)).collect();
    resolved
}

/// Records a shard's part of the initial map (epoch 1) and the file's members, unless
/// the shard has recorded ownership already. Returns whether it wrote anything.
pub async fn record_initial(
    client: &impl tokio_postgres::GenericClient,
    shard: &str,
    ranges: &[std::ops::RangeInclusive<u32>],
    members: &[(String, String)],
) -> Result<bool, tokio_postgres::Error> {
    let recorded: i64 = client.query_one("SELECT count(*) FROM bucket_owners", &[]).await?.get(0);
    let known: i64 = client.query_one("SELECT count(*) FROM cluster_shards", &[]).await?.get(0);
    if recorded > 0 || known > 0 {
        return Ok(false);
    }
    for range in ranges {
        client
            .execute(
                "INSERT INTO bucket_owners (bucket, state, owner, epoch)
                 SELECT b, 'owned', $3, $4 FROM generate_series($1::int, $2::int) AS b",
                &[&(*range.start() as i32), &(*range.end() as i32), &shard, &super::FILE_EPOCH],
            )
            .await?;
    }
    record_members(client, members, super::FILE_EPOCH).await?;
    Ok(true)
}

/// Adds members (name, url without password) at `epoch`; known names are left alone.
pub async fn record_members(
    client: &impl tokio_postgres::GenericClient,
    members: &[(String, String)],
    epoch: i64,
) -> Result<(), tokio_postgres::Error> {
    for (name, url) in members {
        client
            .execute(
                "INSERT INTO cluster_shards (name, url, added_epoch) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[name, url, &epoch],
            )
            .await?;
    }
    Ok(())
}

/// `check_write` for many buckets at once: takes their advisory locks in shared mode, in
/// bucket order (so two such claims, or a claim and a fence, cannot wait in a circle),
/// then reads which of them this shard owns, in a statement after the grants. Returns
/// the owned ones; writing to any other is the caller's to refuse.
pub async fn claim_owned(client: &impl GenericClient, buckets: &[u32]) -> Result<Vec<u32>, Error> {
    let buckets: Vec<i32> = buckets.iter().map(|&b| b as i32).collect();
    let lock = client
        .prepare_cached(
            "SELECT count(*) FROM (SELECT pg_advisory_xact_lock_shared($2, s.b)
                                   FROM (SELECT DISTINCT b FROM unnest($1::integer[]) AS b ORDER BY 1) s) l",
        )
        .await
        .map_err(db_error)?;
    client.query_one(&lock, &[&buckets, &BUCKET_LOCKS]).await.map_err(db_error)?;
    let owned = client
        .prepare_cached("SELECT bucket FROM bucket_owners WHERE bucket = ANY($1) AND state = 'owned'")
        .await
        .map_err(db_error)?;
    let rows = client.query(&owned, &[&buckets]).await.map_err(db_error)?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}
