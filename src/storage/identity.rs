//! Each shard remembers which part of the shard map it is. `migrate` records it; `serve`
//! refuses to start when `shard-map.toml` and a shard disagree, because routing users to
//! a shard that does not hold their money would strand it.
use tokio_postgres::GenericClient;

use crate::sharding::{ShardMap, ShardSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub shard_name: String,
    pub fingerprint: String,
    pub buckets: i32,
    pub owned_ranges: String,
}

impl Identity {
    pub fn expected(map: &ShardMap, spec: &ShardSpec) -> Self {
        Self {
            shard_name: spec.name.clone(),
            fingerprint: map.fingerprint(),
            buckets: map.buckets() as i32,
            owned_ranges: spec.ranges_text(),
        }
    }
}

pub async fn read(client: &impl GenericClient) -> Result<Option<Identity>, tokio_postgres::Error> {
    let row =
        client.query_opt("SELECT shard_name, map_fingerprint, buckets, owned_ranges FROM shard_identity", &[]).await?;
    Ok(row.map(|r| Identity { shard_name: r.get(0), fingerprint: r.get(1), buckets: r.get(2), owned_ranges: r.get(3) }))
}

pub async fn write(client: &impl GenericClient, id: &Identity) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO shard_identity (shard_name, map_fingerprint, buckets, owned_ranges) VALUES ($1, $2, $3, $4)
             ON CONFLICT (singleton) DO UPDATE SET shard_name = EXCLUDED.shard_name,
                 map_fingerprint = EXCLUDED.map_fingerprint, buckets = EXCLUDED.buckets,
                 owned_ranges = EXCLUDED.owned_ranges, recorded_at = now()",
            &[&id.shard_name, &id.fingerprint, &id.buckets, &id.owned_ranges],
        )
        .await?;
    Ok(())
}

/// Why a shard's recorded identity does not match the map, with what to do about it.
pub fn mismatch(recorded: &Identity, expected: &Identity) -> Option<String> {
    if recorded == expected {
        return None;
    }
    Some(format!(
        "shard '{}' was migrated as shard '{}' owning buckets {} of {} (map fingerprint {}), \
         but shard-map.toml now says shard '{}' owns buckets {} of {} (fingerprint {}). \
         Serving would route users away from the shard that holds their money. \
         Restore the shard map that was migrated, or move the affected users' data first \
         and then record the new map with `shardwallet migrate --accept-new-shard-map`.",
        expected.shard_name,
        recorded.shard_name,
        recorded.owned_ranges,
        recorded.buckets,
        recorded.fingerprint,
        expected.shard_name,
        expected.owned_ranges,
        expected.buckets,
        expected.fingerprint,
    ))
}
