//! sta, the storage agent: keeps volumes and snapshots on one storage node and exports
//! them to hosts.
//!
//! Drivers implement `vdc_schema::agent::StorageAgent`: [`real`] on a [`backend`] (zfs,
//! file or btrfs) with iSCSI export through [`tgt`], and [`sim`] for scale tests of dcmgr.

pub mod backend;
pub mod cmd;
pub mod real;
pub mod sim;
pub mod testing;
pub mod tgt;

use std::path::PathBuf;
use std::sync::Arc;
use vdc_bus::agent::{self, AgentConfig, AgentHandle, StorageHandler};
use vdc_bus::{ReportSink, Transport};
use vdc_schema::bus::{AgentKind, StorageInfo};
use vdc_schema::id::HostNodeId;
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
        tunnel_ip: None,
    };
    let handle = agent::start(bus, cfg, sink, Arc::new(StorageHandler(driver.clone()))).await?;
    Ok((handle, driver))
}

/// How a real storage node is set up.
#[derive(Debug, Clone)]
pub struct RealOptions {
    pub node_id: String,
    /// Holds the journal and `state.json`.
    pub data_dir: PathBuf,
    pub backend: backend::BackendConfig,
    /// tgtd's control port and the portal (`address:port`) hosts log in to; None: this
    /// node only serves the hypervisor on its own machine.
    pub iscsi: Option<(u16, String)>,
    /// The hypervisor host on this machine, whose volumes are attached as local files.
    pub local_host: Option<HostNodeId>,
    /// The most the cache of images made into volumes keeps (least recently used go
    /// first); None: no cap.
    pub image_cache_max_bytes: Option<u64>,
    /// MiB offered for volumes; None: what the backend measures (the all-in-one shares
    /// one file system between root disks and volumes, and splits it).
    pub capacity_mib: Option<u64>,
}

pub async fn start_real(
    bus: Arc<dyn Transport>,
    o: RealOptions,
) -> anyhow::Result<(AgentHandle, Arc<real::RealStorage>)> {
    std::fs::create_dir_all(&o.data_dir)?;
    let backend = backend::open(&o.backend).await?;
    let tgt = match &o.iscsi {
        Some((port, portal)) => {
            let t = tgt::Tgt::new(*port, portal.clone());
            t.check().await.map_err(|e| anyhow::anyhow!("tgtd does not answer on control port {port}: {e}"))?;
            Some(t)
        }
        None => None,
    };
    let (measured, used_mib) = backend.capacity().await?;
    let capacity_mib = o.capacity_mib.unwrap_or(measured);
    let journal = o.data_dir.join("journal.jsonl");
    let sink = ReportSink::open(Some(&journal))?;
    let kind = backend.kind();
    let driver = Arc::new(
        real::RealStorage::new(backend, tgt, o.local_host, sink.clone(), o.data_dir.join("state.json"))
            .with_image_cache_max(o.image_cache_max_bytes),
    );
    let cfg = AgentConfig {
        node_id: o.node_id,
        kind: AgentKind::Sta,
        host: None,
        storage: Some(StorageInfo { backend: kind, capacity_mib, used_mib }),
        journal: Some(journal),
        tunnel_ip: None,
    };
    let handle = agent::start(bus, cfg, sink, Arc::new(StorageHandler(driver.clone()))).await?;
    Ok((handle, driver))
}
