//! `hva`: the hypervisor agent of one host.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use vdc_schema::HypervisorKind;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Driver {
    /// Simulated instances (for scale tests of dcmgr).
    Sim,
}

#[derive(Parser)]
#[command(name = "hva", version, about = "vdc hypervisor agent")]
struct Cli {
    #[arg(long, value_enum)]
    driver: Driver,
    /// NATS server of the cloud.
    #[arg(long, env = "HVA_NATS_URL")]
    nats: String,
    /// Keeps the node ID, the report journal and the driver's state.
    #[arg(long, env = "HVA_DATA_DIR", default_value = "/var/lib/vdc/hva")]
    data_dir: PathBuf,
    /// Host node ID (`hn-…`); generated and kept in the data directory when left out.
    #[arg(long)]
    node_id: Option<String>,
    #[arg(long, default_value_t = 8)]
    cpus: u32,
    #[arg(long, default_value_t = 16384)]
    memory_mib: u64,
    /// Hypervisor kinds this host offers.
    #[arg(long, value_delimiter = ',', default_value = "kvm,qemu,lxc")]
    hypervisors: Vec<String>,
    /// Sim: how long each operation takes.
    #[arg(long, default_value_t = 50)]
    sim_delay_ms: u64,
    /// Sim: probability that a start fails.
    #[arg(long, default_value_t = 0.0)]
    sim_fail_rate: f64,
    /// Sim: probability that an ensure is dropped.
    #[arg(long, default_value_t = 0.0)]
    sim_drop_rate: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let hypervisors = cli.hypervisors.iter().map(|h| h.parse::<HypervisorKind>()).collect::<Result<Vec<_>, _>>()?;
    let node_id = match cli.node_id {
        Some(id) => id.parse::<vdc_schema::HostNodeId>()?.to_string(),
        None => vdc_bus::sim::load_or_create_id(&cli.data_dir.join("node-id"), || {
            vdc_schema::HostNodeId::generate().to_string()
        })?,
    };
    let bus = vdc_bus::Nats::connect(&cli.nats, &format!("hva {node_id}")).await?;
    let Driver::Sim = cli.driver;
    let opts = vdc_hva::HvaOptions {
        node_id: node_id.clone(),
        cpus: cli.cpus,
        memory_mib: cli.memory_mib,
        hypervisors,
        data_dir: Some(cli.data_dir),
        sim: vdc_bus::sim::SimKnobs {
            delay: Duration::from_millis(cli.sim_delay_ms),
            fail_rate: cli.sim_fail_rate,
            drop_rate: cli.sim_drop_rate,
        },
    };
    let (agent, _) = vdc_hva::start_sim(bus, opts).await?;
    tracing::info!(node = %node_id, "hva running with the sim driver");
    vdc_bus::sim::shutdown_signal().await;
    agent.stop().await;
    Ok(())
}
