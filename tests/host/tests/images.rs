//! Stored images on a real host: a tenant uploads the tiny root file system through the
//! API, hva fetches it from dcmgr over HTTP (node credential, verified digest) and boots
//! an LXC container from it; a second container of the same image fetches nothing.
//!
//! Needs libvirtd (tests/run.sh starts it) and VDC_TINY_IMAGE_DIR (it builds the image).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::id::{ImageId, InstanceId};
use vdc_schema::*;
use vdc_tests::{wait_console, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_rootfs_boots_and_a_second_container_fetches_nothing() {
    vdc_tests::init_logging();
    let s = Stack::start(vdc_tests::real_guests(1, 2)).await;
    let tiny = s.opts.libvirt.as_ref().unwrap().tiny_image_dir.clone();
    let c = s.account("uploader").await;
    let img = c
        .create_image(&CreateImage {
            hypervisors: vec![HypervisorKind::Lxc],
            ..vdc_tests::image_request("my-rootfs", ImageFormat::Tar)
        })
        .await
        .unwrap();
    let img = c.upload_image_file(&img.id, &tiny.join("rootfs.tar.gz"), |_| {}).await.unwrap();
    assert_eq!(img.state, ImageState::Available);
    let sha = img.checksum.clone().unwrap().trim_start_matches("sha256:").to_owned();

    let cached = s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("images").join(&sha);
    let mut inode = None;
    let mut ids = vec![];
    for name in ["first", "second"] {
        let req = CreateInstance {
            hypervisor: Some(HypervisorKind::Lxc),
            memory_mib: 64,
            ..vdc_tests::qemu_guest(&img.id, name)
        };
        let a = c.create_instance(&req).await.unwrap();
        let id = a.resource.id.clone();
        let j = c.wait_job(&a.job.id, Duration::from_secs(90)).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        wait_console(&c, &id, &format!("vdc-guest: instance-id={id}"), Duration::from_secs(60)).await;
        // The host keeps the blob under its digest; the second container reuses that file.
        let ino = std::fs::metadata(&cached).expect("the blob is in hva's cache").ino();
        assert_eq!(*inode.get_or_insert(ino), ino, "{name}: the cached blob was fetched again");
        ids.push(id);
    }
    for id in ids {
        let a = c.terminate_instance(&id).await.unwrap();
        assert_eq!(c.wait_job(&a.job.id, Duration::from_secs(60)).await.unwrap().state, JobState::Succeeded);
    }
    s.stop().await;
}

/// A running container is captured with the real hva: frozen while its root file system
/// is packed, thawed after; the tar image boots a second container whose root holds what
/// was written in the first (owner and mode kept), a device node left out. Before,
/// containers could not be captured at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_captured_with_what_was_written_in_it() {
    use std::os::unix::fs::PermissionsExt;
    vdc_tests::init_logging();
    let s = Stack::start(vdc_tests::real_guests(1, 2)).await;
    let tiny = s.opts.libvirt.as_ref().unwrap().tiny_image_dir.clone();
    let c = s.account("ct-capturer").await;
    let img = c
        .create_image(&CreateImage {
            hypervisors: vec![HypervisorKind::Lxc],
            ..vdc_tests::image_request("tiny-root", ImageFormat::Tar)
        })
        .await
        .unwrap();
    let img = c.upload_image_file(&img.id, &tiny.join("rootfs.tar.gz"), |_| {}).await.unwrap();
    let container = |name: &str, image: &ImageId| CreateInstance {
        hypervisor: Some(HypervisorKind::Lxc),
        memory_mib: 64,
        ..vdc_tests::qemu_guest(image, name)
    };
    let boot = |name: &'static str, image: ImageId| {
        let c = c.clone();
        async move {
            let a = c.create_instance(&container(name, &image)).await.unwrap();
            let id = a.resource.id.clone();
            assert_eq!(c.wait_job(&a.job.id, Duration::from_secs(90)).await.unwrap().state, JobState::Succeeded);
            wait_console(&c, &id, &format!("vdc-guest: instance-id={id}"), Duration::from_secs(60)).await;
            id
        }
    };
    let first = boot("first", img.id.clone()).await;
    let instances = s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances");
    let root = vdc_tests::seen_by_libvirtd(&instances.join(first.as_str()).join("rootfs"));
    // What the tenant wrote in the container (the host's view of its root), and a
    // device node no image may hold.
    std::fs::write(root.join("etc/written-in-first"), b"hello from first\n").unwrap();
    std::fs::set_permissions(root.join("etc/written-in-first"), std::fs::Permissions::from_mode(0o640)).unwrap();
    // The container runs in a user namespace: its uid 1234 is the host's 101234.
    std::os::unix::fs::chown(root.join("etc/written-in-first"), Some(101_234), Some(104_321)).unwrap();
    run("mknod", &[root.join("etc/a-device").to_str().unwrap(), "c", "1", "3"]);
    // A second name of the file, a file capability (as `setcap cap_net_raw+ep` sets it:
    // Debian's `ping` has this one) and an attribute of the host's own, which no image
    // may set.
    std::fs::hard_link(root.join("etc/written-in-first"), root.join("etc/written-twice")).unwrap();
    std::fs::write(root.join("bin-pinger"), b"pings").unwrap();
    let xattr = |p: &std::path::Path, n: &str| {
        let mut buf = vec![0; 256];
        rustix::fs::lgetxattr(p, n, &mut buf[..]).ok().map(|len| buf[..len].to_vec())
    };
    let set = |p: &std::path::Path, n: &str, v: &[u8]| {
        rustix::fs::lsetxattr(p, n, v, rustix::fs::XattrFlags::empty()).unwrap()
    };
    // VFS_CAP_REVISION_3 | effective; permitted: CAP_NET_RAW (13); nothing inheritable;
    // the namespace's root (host uid 100000): what `setcap` in the container writes.
    let file_cap: Vec<u8> = [0x0300_0001u32, 1 << 13, 0, 0, 0, 100_000].iter().flat_map(|w| w.to_le_bytes()).collect();
    set(&root.join("bin-pinger"), "security.capability", &file_cap);
    let file_cap = xattr(&root.join("bin-pinger"), "security.capability").expect("the capability was set");
    set(&root.join("bin-pinger"), "trusted.vdc-host-only", b"no");

    let req = CaptureInstance {
        image_name: "first-captured".into(),
        os: None,
        min_disk: None,
        min_memory: None,
        default_user: None,
    };
    let acc = c.capture_instance(&first, &req).await.unwrap();
    let j = c.wait_job(&acc.job.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let cap = c.get_image(&acc.resource.id).await.unwrap();
    assert_eq!((cap.state, cap.format), (ImageState::Available, ImageFormat::Tar));
    assert_eq!(cap.hypervisors, [HypervisorKind::Lxc]);
    // Thawed: libvirt says it runs (not paused), and nothing of the capture is left.
    let name = format!("vdc-{first}");
    let state = run("virsh", &["-c", "lxc:///system", "domstate", &name]);
    assert_eq!(state.trim(), "running", "the container was thawed");
    assert_eq!(c.get_instance(&first).await.unwrap().state, InstanceState::Running);
    let left: Vec<_> = std::fs::read_dir(instances.join(first.as_str()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("capture-"))
        .collect();
    assert!(left.is_empty(), "left on the host: {left:?}");
    // A container left frozen (as by an hva stopped mid-capture) is thawed by hva's poll.
    run("virsh", &["-c", "lxc:///system", "suspend", &name]);
    let thawed = vdc_tests::eventually(Duration::from_secs(10), || async {
        (run("virsh", &["-c", "lxc:///system", "domstate", &name]).trim() == "running").then_some(())
    })
    .await;
    assert!(thawed.is_ok(), "hva's poll thaws a frozen container");

    // Stopped, captured again: nothing was written since, so the same tree gives the
    // same blob (stored once); then it starts again.
    let stop = c.stop_instance(&first).await.unwrap();
    assert_eq!(c.wait_job(&stop.job.id, Duration::from_secs(90)).await.unwrap().state, JobState::Succeeded);
    let again = c.capture_instance(&first, &CaptureInstance { image_name: "again".into(), ..req }).await.unwrap();
    assert_eq!(c.wait_job(&again.job.id, Duration::from_secs(120)).await.unwrap().state, JobState::Succeeded);
    assert_eq!(c.get_image(&again.resource.id).await.unwrap().checksum, cap.checksum, "the same tree, the same blob");
    assert_eq!(c.get_instance(&first).await.unwrap().state, InstanceState::Stopped);
    let start = c.start_instance(&first).await.unwrap();
    assert_eq!(c.wait_job(&start.job.id, Duration::from_secs(90)).await.unwrap().state, JobState::Succeeded);

    let second = boot("second", acc.resource.id.clone()).await;
    let root2 = vdc_tests::seen_by_libvirtd(&instances.join(second.as_str()).join("rootfs"));
    assert_eq!(std::fs::read(root2.join("etc/written-in-first")).unwrap(), b"hello from first\n");
    let meta = std::fs::metadata(root2.join("etc/written-in-first")).unwrap();
    use std::os::unix::fs::MetadataExt;
    // The image holds the container's owners (1234), so the second container's root
    // has them shifted the same way.
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (101_234, 104_321, 0o640));
    assert_eq!(std::fs::symlink_metadata(&root2).unwrap().uid(), 100_000, "the container's root is unprivileged");
    assert!(!root2.join("etc/a-device").exists(), "the device node was left out");
    assert_eq!(std::fs::metadata(root2.join("etc/written-twice")).unwrap().ino(), meta.ino(), "a hard link");
    assert_eq!(meta.nlink(), 2);
    assert_eq!(xattr(&root2.join("bin-pinger"), "security.capability"), Some(file_cap), "the file capability");
    assert_eq!(xattr(&root2.join("bin-pinger"), "trusted.vdc-host-only"), None);
    for id in [first, second] {
        let a = c.terminate_instance(&id).await.unwrap();
        assert_eq!(c.wait_job(&a.job.id, Duration::from_secs(60)).await.unwrap().state, JobState::Succeeded);
    }
    s.stop().await;
}

/// sta fills a volume from an uploaded qcow2: it fetches the blob from dcmgr (not a path,
/// not a URL of the tenant's choosing) and converts it into the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_filled_from_an_uploaded_qcow2() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-images-vol-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(1, 2);
    o.real_storage = Some(vdc_tests::RealStorageSetup {
        backend: vdc_sta::backend::BackendConfig::File { dir: dir.path().join("volumes") },
        iscsi: None,
        data_dir: dir.path().join("sta"),
    });
    let s = Stack::start(o).await;
    let c = s.account("filler").await;
    let disk = dir.path().join("disk.qcow2");
    let d = disk.to_str().unwrap();
    let run = |p: &str, a: &[&str]| assert!(std::process::Command::new(p).args(a).status().unwrap().success());
    run("qemu-img", &["create", "-q", "-f", "qcow2", d, "16M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 0 64k", d]);
    let img = c.create_image(&vdc_tests::image_request("data-disk", ImageFormat::Qcow2)).await.unwrap();
    c.upload_image_file(&img.id, &disk, |_| {}).await.unwrap();
    let a = c
        .create_volume(&CreateVolume {
            name: "v".into(),
            size_mib: Some(32),
            snapshot_id: None,
            image_id: Some(img.id),
        })
        .await
        .unwrap();
    let j = c.wait_job(&a.job.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let file = dir.path().join("volumes/volumes").join(format!("{}.img", a.resource.id));
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), 32 << 20, "grown to the size asked for");
    assert!(data[..65536].iter().all(|&b| b == 0x5a) && data[65536..131072].iter().all(|&b| b == 0));
    s.stop().await;
}

/// Capture of a running guest with the real hva: a libvirt push backup copies the root
/// disk at one instant while the guest runs on (crash-consistent); the blob holds the
/// base's bytes, has no backing file and the grown size, nothing is left on the host, and
/// the guest is still running and answering afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_is_captured_while_it_runs() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-images-live-").tempdir_in("/var/tmp").unwrap();
    let s = Stack::start(vdc_tests::real_guests(1, 2)).await;
    let c = s.account("live-capturer").await;
    let (id, _) = guest_on_a_patterned_disk(&s, &c, dir.path(), "live").await;

    let req = CaptureInstance {
        image_name: "live-captured".into(),
        os: None,
        min_disk: None,
        min_memory: None,
        default_user: None,
    };
    let acc = c.capture_instance(&id, &req).await.unwrap();
    assert_eq!(c.get_instance(&id).await.unwrap().state, InstanceState::Running, "it runs on");
    let j = c.wait_job(&acc.job.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let cap = c.get_image(&acc.resource.id).await.unwrap();
    assert_eq!((cap.state, cap.format), (ImageState::Available, ImageFormat::Qcow2));
    let sha = cap.checksum.unwrap().trim_start_matches("sha256:").to_owned();
    let blob = s.opts.images.dir.clone().unwrap().join("blobs/sha256").join(&sha);
    let b = blob.to_str().unwrap();
    let info = run("qemu-img", &["info", "--output=json", b]);
    assert!(!info.contains("backing-filename"), "flattened: {info}");
    assert!(info.contains(&format!("\"virtual-size\": {}", 32 << 20)), "the grown size: {info}");
    let read = run("qemu-io", &["-f", "qcow2", "-r", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0 1M 64k", b]);
    assert!(!read.contains("fail"), "the base's bytes, and zeros past them: {read}");
    // Nothing of the copy is left beside the guest, and the guest still runs.
    let inst_dir = s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances").join(id.as_str());
    let left: Vec<_> = std::fs::read_dir(&inst_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("capture-") || n == "backup.xml")
        .collect();
    assert!(left.is_empty(), "left on the host: {left:?}");
    assert_eq!(c.get_instance(&id).await.unwrap().state, InstanceState::Running);
    let reboot = c.reboot_instance(&id).await.unwrap();
    assert_eq!(c.wait_job(&reboot.job.id, Duration::from_secs(120)).await.unwrap().state, JobState::Succeeded);
    let t = c.terminate_instance(&id).await.unwrap();
    assert_eq!(c.wait_job(&t.job.id, Duration::from_secs(60)).await.unwrap().state, JobState::Succeeded);
    s.stop().await;
}

/// Capture with the real hva: a stopped guest's overlay (on an uploaded qcow2, grown,
/// with data written while it was off) is flattened by `qemu-img convert` and sent to
/// dcmgr; the new blob holds the base's and the overlay's bytes, has no backing file, and
/// equals the flattened overlay byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_is_captured_from_its_flattened_overlay() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-images-cap-").tempdir_in("/var/tmp").unwrap();
    let s = Stack::start(vdc_tests::real_guests(1, 2)).await;
    let c = s.account("capturer").await;
    let (id, kernel) = guest_on_a_patterned_disk(&s, &c, dir.path(), "base").await;
    let stop = c.stop_instance(&id).await.unwrap();
    assert_eq!(c.wait_job(&stop.job.id, Duration::from_secs(90)).await.unwrap().state, JobState::Succeeded);

    // What the guest wrote lives in the overlay only (the tiny guest runs from its
    // initramfs, so the test writes for it while it is off).
    let overlay =
        s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances").join(id.as_str()).join("root.qcow2");
    let o = overlay.to_str().unwrap();
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0xa5 1M 64k", o]);
    let expected = dir.path().join("expected.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", "-f", "qcow2", o, expected.to_str().unwrap()]);

    let req = CaptureInstance {
        image_name: "captured".into(),
        os: None,
        min_disk: None,
        min_memory: None,
        default_user: None,
    };
    let acc = c.capture_instance(&id, &req).await.unwrap();
    assert_eq!(c.get_instance(&id).await.unwrap().state, InstanceState::Capturing);
    let j = c.wait_job(&acc.job.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let cap = c.get_image(&acc.resource.id).await.unwrap();
    assert_eq!(
        (cap.state, cap.format, cap.kernel_id.as_ref()),
        (ImageState::Available, ImageFormat::Qcow2, Some(&kernel))
    );
    assert_eq!((cap.os.as_deref(), cap.default_user.as_deref()), (Some("tiny"), Some("tiny")));
    assert_eq!(c.get_instance(&id).await.unwrap().state, InstanceState::Stopped);
    let sha = cap.checksum.unwrap().trim_start_matches("sha256:").to_owned();
    let blob = s.opts.images.dir.clone().unwrap().join("blobs/sha256").join(&sha);
    assert_eq!(std::fs::read(&blob).unwrap(), std::fs::read(&expected).unwrap(), "the blob is the flattened overlay");
    let b = blob.to_str().unwrap();
    let info = run("qemu-img", &["info", "--output=json", b]);
    assert!(!info.contains("backing-filename"), "flattened: {info}");
    assert!(info.contains(&format!("\"virtual-size\": {}", 32 << 20)), "the grown size: {info}");
    let read = run("qemu-io", &["-f", "qcow2", "-r", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0xa5 1M 64k", b]);
    assert!(!read.contains("fail"), "the base's and the overlay's bytes: {read}");
    // The capture file is gone from the host, and the instance starts again.
    assert!(!overlay.with_file_name(format!("capture-{}.qcow2", acc.resource.id)).exists());
    let start = c.start_instance(&id).await.unwrap();
    assert_eq!(c.wait_job(&start.job.id, Duration::from_secs(90)).await.unwrap().state, JobState::Succeeded);
    let t = c.terminate_instance(&id).await.unwrap();
    assert_eq!(c.wait_job(&t.job.id, Duration::from_secs(60)).await.unwrap().state, JobState::Succeeded);
    s.stop().await;
}

/// Runs a host command that must succeed; its standard output.
fn run(p: &str, a: &[&str]) -> String {
    let out = std::process::Command::new(p).args(a).output().unwrap();
    assert!(out.status.success(), "{p} {a:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running tiny guest (booted by the kernel image) whose root disk is an uploaded 16 MiB
/// qcow2 with 0x5a in its first 64 KiB, grown to 32 MiB: (the instance, the kernel image).
async fn guest_on_a_patterned_disk(s: &Stack, c: &Client, dir: &Path, name: &str) -> (InstanceId, ImageId) {
    let (kernel, _) = vdc_tests::register_images(s).await;
    let disk = dir.join("disk.qcow2");
    let d = disk.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", d, "16M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 0 64k", d]);
    let img = c
        .create_image(&CreateImage {
            default_user: Some("tiny".into()),
            kernel_id: Some(kernel.clone()),
            os: Some("tiny".into()),
            ..vdc_tests::image_request(&format!("{name}-disk"), ImageFormat::Qcow2)
        })
        .await
        .unwrap();
    c.upload_image_file(&img.id, &disk, |_| {}).await.unwrap();
    let req =
        CreateInstance { root_disk_size: Some(32 << 20), ..vdc_tests::qemu_guest(&img.id, &format!("{name}-src")) };
    let a = c.create_instance(&req).await.unwrap();
    let id = a.resource.id.clone();
    assert_eq!(c.wait_job(&a.job.id, Duration::from_secs(90)).await.unwrap().state, JobState::Succeeded);
    wait_console(c, &id, &format!("vdc-guest: instance-id={id}"), Duration::from_secs(90)).await;
    (id, kernel)
}
