//! nwagent, the network agent: plugs interfaces into virtual networks on one host.
//!
//! Drivers implement `vdc_schema::agent::NetworkAgent`: [`ovs`] on Open vSwitch, and
//! [`sim`] for scale tests of dcmgr.

pub mod cmd;
pub mod ovs;
pub mod sim;
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use vdc_bus::agent::{self, AgentConfig, AgentHandle, NetworkHandler};
use vdc_bus::{ReportSink, Transport};
use vdc_schema::bus::AgentKind;

#[derive(Debug, Clone)]
pub struct NwOptions {
    /// The host node ID (shared with the host's hva).
    pub node_id: String,
    pub data_dir: Option<PathBuf>,
    pub sim: vdc_bus::sim::SimKnobs,
    /// The tunnel endpoint announced at registration (simulated hosts: a documentation
    /// address, so tests see the peers dcmgr computes); none announces no tunnel.
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
}

pub async fn start_sim(bus: Arc<dyn Transport>, o: NwOptions) -> anyhow::Result<(AgentHandle, Arc<sim::SimNetwork>)> {
    let journal = o.data_dir.as_ref().map(|d| d.join("journal.jsonl"));
    let sink = ReportSink::open(journal.as_deref())?;
    let driver = Arc::new(sim::SimNetwork::new(sink.clone(), o.sim));
    let cfg = AgentConfig {
        node_id: o.node_id,
        kind: AgentKind::Nwagent,
        host: None,
        storage: None,
        journal,
        tunnel_ip: o.tunnel_ip,
    };
    let handle = agent::start(bus, cfg, sink, Arc::new(NetworkHandler(driver.clone()))).await?;
    Ok((handle, driver))
}

/// Starts nwagent with the Open vSwitch driver.
pub async fn start_ovs(
    bus: Arc<dyn Transport>,
    node_id: String,
    cfg: ovs::OvsConfig,
) -> anyhow::Result<(AgentHandle, Arc<ovs::OvsNetwork>)> {
    let journal = cfg.data_dir.join("journal.jsonl");
    let sink = ReportSink::open(Some(&journal))?;
    let tunnel_ip = Some(cfg.tunnel_ip);
    let driver = Arc::new(ovs::OvsNetwork::open(cfg, sink.clone()).await?);
    let acfg =
        AgentConfig { node_id, kind: AgentKind::Nwagent, host: None, storage: None, journal: Some(journal), tunnel_ip };
    let handle = agent::start(bus, acfg, sink, Arc::new(NetworkHandler(driver.clone()))).await?;
    Ok((handle, driver))
}
