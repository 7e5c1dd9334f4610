//! `POST /v1/transfers/batch`: per-item answers in order, replay, atomic rollback,
//! concurrent overlapping batches, and the 1,000-item bound.
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

fn item(from: &str, to: &str, amount: &str, key: &str) -> Value {
    json!({ "from_user_id": from, "to_user_id": to, "currency": "EUR", "amount": amount, "idempotency_key": key })
}

async fn batch(app: &TestApp, token: &str, items: &[Value], atomic: bool) -> Response {
    app.post("/v1/transfers/batch", token, &json!({ "transfers": items, "atomic": atomic }), None).await
}

/// The statuses of a batch's answers, after checking they come one per item, in order.
fn statuses(answer: &Value, items: usize) -> Vec<u64> {
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), items, "one answer per item");
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["index"], i as u64, "answers in request order");
            r["status"].as_u64().expect("status")
        })
        .collect()
}

#[tokio::test]
async fn each_item_gets_its_single_requests_answer_in_order_and_a_retried_batch_replays_them() {
    let app = spawn_app().await;
    let (alice, bob, carol) =
        (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0), app.user_on_shard("carol", 1));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    app.funded_user(&carol, "EUR", "0").await;
    let ghost = app.user_on_shard("ghost", 0);
    let token = app.user_token(&alice);
    let mut missing_key = item(&alice, &bob, "1", "unused");
    missing_key.as_object_mut().expect("object").remove("idempotency_key");
    let items = vec![
        item(&alice, &bob, "30", "b-0"),   // 201
        item(&alice, &bob, "100", "b-1"),  // 422: 70 left
        item(&alice, &carol, "20", "b-2"), // 202, cross-shard
        item(&alice, &bob, "-5", "b-3"),   // 400 invalid_amount
        missing_key,                       // 400 idempotency_key_missing
        item(&alice, &ghost, "1", "b-5"),  // 404 user_not_found
        item(&alice, &alice, "1", "b-6"),  // 422 same_account
        item(&alice, &bob, "40", "b-7"),   // 201: 50 left before it
        item(&alice, &bob, "11", "b-8"),   // 422: 10 left
    ];
    let first = batch(&app, &token, &items, false).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = body(first).await;
    assert_eq!(statuses(&first, items.len()), [201, 422, 202, 400, 400, 404, 422, 201, 422]);
    let results = first["results"].as_array().expect("results");
    let codes: Vec<&str> =
        [1, 3, 4, 5, 6, 8].iter().map(|&i| results[i]["body"]["code"].as_str().expect("code")).collect();
    assert_eq!(
        codes,
        [
            "insufficient_funds",
            "invalid_amount",
            "idempotency_key_missing",
            "user_not_found",
            "same_account",
            "insufficient_funds"
        ]
    );
    // A completed item's answer is the transfer as the server recorded it.
    for i in [0, 7] {
        let id = results[i]["body"]["transfer_id"].as_str().expect("transfer_id");
        assert_eq!(app.get_transfer(id).await, results[i]["body"], "item {i}");
        assert_eq!(results[i]["body"]["status"], "completed");
    }
    let cross = results[2]["body"]["transfer_id"].as_str().expect("transfer_id");
    assert_eq!(app.wait_final(cross, Duration::from_secs(30)).await["status"], "completed");
    assert_eq!(app.balance(&alice, "EUR").await, "10");
    assert_eq!(app.balance(&bob, "EUR").await, "70");
    assert_eq!(app.balance(&carol, "EUR").await, "20");

    // The same batch again: every stored answer comes back as it was, nothing moves.
    let again = body(batch(&app, &token, &items, false).await).await;
    assert_eq!(statuses(&again, items.len()), statuses(&first, items.len()));
    for (i, (a, b)) in results.iter().zip(again["results"].as_array().expect("results")).enumerate() {
        let stored = ![3, 4].contains(&i);
        assert_eq!(b["replayed"], stored, "item {i} replayed");
        assert_eq!(a["body"], b["body"], "item {i} body");
    }
    // An item's key is the single request's key: the single request replays the item.
    let single = app.transfer(&token, &alice, &bob, "EUR", "30", "b-0").await;
    assert_eq!(single.status(), StatusCode::CREATED);
    assert_eq!(single.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(body(single).await, results[0]["body"]);
    let reused = app.transfer(&token, &alice, &bob, "EUR", "31", "b-0").await;
    assert_problem(reused, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    assert_eq!(app.balance(&alice, "EUR").await, "10");
    assert_eq!(app.balance(&bob, "EUR").await, "70");
    app.assert_verified().await;
}

#[tokio::test]
async fn an_atomic_batch_is_all_or_nothing_and_needs_its_senders_on_one_shard() {
    let app = spawn_app().await;
    let (alice, bob, carol) =
        (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0), app.user_on_shard("carol", 1));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    app.funded_user(&carol, "EUR", "50").await;
    let token = app.user_token(&alice);
    let failing = [item(&alice, &bob, "30", "a-0"), item(&alice, &carol, "20", "a-1"), item(&alice, &bob, "51", "a-2")];
    let refused = batch(&app, &token, &failing, true).await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
    assert_eq!(problem["index"], 2);
    assert_eq!(app.balance(&alice, "EUR").await, "100", "the failed batch left nothing behind");
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    let listed = body(app.get(&format!("/v1/users/{alice}/transfers"), &token).await).await;
    assert_eq!(listed["data"].as_array().expect("data").len(), 0, "no transfer of the failed batch");
    // Its keys were not stored: the items go through in a batch that can pay for them.
    let paying = &failing[..2];
    let done = batch(&app, &token, paying, true).await;
    assert_eq!(done.status(), StatusCode::OK);
    let done = body(done).await;
    assert_eq!(done["atomic"], true);
    assert_eq!(statuses(&done, 2), [201, 202]);
    let cross = done["results"][1]["body"]["transfer_id"].as_str().expect("transfer_id");
    assert_eq!(app.wait_final(cross, Duration::from_secs(30)).await["status"], "completed");
    let again = body(batch(&app, &token, paying, true).await).await;
    assert_eq!(statuses(&again, 2), [201, 202]);
    assert!(again["results"].as_array().expect("results").iter().all(|r| r["replayed"] == true));
    assert_eq!(again["results"][0]["body"], done["results"][0]["body"]);
    assert_eq!((app.balance(&alice, "EUR").await, app.balance(&bob, "EUR").await), ("50".into(), "30".into()));
    assert_eq!(app.balance(&carol, "EUR").await, "70");

    // Senders on two shards (an admin may send for anyone): refused whole.
    let spans = [item(&alice, &bob, "1", "s-0"), item(&carol, &alice, "1", "s-1")];
    assert_problem(
        batch(&app, &app.admin(), &spans, true).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "batch_spans_shards",
    )
    .await;
    // The same batch on its own items: each goes through.
    let each = body(batch(&app, &app.admin(), &spans, false).await).await;
    assert_eq!(statuses(&each, 2), [201, 202]);
    // A user may only send from themself, in every item.
    let others = [item(&alice, &bob, "1", "f-0"), item(&bob, &alice, "1", "f-1")];
    let forbidden = assert_problem(batch(&app, &token, &others, false).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(forbidden["index"], 1);
    app.assert_verified().await;
}

/// Batches naming the same wallets in different orders, atomic and not, run at once:
/// none deadlocks, no wallet goes below zero, and every answer matches the money moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_batches_neither_deadlock_nor_overdraw() {
    let app = spawn_app().await;
    let users: Vec<String> = (0..5).map(|n| app.user_on_shard(&format!("u{n}"), 0)).collect();
    for u in &users {
        app.funded_user(u, "EUR", "300").await;
    }
    let admin = app.admin();
    let batches = (0..8).map(|b| {
        let items: Vec<Value> = (0..60)
            .map(|i| {
                let (from, to) = if b % 2 == 0 { (i % 5, (i + 1) % 5) } else { ((i + 1) % 5, i % 5) };
                item(&users[from], &users[to], &format!("{}", 7 + i % 3), &format!("c-{b}-{i}"))
            })
            .collect();
        let (app, admin) = (&app, &admin);
        async move {
            let answer = batch(app, admin, &items, b % 4 == 3).await;
            (items, answer.status(), body(answer).await)
        }
    });
    let answers = futures::future::join_all(batches).await;
    let mut net = vec![0i64; users.len()];
    for (items, status, answer) in &answers {
        if *status != StatusCode::OK {
            // An atomic batch may fail whole for want of funds, and then moved nothing.
            assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            assert_eq!(answer["code"], "insufficient_funds");
            continue;
        }
        for (it, result) in items.iter().zip(answer["results"].as_array().expect("results")) {
            match result["status"].as_u64() {
                Some(201) => {
                    let amount: i64 = it["amount"].as_str().expect("amount").parse().expect("number");
                    let from = users.iter().position(|u| *u == it["from_user_id"]).expect("from");
                    let to = users.iter().position(|u| *u == it["to_user_id"]).expect("to");
                    net[from] -= amount;
                    net[to] += amount;
                }
                Some(422) => assert_eq!(result["body"]["code"], "insufficient_funds"),
                other => panic!("unexpected item answer {other:?}: {result}"),
            }
        }
    }
    for (u, delta) in users.iter().zip(&net) {
        assert_eq!(app.balance(u, "EUR").await, (300 + delta).to_string(), "{u}");
    }
    app.assert_verified().await;
}

#[tokio::test]
async fn a_batch_holds_one_to_a_thousand_items() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "5000").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let items: Vec<Value> = (0..1001).map(|i| item(&alice, &bob, "1", &format!("k-{i}"))).collect();
    assert_problem(batch(&app, &token, &items, false).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_problem(batch(&app, &token, &[], false).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let full = batch(&app, &token, &items[..1000], false).await;
    assert_eq!(full.status(), StatusCode::OK);
    let full = body(full).await;
    assert!(statuses(&full, 1000).iter().all(|&s| s == 201));
    // Same-shard items of one shard are applied together: one commit, one time.
    let times: std::collections::BTreeSet<&str> = full["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["body"]["created_at"].as_str().expect("at"))
        .collect();
    assert_eq!(times.len(), 1, "the items were not applied in one transaction");
    let atomic: Vec<Value> = (0..1000).map(|i| item(&alice, &bob, "2", &format!("t-{i}"))).collect();
    let full = batch(&app, &token, &atomic, true).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert!(statuses(&body(full).await, 1000).iter().all(|&s| s == 201));
    assert_eq!(app.balance(&bob, "EUR").await, "3000");
    assert_eq!(app.balance(&alice, "EUR").await, "2000");
    app.assert_verified().await;
}
