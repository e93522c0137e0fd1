//! `nwagent`: the network agent of one host.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Driver {
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
    #[arg(long, default_value_t = 20)]
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
    let node_id = cli.node_id.parse::<vdc_schema::HostNodeId>()?.to_string();
    let bus = vdc_bus::Nats::connect(&cli.nats, &format!("nwagent {node_id}")).await?;
    let Driver::Sim = cli.driver;
    let opts = vdc_nwagent::NwOptions {
        node_id,
        data_dir: Some(cli.data_dir),
        sim: vdc_bus::sim::SimKnobs {
            delay: Duration::from_millis(cli.sim_delay_ms),
            fail_rate: cli.sim_fail_rate,
            drop_rate: 0.0,
        },
    };
    let (agent, _) = vdc_nwagent::start_sim(bus, opts).await?;
    vdc_bus::sim::shutdown_signal().await;
    agent.stop().await;
    Ok(())
}
