//! sta on real storage: each backend (file, btrfs on a loop device, a zfs-fuse pool) with a
//! private tgtd, read and written through QEMU's iSCSI initiator (qemu-io) as a host
//! would. Root only.

use std::path::Path;
use std::time::{Duration, Instant};
use vdc_bus::ReportSink;
use vdc_schema::agent::StorageAgent;
use vdc_schema::bus::{initiator_iqn, ObjectReport, SnapshotSpec, VolumeSpec, VolumeTarget};
use vdc_schema::id::{HostNodeId, SnapshotId, VolumeId};
use vdc_schema::ObservedStorage;
use vdc_sta::backend::{self, BackendConfig};
use vdc_sta::real::RealStorage;
use vdc_sta::testing::{BtrfsLoop, Tgtd, ZfsPool};
use vdc_sta::tgt::Tgt;

async fn wait_report(sink: &ReportSink, id: &str, gen_at_least: u64, want: ObservedStorage) -> ObjectReport {
    let start = Instant::now();
    loop {
        let r = sink.newest(id);
        let done = match &r {
            Some(ObjectReport::Volume(v)) => {
                v.spec_gen >= gen_at_least && (v.state == want || v.state == ObservedStorage::Failed)
            }
            Some(ObjectReport::Snapshot(s)) => s.state == want || s.state == ObservedStorage::Failed,
            _ => false,
        };
        if done {
            return r.unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no {want:?} report for {id}; last: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn volume(r: ObjectReport) -> vdc_schema::bus::VolumeReport {
    match r {
        ObjectReport::Volume(v) => v,
        other => panic!("not a volume report: {other:?}"),
    }
}

/// qemu-io against an iSCSI target, logging in as `host`.
fn qemu_io(target: &VolumeTarget, host: &HostNodeId, cmd: &str) -> Result<String, String> {
    let VolumeTarget::Iscsi { portal, iqn, lun } = target else { panic!("not iSCSI: {target:?}") };
    let json = serde_json::json!({"driver": "raw", "file": {"driver": "iscsi", "transport": "tcp", "portal": portal,
        "target": iqn, "lun": lun, "initiator-name": initiator_iqn(host)}});
    let out = std::process::Command::new("qemu-io")
        .args(["-c", cmd, &format!("json:{json}")])
        .output()
        .expect("qemu-io runs (qemu-utils and qemu-block-extra are installed)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // qemu-io exits 0 even when a read's pattern check fails; it says so.
    if out.status.success() && !text.contains("Pattern verification failed") && !text.contains("failed") {
        Ok(text)
    } else {
        Err(text)
    }
}

fn spec(id: &VolumeId, gen: u64, size: u64, snap: Option<&SnapshotId>, to: Option<&HostNodeId>) -> VolumeSpec {
    VolumeSpec {
        id: id.clone(),
        spec_gen: gen,
        size_mib: size,
        source_snapshot: snap.cloned(),
        source_image: None,
        export_to: to.cloned(),
    }
}

/// The whole life of volumes on one backend: export bound to one host, snapshot, a
/// volume from the snapshot, grow, refusals, a restart of tgtd and sta, and removal.
async fn scenario(cfg: BackendConfig, dir: &Path) {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("vdc_sta=info").try_init();
    let mut tgtd = Tgtd::start(dir).expect("tgtd starts");
    let host_a: HostNodeId = HostNodeId::generate();
    let host_b: HostNodeId = HostNodeId::generate();
    let (port, portal) = (tgtd.control_port, tgtd.portal.clone());
    let start = |sink: ReportSink| {
        let (cfg, portal) = (cfg.clone(), portal.clone());
        let state = dir.join("state.json");
        async move {
            let b = backend::open(&cfg).await.expect("backend opens");
            // The image cache is capped at one small qcow2 (see below).
            RealStorage::new(b, Some(Tgt::new(port, portal)), None, sink, state).with_image_cache_max(Some(CACHE_CAP))
        }
    };
    let sink = ReportSink::open(None).unwrap();
    let sta = start(sink.clone()).await;
    let (cap, _) = sta.backend().capacity().await.unwrap();
    assert!(cap > 0, "capacity is measured");

    // A volume exported to host A: A writes, B is refused at login.
    let v1 = VolumeId::generate();
    sta.ensure_volume(spec(&v1, 1, 64, None, Some(&host_a))).await.unwrap();
    let r = volume(wait_report(&sink, v1.as_str(), 1, ObservedStorage::Available).await);
    assert_eq!(r.state, ObservedStorage::Available, "{r:?}");
    assert_eq!(r.size_mib, 64);
    let t1 = r.target.clone().expect("exported");
    qemu_io(&t1, &host_a, "write -P 0x41 0 1M").expect("host A writes");
    let refused = qemu_io(&t1, &host_b, "read 0 4k").expect_err("host B must not log in");
    assert!(refused.contains("Target not found") || refused.contains("log in"), "{refused}");

    // Snapshot, then write more: a volume from the snapshot holds the old content.
    let s1 = SnapshotId::generate();
    sta.ensure_snapshot(SnapshotSpec { id: s1.clone(), volume_id: v1.clone() }).await.unwrap();
    match wait_report(&sink, s1.as_str(), 0, ObservedStorage::Available).await {
        ObjectReport::Snapshot(s) => assert_eq!((s.state, s.size_mib), (ObservedStorage::Available, 64)),
        other => panic!("{other:?}"),
    }
    qemu_io(&t1, &host_a, "write -P 0x42 0 1M").unwrap();
    let v2 = VolumeId::generate();
    sta.ensure_volume(spec(&v2, 1, 96, Some(&s1), Some(&host_a))).await.unwrap();
    let r2 = volume(wait_report(&sink, v2.as_str(), 1, ObservedStorage::Available).await);
    assert_eq!((r2.state, r2.size_mib), (ObservedStorage::Available, 96), "grown past the snapshot's size");
    let t2 = r2.target.clone().unwrap();
    qemu_io(&t2, &host_a, "read -P 0x41 0 1M").expect("the snapshot's content");
    qemu_io(&t1, &host_a, "read -P 0x42 0 1M").expect("the origin kept its new content");

    // A volume filled from a qcow2 image holds the image's content, and is grown to the
    // size asked for; an image larger than the volume is refused and leaves nothing.
    let img = dir.join("image.qcow2");
    let img_s = img.to_string_lossy().into_owned();
    let run =
        |prog: &str, args: &[&str]| assert!(std::process::Command::new(prog).args(args).status().unwrap().success());
    run("qemu-img", &["create", "-q", "-f", "qcow2", &img_s, "16M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x43 0 1M", &img_s]);
    let image =
        |id: &str| vdc_schema::bus::ImageSpec::host_file(id.parse().unwrap(), vdc_schema::ImageFormat::Qcow2, &img_s);
    let v4 = VolumeId::generate();
    let from_image = VolumeSpec { source_image: Some(image("img-a")), ..spec(&v4, 1, 32, None, Some(&host_a)) };
    sta.ensure_volume(from_image).await.unwrap();
    let r4 = volume(wait_report(&sink, v4.as_str(), 1, ObservedStorage::Available).await);
    assert_eq!((r4.state, r4.size_mib), (ObservedStorage::Available, 32), "{r4:?}");
    qemu_io(r4.target.as_ref().unwrap(), &host_a, "read -P 0x43 0 1M").expect("the image's content");
    qemu_io(r4.target.as_ref().unwrap(), &host_a, "read -P 0x00 20M 1M").expect("zeros past the image");
    let v5 = VolumeId::generate();
    let too_small = VolumeSpec { source_image: Some(image("img-b")), ..spec(&v5, 1, 8, None, None) };
    sta.ensure_volume(too_small).await.unwrap();
    let r5 = volume(wait_report(&sink, v5.as_str(), 1, ObservedStorage::Failed).await);
    assert!(r5.reason.as_deref().unwrap_or("").contains("larger than the volume"), "{r5:?}");
    assert!(!sta.backend().exists(&v5).await, "nothing is left of a refused volume");
    sta.ensure_volume_absent(v4.clone(), 2).await.unwrap();
    wait_report(&sink, v4.as_str(), 2, ObservedStorage::Absent).await;

    // A raw image in dcmgr's store goes straight into a new volume (no cached copy):
    // its bytes, zeros where it has zeros and past its end. Bytes that are not the
    // digest's fail the volume, and leave nothing.
    const MIB: usize = 1 << 20;
    let mut raw = vec![0u8; 9 * MIB];
    raw[..MIB].fill(0x44);
    raw[8 * MIB..].fill(0x45);
    let blob = vdc_schema::bus::BlobRef {
        sha256: sha256_hex(&raw),
        size: raw.len() as u64,
        url: format!("http://127.0.0.1:{}/blob", serve_bytes(raw).await),
        token: "node-credential".into(),
    };
    let stored = |id: &str, blob: vdc_schema::bus::BlobRef| vdc_schema::bus::ImageSpec {
        blob: Some(blob),
        ..vdc_schema::bus::ImageSpec::host_file(id.parse().unwrap(), vdc_schema::ImageFormat::Raw, "upload")
    };
    let v6 = VolumeId::generate();
    let streamed =
        VolumeSpec { source_image: Some(stored("img-raw", blob.clone())), ..spec(&v6, 1, 16, None, Some(&host_a)) };
    sta.ensure_volume(streamed).await.unwrap();
    let r6 = volume(wait_report(&sink, v6.as_str(), 1, ObservedStorage::Available).await);
    assert_eq!((r6.state, r6.size_mib), (ObservedStorage::Available, 16), "{r6:?}");
    let t6 = r6.target.clone().unwrap();
    qemu_io(&t6, &host_a, "read -P 0x44 0 1M").expect("the image's first MiB");
    qemu_io(&t6, &host_a, "read -P 0x00 1M 7M").expect("its zeros");
    qemu_io(&t6, &host_a, "read -P 0x45 8M 1M").expect("its last MiB");
    qemu_io(&t6, &host_a, "read -P 0x00 9M 7M").expect("zeros past the image");
    assert!(!dir.join("images").join(&blob.sha256).exists(), "not kept in the cache");
    let v7 = VolumeId::generate();
    let wrong = vdc_schema::bus::BlobRef { sha256: sha256_hex(b"other bytes"), ..blob };
    sta.ensure_volume(VolumeSpec { source_image: Some(stored("img-bad", wrong)), ..spec(&v7, 1, 16, None, None) })
        .await
        .unwrap();
    let r7 = volume(wait_report(&sink, v7.as_str(), 1, ObservedStorage::Failed).await);
    assert!(r7.reason.as_deref().unwrap_or("").contains("corrupt"), "{r7:?}");
    assert!(!sta.backend().exists(&v7).await, "nothing is left of a volume whose image was corrupt");
    sta.ensure_volume_absent(v6.clone(), 2).await.unwrap();
    wait_report(&sink, v6.as_str(), 2, ObservedStorage::Absent).await;

    // qcow2 images go through the cache, which keeps to its cap: after a second image,
    // only that one is left (the least recently used goes first).
    let mut cached = vec![];
    for (n, pattern) in [(8u64, "0x46"), (9, "0x47")] {
        let image = served_qcow2(dir, n, pattern).await;
        let blob = image.blob.clone().unwrap();
        assert!(blob.size <= CACHE_CAP, "{} bytes", blob.size);
        let v = VolumeId::generate();
        sta.ensure_volume(VolumeSpec { source_image: Some(image), ..spec(&v, 1, 16, None, Some(&host_a)) })
            .await
            .unwrap();
        let r = volume(wait_report(&sink, v.as_str(), 1, ObservedStorage::Available).await);
        qemu_io(r.target.as_ref().unwrap(), &host_a, &format!("read -P {pattern} 0 2M")).expect("the image's bytes");
        cached.push(blob.sha256);
        sta.ensure_volume_absent(v.clone(), 2).await.unwrap();
        wait_report(&sink, v.as_str(), 2, ObservedStorage::Absent).await;
    }
    let left: Vec<String> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![cached[1].clone()], "the first image was pruned, the second kept");

    // Many volumes at once from three images the cache cannot hold together: fetches,
    // copies and prunes interleave, and every volume still gets its image's bytes (a
    // prune never removes a file a copy is reading); the cache ends within its cap.
    let mut images = vec![];
    for (n, pattern) in [(10u64, "0x50"), (11, "0x51"), (12, "0x52")] {
        images.push((served_qcow2(dir, n, pattern).await, pattern));
    }
    let mut made = vec![];
    for round in 0..3 {
        for (image, pattern) in &images {
            let v = VolumeId::generate();
            let s = VolumeSpec { source_image: Some(image.clone()), ..spec(&v, 1, 16, None, Some(&host_a)) };
            sta.ensure_volume(s).await.unwrap();
            made.push((v, *pattern, round));
        }
    }
    for (v, pattern, round) in &made {
        let r = volume(wait_report(&sink, v.as_str(), 1, ObservedStorage::Available).await);
        assert_eq!(r.state, ObservedStorage::Available, "volume {round} of {pattern}: {r:?}");
        qemu_io(r.target.as_ref().unwrap(), &host_a, &format!("read -P {pattern} 0 2M"))
            .unwrap_or_else(|e| panic!("volume {round} of {pattern} holds its image's bytes: {e}"));
    }
    let left: Vec<(String, u64)> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    assert!(left.iter().map(|f| f.1).sum::<u64>() <= CACHE_CAP, "the cache keeps to its cap: {left:?}");
    assert!(left.iter().all(|f| !f.0.starts_with('.')), "no transfer is left half-done: {left:?}");
    for (v, _, _) in &made {
        sta.ensure_volume_absent(v.clone(), 2).await.unwrap();
        wait_report(&sink, v.as_str(), 2, ObservedStorage::Absent).await;
    }

    // Refusals: an unknown snapshot is a failure with a reason, and leaves nothing.
    let v3 = VolumeId::generate();
    sta.ensure_volume(spec(&v3, 1, 64, Some(&SnapshotId::generate()), None)).await.unwrap();
    let r3 = volume(wait_report(&sink, v3.as_str(), 1, ObservedStorage::Failed).await);
    assert_eq!(r3.state, ObservedStorage::Failed);
    assert!(r3.reason.as_deref().unwrap_or("").contains("not on this storage node"), "{r3:?}");
    assert!(!sta.backend().exists(&v3).await);
    assert!(sta.ensure_volume(spec(&v3, 2, 0, None, None)).await.is_err(), "size 0 is refused");

    // Grow v1, moving its export from host A to host B at the same time.
    sta.ensure_volume(spec(&v1, 2, 128, None, Some(&host_b))).await.unwrap();
    let r = volume(wait_report(&sink, v1.as_str(), 2, ObservedStorage::Available).await);
    assert_eq!(r.size_mib, 128);
    let t1 = r.target.unwrap();
    qemu_io(&t1, &host_a, "read 0 4k").expect_err("host A lost the export");
    qemu_io(&t1, &host_b, "read -P 0x42 127M 4k").expect_err("the grown tail reads as zeros, not 0x42");
    qemu_io(&t1, &host_b, "read -P 0x00 127M 4k").expect("host B reads the grown volume");

    // tgtd and sta restart: the targets come back from the next ensures (dcmgr sends them
    // when sta registers), with the data.
    drop(sta);
    tgtd.restart().expect("tgtd restarts");
    assert!(tgtd.targets().is_empty(), "a restarted tgtd has no targets");
    let sink = ReportSink::open(None).unwrap();
    let sta = start(sink.clone()).await;
    sta.report_all().await.unwrap();
    let r = volume(wait_report(&sink, v1.as_str(), 2, ObservedStorage::Available).await);
    assert!(r.target.is_none(), "report_all tells the truth: not exported now");
    sta.ensure_volume(spec(&v1, 2, 128, None, Some(&host_b))).await.unwrap();
    sta.ensure_volume(spec(&v2, 1, 96, Some(&s1), Some(&host_a))).await.unwrap();
    // Exported again once each volume is reported with a target (the report follows the
    // whole export: target, LUN and initiator binding).
    let start_wait = Instant::now();
    for v in [&v1, &v2] {
        while !matches!(sink.newest(v.as_str()), Some(ObjectReport::Volume(r)) if r.target.is_some()) {
            assert!(start_wait.elapsed() < Duration::from_secs(30), "targets not restored: {:?}", tgtd.targets());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(tgtd.targets().len(), 2, "{:?}", tgtd.targets());
    qemu_io(&t1, &host_b, "read -P 0x42 0 1M").expect("v1 data after the restart");
    qemu_io(&t2, &host_a, "read -P 0x41 0 1M").expect("v2 data after the restart");

    // Unexport, delete the snapshot and the volumes: nothing is left.
    sta.ensure_volume(spec(&v2, 2, 96, Some(&s1), None)).await.unwrap();
    let r = volume(wait_report(&sink, v2.as_str(), 2, ObservedStorage::Available).await);
    assert!(r.target.is_none());
    sta.ensure_snapshot_absent(s1.clone(), v1.clone()).await.unwrap();
    wait_report(&sink, s1.as_str(), 0, ObservedStorage::Absent).await;
    assert!(!sta.backend().snapshot_exists(&v1, &s1).await);
    for v in [&v1, &v2] {
        sta.ensure_volume_absent(v.clone(), 3).await.unwrap();
        let r = volume(wait_report(&sink, v.as_str(), 3, ObservedStorage::Absent).await);
        assert_eq!(r.state, ObservedStorage::Absent);
        assert!(!sta.backend().exists(v).await);
    }
    assert!(tgtd.targets().is_empty(), "no target left: {:?}", tgtd.targets());
}

/// Image `img-qN`: a 16 MiB qcow2 whose first 2 MiB hold `pattern`, served over HTTP as
/// dcmgr's store serves a blob.
async fn served_qcow2(dir: &Path, n: u64, pattern: &str) -> vdc_schema::bus::ImageSpec {
    let q = dir.join(format!("cached-{n}.qcow2"));
    let q_s = q.to_string_lossy().into_owned();
    let write = format!("write -P {pattern} 0 2M");
    for (prog, args) in [
        ("qemu-img", vec!["create", "-q", "-f", "qcow2", &q_s, "16M"]),
        ("qemu-io", vec!["-f", "qcow2", "-c", &write, &q_s]),
    ] {
        assert!(std::process::Command::new(prog).args(&args).status().unwrap().success(), "{prog} {args:?}");
    }
    let bytes = std::fs::read(&q).unwrap();
    let blob = vdc_schema::bus::BlobRef {
        sha256: sha256_hex(&bytes),
        size: bytes.len() as u64,
        url: format!("http://127.0.0.1:{}/blob", serve_bytes(bytes).await),
        token: "node-credential".into(),
    };
    vdc_schema::bus::ImageSpec {
        blob: Some(blob),
        ..vdc_schema::bus::ImageSpec::host_file(
            format!("img-q{n}").parse().unwrap(),
            vdc_schema::ImageFormat::Qcow2,
            "upload",
        )
    }
}

/// The cap of the scenario's image cache: one of its small qcow2 images, not two.
const CACHE_CAP: u64 = 3 << 20;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// An HTTP server on loopback answering every GET with `body` (or from `Range: bytes=N-`),
/// as dcmgr's blob store does; its port.
async fn serve_bytes(body: Vec<u8>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let from = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                let (status, at) = match from {
                    Some(n) => ("206 Partial Content", n),
                    None => ("200 OK", 0),
                };
                let part = &body[at..];
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", part.len());
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(part).await;
            });
        }
    });
    port
}

fn workdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("vdc-sta-{name}-")).tempdir_in("/var/tmp").unwrap()
}

#[tokio::test]
async fn file_backend() {
    let dir = workdir("file");
    scenario(BackendConfig::File { dir: dir.path().join("vols") }, dir.path()).await;
}

#[tokio::test]
async fn btrfs_backend_on_a_loop_device() {
    let dir = workdir("btrfs");
    let fs = BtrfsLoop::create(dir.path(), 512).expect("btrfs on a loop device");
    scenario(BackendConfig::Btrfs { dir: fs.mount.clone() }, dir.path()).await;
}

#[tokio::test]
async fn zfs_backend_on_a_zfs_fuse_pool() {
    let dir = workdir("zfs");
    let pool = ZfsPool::create(dir.path(), 512).expect("a zfs-fuse pool");
    scenario(BackendConfig::Zfs { dataset: format!("{}/vdc", pool.name) }, dir.path()).await;
}

#[tokio::test]
async fn btrfs_refuses_a_directory_that_is_not_btrfs() {
    let dir = workdir("notbtrfs");
    let err = backend::open(&BackendConfig::Btrfs { dir: dir.path().to_owned() }).await.err().expect("refused");
    assert!(err.to_string().contains("not btrfs"), "{err}");
}
