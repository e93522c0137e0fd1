//! The keys every dcmgr of a site must share: `site-key` (the ed25519 seed that signs
//! bundles) and `node-key` (the HMAC key of hosts' blob credentials). They live in the
//! database, so several controllers agree on them and two starting at once on a new site
//! cannot make two. A key file an earlier version left in the images directory is taken
//! in once, so a site keeps its keys across the upgrade.

use crate::datastore::{self as db, site as store};
use anyhow::Context;
use std::path::Path;

/// The secret `name`: the database's, else the one in `dir/name` (an earlier version's
/// file), else a new random one; whichever a dcmgr recorded first.
pub async fn load(pool: &db::Pool, dir: &Path, name: &str) -> anyhow::Result<[u8; 32]> {
    if let Some(v) = store::secret(pool, name).await? {
        return decode(name, &v);
    }
    let file = dir.join(name);
    let offered: [u8; 32] = match std::fs::read(&file) {
        Ok(b) => b.try_into().map_err(|_| anyhow::anyhow!("{} is not 32 bytes", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => rand::random(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    store::offer_secret(pool, name, &hex::encode(offered), &db::now()).await?;
    let v = store::secret(pool, name).await?.with_context(|| format!("the {name} was not recorded"))?;
    decode(name, &v)
}

fn decode(name: &str, v: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(v)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("the database's {name} is not 32 bytes of hex"))
}
