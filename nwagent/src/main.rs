//! `nwagent`: the network agent of one host.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Driver {
    /// Open vSwitch (OVSDB + OpenFlow 1.3, VXLAN between hosts).
    Ovs,
    /// Simulated networking (for scale tests of dcmgr).
    Sim,
}

#[derive(Parser)]
#[command(name = "nwagent", version, about = "vdc network agent")]
struct Cli {
    #[arg(long, value_enum)]
    driver: Driver,
    #[arg(long, env = "NWAGENT_NATS_URL")]
    nats: String,
    #[arg(long, env = "NWAGENT_DATA_DIR", default_value = "/var/lib/vdc/nwagent")]
    data_dir: PathBuf,
    /// The host node ID of this host's hva (`hn-…`).
    #[arg(long)]
    node_id: String,
    /// ovsdb-server's Unix socket.
    #[arg(long, default_value = "/var/run/openvswitch/db.sock")]
    ovsdb_socket: PathBuf,
    /// ovs-vswitchd's run directory (where `<bridge>.mgmt` is).
    #[arg(long, default_value = "/var/run/openvswitch")]
    ovs_rundir: PathBuf,
    /// The integration bridge (created if missing).
    #[arg(long, default_value = "br-int")]
    bridge: String,
    /// This host's VXLAN endpoint (an address of the underlay, routed from the switch).
    #[arg(long)]
    tunnel_ip: Option<std::net::Ipv4Addr>,
    /// A Linux bridge on the external network: routers for floating IPs and outbound
    /// NAT attach to it. Without it guests on this host have no external access.
    #[arg(long)]
    external_bridge: Option<String>,
    /// The network namespace Open vSwitch runs in, when not nwagent's own (several hosts
    /// on one machine).
    #[arg(long)]
    host_netns: Option<String>,
    /// Prefix of the per-network service namespaces.
    #[arg(long, default_value = "vdc")]
    service_prefix: String,
    #[arg(long, default_value_t = 20)]
    sim_delay_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    sim_fail_rate: f64,
    /// Check the arguments, print what would run, and exit (for configuration tests).
    #[arg(long)]
    check_config: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; in `vdc up`,
    /// dcmgr's /metrics shows the agents').
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let node_id = cli.node_id.parse::<vdc_schema::HostNodeId>()?.to_string();
    if cli.driver == Driver::Ovs && cli.tunnel_ip.is_none() {
        anyhow::bail!("--driver ovs needs --tunnel-ip");
    }
    if cli.check_config {
        println!("nwagent: configuration ok ({:?} driver, NATS {})", cli.driver, cli.nats);
        return Ok(());
    }
    if let Some(addr) = &cli.metrics_listen {
        let bound = vdc_bus::metrics::serve(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: cannot listen: {e}"))?;
        tracing::info!(%bound, "serving metrics at /metrics");
    }
    let bus = vdc_bus::Nats::connect(&cli.nats, &format!("nwagent {node_id}")).await?;
    let agent = match cli.driver {
        Driver::Ovs => {
            let tunnel_ip = cli.tunnel_ip.ok_or_else(|| anyhow::anyhow!("--driver ovs needs --tunnel-ip"))?;
            let cfg = vdc_nwagent::ovs::OvsConfig {
                db_socket: cli.ovsdb_socket,
                rundir: cli.ovs_rundir,
                bridge: cli.bridge,
                tunnel_ip,
                data_dir: cli.data_dir,
                plug_timeout: Duration::from_secs(60),
                host_netns: cli.host_netns,
                service_prefix: cli.service_prefix,
                external_bridge: cli.external_bridge,
            };
            vdc_nwagent::start_ovs(bus, node_id, cfg).await?.0
        }
        Driver::Sim => {
            let opts = vdc_nwagent::NwOptions {
                node_id,
                data_dir: Some(cli.data_dir),
                sim: vdc_bus::sim::SimKnobs {
                    delay: Duration::from_millis(cli.sim_delay_ms),
                    fail_rate: cli.sim_fail_rate,
                    drop_rate: 0.0,
                },
                tunnel_ip: None,
            };
            vdc_nwagent::start_sim(bus, opts).await?.0
        }
    };
    vdc_bus::sim::shutdown_signal().await;
    agent.stop().await;
    Ok(())
}
