//! The libvirt drivers: `kvm`, `qemu` (TCG) and `lxc`, through the `virt` crate.
//!
//! ```text
//!  ensure(spec) ──► per-instance lock ──► converge (blocking thread):
//!      prepare files (image cache, overlay or rootfs, NoCloud seed) ─► define XML
//!      running: create / reset for reboot        off: ACPI shutdown, then destroy
//!  poller (every poll_interval): domain state ─► report on change
//!  absent: destroy, undefine, remove the instance directory
//! ```
//!
//! Each instance's spec is kept in `instances/<id>/state.json`, so a restarted hva knows
//! its guests again and re-reports them; it never touches a running domain on start.

pub mod host;
pub mod image;
pub mod probe;
pub mod rootdisk;
pub mod seed;
pub mod xml;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdc_bus::coalesce::{Coalescer, Ranked};
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, Hypervisor};
use vdc_schema::bus::{CaptureSpec, InstanceReport, InstanceSpec, ObjectReport};
use vdc_schema::id::{InstanceId, VolumeId};
use vdc_schema::{DesiredPower, HypervisorKind, ImageFormat, ObservedInstance};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// Holds `instances/` and `images/`.
    pub data_dir: PathBuf,
    /// Where `builtin:` image sources are (packaging/build-tiny-image.sh's output).
    pub builtin_images: Option<PathBuf>,
    pub qemu_uri: String,
    pub lxc_uri: String,
    /// How long a guest gets to shut down on ACPI before it is destroyed.
    pub stop_timeout: Duration,
    pub poll_interval: Duration,
    /// Linux or OVS bridge that interfaces are plugged into (none: no interfaces).
    pub bridge: Option<String>,
    /// This host's iSCSI initiator name (`vdc_schema::bus::initiator_iqn`).
    pub initiator: String,
    /// Make each NIC a tap named for its interface, which nwagent plugs into Open vSwitch
    /// (instead of attaching to `bridge`).
    pub taps: bool,
    /// Move each tap into this network namespace once the guest runs: where the host's
    /// Open vSwitch runs in a namespace of its own (several hosts on one machine, tests).
    /// A tap keeps working across the move; QEMU holds it by file descriptor.
    pub tap_netns: Option<String>,
    /// The network namespace (a `/proc/PID/ns/net` path) where libvirtd makes the taps,
    /// when this process (and its Open vSwitch) runs in another — `vdc up` started inside
    /// a namespace: each tap is moved from there into this process's namespace. Takes
    /// precedence over `tap_netns`.
    pub taps_from_netns: Option<String>,
    /// Prune the image cache (least recently used first) to this many bytes; no limit if None.
    pub image_cache_max_bytes: Option<u64>,
    /// Containers run in a user namespace with this map: the container's root is an
    /// unprivileged user of the host (`vdc_bus::idmap`). None: as the host's root (a
    /// container's root then owns the host; only for tests of the driver itself).
    pub idmap: Option<vdc_bus::idmap::IdMap>,
}

/// One libvirt call, timed for `vdc_driver_op_duration_seconds{driver="libvirt"}`.
fn lv<T>(
    op: &str,
    f: impl FnOnce() -> std::result::Result<T, virt::error::Error>,
) -> std::result::Result<T, virt::error::Error> {
    vdc_bus::metrics::time_driver("libvirt", op, f)
}

/// Undefines a domain; a QEMU guest's UEFI variable store goes with it (libvirt refuses
/// to undefine a domain with one otherwise; the LXC driver takes no flags).
fn undefine(d: &Domain, kind: HypervisorKind) -> std::result::Result<(), virt::error::Error> {
    lv("undefine", || match kind {
        HypervisorKind::Lxc => d.undefine(),
        _ => d.undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM),
    })
}

#[derive(Clone, Serialize, Deserialize)]
struct Saved {
    spec: InstanceSpec,
    reboot_done: u64,
    /// The host's boot (`/proc/sys/kernel/random/boot_id`) this was saved in: a guest
    /// found off in a later boot did not power itself off, the host went down.
    #[serde(default)]
    boot_id: Option<String>,
    /// Whether the guest has run on this host: from then on its disk (or root
    /// filesystem) holds the tenant's data, and a failure never removes it. A state
    /// saved before this was recorded is taken to have run.
    #[serde(default = "ran_before")]
    ran: bool,
    /// The spec_gen hva last started the guest for. Found off with this same intent, it
    /// powered itself off or was killed since: it is reported off, not started again (an
    /// ensure re-sent to a returning host booted it, and dcmgr, told it was off, halted it
    /// again). None in a state saved before this was recorded.
    #[serde(default)]
    started_gen: Option<u64>,
}

fn ran_before() -> bool {
    true
}

/// This boot of the host, if the kernel says.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
}

struct Known {
    saved: Saved,
    last: Option<ObservedInstance>,
    reason: Option<String>,
    /// The spec_gen converge has acted on. Reports carry this one, not the newest
    /// received, so an observation made before acting is never taken for its outcome.
    acted_gen: u64,
    /// The volumes the guest has now (the live domain's, else the defined one's).
    volumes: Vec<VolumeId>,
    /// Meant to run, found off after the host restarted: not reported off (that would
    /// read as the guest powering itself off, and halt it) until dcmgr's next ensure
    /// starts it again, as the host's guests come back after a reboot.
    resuming: bool,
    /// A running container's libvirt controller (the domain's ID) as hva last set it up
    /// (checksum offload, taps, console). A container that reboots itself is started
    /// again by libvirt under a new controller, with new devices and a new console: the
    /// poller sees the ID change and sets it up again.
    container: Option<u32>,
}

struct Inner {
    cfg: LibvirtConfig,
    sink: ReportSink,
    /// Runs cp, ip and genisoimage (the image cache holds the same runner).
    tools: host::Runner,
    cache: image::ImageCache,
    /// Sized root filesystems of containers, mounted where libvirt sees them.
    mounts: rootdisk::Mounts,
    conns: Mutex<HashMap<&'static str, Arc<Connect>>>,
    known: Mutex<HashMap<InstanceId, Known>>,
    locks: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// Images whose capture runs now: a re-sent command while one runs is dropped.
    capturing: Mutex<std::collections::HashSet<vdc_schema::id::ImageId>>,
    /// This boot of the host (see [`Saved::boot_id`]).
    boot_id: Option<String>,
    /// Set by [`LibvirtHypervisor::stop`]: nothing is polled or reported any more.
    stopped: std::sync::atomic::AtomicBool,
}

pub struct LibvirtHypervisor {
    inner: Arc<Inner>,
    /// One converge running per instance plus at most one waiting: dcmgr re-sends an
    /// ensure until the instance reports converged, and a converge reads the newest saved
    /// spec, so further copies would only redo the same work behind the instance's lock.
    converging: Coalescer<InstanceId, Converge>,
    /// Removals and captures under way, for [`Hypervisor::drain`].
    work: tokio_util::task::TaskTracker,
}

/// A converge asked for by an ensure of this spec generation.
struct Converge(u64);

impl Ranked for Converge {
    type Rank = u64;
    fn rank(&self) -> u64 {
        self.0
    }
}

type Result<T> = std::result::Result<T, String>;

/// In an instance's directory: the cached files its definition boots (kernel, initrd).
const USES: &str = "uses";

/// Bytes of a container's console kept in `console.log` before it is rotated to
/// `console.log.0`, as virtlogd keeps a QEMU guest's (2 MiB): a guest writing to its
/// console without end filled the host's disk (red team, 2026-12-07).
const CONSOLE_LOG_MAX: u64 = 2 << 20;

/// A container's console copied to its log, rotated at `max` bytes; readable by root only.
struct ConsoleLog {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    max: u64,
}

impl ConsoleLog {
    fn open(path: PathBuf, max: u64) -> std::io::Result<ConsoleLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        // (One an older hva made is 0644.)
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let len = file.metadata()?.len();
        Ok(ConsoleLog { path, file, len, max })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.len > 0 && self.len + data.len() as u64 > self.max {
            std::fs::rename(&self.path, self.path.with_extension("log.0"))?;
            *self = ConsoleLog::open(std::mem::take(&mut self.path), self.max)?;
        }
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }
}

fn uri_kind(kind: HypervisorKind) -> &'static str {
    match kind {
        HypervisorKind::Lxc => "lxc",
        HypervisorKind::Kvm | HypervisorKind::Qemu => "qemu",
    }
}

fn observe(dom: Option<&Domain>) -> ObservedInstance {
    observed(domain_state(dom))
}

/// What libvirt says of the domain: `None` when there is none, `Some(None)` when its
/// state cannot be read.
fn domain_state(dom: Option<&Domain>) -> Option<Option<virt::domain::DomainStateEnum>> {
    dom.map(|d| d.state().ok().map(|(s, _)| s))
}

fn observed(state: Option<Option<virt::domain::DomainStateEnum>>) -> ObservedInstance {
    match state {
        None => ObservedInstance::Absent,
        Some(Some(Enum::Known(
            DomainState::Running | DomainState::Blocked | DomainState::Paused | DomainState::PMSuspended,
        ))) => ObservedInstance::Running,
        Some(Some(Enum::Known(DomainState::Shutdown))) => ObservedInstance::Stopping,
        _ => ObservedInstance::Off,
    }
}

impl Inner {
    fn dir(&self, id: &InstanceId) -> PathBuf {
        self.cfg.data_dir.join("instances").join(id.as_str())
    }

    fn conn(&self, kind: HypervisorKind) -> Result<Arc<Connect>> {
        let key = uri_kind(kind);
        if let Some(c) = self.conns.lock().unwrap().get(key) {
            return Ok(c.clone());
        }
        let uri = if key == "lxc" { &self.cfg.lxc_uri } else { &self.cfg.qemu_uri };
        let c = Arc::new(Connect::open(Some(uri)).map_err(|e| format!("cannot connect to libvirt at {uri}: {e}"))?);
        self.conns.lock().unwrap().insert(key, c.clone());
        Ok(c)
    }

    fn forget_conn(&self, kind: HypervisorKind) {
        self.conns.lock().unwrap().remove(uri_kind(kind));
    }

    fn lookup(&self, kind: HypervisorKind, id: &InstanceId) -> Result<Option<Domain>> {
        let conn = self.conn(kind)?;
        match conn.lookup_domain_by_name(&xml::domain_name(id.as_str())) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == Enum::Known(virt::error::ErrorNumber::NoDomain) => Ok(None),
            Err(e) => {
                self.forget_conn(kind);
                Err(format!("libvirt: {e}"))
            }
        }
    }

    fn report(&self, id: &InstanceId, state: ObservedInstance) {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut known = self.known.lock().unwrap();
        let Some(k) = known.get_mut(id) else { return };
        k.last = Some(state);
        self.sink.report(ObjectReport::Instance(InstanceReport {
            id: id.clone(),
            spec_gen: k.acted_gen,
            state,
            reboot_gen: k.saved.reboot_done,
            volumes: k.volumes.clone(),
            reason: if state == ObservedInstance::Failed { k.reason.clone() } else { None },
        }));
    }

    fn save(&self, id: &InstanceId) {
        // Written under the lock it is read under: two saves (an ensure's, a converge's)
        // never interleave in the file, nor does an older state replace a newer one.
        let known = self.known.lock().unwrap();
        let saved = known.get(id).map(|k| k.saved.clone());
        if let Some(mut s) = saved {
            s.boot_id = self.boot_id.clone();
            let dir = self.dir(id);
            let _ = std::fs::create_dir_all(&dir);
            let tmp = dir.join("state.json.tmp");
            if std::fs::write(&tmp, serde_json::to_vec(&s).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(tmp, dir.join("state.json"));
            }
        }
    }

    fn fail(&self, id: &InstanceId, kind: HypervisorKind, why: String) {
        tracing::warn!(instance = %id, "instance failed: {why}");
        let ran = self.known.lock().unwrap().get(id).is_some_and(|k| k.saved.ran);
        // A guest that never ran holds nothing of the tenant's: nothing is left behind.
        // One that ran keeps its domain and files, its disk above all: the cause may pass
        // (a volume's storage node down) and a start then boots the same disk; a
        // terminate removes them.
        if !ran {
            if let Ok(Some(d)) = self.lookup(kind, id) {
                let _ = lv("destroy", || d.destroy());
                let _ = undefine(&d, kind);
            }
            if self.unmount_root(id).is_ok() {
                let _ = std::fs::remove_dir_all(self.dir(id));
            }
        }
        if let Some(k) = self.known.lock().unwrap().get_mut(id) {
            k.reason = Some(why);
            k.acted_gen = k.saved.spec.spec_gen;
        }
        self.report(id, ObservedInstance::Failed);
    }

    /// The map a container's files are shifted by: the configured one, when this process
    /// can give files to other users (root).
    fn shifting(&self) -> Option<&vdc_bus::idmap::IdMap> {
        self.cfg.idmap.as_ref().filter(|_| vdc_bus::idmap::can_shift())
    }

    /// Makes a container's root filesystem ready for its start: a sized one mounted (not
    /// after a host or libvirt restart), an unsized one shifted ([`Self::shift_rootfs`]).
    fn ready_rootfs(&self, id: &InstanceId) -> Result<()> {
        let dir = self.dir(id);
        let image = dir.join(rootdisk::IMAGE);
        if image.exists() {
            // Never started on the empty mount point: it would not boot, or worse, boot
            // a root filesystem that is not the tenant's.
            return self.mounts.ensure_mounted(&image, &dir.join("rootfs"));
        }
        self.shift_rootfs(id)
    }

    /// Unmounts a container's sized root filesystem, if it has one, before its files go.
    fn unmount_root(&self, id: &InstanceId) -> Result<()> {
        let dir = self.dir(id);
        if !dir.join(rootdisk::IMAGE).exists() {
            return Ok(());
        }
        self.mounts.unmount(&dir.join("rootfs"))
    }

    /// A container's root filesystem made by an hva before containers ran in a user
    /// namespace is the host root's: shifted before its first start in one (the guest is
    /// off, so nothing writes to it meanwhile).
    /// Then its definition is made again, now with the user namespace.
    fn shift_rootfs(&self, id: &InstanceId) -> Result<()> {
        let rootfs = self.dir(id).join("rootfs");
        let Some(map) = self.shifting().filter(|_| rootfs.is_dir()) else { return Ok(()) };
        let shifted = vdc_bus::idmap::is_shifted(&rootfs, map).map_err(|e| format!("{}: {e}", rootfs.display()))?;
        if shifted {
            return Ok(());
        }
        let n = vdc_bus::idmap::shift_to_host(&rootfs, map)
            .map_err(|e| format!("giving the root filesystem to the container's user namespace: {e}"))?;
        tracing::info!(instance = %id, entries = n, "root filesystem shifted to the container's user namespace");
        let spec = self.known.lock().unwrap().get(id).map(|k| k.saved.spec.clone());
        if let Some(spec) = spec {
            let xml = self.prepare(&spec)?;
            let conn = self.conn(HypervisorKind::Lxc)?;
            lv("define", || conn.define_domain_xml(&xml)).map_err(|e| format!("defining it again: {e}"))?;
        }
        Ok(())
    }

    /// Everything the domain needs on disk; returns its XML.
    fn prepare(&self, spec: &InstanceSpec) -> Result<String> {
        let xml = self.prepare_files(spec)?;
        // Cached files the definition names other than a disk's base: kept by the pruner.
        let uses: Vec<String> =
            xml::booted_files(&xml).into_iter().filter(|p| Path::new(p).starts_with(&self.cache.dir)).collect();
        let path = self.dir(&spec.id).join(USES);
        std::fs::write(&path, uses.join("\n")).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(xml)
    }

    fn prepare_files(&self, spec: &InstanceSpec) -> Result<String> {
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // No other host user lists a guest's files. Traversed still: QEMU (its own user)
        // opens its disks by their paths, and a container's root, mapped to another uid,
        // pivots into its rootfs (0700 failed there with "Permission denied").
        // Nor lists the guests (their IDs name the files to try).
        for d in [dir.as_path(), dir.parent().unwrap_or(&dir)] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let console = dir.join("console.log");
        let mut layout = xml::Layout {
            kernel: None,
            initrd: None,
            root_disk: None,
            seed_iso: None,
            rootfs: None,
            console_log: &console,
            bridge: self.cfg.bridge.as_deref(),
            taps: self.cfg.taps,
            initiator: &self.cfg.initiator,
            firmware: None,
            idmap: self.cfg.idmap.as_ref(),
        };
        let e = |e: image::ImageError| e.to_string();
        let (kernel, initrd, disk, rootfs, ovmf);
        let nvram = dir.join("nvram.fd");
        let seed = dir.join("seed.iso");
        match (spec.hypervisor, spec.image.format) {
            (HypervisorKind::Lxc, ImageFormat::Tar | ImageFormat::Dir) => {
                rootfs = dir.join("rootfs");
                let fs_image = dir.join(rootdisk::IMAGE);
                // Made once: later ensures need the image no more. A container with a
                // size has its own file system of that size; one made without (by an
                // older hva) keeps its directory on the host's file system.
                let tree = dir.join("rootfs.tree");
                if let Some(size) = spec.root_disk_size.filter(|_| !fs_image.exists() && !rootfs.exists()) {
                    self.make_rootfs_tree(spec, &tree, size)?;
                    // The file system's own: an entry of the image by that name that is no
                    // directory cannot be kept (mkfs refused the whole tree for it).
                    let lost = tree.join("lost+found");
                    if lost.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                        tracing::warn!(instance = %spec.id, "the image's /lost+found is not a directory: left out");
                        std::fs::remove_file(&lost).map_err(|e| format!("{}: {e}", lost.display()))?;
                    }
                    let owner = self.shifting().and_then(|m| m.to_host(0)).unwrap_or(0);
                    self.mounts.make(&tree, &fs_image, size, owner)?;
                }
                if fs_image.exists() {
                    if tree.exists() {
                        std::fs::remove_dir_all(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
                    }
                    std::fs::create_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
                    self.mounts.ensure_mounted(&fs_image, &rootfs)?;
                } else {
                    if !rootfs.exists() {
                        self.make_rootfs_tree(spec, &rootfs, u64::MAX)?;
                    }
                    // A root filesystem an older hva made is the host root's until its next
                    // start shifts it ([`Self::shift_rootfs`]): until then its definition
                    // keeps no user namespace, or a container running from before that
                    // restarts itself (libvirt's `on_reboot`) would find its files not its own.
                    if let Some(map) = self.shifting() {
                        if !vdc_bus::idmap::is_shifted(&rootfs, map).unwrap_or(true) {
                            layout.idmap = None;
                        }
                    }
                }
                layout.rootfs = Some(&rootfs);
                return Ok(xml::lxc_domain(spec, &layout));
            }
            (HypervisorKind::Lxc, f) => return Err(format!("an lxc instance needs a tar or dir image, not {f}")),
            (_, ImageFormat::Kernel) => {
                let (k, i) = image::kernel_pair(&self.cache, &spec.image).map_err(e)?;
                (kernel, initrd) = (k, i);
                layout.kernel = Some(&kernel);
                layout.initrd = initrd.as_deref();
            }
            (_, f @ (ImageFormat::Qcow2 | ImageFormat::Raw)) => {
                disk = dir.join("root.qcow2");
                // Made once: a later ensure needs the image no more (the overlay's base
                // stays in the cache while the disk is there).
                if !disk.exists() {
                    let base = self.cache.fetch_image(&spec.image).map_err(e)?;
                    self.cache.overlay(&base, f.as_str(), &disk).map_err(e)?;
                }
                if let Some(size) = spec.root_disk_size {
                    self.cache.grow(&disk, size, spec.image.id.as_str()).map_err(e)?;
                }
                layout.root_disk = Some(&disk);
                if let Some(k) = &spec.image.kernel {
                    // An AMI with its AKI/ARI: the kernel image's kernel and initrd boot
                    // this disk.
                    let (k, i) = image::kernel_pair(&self.cache, k).map_err(e)?;
                    (kernel, initrd) = (k, i);
                    layout.kernel = Some(&kernel);
                    layout.initrd = initrd.as_deref();
                } else if spec.image.boot_mode == vdc_schema::BootMode::Uefi {
                    ovmf = probe::ovmf().ok_or_else(|| {
                        format!("image {} boots with UEFI and this host has no OVMF firmware", spec.image.id)
                    })?;
                    layout.firmware =
                        Some(xml::Firmware { code: &ovmf.code, vars_template: &ovmf.vars, nvram: &nvram });
                }
            }
            (_, f) => return Err(format!("a {} instance cannot boot a {f} image", spec.hypervisor)),
        }
        seed::build(&*self.tools, spec, &dir, &seed).map_err(e)?;
        layout.seed_iso = Some(&seed);
        Ok(xml::qemu_domain(spec, &layout))
    }

    /// A container's files from its image at `dest`, owned as its user namespace needs;
    /// no more than `max` bytes of a tarball (a root filesystem's size: a tarball of
    /// gigabytes of zeros, a few MB compressed, filled the host's disk before its
    /// container failed, red team 2026-12-07).
    fn make_rootfs_tree(&self, spec: &InstanceSpec, dest: &Path, max: u64) -> Result<()> {
        let map = self.shifting();
        let made = if spec.image.format == ImageFormat::Tar {
            self.cache.fetch_image(&spec.image).and_then(|src| self.cache.unpack(&src, dest, map, max))
        } else {
            self.cache.resolve(&spec.image.source).and_then(|src| self.cache.copy_rootfs(&src, dest, map))
        };
        made.map_err(|e| e.to_string())
    }

    fn wait_until(&self, dom: &Domain, timeout: Duration, done: impl Fn(bool) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if done(dom.is_active().unwrap_or(false)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Keeps the image cache under `max` bytes, never removing the base of an instance's disk.
    fn prune_images(&self, max: u64) {
        let _alone = self.cache.using.write().unwrap();
        // The bases of instances' disks, and the kernels and initrds their definitions
        // boot (listed in each instance's `uses` when it was prepared).
        let mut in_use = std::collections::HashSet::new();
        for e in std::fs::read_dir(self.cfg.data_dir.join("instances")).into_iter().flatten().flatten() {
            in_use.extend(image::qcow2_backing(&e.path().join("root.qcow2")));
            if let Ok(uses) = std::fs::read_to_string(e.path().join(USES)) {
                in_use.extend(uses.lines().map(PathBuf::from));
            }
        }
        for p in self.cache.prune(max, &in_use) {
            tracing::info!(image = %p.display(), "pruned from the image cache");
        }
    }

    /// Makes the host match the saved spec of `id` (blocking).
    fn converge(&self, id: &InstanceId) -> Result<()> {
        let saved = self.known.lock().unwrap().get_mut(id).map(|k| {
            let resuming = std::mem::take(&mut k.resuming); // dcmgr's ensure decides now
            let failed = k.last == Some(ObservedInstance::Failed) && k.acted_gen >= k.saved.spec.spec_gen;
            (k.saved.clone(), failed, resuming)
        });
        let Some((saved, failed, resuming)) = saved else { return Ok(()) };
        // This very spec failed already (a converge queued behind the one that failed):
        // say so again rather than try once more; a new spec tries again.
        if failed {
            self.report(id, ObservedInstance::Failed);
            return Ok(());
        }
        let spec = &saved.spec;
        let kind = spec.hypervisor;
        let conn = self.conn(kind)?;
        let prepared = {
            let _using = self.cache.using.read().unwrap();
            self.prepare(spec)
        };
        if let Some(max) = self.cfg.image_cache_max_bytes {
            self.prune_images(max);
        }
        let defined = match prepared {
            Ok(xml) => lv("define", || conn.define_domain_xml(&xml)).map_err(|e| e.to_string()),
            // A guest defined before goes on with that definition (it can still be
            // stopped, started or rebooted); one never defined fails.
            Err(why) => match self.lookup(kind, id)? {
                Some(d) => {
                    tracing::warn!(instance = %id, "its files could not be made again; the guest keeps its definition: {why}");
                    Ok(d)
                }
                None => {
                    self.fail(id, kind, why);
                    return Ok(());
                }
            },
        };
        // Defining again only updates the persistent config; a running guest is untouched.
        let dom = match defined {
            Ok(d) => d,
            // Never take a running guest down because its new definition was refused.
            Err(err) if self.lookup(kind, id).ok().flatten().is_some_and(|d| d.is_active().unwrap_or(false)) => {
                return Err(format!("libvirt refused the new definition of a running guest: {err}"));
            }
            Err(err) => {
                self.fail(id, kind, format!("libvirt refused the domain: {err}"));
                return Ok(());
            }
        };
        let active = dom.is_active().map_err(|e| format!("libvirt: {e}"))?;
        if active && kind != HypervisorKind::Lxc {
            self.sync_live_volumes(id, spec, &dom)?;
        }
        if active {
            self.move_taps(spec);
        }
        let volumes = self.observe_volumes(&dom);
        if let Some(k) = self.known.lock().unwrap().get_mut(id) {
            k.acted_gen = spec.spec_gen;
            k.volumes = volumes;
        }
        match spec.power {
            DesiredPower::Running if active && saved.reboot_done >= spec.reboot_gen => {
                self.report(id, observe(Some(&dom)));
            }
            DesiredPower::Running if active => {
                self.report(id, ObservedInstance::Starting);
                // A reset keeps the QEMU process and restarts the guest at once; LXC has
                // no reset, so the container is started afresh.
                if kind == HypervisorKind::Lxc {
                    let _ = lv("destroy", || dom.destroy());
                    self.start_domain(id, kind, &dom).map_err(|e| format!("restarting the container: {e}"))?;
                } else {
                    lv("reset", || dom.reset()).map_err(|e| format!("resetting the guest: {e}"))?;
                }
                self.mark_rebooted(id, spec.reboot_gen);
                self.report(id, observe(Some(&dom)));
            }
            // Started for this very intent and off now, the host not rebooted meanwhile.
            DesiredPower::Running if !resuming && saved.started_gen.is_some_and(|g| g >= spec.spec_gen) => {
                tracing::info!(instance = %id, "found off after it was started: it powered itself off or was \
                    killed; reported off, not started again");
                self.report(id, ObservedInstance::Off);
            }
            DesiredPower::Running => {
                self.report(id, ObservedInstance::Starting);
                if let Err(err) = self.start_domain(id, kind, &dom) {
                    self.fail(id, kind, format!("the guest did not start: {err}"));
                    return Ok(());
                }
                self.mark_rebooted(id, spec.reboot_gen);
                self.report(id, observe(Some(&dom)));
            }
            DesiredPower::Off if active => {
                self.report(id, ObservedInstance::Stopping);
                // A container is stopped by a signal to its init: libvirt's default for
                // LXC tries /dev/initctl first, and every container stop waited the whole
                // stop timeout and ended destroyed (red team, 2026-12-06); by signal it
                // stops in a third of a second.
                let _ = match kind {
                    HypervisorKind::Lxc => lv("shutdown", || dom.shutdown_flags(virt::sys::VIR_DOMAIN_SHUTDOWN_SIGNAL)),
                    _ => lv("shutdown", || dom.shutdown()),
                };
                if !self.wait_until(&dom, self.cfg.stop_timeout, |a| !a) {
                    tracing::info!(instance = %id, "no ACPI shutdown within {:?}; destroying", self.cfg.stop_timeout);
                    let _ = lv("destroy", || dom.destroy());
                }
                self.report(id, observe(Some(&dom)));
            }
            DesiredPower::Off => self.report(id, ObservedInstance::Off),
        }
        Ok(())
    }

    /// Hot-plugs the volumes a running guest should have and unplugs the others. An
    /// unplug completes when the guest lets go of the device; the poller reports it then.
    fn sync_live_volumes(&self, id: &InstanceId, spec: &InstanceSpec, dom: &Domain) -> Result<()> {
        let live = dom.xml_desc(0).map_err(|e| format!("libvirt: {e}"))?;
        let have = xml::volume_disks(&live);
        let mut used = xml::disk_devs(&live);
        for att in &spec.volumes {
            if att.target.is_none() || have.iter().any(|(v, _, _)| *v == att.volume_id) {
                continue;
            }
            let dev = xml::free_dev(&used).ok_or("no free disk name left (vdb..vdz)")?;
            if let Some(disk) = xml::volume_disk(att, &dev, &self.cfg.initiator) {
                dom.attach_device_flags(&disk, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                    .map_err(|e| format!("attaching volume {}: {e}", att.volume_id))?;
                tracing::info!(instance = %id, volume = %att.volume_id, dev, "volume attached");
                used.push(dev);
            }
        }
        for (vol, dev, disk) in have {
            if !spec.volumes.iter().any(|a| a.volume_id == vol) {
                dom.detach_device_flags(&disk, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                    .map_err(|e| format!("detaching volume {vol}: {e}"))?;
                tracing::info!(instance = %id, volume = %vol, dev, "volume detach requested");
            }
        }
        Ok(())
    }

    fn observe_volumes(&self, dom: &Domain) -> Vec<VolumeId> {
        let flags = if dom.is_active().unwrap_or(false) { 0 } else { virt::sys::VIR_DOMAIN_XML_INACTIVE };
        dom.xml_desc(flags).map(|x| xml::volume_disks(&x).into_iter().map(|(v, _, _)| v).collect()).unwrap_or_default()
    }

    /// Starts a domain. A container's console is a pty: hva attaches right after the
    /// start and copies it into the console log; what the container printed before that
    /// waits in the pty. (libvirt's LXC driver cannot start a container paused.)
    /// Moves a running guest's taps (a container's veth host ends) into `tap_netns`
    /// (idempotent: a device already moved is no longer here).
    fn move_taps(&self, spec: &InstanceSpec) {
        if !self.cfg.taps {
            return;
        }
        let own = std::process::id().to_string();
        let (ns, from) = match (&self.cfg.tap_netns, &self.cfg.taps_from_netns) {
            (_, Some(from)) => (own.as_str(), Some(format!("--net={from}"))),
            (Some(ns), None) => (ns.as_str(), None),
            (None, None) => return,
        };
        // `ip` where the tap is: libvirtd's namespace, or ours.
        let ip_at_tap = |args: &[&str]| {
            if let Some(from) = &from {
                let mut a = vec![from.as_str(), "ip"];
                a.extend_from_slice(args);
                self.tools.run("nsenter", &a)
            } else {
                self.tools.run("ip", args)
            }
        };
        for n in &spec.nics {
            let dev = vdc_schema::bus::vif_device_name(&n.id);
            if ip_at_tap(&["link", "show", "dev", &dev]).is_err() {
                continue;
            }
            match ip_at_tap(&["link", "set", "dev", &dev, "netns", ns]) {
                Ok(_) => {
                    // nwagent sets it up too (it owns the switch side); a failure here
                    // is worth a line, not a failed start.
                    let up = if from.is_some() {
                        self.tools.run("ip", &["link", "set", "dev", &dev, "up"])
                    } else {
                        self.tools.run("ip", &["-n", ns, "link", "set", "dev", &dev, "up"])
                    };
                    if let Err(e) = up {
                        tracing::warn!(instance = %spec.id, dev, "moved tap not set up in {ns}: {e}");
                    }
                }
                Err(e) => tracing::warn!(instance = %spec.id, dev, "tap not moved to {ns}: {e}"),
            }
        }
    }

    fn start_domain(&self, id: &InstanceId, kind: HypervisorKind, dom: &Domain) -> Result<()> {
        if let Some(k) = self.known.lock().unwrap().get_mut(id) {
            k.container = None;
        }
        if kind == HypervisorKind::Lxc {
            self.ready_rootfs(id)?;
        }
        lv("start", || dom.create()).map_err(|e| e.to_string())?;
        if let Some(k) = self.known.lock().unwrap().get_mut(id) {
            k.saved.ran = true;
            k.saved.started_gen = Some(k.saved.spec.spec_gen);
        }
        self.save(id);
        self.after_start(id, kind, dom);
        Ok(())
    }

    /// What a guest needs from the host once it runs: its taps moved, and for a
    /// container its checksum offload off and its console copied.
    fn after_start(&self, id: &InstanceId, kind: HypervisorKind, dom: &Domain) {
        if let Some(spec) = self.known.lock().unwrap().get(id).map(|k| k.saved.spec.clone()) {
            if kind == HypervisorKind::Lxc && self.cfg.taps {
                match dom.id() {
                    Some(controller) => self.container_checksums_off(&spec, controller),
                    None => tracing::warn!(instance = %id, "no container process; checksum offload left on"),
                }
            }
            self.move_taps(&spec);
        }
        if kind == HypervisorKind::Lxc {
            if let Err(e) = self.capture_console(id, kind) {
                tracing::warn!(instance = %id, "console not captured: {e}");
            }
            if let Some(k) = self.known.lock().unwrap().get_mut(id) {
                k.container = dom.id();
            }
        }
    }

    /// Turns off transmit checksum offload on a container's NICs (from inside its network
    /// namespace, entered through its init: the only child of libvirt's controller
    /// process, whose PID is the domain's ID). A veth hands partially checksummed packets
    /// on, and Open vSwitch's userspace datapath forwards them unfixed: DHCP (checksummed
    /// by the client itself) works, TCP to the metadata service does not. QEMU guests get
    /// the same from `<driver><host csum='off'/>`.
    fn container_checksums_off(&self, spec: &InstanceSpec, controller: u32) {
        let children = std::fs::read_to_string(format!("/proc/{controller}/task/{controller}/children"));
        let Some(init) = children.ok().and_then(|c| c.split_whitespace().next().map(str::to_owned)) else {
            tracing::warn!(instance = %spec.id, controller, "container init not found; checksum offload left on");
            return;
        };
        for i in 0..spec.nics.len() {
            let dev = format!("eth{i}");
            if let Err(e) = self.tools.run("nsenter", &["-t", &init, "-n", "ethtool", "-K", &dev, "tx", "off"]) {
                tracing::warn!(instance = %spec.id, dev, "checksum offload left on: {e}");
            }
        }
    }

    /// Copies a container's console into its console log until the container stops.
    fn capture_console(&self, id: &InstanceId, kind: HypervisorKind) -> Result<()> {
        // A connection of its own: a blocking stream read must never stall the calls
        // other instances make on the shared connection.
        let uri = if kind == HypervisorKind::Lxc { &self.cfg.lxc_uri } else { &self.cfg.qemu_uri };
        let conn = Connect::open(Some(uri)).map_err(|e| e.to_string())?;
        let dom = conn.lookup_domain_by_name(&xml::domain_name(id.as_str())).map_err(|e| e.to_string())?;
        let stream = virt::stream::Stream::new(&conn, 0).map_err(|e| e.to_string())?;
        dom.open_console(None, &stream, 0).map_err(|e| e.to_string())?;
        let path = self.dir(id).join("console.log");
        std::thread::spawn(move || {
            let Ok(mut log) = ConsoleLog::open(path, CONSOLE_LOG_MAX) else { return };
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = stream.recv(&mut buf) {
                if n <= 0 || log.write(&buf[..n as usize]).is_err() {
                    break;
                }
            }
            let _ = stream.finish();
            drop(dom);
            drop(conn);
        });
        Ok(())
    }

    fn mark_rebooted(&self, id: &InstanceId, gen: u64) {
        if let Some(k) = self.known.lock().unwrap().get_mut(id) {
            k.saved.reboot_done = k.saved.reboot_done.max(gen);
        }
        self.save(id);
    }

    /// A powered-off guest's root disk flattened into one qcow2 with no backing file
    /// (`instances/<id>/capture-<image>.qcow2`), or a container's root filesystem packed
    /// into a tarball (`capture-<image>.tar.gz`): what an instance of the new image
    /// starts from.
    pub(crate) fn flatten(&self, spec: &CaptureSpec) -> Result<PathBuf> {
        let id = &spec.instance_id;
        let kind = self.known.lock().unwrap().get(id).map(|k| k.saved.spec.hypervisor);
        let kind = kind.ok_or_else(|| format!("no instance {id} on this host"))?;
        if kind == HypervisorKind::Lxc {
            return self.pack_rootfs(id, spec);
        }
        let running = self.lookup(kind, id)?.filter(|d| d.is_active().unwrap_or(false));
        let dir = self.dir(id);
        let disk = dir.join("root.qcow2");
        if !disk.exists() {
            return Err(format!("instance {id} has no root disk on this host"));
        }
        let out = dir.join(format!("capture-{}.qcow2", spec.upload.image_id));
        let _ = std::fs::remove_file(&out);
        if let Some(dom) = running {
            if let Err(e) = self.backup_running(kind, id, &dom, &out) {
                let _ = std::fs::remove_file(&out);
                return Err(e);
            }
            return Ok(out);
        }
        self.tools
            .run("qemu-img", &["convert", "-O", "qcow2", "-f", "qcow2", &host::path(&disk), &host::path(&out)])
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// A container's root filesystem as a tarball of the rules dcmgr checks (device nodes
    /// and sockets left out). A running container is frozen (libvirt suspends its
    /// processes) while it is read and thawed right after: its files as they are at one
    /// instant, as after a power cut. The container's own writes are the host's page
    /// cache already, so nothing is left unflushed.
    fn pack_rootfs(&self, id: &InstanceId, spec: &CaptureSpec) -> Result<PathBuf> {
        let dir = self.dir(id);
        let mut rootfs = dir.join("rootfs");
        if !rootfs.is_dir() {
            return Err(format!("container {id} has no root filesystem on this host"));
        }
        let image = dir.join(rootdisk::IMAGE);
        if image.exists() {
            self.mounts.ensure_mounted(&image, &rootfs)?;
            rootfs = self.mounts.seen(&rootfs)?;
        }
        let out = dir.join(format!("capture-{}.tar.gz", spec.upload.image_id));
        let _ = std::fs::remove_file(&out);
        let running = self.lookup(HypervisorKind::Lxc, id)?.filter(|d| d.is_active().unwrap_or(false));
        if let Some(dom) = &running {
            lv("suspend", || dom.suspend()).map_err(|e| format!("freezing the container for its capture: {e}"))?;
        }
        // In the container's terms when it runs in a user namespace (a root filesystem not
        // shifted yet is the host root's: as it is).
        let map = self.shifting().filter(|m| vdc_bus::idmap::is_shifted(&rootfs, m).unwrap_or(false));
        let packed = vdc_bus::rootfs::pack(&rootfs, &out, map);
        if let Some(dom) = &running {
            if let Err(e) = lv("resume", || dom.resume()) {
                tracing::error!(instance = %id, "thawing the container after its capture: {e}");
            }
        }
        match packed {
            Ok(p) => {
                tracing::info!(instance = %id, entries = p.entries, skipped = p.skipped, live = running.is_some(), "root filesystem packed");
                Ok(out)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&out);
                Err(format!("packing the root filesystem of container {id}: {e}"))
            }
        }
    }

    /// A running guest's root disk as it is at one instant (crash-consistent, as after a
    /// power cut): a libvirt push backup of `vda` into `out`, which QEMU writes flattened
    /// while the guest runs on; its other disks (volumes, the seed) are left out.
    fn backup_running(&self, kind: HypervisorKind, id: &InstanceId, dom: &Domain, out: &Path) -> Result<()> {
        let live = lv("xml_desc", || dom.xml_desc(0)).map_err(|e| format!("reading the guest's XML: {e}"))?;
        let mut disks = format!(
            "<disk name='vda' type='file'><target file='{}'/><driver type='qcow2'/></disk>",
            xml::esc(&host::path(out))
        );
        for dev in backup_skipped(&live) {
            disks.push_str(&format!("<disk name='{}' backup='no'/>", xml::esc(&dev)));
        }
        let doc = self.dir(id).join("backup.xml");
        std::fs::write(&doc, format!("<domainbackup mode='push'><disks>{disks}</disks></domainbackup>"))
            .map_err(|e| format!("{}: {e}", doc.display()))?;
        let uri = if kind == HypervisorKind::Lxc { &self.cfg.lxc_uri } else { &self.cfg.qemu_uri };
        let name = xml::domain_name(id.as_str());
        let begun = self.tools.run("virsh", &["-c", uri, "backup-begin", &name, "--backupxml", &host::path(&doc)]);
        let _ = std::fs::remove_file(&doc);
        begun.map_err(|e| format!("starting the backup of the running disk: {e}"))?;
        // The backup is the domain's job until it ends; then its completed stats tell how.
        let deadline = Instant::now() + BACKUP_TIMEOUT;
        loop {
            let job = lv("job_info", || dom.job_info()).map_err(|e| format!("following the backup: {e}"))?;
            if job.r#type == virt::sys::VIR_DOMAIN_JOB_NONE as i32 {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.tools.run("virsh", &["-c", uri, "domjobabort", &name]);
                return Err(format!("the backup of the running disk took more than {BACKUP_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let done = lv("job_stats", || dom.job_stats(virt::sys::VIR_DOMAIN_JOB_STATS_COMPLETED))
            .map_err(|e| format!("reading how the backup ended: {e}"))?;
        if done.r#type != virt::sys::VIR_DOMAIN_JOB_COMPLETED as i32 || !out.exists() {
            return Err(format!("the backup of the running disk did not complete (libvirt job type {})", done.r#type));
        }
        Ok(())
    }

    fn remove(&self, id: &InstanceId, kind: Option<HypervisorKind>, spec_gen: u64) -> Result<()> {
        // An instance this hva does not know is looked for under both drivers; a driver
        // this host lacks (no LXC) holds none of it, as long as another one answered.
        let kinds = kind.map(|k| vec![k]).unwrap_or_else(|| vec![HypervisorKind::Qemu, HypervisorKind::Lxc]);
        let mut found = Vec::new();
        let mut unanswered = None;
        for &k in &kinds {
            match self.lookup(k, id) {
                Ok(d) => found.push((k, d)),
                Err(e) => unanswered = Some(e),
            }
        }
        if let Some(e) = unanswered.filter(|_| kind.is_some() || found.is_empty()) {
            return Err(e);
        }
        for (k, d) in found {
            if let Some(d) = d {
                if d.is_active().unwrap_or(false) {
                    lv("destroy", || d.destroy()).map_err(|e| format!("destroying the guest: {e}"))?;
                }
                undefine(&d, k).map_err(|e| format!("undefining the guest: {e}"))?;
            }
        }
        let dir = self.dir(id);
        self.unmount_root(id)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        self.known.lock().unwrap().remove(id);
        self.sink.report(ObjectReport::Instance(InstanceReport {
            id: id.clone(),
            spec_gen,
            state: ObservedInstance::Absent,
            reboot_gen: 0,
            volumes: vec![],
            reason: None,
        }));
        Ok(())
    }

    /// Sets up again a container libvirt started anew under a new controller (it
    /// rebooted itself: `on_reboot=restart`); before, its console stopped being copied
    /// and its new devices were left as libvirt made them.
    fn container_restarted(&self, id: &InstanceId, dom: &Domain) {
        let now = dom.id();
        let again = match self.known.lock().unwrap().get_mut(id) {
            Some(k) if k.container.is_some() && now.is_some() && k.container != now => true,
            Some(k) => {
                k.container = k.container.or(now);
                false
            }
            None => false,
        };
        if again {
            tracing::info!(instance = %id, controller = ?now, "the container restarted itself: set up again");
            self.after_start(id, HypervisorKind::Lxc, dom);
        }
    }

    /// Reports every instance whose observed state changed (or all with `force`).
    fn poll(&self, force: bool, busy: &dyn Fn(&InstanceId) -> bool) {
        // Volumes are read from the domain XML only for guests that have or want some:
        // the poll runs every half second for every guest.
        let ids: Vec<(InstanceId, HypervisorKind, Option<ObservedInstance>, bool, bool)> = self
            .known
            .lock()
            .unwrap()
            .iter()
            .map(|(id, k)| {
                let disks = !k.saved.spec.volumes.is_empty() || !k.volumes.is_empty();
                (id.clone(), k.saved.spec.hypervisor, k.last, disks, k.resuming)
            })
            .collect();
        for (id, kind, last, disks, resuming) in ids {
            if last == Some(ObservedInstance::Failed) {
                if force {
                    self.report(&id, ObservedInstance::Failed);
                }
                continue;
            }
            if !force && busy(&id) {
                continue;
            }
            match self.lookup(kind, &id) {
                Ok(dom) => {
                    // Read once: the poll runs every half second for every guest.
                    let state = domain_state(dom.as_ref());
                    let paused = matches!(state, Some(Some(Enum::Known(DomainState::Paused))));
                    let now = observed(state);
                    if resuming && now == ObservedInstance::Off {
                        continue;
                    }
                    if let (HypervisorKind::Lxc, ObservedInstance::Running, Some(d)) = (kind, now, &dom) {
                        self.container_restarted(&id, d);
                        // Only a capture freezes a container, under the instance's lock,
                        // which this poll found free: one that did not end (hva stopped
                        // mid-capture) left it frozen. (`force` polls do not know the lock.)
                        if !force && paused {
                            tracing::warn!(instance = %id, "thawing a container a capture left frozen");
                            if let Err(e) = lv("resume", || d.resume()) {
                                tracing::warn!(instance = %id, "thawing: {e}");
                            }
                        }
                    }
                    let vols = match &dom {
                        Some(d) if disks => self.observe_volumes(d),
                        _ => vec![],
                    };
                    let vols_changed = {
                        let mut known = self.known.lock().unwrap();
                        match known.get_mut(&id) {
                            Some(k) if k.volumes != vols => {
                                k.volumes = vols;
                                true
                            }
                            _ => false,
                        }
                    };
                    if force || vols_changed || Some(now) != last {
                        self.report(&id, now);
                    }
                }
                Err(e) => tracing::warn!(instance = %id, "cannot read state: {e}"),
            }
        }
    }
}

impl LibvirtHypervisor {
    pub fn new(cfg: LibvirtConfig, sink: ReportSink) -> Self {
        Self::with_runner(cfg, sink, host::system())
    }

    /// [`LibvirtHypervisor::new`] running qemu-img, tar, cp, ip and genisoimage through
    /// `tools`.
    pub fn with_runner(cfg: LibvirtConfig, sink: ReportSink, tools: host::Runner) -> Self {
        let cache = image::ImageCache {
            dir: cfg.data_dir.join("images"),
            builtin_dir: cfg.builtin_images.clone(),
            tools: tools.clone(),
            using: Default::default(),
        };
        let mounts = rootdisk::Mounts::new(tools.clone(), None);
        let mut known = HashMap::new();
        let boot = boot_id();
        // Guests this host had before a restart: known again, never touched.
        if let Ok(entries) = std::fs::read_dir(cfg.data_dir.join("instances")) {
            for e in entries.flatten() {
                let state = e.path().join("state.json");
                if let Some(saved) = std::fs::read(&state).ok().and_then(|b| serde_json::from_slice::<Saved>(&b).ok()) {
                    let acted_gen = saved.spec.spec_gen;
                    let resuming = saved.spec.power == DesiredPower::Running && saved.boot_id != boot;
                    if resuming {
                        tracing::info!(instance = %saved.spec.id, "saved in an earlier boot of the host: if found off, \
                            it is started again by dcmgr's next ensure, not taken as halted");
                    }
                    let k = Known {
                        saved,
                        last: None,
                        reason: None,
                        acted_gen,
                        volumes: vec![],
                        resuming,
                        container: None,
                    };
                    known.insert(k.saved.spec.id.clone(), k);
                }
            }
        }
        let inner = Arc::new(Inner {
            cfg,
            sink,
            tools,
            cache,
            mounts,
            conns: Default::default(),
            known: Mutex::new(known),
            locks: Default::default(),
            capturing: Default::default(),
            boot_id: boot,
            stopped: Default::default(),
        });
        // Containers that kept running while hva was away: resume copying their console.
        let lxc: Vec<InstanceId> = inner
            .known
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, k)| k.saved.spec.hypervisor == HypervisorKind::Lxc)
            .map(|(id, _)| id.clone())
            .collect();
        let reattach = inner.clone();
        tokio::task::spawn_blocking(move || {
            for id in lxc {
                let Some(d) = reattach.lookup(HypervisorKind::Lxc, &id).ok().flatten() else { continue };
                if d.is_active().unwrap_or(false) {
                    let _ = reattach.capture_console(&id, HypervisorKind::Lxc);
                    if let Some(k) = reattach.known.lock().unwrap().get_mut(&id) {
                        k.container = d.id();
                    }
                }
            }
        });
        let poller = inner.clone();
        let locks = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poller.cfg.poll_interval).await;
                if poller.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let p = poller.clone();
                let l = locks.clone();
                let busy =
                    move |id: &InstanceId| l.locks.lock().unwrap().get(id).is_some_and(|m| m.try_lock().is_err());
                let _ = tokio::task::spawn_blocking(move || p.poll(false, &busy)).await;
            }
        });
        LibvirtHypervisor { inner, converging: Coalescer::default(), work: Default::default() }
    }

    fn known_gen(&self, id: &InstanceId) -> u64 {
        self.inner.known.lock().unwrap().get(id).map_or(0, |k| k.saved.spec.spec_gen)
    }

    fn lock(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.lock().unwrap().entry(id.clone()).or_default().clone()
    }

    /// The serial console log of an instance.
    pub fn console_path(&self, id: &InstanceId) -> PathBuf {
        self.inner.dir(id).join("console.log")
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    /// Stops polling and reporting, as the end of the process would (tests that crash
    /// an hva in-process and start another on the same data directory).
    pub fn stop(&self) {
        self.inner.stopped.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[async_trait]
impl Hypervisor for LibvirtHypervisor {
    async fn ensure_instance(&self, spec: InstanceSpec) -> std::result::Result<(), AgentError> {
        let id = spec.id.clone();
        {
            let mut known = self.inner.known.lock().unwrap();
            match known.get_mut(&id) {
                Some(k) if k.saved.spec.spec_gen > spec.spec_gen => return Ok(()),
                Some(k) if k.last == Some(ObservedInstance::Failed) && k.saved.spec == spec => {
                    // Same intent that already failed: say so again rather than retry forever.
                    drop(known);
                    self.inner.report(&id, ObservedInstance::Failed);
                    return Ok(());
                }
                Some(k) => {
                    k.saved.spec = spec.clone();
                    k.reason = None;
                    if k.last == Some(ObservedInstance::Failed) {
                        k.last = None;
                    }
                }
                None => {
                    let reboot_done = spec.reboot_gen;
                    let k = Known {
                        saved: Saved { spec, reboot_done, boot_id: None, ran: false, started_gen: None },
                        last: None,
                        reason: None,
                        acted_gen: 0,
                        volumes: vec![],
                        resuming: false,
                        container: None,
                    };
                    known.insert(id.clone(), k);
                }
            }
        }
        self.inner.save(&id);
        let gen = self.known_gen(&id);
        let (inner, lock) = (self.inner.clone(), self.lock(&id));
        self.converging.submit(id.clone(), Converge(gen), move |_| {
            let (inner, lock, id) = (inner.clone(), lock.clone(), id.clone());
            async move {
                let _guard = lock.lock().await;
                let i = inner.clone();
                let id2 = id.clone();
                match tokio::task::spawn_blocking(move || i.converge(&id2)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(instance = %id, "ensure failed, will retry on the next ensure: {e}"),
                    Err(e) => tracing::error!(instance = %id, "ensure panicked: {e}"),
                }
            }
        });
        Ok(())
    }

    async fn ensure_instance_absent(&self, id: InstanceId, spec_gen: u64) -> std::result::Result<(), AgentError> {
        let kind = self.inner.known.lock().unwrap().get(&id).map(|k| k.saved.spec.hypervisor);
        let (inner, lock) = (self.inner.clone(), self.lock(&id));
        self.work.spawn(async move {
            let _guard = lock.lock().await;
            let i = inner.clone();
            let id2 = id.clone();
            match tokio::task::spawn_blocking(move || i.remove(&id2, kind, spec_gen)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(instance = %id, "removal failed, will retry: {e}"),
                Err(e) => tracing::error!(instance = %id, "removal panicked: {e}"),
            }
            inner.locks.lock().unwrap().remove(&id);
        });
        Ok(())
    }

    async fn report_all(&self) -> std::result::Result<(), AgentError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.poll(true, &|_| false))
            .await
            .map_err(|e| AgentError::Driver(e.to_string()))
    }

    async fn capture_instance(&self, spec: CaptureSpec) -> std::result::Result<(), AgentError> {
        if !self.inner.capturing.lock().unwrap().insert(spec.upload.image_id.clone()) {
            return Ok(());
        }
        let (inner, lock) = (self.inner.clone(), self.lock(&spec.instance_id));
        self.work.spawn(async move {
            {
                // Held through the upload: no start or removal touches the disk meanwhile.
                let _guard = lock.lock().await;
                let (i, s) = (inner.clone(), spec.clone());
                let flat = tokio::task::spawn_blocking(move || i.flatten(&s))
                    .await
                    .unwrap_or_else(|e| Err(format!("capture panicked: {e}")));
                let outcome = match &flat {
                    Ok(file) => vdc_bus::blob::upload(&spec.upload, file).await.map_err(|e| e.to_string()),
                    Err(why) => vdc_bus::blob::capture_failed(&spec.upload, why).await.map_err(|e| e.to_string()),
                };
                if let Ok(file) = &flat {
                    let _ = std::fs::remove_file(file);
                }
                match outcome {
                    Ok(()) => {
                        tracing::info!(instance = %spec.instance_id, image = %spec.upload.image_id, "capture sent")
                    }
                    Err(e) => {
                        tracing::warn!(instance = %spec.instance_id, image = %spec.upload.image_id, "capture: {e}")
                    }
                }
            }
            inner.capturing.lock().unwrap().remove(&spec.upload.image_id);
        });
        Ok(())
    }

    async fn console_log(&self, id: InstanceId) -> std::result::Result<String, AgentError> {
        if !self.inner.known.lock().unwrap().contains_key(&id) {
            return Err(AgentError::NotFound(format!("no instance {id} on this host")));
        }
        let path = self.console_path(&id);
        match tokio::fs::read(&path).await {
            // Keep the answer bounded: the last 256 KiB.
            Ok(b) => Ok(String::from_utf8_lossy(&b[b.len().saturating_sub(256 << 10)..]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(AgentError::Driver(format!("{}: {e}", path.display()))),
        }
    }

    async fn drain(&self) {
        self.converging.drain().await;
        self.work.close();
        self.work.wait().await;
    }
}

/// How long a running guest's disk copy may take before the capture fails.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// The target devices of a domain's disks other than its root (`vda`): a push backup
/// leaves them out.
fn backup_skipped(domain_xml: &str) -> Vec<String> {
    domain_xml
        .split("<disk ")
        .skip(1)
        .filter_map(|d| d.split("</disk>").next())
        .filter_map(|d| d.split("<target dev='").nth(1)?.split('\'').next().map(str::to_owned))
        .filter(|dev| dev != "vda")
        .collect()
}

#[cfg(test)]
mod tests {
    //! What the driver does on the host besides libvirt (files, overlays, seeds, taps),
    //! on a fake runner: no libvirt connection is made.

    use super::*;
    use vdc_schema::bus::{vif_device_name, ImageSpec, NicSpec};

    #[test]
    fn a_backup_leaves_out_every_disk_but_the_root() {
        let dom = "<domain><devices>\
            <disk type='file' device='disk'><source file='/r.qcow2'/><target dev='vda' bus='virtio'/></disk>\
            <disk type='file' device='cdrom'><source file='/seed.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>\
            <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>\
            <interface type='ethernet'><target dev='vt1'/></interface></devices></domain>";
        assert_eq!(backup_skipped(dom), ["hdc", "vdb"]);
    }

    fn inner(dir: &Path, tools: &Arc<host::FakeRunner>, tap_netns: Option<&str>) -> Inner {
        // What qemu-img would leave: the file it names last.
        tools.creates_last(&["qemu-img", "create"], b"");
        let cfg = LibvirtConfig {
            data_dir: dir.to_owned(),
            builtin_images: None,
            qemu_uri: "test:///default".into(),
            lxc_uri: "test:///default".into(),
            stop_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            bridge: None,
            initiator: "iqn.2026-11.io.vdc:hn-a".into(),
            taps: true,
            tap_netns: tap_netns.map(str::to_owned),
            taps_from_netns: None,
            image_cache_max_bytes: None,
            idmap: Some(vdc_bus::idmap::IdMap::DEFAULT),
        };
        Inner {
            cache: image::ImageCache {
                dir: dir.join("images"),
                builtin_dir: None,
                tools: tools.clone(),
                using: Default::default(),
            },
            mounts: rootdisk::Mounts::new(tools.clone(), Some(4242)),
            tools: tools.clone(),
            cfg,
            sink: ReportSink::open(None).unwrap(),
            conns: Default::default(),
            known: Default::default(),
            locks: Default::default(),
            capturing: Default::default(),
            boot_id: Some("this-boot".into()),
            stopped: Default::default(),
        }
    }

    fn spec(id: &str, hypervisor: HypervisorKind, format: ImageFormat, source: &str, nics: usize) -> InstanceSpec {
        // Another ID than `img-x`, which a test fetches as an image no instance uses.
        let image = ImageSpec { id: "img-a".parse().unwrap(), ..crate::testing::image(format, source) };
        InstanceSpec {
            nics: (0..nics)
                .map(|i| NicSpec {
                    id: vdc_schema::id::VifId::generate(),
                    network_id: vdc_schema::id::NetworkId::generate(),
                    mac: vdc_schema::net::MacAddr::new([0x52, 0x54, 0, 0, 0, i as u8]),
                    ip: vdc_schema::net::Ipv4Addr::new(10, 0, 0, 10 + i as u8),
                    prefix_len: 24,
                    gateway: vdc_schema::net::Ipv4Addr::new(10, 0, 0, 1),
                    vni: 7,
                })
                .collect(),
            ..crate::testing::spec(id, hypervisor, image)
        }
    }

    #[test]
    fn an_unknown_instance_is_removed_on_a_host_without_lxc_but_not_without_libvirt() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        let mut lv = inner(tmp.path(), &f, None);
        lv.cfg.lxc_uri = "vdc-no-such-driver:///system".into();
        let id: InstanceId = "i-gone".parse().unwrap();
        std::fs::create_dir_all(lv.dir(&id)).unwrap();
        lv.remove(&id, None, 3).unwrap();
        assert!(!lv.dir(&id).exists());
        assert!(matches!(
            lv.sink.newest("i-gone"),
            Some(ObjectReport::Instance(InstanceReport { state: ObservedInstance::Absent, spec_gen: 3, .. }))
        ));
        // No driver answers: nothing can be said of its domains, so nothing is removed.
        lv.cfg.qemu_uri = "vdc-no-such-driver:///system".into();
        lv.conns.lock().unwrap().clear();
        std::fs::create_dir_all(lv.dir(&id)).unwrap();
        assert!(lv.remove(&id, None, 4).is_err());
        assert!(lv.dir(&id).exists());
    }

    /// The pruner keeps what guests boot: the base of a disk (checked elsewhere) and a
    /// kernel and initrd named by a definition. Before, a kernel fetched for a start
    /// could be pruned before the start, which then failed.
    #[test]
    fn the_cache_keeps_the_kernels_guests_boot() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        let lv = inner(tmp.path(), &f, None);
        let (kernel, initrd, other) = (tmp.path().join("vmlinuz"), tmp.path().join("initrd"), tmp.path().join("x"));
        std::fs::write(&kernel, b"a kernel").unwrap();
        std::fs::write(&initrd, b"an initrd").unwrap();
        std::fs::write(&other, b"an image no guest uses").unwrap();
        let mut s = spec("i-k", HypervisorKind::Qemu, ImageFormat::Kernel, kernel.to_str().unwrap(), 0);
        s.image.initrd = Some(initrd.display().to_string());
        lv.prepare(&s).unwrap();
        let unused = lv.cache.fetch("img-x", other.to_str().unwrap(), None).unwrap();
        let cached: Vec<PathBuf> =
            [&kernel, &initrd].iter().map(|p| lv.cache.dir.join(image::sha256_file(p).unwrap())).collect();
        assert!(cached.iter().all(|p| p.exists()));
        lv.prune_images(0);
        assert!(cached.iter().all(|p| p.exists()), "the kernel and initrd a guest boots stay");
        assert!(!unused.exists(), "what no guest uses goes");
    }

    #[test]
    fn a_guest_saved_before_it_was_recorded_whether_it_ran_is_taken_to_have_run() {
        let s = spec("i-a", HypervisorKind::Qemu, ImageFormat::Qcow2, "/x", 0);
        let saved = Saved { spec: s, reboot_done: 0, boot_id: None, ran: false, started_gen: None };
        let mut v = serde_json::to_value(&saved).unwrap();
        assert!(!serde_json::from_value::<Saved>(v.clone()).unwrap().ran);
        // An older hva's state.json: a failure must not take that guest's disk.
        v.as_object_mut().unwrap().remove("ran");
        assert!(serde_json::from_value::<Saved>(v).unwrap().ran);
    }

    #[test]
    fn a_disk_guest_gets_an_overlay_on_the_cached_image_and_a_seed() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("disk.qcow2");
        std::fs::write(&src, b"a qcow2, as far as this test cares").unwrap();
        let sum = image::sha256_file(&src).unwrap();
        let f = host::FakeRunner::new();
        let lv = inner(tmp.path(), &f, None);
        let s = spec("i-a", HypervisorKind::Qemu, ImageFormat::Qcow2, src.to_str().unwrap(), 0);
        let xml = lv.prepare(&s).unwrap();
        let (t, i) = (tmp.path().display(), format!("{}/instances/i-a", tmp.path().display()));
        assert_eq!(
            f.lines(),
            [
                format!("qemu-img create -q -f qcow2 -b {t}/images/{sum} -F qcow2 {i}/root.partial"),
                format!("genisoimage -quiet -output {i}/seed.iso -volid cidata -joliet -rock {i}/seed/user-data {i}/seed/meta-data"),
            ]
        );
        assert!(xml.contains(&format!("{i}/root.qcow2")) && xml.contains(&format!("{i}/seed.iso")), "{xml}");
        let meta = std::fs::read_to_string(format!("{i}/seed/meta-data")).unwrap();
        assert!(meta.starts_with("instance-id: i-a\nlocal-hostname: web1\n"), "{meta}");
    }

    #[test]
    fn a_failed_seed_fails_the_preparation_with_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("disk.raw");
        std::fs::write(&src, b"raw").unwrap();
        let f = host::FakeRunner::new();
        f.fail(&["genisoimage"], "exit status: 1: genisoimage: No space left on device");
        let lv = inner(tmp.path(), &f, None);
        let e = lv.prepare(&spec("i-a", HypervisorKind::Kvm, ImageFormat::Raw, src.to_str().unwrap(), 0)).unwrap_err();
        assert!(e.starts_with(r#"genisoimage ["-quiet", "-output", "#), "{e}");
        assert!(e.ends_with("failed: exit status: 1: genisoimage: No space left on device"), "{e}");
        assert!(f.lines()[0].contains(" -F raw "), "the overlay names the base's format: {:?}", f.lines());
        // QEMU, its own user, opens its files by path; no other user lists them.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tmp.path().join("instances/i-a")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o711);
    }

    #[test]
    fn a_container_from_a_directory_gets_its_own_copy_once() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        f.answer(&["cp", "-a"], |argv| std::fs::create_dir(&argv[3]).map(|_| String::new()).map_err(|e| e.to_string()));
        let lv = inner(tmp.path(), &f, None);
        let s = spec("i-b", HypervisorKind::Lxc, ImageFormat::Dir, "/srv/rootfs", 0);
        let xml = lv.prepare(&s).unwrap();
        let rootfs = format!("{}/instances/i-b/rootfs", tmp.path().display());
        assert_eq!(f.lines(), [format!("cp -a /srv/rootfs {rootfs}.partial")]);
        assert!(xml.contains(&rootfs), "{xml}");
        f.clear();
        lv.prepare(&s).unwrap();
        assert!(f.calls().is_empty(), "copied once: {:?}", f.lines());
        let tar = spec("i-c", HypervisorKind::Lxc, ImageFormat::Raw, "/srv/disk.img", 0);
        assert!(lv.prepare(&tar).unwrap_err().contains("needs a tar or dir image"));
        assert!(f.calls().is_empty());
        // No other host user lists a container's files.
        let mode = |id: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(tmp.path().join("instances").join(id)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode("i-b"), 0o711);
        assert_eq!(mode(""), 0o711, "nor lists the instances");
    }

    #[test]
    fn a_containers_console_log_is_rotated_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        let mut log = ConsoleLog::open(path.clone(), 1000).unwrap();
        for _ in 0..25 {
            log.write(&[b'A'; 100]).unwrap();
        }
        let kept = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert_eq!((kept(&path), kept(&tmp.path().join("console.log.0"))), (500, 1000));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Opened again (a restarted container), it goes on counting what is there.
        let mut log = ConsoleLog::open(path.clone(), 1000).unwrap();
        log.write(&[b'B'; 600]).unwrap();
        assert_eq!(kept(&path), 600);
    }

    #[test]
    fn a_sized_container_gets_a_file_system_once_and_an_older_one_keeps_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        // An image whose /lost+found is a file: mkfs refuses such a tree.
        f.answer(&["cp", "-a"], |argv| {
            std::fs::create_dir(&argv[3])
                .and_then(|_| std::fs::write(Path::new(&argv[3]).join("lost+found"), b"x"))
                .map(|_| String::new())
                .map_err(|e| e.to_string())
        });
        f.answer(&["mkfs.ext4"], |argv| match Path::new(&argv[argv.len() - 2]).join("lost+found").exists() {
            true => Err("__populate_fs: Ext2 file already exists while writing file \"lost+found\"".into()),
            false => Ok(String::new()),
        });
        f.fail(&["findmnt"], "exit status: 1").ok(&["findmnt"], "mounted\n");
        let lv = inner(tmp.path(), &f, None);
        let mut s = spec("i-b", HypervisorKind::Lxc, ImageFormat::Dir, "/srv/rootfs", 0);
        s.root_disk_size = Some(64 << 20);
        let dir = tmp.path().join("instances/i-b");
        lv.prepare(&s).unwrap();
        let lines = f.lines();
        assert_eq!(lines[0], format!("cp -a /srv/rootfs {}/rootfs.partial", dir.display()));
        // Its root owned by the container's root (host uid 100000), in the daemon's namespace.
        let mkfs = format!("mkfs.ext4 -q -F -m 0 -E root_owner=100000:100000 -d {}/rootfs.tree", dir.display());
        assert!(lines[1].starts_with(&mkfs), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("nsenter --mount=/proc/4242/ns/mnt -- mount")), "{lines:?}");
        assert!(dir.join("root.ext4").exists() && dir.join("rootfs").is_dir() && !dir.join("rootfs.tree").exists());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("root.ext4")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the tenant's files are the host root's to read only");
        f.clear();
        lv.prepare(&s).unwrap();
        assert!(f.lines().iter().all(|l| l.starts_with("findmnt")), "made once: {:?}", f.lines());
        // A container an older hva made (a directory, no file system) keeps its directory.
        let mut old = spec("i-c", HypervisorKind::Lxc, ImageFormat::Dir, "/srv/rootfs", 0);
        lv.prepare(&old).unwrap();
        f.clear();
        old.root_disk_size = Some(64 << 20);
        lv.prepare(&old).unwrap();
        assert!(f.calls().is_empty(), "{:?}", f.lines());
        assert!(!tmp.path().join("instances/i-c/root.ext4").exists());
    }

    #[test]
    fn taps_that_exist_move_into_the_host_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        let s = spec("i-a", HypervisorKind::Qemu, ImageFormat::Qcow2, "/x", 2);
        let (d0, d1) = (vif_device_name(&s.nics[0].id), vif_device_name(&s.nics[1].id));
        // The second tap is gone (moved already, or its guest stopped).
        f.fail(&["ip", "link", "show", "dev", &d1], "Device does not exist");
        inner(tmp.path(), &f, Some("h1")).move_taps(&s);
        assert_eq!(
            f.lines(),
            [
                format!("ip link show dev {d0}"),
                format!("ip link set dev {d0} netns h1"),
                format!("ip -n h1 link set dev {d0} up"),
                format!("ip link show dev {d1}"),
            ]
        );
        // A container's veth host end moves the same way; without a namespace nothing moves.
        f.clear();
        let c = spec("i-b", HypervisorKind::Lxc, ImageFormat::Dir, "/x", 1);
        let dc = vif_device_name(&c.nics[0].id);
        inner(tmp.path(), &f, Some("h1")).move_taps(&c);
        assert_eq!(f.lines()[1], format!("ip link set dev {dc} netns h1"));
        f.clear();
        inner(tmp.path(), &f, None).move_taps(&s);
        assert!(f.calls().is_empty(), "{:?}", f.lines());
    }
}
