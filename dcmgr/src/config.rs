//! dcmgr's configuration file (TOML). Unknown keys are an error, so a typo is caught at
//! start rather than silently ignored.

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the Web API, e.g. `127.0.0.1:9000`; port 0 picks a free one.
    pub listen: String,
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub database_url: String,
    /// NATS server URL; without it dcmgr only serves in-process agents.
    pub nats_url: Option<String>,
    /// How often agents heartbeat.
    pub heartbeat_interval_ms: u64,
    /// An agent silent for this long is marked offline.
    pub agent_timeout_ms: u64,
    /// How often the reconciler looks for objects that have not converged.
    pub reconcile_interval_ms: u64,
    /// Re-send an ensure when an object has not converged this long after the last one.
    pub resend_after_ms: u64,
    /// Number of tasks sending ensures to agents.
    pub dispatch_workers: usize,
    /// Bootstrap: if set, an admin account `admin` with this token is created at start.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9000".into(),
            database_url: "sqlite://vdc.db".into(),
            nats_url: None,
            heartbeat_interval_ms: 2000,
            agent_timeout_ms: 10_000,
            reconcile_interval_ms: 2000,
            resend_after_ms: 5000,
            dispatch_workers: 4,
            admin_token: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid configuration in {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: p, source })
    }
}
