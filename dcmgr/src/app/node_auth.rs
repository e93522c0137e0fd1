//! Node credentials: what an agent shows to fetch image data from dcmgr. A credential is
//! `<node id>.<HMAC-SHA256(key, node id)>`, handed to the node with each spec that needs
//! a blob (over the bus, which only dcmgr and the agents use); dcmgr checks it without
//! storing anything, and a credential names the one node it was made for.

use crate::ctx::SharedCtx;
use crate::error::{ApiError, ApiResult};
use sha2::{Digest, Sha256};

fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

pub fn token(key: &[u8; 32], node: &str) -> String {
    format!("{node}.{}", hex::encode(hmac(key, node.as_bytes())))
}

/// The node a credential was made for, if it is genuine and the node is one dcmgr knows.
pub fn verify(ctx: &SharedCtx, header: Option<&str>) -> ApiResult<String> {
    let denied =
        || ApiError::Unauthorized("a node credential is needed: 'Authorization: Bearer <node credential>'".into());
    let t = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(denied)?;
    let (node, mac) = t.rsplit_once('.').ok_or_else(denied)?;
    let want = hex::encode(hmac(&ctx.node_key, node.as_bytes()));
    // Constant time: the comparison does not tell how much of a guess was right.
    let same = want.len() == mac.len() && want.bytes().zip(mac.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
    let known = ctx.agents.read().unwrap().keys().any(|(_, n)| n == node);
    if !same || !known {
        return Err(denied());
    }
    Ok(node.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_is_hmac_sha256_and_tokens_name_their_node() {
        // Computed independently: python3 -c "hmac.new(bytes([7]*32), b'hn-abc', 'sha256')".
        let key = [7u8; 32];
        assert_eq!(
            hex::encode(hmac(&key, b"hn-abc")),
            "861ef7e548279d5566fe972028e3319b2dda59a6becb30689a0e3e047e6be2bb"
        );
        assert!(token(&key, "hn-abc").starts_with("hn-abc."));
        assert_ne!(token(&key, "hn-abc"), token(&key, "hn-abd"));
    }
}
