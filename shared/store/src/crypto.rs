//! Secrets at rest: XChaCha20-Poly1305 with the key from `USERSYNC_SECRET_KEY`.

use base64::{engine::general_purpose::STANDARD, Engine};
use chacha20poly1305::{
    aead::{Aead, AeadCore, KeyInit, OsRng},
    XChaCha20Poly1305, XNonce,
};

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("USERSYNC_SECRET_KEY is not set: it is needed to store and read tenant secrets; generate one with `openssl rand -base64 32`")]
    Missing,
    #[error(
        "USERSYNC_SECRET_KEY must be 32 bytes in base64 (for example from `openssl rand -base64 32`): {0}"
    )]
    Malformed(String),
    #[error("a stored secret cannot be decrypted with this USERSYNC_SECRET_KEY: was the key changed? Re-apply the tenant file to store the secret again")]
    Undecryptable,
}

/// The key that encrypts tenant secrets. Never logged.
#[derive(Clone)]
pub struct SecretKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

impl SecretKey {
    pub fn from_env() -> Result<Self, SecretKeyError> {
        match std::env::var("USERSYNC_SECRET_KEY") {
            Ok(value) if !value.trim().is_empty() => Self::from_base64(value.trim()),
            _ => Err(SecretKeyError::Missing),
        }
    }

    pub fn from_base64(text: &str) -> Result<Self, SecretKeyError> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|err| SecretKeyError::Malformed(err.to_string()))?;
        if bytes.len() != 32 {
            return Err(SecretKeyError::Malformed(format!(
                "it decodes to {} bytes",
                bytes.len()
            )));
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|err| SecretKeyError::Malformed(err.to_string()))?;
        Ok(Self(cipher))
    }

    /// base64(nonce ‖ ciphertext), a fresh random nonce each time.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .0
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        STANDARD.encode(sealed)
    }

    pub fn decrypt(&self, sealed: &str) -> Result<String, SecretKeyError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| SecretKeyError::Undecryptable)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretKeyError::Undecryptable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = self
            .0
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretKeyError::Undecryptable)?;
        String::from_utf8(plaintext).map_err(|_| SecretKeyError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn round_trips_and_never_repeats_a_ciphertext() {
        let key = SecretKey::from_base64(KEY).unwrap();
        let a = key.encrypt("hunter2");
        let b = key.encrypt("hunter2");
        assert_ne!(a, b);
        assert!(!a.contains("hunter2"));
        assert_eq!(key.decrypt(&a).unwrap(), "hunter2");
    }

    #[test]
    fn another_key_cannot_decrypt() {
        let key = SecretKey::from_base64(KEY).unwrap();
        let other = SecretKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let sealed = key.encrypt("secret");
        assert!(matches!(
            other.decrypt(&sealed),
            Err(SecretKeyError::Undecryptable)
        ));
    }

    #[test]
    fn a_short_key_is_refused_with_its_length() {
        let err = SecretKey::from_base64("c2hvcnQ=").unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }
}
