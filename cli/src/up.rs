//! `vdc up`: the all-in-one cloud in one process — dcmgr, one hva, one nwagent and one
//! sta on the in-process bus, SQLite in the data directory, an admin account and token,
//! and a default image. It writes the CLI configuration so `vdc` works at once.

use crate::commands::UpArgs;
use crate::config::{self, CliConfig};
use anyhow::Context;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdc_bus::sim::{load_or_create_id, SimKnobs};
use vdc_bus::Transport;
use vdc_dcmgr::ctx::Caller;
use vdc_dcmgr::{server, Config, Dcmgr};
use vdc_schema::api::CreateImage;
use vdc_schema::{Arch, HostNodeId, HypervisorKind, ImageFormat, StorageNodeId};

/// The name of the image registered by default.
pub const DEFAULT_IMAGE: &str = "tiny";

pub fn default_data_dir() -> PathBuf {
    dirs::data_local_dir().unwrap_or_else(|| PathBuf::from(".")).join("vdc")
}

fn admin_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let mut rng = rand::thread_rng();
    let token: String = (0..40).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect();
    let token = format!("vdc_{token}");
    std::fs::write(&path, format!("{token}\n")).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
}

/// This machine's CPUs and memory, offered to the all-in-one's host.
fn host_capacity() -> (u32, u64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(4 << 20);
    (cpus, mem_kib / 1024)
}

/// A running all-in-one.
pub struct AllInOne {
    pub dcmgr: Dcmgr,
    pub token: String,
    agents: Vec<vdc_bus::AgentHandle>,
}

impl AllInOne {
    pub async fn start(data_dir: &Path, listen: &str) -> anyhow::Result<AllInOne> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let token = admin_token(data_dir)?;
        let bus: Arc<dyn Transport> = vdc_bus::InProc::new();
        let config = Config {
            listen: listen.to_owned(),
            database_url: format!("sqlite://{}", data_dir.join("vdc.db").display()),
            admin_token: Some(token.clone()),
            ..Config::default()
        };
        let dcmgr = Dcmgr::start(config, server::Options { bus: Some(bus.clone()), ..Default::default() }).await?;

        let host_id = load_or_create_id(&data_dir.join("hva/node-id"), || HostNodeId::generate().to_string())?;
        let store_id = load_or_create_id(&data_dir.join("sta/node-id"), || StorageNodeId::generate().to_string())?;
        let (cpus, memory_mib) = host_capacity();
        let sim = SimKnobs::default();
        let (hva, _) = vdc_hva::start_sim(
            bus.clone(),
            vdc_hva::HvaOptions {
                node_id: host_id.clone(),
                cpus,
                memory_mib,
                hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu, HypervisorKind::Lxc],
                data_dir: Some(data_dir.join("hva")),
                sim,
            },
        )
        .await?;
        let (nw, _) = vdc_nwagent::start_sim(
            bus.clone(),
            vdc_nwagent::NwOptions { node_id: host_id, data_dir: Some(data_dir.join("nwagent")), sim },
        )
        .await?;
        let (sta, _) = vdc_sta::start_sim(
            bus.clone(),
            vdc_sta::StaOptions {
                node_id: store_id,
                capacity_mib: 100 << 10,
                data_dir: Some(data_dir.join("sta")),
                sim,
            },
        )
        .await?;
        ensure_default_image(&dcmgr).await?;
        Ok(AllInOne { dcmgr, token, agents: vec![hva, nw, sta] })
    }

    pub async fn stop(self) {
        for a in self.agents {
            a.stop().await;
        }
        self.dcmgr.stop().await;
    }
}

async fn ensure_default_image(dcmgr: &Dcmgr) -> anyhow::Result<()> {
    let ctx = &dcmgr.ctx;
    let admin = vdc_dcmgr::resources::account::admin_id(ctx)
        .await
        .map_err(|e| anyhow::anyhow!("looking up the admin account: {e}"))?
        .context("the admin account is missing")?;
    let caller = Caller { account_id: admin.parse()?, admin: true };
    let exists =
        vdc_dcmgr::resources::image::exists_public(ctx, DEFAULT_IMAGE).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if !exists {
        let req = CreateImage {
            name: DEFAULT_IMAGE.into(),
            format: ImageFormat::Kernel,
            arch: Arch::X86_64,
            hypervisors: vec![HypervisorKind::Qemu, HypervisorKind::Kvm, HypervisorKind::Lxc],
            source: "builtin:tiny-kernel".into(),
            checksum: None,
            initrd: Some("builtin:tiny-initrd".into()),
            kernel_cmdline: Some("console=ttyS0 panic=-1".into()),
            public: true,
        };
        vdc_dcmgr::resources::image::insert(ctx, &caller, req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let aio = AllInOne::start(&data_dir, &args.listen).await?;
    let url = aio.dcmgr.url();
    let cfg_path = config::config_path();
    config::save(&cfg_path, &CliConfig { api: Some(url.clone()), token: Some(aio.token.clone()) })?;
    println!(
        "vdc all-in-one is running.

  API:        {url}/api/v1   (console: {url}/)
  data:       {}
  admin token {}
  CLI config  {} (written; `vdc` now talks to this cloud)

  Drivers: simulated (hva, nwagent and sta run their `sim` drivers: instances, networks
  and volumes are modelled, not booted; the libvirt, Open vSwitch and storage drivers
  are not built yet).

Try:
  vdc keypair create mykey
  vdc network create net1 --cidr 10.0.0.0/24
  vdc secgroup create web --rule tcp:22 --rule icmp
  vdc image list
  vdc instance create --image <img-…> --network <nw-…> --secgroup <sg-…> --keypair <ssh-…> --wait
  vdc instance list

Ctrl-C stops the cloud; its state stays in the data directory.",
        data_dir.display(),
        aio.token,
        cfg_path.display()
    );
    vdc_bus::sim::shutdown_signal().await;
    eprintln!("stopping…");
    aio.stop().await;
    Ok(())
}
