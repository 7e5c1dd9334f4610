//! The OpenAPI document and Swagger UI: every endpoint, its errors, the bearer scheme
//! and the Idempotency-Key header; `/docs` rendered by headless Chromium with no network.
use std::{path::PathBuf, process::Stdio, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("post", "/v1/users"),
    ("get", "/v1/users/{user_id}"),
    ("post", "/v1/users/{user_id}/wallets"),
    ("get", "/v1/users/{user_id}/wallets"),
    ("get", "/v1/users/{user_id}/wallets/{currency}"),
    ("get", "/v1/users/{user_id}/wallets/{currency}/entries"),
    ("get", "/v1/users/{user_id}/transfers"),
    ("post", "/v1/transfers"),
    ("post", "/v1/transfers/batch"),
    ("get", "/v1/transfers/{transfer_id}"),
    ("post", "/v1/entries/{entry_id}/reversal"),
    ("post", "/v1/admin/adjustments"),
    ("get", "/v1/admin/audit"),
    ("get", "/v1/admin/dead-letters"),
    ("get", "/v1/admin/shards"),
    ("post", "/v1/deposits"),
    ("post", "/v1/withdrawals"),
    ("get", "/v1/payments/{payment_id}"),
    ("get", "/v1/users/{user_id}/payments"),
    ("post", "/v1/gateways/{gateway}/callbacks"),
    ("get", "/v1/admin/gateways"),
    ("get", "/v1/admin/payments"),
    ("post", "/v1/admin/payments/{payment_id}/resolve"),
    ("get", "/v1/admin/transfers"),
    ("post", "/v1/admin/transfers/{transfer_id}/redrive"),
];

/// Re-sending a stage never repeats an effect: a re-drive needs no Idempotency-Key.
const REDRIVE: &str = "/v1/admin/transfers/{transfer_id}/redrive";

/// Each item carries its own key (`idempotency_key`), not the request.
const BATCH: &str = "/v1/transfers/batch";

/// Signed by the gateway, not by a bearer token.
const CALLBACKS: &str = "/v1/gateways/{gateway}/callbacks";

async fn document(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/openapi.json")).send().await.expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint_with_its_errors_and_security() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let documented: usize = paths.values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(documented, ENDPOINTS.len(), "documented operations: {:?}", paths.keys().collect::<Vec<_>>());
    for (method, path) in ENDPOINTS {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is documented");
        let responses = op["responses"].as_object().expect("responses");
        if *path == CALLBACKS {
            assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path} needs no bearer token");
        } else if path.starts_with("/v1/") {
            assert_eq!(op["security"][0]["bearer"], Value::Array(vec![]), "{method} {path} needs a bearer token");
        }
        if path.starts_with("/v1/") {
            for status in ["400", "401", "429", "500", "503"] {
                let problem = &responses[status]["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(problem, "#/components/schemas/Problem", "{method} {path} {status}");
            }
        }
        let idempotent = *method == "post"
            && !path.starts_with("/v1/users")
            && *path != CALLBACKS
            && *path != REDRIVE
            && *path != BATCH;
        let key = op["parameters"].as_array().into_iter().flatten().find(|p| p["name"] == "Idempotency-Key");
        assert_eq!(key.is_some(), idempotent, "{method} {path} Idempotency-Key");
        if let Some(key) = key {
            assert_eq!((&key["in"], &key["required"]), (&Value::from("header"), &Value::from(true)));
        }
    }
    let created = &doc["paths"]["/v1/transfers"]["post"]["responses"];
    assert_eq!(created["201"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Transfer");
    assert_eq!(created["422"]["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem");
    let limited = &created["429"]["headers"];
    for header in ["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
        assert!(limited[header].is_object(), "429 documents {header}");
    }
    let payment = &doc["paths"]["/v1/deposits"]["post"]["responses"];
    assert_eq!(payment["202"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Payment");
    assert!(payment["503"]["headers"]["Retry-After"].is_object(), "gateway_unavailable documents Retry-After");
    let signed = &doc["paths"][CALLBACKS]["post"]["responses"]["401"]["content"]["application/problem+json"];
    assert_eq!(signed["schema"]["$ref"], "#/components/schemas/Problem");
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!((&scheme["type"], &scheme["scheme"]), (&Value::from("http"), &Value::from("bearer")));
    let codes = doc["components"]["schemas"]["ProblemCode"]["enum"].as_array().expect("ProblemCode enum");
    for code in [
        "rate_limited",
        "insufficient_funds",
        "batch_spans_shards",
        "idempotency_key_reused",
        "unauthorized",
        "internal",
        "invalid_payment_method",
        "gateway_not_found",
        "gateway_unavailable",
        "invalid_signature",
        "payment_not_found",
        "payment_final",
        "transfer_final",
        "payload_too_large",
    ] {
        assert!(codes.contains(&Value::from(code)), "ProblemCode lists {code}");
    }
    assert_eq!(
        doc["components"]["schemas"]["Problem"]["properties"]["code"]["$ref"],
        "#/components/schemas/ProblemCode"
    );
}

/// Chromium as Debian ships it; `make test` installs it when missing.
fn chromium() -> PathBuf {
    let candidates = [std::env::var("CHROMIUM").unwrap_or_default(), "chromium".into(), "chromium-browser".into()];
    for name in candidates.iter().filter(|n| !n.is_empty()) {
        if let Some(found) = which(name) {
            return found;
        }
    }
    panic!("no chromium on PATH: `apt-get install -y chromium` (make test does this) or set CHROMIUM");
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs headless chromium, again up to twice if it hangs: on a loaded 2-core machine a
/// headless chromium now and then never finishes its virtual time budget.
async fn run_chromium(args: &[String]) -> String {
    for _ in 0..2 {
        if let Some(out) = try_chromium(args, Duration::from_secs(60)).await {
            return out;
        }
    }
    try_chromium(args, Duration::from_secs(90)).await.expect("chromium finished within 90 s")
}

async fn try_chromium(args: &[String], within: Duration) -> Option<String> {
    let profile = std::env::temp_dir().join(format!("shardwallet-chromium-{}", uuid::Uuid::new_v4().simple()));
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // kill_on_drop: a chromium that overran is killed when its future is dropped here.
    let output = tokio::time::timeout(within, command.output()).await;
    let _ = std::fs::remove_dir_all(&profile);
    let output = output.ok()?.expect("chromium runs");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_lists_the_endpoints_in_a_headless_browser_without_network() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/docs")).send().await.expect("GET /docs");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    for asset in ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/swagger-initializer.js"] {
        assert_eq!(app.http.get(app.url(asset)).send().await.expect("asset").status(), StatusCode::OK, "{asset}");
    }

    let docs = app.url("/docs");
    let dom = run_chromium(&["--virtual-time-budget=20000".into(), "--dump-dom".into(), docs.clone()]).await;
    assert!(dom.contains("opblock"), "Swagger UI rendered operations:\n{}", &dom[..dom.len().min(2000)]);
    for (_, path) in ENDPOINTS {
        // Swagger UI breaks long paths with zero-width spaces (U+200B).
        let shown = dom.replace('\u{200b}', "");
        assert!(shown.contains(path), "Swagger UI lists {path}");
    }
    assert!(dom.contains("Authorize"), "the bearer scheme offers an Authorize button");

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&out).expect("test output dir");
    let png = out.join("swagger.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(&[
        "--virtual-time-budget=20000".into(),
        "--window-size=1280,2400".into(),
        format!("--screenshot={}", png.display()),
        docs,
    ])
    .await;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "a screenshot with content at {} ({size} bytes)", png.display());
}

#[tokio::test]
async fn framework_rejections_are_problems_too() {
    let app = spawn_app().await;
    let duplicate = app.get("/v1/users/alice/transfers?limit=1&limit=2", &app.admin()).await;
    assert_problem(duplicate, StatusCode::BAD_REQUEST, "invalid_request").await;
    let entries = app.get("/v1/users/alice/wallets/EUR/entries?cursor=1&cursor=2", &app.admin()).await;
    assert_problem(entries, StatusCode::BAD_REQUEST, "invalid_request").await;
    let bad_utf8 = app.get("/v1/users/%FF%FE/wallets/EUR", &app.admin()).await;
    assert_problem(bad_utf8, StatusCode::BAD_REQUEST, "invalid_request").await;
}
