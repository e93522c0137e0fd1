//! Volumes end to end on real parts: sta on a file backend exporting through a private
//! tgtd, hva with libvirt attaching over QEMU's iSCSI initiator (or locally), and tiny
//! TCG guests that write a pattern on a blank disk and read back what a disk holds.
//!
//! Needs root, libvirtd, tgtd and the tiny image (tests/run.sh provides them all).

use std::time::Duration;
use vdc_cli::client::{Client, ClientError};
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_sta::backend::BackendConfig;
use vdc_sta::testing::Tgtd;
use vdc_tests::{register_images, wait_console, wait_state, RealStorageSetup, Stack, StackOptions};

const BOOT: Duration = Duration::from_secs(120);

fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn opts(dir: &std::path::Path, iscsi: Option<(u16, String)>) -> StackOptions {
    let mut o = vdc_tests::real_guests(1, 4);
    o.real_storage = Some(RealStorageSetup {
        backend: BackendConfig::File { dir: dir.join("volumes") },
        iscsi,
        data_dir: dir.join("sta"),
    });
    o
}

async fn guest(c: &Client, image: &ImageId, name: &str) -> InstanceId {
    c.create_instance(&vdc_tests::qemu_guest(image, name)).await.unwrap().resource.id
}

async fn ok<T>(c: &Client, a: Accepted<T>) -> T {
    let j = c.wait_job(&a.job.id, BOOT).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    a.resource
}

async fn volume_state(c: &Client, id: &VolumeId) -> Volume {
    c.get_volume(id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_data_moves_between_guests_over_iscsi() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-storage-e2e-").tempdir_in("/var/tmp").unwrap();
    let tgtd = Tgtd::start(dir.path()).expect("tgtd starts");
    let mut s = Stack::start(opts(dir.path(), Some((tgtd.control_port, tgtd.portal.clone())))).await;
    let (kernel, _) = register_images(&s).await;
    let sn = &s.admin.list_all_storage_nodes().await.unwrap()[0];
    assert_eq!(sn.backend, StorageBackend::File);
    assert!(sn.capacity_mib > 0);
    let c = s.account("storage").await;

    let a = guest(&c, &kernel, "writer").await;
    let b = guest(&c, &kernel, "reader").await;
    let vol = ok(
        &c,
        c.create_volume(&CreateVolume { name: "data".into(), size_mib: Some(64), snapshot_id: None, image_id: None })
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(volume_state(&c, &vol.id).await.state, VolumeState::Available);
    for (i, name) in [(&a, "writer"), (&b, "reader")] {
        wait_state(&c, i, InstanceState::Running).await;
        wait_console(&c, i, &format!("vdc-guest: instance-id={i} hostname={name}"), BOOT).await;
    }

    // 1. Attach to the running writer: it finds a blank disk and writes its pattern.
    ok(&c, c.attach_volume(&vol.id, &a).await.unwrap()).await;
    assert_eq!(volume_state(&c, &vol.id).await.state, VolumeState::Attached);
    assert!(c.get_instance(&a).await.unwrap().volumes.contains(&vol.id));
    wait_console(&c, &a, &format!("vdc-guest: disk {} wrote vdc-pattern written-by={a}", vol.id), BOOT).await;

    // Refusals while attached, each with a code that says what to do.
    assert_eq!(err(c.delete_volume(&vol.id).await), (409, "volume_attached".into()));
    assert_eq!(err(c.extend_volume(&vol.id, &ExtendVolume { size_mib: 128 }).await), (409, "volume_attached".into()));
    let bad = CreateVolume { name: "x".into(), size_mib: Some(0), snapshot_id: None, image_id: None };
    assert_eq!(err(c.create_volume(&bad).await), (400, "invalid_size".into()));
    let bad =
        CreateVolume { name: "x".into(), size_mib: None, snapshot_id: Some(SnapshotId::generate()), image_id: None };
    assert_eq!(err(c.create_volume(&bad).await).0, 404);

    // 2. sta crashes and comes back: the guest keeps its disk, the target is restored.
    s.crash_storage(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.restart_storage(0).await;
    s.wait_nodes_online().await.unwrap();
    vdc_tests::eventually(Duration::from_secs(20), || async { (!tgtd.targets().is_empty()).then_some(()) })
        .await
        .expect("the target is back after sta restarts");
    assert_eq!(volume_state(&c, &vol.id).await.state, VolumeState::Attached);
    assert_eq!(c.get_instance(&a).await.unwrap().state, InstanceState::Running);

    // 3. Detach from the running writer (the guest lets go of the hot-unplugged disk).
    ok(&c, c.detach_volume(&vol.id).await.unwrap()).await;
    assert_eq!(volume_state(&c, &vol.id).await.state, VolumeState::Available);
    vdc_tests::eventually(Duration::from_secs(20), || async { tgtd.targets().is_empty().then_some(()) })
        .await
        .expect("the export is withdrawn after the detach");

    // 4. Attach to the reader: the writer's pattern is there.
    ok(&c, c.attach_volume(&vol.id, &b).await.unwrap()).await;
    wait_console(&c, &b, &format!("vdc-guest: disk {} holds vdc-pattern written-by={a}", vol.id), BOOT).await;

    // 5. Attach to a stopped instance: it sees the disk when it boots.
    ok(&c, c.detach_volume(&vol.id).await.unwrap()).await;
    ok(&c, c.stop_instance(&a).await.unwrap()).await;
    ok(&c, c.attach_volume(&vol.id, &a).await.unwrap()).await;
    ok(&c, c.start_instance(&a).await.unwrap()).await;
    wait_console(&c, &a, &format!("vdc-guest: disk {} holds vdc-pattern written-by={a}", vol.id), BOOT).await;
    assert_eq!(volume_state(&c, &vol.id).await.state, VolumeState::Attached);

    // 6. Grow it detached, then delete it; nothing is left on the node.
    ok(&c, c.detach_volume(&vol.id).await.unwrap()).await;
    let grown = ok(&c, c.extend_volume(&vol.id, &ExtendVolume { size_mib: 96 }).await.unwrap()).await;
    assert_eq!(grown.size_mib, 96);
    let file = dir.path().join("volumes/volumes").join(format!("{}.img", vol.id));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 96 << 20);
    assert_eq!(err(c.extend_volume(&vol.id, &ExtendVolume { size_mib: 10 }).await), (400, "invalid_size".into()));
    ok(&c, c.delete_volume(&vol.id).await.unwrap()).await;
    assert!(!file.exists());
    for i in [&a, &b] {
        ok(&c, c.terminate_instance(i).await.unwrap()).await;
    }
    s.stop().await;
    drop(tgtd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_on_the_same_machine_is_attached_locally() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-storage-local-").tempdir_in("/var/tmp").unwrap();
    let s = Stack::start(opts(dir.path(), None)).await;
    let (kernel, _) = register_images(&s).await;
    let c = s.account("local").await;
    let i = guest(&c, &kernel, "local").await;
    let vol = ok(
        &c,
        c.create_volume(&CreateVolume { name: "l".into(), size_mib: Some(16), snapshot_id: None, image_id: None })
            .await
            .unwrap(),
    )
    .await;
    wait_state(&c, &i, InstanceState::Running).await;
    ok(&c, c.attach_volume(&vol.id, &i).await.unwrap()).await;
    wait_console(&c, &i, &format!("vdc-guest: disk {} wrote vdc-pattern written-by={i}", vol.id), BOOT).await;
    // The pattern is in the volume's file: the guest wrote to it directly.
    let file = dir.path().join("volumes/volumes").join(format!("{}.img", vol.id));
    let head = std::fs::read(&file).unwrap();
    assert!(head.starts_with(format!("vdc-pattern written-by={i}").as_bytes()));
    ok(&c, c.terminate_instance(&i).await.unwrap()).await;
    s.stop().await;
}

/// An image from a snapshot with the real sta on its file backend (simulated hosts: no
/// guest is needed): a known pattern written into the volume's file, snapshotted, then
/// overwritten; the raw image's blob is the snapshot's bytes exactly, the qcow2 one holds
/// the same disk; the same snapshot again is stored once; a snapshot whose data is gone
/// fails its image and job with sta's reason, and is deletable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_becomes_an_image_of_its_exact_bytes() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-snapimg-").tempdir_in("/var/tmp").unwrap();
    let mut o = StackOptions::new(vdc_tests::Db::Sqlite);
    o.real_storage = Some(RealStorageSetup {
        backend: BackendConfig::File { dir: dir.path().join("volumes") },
        iscsi: None,
        data_dir: dir.path().join("sta"),
    });
    let s = Stack::start(o).await;
    let c = s.account("snapimg").await;
    let vol = CreateVolume { name: "data".into(), size_mib: Some(8), snapshot_id: None, image_id: None };
    let vol = ok(&c, c.create_volume(&vol).await.unwrap()).await;
    let lun = dir.path().join("volumes/volumes").join(format!("{}.img", vol.id));
    let pattern: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
    std::fs::write(&lun, &pattern).unwrap();
    let snap =
        ok(&c, c.create_snapshot(&CreateSnapshot { volume_id: vol.id.clone(), name: "s".into() }).await.unwrap()).await;
    // Written after the snapshot: the image must not see it.
    std::fs::write(&lun, vec![0u8; 8 << 20]).unwrap();
    let snap_file = dir.path().join("volumes/snapshots").join(format!("{}.img", snap.id));
    assert_eq!(std::fs::read(&snap_file).unwrap(), pattern);

    let blobs = s.opts.images.dir.clone().unwrap().join("blobs/sha256");
    let raw = |name: &str| CreateSnapshotImage { image_name: name.into(), ..Default::default() };
    let img = ok(&c, c.snapshot_image(&snap.id, &raw("raw")).await.unwrap()).await;
    let img = c.get_image(&img.id).await.unwrap();
    assert_eq!((img.state, img.format, img.size_bytes), (ImageState::Available, ImageFormat::Raw, Some(8 << 20)));
    let sha = img.checksum.clone().unwrap();
    let blob = blobs.join(sha.trim_start_matches("sha256:"));
    assert!(std::fs::read(&blob).unwrap() == pattern, "the blob is the snapshot's bytes");

    let q = CreateSnapshotImage { format: Some(ImageFormat::Qcow2), ..raw("qcow2") };
    let qimg = ok(&c, c.snapshot_image(&snap.id, &q).await.unwrap()).await;
    let qimg = c.get_image(&qimg.id).await.unwrap();
    assert_eq!((qimg.state, qimg.format), (ImageState::Available, ImageFormat::Qcow2));
    let qblob = blobs.join(qimg.checksum.unwrap().trim_start_matches("sha256:"));
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&qblob)
        .arg(&snap_file)
        .status()
        .unwrap();
    assert!(cmp.success(), "the qcow2 image holds the snapshot's disk");
    assert!(
        !dir.path().join("sta").read_dir().unwrap().any(|e| {
            let p = e.unwrap().path().join("captures");
            p.read_dir().is_ok_and(|mut d| d.next().is_some())
        }),
        "sta's conversion is cleaned up"
    );

    // The second time: the same bytes, stored once.
    let n = std::fs::read_dir(&blobs).unwrap().count();
    let again = ok(&c, c.snapshot_image(&snap.id, &raw("raw-again")).await.unwrap()).await;
    assert_eq!(c.get_image(&again.id).await.unwrap().checksum.as_deref(), Some(sha.as_str()));
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), n);

    // The snapshot's data is gone from the node: sta says so, the image and job fail.
    let gone =
        ok(&c, c.create_snapshot(&CreateSnapshot { volume_id: vol.id.clone(), name: "g".into() }).await.unwrap()).await;
    std::fs::remove_file(dir.path().join("volumes/snapshots").join(format!("{}.img", gone.id))).unwrap();
    let acc = c.snapshot_image(&gone.id, &raw("gone")).await.unwrap();
    let job = c.wait_job(&acc.job.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    let why = job.message.unwrap_or_default();
    assert!(why.contains("capture_failed") && why.contains("is not on this storage node"), "{why}");
    let failed = c.get_image(&acc.resource.id).await.unwrap();
    assert_eq!(failed.state, ImageState::Failed);
    let del = c.delete_snapshot(&gone.id).await.unwrap();
    assert_eq!(c.wait_job(&del.job.id, Duration::from_secs(30)).await.unwrap().state, JobState::Succeeded);
    s.stop().await;
}
