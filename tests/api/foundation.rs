//! Health, readiness, the shard-map guard, graceful shutdown and migrations.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn health_is_alive_and_ready_names_every_shard_and_the_broker() {
    let app = spawn_app().await;
    let health = app.http.get(app.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.http.get(app.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), StatusCode::OK);
    let ready = body(ready).await;
    assert_eq!(ready["checks"], json!({ "shard-1": "up", "shard-2": "up", "shard-3": "up", "broker": "up" }));
    app.stop().await;
}

#[tokio::test]
async fn ready_turns_503_naming_the_shard_whose_server_is_down_and_recovers() {
    let deployment = Deployment::new().await;
    let target = host_port(&deployment.db_urls[1]);
    let mut proxy = Proxy::start(&target).await;
    let mut urls = deployment.db_urls.clone();
    urls[1] = urls[1].replace(&target, &format!("127.0.0.1:{}", proxy.port));
    let app = deployment.spawn(deployment.settings_for(&urls, &RANGES)).await;
    assert_eq!(app.http.get(app.url("/ready")).send().await.expect("ready").status(), StatusCode::OK);

    proxy.cut();
    let down = eventually(Duration::from_secs(30), "ready to turn 503", || async {
        let r = app.http.get(app.url("/ready")).send().await.expect("ready");
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    let down = body(down).await;
    assert_eq!(down["down"], json!(["shard-2"]));
    assert_eq!(down["checks"]["shard-1"], "up");

    proxy.restore().await;
    eventually(Duration::from_secs(30), "ready to turn 200 again", || async {
        let r = app.http.get(app.url("/ready")).send().await.expect("ready");
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn serve_refuses_a_shard_map_that_moved_buckets_and_says_how_to_fix_it() {
    let deployment = Deployment::new().await;
    let moved = ["0-5000", "5001-10921", "10922-16383"];
    let settings = deployment.settings_for(&deployment.db_urls, &moved);
    let error = match shardwallet::startup::Application::build(settings).await {
        Ok(_) => panic!("serve started with a changed shard map"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("shard 'shard-1' was migrated as shard 'shard-1' owning buckets 0-5460"), "{error}");
    assert!(error.contains("now says shard 'shard-1' owns buckets 0-5000"), "{error}");
    assert!(error.contains("Restore the shard map"), "{error}");
    // The unchanged map still serves.
    deployment.spawn_default().await.stop().await;
}

#[tokio::test]
async fn shutdown_completes_a_request_in_flight() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 0);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;

    // Hold alice's wallet row so the transfer is in flight until we let go.
    let mut db = app.shard_db(0).await;
    let lock = db.transaction().await.expect("tx");
    lock.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", &[&alice]).await.expect("lock");

    let request = {
        let (http, url, token) = (app.http.clone(), app.url("/v1/transfers"), app.user_token(&alice));
        let body = json!({ "from_user_id": alice, "to_user_id": bob, "currency": "EUR", "amount": "40" });
        tokio::spawn(async move {
            http.post(url).bearer_auth(token).header("Idempotency-Key", "inflight").json(&body).send().await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let router = app.router.clone();
    let _deployment = app.deployment.clone();
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "the app stopped before its in-flight request finished");
    lock.rollback().await.expect("release");

    let response = request.await.expect("task").expect("in-flight request");
    assert_eq!(response.status(), StatusCode::CREATED);
    stopping.await.expect("stopped");
    let client = router.shards()[0].client().await.expect("db");
    let balance: String = client
        .query_one("SELECT balance::text FROM accounts WHERE user_id = $1", &[&bob])
        .await
        .expect("balance")
        .get(0);
    assert_eq!(balance, "40");
}

#[tokio::test]
async fn migrations_are_safe_to_rerun_and_to_run_concurrently() {
    let env = env();
    let server = &env.pg[0];
    let db = format!("t_migrate_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (admin, conn) = tokio_postgres::connect(server, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.expect("create");
    let url = format!("{}/{db}", server.rsplit_once('/').expect("url").0);
    let config: tokio_postgres::Config = url.parse().expect("url");
    let (a, b) = tokio::join!(
        shardwallet::storage::migrate::run("a", &config),
        shardwallet::storage::migrate::run("b", &config)
    );
    let applied = a.expect("first migrate") + b.expect("second migrate");
    assert_eq!(applied, std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).expect("dir").count());
    assert_eq!(shardwallet::storage::migrate::run("again", &config).await.expect("rerun"), 0);
    admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await.expect("drop");
}
