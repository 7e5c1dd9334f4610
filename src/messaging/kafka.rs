//! Client configuration and topic management.
use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::FutureProducer,
    types::RDKafkaErrorCode,
    ClientConfig,
};

use secrecy::ExposeSecret;

use crate::config::KafkaSettings;

/// The topic names of one deployment (`topic_prefix` keeps deployments and tests apart).
#[derive(Debug, Clone)]
pub struct Topics {
    pub stages: String,
    pub dead_letters: String,
    /// `SubmitPayment` messages (deposits and withdrawals to send to their gateway).
    pub payments: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            stages: format!("{prefix}transfers"),
            dead_letters: format!("{prefix}transfers.dlq"),
            payments: format!("{prefix}payments"),
        }
    }
}

/// The settings every client shares: the broker, and how to authenticate and encrypt
/// (the one place that reads `KafkaSecurity`).
fn base(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers).set("client.id", "shardwallet");
    let s = &settings.security;
    let typed = [
        ("security.protocol", s.security_protocol.as_deref()),
        ("sasl.mechanism", s.sasl_mechanism.as_deref()),
        ("sasl.username", s.sasl_username.as_deref()),
        ("sasl.password", s.sasl_password.as_ref().map(|p| p.expose_secret())),
        ("ssl.ca.location", s.ssl_ca_location.as_deref()),
    ];
    for (name, value) in typed {
        if let Some(value) = value {
            config.set(name, value);
        }
    }
    for (name, value) in &s.properties {
        config.set(name, value);
    }
    config
}

/// Refuses a security setup librdkafka would misread or that cannot authenticate,
/// with the name of the setting (checked when the producer is built, i.e. at start).
pub fn check_security(settings: &KafkaSettings) -> anyhow::Result<()> {
    let s = &settings.security;
    let protocol = s.security_protocol.as_deref().unwrap_or("plaintext").to_ascii_lowercase();
    anyhow::ensure!(
        ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()),
        "kafka.security_protocol '{protocol}': expected plaintext, ssl, sasl_plaintext or sasl_ssl"
    );
    if protocol.starts_with("sasl") {
        let mechanism = s.sasl_mechanism.as_deref().unwrap_or("");
        anyhow::ensure!(
            ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism),
            "kafka.sasl_mechanism '{mechanism}': expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        );
        anyhow::ensure!(
            s.sasl_username.as_deref().is_some_and(|u| !u.is_empty())
                && s.sasl_password.as_ref().is_some_and(|p| !p.expose_secret().is_empty()),
            "kafka.security_protocol '{protocol}' needs kafka.sasl_username and kafka.sasl_password"
        );
        if mechanism == "PLAIN" && protocol == "sasl_plaintext" {
            tracing::warn!("kafka: SASL PLAIN over plaintext sends the password in clear; prefer sasl_ssl or SCRAM");
        }
    }
    Ok(())
}

/// acks=all, tuned for latency: a stage message waits at most 1 ms for company in a
/// batch, and Nagle is off.
///
/// Not idempotent on purpose: every stage handler is idempotent and correct in any
/// order (duplicates, empty rollback, suspension), so the broker-side sequence check
/// buys nothing here, while it costs the local broker (nisshi rewrites its producer
/// state on every batch) and turns a broker restart on memory storage into a fatal
/// producer error (the broker forgets the producer id).
pub fn producer(settings: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    check_security(settings)?;
    Ok(base(settings)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "10000")
        .set("socket.keepalive.enable", "true")
        .set("socket.nagle.disable", "true")
        .create()?)
}

/// Consumer settings: offsets are stored by the application after the local
/// transaction commits, and committed every 100 ms (and synchronously on revoke).
///
/// Failover: a member killed without leaving holds its partitions until its session
/// times out (`kafka.session_timeout_ms`, 3 s by default, heartbeats 6 times per
/// session). `max.poll.interval.ms` bounds how long a stuck member can hold a rebalance
/// open. Assignment is eager (librdkafka's default). cooperative-sticky was tried and
/// reverted while chasing a process abort on close (`rd_kafka_cgrp_terminated: assert:
/// !rd_kafka_assignment_in_progress`); the abort came back with eager assignment, and its
/// trigger was an unsubscribe right before the close (see `close_in_background`), so
/// cooperative-sticky is untested since, not known bad.
pub fn consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", "1")
        .set("socket.nagle.disable", "true")
        .set("max.poll.interval.ms", "30000")
        // Notice within seconds a stage topic that a restarted broker re-created.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("session.timeout.ms", settings.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (settings.session_timeout_ms / 6).max(100).to_string());
    config
}

/// A group consumer closed on a thread of its own whenever it is dropped: at the end of
/// its worker's run, and also with a runtime that stops without waiting for the worker
/// (the tests' apps end so). A close that meets a rebalance in progress can wait
/// forever in librdkafka (`rd_kafka_assign` from the rebalance callback, librdkafka
/// #4884): it must not hold the thread a runtime is dropped on.
pub struct ClosedApart<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> ClosedApart<T> {
    pub fn new(consumer: T) -> Self {
        Self(Some(consumer))
    }
}

impl<T: Send + 'static> std::ops::Deref for ClosedApart<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(consumer) => consumer,
            // Only `Drop` takes it out.
            None => unreachable!("a consumer taken out before its drop"),
        }
    }
}

impl<T: Send + 'static> Drop for ClosedApart<T> {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            close_in_background(consumer);
        }
    }
}

/// Closes a group consumer on a thread of its own. Dropping a consumer leaves the group
/// and waits, polling, until librdkafka says the close is done; if the broker never
/// completes it (seen with nisshi during rebalances), that wait would block the async
/// worker thread it runs on, and with it the whole runtime's shutdown.
pub fn close_in_background<T: Send + 'static>(consumer: T) {
    let spawned = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(consumer));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot close the consumer on its own thread");
    }
}

pub fn admin(settings: &KafkaSettings) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(base(settings).create()?)
}

/// Creates the deployment's topics if they do not exist yet.
#[tracing::instrument(skip(settings))]
pub async fn ensure_topics(settings: &KafkaSettings, topics: &Topics) -> anyhow::Result<()> {
    let admin = admin(settings)?;
    let new = [
        NewTopic::new(&topics.stages, settings.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.dead_letters, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.payments, settings.partitions, TopicReplication::Fixed(1)),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Deletes topics (tests clean up after themselves with this).
pub async fn delete_topics(settings: &KafkaSettings, names: &[&str]) -> anyhow::Result<()> {
    let admin = admin(settings)?;
    admin.delete_topics(names, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use figment::{
        providers::{Format, Toml},
        Figment,
    };

    use super::*;

    fn settings(security: &str) -> KafkaSettings {
        let toml = format!(
            "brokers = \"127.0.0.1:1\"\ntopic_prefix = \"p.\"\ngroup_id = \"g\"\nmessage_key_id = \"k1\"\n{security}\n\
             [message_keys]\nk1 = \"unit-test-key-unit-test-key-unit\"\n"
        );
        Figment::new().merge(Toml::string(&toml)).extract().expect("kafka settings")
    }

    #[test]
    fn scram_over_tls_and_plain_over_sasl_plaintext_make_clients() {
        // Creating a client connects nothing yet, but librdkafka refuses properties it was
        // built without (SCRAM and TLS need OpenSSL: the `ssl` feature).
        let scram = settings(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"u\"\n\
             sasl_password = \"p\"\n[properties]\n\"ssl.endpoint.identification.algorithm\" = \"https\"",
        );
        drop(producer(&scram).expect("a SCRAM-SHA-512 over TLS producer"));
        let plain = settings(
            "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password = \"p\"",
        );
        drop(producer(&plain).expect("a SASL/PLAIN producer"));
        drop(admin(&plain).expect("a SASL/PLAIN admin client"));
        let consumer: rdkafka::consumer::BaseConsumer =
            consumer_config(&plain, "g").create().expect("a SASL/PLAIN consumer");
        drop(consumer);
    }

    #[test]
    fn incomplete_or_unknown_security_settings_are_refused_by_name() {
        let no_password =
            settings("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"");
        let error = check_security(&no_password).expect_err("refused").to_string();
        assert!(error.contains("kafka.sasl_password"), "{error}");
        let gssapi = settings("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"");
        assert!(check_security(&gssapi).expect_err("refused").to_string().contains("kafka.sasl_mechanism"));
        let typo = settings("security_protocol = \"tls\"");
        assert!(check_security(&typo).expect_err("refused").to_string().contains("kafka.security_protocol"));
        assert!(check_security(&settings("")).is_ok(), "plaintext needs nothing");
    }

    #[test]
    fn the_sasl_password_and_property_values_never_show_in_debug() {
        let s = settings(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n\
             sasl_password = \"hunter2-password\"\n[properties]\n\"ssl.key.password\" = \"hunter3-key\"",
        );
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("hunter3"), "{printed}");
        assert!(!printed.contains("unit-test-key"), "message keys are secrets too: {printed}");
        assert!(printed.contains("ssl.key.password"), "{printed}");
    }
}
