//! Rate limits: per caller and class, 429 `rate_limited` with Retry-After and the
//! RateLimit-* headers, nothing stored under a limited request's Idempotency-Key.
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::json;
use shardwallet::config::{Limit, RateLimitSettings};

use crate::helpers::*;

async fn app_with(limits: RateLimitSettings) -> TestApp {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.rate_limits = limits;
    deployment.spawn(settings).await
}

fn tight(write: Limit, read: Limit) -> RateLimitSettings {
    RateLimitSettings { write, read, ..RateLimitSettings::default() }
}

fn header(response: &Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn a_limited_request_is_429_with_headers_and_a_later_retry_with_the_same_key_succeeds() {
    // One write per 5 s: the second request below meets an empty bucket even when a
    // loaded machine takes seconds to answer the first.
    let app = app_with(tight(Limit { per_second: 0.2, burst: 1 }, ROOMY)).await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);

    let first = app.transfer(&token, &alice, &bob, "EUR", "10", "rl-1").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(header(&first, "ratelimit-limit"), Some(1));
    assert_eq!(header(&first, "ratelimit-remaining"), Some(0));
    assert_eq!(header(&first, "ratelimit-reset"), Some(5));

    let limited = app.transfer(&token, &alice, &bob, "EUR", "20", "rl-2").await;
    let retry_after = header(&limited, "retry-after").expect("Retry-After");
    assert!((1..=5).contains(&retry_after), "retry after {retry_after}");
    assert_eq!(header(&limited, "ratelimit-limit"), Some(1));
    assert_eq!(header(&limited, "ratelimit-remaining"), Some(0));
    assert_eq!(header(&limited, "ratelimit-reset"), Some(retry_after));
    let problem = assert_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(problem["type"], "/problems/rate_limited");
    let metrics = app.http.get(app.url("/metrics")).send().await.expect("GET /metrics").text().await.expect("text");
    assert!(metrics.contains(r#"shardwallet_rate_limited_total{class="write"}"#), "429s are counted");

    // Nothing reached the database: no key stored, no money moved.
    let keys = app.shard_db(0).await.query("SELECT key FROM idempotency_keys WHERE key = 'rl-2'", &[]).await;
    assert!(keys.expect("query").is_empty(), "a limited request is not stored under its key");
    assert_eq!(app.balance(&alice, "EUR").await, "90");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let retried = app.transfer(&token, &alice, &bob, "EUR", "20", "rl-2").await;
    assert_eq!(retried.status(), StatusCode::CREATED, "the retry is a first try, not a replay of the 429");
    assert!(retried.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    assert_eq!(app.balance(&bob, "EUR").await, "30");
}

#[tokio::test]
async fn admin_tokens_are_exempt_unless_the_setting_limits_them() {
    let one_a_minute = Limit { per_second: 1.0 / 60.0, burst: 1 };
    let app = app_with(tight(one_a_minute, one_a_minute)).await;
    let user = app.user_on_shard("carol", 0);
    app.funded_user(&user, "EUR", "0").await;
    for n in 0..5 {
        let response = app.adjust(&user, "EUR", "1", "credit", &format!("adm-{n}")).await;
        assert_eq!(response.status(), StatusCode::CREATED, "admin adjustment {n}");
        assert!(response.headers().get("ratelimit-limit").is_none(), "exempt: no limit applies");
    }

    let two_a_minute = Limit { per_second: 1.0 / 60.0, burst: 2 };
    let limited_admins = RateLimitSettings { limit_admins: true, ..tight(two_a_minute, ROOMY) };
    let app = app_with(limited_admins).await;
    let user = app.user_on_shard("carol", 0);
    app.funded_user(&user, "EUR", "0").await; // creating the user and the wallet: two writes
    let response = app.adjust(&user, "EUR", "1", "credit", "adm-limited").await;
    let retry_after = header(&response, "retry-after").expect("Retry-After");
    assert!(retry_after > 50, "a minute's quota: {retry_after}");
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn reads_and_writes_have_separate_limits_per_caller() {
    let slow = |burst| Limit { per_second: 1.0 / 60.0, burst };
    let app = app_with(tight(slow(1), slow(2))).await;
    let (alice, bob) = (app.user_on_shard("alice", 0), app.user_on_shard("bob", 0));
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    let wallet = format!("/v1/users/{alice}/wallets/EUR");

    let first = app.get(&wallet, &token).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!((header(&first, "ratelimit-limit"), header(&first, "ratelimit-remaining")), (Some(2), Some(1)));
    assert_eq!(app.get(&wallet, &token).await.status(), StatusCode::OK);
    assert_problem(app.get(&wallet, &token).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Reads exhausted; the write class is untouched, and then exhausted on its own.
    assert_eq!(app.transfer(&token, &alice, &bob, "EUR", "1", "sep-1").await.status(), StatusCode::CREATED);
    let second = app.transfer(&token, &alice, &bob, "EUR", "1", "sep-2").await;
    assert_problem(second, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Another caller has buckets of their own.
    let bobs = app.user_token(&bob);
    assert_eq!(app.get(&format!("/v1/users/{bob}/wallets/EUR"), &bobs).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn callers_without_a_valid_token_are_limited_by_ip_and_health_never_is() {
    let app = app_with(tight(ROOMY, Limit { per_second: 1.0 / 60.0, burst: 1 })).await;
    let anonymous = || app.http.get(app.url("/v1/users/alice")).send();
    assert_problem(anonymous().await.expect("GET"), StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_problem(anonymous().await.expect("GET"), StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let forged = app.get("/v1/users/alice", "not-a-token").await;
    assert_problem(forged, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    for _ in 0..5 {
        let health = app.http.get(app.url("/health")).send().await.expect("GET /health");
        assert_eq!(health.status(), StatusCode::OK);
        assert!(health.headers().get("ratelimit-limit").is_none());
    }
    let body = json!({ "user_id": "x" });
    let limited = app.http.post(app.url("/v1/users")).json(&body).send().await.expect("POST");
    assert_eq!(limited.status(), StatusCode::UNAUTHORIZED, "writes are another class");
}
