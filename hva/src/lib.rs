//! hva, the hypervisor agent: runs instances on one host and reports their states.
//!
//! Drivers implement `vdc_schema::agent::Hypervisor`. This crate has the simulated
//! driver ([`sim`]); the libvirt drivers (kvm, qemu, lxc) plug in behind the same trait.

pub mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use vdc_bus::agent::{self, AgentConfig, AgentHandle, HypervisorHandler};
use vdc_bus::{ReportSink, Transport};
use vdc_schema::bus::{AgentKind, HostInfo};
use vdc_schema::HypervisorKind;

/// What one hva needs to run.
#[derive(Debug, Clone)]
pub struct HvaOptions {
    pub node_id: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub hypervisors: Vec<HypervisorKind>,
    /// Journal and driver state live here; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    pub sim: vdc_bus::sim::SimKnobs,
}

/// Starts an hva with the simulated driver on `bus`.
pub async fn start_sim(bus: Arc<dyn Transport>, o: HvaOptions) -> anyhow::Result<(AgentHandle, Arc<sim::SimHypervisor>)> {
    let journal = o.data_dir.as_ref().map(|d| d.join("journal.jsonl"));
    let sink = ReportSink::open(journal.as_deref())?;
    let state_file = o.data_dir.as_ref().map(|d| d.join("sim-instances.json"));
    let driver = Arc::new(sim::SimHypervisor::new(sink.clone(), o.sim, state_file)?);
    let cfg = AgentConfig {
        node_id: o.node_id.clone(),
        kind: AgentKind::Hva,
        host: Some(HostInfo {
            cpus: o.cpus,
            memory_mib: o.memory_mib,
            hypervisors: o.hypervisors.clone(),
            capabilities: serde_json::json!({"driver": "sim", "kvm_usable": false}),
        }),
        storage: None,
        journal,
    };
    let handle = agent::start(bus, cfg, sink, Arc::new(HypervisorHandler(driver.clone()))).await?;
    Ok((handle, driver))
}
