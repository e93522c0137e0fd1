//! Boot modes with real guests (QEMU TCG through libvirt, driven through dcmgr's API): a
//! disk image booted by a kernel image (kernel + initrd + root disk, as an AMI with its
//! AKI/ARI), its root disk grown to the size asked; and a UEFI disk booted by OVMF, twice.
//!
//! Needs libvirtd and VDC_TINY_IMAGE_DIR (tests/run.sh), OVMF and the tools of
//! packaging/build-uefi-test-disk.sh (packaging/install-deps.sh).

use std::process::Command;
use std::time::Duration;
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{register_images, wait_console, wait_state, Stack};

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn dumpxml(id: &InstanceId) -> String {
    run("virsh", &["-c", "qemu:///system", "dumpxml", &format!("vdc-{id}")])
}

fn virsh_has(id: &InstanceId) -> bool {
    vdc_tests::virsh_has("qemu:///system", id)
}

fn disk_image(name: &str, source: &std::path::Path) -> CreateImage {
    CreateImage {
        name: name.into(),
        format: ImageFormat::Qcow2,
        arch: Arch::X86_64,
        hypervisors: vec![HypervisorKind::Qemu],
        source: Some(source.display().to_string()),
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: BootMode::Bios,
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        public: true,
        default_user: None,
    }
}

async fn job_ok(c: &Client, a: &Accepted<Instance>) {
    let j = c.wait_job(&a.job.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
}

/// Waits until the console shows `n` boots (one `line` each).
async fn wait_boots(c: &Client, id: &InstanceId, line: &str, n: usize) {
    vdc_tests::eventually(Duration::from_secs(120), || async {
        (c.console_log(id).await.ok()?.output.matches(line).count() >= n).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("expected {n} boots ({line:?}) in the console of {id}"));
}

async fn terminate(s: &Stack, c: &Client, id: &InstanceId) {
    job_ok(c, &c.terminate_instance(id).await.unwrap()).await;
    assert!(!virsh_has(id), "the domain is undefined");
    let dir = s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances").join(id.as_str());
    assert!(!dir.exists(), "the instance directory is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_with_root_disk_and_uefi_guests_boot() {
    vdc_tests::init_logging();
    let s = Stack::start(vdc_tests::real_guests(1, 2)).await;
    let (kernel, _) = register_images(&s).await;
    let host = &s.admin.list_all_host_nodes().await.unwrap()[0];
    assert_eq!(host.capabilities["uefi"], true, "OVMF is installed here: {}", host.capabilities);
    let c = s.account("boot").await;
    let work = s.opts.libvirt.as_ref().unwrap().root.clone();

    // Kernel + initrd + root disk: a blank 64 MiB disk image that boots with the tiny kernel.
    let blank = work.join("blank.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", blank.to_str().unwrap(), "64M"]);
    let mut r = disk_image("tiny-ami", &blank);
    (r.kernel_id, r.min_disk) = (Some(kernel.clone()), Some(64 * MIB));
    let ami = s.admin.create_image(&r).await.unwrap();
    let mut req = vdc_tests::qemu_guest(&ami.id, "ami");
    req.root_disk_size = Some(128 * MIB);
    let a = c.create_instance(&req).await.unwrap();
    let id = a.resource.id.clone();
    job_ok(&c, &a).await;
    // The kernel boots (the contract line carries the ID from the kernel command line).
    let (_, t) = wait_console(&c, &id, &format!("vdc-guest: instance-id={id}"), Duration::from_secs(120)).await;
    eprintln!("kernel + initrd + root disk: console line {t:?} after running");
    let xml = dumpxml(&id);
    let os = &xml[xml.find("<os>").unwrap()..xml.find("</os>").unwrap()];
    assert!(os.contains("<kernel>") && os.contains("<initrd>"), "{os}");
    let root = s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances").join(id.as_str()).join("root.qcow2");
    assert!(xml.contains(&format!("<source file='{}'", root.display())), "{xml}");
    // Grown to the size asked: the overlay, and the disk as QEMU presents it to the guest.
    let info: serde_json::Value =
        serde_json::from_str(&run("qemu-img", &["info", "-U", "--output=json", root.to_str().unwrap()])).unwrap();
    assert_eq!(info["virtual-size"], 128 * MIB, "{info}");
    let blk = run("virsh", &["-c", "qemu:///system", "domblkinfo", &format!("vdc-{id}"), "vda"]);
    assert!(blk.lines().any(|l| l.starts_with("Capacity:") && l.ends_with(&(128 * MIB).to_string())), "{blk}");
    terminate(&s, &c, &id).await;
    // Below the image's own size (which only the host knows): the host refuses to shrink
    // it, the instance fails with the reason and leaves nothing behind.
    let plain = s.admin.create_image(&disk_image("tiny-disk", &blank)).await.unwrap();
    let mut req = vdc_tests::qemu_guest(&plain.id, "small");
    req.root_disk_size = Some(32 * MIB);
    let a = c.create_instance(&req).await.unwrap();
    let failed = wait_state(&c, &a.resource.id, InstanceState::Failed).await;
    let why = failed.failure_reason.unwrap_or_default();
    assert!(why.contains("root_disk_size 33554432 bytes is below image") && why.contains("67108864"), "{why}");
    assert!(!virsh_has(&a.resource.id));
    job_ok(&c, &c.terminate_instance(&a.resource.id).await.unwrap()).await;

    // UEFI: a GPT disk whose ESP holds GRUB, started by OVMF.
    let efi_disk = work.join("uefi.qcow2");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/build-uefi-test-disk.sh");
    let tiny = s.opts.libvirt.as_ref().unwrap().tiny_image_dir.clone();
    run("bash", &[script, tiny.to_str().unwrap(), efi_disk.to_str().unwrap()]);
    let mut r = disk_image("tiny-uefi", &efi_disk);
    (r.boot_mode, r.min_memory) = (BootMode::Uefi, Some(512 * MIB));
    let efi = s.admin.create_image(&r).await.unwrap();
    let mut req = vdc_tests::qemu_guest(&efi.id, "efi");
    req.memory_mib = 512;
    let a = c.create_instance(&req).await.unwrap();
    let id = a.resource.id.clone();
    job_ok(&c, &a).await;
    // GRUB's fixed command line carries no instance ID.
    let line = "vdc-guest: instance-id=unknown";
    let (out, t) = wait_console(&c, &id, line, Duration::from_secs(120)).await;
    eprintln!("UEFI: console line {t:?} after running");
    assert!(out.contains("BdsDxe"), "OVMF started it:\n{out}");
    let xml = dumpxml(&id);
    assert!(xml.contains("<loader readonly='yes' type='pflash'>/usr/share/OVMF/"), "{xml}");
    assert!(xml.contains("nvram.fd</nvram>"), "{xml}");
    // Again, after stop and start: its variable store kept, still booting.
    job_ok(&c, &c.stop_instance(&id).await.unwrap()).await;
    job_ok(&c, &c.start_instance(&id).await.unwrap()).await;
    wait_state(&c, &id, InstanceState::Running).await;
    wait_boots(&c, &id, line, 2).await;
    terminate(&s, &c, &id).await;
    s.stop().await;
}
