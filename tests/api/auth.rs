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

/// A token with exactly these claims, signed with `secret`.
fn signed_by(secret: &str, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
}

#[tokio::test]
async fn tokens_without_or_with_another_issuer_or_audience_are_401() {
    let app = spawn_app().await;
    app.funded_user("alice", "EUR", "1").await;
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let claims = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = json!({"sub": "alice", "role": "admin", "exp": exp, "iat": exp - 600});
        if let Some(iss) = iss {
            c["iss"] = iss.into();
        }
        if let Some(aud) = aud {
            c["aud"] = aud.into();
        }
        c
    };
    let (iss, aud) = (app.settings.auth.issuer.as_str(), app.settings.auth.audience.as_str());
    let right = signed_by(JWT_SECRET, claims(Some(iss), Some(aud)));
    assert_eq!(app.get("/v1/users/alice/wallets/EUR", &right).await.status(), StatusCode::OK, "the control");
    for (case, token) in [
        ("neither", signed_by(JWT_SECRET, claims(None, None))),
        ("no iss", signed_by(JWT_SECRET, claims(None, Some(aud)))),
        ("no aud", signed_by(JWT_SECRET, claims(Some(iss), None))),
        ("wrong aud", signed_by(JWT_SECRET, claims(Some(iss), Some("another-service")))),
        ("wrong iss", signed_by(JWT_SECRET, claims(Some("someone-else"), Some(aud)))),
    ] {
        let r = app.get("/v1/users/alice/wallets/EUR", &token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

#[tokio::test]
async fn tokens_of_a_previous_jwt_secret_are_accepted_during_rotation() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    let old = "the-signing-key-being-rotated-out-of-service";
    settings.auth.previous_jwt_secrets = vec![old.into()];
    let app = deployment.spawn(settings).await;
    app.funded_user("alice", "EUR", "1").await;
    let ttl = std::time::Duration::from_secs(60);
    let path = "/v1/users/alice/wallets/EUR";
    let by_old = Auth::new(old).token("alice", Role::User, ttl).expect("token");
    assert_eq!(app.get(path, &by_old).await.status(), StatusCode::OK, "the previous key");
    assert_eq!(app.get(path, &app.user_token("alice")).await.status(), StatusCode::OK, "the current key");
    let retired = Auth::new("a-key-that-was-removed-from-the-list").token("alice", Role::User, ttl).expect("token");
    assert_problem(app.get(path, &retired).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Signed by the old key but expired (beyond the 5 s leeway): refused, not retried with
    // the next key into an acceptance.
    let past = jsonwebtoken::get_current_timestamp() - 60;
    let (iss, aud) = (&app.settings.auth.issuer, &app.settings.auth.audience);
    let expired_old =
        signed_by(old, json!({"sub": "alice", "role": "user", "iss": iss, "aud": aud, "exp": past, "iat": past - 60}));
    assert_problem(app.get(path, &expired_old).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
