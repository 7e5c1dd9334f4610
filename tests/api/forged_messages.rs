//! Stage messages the service did not sign, or signed but with facts that contradict
//! the receiver's record, are never applied: they land in the dead-letter topic with
//! the reason, and a replay does not make them valid.
use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    Offset, TopicPartitionList,
};
use reqwest::StatusCode;
use shardwallet::{
    config::KafkaSettings,
    messaging::{
        auth::{MessageAuth, Purpose},
        dlq, kafka,
    },
    transfer::{
        messages::{Stage, TransferFacts},
        tcc,
    },
};

use crate::helpers::*;

/// One message read back from the dead-letter topic.
#[derive(Debug)]
struct DeadLetter {
    payload: String,
    error: String,
}

/// Waits until the stage consumer has created the topics (it answers dead-letter counts).
async fn wait_for_topics(app: &TestApp) {
    let admin = app.admin();
    eventually(Duration::from_secs(30), "the topics to exist", || async {
        (app.get("/v1/admin/dead-letters", &admin).await.status() == StatusCode::OK).then_some(())
    })
    .await;
}

async fn publish(producer: &FutureProducer, topic: &str, key: &str, payload: &str, headers: Option<OwnedHeaders>) {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    producer.send(record, Duration::from_secs(5)).await.map_err(|(e, _)| e).expect("publish");
}

/// Reads the dead-letter topic from its start until it holds `n` messages.
async fn dead_letters(settings: &KafkaSettings, n: usize) -> Vec<DeadLetter> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let topic = kafka::Topics::new(&settings.topic_prefix).dead_letters;
        let group = format!("{}.test-reader-{}", settings.group_id, uuid::Uuid::new_v4().simple());
        let consumer: BaseConsumer = kafka::consumer_config(&settings, &group).create().expect("reader");
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition_offset(&topic, 0, Offset::Beginning).expect("partition");
        consumer.assign(&partitions).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut read = Vec::new();
        while read.len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} dead letters arrived: {read:?}", read.len());
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
            let error = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "error").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            read.push(DeadLetter { payload, error });
        }
        read
    })
    .await
    .expect("reader thread")
}

/// A value of the app's metric exposition (the recorder is process-wide: at least).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.http.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// `auth` of an attacker: the real key id with a key of their own, or a key id of their own.
fn forger(settings: &KafkaSettings, key_id: &str) -> MessageAuth {
    let mut kafka = settings.clone();
    kafka.messages.message_keys.insert(key_id.to_string(), "a-key-the-attacker-made-up-himself".into());
    kafka.messages.message_key_id = key_id.to_string();
    MessageAuth::new(&kafka).expect("forger's keys")
}

#[tokio::test]
async fn a_forged_direct_credit_credits_nobody_and_is_dead_lettered_even_after_a_replay() {
    let app = spawn_app().await;
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&bob, "EUR", "0").await;
    wait_for_topics(&app).await;
    let producer = kafka::producer(&app.settings.kafka).expect("an ordinary producer");
    let topics = kafka::Topics::new(&app.settings.kafka.topic_prefix);

    // What the attacker writes: a made-up transfer id, a real receiver, a million.
    let forged = |n: u128| TransferFacts {
        transfer_id: uuid::Uuid::from_u128(0x0f0f_0000_0000_4000_8000_0000_0000_0000 + n),
        from_user_id: "nobody".into(),
        to_user_id: bob.clone(),
        currency: "EUR".into(),
        amount: "1000000".into(),
        description: Some("free money".into()),
    };
    let kafka = &app.settings.kafka;
    let attempts = [
        (forged(1), None, "rejected: unsigned message"),
        (forged(2), Some(forger(kafka, &kafka.messages.message_key_id)), "rejected: bad message authentication tag"),
        (forged(3), Some(forger(kafka, "k-forged")), "rejected: signed with unknown key id 'k-forged'"),
    ];
    for (facts, signer, _) in &attempts {
        let key = facts.transfer_id.to_string();
        let payload = serde_json::to_string(&facts.message(Stage::DirectCredit)).expect("json");
        let headers = signer.as_ref().map(|s| s.headers(Purpose::Stage, key.as_bytes(), payload.as_bytes()));
        publish(&producer, &topics.stages, &key, &payload, headers).await;
    }

    let letters = dead_letters(kafka, attempts.len()).await;
    for (facts, _, reason) in &attempts {
        let id = facts.transfer_id.to_string();
        let letter = letters.iter().find(|l| l.payload.contains(&id)).expect("each forgery is dead-lettered");
        assert!(letter.error.starts_with(reason), "{letter:?}");
    }
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    let receiver = app.shard_db(1).await;
    let incoming: i64 = receiver.query_one("SELECT count(*) FROM incoming_transfers", &[]).await.expect("q").get(0);
    assert_eq!(incoming, 0, "a refused message leaves no trace on the receiver");
    assert!(metric(&app, r#"shardwallet_messages_rejected_total{topic="stages",reason="unsigned"}"#).await >= 1.0);
    assert!(metric(&app, r#"shardwallet_messages_rejected_total{topic="stages",reason="bad_mac"}"#).await >= 1.0);
    assert!(metric(&app, r#"shardwallet_messages_rejected_total{topic="stages",reason="unknown_key"}"#).await >= 1.0);

    // A replay republishes them with the headers they came with: refused again.
    assert_eq!(dlq::replay(kafka, &topics, &producer).await.expect("replay"), attempts.len());
    let letters = dead_letters(kafka, 2 * attempts.len()).await;
    for (facts, _, reason) in &attempts {
        let id = facts.transfer_id.to_string();
        let again: Vec<_> = letters.iter().filter(|l| l.payload.contains(&id)).collect();
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(again.iter().all(|l| l.error.starts_with(reason)), "{again:?}");
    }
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_signed_confirm_with_another_amount_is_refused_and_the_transfer_credits_what_was_tried() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // Stages wait in the outbox, so the test delivers the Try itself and the Confirm is
    // the tampered one first.
    settings.transfers.relay_enabled = false;
    settings.transfers.direct_credit = false;
    let app = deployment.spawn(settings).await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let sent = body(app.transfer(&app.user_token(&alice), &alice, &bob, "EUR", "30", "t1").await).await;
    let id: uuid::Uuid = sent["transfer_id"].as_str().expect("id").parse().expect("uuid");
    let mut facts = TransferFacts {
        transfer_id: id,
        from_user_id: alice.clone(),
        to_user_id: bob.clone(),
        currency: "EUR".into(),
        amount: "30".into(),
        description: None,
    };
    tcc::handle(&app.router, &facts.message(Stage::TryCredit)).await.expect("try recorded 30");
    wait_for_topics(&app).await;

    // Correctly signed (a key holder is trusted to sign), but the amount is not the Try's.
    facts.amount = "1000000".into();
    let payload = serde_json::to_string(&facts.message(Stage::ConfirmCredit)).expect("json");
    let key = id.to_string();
    let auth = MessageAuth::new(&app.settings.kafka).expect("the test's keys");
    let producer = kafka::producer(&app.settings.kafka).expect("producer");
    let topics = kafka::Topics::new(&app.settings.kafka.topic_prefix);
    publish(
        &producer,
        &topics.stages,
        &key,
        &payload,
        Some(auth.headers(Purpose::Stage, key.as_bytes(), payload.as_bytes())),
    )
    .await;
    let letters = dead_letters(&app.settings.kafka, 1).await;
    let refusal = "ConfirmCredit differs from the Try record: amount \"1000000\" (Try recorded \"30\")";
    assert!(letters[0].error.contains(refusal), "{letters:?}");
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    let receiver = app.shard_db(1).await;
    let state: String = receiver
        .query_one("SELECT state FROM incoming_transfers WHERE transfer_id = $1", &[&id])
        .await
        .expect("incoming")
        .get(0);
    assert_eq!(state, "tried", "the refused Confirm changed nothing");

    // Replayed, it keeps its (valid) tag: refused again for what it says, not as unsigned.
    assert_eq!(dlq::replay(&app.settings.kafka, &topics, &producer).await.expect("replay"), 1);
    let letters = dead_letters(&app.settings.kafka, 2).await;
    assert!(letters[1].error.contains(refusal), "{letters:?}");
    assert_eq!(app.balance(&bob, "EUR").await, "0");
    app.stop().await;

    // The genuine stages go out: the transfer completes with the amount that was tried.
    let app = deployment.spawn_default().await;
    assert_eq!(app.wait_final(&key, Duration::from_secs(90)).await["status"], "completed");
    assert_eq!(app.balance(&bob, "EUR").await, "30");
    assert_eq!(app.balance(&alice, "EUR").await, "70");
    app.assert_verified().await;
}

#[tokio::test]
async fn an_unsigned_payment_message_is_refused_and_counted() {
    let app = spawn_app().await;
    wait_for_topics(&app).await;
    let before = metric(&app, r#"shardwallet_messages_rejected_total{topic="payments",reason="unsigned"}"#).await;
    let producer = kafka::producer(&app.settings.kafka).expect("producer");
    let topic = kafka::Topics::new(&app.settings.kafka.topic_prefix).payments;
    let payment_id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::json!({ "v": 1, "payment_id": payment_id }).to_string();
    publish(
        &producer,
        &topic,
        &payment_id,
        &payload,
        Some(OwnedHeaders::new().insert(Header { key: "sw-key-id", value: Some("nope") })),
    )
    .await;
    eventually(Duration::from_secs(30), "the payments worker to refuse it", || async {
        let now = metric(&app, r#"shardwallet_messages_rejected_total{topic="payments",reason="unsigned"}"#).await;
        (now > before).then_some(())
    })
    .await;
}
