//! Which shard: the one place that turns a user id or a routable id into a shard.
//!
//! `map` holds the validated `shard-map.toml`; `Router` pairs it with one connection
//! pool per shard. Nothing else in the crate computes a bucket.
mod map;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

pub use map::{bucket_of, password_env_var, ShardMap, ShardSpec, MAX_BUCKETS};

use crate::domain::{RoutableId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shard map entry {entry}: {reason}")]
    Invalid { entry: String, reason: String },
    #[error("id routes to bucket {0}, which this shard map does not have")]
    UnknownBucket(u32),
    #[error("shard {shard} is unavailable: {source}")]
    Unavailable {
        shard: String,
        #[source]
        source: deadpool_postgres::PoolError,
    },
}

/// One shard at run time: its name, its index in the map and its pool.
pub struct Shard {
    pub index: usize,
    pub name: String,
    pub pool: Pool,
}

impl Shard {
    /// A pooled connection; the error names the shard.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|source| Error::Unavailable { shard: self.name.clone(), source })
    }
}

/// The shard router: user id or routable id -> shard.
pub struct Router {
    map: ShardMap,
    shards: Vec<Arc<Shard>>,
}

impl Router {
    /// Builds one lazily connecting pool per shard. No connection is made here.
    pub fn new(map: ShardMap, pool_size: usize, connect_timeout: Duration) -> anyhow::Result<Self> {
        let shards = map
            .shards()
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let mut config = spec.config.clone();
                config.connect_timeout(connect_timeout);
                config.application_name("shardwallet");
                // A request waiting on a row or key lock gives up after 10 s: the API
                // answers 409/503 instead of hanging; workers retry.
                config.options("-c lock_timeout=10000");
                let manager = Manager::from_config(
                    config,
                    tokio_postgres::NoTls,
                    ManagerConfig { recycling_method: RecyclingMethod::Fast },
                );
                let pool = Pool::builder(manager)
                    .max_size(pool_size)
                    .runtime(Runtime::Tokio1)
                    .create_timeout(Some(connect_timeout))
                    .wait_timeout(Some(Duration::from_secs(10)))
                    .build()?;
                Ok(Arc::new(Shard { index, name: spec.name.clone(), pool }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { map, shards })
    }

    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    pub fn bucket_of_user(&self, user: &UserId) -> u32 {
        self.map.bucket_of(user.as_str())
    }

    /// The shard that owns a user.
    pub fn for_user(&self, user: &UserId) -> &Arc<Shard> {
        let bucket = self.bucket_of_user(user);
        // Every bucket below `buckets` has an owner: checked when the map was loaded.
        let index = self.map.shard_of_bucket(bucket).unwrap_or_default();
        &self.shards[index]
    }

    /// The shard that owns the user a routable id (transfer or entry id) was minted for.
    pub fn for_id(&self, id: &RoutableId) -> Result<&Arc<Shard>, Error> {
        let bucket = u32::from(id.bucket());
        self.map.shard_of_bucket(bucket).map(|i| &self.shards[i]).ok_or(Error::UnknownBucket(bucket))
    }

    /// A fresh id that routes back to `user`'s shard.
    pub fn new_id_for(&self, user: &UserId) -> RoutableId {
        RoutableId::new(self.bucket_of_user(user) as u16)
    }

    pub fn same_shard(&self, a: &UserId, b: &UserId) -> bool {
        self.for_user(a).index == self.for_user(b).index
    }
}

#[cfg(test)]
mod tests;
