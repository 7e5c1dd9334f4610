//! Authentication of the messages on the stage and payments topics.
//!
//! Whoever can write to a topic could otherwise credit any wallet with one JSON
//! DirectCredit. Every message therefore carries, in two Kafka headers, the id of the
//! key that signed it (`sw-key-id`) and an HMAC-SHA-256 tag (`sw-mac`, lower-case hex)
//! over, in this order:
//!
//! ```text
//! purpose ("stage" | "payment")  0x00  len(kafka key) as u32 big-endian  kafka key  payload
//! ```
//!
//! The payload is the exact bytes stored in the outbox row (and published), so no
//! canonical re-serialisation is needed: what is verified is what is parsed. The purpose
//! keeps a tag of one topic from being valid on the other; the key binds the message to
//! its partition lane. The relay signs when it publishes (a row written by an instance
//! of any version is signed by whoever publishes it); consumers verify before parsing.
//! Every key in `kafka.message_keys` verifies, `kafka.message_key_id` signs.
//!
//! A valid tag says "written by a holder of a message key", i.e. by the service: a
//! replay of a genuine message is not refused here, because every handler is
//! idempotent (see docs/EVENTS.md).
use std::{collections::BTreeMap, fmt, sync::Arc};

use hmac::{Hmac, Mac};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::KafkaSettings;

pub const KEY_ID_HEADER: &str = "sw-key-id";
pub const MAC_HEADER: &str = "sw-mac";

type HmacSha256 = Hmac<Sha256>;

/// Which topic a message belongs to (part of what is signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Stage,
    Payment,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Stage => "stage",
            Purpose::Payment => "payment",
        }
    }
}

/// Why a message was refused; `reason()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unsigned message (no {KEY_ID_HEADER}/{MAC_HEADER} header)")]
    Unsigned,
    #[error("signed with unknown key id '{0}'")]
    UnknownKey(String),
    #[error("bad message authentication tag")]
    BadMac,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::BadMac => "bad_mac",
        }
    }
}

/// A message that may be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// A valid tag.
    Signed,
    /// No tag, accepted because `kafka.accept_unsigned` is on.
    UnsignedAccepted,
}

/// The message keys of this deployment, keyed and ready (cheap to clone).
#[derive(Clone)]
pub struct MessageAuth(Arc<Keys>);

struct Keys {
    signing_id: String,
    keys: BTreeMap<String, HmacSha256>,
    accept_unsigned: bool,
}

impl fmt::Debug for MessageAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageAuth")
            .field("signing_id", &self.0.signing_id)
            .field("key_ids", &self.0.keys.keys().collect::<Vec<_>>())
            .field("accept_unsigned", &self.0.accept_unsigned)
            .finish()
    }
}

impl MessageAuth {
    /// Refuses settings where `message_key_id` names no key, or a key is empty.
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let m = &settings.messages;
        let mut keys = BTreeMap::new();
        for (id, secret) in &m.message_keys {
            let secret = secret.expose_secret().as_bytes();
            anyhow::ensure!(!secret.is_empty(), "kafka.message_keys.{id} is empty");
            anyhow::ensure!(!id.is_empty() && id.is_ascii(), "kafka.message_keys: key ids are non-empty ASCII");
            let mac =
                HmacSha256::new_from_slice(secret).map_err(|e| anyhow::anyhow!("kafka.message_keys.{id}: {e}"))?;
            keys.insert(id.clone(), mac);
        }
        anyhow::ensure!(
            keys.contains_key(&m.message_key_id),
            "kafka.message_key_id '{}' is not one of kafka.message_keys (every stage and payment message is signed \
             with it; set SHARDWALLET__KAFKA__MESSAGE_KEYS__<ID> and SHARDWALLET__KAFKA__MESSAGE_KEY_ID)",
            m.message_key_id
        );
        Ok(Self(Arc::new(Keys { signing_id: m.message_key_id.clone(), keys, accept_unsigned: m.accept_unsigned })))
    }

    fn tag(mac: &HmacSha256, purpose: Purpose, key: &[u8], payload: &[u8]) -> HmacSha256 {
        let mut mac = mac.clone();
        mac.update(purpose.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(&(key.len() as u32).to_be_bytes());
        mac.update(key);
        mac.update(payload);
        mac
    }

    /// The two headers that authenticate `payload` published with Kafka key `key`.
    pub fn headers(&self, purpose: Purpose, key: &[u8], payload: &[u8]) -> OwnedHeaders {
        let id = &self.0.signing_id;
        // `new` checked that the signing key exists.
        let mac = match self.0.keys.get(id) {
            Some(mac) => hex::encode(Self::tag(mac, purpose, key, payload).finalize().into_bytes()),
            None => String::new(),
        };
        OwnedHeaders::new()
            .insert(Header { key: KEY_ID_HEADER, value: Some(id.as_bytes()) })
            .insert(Header { key: MAC_HEADER, value: Some(mac.as_bytes()) })
    }

    /// Checks a received message's tag (constant-time comparison).
    pub fn verify<H: Headers>(
        &self,
        purpose: Purpose,
        headers: Option<&H>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Verified, Rejection> {
        let (key_id, mac) = (header(headers, KEY_ID_HEADER), header(headers, MAC_HEADER));
        let (key_id, mac) = match (key_id, mac) {
            (Some(key_id), Some(mac)) => (key_id, mac),
            (None, None) if self.0.accept_unsigned => return Ok(Verified::UnsignedAccepted),
            _ => return Err(Rejection::Unsigned),
        };
        let key_id = String::from_utf8_lossy(key_id);
        let Some(secret) = self.0.keys.get(key_id.as_ref()) else {
            return Err(Rejection::UnknownKey(key_id.chars().take(64).collect()));
        };
        let mac = hex::decode(mac).map_err(|_| Rejection::BadMac)?;
        Self::tag(secret, purpose, key, payload).verify_slice(&mac).map_err(|_| Rejection::BadMac)?;
        Ok(Verified::Signed)
    }
}

impl MessageAuth {
    /// Checks a consumed message's tag and counts the verdict
    /// (`shardwallet_messages_rejected_total`, `..._unsigned_accepted_total`): what every
    /// consumer runs before it reads a payload.
    pub fn admit<M: rdkafka::message::Message>(&self, purpose: Purpose, m: &M) -> Result<(), Rejection> {
        let label = match purpose {
            Purpose::Stage => "stages",
            Purpose::Payment => "payments",
        };
        let payload = m.payload().unwrap_or_default();
        match self.verify(purpose, m.headers(), m.key().unwrap_or_default(), payload) {
            Ok(Verified::Signed) => Ok(()),
            Ok(Verified::UnsignedAccepted) => {
                crate::telemetry::metrics::message_unsigned_accepted(label);
                Ok(())
            }
            Err(rejection) => {
                crate::telemetry::metrics::message_rejected(label, rejection.reason());
                Err(rejection)
            }
        }
    }
}

/// The value of the last header named `name` (a forger cannot hide a bad tag behind a
/// second header: the last one is read, and it alone must verify).
fn header<'a, H: Headers>(headers: Option<&'a H>, name: &str) -> Option<&'a [u8]> {
    headers?.iter().filter(|h| h.key == name).last().and_then(|h| h.value)
}

/// The authentication headers of a message, to carry over when it is dead-lettered and
/// replayed: a replayed message is exactly as valid as it was.
pub fn tag_headers<H: Headers>(headers: Option<&H>) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    for name in [KEY_ID_HEADER, MAC_HEADER] {
        if let Some(value) = header(headers, name) {
            out = out.insert(Header { key: name, value: Some(value) });
        }
    }
    out
}

#[cfg(test)]
mod tests;
