//! `hva`: the hypervisor agent of one host.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use vdc_schema::HypervisorKind;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Driver {
    /// Real guests through libvirt: kvm (when a probe shows it works), qemu, lxc.
    Libvirt,
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
    /// CPUs offered to guests (default: this machine's).
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory offered to guests in MiB (default: this machine's, less --reserved-memory-mib).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// MiB of this machine's memory never offered to guests: the host's own.
    #[arg(long, default_value_t = vdc_hva::RESERVED_MEMORY_MIB)]
    reserved_memory_mib: u64,
    /// MiB of root disks offered to guests (default: the free space of the data
    /// directory's file system plus what the guests' disks there take now).
    #[arg(long)]
    disk_mib: Option<u64>,
    /// Sim: hypervisor kinds to pretend to offer (libvirt detects them).
    #[arg(long, value_delimiter = ',', default_value = "kvm,qemu,lxc")]
    hypervisors: Vec<String>,
    /// Libvirt: directory of the tiny image (packaging/build-tiny-image.sh), for
    /// `builtin:` image sources and the KVM probe.
    #[arg(long, env = "HVA_TINY_IMAGE_DIR")]
    tiny_image_dir: Option<PathBuf>,
    #[arg(long, default_value = "qemu:///system")]
    qemu_uri: String,
    #[arg(long, default_value = "lxc:///system")]
    lxc_uri: String,
    /// Libvirt: seconds a guest gets to shut down on ACPI before it is destroyed.
    #[arg(long, default_value_t = 30)]
    stop_timeout_s: u64,
    /// Libvirt: seconds to wait for a guest under KVM in the start-up probe (0: skip).
    #[arg(long, default_value_t = 15)]
    kvm_probe_timeout_s: u64,
    /// Libvirt: bridge to plug guest interfaces into.
    #[arg(long, conflicts_with = "taps")]
    bridge: Option<String>,
    /// Libvirt: make each guest interface a tap named for it, for nwagent (ovs) to plug.
    #[arg(long)]
    taps: bool,
    /// Libvirt: move each guest's taps into this network namespace (where this host's
    /// Open vSwitch runs, when several hosts share a machine).
    #[arg(long, requires = "taps")]
    tap_netns: Option<String>,
    /// Libvirt: keep the image cache under this many MiB (least recently used images go
    /// first; the bases of instances' disks stay). No limit if absent.
    #[arg(long, env = "HVA_IMAGE_CACHE_MAX_MIB")]
    image_cache_max_mib: Option<u64>,
    /// Sim: how long each operation takes.
    #[arg(long, default_value_t = 50)]
    sim_delay_ms: u64,
    /// Sim: probability that a start fails.
    #[arg(long, default_value_t = 0.0)]
    sim_fail_rate: f64,
    /// Sim: probability that an ensure is dropped.
    #[arg(long, default_value_t = 0.0)]
    sim_drop_rate: f64,
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
    let hypervisors = cli.hypervisors.iter().map(|h| h.parse::<HypervisorKind>()).collect::<Result<Vec<_>, _>>()?;
    if let Some(id) = &cli.node_id {
        id.parse::<vdc_schema::HostNodeId>()?;
    }
    if cli.check_config {
        println!("hva: configuration ok ({:?} driver, NATS {})", cli.driver, cli.nats);
        return Ok(());
    }
    let node_id = match cli.node_id {
        Some(id) => id.parse::<vdc_schema::HostNodeId>()?.to_string(),
        None => vdc_bus::sim::load_or_create_id(&cli.data_dir.join("node-id"), || {
            vdc_schema::HostNodeId::generate().to_string()
        })?,
    };
    if let Some(addr) = &cli.metrics_listen {
        let bound = vdc_bus::metrics::serve(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: cannot listen: {e}"))?;
        tracing::info!(%bound, "serving metrics at /metrics");
    }
    let bus = vdc_bus::Nats::connect(&cli.nats, &format!("hva {node_id}")).await?;
    let (cpus, memory_mib) = vdc_hva::host_capacity(cli.reserved_memory_mib);
    let opts = vdc_hva::HvaOptions {
        node_id: node_id.clone(),
        cpus: cli.cpus.unwrap_or(cpus),
        memory_mib: cli.memory_mib.unwrap_or(memory_mib),
        hypervisors,
        data_dir: Some(cli.data_dir.clone()),
        sim: vdc_bus::sim::SimKnobs {
            delay: Duration::from_millis(cli.sim_delay_ms),
            fail_rate: cli.sim_fail_rate,
            drop_rate: cli.sim_drop_rate,
        },
        disk_mib: cli.disk_mib.or_else(|| {
            let cache = cli.image_cache_max_mib.map(|m| m << 20);
            vdc_hva::disk_capacity_mib(&cli.data_dir, cache)
        }),
    };
    let agent = match cli.driver {
        Driver::Sim => vdc_hva::start_sim(bus, opts).await?.0,
        Driver::Libvirt => {
            let cfg = vdc_hva::libvirt::LibvirtConfig {
                data_dir: cli.data_dir,
                builtin_images: cli.tiny_image_dir,
                qemu_uri: cli.qemu_uri,
                lxc_uri: cli.lxc_uri,
                stop_timeout: Duration::from_secs(cli.stop_timeout_s),
                poll_interval: Duration::from_millis(500),
                bridge: cli.bridge,
                initiator: String::new(), // start_libvirt derives it from the node ID
                taps: cli.taps,
                tap_netns: cli.tap_netns,
                taps_from_netns: None,
                image_cache_max_bytes: cli.image_cache_max_mib.map(|m| m << 20),
                idmap: Some(vdc_bus::idmap::IdMap::DEFAULT),
            };
            let probe = Duration::from_secs(cli.kvm_probe_timeout_s);
            let c2 = cfg.clone();
            let detected = tokio::task::spawn_blocking(move || vdc_hva::detect(&c2, probe)).await?;
            tracing::info!(hypervisors = ?detected.hypervisors, capabilities = %detected.capabilities, "probed the host");
            vdc_hva::start_libvirt(bus, opts, cfg, detected).await?.0
        }
    };
    tracing::info!(node = %node_id, driver = ?cli.driver, "hva running");
    vdc_bus::sim::shutdown_signal().await;
    agent.stop().await;
    Ok(())
}
