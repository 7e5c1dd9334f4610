//! Callback signatures, as both gateways (and their mocks) compute them:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`, accepted within
//! `TOLERANCE_SECS` of now. The comparison is constant-time (`Mac::verify_slice`).
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TOLERANCE_SECS: i64 = 300;

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` signed at `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body`, made within the tolerance of `now`.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8], now: i64) -> bool {
    let Some(header) = header else { return false };
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > TOLERANCE_SECS {
        return false;
    }
    signatures.iter().any(|sig| mac(secret, t, body).verify_slice(sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_its_own_signature_and_nothing_else() {
        let body = br#"{"event_id":"e1"}"#;
        let now = 1_700_000_000;
        let header = sign(b"secret", now, body);
        assert!(verify(b"secret", Some(&header), body, now + 10));
        assert!(!verify(b"other", Some(&header), body, now), "wrong secret");
        assert!(!verify(b"secret", Some(&header), b"{}", now), "tampered body");
        assert!(!verify(b"secret", Some(&header), body, now + TOLERANCE_SECS + 1), "stale");
        assert!(!verify(b"secret", None, body, now), "unsigned");
        assert!(!verify(b"secret", Some("t=1,v1=zz"), body, 1), "garbage");
        assert!(!verify(b"secret", Some(&header.replace("t=", "t=1")), body, now), "timestamp changed");
    }
}
