//! A VDC bundle with its data, on real parts: a real QEMU guest, stopped, whose disk the
//! real hva captures (flattened overlay), and a 256 MiB volume on sta's file backend with
//! known bytes (read through a snapshot by the real sta), and a small one whose bytes
//! begin with a qcow2 image. It is exported through the API,
//! imported into another account, and the bytes arrive: the guest's disk image and the
//! new volume's file have the SHA-256 of the originals, and the guest boots from its
//! carried disk. Prints export and import throughput against `cp` of the same volume and
//! against `tar | zstd -1` (and `zstd -d | tar -x`) of it, measured in the same run.
//!
//! Needs root, libvirtd and the tiny image (tests/run.sh provides them).

use std::path::Path;
use std::time::{Duration, Instant};
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::*;
use vdc_sta::backend::BackendConfig;
use vdc_tests::{register_images, wait_console, RealStorageSetup, Stack};

const BOOT: Duration = Duration::from_secs(120);
const VOLUME_MIB: u64 = 256;

fn run(p: &str, a: &[&str]) -> String {
    let out = std::process::Command::new(p).args(a).output().unwrap();
    assert!(out.status.success(), "{p} {a:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()]).split_whitespace().next().unwrap().to_owned()
}

/// Volume `name` once it is filled (available).
async fn filled(c: &Client, name: &str) -> Volume {
    let v = c.list_all_volumes().await.unwrap().into_iter().find(|v| v.name == name).unwrap();
    for _ in 0..600 {
        let now = c.get_volume(&v.id).await.unwrap();
        if now.state != VolumeState::Creating {
            assert_eq!(now.state, VolumeState::Available, "{now:?}");
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("volume {name} is not filled");
}

async fn ok<T>(c: &Client, a: Accepted<T>) -> T {
    let j = c.wait_job(&a.job.id, BOOT).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    a.resource
}

fn mib_s(secs: f64) -> f64 {
    VOLUME_MIB as f64 / secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_and_a_volume_arrive_with_their_bytes() {
    vdc_tests::init_logging();
    let dir = tempfile::Builder::new().prefix("vdc-bundledata-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(1, 2);
    o.real_storage = Some(RealStorageSetup {
        backend: BackendConfig::File { dir: dir.path().join("volumes") },
        iscsi: None,
        data_dir: dir.path().join("sta"),
    });
    let s = Stack::start(o).await;
    let (kernel, _) = register_images(&s).await;
    let src = s.account("bundle-src").await;

    // The guest: a qcow2 disk booted once, stopped, then written while off (the tiny
    // guest runs from its initramfs), so its disk differs from its image.
    let disk = dir.path().join("disk.qcow2");
    let d = disk.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", d, "16M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 0 64k", d]);
    let img = src
        .create_image(&CreateImage {
            default_user: Some("tiny".into()),
            kernel_id: Some(kernel.clone()),
            os: Some("tiny".into()),
            ..vdc_tests::image_request("base-disk", ImageFormat::Qcow2)
        })
        .await
        .unwrap();
    src.upload_image_file(&img.id, &disk, |_| {}).await.unwrap();
    let req = CreateInstance { root_disk_size: Some(32 << 20), ..vdc_tests::qemu_guest(&img.id, "guest") };
    let id = ok(&src, src.create_instance(&req).await.unwrap()).await.id;
    wait_console(&src, &id, &format!("vdc-guest: instance-id={id}"), BOOT).await;
    ok(&src, src.stop_instance(&id).await.unwrap()).await;
    let overlay =
        s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances").join(id.as_str()).join("root.qcow2");
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0xa5 1M 64k", overlay.to_str().unwrap()]);
    let expected = dir.path().join("expected.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", "-f", "qcow2", overlay.to_str().unwrap(), expected.to_str().unwrap()]);

    // The volume, holding known bytes.
    let vol = CreateVolume { name: "data".into(), size_mib: Some(VOLUME_MIB), snapshot_id: None, image_id: None };
    let vol = ok(&src, src.create_volume(&vol).await.unwrap()).await;
    let luns = dir.path().join("volumes/volumes");
    let lun = luns.join(format!("{}.img", vol.id));
    std::fs::write(&lun, vdc_tests::incompressible((VOLUME_MIB << 20) as usize)).unwrap();
    let want_volume = sha256(&lun);
    // A small one beginning with a whole qcow2 image, as a guest may write one to its
    // disk: its bytes travel as they are, not as the disk qemu-img would find in them.
    let nested = CreateVolume { name: "nested".into(), size_mib: Some(4), snapshot_id: None, image_id: None };
    let nested = ok(&src, src.create_volume(&nested).await.unwrap()).await;
    let mut bytes = vdc_tests::incompressible(4 << 20);
    let inner = dir.path().join("inner.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", inner.to_str().unwrap(), "1M"]);
    let inner = std::fs::read(&inner).unwrap();
    bytes[..inner.len()].copy_from_slice(&inner);
    let nested_lun = luns.join(format!("{}.img", nested.id));
    std::fs::write(&nested_lun, bytes).unwrap();
    let want_nested = sha256(&nested_lun);

    let t = Instant::now();
    run("cp", &[lun.to_str().unwrap(), dir.path().join("cp.img").to_str().unwrap()]);
    let cp = t.elapsed().as_secs_f64();
    std::fs::remove_file(dir.path().join("cp.img")).unwrap();
    // The floor the issue names: `tar | zstd -1` of the same bytes, and back.
    let packed = dir.path().join("floor.tar.zst");
    let sh = |script: String| run("sh", &["-c", &script]);
    let t = Instant::now();
    sh(format!("tar -cf - -C {} {}.img | zstd -1 -q -f -o {}", luns.display(), vol.id, packed.display()));
    let tar_zstd = t.elapsed().as_secs_f64();
    let unpacked = dir.path().join("floor");
    std::fs::create_dir(&unpacked).unwrap();
    let t = Instant::now();
    sh(format!("zstd -d -q -c {} | tar -xf - -C {}", packed.display(), unpacked.display()));
    let unzstd_tar = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&unpacked).unwrap();
    std::fs::remove_file(&packed).unwrap();

    let file = dir.path().join("vdc.bundle");
    let mut f = tokio::fs::File::create(&file).await.unwrap();
    let t = Instant::now();
    let n = src.export_bundle(false, false, &mut f, |_| {}).await.unwrap();
    let export = t.elapsed().as_secs_f64();
    drop(f);
    assert!(n > VOLUME_MIB << 20, "the bundle holds the volume: {n} bytes");
    // The export's snapshot and images are gone from the source.
    let live = |c: Client| async move {
        c.list_all_snapshots().await.unwrap().into_iter().filter(|s| s.state != SnapshotState::Deleted).count()
    };
    for _ in 0..100 {
        if live(src.clone()).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live(src.clone()).await, 0, "the export's snapshot is deleted");
    assert!(!src.list_all_images().await.unwrap().iter().any(|i| i.name.starts_with("bundle-export-")));

    // Into another account of the site (which trusts its own key).
    let dst = s.account("bundle-dst").await;
    let t = Instant::now();
    let done = dst.import_bundle(Client::file_body(&file).await.unwrap(), &[]).await.unwrap();
    let import = t.elapsed().as_secs_f64();
    assert!(done.created);
    let guest = dst.list_all_instances().await.unwrap().into_iter().find(|i| i.name == "guest").unwrap();
    assert_eq!(guest.state, InstanceState::Stopped, "a stopped guest stays stopped");
    let root = dst.get_image(&guest.image_id).await.unwrap();
    assert_eq!(root.name, "guest-root");
    let root_blob = s
        .opts
        .images
        .dir
        .clone()
        .unwrap()
        .join("blobs/sha256")
        .join(root.checksum.unwrap().trim_start_matches("sha256:"));
    assert_eq!(sha256(&root_blob), sha256(&expected), "the guest's disk arrived: the flattened overlay");

    let v = filled(&dst, "data").await;
    let to_volume = t.elapsed().as_secs_f64();
    assert_eq!(sha256(&luns.join(format!("{}.img", v.id))), want_volume, "the volume's bytes arrived");
    // Before, the nested volume's bytes were taken for the qcow2 they begin with: the
    // volume at the target held that image's empty disk.
    let v = filled(&dst, "nested").await;
    assert_eq!(sha256(&luns.join(format!("{}.img", v.id))), want_nested, "the nested volume's bytes arrived");

    // The guest boots from its carried disk.
    ok(&dst, dst.start_instance(&guest.id).await.unwrap()).await;
    wait_console(&dst, &guest.id, &format!("vdc-guest: instance-id={}", guest.id), BOOT).await;
    eprintln!(
        "bundle of {VOLUME_MIB} MiB volume + disk ({n} bytes): export {export:.2} s ({:.0} MiB/s), import {import:.2} s \
         ({:.0} MiB/s; volume filled after {to_volume:.1} s), cp {cp:.2} s ({:.0} MiB/s); floors in the same run: \
         tar | zstd -1 {tar_zstd:.2} s ({:.0} MiB/s: export {:.2} x), zstd -d | tar -x {unzstd_tar:.2} s ({:.0} MiB/s: \
         import {:.2} x, volume filled {:.2} x)",
        mib_s(export),
        mib_s(import),
        mib_s(cp),
        mib_s(tar_zstd),
        tar_zstd / export,
        mib_s(unzstd_tar),
        unzstd_tar / import,
        unzstd_tar / to_volume
    );
    for (c, i) in [(&dst, &guest.id), (&src, &id)] {
        ok(c, c.terminate_instance(i).await.unwrap()).await;
    }
    s.stop().await;
}
