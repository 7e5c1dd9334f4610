//! The start-up check of every configured secret. Outside `[server] profile = "dev"` a
//! secret that is empty, shorter than `MIN_LEN` bytes, one of the values this
//! repository ships (`KNOWN`), or shared with another setting stops `serve`: anyone who
//! has read the repository could otherwise mint an admin token or sign a gateway
//! callback. In the dev profile the same findings are only logged.
//!
//! Adding a secret: push its `(setting name, group, value)` in `configured`; settings
//! of one group (a key and the former keys it rotates from) may share a value.
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Profile, Settings, DEV_PAYMENT_KEY};

/// 256 bits of an HMAC-SHA-256 key, when the secret is random bytes.
pub const MIN_LEN: usize = 32;

/// Every secret value shipped in this repository: shardwallet.toml, the code defaults,
/// docker-compose*.yaml, scripts, README examples, the test harness.
pub const KNOWN: &[&str] = &[
    "local-dev-secret-change-me",
    "mock-gateway-secret",
    DEV_PAYMENT_KEY,
    "shardwallet-dev",
    "test-secret",
    "test-gateway-secret",
    "another-secret",
    "local-dev-message-key-change-me-0000",
    "test-message-key-of-thirty-two-bytes!",
    "shardwallet-kafka-dev",
    "kafka-admin-dev",
];

/// One configured secret.
pub struct Configured<'a> {
    /// Its setting, as the error names it (`gateways.gateway_a.signing_secret`).
    pub setting: String,
    /// Settings of one group may share a value (a key and its predecessor).
    pub group: String,
    pub value: &'a SecretString,
}

/// Every secret in `settings`.
pub fn configured(settings: &Settings) -> Vec<Configured<'_>> {
    let entry = |setting: String, group: &str, value| Configured { setting, group: group.to_string(), value };
    let mut all = vec![entry("auth.jwt_secret".into(), "auth", &settings.auth.jwt_secret)];
    for (i, previous) in settings.auth.previous_jwt_secrets.iter().enumerate() {
        all.push(entry(format!("auth.previous_jwt_secrets[{i}]"), "auth", previous));
    }
    all.push(entry("payments.encryption_key".into(), "payments", &settings.payments.encryption_key));
    for (name, gateway) in &settings.gateways {
        let group = format!("gateways.{name}");
        all.push(entry(format!("{group}.signing_secret"), &group, &gateway.signing_secret));
        if let Some(previous) = &gateway.previous_signing_secret {
            all.push(entry(format!("{group}.previous_signing_secret"), &group, previous));
        }
    }
    // Every message key verifies (rotation keeps several), so each must be strong; they
    // are one group since an old and a new key are listed together.
    for (id, key) in &settings.kafka.messages.message_keys {
        all.push(entry(format!("kafka.message_keys.{id}"), "kafka.message_keys", key));
    }
    if let Some(password) = &settings.kafka.security.sasl_password {
        all.push(entry("kafka.sasl_password".into(), "kafka.sasl_password", password));
    }
    all
}

/// What is wrong with `secrets`, one finding per line, each naming its setting(s).
pub fn findings(secrets: &[Configured<'_>]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        let value = s.value.expose_secret();
        if value.trim().is_empty() {
            found.push(format!("{} is empty", s.setting));
        } else if is_known(value) {
            found.push(format!("{} is a value shipped in the repository (or a built-in default)", s.setting));
        } else if value.len() < MIN_LEN {
            found.push(format!("{} is shorter than {MIN_LEN} bytes", s.setting));
        }
        for other in &secrets[i + 1..] {
            if other.group != s.group && !value.is_empty() && other.value.expose_secret() == value {
                found.push(format!("{} and {} share one value", s.setting, other.setting));
            }
        }
    }
    found
}

fn is_known(value: &str) -> bool {
    KNOWN.iter().any(|known| known.eq_ignore_ascii_case(value.trim()))
}

/// Refuses known or weak secrets unless the profile is `dev`, where it warns instead.
pub fn enforce(settings: &Settings) -> anyhow::Result<()> {
    let found = findings(&configured(settings));
    match settings.server.profile {
        Profile::Dev => {
            tracing::warn!(
                findings = found.len(),
                "development deployment (server.profile = \"dev\"): known or weak secrets are accepted; \
                 never use this profile with real money"
            );
            Ok(())
        }
        Profile::Production if found.is_empty() => Ok(()),
        Profile::Production => anyhow::bail!(
            "refusing to start with known or weak secrets (server.profile is \"production\"):\n  - {}\n\
             Set secrets of your own, at least {MIN_LEN} bytes and distinct (e.g. `openssl rand -hex 32`), \
             in the config file or as SHARDWALLET__<SECTION>__<KEY> (SHARDWALLET__AUTH__JWT_SECRET, \
             SHARDWALLET__PAYMENTS__ENCRYPTION_KEY, SHARDWALLET__GATEWAYS__<NAME>__SIGNING_SECRET), \
             or set [server] profile = \"dev\" (SHARDWALLET__SERVER__PROFILE=dev) on a development deployment",
            found.join("\n  - ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        s.into()
    }

    fn check(entries: &[(&str, &str, &SecretString)]) -> Vec<String> {
        let secrets: Vec<_> = entries
            .iter()
            .map(|(setting, group, value)| Configured { setting: setting.to_string(), group: group.to_string(), value })
            .collect();
        findings(&secrets)
    }

    #[test]
    fn strong_distinct_secrets_pass() {
        let (a, b) = (secret(&"a".repeat(32)), secret(&"b".repeat(40)));
        assert!(check(&[("x", "x", &a), ("y", "y", &b)]).is_empty());
    }

    #[test]
    fn each_weakness_is_named_with_its_setting() {
        let (empty, short, known) = (secret(" "), secret("0123456789"), secret("Mock-Gateway-Secret"));
        let found = check(&[("e", "e", &empty), ("s", "s", &short), ("k", "k", &known)]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("e is empty"));
        assert!(found[1].starts_with("s is shorter than 32"));
        assert!(found[2].starts_with("k is a value shipped"));
    }

    #[test]
    fn sharing_is_refused_across_groups_only() {
        let strong = secret(&"s".repeat(32));
        let found = check(&[("a.key", "a", &strong), ("a.previous", "a", &strong), ("b.key", "b", &strong)]);
        assert_eq!(found, ["a.key and b.key share one value", "a.previous and b.key share one value"]);
    }

    #[test]
    fn the_dev_payment_key_is_known() {
        assert!(is_known(DEV_PAYMENT_KEY) && is_known(&DEV_PAYMENT_KEY.to_uppercase()));
    }
}
