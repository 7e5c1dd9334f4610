//! `GET /metrics`: a real Prometheus parser reads it, and counters move when money does.
//! The recorder is process-wide: `make test` runs these tests in its serial pass
//! (`HEAVY_TESTS`), so what moves between two scrapes is this test's doing.
use std::time::Duration;

use prom_text_format_parser::{Scrape, Type, ValueType};
use reqwest::StatusCode;

use crate::helpers::*;

async fn scrape(app: &TestApp) -> Scrape {
    let response = app.http.get(app.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().expect("content type").to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.expect("metrics text");
    Scrape::parse(&text).unwrap_or_else(|e| panic!("not a valid Prometheus exposition: {e:?}\n{text}"))
}

/// The sum of the samples of `name` whose labels include `labels`: values of counters
/// and gauges, observation counts of histograms.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let metric = scrape.metrics.iter().find(|m| m.name == name)?;
    let wanted = if metric.kind == Type::Histogram { ValueType::Count } else { ValueType::Sample };
    let matching: Vec<f64> = metric
        .samples
        .iter()
        .filter(|s| s.value.value_type == wanted)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v)))
        .map(|s| s.value.value.as_f64())
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Every value of label `key` in the exposition.
fn label_values<'a>(scrape: &'a Scrape, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    scrape
        .metrics
        .iter()
        .flat_map(|m| &m.samples)
        .flat_map(|s| s.labels.iter())
        .filter(move |l| l.key == key)
        .map(|l| l.value.as_str())
}

fn count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_transfers_when_money_moves() {
    let app = spawn_app().await;
    let (alice, heidi) = (app.user_on_shard("alice", 0), app.user_on_shard("heidi", 0));
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "1000").await;
    app.funded_user(&heidi, "EUR", "0").await;
    app.funded_user(&bob, "EUR", "0").await;
    let before = scrape(&app).await;
    let token = app.user_token(&alice);

    assert_eq!(app.transfer(&token, &alice, &heidi, "EUR", "10", "m-local").await.status(), StatusCode::CREATED);
    let cross = app.transfer(&token, &alice, &bob, "EUR", "20", "m-cross").await;
    assert_eq!(cross.status(), StatusCode::ACCEPTED);
    let cross_id = body(cross).await["transfer_id"].as_str().expect("id").to_string();
    let ghost = app.user_on_shard("ghost", 2);
    let cancelled = app.transfer(&token, &alice, &ghost, "EUR", "30", "m-ghost").await;
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    let cancelled_id = body(cancelled).await["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&cross_id, Duration::from_secs(90)).await["status"], "completed");
    assert_eq!(app.wait_final(&cancelled_id, Duration::from_secs(90)).await["status"], "cancelled");
    // A replay moves no money and starts nothing.
    assert_eq!(app.transfer(&token, &alice, &heidi, "EUR", "10", "m-local").await.status(), StatusCode::CREATED);

    let after = scrape(&app).await;
    let moved = |name: &str, labels: &[(&str, &str)]| count(&after, name, labels) - count(&before, name, labels);
    assert!(moved("shardwallet_transfers_started_total", &[("route", "local")]) >= 1.0);
    assert!(moved("shardwallet_transfers_completed_total", &[("route", "local")]) >= 1.0);
    assert!(moved("shardwallet_transfers_started_total", &[("route", "cross_shard")]) >= 2.0);
    assert!(moved("shardwallet_transfers_completed_total", &[("route", "cross_shard")]) >= 1.0);
    let ghost_reason = [("route", "cross_shard"), ("reason", "user_not_found")];
    assert!(moved("shardwallet_transfers_cancelled_total", &ghost_reason) >= 1.0);
    let created = [("route", "/v1/transfers"), ("method", "POST"), ("status", "201")];
    assert!(moved("shardwallet_http_requests_total", &created) >= 2.0, "the replay is a request too");
    assert!(moved("shardwallet_http_requests_total", &[("route", "/v1/transfers"), ("status", "202")]) >= 2.0);
    assert!(moved("shardwallet_http_request_duration_seconds", &created) >= 2.0);
    // bob's wallet was found by a read: a direct credit; ghost's Try had to ask.
    assert!(moved("shardwallet_stages_handled_total", &[("stage", "DirectCredit")]) >= 1.0);
    assert!(moved("shardwallet_stages_handled_total", &[("stage", "TryCredit")]) >= 1.0);
    assert!(moved("shardwallet_stage_handling_duration_seconds", &[("stage", "DirectCredit")]) >= 1.0);
    assert!(moved("shardwallet_outbox_published_total", &[]) >= 4.0);
    // Ids never become labels: the route template does.
    let reads = [("route", "/v1/transfers/{transfer_id}"), ("method", "GET"), ("status", "200")];
    assert!(count(&after, "shardwallet_http_requests_total", &reads) >= 1.0);
    assert!(label_values(&after, "route").all(|route| !route.contains(&cross_id)));

    // The sampler's gauges: this deployment's topics are unique to this test.
    let topics = shardwallet::messaging::kafka::Topics::new(&app.settings.kafka.topic_prefix);
    let sampled = eventually(Duration::from_secs(30), "sampled gauges", || async {
        let s = scrape(&app).await;
        let lag = value(&s, "shardwallet_consumer_lag_messages", &[("topic", &topics.stages)])?;
        let dead = value(&s, "shardwallet_dead_letters_retained", &[("topic", &topics.dead_letters)])?;
        (lag == 0.0).then_some((s, dead))
    })
    .await;
    let (s, dead) = sampled;
    assert_eq!(dead, 0.0);
    for shard in ["shard-1", "shard-2", "shard-3"] {
        assert!(value(&s, "shardwallet_outbox_depth", &[("shard", shard)]).is_some(), "outbox depth of {shard}");
        assert!(value(&s, "shardwallet_outbox_oldest_age_seconds", &[("shard", shard)]).is_some());
        assert!(value(&s, "shardwallet_db_pool_max_size", &[("shard", shard)]).is_some());
        assert!(value(&s, "shardwallet_db_pool_connections", &[("shard", shard)]).is_some());
    }
}

#[tokio::test]
async fn the_outbox_gauges_show_unpublished_rows_and_their_age() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // No relay: a cross-shard transfer's TryCredit stays in the sender's outbox.
    settings.transfers.relay_enabled = false;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    assert_eq!(app.transfer(&token, &alice, &bob, "EUR", "5", "stuck-1").await.status(), StatusCode::ACCEPTED);
    // What the sampler reads (its gauges are process-wide, and every test's shards are
    // named shard-1..3, so the query is checked here and the gauges' presence above).
    let shard = app.router.for_user(&shardwallet::domain::UserId::parse(&alice).expect("id")).clone();
    let (depth, _) = eventually(Duration::from_secs(30), "the oldest row to age", || async {
        let stats = shardwallet::messaging::sampler::outbox_stats(&shard).await.expect("outbox stats");
        (stats.1 >= 1.0).then_some(stats)
    })
    .await;
    assert_eq!(depth, 1, "the TryCredit waits in the outbox");
    let receiver = app.router.for_user(&shardwallet::domain::UserId::parse(&bob).expect("id")).clone();
    assert_eq!(shardwallet::messaging::sampler::outbox_stats(&receiver).await.expect("stats"), (0, 0.0));
}

#[tokio::test]
async fn gateway_calls_and_the_circuit_state_are_recorded_when_a_payment_goes_out() {
    let app = spawn_app().await;
    let user = app.user_on_shard("gw", 0);
    app.funded_user(&user, "EUR", "0").await;
    let before = scrape(&app).await;
    let deposit = serde_json::json!({
        "user_id": user, "currency": "EUR", "amount": "1000", "gateway": "gateway_a",
        "payment_method": { "type": "card", "number": "4242424242424242" },
    });
    let accepted = app.post("/v1/deposits", &app.admin(), &deposit, Some("gw-metrics")).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let id = body(accepted).await["payment_id"].as_str().expect("payment id").to_string();
    eventually(Duration::from_secs(30), "the deposit to succeed", || async {
        let payment = body(app.get(&format!("/v1/payments/{id}"), &app.admin()).await).await;
        (payment["status"] == "succeeded").then_some(())
    })
    .await;
    let after = scrape(&app).await;
    let ok = [("gateway", "gateway_a"), ("outcome", "ok")];
    let moved = |name: &str| count(&after, name, &ok) - count(&before, name, &ok);
    assert!(moved("shardwallet_gateway_calls_total") >= 1.0, "the gateway call is counted");
    assert!(moved("shardwallet_gateway_call_duration_seconds") >= 1.0, "and timed");
    let state =
        |st: &str| count(&after, "shardwallet_gateway_circuit_state", &[("gateway", "gateway_a"), ("state", st)]);
    assert_eq!((state("closed"), state("open"), state("half_open")), (1.0, 0.0, 0.0));
}

#[tokio::test]
async fn consumer_lag_counts_stage_messages_nobody_consumed() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // The relay publishes, nobody consumes: the TryCredit waits on the stage topic.
    settings.transfers.consumer_enabled = false;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let token = app.user_token(&alice);
    assert_eq!(app.transfer(&token, &alice, &bob, "EUR", "5", "lag-1").await.status(), StatusCode::ACCEPTED);
    let topic = shardwallet::messaging::kafka::Topics::new(&app.settings.kafka.topic_prefix).stages;
    eventually(Duration::from_secs(30), "a lag of one message", || async {
        let s = scrape(&app).await;
        (value(&s, "shardwallet_consumer_lag_messages", &[("topic", &topic)])? >= 1.0).then_some(())
    })
    .await;
}
