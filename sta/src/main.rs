//! `sta`: the storage agent of one storage node.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Driver {
    /// Simulated volumes (for scale tests of dcmgr).
    Sim,
}

#[derive(Parser)]
#[command(name = "sta", version, about = "vdc storage agent")]
struct Cli {
    #[arg(long, value_enum)]
    driver: Driver,
    #[arg(long, env = "STA_NATS_URL")]
    nats: String,
    #[arg(long, env = "STA_DATA_DIR", default_value = "/var/lib/vdc/sta")]
    data_dir: PathBuf,
    /// Storage node ID (`sn-…`); generated and kept in the data directory when left out.
    #[arg(long)]
    node_id: Option<String>,
    #[arg(long, default_value_t = 1 << 20)]
    capacity_mib: u64,
    #[arg(long, default_value_t = 50)]
    sim_delay_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    sim_fail_rate: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let node_id = match cli.node_id {
        Some(id) => id.parse::<vdc_schema::StorageNodeId>()?.to_string(),
        None => vdc_bus::sim::load_or_create_id(&cli.data_dir.join("node-id"), || {
            vdc_schema::StorageNodeId::generate().to_string()
        })?,
    };
    let bus = vdc_bus::Nats::connect(&cli.nats, &format!("sta {node_id}")).await?;
    let Driver::Sim = cli.driver;
    let opts = vdc_sta::StaOptions {
        node_id,
        capacity_mib: cli.capacity_mib,
        data_dir: Some(cli.data_dir),
        sim: vdc_bus::sim::SimKnobs {
            delay: Duration::from_millis(cli.sim_delay_ms),
            fail_rate: cli.sim_fail_rate,
            drop_rate: 0.0,
        },
    };
    let (agent, _) = vdc_sta::start_sim(bus, opts).await?;
    vdc_bus::sim::shutdown_signal().await;
    agent.stop().await;
    Ok(())
}
