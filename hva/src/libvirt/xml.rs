//! libvirt domain XML for vdc instances, written with plain string building: the documents
//! are small and fixed in shape, and every value from outside goes through [`esc`].

use std::path::Path;
use vdc_schema::bus::{InstanceSpec, VolumeAttachment, VolumeTarget};
use vdc_schema::id::VolumeId;
use vdc_schema::HypervisorKind;

/// Escapes text for XML attribute values and content.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The libvirt name of an instance's domain.
pub fn domain_name(id: &str) -> String {
    format!("vdc-{id}")
}

/// A UUID derived from the instance ID, so that defining the domain again updates it
/// rather than clashing with it.
pub fn domain_uuid(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(id.as_bytes());
    let x: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

/// Where the pieces of one instance live on the host.
pub struct Layout<'a> {
    pub kernel: Option<&'a Path>,
    pub initrd: Option<&'a Path>,
    pub root_disk: Option<&'a Path>,
    pub seed_iso: Option<&'a Path>,
    pub rootfs: Option<&'a Path>,
    pub console_log: &'a Path,
    pub bridge: Option<&'a str>,
    /// NICs as taps for nwagent to plug (instead of `bridge`).
    pub taps: bool,
    /// This host's iSCSI initiator name.
    pub initiator: &'a str,
    /// UEFI firmware, for disk images whose boot mode is `uefi`.
    pub firmware: Option<Firmware<'a>>,
    /// A container's user namespace.
    pub idmap: Option<&'a vdc_bus::idmap::IdMap>,
}

/// OVMF as a pflash pair: the shared read-only code and this guest's own variable store,
/// made by libvirt from the template on first start.
pub struct Firmware<'a> {
    pub code: &'a Path,
    pub vars_template: &'a Path,
    pub nvram: &'a Path,
}

/// The disk of one attached volume, or None while sta has not exported it yet. The
/// volume ID is the disk's serial: the guest finds it in /sys/block/*/serial (virtio-blk
/// serials hold 20 bytes; `vol-` IDs are 19).
pub fn volume_disk(att: &VolumeAttachment, dev: &str, initiator: &str) -> Option<String> {
    let tail =
        format!("<target dev='{}' bus='virtio'/><serial>{}</serial></disk>", esc(dev), esc(att.volume_id.as_str()));
    match att.target.as_ref()? {
        VolumeTarget::Iscsi { portal, iqn, lun } => {
            let (host, port) = portal.rsplit_once(':').unwrap_or((portal, "3260"));
            Some(format!(
                "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>\
<source protocol='iscsi' name='{}/{lun}'><host name='{}' port='{}'/><initiator><iqn name='{}'/></initiator></source>{tail}",
                esc(iqn),
                esc(host),
                esc(port),
                esc(initiator)
            ))
        }
        VolumeTarget::Local { path } => Some(format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/><source file='{}'/>{tail}",
            esc(path)
        )),
    }
}

/// The volume disks in a domain's XML: (volume, target dev, the `<disk>` element).
pub fn volume_disks(domain_xml: &str) -> Vec<(VolumeId, String, String)> {
    let mut out = vec![];
    let mut rest = domain_xml;
    while let Some(start) = rest.find("<disk ") {
        let Some(len) = rest[start..].find("</disk>") else { break };
        let disk = &rest[start..start + len + "</disk>".len()];
        rest = &rest[start + len..];
        let serial = between(disk, "<serial>", "</serial>");
        let dev = between(disk, "<target dev='", "'");
        if let (Some(Ok(id)), Some(dev)) = (serial.map(str::parse::<VolumeId>), dev) {
            out.push((id, dev.to_owned(), disk.to_owned()));
        }
    }
    out
}

/// The kernel and initrd a domain's XML boots (none for a disk or a container).
pub fn booted_files(domain_xml: &str) -> Vec<String> {
    [("<kernel>", "</kernel>"), ("<initrd>", "</initrd>")]
        .iter()
        .filter_map(|(open, close)| between(domain_xml, open, close))
        .map(|p| p.replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
        .collect()
}

/// Every `<target dev=…>` of a domain's disks.
pub fn disk_devs(domain_xml: &str) -> Vec<String> {
    domain_xml.split("<target dev='").skip(1).filter_map(|t| t.split('\'').next()).map(str::to_owned).collect()
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let from = s.find(open)? + open.len();
    let len = s[from..].find(close)?;
    Some(&s[from..from + len])
}

/// The first free virtio disk name from vdb on (vda is the root disk).
pub fn free_dev(used: &[String]) -> Option<String> {
    (b'b'..=b'z').map(|c| format!("vd{}", c as char)).find(|d| !used.contains(d))
}

fn interfaces(spec: &InstanceSpec, bridge: Option<&str>, taps: bool) -> String {
    if taps {
        // A tap named for the interface, attached to nothing: nwagent plugs it into Open
        // vSwitch by that name. No checksum offload: OVS's userspace datapath passes
        // partial checksums on unfixed. MTU leaves room for the VXLAN header.
        return spec
            .nics
            .iter()
            .map(|n| {
                format!(
                    "<interface type='ethernet'><mac address='{}'/><target dev='{}'/><model type='virtio'/>\
<driver name='qemu'><host csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/><guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/></driver>\
<mtu size='1450'/></interface>",
                    n.mac,
                    esc(&vdc_schema::bus::vif_device_name(&n.id))
                )
            })
            .collect();
    }
    let Some(br) = bridge else { return String::new() };
    spec.nics
        .iter()
        .map(|n| {
            format!(
                "<interface type='bridge'><source bridge='{}'/><mac address='{}'/><model type='virtio'/></interface>",
                esc(br),
                n.mac
            )
        })
        .collect()
}

/// A KVM or QEMU (TCG) domain: direct kernel boot or a qcow2 root disk, a NoCloud seed,
/// the serial console in a file.
pub fn qemu_domain(spec: &InstanceSpec, l: &Layout<'_>) -> String {
    let kind = if spec.hypervisor == HypervisorKind::Kvm { "kvm" } else { "qemu" };
    let mut os = String::from("<type arch='x86_64' machine='pc'>hvm</type>");
    if let Some(k) = l.kernel {
        os.push_str(&format!("<kernel>{}</kernel>", esc(&k.display().to_string())));
        if let Some(i) = l.initrd {
            os.push_str(&format!("<initrd>{}</initrd>", esc(&i.display().to_string())));
        }
        // A disk image booted by kernel_id takes that kernel image's command line.
        let kernel_image = spec.image.kernel.as_deref().unwrap_or(&spec.image);
        let base = kernel_image.kernel_cmdline.as_deref().unwrap_or("console=ttyS0 panic=-1");
        // The instance learns who it is even without network or metadata.
        let cmdline = format!("{base} vdc.instance_id={} vdc.hostname={}", spec.id, spec.hostname);
        os.push_str(&format!("<cmdline>{}</cmdline>", esc(&cmdline)));
    } else {
        if let Some(f) = &l.firmware {
            os.push_str(&format!(
                "<loader readonly='yes' type='pflash'>{}</loader><nvram template='{}'>{}</nvram>",
                esc(&f.code.display().to_string()),
                esc(&f.vars_template.display().to_string()),
                esc(&f.nvram.display().to_string())
            ));
        }
        os.push_str("<boot dev='hd'/>");
    }
    let mut disks = String::new();
    if let Some(d) = l.root_disk {
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            esc(&d.display().to_string())
        ));
    }
    let mut used = vec!["vda".to_owned()];
    for att in &spec.volumes {
        let Some(dev) = free_dev(&used) else { break };
        if let Some(x) = volume_disk(att, &dev, l.initiator) {
            disks.push_str(&x);
            used.push(dev);
        }
    }
    if let Some(s) = l.seed_iso {
        disks.push_str(&format!(
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>",
            esc(&s.display().to_string())
        ));
    }
    format!(
        "<domain type='{kind}'>\
<name>{name}</name><uuid>{uuid}</uuid>\
<metadata><vdc:instance xmlns:vdc='https://vdc.dev/xmlns/instance/1'>{id}</vdc:instance></metadata>\
<memory unit='MiB'>{mem}</memory><vcpu>{cpus}</vcpu>\
<os>{os}</os>\
<features><acpi/><apic/></features>\
<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
<devices>{disks}{nics}\
<serial type='file'><source path='{log}' append='on'/><target port='0'/></serial>\
<console type='file'><source path='{log}' append='on'/><target type='serial' port='0'/></console>\
<memballoon model='none'/>\
</devices></domain>",
        name = esc(&domain_name(spec.id.as_str())),
        uuid = domain_uuid(spec.id.as_str()),
        id = esc(spec.id.as_str()),
        mem = spec.memory_mib,
        cpus = spec.cpus,
        nics = interfaces(spec, l.bridge, l.taps),
        log = esc(&l.console_log.display().to_string()),
    )
}

/// A container's NICs for nwagent to plug, as a QEMU guest's taps are: libvirt's LXC
/// driver makes each `type='ethernet'` interface a veth pair whose host end is named by
/// `<target dev>` (the interface's device name) and attached to nothing; the container
/// end is its eth0, eth1, … with the interface's MAC.
fn container_veths(spec: &InstanceSpec) -> String {
    spec.nics
        .iter()
        .map(|n| {
            format!(
                "<interface type='ethernet'><mac address='{}'/><target dev='{}'/><mtu size='1450'/></interface>",
                n.mac,
                esc(&vdc_schema::bus::vif_device_name(&n.id))
            )
        })
        .collect()
}

/// The CFS period of a container's CPU quota (libvirt's default, 100 ms).
const CFS_PERIOD_US: u64 = 100_000;

/// A libvirt LXC container on a directory root filesystem. Its console is a pty that hva
/// copies into the console log.
///
/// `<privnet/>` always: without it, a container with no `<interface>` shares the host's
/// network namespace, and a guest that configures "its" eth0 reconfigures the host's.
///
/// `<cputune>` caps its CPU time at its vCPUs (a CFS quota of `cpus` periods a period):
/// libvirt LXC does not enforce `<vcpu>`, and a 1-vCPU container used every core of its
/// host (red team, 2026-12-07).
pub fn lxc_domain(spec: &InstanceSpec, l: &Layout<'_>) -> String {
    let rootfs = l.rootfs.map(|p| p.display().to_string()).unwrap_or_default();
    format!(
        "<domain type='lxc'>\
<name>{name}</name><uuid>{uuid}</uuid>\
<memory unit='MiB'>{mem}</memory><vcpu>{cpus}</vcpu>\
<cputune><period>{CFS_PERIOD_US}</period><quota>{quota}</quota></cputune>\
<os><type>exe</type><init>/init.sh</init>\
<initenv name='VDC_INSTANCE_ID'>{id}</initenv><initenv name='VDC_HOSTNAME'>{host}</initenv></os>\
{idmap}<features><privnet/></features>\
<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
<devices><emulator>/usr/lib/libvirt/libvirt_lxc</emulator>\
<filesystem type='mount'><source dir='{rootfs}'/><target dir='/'/></filesystem>\
{nics}<console type='pty'/></devices></domain>",
        name = esc(&domain_name(spec.id.as_str())),
        uuid = domain_uuid(spec.id.as_str()),
        id = esc(spec.id.as_str()),
        host = esc(&spec.hostname),
        mem = spec.memory_mib,
        cpus = spec.cpus,
        quota = u64::from(spec.cpus.max(1)) * CFS_PERIOD_US,
        rootfs = esc(&rootfs),
        nics = if l.taps { container_veths(spec) } else { interfaces(spec, l.bridge, false) },
        idmap = l.idmap.map(|m| m.libvirt_xml()).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let u = domain_uuid("i-abc");
        assert_eq!(u, domain_uuid("i-abc"));
        assert_ne!(u, domain_uuid("i-abd"));
        assert_eq!(u.len(), 36);
    }

    #[test]
    fn containers_always_get_their_own_network_namespace() {
        let image = crate::testing::image(vdc_schema::ImageFormat::Tar, "/x.tar.gz");
        let spec = InstanceSpec {
            memory_mib: 64,
            hostname: "c".into(),
            ..crate::testing::spec("i-abc", HypervisorKind::Lxc, image)
        };
        let log = Path::new("/x/console.log");
        let l = Layout {
            kernel: None,
            initrd: None,
            root_disk: None,
            seed_iso: None,
            rootfs: Some(Path::new("/x/rootfs")),
            console_log: log,
            bridge: None,
            taps: false,
            initiator: "iqn.x:hn-1",
            firmware: None,
            idmap: Some(&vdc_bus::idmap::IdMap::DEFAULT),
        };
        let xml = lxc_domain(&spec, &l);
        assert!(xml.contains("<features><privnet/></features>"), "{xml}");
        // Its vCPUs are a quota of CPU time, as libvirt does not enforce <vcpu> for LXC.
        assert!(xml.contains("<cputune><period>100000</period><quota>100000</quota></cputune>"), "{xml}");
        // In a user namespace: the container's root is host uid 100000.
        assert!(
            xml.contains("<idmap><uid start='0' target='100000' count='65536'/><gid start='0' target='100000' count='65536'/></idmap>"),
            "{xml}"
        );
        assert!(!xml.contains("<interface"));
        // With taps, each NIC is a veth whose host end nwagent plugs by its name.
        let mut spec = spec;
        spec.nics = vec![vdc_schema::bus::NicSpec {
            id: "vif-abc".parse().unwrap(),
            network_id: "nw-abc".parse().unwrap(),
            mac: vdc_schema::net::MacAddr::new([0x52, 0x54, 0, 1, 2, 3]),
            ip: vdc_schema::net::Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            gateway: vdc_schema::net::Ipv4Addr::new(10, 0, 0, 1),
            vni: 7,
        }];
        let xml = lxc_domain(&spec, &Layout { taps: true, ..l });
        let dev = vdc_schema::bus::vif_device_name(&spec.nics[0].id);
        assert!(
            xml.contains(&format!(
                "<interface type='ethernet'><mac address='52:54:00:01:02:03'/><target dev='{dev}'/><mtu size='1450'/></interface>"
            )),
            "{xml}"
        );
    }

    #[test]
    fn volume_disks_round_trip_through_domain_xml() {
        let att = |v: &str, target| VolumeAttachment { volume_id: v.parse().unwrap(), target };
        let iscsi = att(
            "vol-aaa",
            Some(VolumeTarget::Iscsi {
                portal: "10.0.0.5:3260".into(),
                iqn: "iqn.2026-11.io.vdc:vol-aaa".into(),
                lun: 1,
            }),
        );
        let local = att("vol-bbb", Some(VolumeTarget::Local { path: "/v/b.img".into() }));
        assert!(volume_disk(&att("vol-ccc", None), "vdb", "i").is_none(), "no disk before sta exported it");
        let x = volume_disk(&iscsi, "vdb", "iqn.2026-11.io.vdc:hn-1").unwrap();
        assert!(x.contains("name='iqn.2026-11.io.vdc:vol-aaa/1'") && x.contains("<host name='10.0.0.5' port='3260'/>"));
        assert!(x.contains("<iqn name='iqn.2026-11.io.vdc:hn-1'/>"), "{x}");
        let y = volume_disk(&local, "vdc", "i").unwrap();
        let dom = format!(
            "<domain><devices><disk type='file'><target dev='vda' bus='virtio'/></disk>{x}{y}</devices></domain>"
        );
        let found = volume_disks(&dom);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].0.as_str(), found[0].1.as_str()), ("vol-aaa", "vdb"));
        assert_eq!((found[1].0.as_str(), found[1].1.as_str()), ("vol-bbb", "vdc"));
        assert_eq!(free_dev(&disk_devs(&dom)).as_deref(), Some("vdd"));
    }

    fn qemu_spec(image: vdc_schema::bus::ImageSpec) -> InstanceSpec {
        InstanceSpec { hostname: "b".into(), ..crate::testing::spec("i-boot", HypervisorKind::Qemu, image) }
    }

    fn image(format: vdc_schema::ImageFormat, cmdline: Option<&str>) -> vdc_schema::bus::ImageSpec {
        vdc_schema::bus::ImageSpec { kernel_cmdline: cmdline.map(str::to_owned), ..crate::testing::image(format, "/x") }
    }

    fn layout<'a>(kernel: bool, disk: bool, firmware: Option<Firmware<'a>>) -> Layout<'a> {
        Layout {
            kernel: kernel.then_some(Path::new("/c/kernel")),
            initrd: kernel.then_some(Path::new("/c/initrd")),
            root_disk: disk.then_some(Path::new("/i/root.qcow2")),
            seed_iso: None,
            rootfs: None,
            console_log: Path::new("/i/console.log"),
            bridge: None,
            taps: false,
            initiator: "iqn.x:hn-1",
            firmware,
            idmap: None,
        }
    }

    fn os_of(xml: &str) -> &str {
        between(xml, "<os>", "</os>").unwrap()
    }

    #[test]
    fn a_bios_disk_boots_from_its_disk_with_no_firmware_named() {
        use vdc_schema::ImageFormat;
        let xml = qemu_domain(&qemu_spec(image(ImageFormat::Qcow2, None)), &layout(false, true, None));
        assert_eq!(os_of(&xml), "<type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/>");
        assert!(xml.contains("<source file='/i/root.qcow2'/><target dev='vda' bus='virtio'/>"), "{xml}");
    }

    #[test]
    fn a_uefi_disk_gets_ovmf_and_its_own_variable_store() {
        use vdc_schema::ImageFormat;
        let fw = Firmware {
            code: Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            vars_template: Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"),
            nvram: Path::new("/i/nvram.fd"),
        };
        let mut img = image(ImageFormat::Qcow2, None);
        img.boot_mode = vdc_schema::BootMode::Uefi;
        let xml = qemu_domain(&qemu_spec(img), &layout(false, true, Some(fw)));
        assert_eq!(
            os_of(&xml),
            "<type arch='x86_64' machine='pc'>hvm</type>\
<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/i/nvram.fd</nvram><boot dev='hd'/>"
        );
    }

    #[test]
    fn a_kernel_boots_directly_and_a_disk_with_kernel_id_gets_that_kernel_and_its_disk() {
        use vdc_schema::ImageFormat;
        // A kernel image alone: kernel, initrd, its command line, no root disk.
        let xml = qemu_domain(
            &qemu_spec(image(ImageFormat::Kernel, Some("console=ttyS0 quiet"))),
            &layout(true, false, None),
        );
        assert_eq!(
            os_of(&xml),
            "<type arch='x86_64' machine='pc'>hvm</type><kernel>/c/kernel</kernel><initrd>/c/initrd</initrd>\
<cmdline>console=ttyS0 quiet vdc.instance_id=i-boot vdc.hostname=b</cmdline>"
        );
        assert!(!xml.contains("dev='vda'"), "{xml}");
        // A disk image with kernel_id: the kernel image's command line, the disk as vda.
        let mut disk = image(ImageFormat::Qcow2, None);
        disk.kernel = Some(Box::new(image(ImageFormat::Kernel, Some("root=/dev/vda1 console=ttyS0"))));
        let xml = qemu_domain(&qemu_spec(disk), &layout(true, true, None));
        assert!(
            os_of(&xml).contains("<cmdline>root=/dev/vda1 console=ttyS0 vdc.instance_id=i-boot"),
            "{}",
            os_of(&xml)
        );
        assert!(os_of(&xml).contains("<kernel>/c/kernel</kernel><initrd>/c/initrd</initrd>"));
        assert!(!os_of(&xml).contains("<boot dev"), "the kernel boots, not the disk");
        assert!(xml.contains("<source file='/i/root.qcow2'/><target dev='vda' bus='virtio'/>"), "{xml}");
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(esc("a<b>&'\"\u{7}"), "a&lt;b&gt;&amp;&apos;&quot;");
    }
}
