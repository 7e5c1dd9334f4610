//! Deposits and withdrawals end to end: real shards, real broker, and the mock gateways
//! as real HTTP servers (gateway_a speaks JSON, gateway_b XML). The amount's last two
//! digits pick the mock's behaviour (see `gateways::mock`).
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use shardwallet::gateways::{json as a, signature, xml as b};

use crate::helpers::*;

pub(crate) const GATEWAYS: [&str; 2] = ["gateway_a", "gateway_b"];
pub(crate) const FINAL_WITHIN: Duration = Duration::from_secs(90);
const CARD: &str = "4242424242424242";

fn card() -> Value {
    json!({ "type": "card", "number": CARD })
}

pub(crate) async fn pay(
    app: &TestApp,
    kind: &str,
    user: &str,
    amount: &str,
    gateway: &str,
    key: &str,
) -> reqwest::Response {
    let body = json!({
        "user_id": user, "currency": "EUR", "amount": amount, "gateway": gateway, "payment_method": card(),
    });
    app.post(&format!("/v1/{kind}"), &app.user_token(user), &body, Some(key)).await
}

/// Starts a payment and returns its id (asserting the 202 pending answer).
pub(crate) async fn start(app: &TestApp, kind: &str, user: &str, amount: &str, gateway: &str, key: &str) -> String {
    let response = pay(app, kind, user, amount, gateway, key).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{kind} {amount} via {gateway}");
    let payment = body(response).await;
    assert_eq!(payment["status"], "pending", "{payment}");
    assert_eq!(payment["payment_method"], json!({ "type": "card", "last4": "4242" }));
    assert!(!payment.to_string().contains(CARD), "the card number leaked: {payment}");
    payment["payment_id"].as_str().expect("payment_id").to_string()
}

pub(crate) async fn payment(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/payments/{id}"), &app.admin()).await;
    assert_eq!(response.status(), StatusCode::OK, "payment {id}");
    body(response).await
}

pub(crate) async fn wait_final(app: &TestApp, id: &str) -> Value {
    eventually(FINAL_WITHIN, &format!("payment {id} to be final"), || async {
        let p = payment(app, id).await;
        (p["status"] != "pending").then_some(p)
    })
    .await
}

pub(crate) async fn mock_calls(app: &TestApp, gateway: &str, id: &str) -> Value {
    let base = if gateway == "gateway_a" { &app.deployment.mock_a } else { &app.deployment.mock_b };
    body(app.http.get(format!("{base}/_mock/calls/{id}")).send().await.expect("mock calls")).await
}

pub(crate) fn signed_callback(
    gateway: &str,
    event_id: &str,
    payment_id: &str,
    approved: bool,
    t: i64,
    secret: &str,
) -> (String, Vec<u8>, String) {
    let payment_id = payment_id.parse().expect("uuid");
    let (header, body) = if gateway == "gateway_a" {
        let n = a::transformers::Notification {
            event_id: event_id.into(),
            idempotency_key: payment_id,
            id: "forged-ref".into(),
            status: if approved { "approved" } else { "declined" }.into(),
        };
        (a::SIGNATURE_HEADER, serde_json::to_vec(&n).expect("json"))
    } else {
        let n = b::transformers::Envelope::new(b::transformers::NotificationBody {
            notification: b::transformers::Notification {
                event_id: event_id.into(),
                merchant_reference: payment_id,
                transaction_id: "forged-ref".into(),
                result: if approved { "APPROVED" } else { "DECLINED" }.into(),
            },
        });
        (b::SIGNATURE_HEADER, b::transformers::to_xml(&n).expect("xml").into_bytes())
    };
    let signature = signature::sign(secret.as_bytes(), t, &body);
    (header.to_string(), body, signature)
}

pub(crate) async fn post_callback(
    app: &TestApp,
    gateway: &str,
    header: Option<(&str, &str)>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app.http.post(app.url(&format!("/v1/gateways/{gateway}/callbacks"))).body(body);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.send().await.expect("callback")
}

async fn events_of(app: &TestApp, user: &str, id: &str) -> Vec<(bool, Option<String>)> {
    let index = app.router.for_user(&shardwallet::domain::UserId::parse(user).expect("user")).index;
    let db = app.shard_db(index).await;
    let id: uuid::Uuid = id.parse().expect("uuid");
    db.query("SELECT applied, note FROM payment_events WHERE payment_id = $1 ORDER BY received_at", &[&id])
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn deposits_approved_declined_and_pending_then_callback_settle_on_both_gateways() {
    let app = spawn_app().await;
    let user = app.user_on_shard("dep", 1);
    app.funded_user(&user, "EUR", "0").await;
    for gateway in GATEWAYS {
        let approved = start(&app, "deposits", &user, "1000", gateway, &format!("{gateway}-1")).await;
        let declined = start(&app, "deposits", &user, "1001", gateway, &format!("{gateway}-2")).await;
        let later_ok = start(&app, "deposits", &user, "1002", gateway, &format!("{gateway}-3")).await;
        let later_no = start(&app, "deposits", &user, "1003", gateway, &format!("{gateway}-4")).await;
        for (id, status, reason) in [
            (&approved, "succeeded", Value::Null),
            (&declined, "failed", json!("declined")),
            (&later_ok, "succeeded", Value::Null),
            (&later_no, "failed", json!("declined")),
        ] {
            let done = wait_final(&app, id).await;
            assert_eq!((&done["status"], &done["reason"]), (&json!(status), &reason), "{gateway}: {done}");
            assert_eq!(done["kind"], "deposit");
            assert_eq!(done["gateway"], gateway);
            assert!(done["gateway_reference"].is_string(), "{done}");
            assert_eq!(mock_calls(&app, gateway, id).await["charges"], 1);
        }
        // The pending ones were settled by their callback, recorded and applied once.
        for id in [&later_ok, &later_no] {
            assert_eq!(events_of(&app, &user, id).await, vec![(true, None)], "{gateway}");
        }
    }
    assert_eq!(app.balance(&user, "EUR").await, (2 * (1000 + 1002)).to_string());
    let list = body(app.get(&format!("/v1/users/{user}/payments?limit=3"), &app.user_token(&user)).await).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(list["data"][0]["amount"], "1003", "newest first: {list}");
    let cursor = list["next_cursor"].as_str().expect("cursor");
    let rest = body(app.get(&format!("/v1/users/{user}/payments?cursor={cursor}"), &app.admin()).await).await;
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(5));
    let report = app.assert_verified().await;
    assert_eq!(report.totals["EUR"], "0");
    let shard = &report.shards[1].totals["EUR"];
    assert_eq!(shard["clearing:gateway_a"], "-2002", "{shard:?}");
    assert_eq!(shard["clearing:gateway_b"], "-2002", "{shard:?}");
}

#[tokio::test]
async fn a_withdrawal_holds_at_once_succeeds_or_is_declined_and_releases_the_hold() {
    let app = spawn_app().await;
    let user = app.user_on_shard("wd", 0);
    app.funded_user(&user, "EUR", "10000").await;
    for gateway in GATEWAYS {
        let before: u64 = app.wallet(&user, "EUR").await["available"].as_str().unwrap().parse().unwrap();
        // 05: pending at the gateway, settled only by reconciliation's status query.
        let slow = start(&app, "withdrawals", &user, "1005", gateway, &format!("{gateway}-w1")).await;
        let wallet = app.wallet(&user, "EUR").await;
        assert_eq!(wallet["available"], (before - 1005).to_string(), "held at once: {wallet}");
        let declined = start(&app, "withdrawals", &user, "1001", gateway, &format!("{gateway}-w2")).await;
        let done = wait_final(&app, &declined).await;
        assert_eq!((done["status"].as_str(), done["reason"].as_str()), (Some("failed"), Some("declined")));
        assert_eq!(done["kind"], "withdrawal");
        let done = wait_final(&app, &slow).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        let wallet = app.wallet(&user, "EUR").await;
        assert_eq!(wallet["held"], "0", "{wallet}");
        assert_eq!(wallet["balance"], (before - 1005).to_string(), "{wallet}");
        let refused = pay(&app, "withdrawals", &user, "99999999", gateway, &format!("{gateway}-w3")).await;
        assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
    }
    let report = app.assert_verified().await;
    assert_eq!(report.shards[0].totals["EUR"]["clearing:gateway_b"], "1005");
}

#[tokio::test]
async fn a_duplicate_callback_is_recorded_once_and_credits_once() {
    let app = spawn_app().await;
    let user = app.user_on_shard("dup", 2);
    app.funded_user(&user, "EUR", "0").await;
    for gateway in GATEWAYS {
        // 06: approved at once, then the success callback delivered twice.
        let id = start(&app, "deposits", &user, "2006", gateway, &format!("{gateway}-d")).await;
        assert_eq!(wait_final(&app, &id).await["status"], "succeeded");
        eventually(FINAL_WITHIN, "both callback deliveries", || async {
            (mock_calls(&app, gateway, &id).await["callbacks"] == 2).then_some(())
        })
        .await;
        let events = events_of(&app, &user, &id).await;
        // One row per gateway event id (whether it or the synchronous reply came first).
        assert_eq!(events.len(), 1, "{events:?}");
    }
    assert_eq!(app.balance(&user, "EUR").await, "4012");
    app.assert_verified().await;
}

#[tokio::test]
async fn forged_unsigned_and_stale_callbacks_are_refused_and_contradictions_kept_unapplied() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.payments.query_after_ms = 60_000; // only callbacks may settle here
    let app = deployment.spawn(settings).await;
    let user = app.user_on_shard("cb", 0);
    app.funded_user(&user, "EUR", "0").await;
    let now = chrono::Utc::now().timestamp();
    for gateway in GATEWAYS {
        let id = start(&app, "deposits", &user, "3005", gateway, &format!("{gateway}-c")).await;
        eventually(FINAL_WITHIN, "the gateway to hold the payment", || async {
            (mock_calls(&app, gateway, &id).await["charges"] == 1).then_some(())
        })
        .await;
        let (header, body_bytes, good) = signed_callback(gateway, "e1", &id, true, now, GATEWAY_SECRET);
        let (_, _, wrong_key) = signed_callback(gateway, "e1", &id, true, now, "not-the-secret");
        let (_, _, stale) = signed_callback(gateway, "e1", &id, true, now - 600, GATEWAY_SECRET);
        for forged in [None, Some(wrong_key.as_str()), Some(stale.as_str()), Some("t=1,v1=00")] {
            let r = post_callback(&app, gateway, forged.map(|v| (header.as_str(), v)), body_bytes.clone()).await;
            assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_signature").await;
        }
        assert!(events_of(&app, &user, &id).await.is_empty());
        assert_eq!(payment(&app, &id).await["status"], "pending");

        let r = post_callback(&app, gateway, Some((header.as_str(), good.as_str())), body_bytes.clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(payment(&app, &id).await["status"], "succeeded");
        let r = post_callback(&app, gateway, Some((header.as_str(), good.as_str())), body_bytes).await;
        assert_eq!(body(r).await["duplicate"], true);
        // A failure for a succeeded payment: kept for operators, not applied.
        let (_, declined, sig) = signed_callback(gateway, "e2", &id, false, now, GATEWAY_SECRET);
        let r = post_callback(&app, gateway, Some((header.as_str(), sig.as_str())), declined).await;
        assert_eq!(body(r).await["applied"], false);
        let events = events_of(&app, &user, &id).await;
        assert_eq!(events.len(), 2);
        assert!(events[1].1.as_deref().is_some_and(|n| n.contains("contradicts")), "{events:?}");
        assert_eq!(payment(&app, &id).await["status"], "succeeded");
    }
    let r = post_callback(&app, "gateway_z", None, b"{}".to_vec()).await;
    assert_problem(r, StatusCode::NOT_FOUND, "gateway_not_found").await;
    assert_eq!(app.balance(&user, "EUR").await, "6010");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_gateway_failing_twice_with_5xx_is_retried_and_charges_once() {
    let app = spawn_app().await;
    let user = app.user_on_shard("retry", 1);
    app.funded_user(&user, "EUR", "5000").await;
    for gateway in GATEWAYS {
        for kind in ["deposits", "withdrawals"] {
            let id = start(&app, kind, &user, "1004", gateway, &format!("{gateway}-{kind}")).await;
            assert_eq!(wait_final(&app, &id).await["status"], "succeeded");
            let calls = mock_calls(&app, gateway, &id).await;
            assert_eq!((calls["calls"].as_u64(), calls["charges"].as_u64()), (Some(3), Some(1)), "{calls}");
        }
    }
    assert_eq!(app.balance(&user, "EUR").await, "5000");
    app.assert_verified().await;
}

#[tokio::test]
async fn invalid_requests_are_refused_with_stable_codes() {
    let app = spawn_app().await;
    let user = app.user_on_shard("bad", 0);
    app.funded_user(&user, "EUR", "100").await;
    let token = app.user_token(&user);
    let base =
        json!({ "user_id": user, "currency": "EUR", "amount": "10", "gateway": "gateway_a", "payment_method": card() });
    let mut unknown = base.clone();
    unknown["gateway"] = json!("gateway_z");
    let r = app.post("/v1/deposits", &token, &unknown, Some("k1")).await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "gateway_not_found").await;
    for method in [
        json!({ "type": "card", "number": "4242424242424241" }),
        json!({ "type": "iban", "iban": "DE00370400440532013000" }),
        json!({ "type": "cash" }),
        json!(null),
    ] {
        let mut bad = base.clone();
        bad["payment_method"] = method;
        let r = app.post("/v1/withdrawals", &token, &bad, Some("k2")).await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid_payment_method").await;
    }
    let mut iban = base.clone();
    iban["payment_method"] = json!({ "type": "iban", "iban": "DE89 3704 0044 0532 0130 00" });
    let r = app.post("/v1/deposits", &token, &iban, Some("k3")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let created = body(r).await;
    assert_eq!(created["payment_method"], json!({ "type": "iban", "last4": "3000" }));
    let replay = app.post("/v1/deposits", &token, &iban, Some("k3")).await;
    assert_eq!(body(replay).await["payment_id"], created["payment_id"]);
    let other = app.user_token("someone-else");
    let id = created["payment_id"].as_str().unwrap();
    assert_problem(app.get(&format!("/v1/payments/{id}"), &other).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(app.post("/v1/deposits", &other, &base, Some("k4")).await, StatusCode::FORBIDDEN, "forbidden").await;
    let missing = app.get("/v1/payments/00000000-0000-8000-8000-000000000000", &app.admin()).await;
    assert_problem(missing, StatusCode::NOT_FOUND, "payment_not_found").await;
    // The full IBAN is not stored once the gateway has it.
    assert_eq!(wait_final(&app, id).await["status"], "succeeded");
    let db = app.shard_db(0).await;
    let row = db.query_one("SELECT method_sealed IS NULL FROM payments", &[]).await.expect("row");
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_withdrawals_never_overdraw() {
    let app = spawn_app().await;
    let user = app.user_on_shard("many", 2);
    app.funded_user(&user, "EUR", "1000").await;
    let requests = (0..50).map(|i| {
        let (app, user) = (&app, &user);
        async move {
            let gateway = GATEWAYS[i % 2];
            let r = pay(app, "withdrawals", user, "100", gateway, &format!("m{i}")).await;
            match r.status() {
                StatusCode::ACCEPTED => Some(body(r).await["payment_id"].as_str().unwrap().to_string()),
                _ => {
                    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
                    None
                }
            }
        }
    });
    let ids: Vec<String> = futures::future::join_all(requests).await.into_iter().flatten().collect();
    assert_eq!(ids.len(), 10, "exactly the available funds are withdrawn");
    for id in &ids {
        assert_eq!(wait_final(&app, id).await["status"], "succeeded");
    }
    let wallet = app.wallet(&user, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("0"), Some("0")), "{wallet}");
    app.assert_verified().await;
}

#[tokio::test]
async fn an_open_breaker_refuses_new_payments_fast_then_half_opens_and_recovers() {
    let deployment = Deployment::new().await;
    let mut proxy = Proxy::start(deployment.mock_a.trim_start_matches("http://")).await;
    let mut settings = deployment.settings();
    let gw = settings.gateways.get_mut("gateway_a").expect("gateway_a");
    gw.base_url = format!("http://127.0.0.1:{}", proxy.port);
    gw.breaker_failure_threshold = 3;
    // Open long enough that the refusal below still meets an open breaker on a slow machine.
    gw.breaker_open_ms = 5000;
    settings.payments.query_after_ms = 300;
    let app = deployment.spawn(settings).await;
    let user = app.user_on_shard("cb", 1);
    app.funded_user(&user, "EUR", "0").await;
    proxy.cut();
    let first = start(&app, "deposits", &user, "700", "gateway_a", "b1").await;
    let admin_view = || async {
        let view = body(app.get("/v1/admin/gateways", &app.admin()).await).await;
        view["data"].as_array().and_then(|d| d.iter().find(|g| g["gateway"] == "gateway_a").cloned()).expect("view")
    };
    eventually(FINAL_WITHIN, "the breaker to open", || async {
        (admin_view().await["circuit"] == "open").then_some(())
    })
    .await;
    // Refused by the breaker in the request itself (a deposit is otherwise accepted and
    // submitted later): no payment is created, so only the first one is in flight.
    let refused = pay(&app, "deposits", &user, "800", "gateway_a", "b2").await;
    assert!(refused.headers().get("retry-after").is_some());
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "gateway_unavailable").await;
    // A retry of the payment accepted before gets its stored answer, not the refusal.
    let retried = pay(&app, "deposits", &user, "700", "gateway_a", "b1").await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED, "a retry of an accepted payment is replayed");
    assert_eq!(retried.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(body(retried).await["payment_id"], first.as_str());
    let view = admin_view().await;
    assert_eq!(view["in_flight"], 1, "{view}");
    assert!(view["recent_error_rate"].as_f64().unwrap_or_default() > 0.5, "{view}");
    // The other gateway is unaffected.
    let b_ok = start(&app, "deposits", &user, "900", "gateway_b", "b3").await;
    assert_eq!(wait_final(&app, &b_ok).await["status"], "succeeded");

    proxy.restore().await;
    let done = wait_final(&app, &first).await;
    assert_eq!(done["status"], "succeeded", "the accepted payment went through after the breaker closed");
    assert_eq!(admin_view().await["circuit"], "closed");
    // Not stored under the key: the same key now goes through.
    let again = start(&app, "deposits", &user, "800", "gateway_a", "b2").await;
    assert_eq!(wait_final(&app, &again).await["status"], "succeeded");
    assert_eq!(mock_calls(&app, "gateway_a", &first).await["charges"], 1);
    assert_eq!(app.balance(&user, "EUR").await, "2400");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_crash_between_the_gateway_call_and_recording_its_answer_is_settled_by_one_query() {
    let deployment = Deployment::new().await;
    let mut crashing = deployment.settings();
    crashing.payments.drop_gateway_answers = true;
    // This process never reconciles (its first pass would be an hour away), so only the
    // restarted one can find the answers; the stored schedule says "query in 1 s".
    crashing.payments.query_after_ms = 1000;
    crashing.payments.sweep_interval_ms = 3_600_000;
    let app = deployment.spawn(crashing).await;
    let user = app.user_on_shard("crash", 0);
    app.funded_user(&user, "EUR", "5000").await;
    let mut ids = Vec::new();
    for gateway in GATEWAYS {
        for kind in ["deposits", "withdrawals"] {
            let id = start(&app, kind, &user, "1000", gateway, &format!("{gateway}-{kind}")).await;
            eventually(FINAL_WITHIN, "the gateway to be charged", || async {
                (mock_calls(&app, gateway, &id).await["charges"] == 1).then_some(())
            })
            .await;
            ids.push((gateway, id));
        }
    }
    for (_, id) in &ids {
        assert_eq!(payment(&app, id).await["status"], "pending", "the answer was lost");
    }
    app.stop().await;
    let mut settings = deployment.settings();
    settings.payments.query_after_ms = 100;
    let app = deployment.spawn(settings).await;
    for (gateway, id) in &ids {
        assert_eq!(wait_final(&app, id).await["status"], "succeeded");
        let calls = mock_calls(&app, gateway, id).await;
        assert_eq!((calls["calls"].as_u64(), calls["charges"].as_u64()), (Some(1), Some(1)), "{calls}");
    }
    let wallet = app.wallet(&user, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("5000"), Some("0")), "{wallet}");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_payment_still_pending_at_its_deadline_expires_and_releases_the_hold() {
    let deployment = Deployment::new().await;
    let mut proxy = Proxy::start(deployment.mock_b.trim_start_matches("http://")).await;
    let mut settings = deployment.settings();
    settings.gateways.get_mut("gateway_b").expect("gateway_b").base_url = format!("http://127.0.0.1:{}", proxy.port);
    settings.payments.deadline_secs = 2;
    settings.payments.query_after_ms = 200;
    let app = deployment.spawn(settings).await;
    let user = app.user_on_shard("exp", 2);
    app.funded_user(&user, "EUR", "1000").await;
    proxy.cut();
    let id = start(&app, "withdrawals", &user, "400", "gateway_b", "e1").await;
    assert_eq!(app.wallet(&user, "EUR").await["available"], "600");
    let done = wait_final(&app, &id).await;
    assert_eq!((done["status"].as_str(), done["reason"].as_str()), (Some("failed"), Some("expired")), "{done}");
    let wallet = app.wallet(&user, "EUR").await;
    assert_eq!((wallet["balance"].as_str(), wallet["held"].as_str()), (Some("1000"), Some("0")), "{wallet}");
    proxy.restore().await;
    assert_eq!(mock_calls(&app, "gateway_b", &id).await["charges"], 0, "never reached the gateway");
    let user_view = app.get("/v1/admin/gateways", &app.user_token(&user)).await;
    assert_problem(user_view, StatusCode::FORBIDDEN, "forbidden").await;
    let (header, unknown, sig) = signed_callback(
        "gateway_b",
        "e9",
        "00000000-0000-8000-8000-000000000000",
        true,
        chrono::Utc::now().timestamp(),
        GATEWAY_SECRET,
    );
    let r = post_callback(&app, "gateway_b", Some((header.as_str(), sig.as_str())), unknown).await;
    assert_problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
    app.assert_verified().await;
    // verify catches a payment whose state and ledger legs disagree.
    let db = app.shard_db(2).await;
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    db.execute("UPDATE payments SET state = 'succeeded' WHERE payment_id = $1", &[&uuid]).await.expect("corrupt");
    let report = app.verify().await;
    assert!(!report.ok && report.problems.iter().any(|p| p.contains("payment legs do not match")), "{report}");
}
