//! `sta`: the storage agent of one storage node.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use vdc_sta::backend::BackendConfig;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Driver {
    /// Raw files in --dir.
    File,
    /// One btrfs subvolume per volume under --dir (a mounted btrfs).
    Btrfs,
    /// One ZFS dataset (or zvol) per volume under --dataset.
    Zfs,
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
    /// Where volumes live (file and btrfs drivers).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The parent dataset of the volumes (zfs driver), e.g. tank/vdc.
    #[arg(long)]
    dataset: Option<String>,
    /// The iSCSI portal hosts log in to, `address:port` (tgtd must listen there).
    #[arg(long)]
    portal: Option<String>,
    /// tgtd's control port (`tgtd -C N`); 0 is tgtd's default.
    #[arg(long, default_value_t = 0)]
    tgt_control_port: u16,
    /// The hypervisor host (`hn-…`) on this machine: its volumes are attached locally.
    #[arg(long)]
    local_host: Option<String>,
    #[arg(long, default_value_t = 1 << 20)]
    capacity_mib: u64,
    /// The most the cache of images made into volumes keeps, in MiB (least recently used
    /// removed first); no cap when not given.
    #[arg(long)]
    image_cache_max_mib: Option<u64>,
    #[arg(long, default_value_t = 50)]
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
    if let Some(id) = &cli.node_id {
        id.parse::<vdc_schema::StorageNodeId>()?;
    }
    if let Some(h) = &cli.local_host {
        h.parse::<vdc_schema::HostNodeId>()?;
    }
    match cli.driver {
        Driver::File | Driver::Btrfs if cli.dir.is_none() => anyhow::bail!("--driver file/btrfs needs --dir"),
        Driver::Zfs if cli.dataset.is_none() => anyhow::bail!("--driver zfs needs --dataset"),
        _ => {}
    }
    if cli.check_config {
        println!("sta: configuration ok ({:?} driver, NATS {})", cli.driver, cli.nats);
        return Ok(());
    }
    let node_id = match cli.node_id {
        Some(id) => id.parse::<vdc_schema::StorageNodeId>()?.to_string(),
        None => vdc_bus::sim::load_or_create_id(&cli.data_dir.join("node-id"), || {
            vdc_schema::StorageNodeId::generate().to_string()
        })?,
    };
    if let Some(addr) = &cli.metrics_listen {
        let bound = vdc_bus::metrics::serve(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: cannot listen: {e}"))?;
        tracing::info!(%bound, "serving metrics at /metrics");
    }
    let bus = vdc_bus::Nats::connect(&cli.nats, &format!("sta {node_id}")).await?;
    let need_dir = || cli.dir.clone().ok_or_else(|| anyhow::anyhow!("--driver file/btrfs needs --dir"));
    let backend = match cli.driver {
        Driver::Sim => {
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
            return Ok(());
        }
        Driver::File => BackendConfig::File { dir: need_dir()? },
        Driver::Btrfs => BackendConfig::Btrfs { dir: need_dir()? },
        Driver::Zfs => BackendConfig::Zfs {
            dataset: cli.dataset.clone().ok_or_else(|| anyhow::anyhow!("--driver zfs needs --dataset"))?,
        },
    };
    let opts = vdc_sta::RealOptions {
        node_id,
        data_dir: cli.data_dir,
        backend,
        iscsi: cli.portal.map(|p| (cli.tgt_control_port, p)),
        local_host: cli.local_host.map(|h| h.parse()).transpose()?,
        image_cache_max_bytes: cli.image_cache_max_mib.map(|m| m << 20),
        capacity_mib: None,
    };
    let (agent, _) = vdc_sta::start_real(bus, opts).await?;
    vdc_bus::sim::shutdown_signal().await;
    agent.stop().await;
    Ok(())
}
