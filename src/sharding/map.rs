//! The shard map: which shard owns which buckets, loaded from `shard-map.toml` and
//! validated before anything connects.
use std::{collections::BTreeMap, ops::RangeInclusive, path::Path};

use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64;

use super::Error;

/// Largest bucket count: ids embed the bucket in 16 bits (see `domain::ids`).
pub const MAX_BUCKETS: u32 = 65_536;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    buckets: u32,
    shards: Vec<RawShard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    name: String,
    url: String,
    buckets: Vec<String>,
}

/// One shard: a name, where its database is, and the bucket ranges it owns.
#[derive(Clone)]
pub struct ShardSpec {
    pub name: String,
    pub config: tokio_postgres::Config,
    pub ranges: Vec<RangeInclusive<u32>>,
}

impl std::fmt::Debug for ShardSpec {
    // The connection config can carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSpec").field("name", &self.name).field("ranges", &self.ranges).finish_non_exhaustive()
    }
}

impl ShardSpec {
    /// The owned ranges as written in the map, e.g. `0-5460,9000-9999`.
    pub fn ranges_text(&self) -> String {
        self.ranges.iter().map(|r| format!("{}-{}", r.start(), r.end())).collect::<Vec<_>>().join(",")
    }
}

/// A validated shard map: every bucket is owned by exactly one shard.
///
/// The file's map is epoch 1, the cluster's initial layout. Every change the shards
/// record (a shard added, a bucket moved) gives a higher epoch; see `recorded`.
#[derive(Debug, Clone)]
pub struct ShardMap {
    buckets: u32,
    shards: Vec<ShardSpec>,
    /// bucket -> index into `shards`.
    owner: Vec<u16>,
    epoch: i64,
}

/// The epoch of the map written in `shard-map.toml`.
pub const FILE_EPOCH: i64 = 1;

impl ShardMap {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
            entry: path.display().to_string(),
            reason: format!("cannot read the shard map: {e}"),
        })?;
        Self::parse(&text, |name| std::env::var(password_env_var(name)).ok())
    }

    /// Parses and validates a map. `password_for` supplies a password override per shard
    /// name (from the environment in production; a closure in tests).
    pub fn parse(text: &str, password_for: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let raw: RawMap =
            toml::from_str(text).map_err(|e| Error::Invalid { entry: "shard-map".into(), reason: e.to_string() })?;
        if raw.buckets == 0 || raw.buckets > MAX_BUCKETS {
            return Err(invalid("buckets", format!("must be between 1 and {MAX_BUCKETS}, got {}", raw.buckets)));
        }
        if raw.shards.is_empty() {
            return Err(invalid("shards", "at least one shard is required".into()));
        }
        let mut owner: Vec<Option<u16>> = vec![None; raw.buckets as usize];
        let mut shards = Vec::with_capacity(raw.shards.len());
        let mut names = BTreeMap::new();
        for (index, shard) in raw.shards.into_iter().enumerate() {
            let entry = format!("shards[{index}] ({})", shard.name);
            if !valid_shard_name(&shard.name) {
                return Err(invalid(&entry, "name must be 1-63 of [a-z0-9_-]".into()));
            }
            if names.insert(shard.name.clone(), index).is_some() {
                return Err(invalid(&entry, format!("duplicate shard name '{}'", shard.name)));
            }
            let mut config: tokio_postgres::Config =
                shard.url.parse().map_err(|e| invalid(&entry, format!("bad connection string: {e}")))?;
            if config.get_dbname().is_none() {
                return Err(invalid(&entry, "connection string names no database".into()));
            }
            if let Some(password) = password_for(&shard.name) {
                config.password(password);
            }
            let mut ranges = Vec::new();
            for text in &shard.buckets {
                let range = parse_range(text).ok_or_else(|| {
                    invalid(&entry, format!("bad bucket range '{text}' (expected 'FIRST-LAST' or 'N')"))
                })?;
                if *range.end() >= raw.buckets {
                    return Err(invalid(
                        &entry,
                        format!("bucket range '{text}' goes past the last bucket {}", raw.buckets - 1),
                    ));
                }
                for bucket in range.clone() {
                    if let Some(other) = owner[bucket as usize] {
                        let other_name = &shards
                            .get(other as usize)
                            .map(|s: &ShardSpec| s.name.clone())
                            .unwrap_or_else(|| shard.name.clone());
                        return Err(invalid(
                            &entry,
                            format!("bucket {bucket} (in '{text}') is also owned by shard '{other_name}'"),
                        ));
                    }
                    owner[bucket as usize] = Some(index as u16);
                }
                ranges.push(range);
            }
            shards.push(ShardSpec { name: shard.name, config, ranges });
        }
        if let Some(gap) = owner.iter().position(Option::is_none) {
            let end = owner[gap..].iter().position(Option::is_some).map_or(raw.buckets - 1, |n| (gap + n - 1) as u32);
            return Err(invalid("buckets", format!("buckets {gap}-{end} are owned by no shard")));
        }
        let owner = owner.into_iter().map(|o| o.unwrap_or_default()).collect();
        Ok(Self { buckets: raw.buckets, shards, owner, epoch: FILE_EPOCH })
    }

    /// A map from per-bucket owners (indices into `shards`), as the shards recorded it.
    /// Each shard's ranges are derived from `owner`.
    pub fn from_owners(buckets: u32, mut shards: Vec<ShardSpec>, owner: Vec<u16>, epoch: i64) -> Self {
        for (index, spec) in shards.iter_mut().enumerate() {
            spec.ranges = ranges_of(&owner, index as u16);
        }
        Self { buckets, shards, owner, epoch }
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn owners(&self) -> &[u16] {
        &self.owner
    }

    /// The map in `shard-map.toml`'s format (connection strings without passwords).
    pub fn to_toml(&self) -> String {
        let mut out = format!("# map epoch {}\nbuckets = {}\n", self.epoch, self.buckets);
        for spec in &self.shards {
            let ranges: Vec<String> = spec.ranges.iter().map(|r| format!("\"{}-{}\"", r.start(), r.end())).collect();
            out.push_str(&format!(
                "\n[[shards]]\nname = \"{}\"\nurl = \"{}\"\nbuckets = [{}]\n",
                spec.name,
                url_without_password(&spec.config),
                ranges.join(", ")
            ));
        }
        out
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn shards(&self) -> &[ShardSpec] {
        &self.shards
    }

    /// The bucket of a user id. These values must never change between versions:
    /// see the golden vectors in `sharding::tests`.
    pub fn bucket_of(&self, user_id: &str) -> u32 {
        bucket_of(user_id, self.buckets)
    }

    /// The index of the shard that owns `bucket`, or `None` past the last bucket.
    pub fn shard_of_bucket(&self, bucket: u32) -> Option<usize> {
        self.owner.get(bucket as usize).map(|&i| i as usize)
    }

    /// A stable fingerprint of the routing (bucket count, names and ranges, not the
    /// connection strings: a shard may move to another server without re-routing anyone).
    pub fn fingerprint(&self) -> String {
        let canonical =
            self.shards.iter().map(|s| format!("{}={}", s.name, s.ranges_text())).collect::<Vec<_>>().join(";");
        format!("{:016x}", xxh3_64(format!("buckets={};{canonical}", self.buckets).as_bytes()))
    }
}

/// The runs of buckets owned by shard `index`, as inclusive ranges.
pub fn ranges_of(owner: &[u16], index: u16) -> Vec<RangeInclusive<u32>> {
    runs((0..owner.len() as u32).filter(|&b| owner[b as usize] == index))
}

/// Ascending buckets as inclusive ranges of consecutive ones.
pub fn runs(buckets: impl IntoIterator<Item = u32>) -> Vec<RangeInclusive<u32>> {
    let mut ranges: Vec<RangeInclusive<u32>> = Vec::new();
    for bucket in buckets {
        match ranges.last_mut() {
            Some(last) if *last.end() + 1 == bucket => *last = *last.start()..=bucket,
            _ => ranges.push(bucket..=bucket),
        }
    }
    ranges
}

/// A connection string for `config` that never carries its password.
pub fn url_without_password(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Parses a connection string, taking the password from the environment when set.
pub fn parse_url(name: &str, url: &str) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| invalid(name, format!("bad connection string: {e}")))?;
    if config.get_dbname().is_none() {
        return Err(invalid(name, "connection string names no database".into()));
    }
    if let Ok(password) = std::env::var(password_env_var(name)) {
        config.password(password);
    }
    Ok(config)
}

/// `bucket = xxh3_64(user_id) % buckets`.
pub fn bucket_of(user_id: &str, buckets: u32) -> u32 {
    (xxh3_64(user_id.as_bytes()) % u64::from(buckets)) as u32
}

/// The environment variable that overrides a shard's password.
pub fn password_env_var(shard_name: &str) -> String {
    format!("SHARDWALLET_SHARD_{}_PASSWORD", shard_name.to_ascii_uppercase().replace('-', "_"))
}

pub fn valid_shard_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub fn parse_range(text: &str) -> Option<RangeInclusive<u32>> {
    let text = text.trim();
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let n = text.parse().ok()?;
            (n, n)
        }
    };
    (first <= last).then_some(first..=last)
}

fn invalid(entry: &str, reason: String) -> Error {
    Error::Invalid { entry: entry.to_string(), reason }
}
