//! A shard's server restarted (immediately: every connection dropped) under a load of
//! requests: a lost or refused connection is `503 shard_unavailable` with
//! `Retry-After`, never a 500, and a client that retries with the same Idempotency-Key
//! moves each transfer exactly once.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::StatusCode;
use shardwallet::{
    sharding::ShardMap,
    storage::{identity, migrate},
};
use tokio::sync::Mutex;

use crate::{helpers::*, own_postgres::OwnPostgres};

const USERS: usize = 8;
const CLIENTS: usize = 8;

#[tokio::test]
async fn a_shard_restarted_under_load_answers_503_with_retry_after_never_500_and_loses_nothing() {
    let server = tokio::task::spawn_blocking(OwnPostgres::start).await.expect("start postgres");
    let deployment = Deployment::new().await;
    let mut urls = deployment.db_urls.clone();
    urls[1] = server.url("postgres");
    let config: tokio_postgres::Config = urls[1].parse().expect("url");
    migrate::run("shard-2", &config).await.expect("migrate own shard");
    let map = ShardMap::parse(&shard_map_text(&urls, &RANGES), |_| None).expect("map");
    let (client, conn) = tokio_postgres::connect(&urls[1], tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    identity::write(&client, &identity::Identity::expected(&map, &map.shards()[1])).await.expect("identity");
    let spec = &map.shards()[1];
    shardwallet::sharding::ownership::record_initial(&client, &spec.name, &spec.ranges, &[])
        .await
        .expect("bucket ownership");
    let app = Arc::new(deployment.spawn(deployment.settings_for(&urls, &RANGES)).await);

    let users: Vec<String> = (0..USERS).map(|i| app.user_on_shard(&format!("outage{i}"), 1)).collect();
    for user in &users {
        app.funded_user(user, "EUR", "1000").await;
    }
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (0..CLIENTS).map(|c| {
        let (app, users, statuses, stop) = (app.clone(), users.clone(), statuses.clone(), stop.clone());
        tokio::spawn(async move {
            let token = app.admin();
            let mut sent = Vec::new();
            for n in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (from, to) = (&users[(c + n) % USERS], &users[(c + n + 1) % USERS]);
                let key = format!("c{c}-{n}");
                let r = app.transfer(&token, from, to, "EUR", "1", &key).await;
                let status = r.status();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    assert!(r.headers().get("retry-after").is_some(), "a 503 says when to come back");
                    let problem = body(r).await;
                    assert!(problem["code"] == "shard_unavailable" || problem["code"] == "busy", "{problem}");
                }
                *statuses.lock().await.entry(status.as_u16()).or_default() += 1;
                sent.push((from.clone(), to.clone(), key, status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    });
    let clients: Vec<_> = clients.collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = Arc::new(server);
    let restarting = server.clone();
    tokio::task::spawn_blocking(move || restarting.restart_immediately()).await.expect("restart");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.expect("client"));
    }
    let statuses = statuses.lock().await.clone();
    println!("status codes during the restart: {statuses:?}");
    assert!(!statuses.contains_key(&500), "no 500 while the shard restarts: {statuses:?}");
    assert!(statuses.keys().all(|s| [201, 503].contains(s)), "{statuses:?}");
    assert!(statuses.get(&201).copied().unwrap_or(0) > 0, "{statuses:?}");

    // A client retries what it was refused with the same key: then every transfer it
    // sent happened exactly once, whatever the restart did to the ones in flight.
    let token = app.admin();
    for (from, to, key, status) in &sent {
        if *status != StatusCode::CREATED {
            let r = app.transfer_retrying(&token, from, to, "EUR", "1", key).await;
            assert_eq!(r.status(), StatusCode::CREATED, "retry of {key}");
        }
    }
    let mut net: BTreeMap<&str, i64> = users.iter().map(|u| (u.as_str(), 1000)).collect();
    for (from, to, _, _) in &sent {
        *net.get_mut(from.as_str()).expect("user") -= 1;
        *net.get_mut(to.as_str()).expect("user") += 1;
    }
    for (user, expected) in net {
        assert_eq!(app.balance(user, "EUR").await, expected.to_string(), "{user}");
    }
    app.assert_verified().await;
}
