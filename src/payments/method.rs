//! Sealing payment methods: the full number is stored only encrypted (AES-256-GCM)
//! until the gateway has it, and fingerprinted with a keyed digest for idempotency.
use aes_gcm::{
    aead::{Aead, AeadCore, KeyInit, OsRng},
    Aes256Gcm, Key, Nonce,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::domain::payment_method::{MaskedMethod, MethodType, PaymentMethod};

/// Seals and opens payment methods, and fingerprints them for idempotency keys.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    key: [u8; 32],
}

impl Sealer {
    /// From 64 hex digits.
    pub fn from_hex(hex_key: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| anyhow::anyhow!("payments.encryption_key is not hex"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("payments.encryption_key must be 32 bytes (64 hex digits)"))?;
        Ok(Self { cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)), key })
    }

    /// nonce (12 bytes) || ciphertext+tag.
    pub fn seal(&self, method: &PaymentMethod) -> anyhow::Result<Vec<u8>> {
        let plain = serde_json::to_vec(method)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self.cipher.encrypt(&nonce, plain.as_slice()).map_err(|_| anyhow::anyhow!("seal failed"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<PaymentMethod> {
        if sealed.len() < 12 {
            anyhow::bail!("sealed payment method too short");
        }
        let (nonce, body) = sealed.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| anyhow::anyhow!("sealed payment method does not open with this key"))?;
        Ok(serde_json::from_slice(&plain)?)
    }

    /// A keyed digest of the full number: lets the idempotency fingerprint tell two
    /// cards apart without storing a plain hash of a card number.
    pub fn fingerprint(&self, method: &PaymentMethod) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else { return String::new() };
        mac.update(method.secret().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_methods_open_only_with_the_key() {
        let sealer = Sealer::from_hex(&"11".repeat(32)).unwrap();
        let card = PaymentMethod::Card { number: "4242424242424242".into() };
        let sealed = sealer.seal(&card).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("4242424242424242"));
        assert_eq!(sealer.open(&sealed).unwrap(), card);
        assert!(Sealer::from_hex(&"22".repeat(32)).unwrap().open(&sealed).is_err());
        assert_ne!(sealer.fingerprint(&card), "");
    }
}
