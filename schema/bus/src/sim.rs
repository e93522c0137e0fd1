//! What every simulated agent shares: delays and injected faults, so dcmgr can be tested
//! against slow, failing and lossy agents at scale. Never a stand-in for a real driver's
//! own tests.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct SimKnobs {
    /// How long an operation (start, stop, create …) takes.
    pub delay: Duration,
    /// Probability that an operation ends in `failed`.
    pub fail_rate: f64,
    /// Probability that a received ensure is silently dropped (message loss).
    pub drop_rate: f64,
}

impl Default for SimKnobs {
    fn default() -> Self {
        SimKnobs { delay: Duration::from_millis(50), fail_rate: 0.0, drop_rate: 0.0 }
    }
}

impl SimKnobs {
    pub fn roll(rate: f64) -> bool {
        rate > 0.0 && rand::thread_rng().gen_bool(rate.min(1.0))
    }

    pub fn should_drop(&self) -> bool {
        Self::roll(self.drop_rate)
    }

    pub fn should_fail(&self) -> bool {
        Self::roll(self.fail_rate)
    }
}

/// The node ID kept in `path`, or a new one written there: an agent keeps its identity
/// across restarts.
pub fn load_or_create_id(path: &std::path::Path, generate: impl FnOnce() -> String) -> std::io::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_owned());
        }
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let id = generate();
    std::fs::write(path, format!("{id}\n"))?;
    Ok(id)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
