//! sta, the storage agent: keeps volumes and snapshots on one storage node and exports
//! them to hosts.
//!
//! Drivers implement `vdc_schema::agent::StorageAgent`. This crate has the simulated
//! driver ([`sim`]); the zfs, file and btrfs backends with tgt export plug in behind the
//! same trait.

pub mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use vdc_bus::agent::{self, AgentConfig, AgentHandle, StorageHandler};
use vdc_bus::{ReportSink, Transport};
use vdc_schema::bus::{AgentKind, StorageInfo};
use vdc_schema::StorageBackend;

#[derive(Debug, Clone)]
pub struct StaOptions {
    pub node_id: String,
    pub capacity_mib: u64,
    pub data_dir: Option<PathBuf>,
    pub sim: vdc_bus::sim::SimKnobs,
}

pub async fn start_sim(bus: Arc<dyn Transport>, o: StaOptions) -> anyhow::Result<(AgentHandle, Arc<sim::SimStorage>)> {
    let journal = o.data_dir.as_ref().map(|d| d.join("journal.jsonl"));
    let sink = ReportSink::open(journal.as_deref())?;
    let state_file = o.data_dir.as_ref().map(|d| d.join("sim-volumes.json"));
    let driver = Arc::new(sim::SimStorage::new(sink.clone(), o.sim, state_file));
    let cfg = AgentConfig {
        node_id: o.node_id,
        kind: AgentKind::Sta,
        host: None,
        storage: Some(StorageInfo { backend: StorageBackend::Sim, capacity_mib: o.capacity_mib, used_mib: 0 }),
        journal,
    };
    let handle = agent::start(bus, cfg, sink, Arc::new(StorageHandler(driver.clone()))).await?;
    Ok((handle, driver))
}
