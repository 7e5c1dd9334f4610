//! Bench users: created, given a wallet and funded through the public API as an admin,
//! spread evenly over the shards so every shard has many same-shard pairs.
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde_json::json;

use super::{load::BenchUser, BenchArgs};
use crate::{
    api::auth::Auth,
    domain::{Role, UserId},
    sharding::Router,
};

/// Funding per user: far more than any run can move one unit at a time.
const FUNDING: &str = "1000000000000";
/// Setup requests in flight at once.
const SETUP_CONCURRENCY: usize = 8;

pub struct Fixture {
    pub users: Vec<BenchUser>,
    pub local_pairs: Vec<(usize, usize)>,
    pub cross_pairs: Vec<(usize, usize)>,
    run_id: String,
    per_shard: Vec<usize>,
}

impl Fixture {
    pub fn per_shard(&self) -> &[usize] {
        &self.per_shard
    }

    pub fn describe(&self) -> String {
        format!(
            "bench run {}: {} users (per shard {:?}), {} same-shard pairs, {} cross-shard pairs",
            self.run_id,
            self.users.len(),
            self.per_shard,
            self.local_pairs.len(),
            self.cross_pairs.len()
        )
    }
}

pub async fn prepare(
    http: &reqwest::Client,
    router: &Router,
    auth: &Auth,
    args: &BenchArgs,
) -> anyhow::Result<Fixture> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let (names, per_shard) = pick_users(router, &run_id, args.users)?;
    // Long enough for every phase of a default run, many times over.
    let ttl = Duration::from_secs(3 * args.duration + (args.overload_secs as u64) + 3 * 3600);
    let admin = auth.token("bench-admin", Role::Admin, ttl)?;
    let base = args.url.trim_end_matches('/');
    futures::stream::iter(&names)
        .map(|name| create_funded(http, base, &admin, name, &args.currency))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .with_context(|| format!("setting up bench users through {base}"))?;
    let (mut local_pairs, mut cross_pairs) = (Vec::new(), Vec::new());
    for (i, a) in names.iter().enumerate() {
        for (j, b) in names.iter().enumerate().filter(|(j, _)| *j != i) {
            let pairs = if router.same_shard(a, b) { &mut local_pairs } else { &mut cross_pairs };
            pairs.push((i, j));
        }
    }
    let users = names
        .iter()
        .map(|name| {
            let token = auth.token(name.as_str(), Role::User, ttl)?;
            Ok(BenchUser { id: name.to_string(), token })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Fixture { users, local_pairs, cross_pairs, run_id, per_shard })
}

/// Names `bench-<run>-<n>`, taking each only while its shard still needs users, so
/// the shards that own buckets get `users / shards` each (the first ones one more).
fn pick_users(router: &Router, run_id: &str, users: usize) -> anyhow::Result<(Vec<UserId>, Vec<usize>)> {
    let shards = router.shards().len();
    // Only shards that own buckets get users (a member just added owns none yet).
    let layout = router.layout();
    let owning: Vec<usize> = (0..shards).filter(|&i| !layout.map.shards()[i].ranges.is_empty()).collect();
    let mut quota = vec![0; shards];
    for (k, &i) in owning.iter().enumerate() {
        quota[i] = users / owning.len().max(1) + usize::from(k < users % owning.len().max(1));
    }
    let mut taken = vec![0; shards];
    let mut names = Vec::with_capacity(users);
    for n in 0..users.saturating_mul(1000) {
        if names.len() == users {
            break;
        }
        let name = UserId::parse(&format!("bench-{run_id}-{n}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let shard = router.for_user(&name).index;
        if taken[shard] < quota[shard] {
            taken[shard] += 1;
            names.push(name);
        }
    }
    anyhow::ensure!(names.len() == users, "could not find {users} user ids spread over the shards {taken:?}");
    Ok((names, taken))
}

async fn create_funded(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    user: &UserId,
    currency: &str,
) -> anyhow::Result<()> {
    let user = user.as_str();
    let calls = [
        ("/v1/users".to_string(), None, json!({ "user_id": user })),
        (format!("/v1/users/{user}/wallets"), None, json!({ "currency": currency })),
        (
            "/v1/admin/adjustments".to_string(),
            Some(format!("bench-fund-{user}")),
            json!({
                "user_id": user,
                "currency": currency,
                "amount": FUNDING,
                "direction": "credit",
                "reason": "bench funding",
            }),
        ),
    ];
    for (path, key, body) in calls {
        let mut request = http.post(format!("{base}{path}")).bearer_auth(admin).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if status != StatusCode::CREATED {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("POST {path} for {user}: {status}: {text}");
        }
    }
    Ok(())
}
