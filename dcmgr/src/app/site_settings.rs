//! Several dcmgrs serve one site only as one if they are configured alike (README:
//! several controllers): with `[quotas] instances = 3` on one and 20 on the others, a
//! tenant's limit depended on which one answered, and nothing said so. Each dcmgr on
//! PostgreSQL records the settings that decide for the whole site, and one that starts
//! with others than the last one recorded says which differ.

use crate::config::Config;
use crate::datastore::site as store;
use crate::db;
use std::collections::BTreeMap;

/// The row of `site_secrets` the settings are kept in (as JSON).
const NAME: &str = "settings";

/// The settings that must be the same on every dcmgr of a site: what a tenant or an
/// agent would see differ with the dcmgr that answers. (Addresses, the bus and the
/// database differ or are the same by their nature; a token's value is not recorded.)
pub fn shared(c: &Config) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("quotas", format!("{:?}", c.quotas)),
        ("placement", format!("{:?}", c.placement)),
        ("cpu_allocation_ratio", c.cpu_allocation_ratio.to_string()),
        ("memory_allocation_ratio", c.memory_allocation_ratio.to_string()),
        ("disk_allocation_ratio", c.disk_allocation_ratio.to_string()),
        ("hosts", format!("{:?}", c.hosts)),
        ("external", format!("{:?}", c.external)),
        ("images.max_bytes", c.images.max_bytes.to_string()),
        ("images.max_virtual_bytes", c.images.max_virtual_bytes.to_string()),
        ("images.import_allow", format!("{:?}", c.images.import_allow)),
        ("images.store", format!("{:?}", c.images.store)),
        // A store of the directory kind is one only if every dcmgr names the same (a
        // shared mount): with two, a blob stored through one was 404 through the other.
        (
            "images.dir",
            match c.images.store {
                crate::config::StoreKind::Fs => c.images_dir().display().to_string(),
                // Staging only, each dcmgr's own.
                crate::config::StoreKind::S3 => "(blobs in S3)".into(),
            },
        ),
        // Its Debug leaves the secret out.
        ("images.s3", format!("{:?}", c.images.s3)),
        ("bundles.trusted_keys", format!("{:?}", c.bundles.trusted_keys)),
        ("auth.max_tokens_per_user", c.auth.max_tokens_per_user.to_string()),
        ("auth.rate_limit_per_second", format!("{:?}", c.auth.rate_limit_per_second)),
        ("metrics.token", if c.metrics.token.is_some() { "set" } else { "not set" }.to_string()),
        ("agent_timeout_ms", c.agent_timeout_ms.to_string()),
        ("retention", format!("{:?}", c.retention)),
    ])
}

/// Records this dcmgr's settings as the site's and answers those that differ from the
/// ones recorded before (by the dcmgr that started last), each as `key: here, before`.
pub async fn record(pool: &db::Pool, c: &Config) -> Result<Vec<String>, sqlx::Error> {
    let mine = shared(c);
    let before: BTreeMap<String, String> =
        store::secret(pool, NAME).await?.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default();
    let differ = mine
        .iter()
        .filter_map(|(k, v)| match before.get(*k) {
            Some(b) if b != v => Some(format!("{k}: {v} here, {b} before")),
            _ => None,
        })
        .collect();
    let json = serde_json::to_string(&mine).expect("strings serialize");
    store::set_secret(pool, NAME, &json, &db::now()).await?;
    Ok(differ)
}
