//! Cluster members: adding an empty shard, and the view of every shard with what it owns.
use anyhow::Context;
use serde::Serialize;

use crate::{
    sharding::{self, ownership, Router},
    storage::{identity, migrate},
};

/// Creates the database if missing, migrates it and records it, on every shard, as a
/// member that owns no bucket yet (at a new map epoch). Re-running it for a member
/// already recorded with the same name changes nothing.
pub async fn add(router: &Router, name: &str, url: &str) -> anyhow::Result<i64> {
    if !sharding::valid_shard_name(name) {
        anyhow::bail!("shard name must be 1-63 of [a-z0-9_-], got '{name}'");
    }
    router.refresh().await;
    let layout = router.layout();
    let config = sharding::parse_url(name, url)?;
    let url = sharding::url_without_password(&config);
    if let Some(existing) = layout.map.shards().iter().find(|s| s.name == name) {
        let known = sharding::url_without_password(&existing.config);
        if known != url {
            anyhow::bail!("shard '{name}' is already a member, at {known}");
        }
        println!("shard {name} is already a member (map epoch {})", layout.map.epoch());
        return Ok(layout.map.epoch());
    }
    migrate::ensure_database(&config).await.with_context(|| format!("shard '{name}'"))?;
    migrate::run(name, &config).await.with_context(|| format!("migrating shard '{name}'"))?;
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    match identity::read(&client).await? {
        Some(recorded) if recorded.shard_name != name => {
            anyhow::bail!("the database at {url} is shard '{}' already", recorded.shard_name)
        }
        Some(_) => {}
        None => {
            let identity = identity::Identity {
                shard_name: name.to_string(),
                fingerprint: "joined".into(),
                buckets: layout.map.buckets() as i32,
                owned_ranges: String::new(),
            };
            identity::write(&client, &identity).await?;
        }
    }
    let epoch = layout.map.epoch() + 1;
    // The newcomer learns every member first, then every member learns the newcomer:
    // an instance that reads any shard after this finds the new epoch.
    let mut members: Vec<(String, String)> =
        layout.map.shards().iter().map(|s| (s.name.clone(), sharding::url_without_password(&s.config))).collect();
    ownership::record_members(&client, &members, sharding::FILE_EPOCH).await?;
    members.clear();
    members.push((name.to_string(), url.clone()));
    ownership::record_members(&client, &members, epoch).await?;
    drop(client);
    let _ = conn.await;
    for shard in &layout.shards {
        let client = shard.client().await?;
        ownership::record_members(&**client, &members, epoch)
            .await
            .with_context(|| format!("recording {name} on shard '{}'", shard.name))?;
    }
    router.refresh().await;
    Ok(epoch)
}

/// Every shard with what it owns, as `shards list` and `GET /v1/admin/shards` show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ClusterShards)]
pub struct Cluster {
    /// The map epoch routed by: grows with every shard added and bucket moved.
    pub epoch: i64,
    pub buckets: u32,
    pub shards: Vec<ShardInfo>,
    /// Buckets some shard is receiving right now.
    pub moving: Vec<Moving>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShardInfo {
    pub name: String,
    /// The connection string, without password.
    pub url: String,
    /// Owned buckets as ranges, e.g. `0-5460`.
    pub buckets: Vec<String>,
    pub bucket_count: usize,
    /// Users and wallets in the buckets this shard owns (`null` when unreachable).
    pub users: Option<i64>,
    pub wallets: Option<i64>,
    pub reachable: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Moving {
    pub bucket: u32,
    pub to: String,
}

pub async fn list(router: &Router) -> anyhow::Result<Cluster> {
    router.refresh().await;
    let layout = router.layout();
    // Buckets a mover left between the two commits of their switch (the source gave them
    // away, the target has not taken them): counted on the source, as `verify` does,
    // until the next run takes them over. Read under the switch lock, as the audit is
    // (`ownership::SWITCH_LOCK`): a switch committing meanwhile would be counted on both
    // shards. Not counted when the first shard (the lock's) or a shard does not answer.
    let counting = async {
        let switching = crate::ledger::verify::Switching::read(router).await.ok();
        let switching = &switching;
        let counts = futures::future::join_all(layout.shards.iter().map(|shard| async move {
            let client = shard.client().await.ok()?;
            // Only users of buckets the shard owns: a copy left behind by a move is not counted.
            let stranded: Vec<i32> = switching.as_ref().map(|s| s.of(&shard.name).to_vec()).unwrap_or_default();
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM users u JOIN bucket_owners b
                               ON b.bucket = u.bucket AND (b.state = 'owned' OR b.bucket = ANY($1))),
                            (SELECT count(*) FROM accounts a JOIN users u USING (user_id)
                               JOIN bucket_owners b ON b.bucket = u.bucket AND (b.state = 'owned' OR b.bucket = ANY($1)))",
                    &[&stranded],
                )
                .await
                .ok()?;
            let incoming = client
                .query("SELECT bucket FROM bucket_owners WHERE state = 'incoming' ORDER BY bucket", &[])
                .await
                .ok()?;
            let incoming: Vec<u32> = incoming.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
            Some((row.get::<_, i64>(0), row.get::<_, i64>(1), incoming))
        }))
        .await;
        anyhow::Ok(counts)
    };
    let lock = match layout.shards.first() {
        Some(first) => first.client().await.ok().map(deadpool_postgres::Object::take),
        None => None,
    };
    let counts = match &lock {
        Some(lock) => {
            crate::storage::holding(lock, ownership::SWITCH_LOCK, crate::storage::LockMode::Shared, counting).await?
        }
        None => counting.await?,
    };
    let mut moving = Vec::new();
    let shards = layout
        .map
        .shards()
        .iter()
        .zip(counts)
        .map(|(spec, counts)| {
            if let Some((_, _, incoming)) = &counts {
                moving.extend(incoming.iter().map(|&bucket| Moving { bucket, to: spec.name.clone() }));
            }
            ShardInfo {
                name: spec.name.clone(),
                url: sharding::url_without_password(&spec.config),
                buckets: spec.ranges.iter().map(|r| format!("{}-{}", r.start(), r.end())).collect(),
                bucket_count: spec.ranges.iter().map(|r| (r.end() - r.start() + 1) as usize).sum(),
                users: counts.as_ref().map(|c| c.0),
                wallets: counts.as_ref().map(|c| c.1),
                reachable: counts.is_some(),
            }
        })
        .collect();
    Ok(Cluster { epoch: layout.map.epoch(), buckets: layout.map.buckets(), shards, moving })
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "map epoch {}, {} buckets", self.epoch, self.buckets)?;
        writeln!(f, "{:<12} {:>8} {:>10} {:>10}  {:<28} url", "shard", "buckets", "users", "wallets", "ranges")?;
        for s in &self.shards {
            let count = |n: Option<i64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
            let ranges = if s.buckets.is_empty() { "(none)".to_string() } else { s.buckets.join(",") };
            writeln!(
                f,
                "{:<12} {:>8} {:>10} {:>10}  {:<28} {}{}",
                s.name,
                s.bucket_count,
                count(s.users),
                count(s.wallets),
                ranges,
                s.url,
                if s.reachable { "" } else { "  (unreachable)" }
            )?;
        }
        if self.moving.is_empty() {
            writeln!(f, "no move in progress")
        } else {
            writeln!(f, "{} bucket(s) moving", self.moving.len())?;
            for m in &self.moving {
                writeln!(f, "  bucket {} -> {}", m.bucket, m.to)?;
            }
            Ok(())
        }
    }
}
