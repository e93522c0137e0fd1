//! Stored images on a real host: a tenant uploads the tiny root file system through the
//! API, hva fetches it from dcmgr over HTTP (node credential, verified digest) and boots
//! an LXC container from it; a second container of the same image fetches nothing.
//!
//! Needs libvirtd (tests/run.sh starts it) and VDC_TINY_IMAGE_DIR (it builds the image).

use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use vdc_schema::api::*;
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
            name: "my-rootfs".into(),
            format: ImageFormat::Tar,
            arch: Arch::X86_64,
            hypervisors: vec![HypervisorKind::Lxc],
            source: None,
            checksum: None,
            initrd: None,
            kernel_cmdline: None,
            public: false,
            default_user: None,
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            min_memory: None,
            os: None,
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
    let img = c
        .create_image(&CreateImage {
            name: "data-disk".into(),
            format: ImageFormat::Qcow2,
            arch: Arch::X86_64,
            hypervisors: vec![HypervisorKind::Qemu],
            source: None,
            checksum: None,
            initrd: None,
            kernel_cmdline: None,
            public: false,
            default_user: None,
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            min_memory: None,
            os: None,
        })
        .await
        .unwrap();
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
