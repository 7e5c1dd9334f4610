//! Cross-shard transfers through the real broker: completion, cancellation, listing,
//! and a storm of concurrent transfers with conservation checked.
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;

use crate::helpers::*;

const FINAL_WITHIN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_cross_shard_transfer_is_pending_then_completes_and_releases_the_hold() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "5").await;

    let sent = app.transfer(&app.user_token(&alice), &alice, &bob, "EUR", "30", "x1").await;
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    let sent = body(sent).await;
    assert_eq!(sent["status"], "pending");
    assert_eq!(sent["route"], "cross_shard");
    let id = sent["transfer_id"].as_str().expect("id").to_string();

    let done = app.wait_final(&id, FINAL_WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["completed_at"].is_string());
    let sender = app.wallet(&alice, "EUR").await;
    assert_eq!((sender["balance"].as_str(), sender["held"].as_str()), (Some("70"), Some("0")));
    assert_eq!(app.balance(&bob, "EUR").await, "35");

    let incoming = body(app.get(&format!("/v1/users/{bob}/transfers"), &app.user_token(&bob)).await).await;
    let incoming = &incoming["data"][0];
    assert_eq!(incoming["transfer_id"], id.as_str());
    eventually(Duration::from_secs(30), "the receiver's record to be completed", || async {
        let list = body(app.get(&format!("/v1/users/{bob}/transfers"), &app.admin()).await).await;
        (list["data"][0]["status"] == "completed").then_some(())
    })
    .await;
    let outgoing = body(app.get(&format!("/v1/users/{alice}/transfers"), &app.user_token(&alice)).await).await;
    assert_eq!(outgoing["data"][0]["status"], "completed");
    let report = app.assert_verified().await;
    assert_eq!(report.totals["EUR"], "0");
}

#[tokio::test]
async fn a_transfer_to_an_unknown_user_or_currency_is_cancelled_and_funds_released() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 2);
    let bob = app.user_on_shard("bob", 0);
    let ghost = app.user_on_shard("ghost", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "USD", "0").await;
    let token = app.user_token(&alice);

    for (to, key, reason) in [(&ghost, "c1", "user_not_found"), (&bob, "c2", "currency_mismatch")] {
        let sent = app.transfer(&token, &alice, to, "EUR", "60", key).await;
        assert_eq!(sent.status(), StatusCode::ACCEPTED);
        let id = body(sent).await["transfer_id"].as_str().expect("id").to_string();
        let done = app.wait_final(&id, FINAL_WITHIN).await;
        assert_eq!(done["status"], "cancelled");
        assert_eq!(done["reason"], reason);
        let wallet = app.wallet(&alice, "EUR").await;
        assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("100"), Some("0")));
    }
    assert_eq!(app.balance(&bob, "USD").await, "0");
    // A receiver found not ready is not remembered as such: once bob has a EUR wallet,
    // the next transfer goes direct and credits him.
    assert_eq!(app.create_wallet(&bob, "EUR").await.status(), StatusCode::CREATED);
    let sent = app.transfer(&token, &alice, &bob, "EUR", "60", "c3").await;
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    let id = body(sent).await["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&id, FINAL_WITHIN).await["status"], "completed");
    assert_eq!(app.balance(&bob, "EUR").await, "60");
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    let direct: bool = app
        .shard_db(2)
        .await
        .query_one("SELECT direct FROM transfers WHERE transfer_id = $1", &[&uuid])
        .await
        .expect("transfer row")
        .get(0);
    assert!(direct, "the receiver's new wallet was read, not a remembered no");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_cross_shard_transfer_beyond_the_available_funds_is_refused_at_once() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 2);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    // 70 held by the first transfer leaves 30 available, whatever the broker is doing.
    assert_eq!(app.transfer(&token, &alice, &bob, "EUR", "70", "f1").await.status(), StatusCode::ACCEPTED);
    let wallet = app.wallet(&alice, "EUR").await;
    let available: u32 = wallet["available"].as_str().and_then(|a| a.parse().ok()).expect("available");
    assert!(available == 30, "{wallet}");
    let refused = app.transfer(&token, &alice, &bob, "EUR", "31", "f2").await;
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_concurrent_random_transfers_all_finish_and_conserve_money() {
    let app = spawn_app().await;
    let users: Vec<String> = (0..50).map(|i| app.user_on_shard(&format!("u{i}"), i % SHARDS)).collect();
    for u in &users {
        app.funded_user(u, "EUR", "1000").await;
    }
    let tokens: Vec<String> = users.iter().map(|u| app.user_token(u)).collect();
    let plan: Vec<(usize, usize, u32)> = {
        let mut rng = rand::thread_rng();
        (0..1000)
            .map(|_| {
                let from = rng.gen_range(0..users.len());
                let to = (from + rng.gen_range(1..users.len())) % users.len();
                (from, to, rng.gen_range(1..200))
            })
            .collect()
    };
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let requests = plan.iter().enumerate().map(|(i, (from, to, amount))| {
        let semaphore = semaphore.clone();
        let (app, users, tokens) = (&app, &users, &tokens);
        async move {
            let _permit = semaphore.acquire().await.expect("permit");
            // A client of the real service: a 503 (admission control's `overloaded`)
            // is retried with the same key after its Retry-After.
            let r = app
                .transfer_retrying(
                    &tokens[*from],
                    &users[*from],
                    &users[*to],
                    "EUR",
                    &amount.to_string(),
                    &format!("s{i}"),
                )
                .await;
            match r.status() {
                StatusCode::CREATED | StatusCode::ACCEPTED => body(r).await["transfer_id"].as_str().map(str::to_string),
                _ => {
                    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
                    None
                }
            }
        }
    });
    let ids: Vec<String> = futures::future::join_all(requests).await.into_iter().flatten().collect();
    assert!(ids.len() > 500, "only {} transfers accepted", ids.len());
    for id in &ids {
        let done = app.wait_final(id, FINAL_WITHIN).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let mut total = 0u64;
    for u in &users {
        let wallet = app.wallet(u, "EUR").await;
        assert_eq!(wallet["held"], "0", "{wallet}");
        total += wallet["balance"].as_str().and_then(|b| b.parse::<u64>().ok()).expect("balance");
    }
    assert_eq!(total, 50 * 1000, "money was created or destroyed");
    let report = app.assert_verified().await;
    assert_eq!(report.totals["EUR"], "0");
}

#[tokio::test]
async fn an_overloaded_shard_refuses_cross_shard_transfers_without_storing_the_key() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // One transfer in flight fills the sender's shard: with no relay it stays there.
    settings.transfers.relay_enabled = false;
    settings.transfers.admission_max_in_flight = 1;
    settings.transfers.admission_sample_ms = 20;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    let carol = app.user_on_shard("carol", 0);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    app.funded_user(&carol, "EUR", "0").await;
    let token = app.user_token(&alice);

    let first = app.transfer(&token, &alice, &bob, "EUR", "10", "first").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first = body(first).await["transfer_id"].as_str().expect("id").to_string();
    let refused = app.transfer(&token, &alice, &bob, "EUR", "20", "second").await;
    let retry_after = refused.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Same-shard transfers are not held back, and nothing was taken for the refusal.
    assert_eq!(app.transfer(&token, &alice, &carol, "EUR", "5", "local").await.status(), StatusCode::CREATED);
    assert_eq!(app.wallet(&alice, "EUR").await["available"], "85");
    app.stop().await;

    // Once the backlog drains, the client's retry with the same key is a new transfer.
    let app = deployment.spawn_default().await;
    assert_eq!(app.wait_final(&first, FINAL_WITHIN).await["status"], "completed");
    let retried = eventually(Duration::from_secs(30), "room for the retry", || async {
        let response = app.transfer(&token, &alice, &bob, "EUR", "20", "second").await;
        (response.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    assert!(retried.headers().get("idempotent-replayed").is_none(), "the 503 was not stored under the key");
    let id = body(retried).await["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&id, FINAL_WITHIN).await["status"], "completed");
    assert_eq!(app.balance(&bob, "EUR").await, "30");
    app.assert_verified().await;
}

/// An idle stage consumer stops fetching (`messaging::consumer::Idle`): after
/// `IDLE_AFTER` without a message it pauses, resumes at once when its own relay
/// publishes, and looks every second for what other instances published. After both
/// of two instances went quiet, transfers sent through one of them complete without a
/// re-drive, though some of their stages land on the other's partitions, which nothing
/// of its own wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_after_both_instances_went_idle_complete_without_a_redrive() {
    let deployment = Deployment::new().await;
    let a = deployment.spawn_default().await;
    let _b = deployment.spawn_default().await;
    let alice = a.user_on_shard("idle-alice", 0);
    let bob = a.user_on_shard("idle-bob", 1);
    a.funded_user(&alice, "EUR", "100").await;
    a.funded_user(&bob, "EUR", "100").await;
    let mut ids = Vec::new();
    for round in 0..2 {
        // Quiet for longer than a consumer waits before it pauses.
        tokio::time::sleep(shardwallet::messaging::consumer::IDLE_AFTER + Duration::from_secs(2)).await;
        let sends = (0..8).map(|i| {
            let (a, alice, bob) = (&a, &alice, &bob);
            async move {
                let r = a.transfer(&a.admin(), alice, bob, "EUR", "1", &format!("idle-{round}-{i}")).await;
                assert_eq!(r.status(), StatusCode::ACCEPTED, "transfer {round}/{i}");
                body(r).await["transfer_id"].as_str().expect("id").to_string()
            }
        });
        ids.extend(futures::future::join_all(sends).await);
        for id in &ids {
            assert_eq!(a.wait_final(id, FINAL_WITHIN).await["status"], "completed", "transfer {id}");
        }
    }
    assert_eq!(a.balance(&alice, "EUR").await, "84");
    assert_eq!(a.balance(&bob, "EUR").await, "116");
    // None waited for the sweeper (5 s) to publish its stage again.
    let redriven: i64 = a
        .shard_db(0)
        .await
        .query_one("SELECT count(*) FROM transfers WHERE from_user = $1 AND redrives > 0", &[&alice])
        .await
        .expect("redrives")
        .get(0);
    assert_eq!(redriven, 0, "a stage waited on a paused consumer until the sweeper re-drove it");
}
