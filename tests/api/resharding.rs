//! Moving buckets between shards while the service serves: a fourth shard joins, a
//! user with history (same-shard transfers with a user who stays, cross-shard
//! transfers both ways, a gateway deposit, idempotency keys) moves onto it under load,
//! and nothing is lost, doubled or cancelled.
use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;
use shardwallet::{domain::UserId, ledger::verify, resharding, startup};

use crate::{helpers::*, payments};

/// Adds `shard-4` (a database on the first server) and returns a router that knows it.
async fn add_fourth_shard(deployment: &Deployment, app: &TestApp) -> (shardwallet::sharding::Router, String) {
    let url = format!("{}_s4", deployment.db_urls[0]);
    let router = startup::current_router(&app.settings).await.expect("router");
    resharding::members::add(&router, "shard-4", &url).await.expect("shards add");
    (router, url)
}

/// A config file for `shardwallet` run as an operator would, against this deployment.
fn mover_config(deployment: &Deployment, app: &TestApp) -> std::path::PathBuf {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("mover-{}", deployment.id));
    std::fs::create_dir_all(&out).expect("dir");
    let config = out.join("mover.toml");
    std::fs::write(&config, crate::failover::config_text(&app.settings, 0)).expect("config");
    config
}

/// `shardwallet reshard move --buckets BUCKETS --to shard-4`, quiet, optionally set to
/// abort at a failpoint.
fn mover_command(config: &std::path::Path, buckets: &str, failpoint: Option<&str>) -> std::process::Command {
    use std::process::Stdio;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_shardwallet"));
    command
        .args(["--config", &config.display().to_string(), "reshard", "move", "--buckets", buckets, "--to", "shard-4"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(point) = failpoint {
        command.env("SHARDWALLET_MOVER_FAILPOINT", point);
    }
    command
}

/// `reshard move` of `bucket` to shard-4, started and waited for until it has copied the
/// bucket and stands before its fence (`SHARDWALLET_MOVER_PAUSE=precopied:<gate>`); it goes
/// on once the returned gate file is removed.
async fn mover_paused_after_its_copy(
    config: &std::path::Path,
    bucket: u32,
    name: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let gate = config.with_file_name(name);
    let reached = config.with_file_name(format!("{name}.reached"));
    let _ = std::fs::remove_file(&reached);
    std::fs::write(&gate, "").expect("gate");
    let mover = mover_command(config, &bucket.to_string(), None)
        .env("SHARDWALLET_MOVER_PAUSE", format!("precopied:{}", gate.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the mover");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !reached.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the mover never reached the end of its copy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (mover, gate)
}

/// Stops the app and drops the fourth shard's database (the deployment drops the others).
async fn finish(app: Arc<TestApp>, url: &str) {
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
    drop_database(url).await;
}

async fn drop_database(url: &str) {
    let (server, db) = url.rsplit_once('/').expect("url");
    let admin = connect(&format!("{server}/postgres")).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.expect("drop shard-4");
}

/// 1 when the shard behind `client` says it owns `bucket`, else 0.
/// Two users on shard-1 with 100 EUR each, then 30 from the first to the second: a
/// same-shard posting that a move of the first user's bucket splits.
async fn split_pair(app: &TestApp, prefix: &str) -> (String, String) {
    let alice = app.user_on_shard(&format!("{prefix}-alice"), 0);
    let bob = app.user_on_shard(&format!("{prefix}-bob"), 0);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "100").await;
    let key = format!("{prefix}-1");
    assert_eq!(app.transfer(&app.admin(), &alice, &bob, "EUR", "30", &key).await.status(), StatusCode::CREATED);
    (alice, bob)
}

async fn owns(client: &tokio_postgres::Client, bucket: u32) -> i64 {
    client
        .query_one("SELECT count(*) FROM bucket_owners WHERE bucket = $1 AND state = 'owned'", &[&(bucket as i32)])
        .await
        .expect("bucket_owners")
        .get(0)
}

async fn entries(app: &TestApp, user: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/users/{user}/wallets/EUR/entries?limit=100"), &app.admin()).await;
    assert_eq!(r.status(), StatusCode::OK);
    body(r).await["data"].as_array().expect("entries").clone()
}

#[tokio::test]
async fn a_user_with_history_moves_to_a_new_shard_under_load_and_nothing_is_lost_doubled_or_cancelled() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let alice = app.user_on_shard("mv-alice", 0);
    let bob = app.user_on_shard("mv-bob", 0);
    let carol = app.user_on_shard("mv-carol", 1);
    app.funded_user(&alice, "EUR", "1000").await;
    app.funded_user(&bob, "EUR", "500").await;
    app.funded_user(&carol, "EUR", "500").await;
    let admin = app.admin();
    // Same-shard transfers with bob, who stays: their postings are split by the move.
    assert_eq!(app.transfer(&admin, &alice, &bob, "EUR", "100", "l1").await.status(), StatusCode::CREATED);
    assert_eq!(app.transfer(&admin, &bob, &alice, "EUR", "40", "l2").await.status(), StatusCode::CREATED);
    // Cross-shard both ways, finished.
    for (from, to, amount, key) in [(&alice, &carol, "70", "x1"), (&carol, &alice, "30", "x2")] {
        let r = app.transfer(&admin, from, to, "EUR", amount, key).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let id = body(r).await["transfer_id"].as_str().expect("id").to_string();
        assert_eq!(app.wait_final(&id, Duration::from_secs(30)).await["status"], "completed");
    }
    // A gateway deposit.
    let deposit = payments::start(&app, "deposits", &alice, "1000", "gateway_a", "dep-1").await;
    assert_eq!(payments::wait_final(&app, &deposit).await["status"], "succeeded");
    assert_eq!(app.balance(&alice, "EUR").await, "1900");
    let history = entries(&app, &alice).await;
    assert_eq!(history.len(), 6);

    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let bucket = router.bucket_of_user(&UserId::parse(&alice).expect("id"));

    // Steady cross-shard load between alice and carol while the bucket moves: each
    // transfer of 1 one way is matched by one the other way.
    let load: Vec<_> = [(alice.clone(), carol.clone()), (carol.clone(), alice.clone())]
        .into_iter()
        .enumerate()
        .map(|(side, (from, to))| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..15 {
                    let r =
                        app.transfer_retrying(&app.admin(), &from, &to, "EUR", "1", &format!("load-{side}-{i}")).await;
                    assert_eq!(r.status(), StatusCode::ACCEPTED, "load transfer {i}");
                    ids.push(body(r).await["transfer_id"].as_str().expect("id").to_string());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ids
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report =
        resharding::mover::move_buckets(&router, &[bucket], "shard-4", resharding::mover::BATCH).await.expect("move");
    assert_eq!(report.moved, 1, "{report}");
    assert!(report.rows > 0);
    // The catch-up under load reproduced the source: the fence did not fall back to a
    // full copy.
    assert_eq!(report.full_copies, 0, "{report}");
    let (_, p99, _) = report.fence_quantiles().expect("one fence");
    println!("move: {report} (fence p99 {} ms)", p99.as_millis());

    let mut ids = Vec::new();
    for task in load {
        ids.extend(task.await.expect("load task"));
    }
    for id in &ids {
        assert_eq!(app.wait_final(id, Duration::from_secs(60)).await["status"], "completed", "transfer {id}");
    }

    // The new shard owns alice; the old one keeps only a copy that nothing serves.
    let shard4 = connect(&url).await;
    let on4: Option<String> = shard4
        .query_opt("SELECT balance::text FROM accounts WHERE user_id = $1", &[&alice])
        .await
        .expect("query")
        .map(|r| r.get(0));
    assert_eq!(on4.as_deref(), Some("1900"));
    assert_eq!(app.balance(&alice, "EUR").await, "1900", "every load transfer matched by its opposite");
    assert_eq!(app.balance(&bob, "EUR").await, "560");
    assert_eq!(app.balance(&carol, "EUR").await, "540");
    // Her history reads the same (the load's entries come on top).
    let after = entries(&app, &alice).await;
    for entry in &history {
        assert!(after.contains(entry), "entry {entry} changed or vanished after the move");
    }
    // Earlier requests replay their stored answers from the new owner.
    let r = app.transfer(&admin, &alice, &bob, "EUR", "100", "l1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    let r = app.adjust(&alice, "EUR", "1000", "credit", &format!("fund-{alice}-EUR")).await;
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    assert_eq!(payments::payment(&app, &deposit).await["status"], "succeeded");
    assert_eq!(app.balance(&alice, "EUR").await, "1900");
    // Alice and bob are on different shards now: a new transfer between them is cross-shard.
    let r = app.transfer(&admin, &alice, &bob, "EUR", "5", "after-move").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = body(r).await["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&id, Duration::from_secs(30)).await["status"], "completed");
    assert_eq!(app.balance(&bob, "EUR").await, "565");
    // A same-shard transfer split by the move cannot be reversed on one side only.
    let split = history.iter().find(|e| e["kind"] == "transfer").expect("a same-shard transfer entry");
    let r = app
        .post(
            &format!("/v1/entries/{}/reversal", split["entry_id"].as_str().expect("id")),
            &admin,
            &Value::Null,
            Some("rev-split"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.text().await);

    // The audit sees every bucket once: clean, totals zero.
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the move:\n{audit}");
    let cluster = resharding::members::list(&router).await.expect("list");
    let four = cluster.shards.iter().find(|s| s.name == "shard-4").expect("shard-4");
    assert_eq!((four.bucket_count, four.users), (1, Some(1)));
    let one = cluster.shards.iter().find(|s| s.name == "shard-1").expect("shard-1");
    assert_eq!(one.users, Some(1), "bob only: the copy left behind is not counted");

    // Cleanup deletes the copy left on shard-1; nothing anyone sees changes.
    let bob_history = entries(&app, &bob).await;
    let cleaned = resharding::cleanup::run(&router, Duration::ZERO).await.expect("cleanup");
    assert_eq!(cleaned.buckets, 1, "{cleaned}");
    assert!(cleaned.rows > 0, "{cleaned}");
    let left: i64 = app
        .shard_db(0)
        .await
        .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&alice])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "alice's copy is gone from shard-1");
    assert_eq!(app.balance(&alice, "EUR").await, "1895");
    assert_eq!(app.balance(&bob, "EUR").await, "565");
    assert_eq!(entries(&app, &bob).await, bob_history, "bob's history (split postings included) is untouched");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after cleanup:\n{audit}");
    let again = resharding::cleanup::run(&router, Duration::ZERO).await.expect("cleanup again");
    assert_eq!((again.buckets, again.rows), (0, 0), "a second cleanup finds nothing");

    // Moving it again is a no-op.
    let again =
        resharding::mover::move_buckets(&router, &[bucket], "shard-4", resharding::mover::BATCH).await.expect("again");
    assert_eq!((again.moved, again.already_there), (0, 1));
    finish(app, &url).await;
}

/// `shardwallet reshard move` as an operator runs it, killed with SIGKILL at random
/// moments and run again until it finishes.
#[tokio::test]
async fn the_mover_killed_at_any_moment_and_run_again_finishes_the_move_with_the_same_results() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let users: Vec<String> = (0..6).map(|i| app.user_on_shard(&format!("kill-{i}"), 0)).collect();
    let stays = app.user_on_shard("kill-stays", 0);
    app.funded_user(&stays, "EUR", "0").await;
    for user in &users {
        app.funded_user(user, "EUR", "100").await;
        assert_eq!(
            app.transfer(&app.admin(), user, &stays, "EUR", "10", &format!("k-{user}")).await.status(),
            StatusCode::CREATED
        );
    }
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let mut buckets: Vec<u32> = users.iter().map(|u| router.bucket_of_user(&UserId::parse(u).expect("id"))).collect();
    // And forty empty buckets of shard-1, so the run lasts long enough to be cut anywhere.
    buckets.extend(0..40);
    buckets.sort_unstable();
    buckets.dedup();
    let list = buckets.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let config = mover_config(&deployment, &app);
    let mover = || mover_command(&config, &list, None).args(["--batch", "8"]).spawn().expect("start the mover");
    let owned_by_four = || async {
        connect(&url)
            .await
            .query_one("SELECT count(*) FROM bucket_owners WHERE state = 'owned'", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let mut kills = 0;
    for cut_ms in [150u64, 400, 90, 700, 250, 1200] {
        let mut child = mover();
        tokio::time::sleep(Duration::from_millis(cut_ms)).await;
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let _ = child.wait();
        // Whatever the cut left, no bucket is writable on two shards.
        let both: i64 = {
            let four = connect(&url).await;
            let owned: Vec<i32> = four
                .query("SELECT bucket FROM bucket_owners WHERE state = 'owned'", &[])
                .await
                .expect("owned")
                .iter()
                .map(|r| r.get(0))
                .collect();
            app.shard_db(0)
                .await
                .query_one("SELECT count(*) FROM bucket_owners WHERE state = 'owned' AND bucket = ANY($1)", &[&owned])
                .await
                .expect("both")
                .get(0)
        };
        assert_eq!(both, 0, "after a cut at {cut_ms} ms a bucket is owned by two shards");
        // And the audit is clean whatever the cut left: each bucket counted once.
        let audit = verify::run(&router).await.expect("verify");
        assert!(audit.ok, "verify after a cut at {cut_ms} ms:\n{audit}");
    }
    assert!(kills >= 2, "the mover was killed mid-run only {kills} time(s)");
    let status = mover().wait().expect("final run");
    assert!(status.success(), "the last run finishes the move");
    assert_eq!(owned_by_four().await, buckets.len() as i64, "every bucket has its one owner");
    for user in &users {
        assert_eq!(app.balance(user, "EUR").await, "90", "{user}");
        let r = app.transfer(&app.admin(), user, &stays, "EUR", "10", &format!("k-{user}")).await;
        assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    }
    assert_eq!(app.balance(&stays, "EUR").await, "60");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after a move cut {kills} times:\n{audit}");
    finish(app, &url).await;
}

/// `shards add` then `reshard rebalance` (as the CLI computes and runs it): every shard
/// ends with its equal share, users with money keep it, and a dry run moves nothing.
#[tokio::test]
async fn a_rebalance_onto_an_added_shard_leaves_every_shard_an_equal_share_and_every_balance_exact() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let users: Vec<String> = (0..12).map(|i| app.user_on_shard(&format!("rb-{i}"), i % 3)).collect();
    for user in &users {
        app.funded_user(user, "EUR", "100").await;
    }
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let layout = router.layout();
    let plan = resharding::mover::rebalance_plan(layout.map.owners(), layout.map.shards().len());
    assert_eq!(plan.len(), 4096);
    // Audits while the buckets move: each counts every wallet once (12 users, plus the
    // shards' system accounts, which are not wallets) and finds nothing wrong.
    let moving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let audits = tokio::spawn({
        let (settings, moving) = (app.settings.clone(), moving.clone());
        async move {
            let router = startup::current_router(&settings).await.expect("router");
            let mut seen = Vec::new();
            while moving.load(std::sync::atomic::Ordering::Relaxed) {
                router.refresh().await;
                let audit = verify::run(&router).await.expect("verify during the rebalance");
                let wallets: i64 = audit.shards.iter().map(|s| s.wallets).sum();
                seen.push((audit.ok, wallets, audit.to_string()));
            }
            seen
        }
    });
    let report =
        resharding::mover::move_buckets(&router, &plan.iter().map(|(b, _, _)| *b).collect::<Vec<_>>(), "shard-4", 256)
            .await
            .expect("rebalance");
    moving.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = audits.await.expect("audits");
    assert!(!seen.is_empty(), "an audit ran during the rebalance");
    for (ok, wallets, text) in &seen {
        assert!(*ok && *wallets == 12, "an audit during the rebalance counted {wallets} wallets:\n{text}");
    }
    assert_eq!(report.moved, 4096, "{report}");
    let (p50, p99, max) = report.fence_quantiles().expect("fences");
    println!("rebalance: {report}; fence p50 {p50:?} p99 {p99:?} max {max:?}");
    let cluster = resharding::members::list(&router).await.expect("list");
    let shares: Vec<usize> = cluster.shards.iter().map(|s| s.bucket_count).collect();
    assert_eq!(shares, vec![4096, 4096, 4096, 4096]);
    assert!(resharding::mover::rebalance_plan(router.layout().map.owners(), 4).is_empty());
    let users_counted: i64 = cluster.shards.iter().map(|s| s.users.expect("reachable")).sum();
    assert_eq!(users_counted, 12, "every user counted once");
    for user in &users {
        assert_eq!(app.balance(user, "EUR").await, "100", "{user}");
    }
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the rebalance:\n{audit}");
    finish(app, &url).await;
}

/// A bucket moved away and back again (before and after cleanup): its split postings
/// balance on both shards every time, and every balance is exact.
#[tokio::test]
async fn a_bucket_moved_away_and_back_again_keeps_every_posting_balanced() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let (alice, bob) = split_pair(&app, "back").await;
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let bucket = router.bucket_of_user(&UserId::parse(&alice).expect("id"));
    let batch = resharding::mover::BATCH;
    // Back onto a shard that still holds the copy the bucket left there: refused.
    resharding::mover::move_buckets(&router, &[bucket], "shard-4", batch).await.expect("move");
    let refused = resharding::mover::move_buckets(&router, &[bucket], "shard-1", batch).await;
    assert!(format!("{:#}", refused.expect_err("refused")).contains("reshard cleanup"));
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    resharding::cleanup::run(&router, Duration::ZERO).await.expect("cleanup");
    for (to, cleanup) in [("shard-1", true), ("shard-4", true), ("shard-1", true)] {
        let report = resharding::mover::move_buckets(&router, &[bucket], to, batch).await.expect("move");
        assert_eq!(report.moved, 1, "to {to}: {report}");
        if cleanup {
            resharding::cleanup::run(&router, Duration::ZERO).await.expect("cleanup");
        }
        let audit = verify::run(&router).await.expect("verify");
        assert!(audit.ok, "verify after the move to {to} (cleanup: {cleanup}):\n{audit}");
        assert_eq!(app.balance(&alice, "EUR").await, "70", "after the move to {to}");
        assert_eq!(app.balance(&bob, "EUR").await, "130", "after the move to {to}");
        // Money still moves between them, same-shard or not.
        let key = format!("after-{to}-{cleanup}");
        let r = app.transfer(&app.admin(), &bob, &alice, "EUR", "1", &key).await;
        assert!(r.status().is_success(), "{:?}", r.text().await);
        let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "1", &format!("{key}-back")).await;
        assert!(r.status().is_success(), "{:?}", r.text().await);
        eventually(Duration::from_secs(30), "the pair's transfers to finish", || async {
            (app.balance(&alice, "EUR").await == "70" && app.balance(&bob, "EUR").await == "130").then_some(())
        })
        .await;
    }
    finish(app, &url).await;
}

/// The mover aborted (as by kill -9) at each named point of a move, then run again:
/// one owner per bucket and a clean audit after the crash, the move finished after the
/// re-run, balances exact, and writes to the moved users going through meanwhile.
#[tokio::test]
async fn the_mover_crashed_at_each_point_of_a_move_is_finished_by_the_next_run() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let stays = app.user_on_shard("fp-stays", 0);
    app.funded_user(&stays, "EUR", "0").await;
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let config = mover_config(&deployment, &app);
    let mover = |buckets: &str, failpoint: Option<&str>| {
        mover_command(&config, buckets, failpoint).status().expect("run the mover")
    };
    for point in ["begun", "fenced", "copied", "source-switched", "switched"] {
        let user = app.user_on_shard(&format!("fp-{point}"), 0);
        app.funded_user(&user, "EUR", "100").await;
        assert_eq!(
            app.transfer(&app.admin(), &user, &stays, "EUR", "10", &format!("fp-{point}")).await.status(),
            StatusCode::CREATED
        );
        let bucket = router.bucket_of_user(&UserId::parse(&user).expect("id"));
        let wallets = |audit: &verify::Report| audit.shards.iter().map(|s| s.wallets).sum::<i64>();
        let before = wallets(&verify::run(&router).await.expect("verify"));
        let crashed = mover(&bucket.to_string(), Some(point));
        assert!(!crashed.success(), "the mover stopped at {point}");
        let owners = owns(&connect(&url).await, bucket).await + owns(&app.shard_db(0).await, bucket).await;
        assert!(owners <= 1, "after a crash at {point} the bucket has {owners} owners");
        let audit = verify::run(&router).await.expect("verify");
        assert!(audit.ok, "verify after a crash at {point}:\n{audit}");
        assert_eq!(wallets(&audit), before, "after a crash at {point} every wallet is counted once:\n{audit}");
        // A write for the user goes through at once or after the re-run, never twice.
        let app2 = app.clone();
        let (user2, stays2) = (user.clone(), stays.clone());
        let write = tokio::spawn(async move {
            app2.transfer_retrying(&app2.admin(), &user2, &stays2, "EUR", "5", &format!("fp-during-{user2}")).await
        });
        assert!(mover(&bucket.to_string(), None).success(), "the re-run after {point} finishes");
        let r = write.await.expect("write task");
        assert!(r.status().is_success(), "write after a crash at {point}: {:?}", r.text().await);
        let transfer = body(r).await;
        if let Some(id) = transfer["transfer_id"].as_str() {
            assert_eq!(app.wait_final(id, Duration::from_secs(30)).await["status"], "completed", "{point}");
        }
        let owned = owns(&connect(&url).await, bucket).await;
        assert_eq!(owned, 1, "after the re-run the new shard owns the bucket ({point})");
        assert_eq!(app.balance(&user, "EUR").await, "85", "{point}");
        let audit = verify::run(&router).await.expect("verify");
        assert!(audit.ok, "verify after the re-run ({point}):\n{audit}");
    }
    finish(app, &url).await;
}

/// Payments in flight move with their user: a deposit still pending at the gateway and
/// a withdrawal holding funds settle on the new owner, each once.
#[tokio::test]
async fn payments_in_flight_move_with_their_user_and_settle_once_on_the_new_shard() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let user = app.user_on_shard("pay-mv", 0);
    app.funded_user(&user, "EUR", "10000").await;
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let bucket = router.bucket_of_user(&UserId::parse(&user).expect("id"));
    // 05: pending at the gateway, settled by the reconciler's status query (the first one
    // 1.5 s after the request in the test settings): still in flight when the move runs.
    let deposit = payments::start(&app, "deposits", &user, "2005", "gateway_a", "pm-dep").await;
    let withdrawal = payments::start(&app, "withdrawals", &user, "1005", "gateway_b", "pm-wd").await;
    assert_eq!(app.wallet(&user, "EUR").await["available"], "8995", "the withdrawal holds at once");
    for id in [&deposit, &withdrawal] {
        assert_eq!(payments::payment(&app, id).await["status"], "pending", "in flight when the move begins");
    }
    let report =
        resharding::mover::move_buckets(&router, &[bucket], "shard-4", resharding::mover::BATCH).await.expect("move");
    assert_eq!(report.moved, 1);
    assert_eq!(payments::wait_final(&app, &deposit).await["status"], "succeeded");
    assert_eq!(payments::wait_final(&app, &withdrawal).await["status"], "succeeded");
    eventually(Duration::from_secs(60), "both payments applied on the new shard", || async {
        let wallet = app.wallet(&user, "EUR").await;
        (wallet["balance"] == "11000" && wallet["available"] == "11000").then_some(())
    })
    .await;
    let on4: i64 = connect(&url)
        .await
        .query_one("SELECT count(*) FROM payments WHERE user_id = $1 AND state = 'succeeded'", &[&user])
        .await
        .expect("payments")
        .get(0);
    assert_eq!(on4, 2, "both payments settled on the new owner");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify:\n{audit}");
    finish(app, &url).await;
}

/// A target that does not store what it is sent (here: a trigger that adds 1 to every
/// wallet balance written on it) is refused before the switch, even after the fence's
/// full copy: the source keeps the bucket and serves it, and once the target is fixed
/// the same move goes through with every balance exact.
#[tokio::test]
async fn a_copy_that_differs_from_its_source_is_refused_and_the_source_keeps_the_bucket() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let (alice, bob) = split_pair(&app, "refuse").await;
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let bucket = router.bucket_of_user(&UserId::parse(&alice).expect("id"));
    let four = connect(&url).await;
    four.batch_execute(
        "CREATE FUNCTION mangle() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.user_id IS NOT NULL THEN NEW.balance := NEW.balance + 1; END IF; RETURN NEW; END $$;
         CREATE TRIGGER mangle BEFORE INSERT OR UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION mangle();",
    )
    .await
    .expect("trigger");

    let refused = resharding::mover::move_buckets(&router, &[bucket], "shard-4", resharding::mover::BATCH).await;
    let why = format!("{:#}", refused.expect_err("the move is refused"));
    assert!(why.contains("refusing to switch") && why.contains("wallet balances"), "{why}");
    assert_eq!(owns(&app.shard_db(0).await, bucket).await, 1, "the source still owns the bucket");
    assert_eq!(owns(&four, bucket).await, 0, "the target does not");
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    let r = app.transfer(&app.admin(), &bob, &alice, "EUR", "5", "r2").await;
    assert_eq!(r.status(), StatusCode::CREATED, "the source still takes writes: {:?}", r.text().await);

    four.batch_execute("DROP TRIGGER mangle ON accounts").await.expect("drop trigger");
    let report =
        resharding::mover::move_buckets(&router, &[bucket], "shard-4", resharding::mover::BATCH).await.expect("move");
    assert_eq!(report.moved, 1, "{report}");
    assert_eq!(owns(&four, bucket).await, 1);
    assert_eq!(app.balance(&alice, "EUR").await, "75");
    assert_eq!(app.balance(&bob, "EUR").await, "125");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the move:\n{audit}");
    finish(app, &url).await;
}

/// A copy that lost a row between the copy and the fence (here: an idempotency key
/// deleted from the target's copy; a row pruned on the source since the copy does the
/// same) is found by the fence's row counts, which its catch-up alone cannot explain:
/// the fence copies the bucket again in full and compares every row, and the move goes
/// through with the row back, so the key still replays.
#[tokio::test]
async fn a_copy_that_lost_a_row_before_the_fence_is_copied_again_in_full_inside_it() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let (alice, bob) = split_pair(&app, "lost").await;
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let bucket = router.bucket_of_user(&UserId::parse(&alice).expect("id"));
    let config = mover_config(&deployment, &app);
    let (mover, gate) = mover_paused_after_its_copy(&config, bucket, "precopied").await;
    let four = connect(&url).await;
    let lost =
        four.execute("DELETE FROM idempotency_keys WHERE key = 'lost-1'", &[]).await.expect("delete the copied key");
    assert_eq!(lost, 1, "the copy holds the key before the fence");
    std::fs::remove_file(&gate).expect("open the gate");
    let output = tokio::task::spawn_blocking(move || mover.wait_with_output()).await.expect("join").expect("mover");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the move goes through: {printed}");
    assert!(printed.contains("1 fence(s) copied in full"), "the fence saw the lost row: {printed}");
    assert_eq!(owns(&four, bucket).await, 1);
    assert_eq!(owns(&app.shard_db(0).await, bucket).await, 0);
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "lost-1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    assert_eq!(app.balance(&alice, "EUR").await, "70", "replayed, not applied again");
    assert_eq!(app.balance(&bob, "EUR").await, "130");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the move:\n{audit}");
    finish(app, &url).await;
}

/// The idempotency keys a shard holds of requests by or on `user`'s bucket.
async fn keys_of(client: &tokio_postgres::Client, user: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM idempotency_keys
             WHERE caller = $1 OR bucket IN (SELECT bucket FROM users WHERE user_id = $1)",
            &[&user],
        )
        .await
        .expect("count keys")
        .get(0)
}

/// A shard receiving a bucket prunes nothing until the move is over: the fence counts
/// the target's copy before it and adds only what its catch-up writes, so a key its own
/// sweeper deleted from the copy meanwhile would leave the bucket without it. Once the
/// move is over, the same sweep prunes.
#[tokio::test]
async fn a_shard_receiving_a_bucket_prunes_nothing_of_it_until_the_move_is_over() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let (alice, bob) = split_pair(&app, "keep").await;
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let router = Arc::new(router);
    let bucket = router.bucket_of_user(&UserId::parse(&alice).expect("id"));
    let config = mover_config(&deployment, &app);
    let (mover, gate) = mover_paused_after_its_copy(&config, bucket, "keep-precopied").await;
    // shard-4's sweeper, keeping keys for no time at all.
    let shard4 = router.layout().shards.iter().find(|s| s.name == "shard-4").expect("shard-4").clone();
    let sweeper = shardwallet::transfer::sweeper::Sweeper {
        router: router.clone(),
        shard: shard4,
        wakers: Default::default(),
        interval: Duration::from_secs(1),
        redrive_after: Duration::from_secs(3600),
        redrive_max: 0,
        key_retention: Duration::ZERO,
        prune_after: Some(Duration::ZERO),
    };
    let four = connect(&url).await;
    let copied = keys_of(&four, &alice).await;
    assert!(copied > 0, "the copy holds alice's keys");
    assert_eq!(sweeper.sweep().await.keys_pruned, 0, "nothing pruned while a bucket is incoming");
    assert_eq!(sweeper.prune_final(Duration::ZERO).await.expect("prune"), 0);
    assert_eq!(keys_of(&four, &alice).await, copied);
    std::fs::remove_file(&gate).expect("open the gate");
    let output = tokio::task::spawn_blocking(move || mover.wait_with_output()).await.expect("join").expect("mover");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the move goes through: {printed}");
    assert!(!printed.contains("copied in full"), "the copy stayed whole: {printed}");
    assert_eq!(owns(&four, bucket).await, 1);
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "keep-1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    // Nothing incoming any more: the shard prunes again.
    assert!(sweeper.sweep().await.keys_pruned > 0, "the keys past retention go once the move is over");
    finish(app, &url).await;
}

/// A bucket the mover left between the two commits of its switch (stopped after the
/// source gave it away, before the target took it) belongs to nobody until the next
/// run takes it over from the source's rows, and those rows stay whole meanwhile: here
/// the bucket of the user it sent a transfer to (on the same source) is moved and
/// cleaned up before the re-run, and the taken-over sender still has that transfer, its
/// history and its key.
#[tokio::test]
async fn a_bucket_left_between_the_two_commits_is_taken_over_whole_after_a_neighbours_cleanup() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let alice = app.user_on_shard("between-alice", 0);
    let bob = app.user_on_shard("between-bob", 0);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "100").await;
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "between-1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let transfer = body(r).await["transfer_id"].as_str().expect("transfer id").to_string();
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let (a, b) = (
        router.bucket_of_user(&UserId::parse(&alice).expect("id")),
        router.bucket_of_user(&UserId::parse(&bob).expect("id")),
    );
    assert_ne!(a, b, "the two users are in different buckets of shard-1");
    let history = entries(&app, &alice).await;
    let config = mover_config(&deployment, &app);
    let stopped = mover_command(&config, &a.to_string(), Some("source-switched")).status().expect("run the mover");
    assert!(!stopped.success(), "the mover stopped between the two commits");
    let four = connect(&url).await;
    assert_eq!(owns(&four, a).await + owns(&app.shard_db(0).await, a).await, 0, "nobody owns the bucket");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify between the two commits (the source's rows counted):\n{audit}");
    let cluster = resharding::members::list(&router).await.expect("shards list");
    assert_eq!(cluster.shards[0].users, Some(2), "shards list counts the stranded sender on the source too");

    // Meanwhile the receiver's bucket moves and the source's copy of it is cleaned up.
    let moved =
        resharding::mover::move_buckets(&router, &[b], "shard-4", resharding::mover::BATCH).await.expect("move");
    assert_eq!(moved.moved, 1);
    let cleaned = resharding::cleanup::run(&router, Duration::ZERO).await.expect("cleanup");
    assert_eq!(cleaned.buckets, 1, "only the switched bucket is cleaned up");

    assert!(mover_command(&config, &a.to_string(), None).status().expect("re-run").success(), "the re-run finishes");
    assert_eq!(owns(&four, a).await, 1, "the new shard took the bucket over");
    assert_eq!(owns(&app.shard_db(0).await, a).await, 0);
    let r = app.get(&format!("/v1/transfers/{transfer}"), &app.admin()).await;
    assert_eq!(r.status(), StatusCode::OK, "the sender's transfer moved with it");
    assert_eq!(body(r).await["status"], "completed");
    assert_eq!(entries(&app, &alice).await, history, "the sender's history, unchanged");
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "between-1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    assert_eq!(app.balance(&bob, "EUR").await, "130");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the take-over:\n{audit}");
    finish(app, &url).await;
}

/// Cleanup deletes `cleanup::CHUNK` buckets per transaction: two users whose buckets
/// fall in different chunks and who share postings (same-shard transfers both ways)
/// are cleaned up in two transactions, and every posting still balances (a posting of
/// both keeps a stand-in leg per chunk on the source, netting to zero), neither user is
/// left there, both histories read unchanged, and the buckets come back onto the
/// cleaned shard.
#[tokio::test]
async fn a_cleanup_in_chunks_keeps_every_shared_posting_balanced_and_leaves_no_user_behind() {
    let deployment = Deployment::new().await;
    let app = Arc::new(deployment.spawn_default().await);
    let (alice, bob) = split_pair(&app, "chunks").await;
    let r = app.transfer(&app.admin(), &bob, &alice, "EUR", "5", "chunks-2").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (router, url) = add_fourth_shard(&deployment, &app).await;
    let bucket = |user: &str| router.bucket_of_user(&UserId::parse(user).expect("id"));
    let (low, high) = (bucket(&alice).min(bucket(&bob)), bucket(&alice).max(bucket(&bob)));
    // Buckets of shard-1 between the two, so that the two users' land in different chunks.
    let between: Vec<u32> = (low + 1..high)
        .filter(|&b| router.layout().map.owners()[b as usize] == 0)
        .take(resharding::cleanup::CHUNK + 4)
        .collect();
    assert_eq!(between.len(), resharding::cleanup::CHUNK + 4, "buckets {low} and {high} are far enough apart");
    let mut buckets = vec![low, high];
    buckets.extend(&between);
    buckets.sort_unstable();
    let history = (entries(&app, &alice).await, entries(&app, &bob).await);

    let report =
        resharding::mover::move_buckets(&router, &buckets, "shard-4", resharding::mover::BATCH).await.expect("move");
    assert_eq!(report.moved, buckets.len(), "{report}");
    let cleaned = resharding::cleanup::run_paced(&router, Duration::ZERO, 0.5).await.expect("cleanup");
    assert_eq!(cleaned.buckets, buckets.len(), "{cleaned}");
    let source = app.shard_db(0).await;
    let left: i64 = source
        .query_one("SELECT count(*) FROM users WHERE user_id = ANY($1)", &[&vec![alice.clone(), bob.clone()]])
        .await
        .expect("users")
        .get(0);
    assert_eq!(left, 0, "the source holds neither user any more");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the cleanup in chunks:\n{audit}");
    assert_eq!((entries(&app, &alice).await, entries(&app, &bob).await), history, "both histories, unchanged");
    assert_eq!(app.balance(&alice, "EUR").await, "75");
    assert_eq!(app.balance(&bob, "EUR").await, "125");

    // Back onto the cleaned shard: accepted, and still exact.
    let report =
        resharding::mover::move_buckets(&router, &buckets, "shard-1", resharding::mover::BATCH).await.expect("back");
    assert_eq!(report.moved, buckets.len(), "{report}");
    resharding::cleanup::run(&router, Duration::ZERO).await.expect("cleanup");
    let audit = verify::run(&router).await.expect("verify");
    assert!(audit.ok, "verify after the move back:\n{audit}");
    assert_eq!((entries(&app, &alice).await, entries(&app, &bob).await), history);
    assert_eq!(app.balance(&alice, "EUR").await, "75");
    assert_eq!(app.balance(&bob, "EUR").await, "125");
    finish(app, &url).await;
}
