//! The vdc bundle: a VDC's logical model (the manifest) and the content-addressed chunks
//! its images carry, signed with the exporting site's ed25519 key, written and read as
//! one stream. The format is described in `docs/bundle-format.md`.
//!
//! A bundle is hostile input: [`Reader`] checks the signature (and that the key is
//! trusted), the version, the manifest's limits, names and references before it yields
//! anything, then each chunk's hash and size as it streams, and at the end that every
//! chunk the manifest lists came exactly once. Memory stays bounded by the manifest cap
//! plus one chunk.

mod error;
mod model;
mod stream;

pub use error::{BundleError, CHUNK_LEFT_OUT};
pub use model::*;
pub use stream::*;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A new random site key.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// A public key as it is written in manifests, configuration and the API: 64 hex digits.
pub fn key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// Parses a public key written by [`key_hex`].
pub fn parse_key(s: &str) -> Result<VerifyingKey, BundleError> {
    let bytes: [u8; 32] = hex::decode(s.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
        BundleError::BadKey(format!("{:?} is not 64 hex digits", s.chars().take(80).collect::<String>()))
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| BundleError::BadKey(e.to_string()))
}
