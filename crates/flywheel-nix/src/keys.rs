//! Ed25519 signing keys in Nix's text format.
//!
//! A secret key is `name:base64(seed ‖ public key)` (64 bytes, libsodium's layout, as written
//! by `nix key generate-secret`); a public key is `name:base64(public key)` (32 bytes). Only the
//! secret side is here: parsing public keys, signatures and verification come from
//! `nix-narinfo`, which the cache also uses to check narinfos.
//!
//! ```
//! use flywheel_nix::keys::SecretKey;
//! let key = SecretKey::generate("cache.example-1").unwrap();
//! let public = key.public();
//! let sig = key.sign(b"1;/nix/store/...");
//! assert!(sig.verify(b"1;/nix/store/...", &[public.0.clone()]).unwrap());
//! assert_eq!(SecretKey::parse(&key.to_nix_string()).unwrap().public().to_nix_string(), public.to_nix_string());
//! ```

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
pub use nix_narinfo::{NixSignature, TrustedPublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not `name:base64`")]
    MissingName,
    #[error("key name is empty or contains `:` or whitespace")]
    BadName,
    #[error("key is not valid base64")]
    BadBase64,
    #[error("secret key must decode to 64 bytes (seed and public key), not {0}")]
    BadLength(usize),
    #[error("secret key is corrupt: its public half does not belong to its seed")]
    Mismatch,
    #[error("public key")]
    Public(#[from] nix_narinfo::KeyError),
    #[error("no randomness available to generate a key: {0}")]
    Random(String),
    #[error("{}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// A secret signing key with its name.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("name", &self.name).finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(KeyError::BadName);
    }
    Ok(())
}

impl SecretKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { name: name.to_string(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parses `name:base64`; surrounding whitespace (a trailing newline) is ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, encoded) = text.trim().split_once(':').ok_or(KeyError::MissingName)?;
        check_name(name)?;
        let bytes = BASE64.decode(encoded).map_err(|_| KeyError::BadBase64)?;
        let bytes: [u8; 64] = bytes.as_slice().try_into().map_err(|_| KeyError::BadLength(bytes.len()))?;
        let seed: [u8; 32] = bytes[..32].try_into().map_err(|_| KeyError::BadLength(64))?;
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes() != &bytes[32..] {
            return Err(KeyError::Mismatch);
        }
        Ok(Self { name: name.to_string(), key })
    }

    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name:base64(seed ‖ public)`, without a newline, as Nix writes it.
    pub fn to_nix_string(&self) -> String {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(self.key.as_bytes());
        bytes[32..].copy_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, BASE64.encode(bytes))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(TrustedPublicKey { name: self.name.clone(), key: self.key.verifying_key() })
    }

    /// Signs `message` (a narinfo fingerprint) and names the signature after the key.
    pub fn sign(&self, message: &[u8]) -> NixSignature {
        let sig = self.key.sign(message);
        NixSignature { key_name: self.name.clone(), encoded: BASE64.encode(sig.to_bytes()) }
    }
}

/// A public key, as put in `trusted-public-keys`.
#[derive(Clone, Debug)]
pub struct PublicKey(pub TrustedPublicKey);

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Ok(Self(TrustedPublicKey::parse(text.trim())?))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.0.name, BASE64.encode(self.0.key.as_bytes()))
    }
}

impl From<PublicKey> for TrustedPublicKey {
    fn from(k: PublicKey) -> Self {
        k.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated by `nix key generate-secret --key-name test1` (Nix 2.8) and converted with
    // `nix key convert-secret-to-public`.
    const NIX_SECRET: &str = include_str!("../testdata/test1.secret");
    const NIX_PUBLIC: &str = "test1:af9t00Ca+z5ekwE7J7QgKYKMGs85G5wcux8FLWYU1QE=";

    #[test]
    fn reads_a_key_nix_generated() {
        let key = SecretKey::parse(NIX_SECRET).unwrap();
        assert_eq!(key.name(), "test1");
        assert_eq!(key.public().to_nix_string(), NIX_PUBLIC);
        assert_eq!(key.to_nix_string(), NIX_SECRET.trim());
    }

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        let a = SecretKey::generate("a").unwrap();
        let b = SecretKey::generate("a").unwrap();
        let sig = a.sign(b"message");
        assert!(sig.verify(b"message", &[a.public().0]).unwrap());
        assert!(!sig.verify(b"message", &[b.public().0]).unwrap());
        assert!(!sig.verify(b"other", &[a.public().0]).unwrap());
    }

    #[test]
    fn corrupt_keys_are_refused() {
        assert!(matches!(SecretKey::parse("nocolon"), Err(KeyError::MissingName)));
        assert!(matches!(SecretKey::parse(":abc"), Err(KeyError::BadName)));
        assert!(matches!(SecretKey::parse("n:!!!"), Err(KeyError::BadBase64)));
        assert!(matches!(SecretKey::parse("n:AAAA"), Err(KeyError::BadLength(3))));
        let mut bytes = BASE64.decode(NIX_SECRET.trim().split_once(':').unwrap().1).unwrap();
        bytes[40] ^= 1;
        assert!(matches!(SecretKey::parse(&format!("n:{}", BASE64.encode(bytes))), Err(KeyError::Mismatch)));
        assert!(PublicKey::parse(NIX_SECRET).is_err());
    }
}
