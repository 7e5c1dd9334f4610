//! Cross-shard transfers under failure: redelivery, empty rollback, suspension, a
//! process stopped between commit and publish, timeouts, and two consuming instances.
use std::time::Duration;

use reqwest::StatusCode;
use shardwallet::transfer::{
    messages::{Stage, TransferFacts},
    tcc,
};

use crate::helpers::*;

const FINAL_WITHIN: Duration = Duration::from_secs(90);

/// The facts of a transfer of `amount` EUR, with no description.
fn eur_facts(transfer_id: uuid::Uuid, from: String, to: String, amount: &str) -> TransferFacts {
    TransferFacts {
        transfer_id,
        from_user_id: from,
        to_user_id: to,
        currency: "EUR".into(),
        amount: amount.into(),
        description: None,
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str, id: &uuid::Uuid) -> i64 {
    db.query_one(sql, &[id]).await.expect("count").get(0)
}

/// A full-TCC cross-shard transfer of `amount` EUR from alice (100 EUR, on shard
/// `shards.0`) to bob (on shard `shards.1`) by an app whose relay publishes nothing and
/// whose Try times out after 1 s: its stages wait in the outbox.
async fn a_try_nobody_publishes(
    shards: (usize, usize),
    amount: &str,
) -> (std::sync::Arc<Deployment>, TestApp, String, String, uuid::Uuid) {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.transfers.relay_enabled = false;
    settings.transfers.direct_credit = false;
    settings.transfers.try_timeout_secs = 1;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", shards.0);
    let bob = app.user_on_shard("bob", shards.1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let sent = body(app.transfer(&app.user_token(&alice), &alice, &bob, "EUR", amount, "stuck").await).await;
    let id = sent["transfer_id"].as_str().expect("id").parse().expect("uuid");
    (deployment, app, alice, bob, id)
}

#[tokio::test]
async fn every_stage_delivered_twice_changes_nothing() {
    redeliver_every_stage(false).await;
}

#[tokio::test]
async fn every_stage_of_a_direct_credit_delivered_twice_changes_nothing() {
    redeliver_every_stage(true).await;
}

/// Completes a transfer (full Try/Confirm/Cancel, or direct credit), then delivers every
/// stage it went through (and, for a direct credit, a stray Try) again, directly and
/// through the broker.
async fn redeliver_every_stage(direct: bool) {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.transfers.direct_credit = direct;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let sent = body(app.transfer(&app.user_token(&alice), &alice, &bob, "EUR", "25", "d1").await).await;
    let id = sent["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&id, FINAL_WITHIN).await["status"], "completed");

    // Redeliver every stage, directly to the handlers and again through the broker.
    let facts = eur_facts(id.parse().expect("uuid"), alice.clone(), bob.clone(), "25");
    let stages = if direct {
        vec![Stage::DirectCredit, Stage::Confirmed, Stage::TryCredit]
    } else {
        vec![Stage::TryCredit, Stage::Tried { ok: true, reason: None }, Stage::ConfirmCredit, Stage::Confirmed]
    };
    let went_direct: bool = app
        .shard_db(0)
        .await
        .query_one("SELECT direct FROM transfers WHERE transfer_id = $1", &[&facts.transfer_id])
        .await
        .expect("transfer row")
        .get(0);
    assert_eq!(went_direct, direct, "the transfer took the path under test");
    for stage in &stages {
        tcc::handle(&app.router, &facts.message(stage.clone())).await.expect("redelivered stage");
    }
    let producer = shardwallet::messaging::kafka::producer(&app.settings.kafka).expect("producer");
    let topic = shardwallet::messaging::kafka::Topics::new(&app.settings.kafka.topic_prefix).stages;
    // Signed as the relay signs: these are genuine stages, delivered again.
    let auth = shardwallet::messaging::auth::MessageAuth::new(&app.settings.kafka).expect("message keys");
    for stage in &stages {
        let payload = serde_json::to_string(&facts.message(stage.clone())).expect("json");
        let headers = auth.headers(shardwallet::messaging::auth::Purpose::Stage, id.as_bytes(), payload.as_bytes());
        let record = rdkafka::producer::FutureRecord::to(&topic).key(&id).payload(&payload).headers(headers);
        producer.send(record, Duration::from_secs(5)).await.map_err(|(e, _)| e).expect("publish");
    }
    // The receiver answers each duplicate again; wait until those answers were handled.
    let receiver = app.shard_db(1).await;
    let sender = app.shard_db(0).await;
    eventually(Duration::from_secs(30), "duplicates to be answered and drained", || async {
        let outbox: i64 = sender.query_one("SELECT count(*) FROM outbox", &[]).await.ok()?.get(0);
        let outbox2: i64 = receiver.query_one("SELECT count(*) FROM outbox", &[]).await.ok()?.get(0);
        (outbox + outbox2 == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.balance(&alice, "EUR").await, "75");
    assert_eq!(app.balance(&bob, "EUR").await, "25");
    assert_eq!(app.get_transfer(&id).await["status"], "completed");
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    assert_eq!(count(&receiver, "SELECT count(*) FROM postings WHERE reference = $1", &uuid).await, 1);
    app.assert_verified().await;
}

#[tokio::test]
async fn cancel_before_try_and_try_after_cancel_leave_nothing_stuck_or_doubled() {
    let app = spawn_app().await;
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&bob, "EUR", "0").await;
    let alice = app.user_on_shard("alice", 0);
    let id = app.router.new_id_for(&shardwallet::domain::UserId::parse(&alice).expect("id")).uuid();
    let facts = eur_facts(id, alice, bob.clone(), "40");
    // Cancel arrives first: empty rollback.
    tcc::handle(&app.router, &facts.message(Stage::CancelCredit)).await.expect("cancel");
    // The delayed Try arrives afterwards: suspended, nothing reserved, nothing answered.
    tcc::handle(&app.router, &facts.message(Stage::TryCredit)).await.expect("late try");
    tcc::handle(&app.router, &facts.message(Stage::TryCredit)).await.expect("late try again");
    let db = app.shard_db(1).await;
    assert_eq!(count(&db, "SELECT count(*) FROM tcc_barriers WHERE transfer_id = $1", &id).await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM incoming_transfers WHERE transfer_id = $1", &id).await, 0);
    let answers: i64 =
        db.query_one("SELECT count(*) FROM outbox WHERE payload LIKE '%\"Tried\"%'", &[]).await.expect("q").get(0);
    assert_eq!(answers, 0, "a suspended Try must not be answered");
    // A Confirm can never follow; if one did, it is refused rather than crediting.
    assert!(tcc::handle(&app.router, &facts.message(Stage::ConfirmCredit)).await.is_err());
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_process_stopped_between_commit_and_publish_completes_after_restart() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.transfers.relay_enabled = false;
    settings.transfers.direct_credit = false;
    let crashed = deployment.spawn(settings).await;
    let alice = crashed.user_on_shard("alice", 2);
    let bob = crashed.user_on_shard("bob", 0);
    crashed.funded_user(&alice, "EUR", "100").await;
    crashed.funded_user(&bob, "EUR", "0").await;
    let sent = crashed.transfer(&crashed.user_token(&alice), &alice, &bob, "EUR", "45", "k1").await;
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    let id = body(sent).await["transfer_id"].as_str().expect("id").to_string();
    // Committed but never published: the sender's funds are held.
    let held = crashed.wallet(&alice, "EUR").await;
    assert_eq!((held["held"].as_str(), held["available"].as_str()), (Some("45"), Some("55")));
    assert_eq!(crashed.get_transfer(&id).await["status"], "pending");
    crashed.stop().await;

    let restarted = deployment.spawn_default().await;
    assert_eq!(restarted.wait_final(&id, FINAL_WITHIN).await["status"], "completed");
    assert_eq!(restarted.balance(&bob, "EUR").await, "45");
    let wallet = restarted.wallet(&alice, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("55"), Some("0")));
    restarted.assert_verified().await;
}

#[tokio::test]
async fn an_unanswered_try_times_out_and_a_late_answer_does_not_revive_it() {
    let (deployment, app, alice, bob, id) = a_try_nobody_publishes((1, 2), "80").await;
    let id = id.to_string();
    let done = app.wait_final(&id, FINAL_WITHIN).await;
    assert_eq!((done["status"].as_str(), done["reason"].as_str()), (Some("cancelled"), Some("timeout")));
    assert_eq!(app.wallet(&alice, "EUR").await["held"], "0");
    app.stop().await;

    // The outbox still holds TryCredit then CancelCredit; publishing them now must
    // leave the receiver uncredited and the sender whole.
    let later = deployment.spawn_default().await;
    let receiver = later.shard_db(2).await;
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    eventually(Duration::from_secs(30), "the receiver to see the cancel", || async {
        let n =
            count(&receiver, "SELECT count(*) FROM tcc_barriers WHERE transfer_id = $1 AND branch = 'cancel'", &uuid)
                .await;
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(later.balance(&bob, "EUR").await, "0");
    assert_eq!(later.balance(&alice, "EUR").await, "100");
    assert_eq!(later.get_transfer(&id).await["status"], "cancelled");
    later.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_the_work_and_one_stopping_mid_run_loses_nothing() {
    let deployment = Deployment::new().await;
    let first = deployment.spawn_default().await;
    let second = deployment.spawn_default().await;
    let users: Vec<String> = (0..6).map(|i| first.user_on_shard(&format!("p{i}"), i % SHARDS)).collect();
    for u in &users {
        first.funded_user(u, "EUR", "10000").await;
    }
    let send = |app: &TestApp, i: usize| {
        let (from, to) = (users[i % 6].clone(), users[(i + 1) % 6].clone());
        let token = app.user_token(&from);
        let (http, url) = (app.http.clone(), app.url("/v1/transfers"));
        async move {
            let body = serde_json::json!({ "from_user_id": from, "to_user_id": to, "currency": "EUR", "amount": "7" });
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", format!("m{i}"))
                .json(&body)
                .send()
                .await
                .expect("post");
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<serde_json::Value>().await.expect("json")["transfer_id"].as_str().expect("id").to_string()
        }
    };
    // Both instances take requests and consume stages...
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(send(if i % 2 == 0 { &first } else { &second }, i).await);
    }
    // ...then the first stops while its transfers are in flight; the second takes over
    // its partitions and the rest of the traffic.
    first.stop().await;
    for i in 60..120 {
        ids.push(send(&second, i).await);
    }
    for id in &ids {
        assert_eq!(second.wait_final(id, FINAL_WITHIN).await["status"], "completed");
    }
    let mut total = 0u64;
    for u in &users {
        total += second.balance(u, "EUR").await.parse::<u64>().expect("n");
    }
    assert_eq!(total, 60_000);
    second.assert_verified().await;
}

/// A broker of this test's own (Postgres storage, so a restart keeps its topics),
/// stopped and started by the test.
struct Broker {
    port: u16,
    storage: String,
    child: Option<std::process::Child>,
}

impl Broker {
    async fn start(storage_db: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let server = &env().pg[0];
        let (admin, conn) = tokio_postgres::connect(server, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        admin.batch_execute(&format!("CREATE DATABASE {storage_db}")).await.expect("broker db");
        let storage = format!("{}/{storage_db}", server.rsplit_once('/').expect("url").0);
        let mut broker = Self { port, storage, child: None };
        broker.resume().await;
        broker
    }

    async fn resume(&mut self) {
        let bin = env().nisshi.expect("SHARDWALLET_TEST_NISSHI is not set: run the tests with `make test`");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(bin)
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", &self.storage, "--group-initial-rebalance-delay", "100ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nisshi");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(30), "the broker to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_made_while_the_broker_is_down_complete_after_it_returns() {
    let storage_db = format!("t_broker_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut broker = Broker::start(&storage_db).await;
    let deployment = Deployment::with_kafka(&format!("127.0.0.1:{}", broker.port)).await;
    let app = deployment.spawn_default().await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 2);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let first = body(app.transfer(&token, &alice, &bob, "EUR", "10", "b1").await).await;
    assert_eq!(app.wait_final(first["transfer_id"].as_str().expect("id"), FINAL_WITHIN).await["status"], "completed");

    broker.kill();
    let during = app.transfer(&token, &alice, &bob, "EUR", "20", "b2").await;
    assert_eq!(during.status(), StatusCode::ACCEPTED, "the API keeps taking transfers without the broker");
    let id = body(during).await["transfer_id"].as_str().expect("id").to_string();
    let ready = app.http.get(app.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(ready).await["down"], serde_json::json!(["broker"]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.get_transfer(&id).await["status"], "pending");

    broker.resume().await;
    assert_eq!(app.wait_final(&id, FINAL_WITHIN).await["status"], "completed");
    assert_eq!(app.balance(&bob, "EUR").await, "30");
    app.assert_verified().await;
    app.stop().await;
    broker.kill();
    let (admin, conn) = tokio_postgres::connect(&env().pg[0], tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {storage_db} WITH (FORCE)")).await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_counted_and_replayable() {
    let app = spawn_app().await;
    // Wait until the consumer has created the topics.
    let admin = app.admin();
    eventually(Duration::from_secs(30), "the dead-letter count to be served", || async {
        (app.get("/v1/admin/dead-letters", &admin).await.status() == StatusCode::OK).then_some(())
    })
    .await;
    let producer = shardwallet::messaging::kafka::producer(&app.settings.kafka).expect("producer");
    let topics = shardwallet::messaging::kafka::Topics::new(&app.settings.kafka.topic_prefix);
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topics.stages).key("poison").payload("{not a stage"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("publish");
    let counts = eventually(Duration::from_secs(30), "the poison message to be dead-lettered", || async {
        let counts = body(app.get("/v1/admin/dead-letters", &admin).await).await;
        (counts["total"] == 1).then_some(counts)
    })
    .await;
    assert_eq!(counts["pending"], 1);
    // A replay sends it back to the stage topic (where it is dead-lettered again: it is
    // still poison), and the first dead letter is no longer pending.
    let replayed = shardwallet::messaging::dlq::replay(&app.settings.kafka, &topics, &producer).await.expect("replay");
    assert_eq!(replayed, 1);
    let counts = eventually(Duration::from_secs(30), "the replayed message to come back", || async {
        let counts = body(app.get("/v1/admin/dead-letters", &admin).await).await;
        (counts["total"] == 2).then_some(counts)
    })
    .await;
    assert_eq!(counts["pending"], 1);
}

#[tokio::test]
async fn a_lost_cancel_is_sent_again_until_the_receiver_acknowledges_it() {
    let (deployment, app, alice, bob, id) = a_try_nobody_publishes((0, 1), "30").await;
    let (sender, receiver) = (app.shard_db(0).await, app.shard_db(1).await);

    // The receiver gets the Try and answers, but the answer is lost (as a broker on
    // memory storage loses what it held when it restarts).
    let facts = eur_facts(id, alice.clone(), bob.clone(), "30");
    tcc::handle(&app.router, &facts.message(Stage::TryCredit)).await.expect("try");
    receiver.execute("DELETE FROM outbox", &[]).await.expect("lose Tried");
    // The sender times out and cancels; its CancelCredit is lost too.
    let done = app.wait_final(&id.to_string(), FINAL_WITHIN).await;
    assert_eq!(done["reason"], "timeout");
    sender.execute("DELETE FROM outbox", &[]).await.expect("lose TryCredit and CancelCredit");
    let state = "SELECT state FROM incoming_transfers WHERE transfer_id = $1";
    let incoming: String = receiver.query_one(state, &[&id]).await.expect("incoming").get(0);
    assert_eq!(incoming, "tried", "the receiver still sees a pending incoming transfer");
    app.stop().await;

    // A process with a working relay: the sweeper sends the Cancel again until the
    // receiver has recorded it and acknowledged.
    let mut settings = deployment.settings();
    settings.transfers.redrive_after_secs = 1;
    let app = deployment.spawn(settings).await;
    eventually(
        Duration::from_secs(30),
        "the receiver to record the cancel and the sender its acknowledgement",
        || async {
            let incoming: String = receiver.query_one(state, &[&id]).await.ok()?.get(0);
            let acked: Option<chrono::DateTime<chrono::Utc>> = sender
                .query_one("SELECT cancel_acked_at FROM transfers WHERE transfer_id = $1", &[&id])
                .await
                .ok()?
                .get(0);
            (incoming == "cancelled" && acked.is_some()).then_some(())
        },
    )
    .await;
    assert_eq!(app.balance(&alice, "EUR").await, "100");
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    app.assert_verified().await;
}

/// The receiver's DirectCredit runs as one statement (V16) when nothing of the transfer
/// is recorded, and the general path otherwise. The same DirectCredit handled by many
/// tasks at once (redeliveries racing the consumer's own delivery) credits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_direct_credit_handled_many_times_at_once_credits_once() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    // Bob's wallet is locked, so the consumer's credit waits, and every task below with it.
    let mut blocker = app.shard_db(1).await;
    let lock = blocker.transaction().await.expect("begin");
    lock.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", &[&bob]).await.expect("lock wallet");
    let sent = app.transfer(&app.user_token(&alice), &alice, &bob, "EUR", "25", "c1").await;
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    let id = body(sent).await["transfer_id"].as_str().expect("id").to_string();
    let facts = eur_facts(id.parse().expect("uuid"), alice.clone(), bob.clone(), "25");
    let handlers = (0..8).map(|_| {
        let (router, msg) = (app.router.clone(), facts.message(Stage::DirectCredit));
        tokio::spawn(async move { tcc::handle(&router, &msg).await })
    });
    let handlers: Vec<_> = handlers.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.rollback().await.expect("release the wallet");
    for handled in futures::future::join_all(handlers).await {
        handled.expect("task").expect("DirectCredit handled");
    }
    assert_eq!(app.wait_final(&id, FINAL_WITHIN).await["status"], "completed");
    assert_eq!(app.balance(&alice, "EUR").await, "75");
    assert_eq!(app.balance(&bob, "EUR").await, "25", "credited once");
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    let receiver = app.shard_db(1).await;
    assert_eq!(count(&receiver, "SELECT count(*) FROM postings WHERE reference = $1", &uuid).await, 1);
    assert_eq!(count(&receiver, "SELECT count(*) FROM incoming_transfers WHERE transfer_id = $1", &uuid).await, 1);
    app.assert_verified().await;
}

/// The consumer applies a fetched batch's DirectCredits and Confirmed answers with one
/// statement per shard (V17). It applies only what the state machine would apply by
/// itself in the common case: a DirectCredit whose transfer is already recorded, or
/// whose receiver has no wallet, and a Confirmed for a transfer not `confirming`, are
/// left to the general path. Two credits of one wallet in a batch show the balance
/// after each in order.
#[tokio::test]
async fn a_batch_of_stages_applies_the_fresh_ones_and_leaves_the_rest_to_the_general_path() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.transfers.relay_enabled = false;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", 0);
    let (bob, carol) = (app.user_on_shard("bob", 1), app.user_on_shard("carol", 1));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "5").await;
    app.funded_user(&carol, "EUR", "0").await;
    let token = app.user_token(&alice);
    let mut facts = Vec::new();
    for (to, amount, key) in [(&bob, "10", "b1"), (&carol, "20", "b2"), (&bob, "30", "b3"), (&carol, "1", "b4")] {
        let sent = app.transfer(&token, &alice, to, "EUR", amount, key).await;
        assert_eq!(sent.status(), StatusCode::ACCEPTED);
        facts.push(eur_facts(
            body(sent).await["transfer_id"].as_str().expect("id").parse().expect("uuid"),
            alice.clone(),
            to.clone(),
            amount,
        ));
    }
    // The fourth was credited already (a redelivery finds it recorded).
    tcc::handle(&app.router, &facts[3].message(Stage::DirectCredit)).await.expect("credited by itself");
    let nobody = TransferFacts { to_user_id: app.user_on_shard("nobody", 1), ..facts[0].clone() };
    let nobody = TransferFacts {
        transfer_id: app.router.new_id_for(&shardwallet::domain::UserId::parse(&alice).expect("user")).uuid(),
        ..nobody
    };
    let credits: Vec<_> =
        facts.iter().chain([&nobody]).map(|f| Some(f.message(Stage::DirectCredit))).chain([None]).collect();
    let applied = tcc::batch::apply(&app.router, &credits).await;
    assert_eq!(applied.done, [true, true, true, false, false, false]);
    assert_eq!(applied.woken, [1]);
    assert_eq!(app.balance(&bob, "EUR").await, "45");
    assert_eq!(app.balance(&carol, "EUR").await, "21");
    let entries = body(app.get(&format!("/v1/users/{bob}/wallets/EUR/entries"), &app.user_token(&bob)).await).await;
    let after: Vec<&str> =
        entries["data"].as_array().expect("entries").iter().filter_map(|e| e["balance_after"].as_str()).collect();
    assert_eq!(after, ["45", "15", "5"], "newest first: each credit's balance after, in the batch's order");

    // The senders' side: the first three are confirming; one Confirmed is for a
    // transfer that is not.
    let unknown = TransferFacts {
        transfer_id: app.router.new_id_for(&shardwallet::domain::UserId::parse(&alice).expect("user")).uuid(),
        ..facts[0].clone()
    };
    let confirms: Vec<_> = facts.iter().take(3).chain([&unknown]).map(|f| Some(f.message(Stage::Confirmed))).collect();
    let applied = tcc::batch::apply(&app.router, &confirms).await;
    assert_eq!(applied.done, [true, true, true, false]);
    for f in facts.iter().take(3) {
        assert_eq!(app.get_transfer(&f.transfer_id.to_string()).await["status"], "completed");
    }
    // Applied again, nothing changes and nothing is applied twice.
    assert_eq!(tcc::batch::apply(&app.router, &credits).await.done, [false; 6]);
    assert_eq!(tcc::batch::apply(&app.router, &confirms).await.done, [false; 4]);
    assert_eq!(app.balance(&bob, "EUR").await, "45");
    assert_eq!(app.balance(&alice, "EUR").await, "39");
    let receiver = app.shard_db(1).await;
    for f in &facts {
        let postings = count(&receiver, "SELECT count(*) FROM postings WHERE reference = $1", &f.transfer_id).await;
        assert_eq!(postings, 1, "one credit per transfer");
    }
}
