//! Idempotency keys: replay, mismatch, concurrent duplicates, retention.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_retry_replays_the_original_response_byte_for_byte_and_moves_money_once() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let first = app.transfer(&token, &alice, &bob, "EUR", "30", "pay-1").await;
    let first_status = first.status();
    let first_body = first.bytes().await.expect("body");
    let retry = app.transfer(&token, &alice, &bob, "EUR", "30", "pay-1").await;
    assert_eq!(retry.status(), first_status);
    assert_eq!(retry.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(retry.bytes().await.expect("body"), first_body);
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    assert_eq!(app.balance(&bob, "EUR").await, "30");
}

/// A same-shard transfer's answer is written before the server records the transfer
/// (one statement, V13): it must be exactly what the server recorded, as a later read
/// and the entries show it.
#[tokio::test]
async fn a_completed_transfers_answer_is_what_a_later_read_shows() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let created = app.transfer(&token, &alice, &bob, "EUR", "30", "pay-1").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers().get("content-type").map(|v| v.as_bytes()), Some(&b"application/json"[..]));
    let created = body(created).await;
    assert_eq!(created["status"], "completed");
    assert_eq!(created["route"], "local");
    assert_eq!(created["amount"], "30");
    let id = created["transfer_id"].as_str().expect("transfer_id");
    let read = app.get(&format!("/v1/transfers/{id}"), &token).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(body(read).await, created, "the answer differs from what was recorded");
    let entries = body(app.get(&format!("/v1/users/{bob}/wallets/EUR/entries"), &app.user_token(&bob)).await).await;
    assert_eq!(entries["data"][0]["amount"], "30");
    assert_eq!(entries["data"][0]["balance_after"], "30");
    assert_eq!(entries["data"][0]["reference"], id);
    assert_eq!(app.balance(&alice, "EUR").await, "70");
}

#[tokio::test]
async fn the_same_key_with_another_request_is_422_and_a_missing_key_is_400() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    assert_eq!(app.transfer(&token, &alice, &bob, "EUR", "30", "pay-1").await.status(), StatusCode::CREATED);
    let reused = app.transfer(&token, &alice, &bob, "EUR", "31", "pay-1").await;
    assert_problem(reused, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    let body = json!({ "from_user_id": alice, "to_user_id": bob, "currency": "EUR", "amount": "1" });
    let missing = app.post("/v1/transfers", &token, &body, None).await;
    assert_problem(missing, StatusCode::BAD_REQUEST, "idempotency_key_missing").await;
    let too_long = app.post("/v1/transfers", &token, &body, Some(&"k".repeat(256))).await;
    assert_problem(too_long, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.balance(&alice, "EUR").await, "70");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_never_apply_twice() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    send_twenty_duplicates(&app, &alice, &bob, StatusCode::CREATED).await;
    assert_eq!(app.balance(&alice, "EUR").await, "993");
    assert_eq!(app.balance(&bob, "EUR").await, "7");
}

/// Twenty concurrent requests under one key, from a funded `alice` to `bob`: each answer
/// is `success` (all the same bytes) or 409 in progress. Returns the answer.
async fn send_twenty_duplicates(app: &TestApp, alice: &str, bob: &str, success: StatusCode) -> serde_json::Value {
    app.funded_user(alice, "EUR", "1000").await;
    app.funded_user(bob, "EUR", "0").await;
    let token = app.user_token(alice);
    let requests = (0..20).map(|_| app.transfer(&token, alice, bob, "EUR", "7", "same-key"));
    let responses = futures::future::join_all(requests).await;
    let mut bodies = Vec::new();
    for r in responses {
        match r.status() {
            s if s == success => bodies.push(r.bytes().await.expect("body")),
            StatusCode::CONFLICT => {
                assert_problem(r, StatusCode::CONFLICT, "idempotency_request_in_progress").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(!bodies.is_empty());
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "replays differ from the original");
    serde_json::from_slice(&bodies[0]).expect("json")
}

#[tokio::test]
async fn a_refusal_is_replayed_too_so_a_retry_cannot_turn_it_into_an_effect() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "10").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let refused = app.transfer(&token, &alice, &bob, "EUR", "50", "big").await;
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
    assert_eq!(app.adjust(&alice, "EUR", "100", "credit", "topup").await.status(), StatusCode::CREATED);
    let retry = app.transfer(&token, &alice, &bob, "EUR", "50", "big").await;
    assert_problem(retry, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
    assert_eq!(app.balance(&alice, "EUR").await, "110");
}

#[tokio::test]
async fn keys_are_pruned_after_the_retention_period() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.idempotency.retention_hours = 0;
    let app = deployment.spawn(settings).await;
    app.funded_user("alice", "EUR", "0").await;
    let first = body(app.adjust("alice", "EUR", "5", "credit", "once").await).await;
    let shard = app.router.for_user(&shardwallet::domain::UserId::parse("alice").expect("id")).index;
    let db = app.shard_db(shard).await;
    eventually(Duration::from_secs(30), "the expired key to be pruned", || async {
        let n: i64 = db.query_one("SELECT count(*) FROM idempotency_keys WHERE key = 'once'", &[]).await.ok()?.get(0);
        (n == 0).then_some(())
    })
    .await;
    let second = body(app.adjust("alice", "EUR", "5", "credit", "once").await).await;
    assert_ne!(first["entry_id"], second["entry_id"]);
    assert_eq!(app.balance("alice", "EUR").await, "10");
}

/// A direct cross-shard transfer's answer is written before the server records the
/// transfer (one statement, V16): it must be what the server recorded, and a retry
/// replays it byte for byte.
#[tokio::test]
async fn a_cross_shard_transfers_answer_is_what_the_server_recorded() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 1));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let created = app.transfer(&token, &alice, &bob, "EUR", "30", "x-1").await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let created_bytes = created.bytes().await.expect("body");
    let created: serde_json::Value = serde_json::from_slice(&created_bytes).expect("json");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["route"], "cross_shard");
    let id = created["transfer_id"].as_str().expect("transfer_id");
    let done = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    for field in
        ["transfer_id", "from_user_id", "to_user_id", "currency", "amount", "description", "route", "created_at"]
    {
        assert_eq!(done[field], created[field], "{field} differs from what was recorded");
    }
    let retry = app.transfer(&token, &alice, &bob, "EUR", "30", "x-1").await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(retry.bytes().await.expect("body"), created_bytes);
    let entries = body(app.get(&format!("/v1/users/{alice}/wallets/EUR/entries"), &token).await).await;
    assert_eq!(entries["data"][0]["amount"], "-30");
    assert_eq!(entries["data"][0]["balance_after"], "70");
    assert_eq!(entries["data"][0]["reference"], id);
    let received = body(app.get(&format!("/v1/users/{bob}/wallets/EUR/entries"), &app.user_token(&bob)).await).await;
    assert_eq!(received["data"][0]["amount"], "30");
    assert_eq!(received["data"][0]["balance_after"], "30");
    assert_eq!(received["data"][0]["reference"], id);
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    assert_eq!(app.balance(&bob, "EUR").await, "30");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cross_shard_duplicates_never_apply_twice() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 1));
    let sent = send_twenty_duplicates(&app, &alice, &bob, StatusCode::ACCEPTED).await;
    let id = sent["transfer_id"].as_str().expect("id");
    assert_eq!(app.wait_final(id, Duration::from_secs(60)).await["status"], "completed");
    assert_eq!(app.balance(&alice, "EUR").await, "993");
    assert_eq!(app.balance(&bob, "EUR").await, "7");
    app.assert_verified().await;
}
