use std::fmt;

use rand::RngCore;
use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidId(pub &'static str);

/// A user id: 1-64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let ok = (1..=64).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(text.to_string()))
        } else {
            Err(InvalidId("user_id must be 1-64 characters of [A-Za-z0-9_.-]"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO-4217-style currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(text.to_string()))
        } else {
            Err(InvalidId("currency must be three upper-case letters, e.g. EUR"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's Idempotency-Key header: 1-255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        if (1..=255).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(text.to_string()))
        } else {
            Err(InvalidId("Idempotency-Key must be 1-255 visible ASCII characters"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A UUID (version 8) that carries the bucket of the user it was minted for, so a
/// transfer or entry id reaches its shard without asking every shard.
///
/// Layout: bytes 0-5 Unix time in ms (ids sort by creation, which keeps B-tree inserts
/// local), byte 6 version nibble, bytes 10-11 the bucket (big-endian), the rest random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutableId(Uuid);

impl RoutableId {
    pub fn new(bucket: u16) -> Self {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[10..12].copy_from_slice(&bucket.to_be_bytes());
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// Parses an id from a URL. Anything that is not one of our ids is `None`, which the
    /// API reports as not found: such an id cannot exist.
    pub fn parse(text: &str) -> Option<Self> {
        let uuid = Uuid::try_parse(text).ok()?;
        Self::from_uuid(uuid)
    }

    pub fn from_uuid(uuid: Uuid) -> Option<Self> {
        (uuid.get_version_num() == 8 && uuid.get_variant() == uuid::Variant::RFC4122).then_some(Self(uuid))
    }

    pub fn bucket(&self) -> u16 {
        let b = self.0.as_bytes();
        u16::from_be_bytes([b[10], b[11]])
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for RoutableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl serde::Serialize for RoutableId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routable_ids_carry_their_bucket_and_sort_by_time() {
        let a = RoutableId::new(16383);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RoutableId::new(0);
        assert_eq!(a.bucket(), 16383);
        assert_eq!(b.bucket(), 0);
        assert!(a < b);
        assert_eq!(RoutableId::parse(&a.to_string()), Some(a));
        assert_eq!(RoutableId::parse(&Uuid::new_v4().to_string()), None);
        assert_eq!(RoutableId::parse("not-a-uuid"), None);
    }

    #[test]
    fn user_ids_and_currencies_parse_strictly() {
        assert!(UserId::parse("alice.b-c_1").is_ok());
        for bad in ["", "a b", "al/ice", "é", &"a".repeat(65)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Currency::parse("EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "E1R"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse("k-1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }
}
