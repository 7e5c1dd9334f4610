//! Callback signatures, as both gateways (and their mocks) compute them:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`, accepted within
//! `TOLERANCE_SECS` of now. A header may carry several `v1=` candidates (a gateway
//! rotating its key signs with both), at most `MAX_CANDIDATES`: the MAC of the body is
//! computed once per configured key, never once per candidate, and every comparison is
//! constant-time (`CtOutput`'s equality).
use hmac::{
    digest::{generic_array::GenericArray, CtOutput},
    Hmac, Mac,
};
use sha2::Sha256;

pub const TOLERANCE_SECS: u64 = 300;

/// More candidates than this and the header is refused unread: each one costs a
/// comparison, and no gateway needs more than two.
pub const MAX_CANDIDATES: usize = 5;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: i64, body: &[u8]) -> CtOutput<HmacSha256> {
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
}

/// The header value for `body` signed at `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).into_bytes()))
}

/// The parsed header: its timestamp and candidate signatures of the right length.
fn parse(header: &str) -> Option<(i64, Vec<CtOutput<HmacSha256>>)> {
    let mut t = None;
    let mut candidates = Vec::new();
    let mut seen = 0;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().ok()?),
            Some(("v1", v)) => {
                seen += 1;
                if seen > MAX_CANDIDATES {
                    return None;
                }
                // A candidate of another length can never match: skipped, not compared.
                if let Ok(bytes) = hex::decode(v) {
                    if bytes.len() == 32 {
                        candidates.push(CtOutput::new(GenericArray::clone_from_slice(&bytes)));
                    }
                }
            }
            _ => {}
        }
    }
    Some((t?, candidates))
}

/// Whether `header` is a valid signature of `body` by one of `secrets`, made within the
/// tolerance of `now`.
pub fn verify<S: AsRef<[u8]>>(secrets: &[S], header: Option<&str>, body: &[u8], now: i64) -> bool {
    verify_with(secrets, header, body, now, mac)
}

/// `verify`, with the MAC function given (the tests count its calls).
fn verify_with<S: AsRef<[u8]>>(
    secrets: &[S],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    mut mac: impl FnMut(&[u8], i64, &[u8]) -> CtOutput<HmacSha256>,
) -> bool {
    let Some((t, candidates)) = header.and_then(parse) else { return false };
    // abs_diff: `now - t` overflows for a timestamp near i64::MIN or MAX.
    if now.abs_diff(t) > TOLERANCE_SECS || candidates.is_empty() {
        return false;
    }
    secrets.iter().any(|secret| {
        let expected = mac(secret.as_ref(), t, body);
        // `CtOutput`'s `==` is constant-time.
        candidates.contains(&expected)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"event_id":"e1"}"#;

    fn candidates(n: usize, last: &str) -> String {
        let mut header = format!("t={NOW}");
        for _ in 1..n {
            header.push_str(&format!(",v1={}", "00".repeat(32)));
        }
        format!("{header},v1={last}")
    }

    #[test]
    fn accepts_its_own_signature_and_nothing_else() {
        let header = sign(b"secret", NOW, BODY);
        assert!(verify(&[b"secret"], Some(&header), BODY, NOW + 10));
        assert!(!verify(&[b"other"], Some(&header), BODY, NOW), "wrong secret");
        assert!(!verify(&[b"secret"], Some(&header), b"{}", NOW), "tampered body");
        let stale = NOW + TOLERANCE_SECS as i64 + 1;
        assert!(!verify(&[b"secret"], Some(&header), BODY, stale), "stale");
        assert!(!verify(&[b"secret"], None, BODY, NOW), "unsigned");
        assert!(!verify(&[b"secret"], Some("t=1,v1=zz"), BODY, 1), "garbage");
        assert!(!verify(&[b"secret"], Some(&header.replace("t=", "t=1")), BODY, NOW), "timestamp changed");
    }

    #[test]
    fn either_of_two_keys_verifies_while_a_key_rotates() {
        let keys: [&[u8]; 2] = [b"new-key", b"old-key"];
        assert!(verify(&keys, Some(&sign(b"old-key", NOW, BODY)), BODY, NOW));
        assert!(verify(&keys, Some(&sign(b"new-key", NOW, BODY)), BODY, NOW));
        assert!(!verify(&keys, Some(&sign(b"retired-key", NOW, BODY)), BODY, NOW));
    }

    #[test]
    fn at_most_five_candidates_are_accepted() {
        let good = sign(b"secret", NOW, BODY);
        let good = good.split_once("v1=").expect("v1").1;
        assert!(verify(&[b"secret"], Some(&candidates(MAX_CANDIDATES, good)), BODY, NOW), "five, the last good");
        assert!(
            !verify(&[b"secret"], Some(&candidates(MAX_CANDIDATES + 1, good)), BODY, NOW),
            "six candidates are refused even though one is good"
        );
    }

    #[test]
    fn the_body_is_hashed_once_per_key_not_once_per_candidate() {
        let keys: [&[u8]; 2] = [b"new-key", b"old-key"];
        let header = candidates(MAX_CANDIDATES, &"11".repeat(32));
        let mut calls = 0;
        let counting = |secret: &[u8], t: i64, body: &[u8]| {
            calls += 1;
            mac(secret, t, body)
        };
        assert!(!verify_with(&keys, Some(&header), BODY, NOW, counting));
        assert_eq!(calls, keys.len(), "one MAC per key for {MAX_CANDIDATES} candidates");
        let mut calls = 0;
        let counting = |secret: &[u8], t: i64, body: &[u8]| {
            calls += 1;
            mac(secret, t, body)
        };
        assert!(!verify_with(&keys, Some(&candidates(MAX_CANDIDATES + 1, "")), BODY, NOW, counting));
        assert_eq!(calls, 0, "too many candidates: refused before any MAC");
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        for t in [i64::MIN, i64::MAX, i64::MIN + 1] {
            let header = sign(b"secret", t, BODY);
            assert!(!verify(&[b"secret"], Some(&header), BODY, NOW), "t={t}");
            assert!(!verify(&[b"secret"], Some(&header), BODY, -NOW), "t={t}, negative now");
        }
        // And at the other end of the range, a correct signature still verifies.
        assert!(verify(&[b"secret"], Some(&sign(b"secret", i64::MIN, BODY)), BODY, i64::MIN));
    }

    #[test]
    fn a_malformed_timestamp_is_refused() {
        let header = sign(b"secret", NOW, BODY).replace(&format!("t={NOW}"), "t=not-a-number");
        assert!(!verify(&[b"secret"], Some(&header), BODY, NOW));
    }
}
