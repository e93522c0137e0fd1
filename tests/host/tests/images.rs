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
