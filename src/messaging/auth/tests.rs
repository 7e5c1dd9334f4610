use figment::{
    providers::{Format, Toml},
    Figment,
};
use rdkafka::message::{Header, OwnedHeaders};

use super::*;

const PAYLOAD: &[u8] = br#"{"v":1,"type":"DirectCredit","amount":"25"}"#;
const KEY: &[u8] = b"0e6d1c9e-0000-4000-8000-000000000001";

/// Kafka settings as `shardwallet.toml` gives them, plus `extra` lines of `[kafka]`.
fn settings(extra: &str) -> KafkaSettings {
    let toml = format!(
        "brokers = \"b:9092\"\ntopic_prefix = \"p.\"\ngroup_id = \"g\"\n{extra}\n\
         [message_keys]\nk1 = \"first-key-first-key-first-key-00\"\nk2 = \"second-key-second-key-second-k\"\n"
    );
    Figment::new().merge(Toml::string(&toml)).extract().expect("kafka settings")
}

fn auth(extra: &str) -> MessageAuth {
    MessageAuth::new(&settings(extra)).expect("message auth")
}

#[test]
fn a_message_signed_with_the_signing_key_verifies() {
    let a = auth("message_key_id = \"k1\"");
    let headers = a.headers(Purpose::Stage, KEY, PAYLOAD);
    assert_eq!(a.verify(Purpose::Stage, Some(&headers), KEY, PAYLOAD), Ok(Verified::Signed));
}

#[test]
fn every_listed_key_verifies_so_keys_can_rotate() {
    let old = auth("message_key_id = \"k1\"");
    let new = auth("message_key_id = \"k2\"");
    let signed_by_old = old.headers(Purpose::Stage, KEY, PAYLOAD);
    assert_eq!(new.verify(Purpose::Stage, Some(&signed_by_old), KEY, PAYLOAD), Ok(Verified::Signed));
}

#[test]
fn a_tag_made_with_a_wrong_key_is_refused() {
    let mut wrong = settings("message_key_id = \"k1\"");
    wrong.messages.message_keys.insert("k1".into(), "not-the-real-key-not-the-real-k".into());
    let forged = MessageAuth::new(&wrong).expect("auth").headers(Purpose::Stage, KEY, PAYLOAD);
    let a = auth("message_key_id = \"k1\"");
    assert_eq!(a.verify(Purpose::Stage, Some(&forged), KEY, PAYLOAD), Err(Rejection::BadMac));
}

#[test]
fn an_unknown_key_id_is_refused() {
    let mut other = settings("message_key_id = \"k9\"");
    other.messages.message_keys.insert("k9".into(), "some-key-some-key-some-key-some".into());
    let forged = MessageAuth::new(&other).expect("auth").headers(Purpose::Stage, KEY, PAYLOAD);
    let verdict = auth("message_key_id = \"k1\"").verify(Purpose::Stage, Some(&forged), KEY, PAYLOAD);
    assert_eq!(verdict, Err(Rejection::UnknownKey("k9".into())));
}

#[test]
fn a_tampered_payload_key_or_topic_is_refused() {
    let a = auth("message_key_id = \"k1\"");
    let headers = a.headers(Purpose::Stage, KEY, PAYLOAD);
    let tampered = br#"{"v":1,"type":"DirectCredit","amount":"1000000"}"#;
    assert_eq!(a.verify(Purpose::Stage, Some(&headers), KEY, tampered), Err(Rejection::BadMac));
    assert_eq!(a.verify(Purpose::Stage, Some(&headers), b"another-key", PAYLOAD), Err(Rejection::BadMac));
    assert_eq!(a.verify(Purpose::Payment, Some(&headers), KEY, PAYLOAD), Err(Rejection::BadMac));
}

#[test]
fn a_missing_or_malformed_header_is_refused() {
    let a = auth("message_key_id = \"k1\"");
    assert_eq!(a.verify::<OwnedHeaders>(Purpose::Stage, None, KEY, PAYLOAD), Err(Rejection::Unsigned));
    let only_id = OwnedHeaders::new().insert(Header { key: KEY_ID_HEADER, value: Some("k1") });
    assert_eq!(a.verify(Purpose::Stage, Some(&only_id), KEY, PAYLOAD), Err(Rejection::Unsigned));
    let not_hex = only_id.clone().insert(Header { key: MAC_HEADER, value: Some("zz") });
    assert_eq!(a.verify(Purpose::Stage, Some(&not_hex), KEY, PAYLOAD), Err(Rejection::BadMac));
    let short = only_id.insert(Header { key: MAC_HEADER, value: Some("00") });
    assert_eq!(a.verify(Purpose::Stage, Some(&short), KEY, PAYLOAD), Err(Rejection::BadMac));
}

#[test]
fn accept_unsigned_lets_untagged_messages_through_but_never_a_wrong_tag() {
    let a = auth("message_key_id = \"k1\"\naccept_unsigned = true");
    assert_eq!(a.verify::<OwnedHeaders>(Purpose::Stage, None, KEY, PAYLOAD), Ok(Verified::UnsignedAccepted));
    let bad = OwnedHeaders::new()
        .insert(Header { key: KEY_ID_HEADER, value: Some("k1") })
        .insert(Header { key: MAC_HEADER, value: Some(&"00".repeat(32)) });
    assert_eq!(a.verify(Purpose::Stage, Some(&bad), KEY, PAYLOAD), Err(Rejection::BadMac));
}

#[test]
fn the_tag_is_hmac_sha256_of_the_documented_input() {
    // Golden vector: docs/EVENTS.md describes this input; another producer must match it.
    let a = auth("message_key_id = \"k1\"");
    let headers = a.headers(Purpose::Payment, b"k", b"{}");
    let mut mac = HmacSha256::new_from_slice(b"first-key-first-key-first-key-00").expect("key");
    mac.update(b"payment\x00\x00\x00\x00\x01k{}");
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(header(Some(&headers), MAC_HEADER), Some(expected.as_bytes()));
    assert_eq!(header(Some(&headers), KEY_ID_HEADER), Some(&b"k1"[..]));
}

#[test]
fn settings_without_the_signing_key_are_refused() {
    let error = MessageAuth::new(&settings("message_key_id = \"k3\"")).expect_err("refused").to_string();
    assert!(error.contains("kafka.message_key_id 'k3'"), "{error}");
    let mut empty = settings("message_key_id = \"k1\"");
    empty.messages.message_keys.insert("k1".into(), "".into());
    assert!(MessageAuth::new(&empty).is_err());
}

#[test]
fn a_replay_keeps_exactly_the_tag_it_had() {
    let a = auth("message_key_id = \"k1\"");
    let dead_letter = a
        .headers(Purpose::Stage, KEY, PAYLOAD)
        .insert(Header { key: "error", value: Some("why") })
        .insert(Header { key: "source", value: Some("t/0/1") });
    let replayed = tag_headers(Some(&dead_letter));
    assert_eq!(replayed.count(), 2);
    assert_eq!(a.verify(Purpose::Stage, Some(&replayed), KEY, PAYLOAD), Ok(Verified::Signed));
    assert_eq!(tag_headers::<OwnedHeaders>(None).count(), 0, "an unsigned dead letter stays unsigned");
}
