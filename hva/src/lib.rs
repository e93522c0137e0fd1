//! hva, the hypervisor agent: runs instances on one host and reports their states.
//!
//! Drivers implement `vdc_schema::agent::Hypervisor`: [`libvirt`] runs real guests (kvm,
//! qemu TCG, lxc; the image's hypervisor kind picks which), [`sim`] simulates them for
//! scale tests of dcmgr.

pub mod libvirt;
pub mod sim;
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use vdc_bus::agent::{self, AgentConfig, AgentHandle, HypervisorHandler};
use vdc_bus::{ReportSink, Transport};
use vdc_schema::bus::{AgentKind, HostInfo};
use vdc_schema::{BootMode, HypervisorKind};

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
    /// MiB of root disks this host can hold ([`disk_capacity_mib`]); None reports none,
    /// and dcmgr then books no disk here.
    pub disk_mib: Option<u64>,
}

/// Starts an hva with the simulated driver on `bus`.
pub async fn start_sim(
    bus: Arc<dyn Transport>,
    o: HvaOptions,
) -> anyhow::Result<(AgentHandle, Arc<sim::SimHypervisor>)> {
    let journal = o.data_dir.as_ref().map(|d| d.join("journal.jsonl"));
    let sink = ReportSink::open(journal.as_deref())?;
    let state_file = o.data_dir.as_ref().map(|d| d.join("sim-instances.jsonl"));
    let driver = Arc::new(sim::SimHypervisor::new(sink.clone(), o.sim, state_file)?);
    let cfg = AgentConfig {
        node_id: o.node_id.clone(),
        kind: AgentKind::Hva,
        host: Some(HostInfo {
            cpus: o.cpus,
            memory_mib: o.memory_mib,
            hypervisors: o.hypervisors.clone(),
            capabilities: serde_json::json!({"driver": "sim", "kvm_usable": false}),
            boot_modes: vdc_schema::bus::bios_only(),
            disk_mib: o.disk_mib,
        }),
        storage: None,
        journal,
        tunnel_ip: None,
    };
    let handle = agent::start(bus, cfg, sink, Arc::new(HypervisorHandler(driver.clone()))).await?;
    Ok((handle, driver))
}

/// What the host offers, probed once at start.
pub struct Detected {
    pub hypervisors: Vec<HypervisorKind>,
    pub capabilities: serde_json::Value,
    /// `uefi` only where OVMF is installed.
    pub boot_modes: Vec<BootMode>,
}

/// Probes libvirt's qemu and lxc drivers and whether KVM really runs guests (blocking).
pub fn detect(cfg: &libvirt::LibvirtConfig, kvm_probe_timeout: std::time::Duration) -> Detected {
    let qemu = virt::connect::Connect::open(Some(&cfg.qemu_uri)).map(|_| ()).map_err(|e| e.to_string());
    let lxc = virt::connect::Connect::open(Some(&cfg.lxc_uri)).map(|_| ()).map_err(|e| e.to_string());
    let (kvm_ok, kvm_why) = libvirt::probe::kvm_usable(cfg.builtin_images.as_deref(), kvm_probe_timeout);
    let mut hypervisors = vec![];
    if qemu.is_ok() {
        if kvm_ok {
            hypervisors.push(HypervisorKind::Kvm);
        }
        hypervisors.push(HypervisorKind::Qemu);
    }
    if lxc.is_ok() {
        hypervisors.push(HypervisorKind::Lxc);
    }
    let ovmf = libvirt::probe::ovmf();
    let mut boot_modes = vec![BootMode::Bios];
    if ovmf.is_some() && qemu.is_ok() {
        boot_modes.push(BootMode::Uefi);
    }
    let capabilities = serde_json::json!({
        "driver": "libvirt",
        "uefi": boot_modes.contains(&BootMode::Uefi),
        "ovmf_code": ovmf.as_ref().map(|o| o.code.display().to_string()),
        "kvm_usable": kvm_ok,
        "kvm_probe": kvm_why,
        "qemu": qemu.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.clone()),
        "lxc": lxc.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.clone()),
    });
    Detected { hypervisors, capabilities, boot_modes }
}

/// Starts an hva with the libvirt driver on `bus`; `detected` comes from [`detect`].
pub async fn start_libvirt(
    bus: Arc<dyn Transport>,
    o: HvaOptions,
    mut cfg: libvirt::LibvirtConfig,
    detected: Detected,
) -> anyhow::Result<(AgentHandle, Arc<libvirt::LibvirtHypervisor>)> {
    if cfg.initiator.is_empty() {
        cfg.initiator = vdc_schema::bus::initiator_iqn(&o.node_id.parse()?);
    }
    if detected.hypervisors.is_empty() {
        anyhow::bail!("libvirt offers no usable hypervisor here: {}", detected.capabilities);
    }
    let journal = o.data_dir.as_ref().map(|d| d.join("journal.jsonl"));
    let sink = ReportSink::open(journal.as_deref())?;
    let driver = Arc::new(libvirt::LibvirtHypervisor::new(cfg, sink.clone()));
    let agent_cfg = AgentConfig {
        node_id: o.node_id.clone(),
        kind: AgentKind::Hva,
        host: Some(HostInfo {
            cpus: o.cpus,
            memory_mib: o.memory_mib,
            hypervisors: detected.hypervisors,
            capabilities: detected.capabilities,
            boot_modes: detected.boot_modes,
            disk_mib: o.disk_mib,
        }),
        storage: None,
        journal,
        tunnel_ip: None,
    };
    let handle = agent::start(bus, agent_cfg, sink, Arc::new(HypervisorHandler(driver.clone()))).await?;
    Ok((handle, driver))
}

/// This machine's CPUs and memory (MiB).
/// MiB of root disks the file system holding `dir` (hva's data directory) can take
/// ([`vdc_bus::room`]): its free space plus what the instances' disks under
/// `dir/instances` take now, less the room its image cache (`dir/images`) may still grow
/// by up to `cache_max_bytes`. dcmgr books each disk image's full size against it (thin
/// disks may still grow to it). None when the file system cannot be read.
pub fn disk_capacity_mib(dir: &std::path::Path, cache_max_bytes: Option<u64>) -> Option<u64> {
    let _ = std::fs::create_dir_all(dir);
    let caches: Vec<_> = cache_max_bytes.map(|m| (dir.join("images"), m)).into_iter().collect();
    vdc_bus::room::room_mib(dir, &[dir.join("instances")], &caches)
}

/// MiB of the host's memory kept for itself (the kernel, libvirt, the agents), as Nova's
/// `reserved_host_memory_mb`: guests booked up to the whole of it left the host nothing.
pub const RESERVED_MEMORY_MIB: u64 = 512;

/// This machine's CPUs and the MiB of memory it offers guests: all but `reserved_mib`
/// (at least a quarter of it stays offered on a small machine).
pub fn host_capacity(reserved_mib: u64) -> (u32, u64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(4 << 20);
    let total = mem_kib / 1024;
    (cpus, total.saturating_sub(reserved_mib).max(total / 4))
}

#[cfg(test)]
mod capacity_tests {
    #[test]
    fn the_host_keeps_its_reserve() {
        let (_, all) = super::host_capacity(0);
        let (_, offered) = super::host_capacity(super::RESERVED_MEMORY_MIB);
        assert_eq!(offered, all - super::RESERVED_MEMORY_MIB);
        assert_eq!(super::host_capacity(all).1, all / 4, "a reserve above the memory leaves a quarter");
    }
}
