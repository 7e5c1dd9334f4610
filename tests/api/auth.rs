//! Authentication and authorisation: users touch only their own money.
use reqwest::StatusCode;
use serde_json::json;
use shardwallet::{api::auth::Auth, domain::Role};

use crate::helpers::*;

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_401() {
    let app = spawn_app().await;
    let no_token = app.http.get(app.url("/v1/users/alice")).send().await.expect("get");
    assert_problem(no_token, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let basic =
        app.http.get(app.url("/v1/users/alice")).header("Authorization", "Basic abc").send().await.expect("get");
    assert_problem(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let forged =
        Auth::new("another-secret").token("alice", Role::Admin, std::time::Duration::from_secs(60)).expect("token");
    assert_problem(app.get("/v1/users/alice", &forged).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let expired = app.auth.token("alice", Role::Admin, std::time::Duration::ZERO).expect("token");
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert_problem(app.get("/v1/users/alice", &expired).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn a_user_can_neither_read_nor_move_another_users_money() {
    let app = spawn_app().await;
    let (alice, mallory_id) = (app.user_on_shard("alice", 0), app.user_on_shard("mallory", 0));
    let (alice, mallory_id) = (alice.as_str(), mallory_id.as_str());
    app.funded_user(alice, "EUR", "100").await;
    app.funded_user(mallory_id, "EUR", "0").await;
    let mallory = app.user_token(mallory_id);
    for path in [
        format!("/v1/users/{alice}"),
        format!("/v1/users/{alice}/wallets"),
        format!("/v1/users/{alice}/wallets/EUR"),
        format!("/v1/users/{alice}/wallets/EUR/entries"),
        format!("/v1/users/{alice}/transfers"),
        "/v1/admin/audit".to_string(),
        "/v1/admin/dead-letters".to_string(),
    ] {
        assert_problem(app.get(&path, &mallory).await, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let steal = app.transfer(&mallory, alice, mallory_id, "EUR", "100", "steal").await;
    assert_problem(steal, StatusCode::FORBIDDEN, "forbidden").await;
    let mint = app
        .post(
            "/v1/admin/adjustments",
            &mallory,
            &json!({"user_id": mallory_id, "currency": "EUR", "amount": "5", "direction": "credit", "reason": "x"}),
            Some("k"),
        )
        .await;
    assert_problem(mint, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(
        app.post("/v1/users", &mallory, &json!({"user_id": "m2"}), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Alice's transfer is visible to its parties only.
    let sent = app.transfer(&app.user_token(alice), alice, mallory_id, "EUR", "10", "t1").await;
    let transfer_id = body(sent).await["transfer_id"].as_str().expect("id").to_string();
    app.funded_user("trent", "EUR", "0").await;
    let outsider = app.get(&format!("/v1/transfers/{transfer_id}"), &app.user_token("trent")).await;
    assert_problem(outsider, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(app.get(&format!("/v1/transfers/{transfer_id}"), &mallory).await.status(), StatusCode::OK);
    assert_eq!(app.balance(alice, "EUR").await, "90");
    let own = app.get(&format!("/v1/users/{alice}/wallets/EUR"), &app.user_token(alice)).await;
    assert_eq!(own.status(), StatusCode::OK);
}
