//! Bucket ownership recorded on the shards: every write checks it inside its own
//! transaction, so an instance routing by an old map cannot write to a shard that gave
//! the bucket away, and a write waiting on a fence lands on the new owner.
//!
//! The flips here are made by hand (what a move's last step does), so that the check is
//! tested on its own; the mover's tests move real data.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shardwallet::domain::UserId;

use crate::helpers::*;

/// Records on both shards that `bucket` moved from shard `from` to shard `to` at `epoch`,
/// as the last step of a move does (source first: for a moment nobody owns it).
async fn flip(app: &TestApp, bucket: u32, from: usize, to: usize, epoch: i64) {
    let to_name = format!("shard-{}", to + 1);
    let source = app.shard_db(from).await;
    let moved = source
        .execute(
            "UPDATE bucket_owners SET state = 'moved', owner = $2, epoch = $3, changed_at = now() WHERE bucket = $1",
            &[&(bucket as i32), &to_name, &epoch],
        )
        .await
        .expect("flip source");
    assert_eq!(moved, 1, "the source owned bucket {bucket}");
    app.shard_db(to)
        .await
        .execute(
            "INSERT INTO bucket_owners (bucket, state, owner, epoch) VALUES ($1, 'owned', $2, $3)
             ON CONFLICT (bucket) DO UPDATE SET state = 'owned', owner = $2, epoch = $3",
            &[&(bucket as i32), &to_name, &epoch],
        )
        .await
        .expect("flip target");
}

fn bucket_of(app: &TestApp, user: &str) -> u32 {
    app.router.bucket_of_user(&UserId::parse(user).expect("user id"))
}

async fn balance_on(app: &TestApp, shard: usize, user: &str) -> Option<String> {
    app.shard_db(shard)
        .await
        .query_opt("SELECT balance::text FROM accounts WHERE user_id = $1 AND currency = 'EUR'", &[&user])
        .await
        .expect("query")
        .map(|r| r.get(0))
}

#[tokio::test]
async fn an_instance_with_the_old_map_never_writes_to_the_shard_that_gave_the_bucket_away() {
    let deployment = Deployment::new().await;
    let app = deployment.spawn_default().await;
    let alice = app.user_on_shard("own-alice", 0);
    let bob = app.user_on_shard("own-bob", 0);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let bucket = bucket_of(&app, &alice);

    // Alice's bucket moves to shard-2; this instance is not told.
    flip(&app, bucket, 0, 1, 2).await;

    // A write through the stale instance: shard-1 refuses it inside its transaction,
    // the instance re-reads the map and sends it to shard-2, where alice does not exist
    // (no data was copied in this test). Shard-1's copy is not touched.
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "stale-1").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{:?}", r.text().await);
    assert_eq!(balance_on(&app, 0, &alice).await.as_deref(), Some("100"));
    assert_eq!(balance_on(&app, 0, &bob).await.as_deref(), Some("0"));

    // Creating alice again goes to the new owner; so do her deposits and reads.
    app.funded_user(&alice, "EUR", "50").await;
    assert_eq!(balance_on(&app, 1, &alice).await.as_deref(), Some("50"));
    assert_eq!(app.balance(&alice, "EUR").await, "50");
    assert_eq!(balance_on(&app, 0, &alice).await.as_deref(), Some("100"), "the old owner's copy is never written");

    // Now alice (shard-2) and bob (shard-1) are on different shards: the same request
    // is routed as a cross-shard transfer and completes.
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "stale-2").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = body(r).await["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&id, Duration::from_secs(30)).await["status"], "completed");
    assert_eq!(app.balance(&alice, "EUR").await, "20");
    assert_eq!(app.balance(&bob, "EUR").await, "30");

    // The shard itself names the new owner and the epoch.
    let source = app.shard_db(0).await;
    let row = source
        .query_one("SELECT state, owner, epoch FROM bucket_owners WHERE bucket = $1", &[&(bucket as i32)])
        .await
        .expect("row");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, i64>(2)),
        ("moved".into(), "shard-2".into(), 2)
    );

    // An instance started later with the same old shard-map.toml routes by the recorded
    // map from the start.
    let fresh = deployment.spawn_default().await;
    assert_eq!(fresh.balance(&alice, "EUR").await, "20");
    let router = shardwallet::startup::current_router(&app.settings).await.expect("router");
    assert_eq!(router.epoch(), 2);
    assert_eq!(router.for_user(&UserId::parse(&alice).expect("id")).name, "shard-2");
}

#[tokio::test]
async fn a_write_waiting_on_a_fence_lands_on_the_new_owner_and_the_retry_is_not_stored_as_a_refusal() {
    let deployment = Deployment::new().await;
    let app = deployment.spawn_default().await;
    let alice = app.user_on_shard("fence-alice", 0);
    app.funded_user(&alice, "EUR", "100").await;
    let bucket = bucket_of(&app, &alice);

    // A fence on shard-1, as the mover takes it: the bucket's lock held exclusively and
    // its row FOR UPDATE.
    let mut fence_db = app.shard_db(0).await;
    let fence = fence_db.transaction().await.expect("begin");
    fence
        .execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&shardwallet::sharding::ownership::BUCKET_LOCKS, &(bucket as i32)],
        )
        .await
        .expect("lock");
    fence
        .query_one("SELECT state FROM bucket_owners WHERE bucket = $1 FOR UPDATE", &[&(bucket as i32)])
        .await
        .expect("row");

    // Concurrent deposits for alice wait on the fence.
    let admin = app.admin();
    let deposits: Vec<_> = (0..4)
        .map(|i| {
            let body =
                json!({ "user_id": alice, "currency": "EUR", "amount": "5", "direction": "credit", "reason": "test" });
            let request = app.http.post(app.url("/v1/admin/adjustments")).bearer_auth(&admin).json(&body);
            tokio::spawn(request.header("Idempotency-Key", format!("fenced-{i}")).send())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(deposits.iter().all(|d| !d.is_finished()), "writes wait while the fence holds the bucket");

    // The fence copies alice to shard-2 (here: the target gets alice and her wallet with
    // the same balance) and flips the bucket in the same transaction.
    let target = app.shard_db(1).await;
    target
        .execute("INSERT INTO users (user_id, bucket) VALUES ($1, $2)", &[&alice, &(bucket as i32)])
        .await
        .expect("user");
    target
        .execute(
            "INSERT INTO accounts (system_name, currency) VALUES ('adjustments', 'EUR') ON CONFLICT DO NOTHING",
            &[],
        )
        .await
        .expect("system account");
    target
        .execute("INSERT INTO accounts (user_id, currency, balance) VALUES ($1, 'EUR', 100)", &[&alice])
        .await
        .expect("wallet");
    fence
        .execute(
            "UPDATE bucket_owners SET state = 'moved', owner = 'shard-2', epoch = 2 WHERE bucket = $1",
            &[&(bucket as i32)],
        )
        .await
        .expect("flip");
    target
        .execute(
            "INSERT INTO bucket_owners (bucket, state, owner, epoch) VALUES ($1, 'owned', 'shard-2', 2)",
            &[&(bucket as i32)],
        )
        .await
        .expect("own");
    fence.commit().await.expect("end fence");

    for deposit in deposits {
        let r = deposit.await.expect("task").expect("response");
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    }
    assert_eq!(balance_on(&app, 1, &alice).await.as_deref(), Some("120"), "every deposit landed on the new owner");
    assert_eq!(balance_on(&app, 0, &alice).await.as_deref(), Some("100"), "none on the old owner");
    // A retry of one of them replays its stored answer from the new owner.
    let r = app.adjust(&alice, "EUR", "5", "credit", "fenced-0").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    assert_eq!(balance_on(&app, 1, &alice).await.as_deref(), Some("120"));
}

#[tokio::test]
async fn a_bucket_being_received_answers_503_bucket_moving_and_nothing_is_stored_under_the_key() {
    let deployment = Deployment::new().await;
    let app = deployment.spawn_default().await;
    let alice = app.user_on_shard("recv-alice", 0);
    app.funded_user(&alice, "EUR", "100").await;
    let bucket = bucket_of(&app, &alice);
    // Mid-switch: the source has flipped, the target has not yet (a mover killed between
    // the two steps). Nobody may write.
    let source = app.shard_db(0).await;
    source
        .execute(
            "UPDATE bucket_owners SET state = 'moved', owner = 'shard-2', epoch = 2 WHERE bucket = $1",
            &[&(bucket as i32)],
        )
        .await
        .expect("flip");
    app.shard_db(1)
        .await
        .execute(
            "INSERT INTO bucket_owners (bucket, state, owner, epoch) VALUES ($1, 'incoming', 'shard-2', 2)",
            &[&(bucket as i32)],
        )
        .await
        .expect("incoming");
    let r = app.adjust(&alice, "EUR", "5", "credit", "mid-switch").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(body(r).await["code"], "bucket_moving");
    // The target finishes the switch; the same key now runs (it was not stored).
    app.shard_db(1)
        .await
        .execute("UPDATE bucket_owners SET state = 'owned' WHERE bucket = $1", &[&(bucket as i32)])
        .await
        .expect("own");
    let r = app.adjust(&alice, "EUR", "5", "credit", "mid-switch").await;
    // Shard-2 has no copy of alice in this test: the retry ran there (404), it was not
    // replayed from a stored 503.
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{:?}", r.text().await);
}

#[tokio::test]
async fn a_shard_added_owns_nothing_and_every_instance_learns_it_from_the_shards() {
    let deployment = Deployment::new().await;
    let app = deployment.spawn_default().await;
    let alice = app.user_on_shard("member-alice", 0);
    app.funded_user(&alice, "EUR", "10").await;
    // The fourth shard: a database the command creates on the first server.
    let url = format!("{}_s4", deployment.db_urls[0]);
    let db = url.rsplit('/').next().expect("db name").to_string();
    let router = shardwallet::startup::current_router(&app.settings).await.expect("router");
    let epoch = shardwallet::resharding::members::add(&router, "shard-4", &url).await.expect("add");
    assert_eq!(epoch, 2);
    assert_eq!(
        shardwallet::resharding::members::add(&router, "shard-4", &url).await.expect("re-add"),
        2,
        "re-running changes nothing"
    );
    let other = format!("{}_other", deployment.db_urls[0]);
    assert!(shardwallet::resharding::members::add(&router, "shard-4", &other).await.is_err(), "a name is one database");

    // `shards list` / GET /v1/admin/shards: four members, the new one empty.
    let r = app.get("/v1/admin/shards", &app.admin()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cluster = body(r).await;
    assert_eq!(cluster["epoch"], 2);
    let shards = cluster["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 4);
    assert_eq!(shards[3]["name"], "shard-4");
    assert_eq!(shards[3]["bucket_count"], 0);
    assert_eq!(shards[3]["users"], 0);
    assert_eq!(shards[0]["users"], 1);
    assert_eq!(shards[0]["buckets"], json!([RANGES[0]]));
    let owned: u64 = shards.iter().map(|s| s["bucket_count"].as_u64().expect("count")).sum();
    assert_eq!(owned, 16384);

    // `shards map` prints a map the file loader accepts, with the same routing.
    let text = router.layout().map.to_toml();
    let parsed = shardwallet::sharding::ShardMap::parse(&text, |_| None).expect("printed map parses");
    assert_eq!(parsed.shards().len(), 4);
    assert_eq!(parsed.fingerprint(), router.layout().map.fingerprint());

    // A running instance learns the member by polling the shards' epochs.
    assert!(app.router.refresh_if_newer().await);
    assert_eq!(app.router.epoch(), 2);
    assert_eq!(app.router.shards().len(), 4);
    assert!(!app.router.refresh_if_newer().await, "nothing newer the second time");

    app.stop().await;
    let server = deployment.db_urls[0].rsplit_once('/').expect("url").0;
    let admin = connect(&format!("{server}/postgres")).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.expect("drop shard-4");
}

#[tokio::test]
async fn an_outbox_row_names_the_buckets_its_transaction_claimed_so_a_fence_waits_only_for_its_own() {
    let deployment = Deployment::new().await;
    let app = deployment.spawn_default().await;
    let mut db = app.shard_db(0).await;
    let owned: Vec<i32> = db
        .query("SELECT bucket FROM bucket_owners WHERE state = 'owned' ORDER BY bucket LIMIT 2", &[])
        .await
        .expect("buckets")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A write claims its bucket first (`ownership::check_write`); what it enqueues
    // names that bucket, and every bucket it claimed.
    let tx = db.transaction().await.expect("begin");
    for bucket in &owned {
        tx.query("SELECT * FROM claim_bucket($1)", &[bucket]).await.expect("claim");
    }
    let row = tx
        .query_one("INSERT INTO outbox (msg_key, payload) VALUES ('k', 'p') RETURNING buckets", &[])
        .await
        .expect("enqueue");
    assert_eq!(row.get::<_, Option<Vec<i32>>>(0), Some(owned.clone()));
    tx.rollback().await.expect("rollback");
    // The claim does not outlive its transaction: a row written without one names no
    // bucket, and every fence waits for it.
    let tx = db.transaction().await.expect("begin");
    let row = tx
        .query_one("INSERT INTO payment_outbox (msg_key, payload) VALUES ('k', 'p') RETURNING buckets", &[])
        .await
        .expect("enqueue");
    assert_eq!(row.get::<_, Option<Vec<i32>>>(0), None);
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn a_confirmed_reaching_the_shard_that_gave_the_senders_bucket_away_completes_the_transfer_on_the_new_owner_only()
{
    use shardwallet::transfer::{
        messages::{Stage, TransferFacts},
        tcc,
    };
    let deployment = Deployment::new().await;
    let app = deployment.spawn_default().await;
    let alice = app.user_on_shard("conf-alice", 0);
    let bob = app.user_on_shard("conf-bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let r = app.transfer(&app.admin(), &alice, &bob, "EUR", "30", "conf-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = body(r).await["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&id, Duration::from_secs(30)).await["status"], "completed");
    let transfer_id: uuid::Uuid = id.parse().expect("uuid");

    // The last hop once more, as if its Confirmed were still on its way while alice's
    // bucket moved to shard-3: the transfer `confirming` on shard-1 and, as the move
    // copied it, on shard-3, which owns the bucket now; this instance is not told.
    let source = app.shard_db(0).await;
    source
        .execute(
            "UPDATE transfers SET state = 'confirming', completed_at = NULL WHERE transfer_id = $1",
            &[&transfer_id],
        )
        .await
        .expect("back to confirming");
    let row: serde_json::Value = source
        .query_one("SELECT to_jsonb(t) FROM transfers t WHERE transfer_id = $1", &[&transfer_id])
        .await
        .expect("row")
        .get(0);
    let target = app.shard_db(2).await;
    target
        .execute("INSERT INTO transfers SELECT * FROM jsonb_populate_record(NULL::transfers, $1)", &[&row])
        .await
        .expect("copy");
    flip(&app, bucket_of(&app, &alice), 0, 2, 2).await;

    let facts = TransferFacts {
        transfer_id,
        from_user_id: alice.clone(),
        to_user_id: bob.clone(),
        currency: "EUR".into(),
        amount: "30".into(),
        description: None,
    };
    tcc::handle(&app.router, &facts.message(Stage::Confirmed)).await.expect("Confirmed handled");
    let read = "SELECT state FROM transfers WHERE transfer_id = $1";
    let on_source: String = source.query_one(read, &[&transfer_id]).await.expect("state").get(0);
    let on_target: String = target.query_one(read, &[&transfer_id]).await.expect("state").get(0);
    assert_eq!(on_source, "confirming", "the shard that gave the bucket away is never written");
    assert_eq!(on_target, "completed", "the new owner completes the transfer");
}
