//! Which shard: the one place that turns a user id or a routable id into a shard.
//!
//! `map` holds a validated shard map; `ownership` what the shards themselves record
//! about their buckets. `Router` pairs the newest map it knows with one connection pool
//! per shard, and refreshes it when a shard says a bucket moved. Nothing else in the
//! crate computes a bucket.
mod map;
pub mod ownership;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

pub use map::{
    bucket_of, parse_range, parse_url, password_env_var, ranges_of, runs, url_without_password, valid_shard_name,
    ShardMap, ShardSpec, FILE_EPOCH, MAX_BUCKETS,
};

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
    /// The shard does not own the bucket (any more, or yet): nothing was written there.
    #[error("bucket {bucket} is not owned by shard {shard}{}", owner.as_ref().map(|o| format!(": it moved to {o} at map epoch {epoch}")).unwrap_or_default())]
    NotOwner { bucket: u32, shard: String, owner: Option<String>, epoch: i64 },
    /// The bucket is being copied onto this shard and is not writable here yet.
    #[error("bucket {bucket} is moving onto shard {shard}")]
    Moving { bucket: u32, shard: String },
    #[error("shard {shard}: {source}")]
    Db {
        shard: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Error {
    /// The bucket's owner changed under the request: refresh the map and try once more.
    pub fn is_moved(&self) -> bool {
        matches!(self, Error::NotOwner { .. } | Error::Moving { .. })
    }
}

/// Errors that may say "the bucket moved": the router's retry looks at them.
pub trait MaybeMoved {
    fn is_moved(&self) -> bool;
}

impl MaybeMoved for Error {
    fn is_moved(&self) -> bool {
        Error::is_moved(self)
    }
}

/// The outcome of one attempt of `Router::with_owner`: done, or refused because the
/// bucket moved (with the work handed back, not run).
pub enum Attempt<T, Op> {
    Done(T),
    Moved(Op, Error),
}

/// One shard at run time: its name, its index in the router and its pool.
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

    /// Fails inside `tx` unless this shard owns `bucket`; see `ownership::check_write`.
    pub async fn check_write(&self, tx: &impl deadpool_postgres::GenericClient, bucket: u32) -> Result<(), Error> {
        ownership::check_write(tx, bucket).await
    }

    /// `check_write` for work that hands itself back when the bucket moved
    /// (`Router::with_owner`): `Ok(Some(why))` when it moved, `Ok(None)` when owned.
    pub async fn moved_away(
        &self,
        tx: &impl deadpool_postgres::GenericClient,
        bucket: u32,
    ) -> Result<Option<Error>, Error> {
        handed_back(self.check_write(tx, bucket).await)
    }

    /// `check_read` for a read that hands itself back when the bucket moved
    /// (`Router::with_owner`): `Ok(Some(why))` when this shard does not serve it.
    pub async fn not_serving(
        &self,
        tx: &impl deadpool_postgres::GenericClient,
        bucket: u32,
    ) -> Result<Option<Error>, Error> {
        handed_back(self.check_read(tx, bucket).await)
    }

    /// Fails unless this shard owns `bucket` now (no lock); reads in the same snapshot
    /// read the owner's data.
    pub async fn check_read(&self, client: &impl deadpool_postgres::GenericClient, bucket: u32) -> Result<(), Error> {
        ownership::check_read(client, bucket).await
    }
}

/// A check's verdict for work that hands itself back: `Some(why)` when the bucket moved.
fn handed_back(checked: Result<(), Error>) -> Result<Option<Error>, Error> {
    match checked {
        Ok(()) => Ok(None),
        Err(moved) if moved.is_moved() => Ok(Some(moved)),
        Err(e) => Err(e),
    }
}

/// The map a router routes by, with a pool per shard of it (indices match).
pub struct Layout {
    pub map: ShardMap,
    pub shards: Vec<Arc<Shard>>,
}

/// The shard router: user id or routable id -> shard.
pub struct Router {
    layout: RwLock<Arc<Layout>>,
    pool_size: usize,
    connect_timeout: Duration,
    /// One refresh at a time; one that finished after a caller asked serves it too.
    refreshing: tokio::sync::Mutex<Instant>,
}

impl Router {
    /// Builds one lazily connecting pool per shard. No connection is made here.
    pub fn new(map: ShardMap, pool_size: usize, connect_timeout: Duration) -> anyhow::Result<Self> {
        let shards = map
            .shards()
            .iter()
            .enumerate()
            .map(|(index, spec)| pool(index, spec, pool_size, connect_timeout))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            layout: RwLock::new(Arc::new(Layout { map, shards })),
            pool_size,
            connect_timeout,
            refreshing: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    /// The map and shards routed by now.
    pub fn layout(&self) -> Arc<Layout> {
        match self.layout.read() {
            Ok(layout) => layout.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn epoch(&self) -> i64 {
        self.layout().map.epoch()
    }

    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.layout().shards.clone()
    }

    pub fn bucket_of_user(&self, user: &UserId) -> u32 {
        self.layout().map.bucket_of(user.as_str())
    }

    /// The shard that owns `bucket` by this router's map.
    pub fn for_bucket(&self, bucket: u32) -> Result<Arc<Shard>, Error> {
        let layout = self.layout();
        layout.map.shard_of_bucket(bucket).map(|i| layout.shards[i].clone()).ok_or(Error::UnknownBucket(bucket))
    }

    /// The shard that owns a user.
    pub fn for_user(&self, user: &UserId) -> Arc<Shard> {
        let layout = self.layout();
        let bucket = layout.map.bucket_of(user.as_str());
        // Every bucket below `buckets` has an owner: checked when the map was built.
        let index = layout.map.shard_of_bucket(bucket).unwrap_or_default();
        layout.shards[index].clone()
    }

    /// The shard that owns the user a routable id (transfer or entry id) was minted for.
    pub fn for_id(&self, id: &RoutableId) -> Result<Arc<Shard>, Error> {
        self.for_bucket(u32::from(id.bucket()))
    }

    /// A fresh id that routes back to `user`'s shard.
    pub fn new_id_for(&self, user: &UserId) -> RoutableId {
        RoutableId::new(self.bucket_of_user(user) as u16)
    }

    pub fn same_shard(&self, a: &UserId, b: &UserId) -> bool {
        self.for_user(a).index == self.for_user(b).index
    }

    /// Runs `op` on the owner of `bucket`; when the shard says the bucket moved, refreshes
    /// the map and runs it once more on the owner the shards record now.
    ///
    /// (`op` is a closure returning a future rather than an async closure: the futures of
    /// async closures that borrow are not yet provably `Send`, which axum handlers need.)
    pub async fn on_owner<T, E, F, Fut>(&self, bucket: u32, mut op: F) -> Result<T, E>
    where
        E: MaybeMoved + From<Error>,
        F: FnMut(Arc<Shard>) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let asked = Instant::now();
        match op(self.for_bucket(bucket)?).await {
            Err(e) if e.is_moved() => {
                self.refresh_since(asked).await;
                op(self.for_bucket(bucket)?).await
            }
            other => other,
        }
    }

    /// Runs `attempt` on the owner of `bucket`, handing it `op`; when the shard says the
    /// bucket moved before `op` ran (the attempt gives `op` back), refreshes the map and
    /// tries once more on the new owner. For work that must run at most once.
    pub async fn with_owner<T, E, Op, A, Fut>(&self, bucket: u32, op: Op, mut attempt: A) -> Result<T, E>
    where
        E: From<Error>,
        A: FnMut(Arc<Shard>, Op) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T, Op>, E>>,
    {
        let asked = Instant::now();
        match attempt(self.for_bucket(bucket)?, op).await? {
            Attempt::Done(value) => Ok(value),
            Attempt::Moved(op, _) => {
                self.refresh_since(asked).await;
                match attempt(self.for_bucket(bucket)?, op).await? {
                    Attempt::Done(value) => Ok(value),
                    Attempt::Moved(_, why) => Err(why.into()),
                }
            }
        }
    }

    /// Asks every shard for the newest epoch it recorded (an index lookup) and refreshes
    /// when one is newer than the map routed by. Returns whether the map changed.
    pub async fn refresh_if_newer(&self) -> bool {
        let current = self.epoch();
        let shards = self.shards();
        let newest = futures::future::join_all(shards.iter().map(|shard| async move {
            let client = shard.client().await.ok()?;
            let row = client
                .query_one(
                    "SELECT greatest((SELECT max(epoch) FROM bucket_owners), (SELECT max(added_epoch) FROM cluster_shards))",
                    &[],
                )
                .await
                .ok()?;
            row.get::<_, Option<i64>>(0)
        }))
        .await;
        if newest.into_iter().flatten().any(|epoch| epoch > current) {
            self.refresh().await
        } else {
            false
        }
    }

    /// Re-reads the map the shards record; keeps the current one when a shard cannot be
    /// read. Returns whether the map changed.
    pub async fn refresh(&self) -> bool {
        self.refresh_since(Instant::now()).await
    }

    async fn refresh_since(&self, asked: Instant) -> bool {
        let mut last = self.refreshing.lock().await;
        if *last > asked {
            return false;
        }
        let changed = match self.read_recorded().await {
            Ok(Some(layout)) => {
                tracing::info!(epoch = layout.map.epoch(), "shard map refreshed from the shards' records");
                match self.layout.write() {
                    Ok(mut current) => *current = Arc::new(layout),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(layout),
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the shard map; keeping the current one");
                false
            }
        };
        *last = Instant::now();
        changed
    }

    /// The map the shards record, when it is newer than the one routed by now.
    async fn read_recorded(&self) -> anyhow::Result<Option<Layout>> {
        let current = self.layout();
        let mut shards = current.shards.clone();
        let mut records = Vec::new();
        let mut read = 0;
        // New members are learnt from the records themselves, so read until none is new.
        while read < shards.len() {
            let batch: Vec<_> = shards[read..].to_vec();
            read = shards.len();
            let results = futures::future::join_all(batch.iter().map(|shard| async move {
                let client = shard.client().await?;
                ownership::read_records(&client).await.map_err(|source| Error::Db { shard: shard.name.clone(), source })
            }))
            .await;
            for (shard, result) in batch.iter().zip(results) {
                match result {
                    Ok(r) => records.push((shard.name.clone(), r)),
                    Err(e) => tracing::debug!(shard = %shard.name, error = %e, "shard records not read"),
                }
            }
            let known: Vec<String> = shards.iter().map(|s| s.name.clone()).collect();
            let mut new_members: Vec<_> = records
                .iter()
                .flat_map(|(_, r)| r.members.iter())
                .filter(|m| !known.contains(&m.name))
                .cloned()
                .collect();
            new_members.sort_by(|a, b| (a.added_epoch, &a.name).cmp(&(b.added_epoch, &b.name)));
            new_members.dedup_by(|a, b| a.name == b.name);
            for member in new_members {
                let spec = ShardSpec {
                    name: member.name.clone(),
                    config: parse_url(&member.name, &member.url)?,
                    ranges: vec![],
                };
                shards.push(pool(shards.len(), &spec, self.pool_size, self.connect_timeout)?);
            }
        }
        let resolved = ownership::resolve(records.iter().map(|(n, r)| (n.as_str(), r)));
        if resolved.epoch <= current.map.epoch() {
            return Ok(None);
        }
        let mut specs: Vec<ShardSpec> = current.map.shards().to_vec();
        for shard in &shards[specs.len()..] {
            let member = resolved.members.get(&shard.name);
            let url = member.map(|m| m.url.as_str()).unwrap_or_default();
            specs.push(ShardSpec { name: shard.name.clone(), config: parse_url(&shard.name, url)?, ranges: vec![] });
        }
        let mut owner = current.map.owners().to_vec();
        for (bucket, name) in &resolved.owner {
            match (owner.get_mut(*bucket as usize), specs.iter().position(|s| &s.name == name)) {
                (Some(slot), Some(index)) => *slot = index as u16,
                _ => tracing::warn!(bucket, owner = %name, "recorded owner unknown; keeping the current route"),
            }
        }
        let map = ShardMap::from_owners(current.map.buckets(), specs, owner, resolved.epoch);
        Ok(Some(Layout { map, shards }))
    }
}

fn pool(index: usize, spec: &ShardSpec, pool_size: usize, connect_timeout: Duration) -> anyhow::Result<Arc<Shard>> {
    let mut config = spec.config.clone();
    config.connect_timeout(connect_timeout);
    config.application_name("shardwallet");
    // A request waiting on a row or key lock gives up after 10 s: the API
    // answers 409/503 instead of hanging; workers retry.
    config.options("-c lock_timeout=10000");
    let manager =
        Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(pool_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect_timeout))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()?;
    Ok(Arc::new(Shard { index, name: spec.name.clone(), pool }))
}

#[cfg(test)]
mod tests;
