//! Users, wallets, adjustments, same-shard transfers, history, reversal, verify.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn users_and_wallets_are_created_once_and_validated() {
    let app = spawn_app().await;
    let created = app.create_user("alice").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(body(created).await["user_id"], "alice");
    assert_problem(app.create_user("alice").await, StatusCode::CONFLICT, "user_exists").await;
    assert_problem(app.create_user("al ice").await, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_problem(app.create_user(&"a".repeat(65)).await, StatusCode::BAD_REQUEST, "invalid_request").await;

    let wallet = app.create_wallet("alice", "EUR").await;
    assert_eq!(wallet.status(), StatusCode::CREATED);
    assert_eq!(body(wallet).await["balance"], "0");
    assert_problem(app.create_wallet("alice", "EUR").await, StatusCode::CONFLICT, "wallet_exists").await;
    assert_problem(app.create_wallet("alice", "eur").await, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_problem(app.create_wallet("nobody", "EUR").await, StatusCode::NOT_FOUND, "user_not_found").await;
    assert_eq!(app.create_wallet("alice", "USD").await.status(), StatusCode::CREATED);

    let user = body(app.get("/v1/users/alice", &app.user_token("alice")).await).await;
    let currencies: Vec<&Value> = user["wallets"].as_array().expect("wallets").iter().map(|w| &w["currency"]).collect();
    assert_eq!(currencies, [&json!("EUR"), &json!("USD")]);
    let list = body(app.get("/v1/users/alice/wallets", &app.admin()).await).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2));
    assert_problem(app.get("/v1/users/nobody", &app.admin()).await, StatusCode::NOT_FOUND, "user_not_found").await;
    assert_problem(app.get("/v1/users/nobody/wallets", &app.admin()).await, StatusCode::NOT_FOUND, "user_not_found")
        .await;
    assert_problem(
        app.get("/v1/users/alice/wallets/GBP", &app.admin()).await,
        StatusCode::NOT_FOUND,
        "wallet_not_found",
    )
    .await;
    assert_problem(app.get("/v1/nowhere", &app.admin()).await, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn malformed_bodies_and_amounts_are_400_problems() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let raw = app
        .http
        .post(app.url("/v1/transfers"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "k")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_problem(raw, StatusCode::BAD_REQUEST, "invalid_request").await;
    let wrong_type = json!({ "from_user_id": 5, "to_user_id": bob, "currency": "EUR", "amount": "1" });
    assert_problem(
        app.post("/v1/transfers", &token, &wrong_type, Some("k")).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    let bad_amounts = [
        json!("01"),
        json!("1.0"),
        json!("-5"),
        json!("+5"),
        json!("1e3"),
        json!(""),
        json!(" 5"),
        json!("0x10"),
        json!(0),
        json!(1.5),
        json!(null),
        json!(true),
        json!("1".repeat(37)),
    ];
    for (i, amount) in bad_amounts.iter().enumerate() {
        let request = json!({ "from_user_id": alice, "to_user_id": bob, "currency": "EUR", "amount": amount });
        let response = app.post("/v1/transfers", &token, &request, Some(&format!("bad-{i}"))).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_amount").await;
        let adjust =
            json!({ "user_id": alice, "currency": "EUR", "amount": amount, "direction": "debit", "reason": "x" });
        assert_problem(
            app.post("/v1/admin/adjustments", &app.admin(), &adjust, Some(&format!("adj-{i}"))).await,
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        )
        .await;
    }
    let integer = json!({ "from_user_id": alice, "to_user_id": bob, "currency": "EUR", "amount": 5 });
    assert_eq!(app.post("/v1/transfers", &token, &integer, Some("int")).await.status(), StatusCode::CREATED);
    assert_eq!(app.balance(&alice, "EUR").await, "95");
}

#[tokio::test]
async fn adjustments_credit_and_debit_and_never_overdraw() {
    let app = spawn_app().await;
    app.funded_user("alice", "EUR", "0").await;
    let credit = body(app.adjust("alice", "EUR", "100", "credit", "a1").await).await;
    assert_eq!(credit["balance_after"], "100");
    let debit = app.adjust("alice", "EUR", "30", "debit", "a2").await;
    assert_eq!(debit.status(), StatusCode::CREATED);
    assert_eq!(body(debit).await["balance_after"], "70");
    assert_problem(
        app.adjust("alice", "EUR", "71", "debit", "a3").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    assert_problem(app.adjust("alice", "GBP", "1", "credit", "a4").await, StatusCode::NOT_FOUND, "wallet_not_found")
        .await;
    assert_problem(app.adjust("ghost", "EUR", "1", "credit", "a5").await, StatusCode::NOT_FOUND, "user_not_found")
        .await;
    assert_eq!(app.balance("alice", "EUR").await, "70");
    app.assert_verified().await;
}

#[tokio::test]
async fn same_shard_transfers_complete_at_once_and_refuse_what_they_must() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 2);
    let bob = app.user_on_shard("bob", 2);
    let carol = app.user_on_shard("carol", 2);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    app.funded_user(&carol, "USD", "0").await;
    let token = app.user_token(&alice);

    let sent = app.transfer(&token, &alice, &bob, "EUR", "40", "t1").await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let sent = body(sent).await;
    assert_eq!(sent["status"], "completed");
    assert_eq!(sent["amount"], "40");
    let id = sent["transfer_id"].as_str().expect("id");
    assert_eq!(app.get_transfer(id).await["status"], "completed");
    assert_eq!(app.balance(&alice, "EUR").await, "60");
    assert_eq!(app.balance(&bob, "EUR").await, "40");

    let refuse = |to: String, currency: &'static str, amount: &'static str, key: &'static str| {
        let token = token.clone();
        let alice = alice.clone();
        let app = &app;
        async move { app.transfer(&token, &alice, &to, currency, amount, key).await }
    };
    assert_problem(refuse(alice.clone(), "EUR", "1", "t2").await, StatusCode::UNPROCESSABLE_ENTITY, "same_account")
        .await;
    assert_problem(
        refuse(bob.clone(), "EUR", "61", "t3").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    assert_problem(
        refuse(carol.clone(), "EUR", "1", "t4").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "currency_mismatch",
    )
    .await;
    assert_problem(
        refuse(app.user_on_shard("ghost", 2), "EUR", "1", "t5").await,
        StatusCode::NOT_FOUND,
        "user_not_found",
    )
    .await;
    assert_problem(refuse(bob.clone(), "USD", "1", "t6").await, StatusCode::NOT_FOUND, "wallet_not_found").await;
    assert_problem(
        app.get("/v1/transfers/not-a-uuid", &app.admin()).await,
        StatusCode::NOT_FOUND,
        "transfer_not_found",
    )
    .await;
    let unknown = app.router.new_id_for(&shardwallet::domain::UserId::parse(&alice).expect("id"));
    assert_problem(
        app.get(&format!("/v1/transfers/{unknown}"), &app.admin()).await,
        StatusCode::NOT_FOUND,
        "transfer_not_found",
    )
    .await;

    let listed = body(app.get(&format!("/v1/users/{bob}/transfers"), &app.user_token(&bob)).await).await;
    assert_eq!(listed["data"][0]["transfer_id"], id);
    assert_eq!(app.balance(&alice, "EUR").await, "60");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_debits_never_overdraw_a_wallet() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 1);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "150").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let keys: Vec<String> = (0..200).map(|i| format!("race-{i}")).collect();
    let responses =
        futures::future::join_all(keys.iter().map(|k| app.transfer_retrying(&token, &alice, &bob, "EUR", "1", k)))
            .await;
    let mut accepted = 0;
    for r in responses {
        match r.status() {
            StatusCode::CREATED => accepted += 1,
            _ => {
                assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
            }
        }
    }
    assert_eq!(accepted, 150);
    assert_eq!(app.balance(&alice, "EUR").await, "0");
    assert_eq!(app.balance(&bob, "EUR").await, "150");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opposite_transfers_do_not_deadlock() {
    let app = spawn_app().await;
    let a = app.user_on_shard("a", 0);
    let b = app.user_on_shard("b", 0);
    app.funded_user(&a, "EUR", "1000").await;
    app.funded_user(&b, "EUR", "1000").await;
    let (ta, tb) = (app.user_token(&a), app.user_token(&b));
    let keys: Vec<String> = (0..100).map(|i| format!("x-{i}")).collect();
    let requests = keys.iter().enumerate().map(|(i, k)| {
        if i % 2 == 0 {
            app.transfer_retrying(&ta, &a, &b, "EUR", "3", k)
        } else {
            app.transfer_retrying(&tb, &b, &a, "EUR", "5", k)
        }
    });
    for r in futures::future::join_all(requests).await {
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    assert_eq!(app.balance(&a, "EUR").await, (1000 - 50 * 3 + 50 * 5).to_string());
    app.assert_verified().await;
}

#[tokio::test]
async fn amounts_of_ten_to_the_thirty_stay_exact() {
    let app = spawn_app().await;
    let big = format!("1{}", "0".repeat(30));
    let a = app.user_on_shard("whale", 0);
    let b = app.user_on_shard("minnow", 0);
    app.funded_user(&a, "EUR", &big).await;
    app.funded_user(&b, "EUR", "0").await;
    app.adjust(&a, "EUR", &big, "credit", "more").await;
    let amount = format!("{}1", "9".repeat(29));
    assert_eq!(app.transfer(&app.user_token(&a), &a, &b, "EUR", &amount, "k").await.status(), StatusCode::CREATED);
    let expected = (2u128 * 10u128.pow(30) - amount.parse::<u128>().expect("n")).to_string();
    assert_eq!(app.balance(&a, "EUR").await, expected);
    assert_eq!(app.balance(&b, "EUR").await, amount);
    let report = app.assert_verified().await;
    assert_eq!(report.totals["EUR"], "0");
}

#[tokio::test]
async fn history_pages_newest_first_until_the_cursor_runs_out() {
    let app = spawn_app().await;
    app.funded_user("alice", "EUR", "0").await;
    for i in 1..=5 {
        app.adjust("alice", "EUR", &i.to_string(), "credit", &format!("h{i}")).await;
    }
    let token = app.user_token("alice");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/users/alice/wallets/EUR/entries?limit=2&cursor={c}"),
            None => "/v1/users/alice/wallets/EUR/entries?limit=2".into(),
        };
        let page = body(app.get(&path, &token).await).await;
        let data = page["data"].as_array().expect("data").clone();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|e| {
            (e["amount"].as_str().unwrap_or("").to_string(), e["balance_after"].as_str().unwrap_or("").to_string())
        }));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<(String, String)> = [("5", "15"), ("4", "10"), ("3", "6"), ("2", "3"), ("1", "1")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, expected);
    assert_problem(
        app.get("/v1/users/alice/wallets/EUR/entries?limit=0", &token).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_problem(
        app.get("/v1/users/alice/wallets/EUR/entries?cursor=zz", &token).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_reversed_at_most_once_with_compensating_entries() {
    let app = spawn_app().await;
    app.funded_user("alice", "EUR", "0").await;
    let credit = body(app.adjust("alice", "EUR", "100", "credit", "c1").await).await;
    let entry = credit["entry_id"].as_str().expect("entry").to_string();
    let path = format!("/v1/entries/{entry}/reversal");
    let (admin, empty) = (app.admin(), json!({}));
    let (a, b) = tokio::join!(app.post(&path, &admin, &empty, Some("r1")), app.post(&path, &admin, &empty, Some("r2")));
    let statuses = [a.status(), b.status()];
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
    let loser = if a.status() == StatusCode::CREATED { b } else { a };
    assert_problem(loser, StatusCode::CONFLICT, "already_reversed").await;
    assert_eq!(app.balance("alice", "EUR").await, "0");
    let history = body(app.get("/v1/users/alice/wallets/EUR/entries", &app.admin()).await).await;
    assert_eq!(history["data"][0]["kind"], "reversal");
    assert_eq!(history["data"][0]["amount"], "-100");
    assert_eq!(history["data"].as_array().map(Vec::len), Some(2), "nothing deleted");
    assert_problem(
        app.post(&path, &app.admin(), &json!({}), Some("r3")).await,
        StatusCode::CONFLICT,
        "already_reversed",
    )
    .await;
    let unknown = app.router.new_id_for(&shardwallet::domain::UserId::parse("alice").expect("id"));
    assert_problem(
        app.post(&format!("/v1/entries/{unknown}/reversal"), &app.admin(), &json!({}), Some("r4")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        app.post(&path, &app.user_token("alice"), &json!({}), Some("r5")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    app.assert_verified().await;
}

/// Two reversals through the API are serialised by the wallet locks; the posting's
/// unique `reverses` key has the last word over one that committed without them. The
/// loser of that race still answers 409 `already_reversed`, kept under its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_that_loses_on_the_unique_key_is_409_and_its_answer_is_kept() {
    let app = spawn_app().await;
    app.funded_user("alice", "EUR", "0").await;
    let credit = body(app.adjust("alice", "EUR", "100", "credit", "c1").await).await;
    let entry = credit["entry_id"].as_str().expect("entry").to_string();
    let shard = app.router.for_user(&shardwallet::domain::UserId::parse("alice").expect("id")).index;
    let (mut db, watcher) = (app.shard_db(shard).await, app.shard_db(shard).await);
    let original: uuid::Uuid = db
        .query_one("SELECT posting_id FROM entries WHERE entry_id = $1::text::uuid", &[&entry])
        .await
        .expect("original posting")
        .get(0);
    // A reversal of the same posting, not committed yet, that took no wallet lock.
    let competitor = db.transaction().await.expect("begin");
    competitor
        .execute(
            "INSERT INTO postings (posting_id, kind, reference, reverses, description)
             VALUES (gen_random_uuid(), 'reversal', $1, $1, 'competing')",
            &[&original],
        )
        .await
        .expect("competing reversal");
    let path = format!("/v1/entries/{entry}/reversal");
    let (admin, empty) = (app.admin(), json!({}));
    let commit_once_the_api_waits = async {
        eventually(Duration::from_secs(30), "the API's reversal to wait on the competing one", || async {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                     WHERE a.datname = current_database() AND l.locktype = 'transactionid' AND NOT l.granted",
                    &[],
                )
                .await
                .expect("pg_locks")
                .get(0);
            (waiting > 0).then_some(())
        })
        .await;
        competitor.commit().await.expect("commit the competing reversal");
    };
    let (response, ()) = tokio::join!(app.post(&path, &admin, &empty, Some("race")), commit_once_the_api_waits);
    assert_problem(response, StatusCode::CONFLICT, "already_reversed").await;
    let replay = app.post(&path, &admin, &empty, Some("race")).await;
    assert_eq!(replay.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_problem(replay, StatusCode::CONFLICT, "already_reversed").await;
    assert_eq!(app.balance("alice", "EUR").await, "100", "the losing reversal moved nothing");
}

#[tokio::test]
async fn verify_catches_a_corrupted_balance_and_the_schema_refuses_a_negative_one() {
    let app = spawn_app().await;
    app.funded_user("alice", "EUR", "100").await;
    app.assert_verified().await;
    let shard = app.router.for_user(&shardwallet::domain::UserId::parse("alice").expect("id")).index;
    let db = app.shard_db(shard).await;
    let negative = db.execute("UPDATE accounts SET balance = -1 WHERE user_id = 'alice'", &[]).await;
    assert!(negative.is_err(), "the schema allowed a negative balance");
    let deleted = db.execute("DELETE FROM entries", &[]).await;
    assert!(deleted.is_err(), "the ledger allowed deleting entries");
    db.execute("UPDATE accounts SET balance = balance + 1 WHERE user_id = 'alice'", &[]).await.expect("corrupt");
    let report = app.verify().await;
    assert!(!report.ok);
    assert!(
        report.problems.iter().any(|p| p.contains("wallet alice/EUR: balance 101, entries sum to 100")),
        "{:?}",
        report.problems
    );
    let audit = body(app.get("/v1/admin/audit", &app.admin()).await).await;
    assert_eq!(audit["ok"], false);
}
