//! Payments whose outcome is unclear: never settled by a guess. Only an explicit answer
//! (approved, declined, the gateway's "never received") or an operator makes a payment
//! the gateway may hold final; until then a withdrawal keeps its hold. The mock's magic
//! amounts: `07` "processing" then a callback, `08` executed but answered after the
//! client's timeout, `09` executed but 5xx (payment and status) for a while.
use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::StatusCode as AxumStatus,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shardwallet::gateways::mock::Protocol;

use crate::helpers::*;
use crate::payments::{mock_calls, payment, start, wait_final, FINAL_WITHIN, GATEWAYS};

async fn hold_released_by(app: &TestApp, user: &str, id: &str) -> Option<String> {
    let index = app.router.for_user(&shardwallet::domain::UserId::parse(user).expect("user")).index;
    let id: uuid::Uuid = id.parse().expect("uuid");
    let row = app
        .shard_db(index)
        .await
        .query_one("SELECT released_by FROM payment_holds WHERE payment_id = $1", &[&id])
        .await
        .expect("hold");
    row.get(0)
}

#[tokio::test]
async fn processing_late_and_failing_answers_end_succeeded_once_without_releasing_a_hold() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // The unanswered calls would open the breakers, refusing the next payments here.
    for gw in settings.gateways.values_mut() {
        gw.breaker_failure_threshold = 1000;
    }
    let app = deployment.spawn(settings).await;
    let user = app.user_on_shard("doubt", 0);
    app.funded_user(&user, "EUR", "100000").await;
    let mut started = Vec::new();
    for gateway in GATEWAYS {
        for kind in ["deposits", "withdrawals"] {
            for amount in ["1007", "1008", "1009"] {
                let key = format!("{gateway}-{kind}-{amount}");
                let id = start(&app, kind, &user, amount, gateway, &key).await;
                started.push((gateway, kind, amount, id));
            }
        }
    }
    for (gateway, kind, amount, id) in &started {
        let done = wait_final(&app, id).await;
        assert_eq!(done["status"], "succeeded", "{kind} {amount} via {gateway}: {done}");
        assert_eq!(done["state"], "succeeded");
        let calls = mock_calls(&app, gateway, id).await;
        assert_eq!(calls["charges"], 1, "{kind} {amount} via {gateway} charged once: {calls}");
        if *kind == "withdrawals" {
            // Released once, by the success that debited it: never on the way.
            let by = hold_released_by(&app, &user, id).await;
            assert_eq!(by.as_deref(), Some("succeeded"), "{amount} via {gateway}");
        }
    }
    // Deposits and withdrawals of the same amounts cancel out: the wallet moved once each.
    let wallet = app.wallet(&user, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("100000"), Some("0")), "{wallet}");
    let entries = body(app.get(&format!("/v1/users/{user}/wallets/EUR/entries?limit=200"), &app.admin()).await).await;
    let payment_entries = entries["data"].as_array().expect("entries").len();
    assert_eq!(payment_entries, 1 + started.len(), "one funding entry and one per payment: {entries}");
    app.assert_verified().await;
}

/// A JSON gateway (gateway A's protocol) whose replies to the payment request are never
/// an outcome — 409 "in progress", 400, a body that is not JSON, an unknown status —
/// and whose status endpoint then says the payment was approved.
#[derive(Clone, Default)]
struct Unclear {
    charges: Arc<AtomicU32>,
}

async fn unclear_charge(State(gw): State<Unclear>, Json(req): Json<Value>) -> Response {
    gw.charges.fetch_add(1, Ordering::SeqCst);
    let amount = req["amount"].as_str().unwrap_or_default().to_string();
    match &amount[amount.len().saturating_sub(2)..] {
        "11" => {
            (AxumStatus::CONFLICT, Json(json!({"error": "a request with this key is in progress"}))).into_response()
        }
        "12" => (AxumStatus::BAD_REQUEST, Json(json!({"error": "bad request"}))).into_response(),
        "13" => (AxumStatus::OK, "<html>not json</html>").into_response(),
        _ => Json(json!({"id": "u-1", "status": "on_hold"})).into_response(),
    }
}

async fn unclear_status(Path(key): Path<String>) -> Response {
    Json(json!({"id": format!("u-{key}"), "status": "approved"})).into_response()
}

#[tokio::test]
async fn replies_that_are_not_an_explicit_decline_never_fail_a_payment() {
    let gw = Unclear::default();
    let routes = Router::new()
        .route("/v1/deposits", post(unclear_charge))
        .route("/v1/payouts", post(unclear_charge))
        .route("/v1/payments/{key}", get(unclear_status))
        .with_state(gw.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, routes).await });
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.gateways.get_mut("gateway_a").expect("gateway_a").base_url = format!("http://127.0.0.1:{port}");
    settings.payments.query_after_ms = 300;
    let app = deployment.spawn(settings).await;
    let user = app.user_on_shard("unclear", 1);
    app.funded_user(&user, "EUR", "10000").await;
    let amounts = ["1011", "1012", "1013", "1014"];
    let ids = futures::future::join_all(
        amounts.iter().map(|amount| start(&app, "withdrawals", &user, amount, "gateway_a", amount)),
    )
    .await;
    for (amount, id) in amounts.iter().zip(&ids) {
        let done = wait_final(&app, id).await;
        assert_eq!(done["status"], "succeeded", "a {amount} reply is no decline: {done}");
        assert_eq!(hold_released_by(&app, &user, id).await.as_deref(), Some("succeeded"));
    }
    assert_eq!(gw.charges.load(Ordering::SeqCst), 4, "one request each: an unclear reply is not retried blindly");
    let wallet = app.wallet(&user, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("5950"), Some("0")), "{wallet}");
    app.assert_verified().await;
}

async fn resolve(app: &TestApp, id: &str, outcome: &str, key: &str) -> reqwest::Response {
    let body = json!({ "outcome": outcome, "note": "checked with the gateway's support" });
    app.post(&format!("/v1/admin/payments/{id}/resolve"), &app.admin(), &body, Some(key)).await
}

#[tokio::test]
async fn a_payment_in_doubt_at_its_deadline_needs_review_with_its_hold_until_the_gateway_or_an_admin_settles_it() {
    // gateway_a answers 5xx about 09 payments for an hour: only an operator settles them.
    // gateway_b (the deployment's mock) does so for FLAKY_FOR: its answer settles them.
    let stuck = serve_mock_gateway(shardwallet::gateways::mock::MockConfig {
        flaky_for: Duration::from_secs(3600),
        ..mock_config(Protocol::Json)
    })
    .await;
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.gateways.get_mut("gateway_a").expect("gateway_a").base_url = stuck.clone();
    for gw in settings.gateways.values_mut() {
        gw.breaker_failure_threshold = 1000;
    }
    settings.payments.deadline_secs = 2;
    settings.payments.query_after_ms = 300;
    settings.payments.query_backoff_max_ms = 1000;
    let app = deployment.spawn(settings).await;
    let user = app.user_on_shard("review", 2);
    app.funded_user(&user, "EUR", "10000").await;
    let withdrawal = start(&app, "withdrawals", &user, "4009", "gateway_a", "w").await;
    let deposit = start(&app, "deposits", &user, "1009", "gateway_a", "d").await;
    let answered = start(&app, "withdrawals", &user, "2009", "gateway_b", "b").await;

    let in_review = || async {
        let page = body(app.get("/v1/admin/payments?state=needs_review&limit=1", &app.admin()).await).await;
        let mut ids: Vec<String> = Vec::new();
        let mut page = page;
        loop {
            ids.extend(
                page["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .filter_map(|p| p["payment_id"].as_str())
                    .map(str::to_string),
            );
            let Some(cursor) = page["next_cursor"].as_str().map(str::to_string) else { break };
            page = body(
                app.get(&format!("/v1/admin/payments?state=needs_review&limit=1&cursor={cursor}"), &app.admin()).await,
            )
            .await;
        }
        ids
    };
    eventually(FINAL_WITHIN, "both gateway_a payments in review", || async {
        let ids = in_review().await;
        (ids.contains(&withdrawal) && ids.contains(&deposit)).then_some(())
    })
    .await;
    for id in [&withdrawal, &deposit] {
        let p = payment(&app, id).await;
        assert_eq!((p["status"].as_str(), p["state"].as_str()), (Some("pending"), Some("needs_review")), "{p}");
    }
    let wallet = app.wallet(&user, "EUR").await;
    assert!(wallet["held"] == "4009" || wallet["held"] == "6018", "the holds are kept in review: {wallet}");
    // The recorder is process-wide: other tests may add to it, never take away.
    assert!(counter(&app, "shardwallet_payments_needs_review_total").await >= 2.0, "counted in a metric");

    // gateway_b tells the truth after FLAKY_FOR: that answer settles its payment.
    let done = wait_final(&app, &answered).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    // Operators, racing: one resolution wins, the others are told it is final.
    let keys: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    let racers = futures::future::join_all(keys.iter().map(|key| resolve(&app, &withdrawal, "succeeded", key))).await;
    let statuses: Vec<StatusCode> = racers.iter().map(|r| r.status()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 3, "{statuses:?}");
    let winner = racers.into_iter().position(|r| r.status() == StatusCode::OK).expect("a winner");
    let again = resolve(&app, &withdrawal, "succeeded", &keys[winner]).await;
    assert_eq!(again.status(), StatusCode::OK, "the same key replays");
    let resolved = body(again).await;
    assert_eq!((resolved["status"].as_str(), resolved["resolved_by"].as_str()), (Some("succeeded"), Some("ops-admin")));
    assert_eq!(resolved["resolution_note"], "checked with the gateway's support");
    assert_problem(resolve(&app, &withdrawal, "failed", "late").await, StatusCode::CONFLICT, "payment_final").await;

    let failed = body(resolve(&app, &deposit, "failed", "d1").await).await;
    assert_eq!((failed["status"].as_str(), failed["reason"].as_str()), (Some("failed"), Some("resolved_failed")));
    assert_eq!(hold_released_by(&app, &user, &withdrawal).await.as_deref(), Some("succeeded"));
    // 10000 - 4009 (resolved) - 2009 (answered); the failed deposit credited nothing.
    let wallet = app.wallet(&user, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("3982"), Some("0")), "{wallet}");
    assert!(in_review().await.is_empty());
    let bad = app.get("/v1/admin/payments?state=bogus", &app.admin()).await;
    assert_problem(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    let user_view = app.get("/v1/admin/payments", &app.user_token(&user)).await;
    assert_problem(user_view, StatusCode::FORBIDDEN, "forbidden").await;
    let no_note = app
        .post(&format!("/v1/admin/payments/{deposit}/resolve"), &app.admin(), &json!({"outcome": "failed"}), Some("n"))
        .await;
    assert_problem(no_note, StatusCode::BAD_REQUEST, "invalid_request").await;
    app.assert_verified().await;
}
