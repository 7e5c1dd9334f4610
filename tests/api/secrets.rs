//! Issue #13 §3: outside `[server] profile = "dev"`, no known, short or shared secret is
//! accepted, and the refusal names the setting. Gateway keys rotate with two active.
use std::process::Stdio;

use reqwest::StatusCode;
use shardwallet::{
    api::auth::Auth,
    config::{Profile, Settings},
    gateways::{json as a, signature},
    startup::Application,
};

use crate::helpers::*;

/// A fresh 64-hex-digit secret: a value written in the repository would be a known one.
fn strong() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The harness's settings as a production deployment with strong, distinct secrets.
fn production(deployment: &Deployment) -> Settings {
    let mut settings = deployment.settings();
    settings.server.profile = Profile::Production;
    settings.auth.jwt_secret = strong().into();
    settings.payments.encryption_key = strong().into();
    for gateway in settings.gateways.values_mut() {
        gateway.signing_secret = strong().into();
    }
    for key in settings.kafka.messages.message_keys.values_mut() {
        *key = strong().into();
    }
    settings
}

async fn refusal(settings: Settings) -> String {
    match Application::build(settings).await {
        Ok(_) => panic!("a production deployment with a weak secret started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn production_refuses_the_shipped_jwt_secret_and_names_it() {
    let deployment = Deployment::new().await;
    let mut settings = production(&deployment);
    settings.auth.jwt_secret = "local-dev-secret-change-me".into();
    let error = refusal(settings).await;
    assert!(error.contains("auth.jwt_secret is a value shipped in the repository"), "{error}");
    assert!(error.contains("profile = \"dev\""), "the way out is named: {error}");
    assert!(!error.contains("payments.encryption_key"), "only the weak one is named: {error}");
}

#[tokio::test]
async fn production_refuses_two_gateways_sharing_a_secret_and_names_both() {
    let deployment = Deployment::new().await;
    let mut settings = production(&deployment);
    let shared = strong();
    for gateway in settings.gateways.values_mut() {
        gateway.signing_secret = shared.clone().into();
    }
    let error = refusal(settings).await;
    assert!(
        error.contains("gateways.gateway_a.signing_secret and gateways.gateway_b.signing_secret share one value"),
        "{error}"
    );
}

#[tokio::test]
async fn production_refuses_short_empty_and_default_secrets() {
    let deployment = Deployment::new().await;
    let mut settings = production(&deployment);
    settings.auth.jwt_secret = "31-bytes-is-one-byte-too-short!".into();
    settings.gateways.get_mut("gateway_a").expect("gateway_a").signing_secret = "".into();
    settings.payments.encryption_key = shardwallet::config::PaymentSettings::default().encryption_key;
    let error = refusal(settings).await;
    assert!(error.contains("auth.jwt_secret is shorter than 32 bytes"), "{error}");
    assert!(error.contains("gateways.gateway_a.signing_secret is empty"), "{error}");
    assert!(error.contains("payments.encryption_key is a value shipped"), "the code default: {error}");
}

#[tokio::test]
async fn the_shipped_configuration_is_refused_in_production() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/shardwallet.toml");
    let mut settings = Settings::load(std::path::Path::new(path)).expect("shardwallet.toml");
    assert_eq!(settings.server.profile, Profile::Dev, "make run's configuration declares itself dev");
    settings.server.profile = Profile::Production;
    let error = refusal(settings).await;
    for setting in ["auth.jwt_secret", "payments.encryption_key", "gateways.gateway_a.signing_secret"] {
        assert!(error.contains(&format!("{setting} is a value shipped")), "{setting}: {error}");
    }
}

#[tokio::test]
async fn production_with_strong_distinct_secrets_serves() {
    let deployment = Deployment::new().await;
    let settings = production(&deployment);
    let auth = Auth::from_settings(&settings.auth);
    let app = deployment.spawn(settings).await;
    let admin = auth.token("ops", shardwallet::domain::Role::Admin, std::time::Duration::from_secs(60)).expect("token");
    assert_eq!(app.get("/v1/admin/audit", &admin).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_dev_profile_serves_on_the_shipped_secrets() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    assert_eq!(settings.server.profile, Profile::Dev);
    settings.auth = shardwallet::config::AuthSettings::with_secret("local-dev-secret-change-me");
    for gateway in settings.gateways.values_mut() {
        gateway.signing_secret = "mock-gateway-secret".into();
    }
    let app = deployment.spawn(settings).await;
    let admin = Auth::new("local-dev-secret-change-me")
        .token("ops", shardwallet::domain::Role::Admin, std::time::Duration::from_secs(60))
        .expect("token");
    assert_eq!(app.get("/v1/admin/audit", &admin).await.status(), StatusCode::OK);
}

/// The shipped secrets in a config file of the real binary, with a shard map that works.
fn write_config(deployment: &Deployment, extra_server: &str, extra_auth: &str) -> std::path::PathBuf {
    let settings = deployment.settings();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n\
         [shards]\nmap_path = \"{}\"\n\
         [auth]\njwt_secret = \"local-dev-secret-change-me\"\n{extra_auth}\n\
         [kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\ngroup_id = \"{}\"\n\
         [gateways.gateway_a]\nprotocol = \"json\"\nbase_url = \"{}\"\nsigning_secret = \"mock-gateway-secret\"\n\
         [gateways.gateway_b]\nprotocol = \"xml\"\nbase_url = \"{}\"\nsigning_secret = \"mock-gateway-secret\"\n",
        settings.shards.map_path,
        settings.kafka.brokers,
        settings.kafka.topic_prefix,
        settings.kafka.group_id,
        deployment.mock_a,
        deployment.mock_b,
    );
    let path = std::path::Path::new(&settings.shards.map_path).with_file_name(format!("{}.toml", strong()));
    std::fs::write(&path, text).expect("write config");
    path
}

/// The binary, with no SHARDWALLET__ override from this test's environment.
fn binary(config: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardwallet"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SHARDWALLET__")) {
        command.env_remove(name);
    }
    command.arg("--config").arg(config).stdin(Stdio::null()).kill_on_drop(true);
    command
}

#[tokio::test]
async fn serve_exits_non_zero_naming_the_shipped_secrets_without_the_dev_profile() {
    let deployment = Deployment::new().await;
    let config = write_config(&deployment, "", "");
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), binary(&config).arg("serve").output())
        .await
        .expect("serve stops by itself")
        .expect("run shardwallet serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "serve started: {stderr}");
    assert!(stderr.contains("refusing to start with known or weak secrets"), "{stderr}");
    for setting in ["auth.jwt_secret", "payments.encryption_key", "gateways.gateway_b.signing_secret"] {
        assert!(stderr.contains(setting), "{setting}: {stderr}");
    }
    assert!(!stderr.contains("local-dev-secret-change-me"), "the secret itself is not printed: {stderr}");
}

#[tokio::test]
async fn the_token_command_sets_the_configured_issuer_and_audience() {
    let deployment = Deployment::new().await;
    let config = write_config(&deployment, "", "issuer = \"wallet-test-iss\"\naudience = \"wallet-test-aud\"");
    let output = binary(&config).args(["token", "--sub", "alice"]).output().await.expect("run shardwallet token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let mut expected = shardwallet::config::AuthSettings::with_secret("local-dev-secret-change-me");
    (expected.issuer, expected.audience) = ("wallet-test-iss".into(), "wallet-test-aud".into());
    let caller = Auth::from_settings(&expected).verify(token.trim()).expect("accepted with that iss and aud");
    assert_eq!(caller.subject, "alice");
    let defaults = Auth::new("local-dev-secret-change-me");
    assert!(defaults.verify(token.trim()).is_err(), "refused by a service expecting another iss/aud");
}

/// A gateway A notification about a payment nobody made: a callback that passes the
/// signature check is answered 404 `payment_not_found`, one that fails it 401.
fn notification() -> Vec<u8> {
    let n = a::transformers::Notification {
        event_id: "e1".into(),
        idempotency_key: uuid::Uuid::new_v4(),
        id: "ref".into(),
        status: "approved".into(),
    };
    serde_json::to_vec(&n).expect("json")
}

async fn callback(app: &TestApp, signature: &str, body: Vec<u8>) -> reqwest::Response {
    app.http
        .post(app.url("/v1/gateways/gateway_a/callbacks"))
        .header(a::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .expect("callback")
}

#[tokio::test]
async fn a_gateway_key_rotates_with_two_keys_active() {
    let deployment = Deployment::new().await;
    let mut settings = production(&deployment);
    let (old, new) = (strong(), strong());
    let gateway = settings.gateways.get_mut("gateway_a").expect("gateway_a");
    gateway.signing_secret = new.clone().into();
    gateway.previous_signing_secret = Some(old.clone().into());
    let app = deployment.spawn(settings).await;
    let now = chrono::Utc::now().timestamp();
    for key in [&old, &new] {
        let body = notification();
        let r = callback(&app, &signature::sign(key.as_bytes(), now, &body), body).await;
        assert_problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
    }
    let body = notification();
    let r = callback(&app, &signature::sign(strong().as_bytes(), now, &body), body).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_signature").await;
}

#[tokio::test]
async fn callback_bodies_over_64_kib_are_413_before_any_signature_check() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let big = vec![b' '; 64 * 1024 + 1];
    let r = callback(&app, &signature::sign(GATEWAY_SECRET.as_bytes(), now, &big), big).await;
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // At the limit the body is read and its signature checked.
    let mut body = notification();
    body.resize(64 * 1024, b' ');
    let r = callback(&app, &signature::sign(GATEWAY_SECRET.as_bytes(), now, &body), body).await;
    assert_problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
}

#[tokio::test]
async fn hostile_signature_headers_are_401_not_a_crash() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let body = notification();
    let good = signature::sign(GATEWAY_SECRET.as_bytes(), now, &body);
    let good_v1 = good.split_once("v1=").expect("v1").1;
    let six = format!("t={now}{},v1={good_v1}", format!(",v1={}", "00".repeat(32)).repeat(5));
    let five = format!("t={now}{},v1={good_v1}", format!(",v1={}", "00".repeat(32)).repeat(4));
    let oldest = signature::sign(GATEWAY_SECRET.as_bytes(), i64::MIN, &body);
    for hostile in [six.as_str(), oldest.as_str(), "t=-9223372036854775808,v1=00"] {
        assert_problem(callback(&app, hostile, body.clone()).await, StatusCode::UNAUTHORIZED, "invalid_signature")
            .await;
    }
    let r = callback(&app, &five, body).await;
    assert_problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
}
