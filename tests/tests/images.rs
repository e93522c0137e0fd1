//! Images whose data dcmgr stores: uploads and URL imports, with real qemu-img, real
//! tarballs and a real HTTP server on loopback; every scenario on SQLite and PostgreSQL.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vdc_cli::client::{Client, ClientError};
use vdc_schema::api::*;
use vdc_schema::*;
use vdc_tests::{eventually, on_both_databases, wait_state, Db, Stack, StackOptions};

on_both_databases!(
    uploads_are_checked_before_they_are_available,
    a_stalled_upload_does_not_hold_a_stop,
    url_imports_reach_public_addresses_only,
    nodes_fetch_blobs_with_their_credential_and_resume,
    vdc_image_import_uploads_a_file_and_says_why_data_is_refused,
    images_are_shared_with_named_accounts,
    stopped_instances_are_captured_as_images,
    an_instance_on_a_deleted_kernel_is_captured_and_exported,
    containers_are_captured_as_tar_images,
    snapshots_become_images,
    a_snapshot_is_not_deleted_while_an_image_is_made_of_it,
    storing_a_blob_holds_up_only_uploads_of_the_same_data,
    other_accounts_see_the_kind_of_an_images_source_only,
);

fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn req(name: &str, format: ImageFormat, source: Option<String>, checksum: Option<String>) -> CreateImage {
    let hypervisors = match format {
        ImageFormat::Tar => vec![HypervisorKind::Lxc],
        _ => vec![HypervisorKind::Qemu, HypervisorKind::Kvm],
    };
    CreateImage { hypervisors, source, checksum, ..vdc_tests::image_request(name, format) }
}

fn qemu_img(args: &[&str]) {
    assert!(std::process::Command::new("qemu-img").args(args).status().expect("qemu-img").success(), "{args:?}");
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A small real qcow2 with a few bytes written, and a hostile one whose backing file is
/// a host file.
fn disks(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let good = dir.join("good.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", good.to_str().unwrap(), "32M"]);
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success());
    let bad = dir.join("bad.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", bad.to_str().unwrap(), "1M"]);
    (std::fs::read(good).unwrap(), std::fs::read(bad).unwrap())
}

/// A tar entry: a hand-made header (the tar crate's builder refuses hostile names) of
/// type `kind`, and `body` padded to whole blocks.
pub(crate) fn tar_entry(name: &str, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", body.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(body);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar
}

/// A gzip-compressed tarball with one entry named `name`.
fn targz(name: &str) -> Vec<u8> {
    let mut tar = tar_entry(name, b'0', b"data");
    tar.extend([0u8; 1024]);
    gzip(&tar)
}

/// gzip through the system's gzip (the tests crate has no compression library).
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    // Written beside the read of the output: a pipe holds only so much of either.
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap().stdout;
    writer.join().unwrap();
    out
}

fn images_dir(s: &Stack) -> PathBuf {
    s.opts.images.dir.clone().expect("the harness sets it")
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}

/// Starts an upload by hand, sends `sent` of the `announced` bytes and returns the open
/// connection (dropping it cuts the upload off).
async fn partial_upload(s: &Stack, c: &Client, id: &ImageId, announced: usize, sent: usize) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(s.dcmgr().addr).await.unwrap();
    let head = format!(
        "PUT /api/v1/images/{id}/file HTTP/1.1\r\nHost: vdc\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n",
        c.token()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&vec![0u8; sent]).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// The head of dcmgr's answer on an upload's connection, waited for `within`.
async fn upload_answer(conn: &mut tokio::net::TcpStream, within: Duration, what: &str) -> String {
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(within, conn.read(&mut answer)).await.expect(what).unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// A client that stalls half-way through an upload held a stop of dcmgr (a Ctrl-C of
/// `vdc up`, twice) for as long as it stayed connected: requests under way get a grace
/// period, then are cut; the image stays pending, to be uploaded again.
async fn a_stalled_upload_does_not_hold_a_stop(db: Db) {
    let mut s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("stall").await;
    let img = c.create_image(&req("slow", ImageFormat::Raw, None, None)).await.unwrap();
    let conn = partial_upload(&s, &c, &img.id, 1 << 20, 1000).await;
    tokio::time::timeout(Duration::from_secs(60), s.restart_dcmgr()).await.expect("the stop ended");
    assert_eq!(c.get_image(&img.id).await.unwrap().state, ImageState::Pending);
    drop(conn);
    s.stop().await;
}

async fn uploads_are_checked_before_they_are_available(db: Db) {
    let mut s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("up").await;
    let other = s.account("other").await;
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad) = disks(tmp.path());
    let store = images_dir(&s);
    let blobs = store.join("blobs/sha256");

    // A tenant registers an image without a source: pending, not bootable yet.
    let img =
        c.create_image(&req("mine", ImageFormat::Raw, None, Some(format!("sha256:{}", sha256(&good))))).await.unwrap();
    assert_eq!((img.state, img.source.as_str()), (ImageState::Pending, "upload"));
    let mut inst = CreateInstance {
        name: Some("early".into()),
        image_id: img.id.clone(),
        cpus: 1,
        memory_mib: 256,
        hypervisor: None,
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        interfaces: vec![],
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    };
    assert_eq!(err(c.create_instance(&inst).await), (409, "image_not_available".into()));
    // Not the other account's to upload to.
    assert_eq!(err(other.upload_image(&img.id, good.clone()).await).0, 404);

    // Cut off half-way: still pending, nothing kept, and it can be uploaded again.
    let conn = partial_upload(&s, &c, &img.id, good.len(), good.len() / 2).await;
    eventually(Duration::from_secs(10), || async { (!files_in(&store.join("staging")).is_empty()).then_some(()) })
        .await
        .expect("the upload is being received");
    // One upload at a time.
    assert_eq!(err(c.upload_image(&img.id, good.clone()).await), (409, "invalid_state".into()));
    drop(conn);
    eventually(Duration::from_secs(10), || async { files_in(&store.join("staging")).is_empty().then_some(()) })
        .await
        .expect("the cut-off upload leaves no staging file");
    assert_eq!(c.get_image(&img.id).await.unwrap().state, ImageState::Pending);
    assert!(files_in(&blobs).is_empty(), "{:?}", files_in(&blobs));

    // The whole data: probed as qcow2 although announced as raw, checksum verified.
    let up = c.upload_image(&img.id, good.clone()).await.unwrap();
    assert_eq!(up.state, ImageState::Available);
    assert_eq!(up.format, ImageFormat::Qcow2, "the format is what qemu-img finds");
    assert_eq!(up.size_bytes, Some(good.len() as u64));
    assert_eq!(up.checksum, Some(format!("sha256:{}", sha256(&good))));
    assert_eq!(std::fs::read(blobs.join(sha256(&good))).unwrap(), good);
    assert_eq!(err(c.upload_image(&img.id, good.clone()).await), (409, "invalid_state".into()), "once");
    assert_eq!(up.virtual_size, Some(32 << 20), "the disk's size, read from the data");
    // A disk too small for the image is refused when asked for, not when sta copies.
    inst.root_disk_size = Some(16 << 20);
    assert_eq!(err(c.create_instance(&inst).await), (400, "root_disk_too_small".into()));
    inst.root_disk_size = None;
    let vol =
        |size_mib| CreateVolume { name: "filled".into(), size_mib, snapshot_id: None, image_id: Some(img.id.clone()) };
    assert_eq!(err(c.create_volume(&vol(Some(31))).await), (400, "invalid_size".into()));
    let v = c.create_volume(&vol(None)).await.expect("a volume of the image's size");
    assert_eq!(v.resource.size_mib, 32);
    // Stored by a dcmgr that did not record disk sizes: the restarted one reads it.
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&s.database_url).await.unwrap();
        sqlx::query("UPDATE images SET virtual_size = NULL").execute(&mut conn).await.unwrap();
    }
    assert_eq!(c.get_image(&img.id).await.unwrap().virtual_size, None);
    s.restart_dcmgr().await;
    assert_eq!(c.get_image(&img.id).await.unwrap().virtual_size, Some(32 << 20), "read again at start");
    inst.name = Some("booted".into());
    let booted = c.create_instance(&inst).await.expect("an available image boots").resource.id;

    // Hostile and wrong data: refused with a clear code, the image failed, nothing stored.
    let cases: Vec<(ImageFormat, Vec<u8>, Option<String>, &str)> = vec![
        (ImageFormat::Qcow2, bad.clone(), None, "backing_file"),
        (ImageFormat::Qcow2, good.clone(), Some(format!("sha256:{}", "0".repeat(64))), "checksum_mismatch"),
        // Nothing: a disk of no bytes (an upload from a pipe sent none) boots nothing.
        (ImageFormat::Raw, vec![], None, "empty_image"),
        (ImageFormat::Tar, targz("../../etc/cron.d/evil"), None, "unsafe_tar"),
        (ImageFormat::Tar, targz("/etc/shadow"), None, "unsafe_tar"),
        (ImageFormat::Tar, good.clone(), None, "format_mismatch"),
        // A device node in a second gzip member, after a first without the end blocks
        // (what GNU tar on a host unpacked and a single-member check never saw).
        (
            ImageFormat::Tar,
            [gzip(&tar_entry("init.sh", b'0', b"#!")), gzip(&tar_entry("dev/mem", b'3', b""))].concat(),
            None,
            "unsafe_tar",
        ),
        // A 64 MiB "long name" of zeros (64 KiB compressed) that the tar parser would
        // have held in memory whole.
        (ImageFormat::Tar, gzip(&tar_entry("././@LongLink", b'L', &vec![0u8; 64 << 20])), None, "unsafe_tar"),
    ];
    for (i, (format, data, checksum, code)) in cases.into_iter().enumerate() {
        let im = c.create_image(&req(&format!("bad{i}"), format, None, checksum)).await.unwrap();
        assert_eq!(err(c.upload_image(&im.id, data).await), (400, code.to_owned()), "case {i}");
        let im = c.get_image(&im.id).await.unwrap();
        assert_eq!(im.state, ImageState::Failed, "case {i}");
        assert!(im.failure_reason.as_deref().unwrap_or("").starts_with(code), "{:?}", im.failure_reason);
        assert_eq!(err(c.upload_image(&im.id, vec![1u8; 10]).await), (409, "invalid_state".into()), "failed is final");
        inst.image_id = im.id.clone();
        assert_eq!(err(c.create_instance(&inst).await), (409, "image_not_available".into()));
    }
    assert_eq!(files_in(&blobs), [sha256(&good)], "only the good data is stored");
    assert!(files_in(&store.join("staging")).is_empty());
    let msg = c.get_image(&c.list_all_images().await.unwrap().iter().find(|i| i.name == "bad0").unwrap().id).await;
    assert!(msg.unwrap().failure_reason.unwrap().contains("/etc/shadow"), "the reason names the backing file");

    // A safe tarball is a tar image.
    let t = c.create_image(&req("rootfs", ImageFormat::Tar, None, None)).await.unwrap();
    assert_eq!(c.upload_image(&t.id, targz("init.sh")).await.unwrap().state, ImageState::Available);

    // The same bytes twice are stored once; the blob goes with the last image using it.
    let twin = c.create_image(&req("twin", ImageFormat::Qcow2, None, None)).await.unwrap();
    c.upload_image(&twin.id, good.clone()).await.unwrap();
    assert_eq!(files_in(&blobs).len(), 2, "the disk and the tarball");
    c.delete_image(&twin.id).await.unwrap();
    assert!(blobs.join(sha256(&good)).exists(), "still used by {}", img.id);
    // Deleted while an instance uses it: gone for the account at once, its data kept for
    // the instance (stopped, it may start again on another host), its name held; removed
    // once the instance is terminated.
    wait_state(&c, &booted, InstanceState::Running).await;
    let images_used = |c: &Client| {
        let c = c.clone();
        async move { c.own_quotas().await.unwrap().quotas.iter().find(|u| u.key == QuotaKey::Images).unwrap().used }
    };
    let counted = images_used(&c).await;
    c.delete_image(&img.id).await.unwrap();
    assert_eq!(err(c.get_image(&img.id).await).0, 404);
    assert!(!c.list_all_images().await.unwrap().iter().any(|i| i.id == img.id));
    assert_eq!(err(c.delete_image(&img.id).await).0, 404, "deleted once");
    inst.image_id = img.id.clone();
    assert_eq!(err(c.create_instance(&inst).await).0, 404, "nothing new boots it");
    assert_eq!(err(c.create_image(&req("mine", ImageFormat::Raw, None, None)).await), (409, "name_taken".into()));
    let held = c.create_image(&req("mine", ImageFormat::Raw, None, None)).await.unwrap_err().to_string();
    assert!(held.contains(&format!("held by deleted image {}", img.id)), "{held}");
    assert!(blobs.join(sha256(&good)).exists(), "kept for {booted}");
    // Its data is still the account's: it counts in the image quotas until it goes.
    assert_eq!(images_used(&c).await, counted, "a deleted image still used counts");
    for action in [InstanceAction::Stop, InstanceAction::Start] {
        let a = c.instance_action(&booted, action).await.unwrap();
        assert_eq!(c.wait_job(&a.job.id, Duration::from_secs(15)).await.unwrap().state, JobState::Succeeded);
    }
    let t = c.terminate_instance(&booted).await.unwrap();
    c.wait_job(&t.job.id, Duration::from_secs(15)).await.unwrap();
    eventually(Duration::from_secs(20), || async { (!blobs.join(sha256(&good)).exists()).then_some(()) })
        .await
        .expect("the data goes once no instance uses it");
    assert_eq!(images_used(&c).await, counted - 1);
    assert_eq!(c.create_image(&req("mine", ImageFormat::Raw, None, None)).await.unwrap().name, "mine", "name free");

    // Deleted while its data arrives: the upload ends in 404 and keeps nothing.
    let gone = c.create_image(&req("gone", ImageFormat::Raw, None, None)).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut conn = partial_upload(&s, &c, &gone.id, data.len(), 0).await;
    conn.write_all(&data[..100_000]).await.unwrap();
    eventually(Duration::from_secs(10), || async { (!files_in(&store.join("staging")).is_empty()).then_some(()) })
        .await
        .expect("the upload is being received");
    c.delete_image(&gone.id).await.unwrap();
    conn.write_all(&data[100_000..]).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!blobs.join(sha256(&data)).exists(), "the deleted image's data is not kept");
    assert!(files_in(&store.join("staging")).is_empty());

    // Kinds that are an operator's only.
    let mut k = req("k", ImageFormat::Kernel, None, None);
    assert_eq!(err(c.create_image(&k).await), (400, "invalid_image".into()));
    k.source = Some("/etc/shadow".into());
    assert_eq!(err(c.create_image(&k).await).0, 403);
    let mut k = req("k", ImageFormat::Raw, Some("/var/lib/vdc/images/../../../etc/shadow".into()), None);
    assert_eq!(err(s.admin.create_image(&k).await), (400, "invalid_source".into()), "outside images.file_dirs");
    k.source = Some("/root/disk.raw".into());
    assert_eq!(err(s.admin.create_image(&k).await), (400, "invalid_source".into()));
    s.stop().await;
}

/// A one-file HTTP server on loopback: `/disk` answers `body`, `/to-metadata` redirects
/// to the metadata address, `/stall-once` never answers its first request and then
/// answers as `/disk`. Counts the requests it served.
async fn http_server(body: Vec<u8>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = l.accept().await else { return };
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            let stalled = stalled.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let resp = match path.as_str() {
                    "/stall-once" if !stalled.swap(true, std::sync::atomic::Ordering::SeqCst) => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    "/disk" | "/stall-once" => {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    "/to-metadata" => b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\n\
                        Content-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec(),
                    _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = conn.write_all(&resp).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, hits)
}

/// A server on loopback that announces 1,000,000 bytes (or, `announce` false, no length)
/// and sends 1 KiB every 100 ms; or (`silent`) that never answers. The flag says the
/// client closed the connection before the end.
async fn trickle_server_with(announce: bool, silent: bool) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let e = ended.clone();
    tokio::spawn(async move {
        let Ok((mut conn, _)) = l.accept().await else { return };
        let mut buf = vec![0u8; 4096];
        let _ = conn.read(&mut buf).await;
        if silent {
            // Holds the request unanswered until the client gives up.
            let _ = conn.read(&mut buf).await;
            e.store(true, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        let length = if announce { "Content-Length: 1000000\r\n" } else { "" };
        let head = format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n");
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..1000 {
            if conn.write_all(&[0u8; 1000]).await.is_err() {
                e.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (port, ended)
}

async fn trickle_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    trickle_server_with(true, false).await
}

/// This host's address on its default route (no packet is sent: a UDP socket only picks
/// its source address when connected).
fn own_routed_address() -> std::net::IpAddr {
    let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    u.connect("198.51.100.1:9").expect("this machine has a default route (apt-get needs one)");
    u.local_addr().unwrap().ip()
}

async fn failure_of(c: &Client, id: &ImageId) -> String {
    let img = c.wait_image(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(img.state, ImageState::Failed, "{img:?}");
    img.failure_reason.unwrap_or_default()
}

async fn url_imports_reach_public_addresses_only(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = disks(tmp.path());
    let (port, hits) = http_server(good.clone()).await;

    // By default: loopback, the metadata address and a name resolving to loopback are
    // refused before any connection; the image fails and says why.
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("imp").await;
    for (i, url) in [
        format!("http://127.0.0.1:{port}/disk"),
        format!("http://localhost:{port}/disk"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/x".to_owned(),
        "http://10.1.2.3/x".to_owned(),
        "http://192.0.2.1/x".to_owned(),
        // The host's own address, which a service meant for the host may listen on.
        format!("http://{}:{port}/disk", own_routed_address()),
    ]
    .into_iter()
    .enumerate()
    {
        let img = c.create_image(&req(&format!("u{i}"), ImageFormat::Qcow2, Some(url.clone()), None)).await.unwrap();
        assert_eq!(img.state, ImageState::Pending);
        let why = failure_of(&c, &img.id).await;
        assert!(why.starts_with("forbidden_address"), "{url}: {why}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was fetched");
    for bad in ["ftp://example.com/x", "http://user:pw@example.com/x", "gopher://x"] {
        assert_eq!(err(c.create_image(&req("u", ImageFormat::Qcow2, Some(bad.into()), None)).await).0, 400, "{bad}");
    }
    s.stop().await;

    // The operator allows 127.0.0.1: the import works, and is checked as an upload; a
    // redirect to the metadata address is still refused; so is data over the size cap.
    let mut opts = StackOptions::new(db);
    opts.images.import_allow = vec!["127.0.0.1/32".into()];
    opts.images.max_bytes = 1 << 20;
    opts.images.import_stall_timeout_s = 1;
    let mut s = Stack::start(opts).await;
    let c = s.account("imp").await;
    // An import cut short by a dcmgr restart starts again and completes.
    let resumed = c
        .create_image(&req("resumed", ImageFormat::Qcow2, Some(format!("http://127.0.0.1:{port}/stall-once")), None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get_image(&resumed.id).await.unwrap().state, ImageState::Pending);
    s.restart_dcmgr().await;
    let resumed = c.wait_image(&resumed.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(resumed.state, ImageState::Available, "{:?}", resumed.failure_reason);
    let img = c
        .create_image(&req("deb", ImageFormat::Qcow2, Some(format!("http://127.0.0.1:{port}/disk")), None))
        .await
        .unwrap();
    let img = c.wait_image(&img.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(img.state, ImageState::Available, "{:?}", img.failure_reason);
    assert_eq!(img.checksum, Some(format!("sha256:{}", sha256(&good))));
    assert!(images_dir(&s).join("blobs/sha256").join(sha256(&good)).exists());
    // Deleting an image stops its download (before, it ran to its end for nothing, and a
    // tenant could start any number of them by creating and deleting images).
    let (tport, ended) = trickle_server().await;
    let slow =
        c.create_image(&req("slow", ImageFormat::Raw, Some(format!("http://127.0.0.1:{tport}/")), None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.get_image(&slow.id).await.unwrap().state, ImageState::Pending);
    assert!(!files_in(&images_dir(&s).join("staging")).is_empty(), "the download is under way");
    c.delete_image(&slow.id).await.unwrap();
    eventually(Duration::from_secs(5), || async { ended.load(std::sync::atomic::Ordering::SeqCst).then_some(()) })
        .await
        .expect("the download stops when its image is deleted");
    eventually(Duration::from_secs(5), || async { files_in(&images_dir(&s).join("staging")).is_empty().then_some(()) })
        .await
        .expect("nothing of it stays in staging");

    // So does a delete before the server has answered; and a server that never
    // answers fails the import once it has been silent for the stall timeout.
    let (sport, hung_up) = trickle_server_with(true, true).await;
    let silent = c
        .create_image(&req("silent", ImageFormat::Raw, Some(format!("http://127.0.0.1:{sport}/")), None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.delete_image(&silent.id).await.unwrap();
    eventually(Duration::from_secs(3), || async { hung_up.load(std::sync::atomic::Ordering::SeqCst).then_some(()) })
        .await
        .expect("the request waiting for its answer is dropped when its image is deleted");
    let (sport, _) = trickle_server_with(true, true).await;
    let silent = c
        .create_image(&req("silent", ImageFormat::Raw, Some(format!("http://127.0.0.1:{sport}/")), None))
        .await
        .unwrap();
    let why = failure_of(&c, &silent.id).await;
    assert!(why.starts_with("import_failed") && why.contains("sent nothing"), "{why}");
    // Data past what is left of the account's image_gib is refused as it arrives (and a
    // length announced past it at once), not after all of it filled dcmgr's disk.
    let account = c.own_quotas().await.unwrap().account_id;
    let none = SetQuotas { quotas: [("image_gib".to_string(), Some(0))].into_iter().collect() };
    s.admin.set_account_quotas(&account, &none).await.unwrap();
    let (qport, ended) = trickle_server_with(false, false).await;
    let over =
        c.create_image(&req("over", ImageFormat::Raw, Some(format!("http://127.0.0.1:{qport}/")), None)).await.unwrap();
    let why = failure_of(&c, &over.id).await;
    assert!(why.starts_with("quota_exceeded") && why.contains("image_gib"), "{why}");
    eventually(Duration::from_secs(5), || async { ended.load(std::sync::atomic::Ordering::SeqCst).then_some(()) })
        .await
        .expect("the download stops at the quota");
    let up = c.create_image(&req("up-over", ImageFormat::Raw, None, None)).await.unwrap();
    let mut conn = partial_upload(&s, &c, &up.id, 1 << 40, 0).await;
    let text = upload_answer(&mut conn, Duration::from_secs(5), "answered before any data is sent").await;
    assert!(text.starts_with("HTTP/1.1 400") && text.contains("image_too_large"), "{text}");
    let up = c.create_image(&req("up-quota", ImageFormat::Raw, None, None)).await.unwrap();
    let mut conn = partial_upload(&s, &c, &up.id, 1000, 0).await;
    let answer = upload_answer(&mut conn, Duration::from_secs(5), "answered before any data is sent").await;
    assert!(answer.starts_with("HTTP/1.1 422") && answer.contains("quota_exceeded"), "{answer}");
    let unlimited = SetQuotas { quotas: [("image_gib".to_string(), None)].into_iter().collect() };
    s.admin.set_account_quotas(&account, &unlimited).await.unwrap();
    // An upload whose client stops sending is cut after the same stall (it held a
    // connection and a staging file for as long as the client liked); the image stays
    // pending, to be uploaded again.
    let stalled = c.create_image(&req("stalled", ImageFormat::Raw, None, None)).await.unwrap();
    let mut conn = partial_upload(&s, &c, &stalled.id, 1 << 20, 1000).await;
    let what = "answered once the client was silent for the stall timeout";
    let text = upload_answer(&mut conn, Duration::from_secs(10), what).await;
    assert!(text.starts_with("HTTP/1.1 400") && text.contains("upload_incomplete"), "{text}");
    assert_eq!(c.get_image(&stalled.id).await.unwrap().state, ImageState::Pending);

    let r = c
        .create_image(&req("redir", ImageFormat::Qcow2, Some(format!("http://127.0.0.1:{port}/to-metadata")), None))
        .await
        .unwrap();
    let why = failure_of(&c, &r.id).await;
    assert!(why.starts_with("forbidden_address") && why.contains("169.254.169.254"), "{why}");
    let nf = c
        .create_image(&req("nf", ImageFormat::Qcow2, Some(format!("http://127.0.0.1:{port}/missing")), None))
        .await
        .unwrap();
    assert!(failure_of(&c, &nf.id).await.starts_with("import_failed"));
    let wrong = c
        .create_image(&req(
            "wrong",
            ImageFormat::Qcow2,
            Some(format!("http://127.0.0.1:{port}/disk")),
            Some(format!("sha256:{}", "1".repeat(64))),
        ))
        .await
        .unwrap();
    assert!(failure_of(&c, &wrong.id).await.starts_with("checksum_mismatch"));
    let big = c.create_image(&req("big", ImageFormat::Raw, None, None)).await.unwrap();
    assert_eq!(err(c.upload_image(&big.id, vec![0u8; 2 << 20]).await), (400, "image_too_large".into()));
    // So is a root file system that unpacks past it, however small its tarball (2 MiB
    // of zeros gzip to 2 KiB): a host unpacks it.
    let mut zeros = tar_entry("zeros", b'0', &vec![0u8; 2 << 20]);
    zeros.extend([0u8; 1024]);
    let bomb = c.create_image(&req("bomb", ImageFormat::Tar, None, None)).await.unwrap();
    assert_eq!(err(c.upload_image(&bomb.id, gzip(&zeros)).await), (400, "virtual_size_too_large".into()));
    assert!(files_in(&images_dir(&s).join("staging")).is_empty());
    s.stop().await;
}

async fn nodes_fetch_blobs_with_their_credential_and_resume(db: Db) {
    use vdc_bus::blob::{fetch, BlobError};
    let mut s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("blobs").await;
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let img = c.create_image(&req("raw", ImageFormat::Raw, None, None)).await.unwrap();
    c.upload_image(&img.id, data.clone()).await.unwrap();
    // What hva and sta are sent: the digest, the size, dcmgr's URL and their credential.
    let host = &s.hosts[0].node_id.clone();
    let spec = vdc_dcmgr::controller::image::spec(&s.dcmgr().ctx, img.id.as_str(), host).await.unwrap();
    let blob = spec.blob.expect("stored data is fetched from dcmgr");
    assert_eq!((blob.sha256.as_str(), blob.size), (sha256(&data).as_str(), data.len() as u64));
    assert!(blob.token.starts_with(&format!("{host}.")));

    let cache = tmp.path().join("cache");
    let (path, fetched) = fetch(&blob, &cache).await.unwrap();
    assert!(fetched);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // Cached: no second transfer.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    assert!(!fetch(&blob, &cache).await.unwrap().1);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), inode);

    // A transfer cut after a third resumes with a range request: the bytes already there
    // are kept (a wrong first third makes the digest fail, so they were not fetched again).
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join(format!(".partial-{}", blob.sha256)), &data[..1_000_000]).unwrap();
    let (p, _) = fetch(&blob, &other).await.unwrap();
    assert_eq!(std::fs::read(p).unwrap(), data);
    let third = tmp.path().join("third");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::write(third.join(format!(".partial-{}", blob.sha256)), vec![0u8; 1_000_000]).unwrap();
    assert!(matches!(fetch(&blob, &third).await, Err(BlobError::Corrupt { .. })));
    assert!(files_in(&third).is_empty(), "a corrupt transfer leaves nothing");

    // Without a genuine credential of a known node: nothing.
    let forged = [
        vdc_schema::bus::BlobRef { token: format!("{host}.{}", "0".repeat(64)), ..blob.clone() },
        vdc_schema::bus::BlobRef {
            token: vdc_dcmgr::app::node_auth::token(&s.dcmgr().ctx.node_key, "hn-notanode"),
            ..blob.clone()
        },
        vdc_schema::bus::BlobRef { token: c.token().to_owned(), ..blob.clone() },
    ];
    for (i, b) in forged.iter().enumerate() {
        let e = fetch(b, &tmp.path().join(format!("f{i}"))).await.unwrap_err().to_string();
        assert!(e.contains("401"), "{i}: {e}");
    }
    // A restarted dcmgr keeps its key: credentials already sent stay good.
    s.restart_dcmgr().await;
    let (p, fetched) = fetch(&blob, &tmp.path().join("after-restart")).await.unwrap();
    assert!(fetched && std::fs::read(p).unwrap() == data);
    fetch_into_a_new_volume(&s, &c, host, tmp.path()).await;
    s.stop().await;
}

/// What sta does with a raw image for a new volume (`vdc_bus::blob::fetch_into`): the
/// blob straight into the volume's file, its zero blocks left as holes; resumed when the
/// transfer is cut; refused when the bytes do not hash to the digest.
async fn fetch_into_a_new_volume(s: &Stack, c: &Client, host: &str, tmp: &Path) {
    use vdc_bus::blob::{fetch_into, BlobError};
    const MIB: usize = 1 << 20;
    // 4 MiB of data, 4 MiB of zeros, 3 MiB and a bit of data, in a 16 MiB volume.
    let mut data: Vec<u8> =
        (0..11 * MIB + 5000).map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0]).collect();
    data[4 * MIB..8 * MIB].fill(0);
    let img = c.create_image(&req("holes", ImageFormat::Raw, None, None)).await.unwrap();
    c.upload_image(&img.id, data.clone()).await.unwrap();
    let spec = vdc_dcmgr::controller::image::spec(&s.dcmgr().ctx, img.id.as_str(), host).await.unwrap();
    let blob = spec.blob.unwrap();
    let volume = |name: &str| {
        let p = tmp.join(name);
        std::fs::File::create(&p).unwrap().set_len(16 * MIB as u64).unwrap();
        p
    };
    let want = [&data[..], &vec![0u8; 16 * MIB - data.len()]].concat();
    let lun = volume("lun-1");
    fetch_into(&blob, &lun).await.unwrap();
    assert!(std::fs::read(&lun).unwrap() == want, "the blob's bytes, then the volume's zeros");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&lun).unwrap()) * 512;
    assert!(allocated <= 8 * MIB as u64, "the zero block and the tail stay holes: {allocated} bytes allocated");

    // Cut after 2 MiB the first time (a proxy in front of dcmgr), then resumed.
    let (port, cuts) = cutting_proxy(s.url(), 2 * MIB).await;
    let cut = vdc_schema::bus::BlobRef {
        url: blob.url.replace(&s.url(), &format!("http://127.0.0.1:{port}")),
        ..blob.clone()
    };
    let lun = volume("lun-2");
    fetch_into(&cut, &lun).await.unwrap();
    assert!(std::fs::read(&lun).unwrap() == want, "resumed where it was cut");
    assert_eq!(cuts.load(std::sync::atomic::Ordering::SeqCst), 2, "cut once, then asked for the rest");

    // A blob that ends in a block of zeros, into a file shorter than it: made as long.
    let tail = [&data[..4 * MIB], &vec![0u8; 4 * MIB]].concat();
    let img = c.create_image(&req("tail", ImageFormat::Raw, None, None)).await.unwrap();
    c.upload_image(&img.id, tail.clone()).await.unwrap();
    let spec = vdc_dcmgr::controller::image::spec(&s.dcmgr().ctx, img.id.as_str(), host).await.unwrap();
    let short = tmp.join("short");
    std::fs::write(&short, b"").unwrap();
    fetch_into(&spec.blob.unwrap(), &short).await.unwrap();
    assert!(std::fs::read(&short).unwrap() == tail, "the whole blob, its last zeros too");

    // Bytes that are not the digest's: refused.
    let other = vdc_schema::bus::BlobRef { sha256: sha256(b"something else"), ..blob };
    let e = fetch_into(&other, &volume("lun-3")).await.unwrap_err();
    assert!(matches!(e, BlobError::Corrupt { .. }), "{e}");
}

/// A proxy to `upstream` whose first connection is cut after `after` bytes of the answer;
/// counts the connections.
async fn cutting_proxy(upstream: String, after: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    let addr = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let answer = async {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut sent = 0;
                    loop {
                        let k = ur.read(&mut buf).await.unwrap_or(0);
                        if k == 0 || dw.write_all(&buf[..k]).await.is_err() {
                            return;
                        }
                        sent += k;
                        if first && sent >= after {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy(&mut dr, &mut uw) => {}
                    _ = answer => {}
                }
            });
        }
    });
    (port, count)
}

/// `vdc image import` as a user runs it: a file is streamed and checked; refused data and
/// a refused URL end the command with the reason.
async fn vdc_image_import_uploads_a_file_and_says_why_data_is_refused(db: Db) {
    use clap::Parser;
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("cli").await;
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad) = disks(tmp.path());
    std::fs::write(tmp.path().join("good.qcow2"), &good).unwrap();
    std::fs::write(tmp.path().join("bad.qcow2"), &bad).unwrap();
    let url = s.url();
    let vdc = |args: &[&str]| {
        let mut argv = vec!["vdc", "--api", &url, "--token", c.token(), "-o", "json", "image", "import"];
        argv.extend_from_slice(args);
        let cli = vdc_cli::commands::Cli::try_parse_from(argv).unwrap();
        async move { vdc_cli::commands::run(&cli.global, cli.command).await }
    };
    let good_path = tmp.path().join("good.qcow2").display().to_string();
    let sum = sha256(&good);
    vdc(&["debian", &good_path, "--sha256", &sum]).await.unwrap();
    let img = c.list_all_images().await.unwrap().into_iter().find(|i| i.name == "debian").unwrap();
    assert_eq!((img.state, img.format), (ImageState::Available, ImageFormat::Qcow2));
    assert_eq!(img.hypervisors, vec![HypervisorKind::Qemu, HypervisorKind::Kvm], "a disk's default");

    let bad_path = tmp.path().join("bad.qcow2").display().to_string();
    let e = vdc(&["evil", &bad_path]).await.unwrap_err();
    assert_eq!(e.exit_code(), 1, "a refusal, not a usage error");
    let e = e.to_string();
    assert!(e.contains("backing file") && e.contains("/etc/shadow") && e.ends_with("(backing_file)"), "{e}");
    let e = vdc(&["wrong", &good_path, "--sha256", &"0".repeat(64)]).await.unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    let e = vdc(&["loop", "http://127.0.0.1:9/x.qcow2"]).await.unwrap_err().to_string();
    assert!(e.contains("forbidden_address") && e.contains("127.0.0.1"), "{e}");
    // From a pipe (`cat disk | vdc image import NAME /dev/stdin`): its data whole. It
    // sent nothing, and an image of 0 bytes was made available.
    let fifo = tmp.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (f, data) = (fifo.clone(), good.clone());
    let writer = std::thread::spawn(move || std::fs::write(f, data).unwrap());
    vdc(&["piped", &fifo.display().to_string()]).await.unwrap();
    writer.join().unwrap();
    let piped = c.list_all_images().await.unwrap().into_iter().find(|i| i.name == "piped").unwrap();
    assert_eq!((piped.state, piped.size_bytes), (ImageState::Available, Some(good.len() as u64)));
    assert_eq!(piped.checksum, img.checksum);
    let empty = tmp.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    let e = vdc(&["empty", &empty.display().to_string()]).await.unwrap_err().to_string();
    assert!(e.contains("the disk is empty"), "{e}");
    s.stop().await;
}

async fn images_are_shared_with_named_accounts(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let (owner, friend, stranger) = (s.account("owner").await, s.account("friend").await, s.account("stranger").await);
    let accounts = s.admin.list_all_accounts().await.unwrap();
    let id_of = |n: &str| accounts.iter().find(|a| a.name == n).unwrap().id.clone();
    let (owner_id, friend_id) = (id_of("owner"), id_of("friend"));
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = disks(tmp.path());
    let img = owner.create_image(&req("golden", ImageFormat::Qcow2, None, None)).await.unwrap();
    owner.upload_image(&img.id, good).await.unwrap();
    assert_eq!(err(friend.get_image(&img.id).await).0, 404, "private until shared");

    // Concurrent shares with the same account: one membership, every answer lists it.
    let shares: Vec<_> = (0..8)
        .map(|_| {
            let (o, id, f) = (owner.clone(), img.id.clone(), friend_id.clone());
            tokio::spawn(async move { o.share_image(&id, &f).await })
        })
        .collect();
    for h in shares {
        assert_eq!(h.await.unwrap().unwrap().members, vec![friend_id.clone()]);
    }
    let members = owner.image_members(&img.id).await.unwrap();
    assert_eq!(members.members, vec![friend_id.clone()]);
    assert_eq!(members.member_status.get(friend_id.as_str()), Some(&MemberStatus::Pending));

    // Offered, not yet listed to the member (nor found by its name: an account cannot put
    // images into another's list, or make its names ambiguous, unasked); it shows it by
    // its ID, whose it is, and lists its offers.
    let listed = |c: &Client, status: Option<&str>| {
        let (c, q) = (c.clone(), ListQuery { member_status: status.map(str::to_owned), ..Default::default() });
        async move { c.list_all::<Image>("/images", &q).await.unwrap().into_iter().map(|i| i.id).collect::<Vec<_>>() }
    };
    assert!(!listed(&friend, None).await.contains(&img.id), "listed before it is accepted");
    let named = ListQuery { name: Some("golden".into()), ..Default::default() };
    assert!(friend.list_all::<Image>("/images", &named).await.unwrap().is_empty(), "found by its name");
    assert_eq!(listed(&friend, Some("pending")).await, vec![img.id.clone()]);
    assert!(listed(&friend, Some("all")).await.contains(&img.id));
    let seen = friend.get_image(&img.id).await.unwrap();
    assert_eq!((seen.owner.as_ref(), seen.member_status), (Some(&owner_id), Some(MemberStatus::Pending)));
    let mine = owner.get_image(&img.id).await.unwrap();
    assert_eq!((mine.owner.as_ref(), mine.member_status), (Some(&owner_id), None));
    assert_eq!(
        err(friend
            .list_all::<Image>("/images", &ListQuery { member_status: Some("maybe".into()), ..Default::default() })
            .await)
        .1,
        "invalid_query"
    );
    assert_eq!(
        err(friend
            .list_all::<Network>("/networks", &ListQuery { member_status: Some("all".into()), ..Default::default() })
            .await)
        .1,
        "invalid_query"
    );

    // A name of the member's own stays its own: another account offering an image of the
    // same name does not make it ambiguous (the CLI refused `--image base` then).
    let base = friend.create_image(&req("base", ImageFormat::Qcow2, None, None)).await.unwrap();
    let lure = stranger.create_image(&req("base", ImageFormat::Qcow2, None, None)).await.unwrap();
    stranger.share_image(&lure.id, &friend_id).await.unwrap();
    let by_name = ListQuery { name: Some("base".into()), ..Default::default() };
    let found: Vec<ImageId> =
        friend.list_all::<Image>("/images", &by_name).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(found, vec![base.id.clone()]);

    // Accepted, by many requests at once: listed and found by its name from then on.
    let accepts: Vec<_> = (0..8)
        .map(|_| {
            let (f, id, me) = (friend.clone(), img.id.clone(), friend_id.clone());
            tokio::spawn(async move { f.share_image(&id, &me).await })
        })
        .collect();
    for h in accepts {
        let answer = h.await.unwrap().unwrap();
        assert_eq!(answer.members, vec![friend_id.clone()], "the member learns of no other member");
        assert_eq!(answer.member_status.get(friend_id.as_str()), Some(&MemberStatus::Accepted));
    }
    assert!(listed(&friend, None).await.contains(&img.id));
    assert_eq!(friend.list_all::<Image>("/images", &named).await.unwrap().len(), 1);
    assert_eq!(listed(&friend, Some("pending")).await, vec![lure.id.clone()], "the other offer still waits");
    let members = owner.image_members(&img.id).await.unwrap();
    assert_eq!(members.member_status.get(friend_id.as_str()), Some(&MemberStatus::Accepted));

    // The member sees and boots it; it cannot change, share or delete it.
    let inst = CreateInstance {
        name: Some("from-shared".into()),
        image_id: img.id.clone(),
        cpus: 1,
        memory_mib: 256,
        hypervisor: None,
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        interfaces: vec![],
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    };
    let booted = friend.create_instance(&inst).await.unwrap().resource.id;
    // The member lists and boots it, so it is told whose it is (before: "not found").
    let not_owner = (403, "not_image_owner".to_string());
    assert_eq!(err(friend.delete_image(&img.id).await), not_owner);
    assert_eq!(err(friend.upload_image(&img.id, vec![0u8; 10]).await), not_owner);
    let stranger_id = id_of("stranger");
    assert_eq!(err(friend.share_image(&img.id, &stranger_id).await), not_owner);
    assert_eq!(err(friend.image_members(&img.id).await), not_owner);

    // Declined: no longer listed, and the owner's offer again does not undo it; the member
    // can still change its mind.
    let declined = friend.unshare_image(&img.id, &friend_id).await.unwrap();
    assert_eq!(declined.member_status.get(friend_id.as_str()), Some(&MemberStatus::Rejected));
    assert!(!listed(&friend, None).await.contains(&img.id));
    assert_eq!(listed(&friend, Some("rejected")).await, vec![img.id.clone()]);
    owner.share_image(&img.id, &friend_id).await.unwrap();
    let members = owner.image_members(&img.id).await.unwrap();
    assert_eq!(members.member_status.get(friend_id.as_str()), Some(&MemberStatus::Rejected), "offered anew");
    assert!(!listed(&friend, None).await.contains(&img.id));
    friend.share_image(&img.id, &friend_id).await.unwrap();
    assert!(listed(&friend, None).await.contains(&img.id), "accepted after all");
    assert_eq!(err(stranger.delete_image(&img.id).await).0, 404, "one that does not see it is not told");
    // Others still do not see it.
    assert_eq!(err(stranger.get_image(&img.id).await).0, 404);
    assert!(!stranger.list_all_images().await.unwrap().iter().any(|i| i.id == img.id));
    assert_eq!(err(owner.share_image(&img.id, &owner_id).await), (400, "invalid_member".into()));

    // Unshared: gone for the member (its instance keeps running), a second unshare is 404.
    assert!(owner.unshare_image(&img.id, &friend_id).await.unwrap().members.is_empty());
    assert_eq!(err(friend.get_image(&img.id).await).0, 404);
    assert_eq!(err(friend.create_instance(&inst).await).0, 404);
    assert_eq!(err(owner.unshare_image(&img.id, &friend_id).await).0, 404);
    assert!(friend.get_instance(&booted).await.is_ok());

    // Shared again and deleted while the member's instance uses it: gone for both at
    // once; the member's instance starts again from the data kept for it, and once it
    // is terminated the image goes (its name is the owner's again).
    owner.share_image(&img.id, &friend_id).await.unwrap();
    owner.delete_image(&img.id).await.unwrap();
    assert_eq!(err(owner.get_image(&img.id).await).0, 404);
    assert_eq!(err(friend.get_image(&img.id).await).0, 404);
    assert_eq!(err(friend.create_instance(&inst).await).0, 404);
    assert_eq!(err(owner.share_image(&img.id, &friend_id).await).0, 404);
    wait_state(&friend, &booted, InstanceState::Running).await;
    for action in [InstanceAction::Stop, InstanceAction::Start] {
        let a = friend.instance_action(&booted, action).await.unwrap();
        assert_eq!(friend.wait_job(&a.job.id, Duration::from_secs(15)).await.unwrap().state, JobState::Succeeded);
    }
    assert_eq!(err(owner.create_image(&req("golden", ImageFormat::Qcow2, None, None)).await).0, 409);
    let t = friend.terminate_instance(&booted).await.unwrap();
    friend.wait_job(&t.job.id, Duration::from_secs(15)).await.unwrap();
    eventually(Duration::from_secs(20), || async {
        owner.create_image(&req("golden", ImageFormat::Qcow2, None, None)).await.ok()
    })
    .await
    .expect("the name is free once the deleted image is removed");
    s.stop().await;
}

/// A disk image booted with a kernel image the operator has deleted since: the kernel is
/// kept for it, so its instance still stops, starts, is captured (the capture names the
/// kernel too) and exported. Both said "the kernel image is gone" and refused.
async fn an_instance_on_a_deleted_kernel_is_captured_and_exported(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("kern").await;
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = disks(tmp.path());
    let mut disk = req("on-kernel", ImageFormat::Qcow2, None, None);
    disk.kernel_id = Some(s.image.clone()); // the stack's public kernel image
    let disk = c.create_image(&disk).await.unwrap();
    c.upload_image(&disk.id, good).await.unwrap();
    let inst = c.create_instance(&boot(&disk.id, "vm")).await.unwrap().resource;
    wait_state(&c, &inst.id, InstanceState::Running).await;
    s.admin.delete_image(&s.image).await.unwrap();
    assert_eq!(err(c.get_image(&s.image).await).0, 404);
    for action in [InstanceAction::Stop, InstanceAction::Start, InstanceAction::Stop] {
        let a = c.instance_action(&inst.id, action).await.unwrap();
        c.wait_job_ok(&a.job.id, Duration::from_secs(15)).await.unwrap();
    }
    let cap = c.capture_instance(&inst.id, &capture_req("captured")).await.unwrap();
    c.wait_job_ok(&cap.job.id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(c.get_image(&cap.resource.id).await.unwrap().kernel_id.as_ref(), Some(&s.image));
    let mut bundle = Vec::new();
    c.export_bundle(false, true, &mut bundle, |_| {}).await.expect("exported with the instance's data");
    assert!(!bundle.is_empty());
    s.stop().await;
}

fn capture_req(name: &str) -> CaptureInstance {
    CaptureInstance { image_name: name.into(), os: None, min_disk: None, min_memory: None, default_user: None }
}

fn boot(image: &ImageId, name: &str) -> CreateInstance {
    CreateInstance {
        name: Some(name.into()),
        image_id: image.clone(),
        cpus: 1,
        memory_mib: 256,
        hypervisor: None,
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        interfaces: vec![],
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

/// A container's capture is a tar image for lxc, taken stopped or running (the simulated
/// hva sends back the tarball it booted, as the real one sends its packed root, through
/// the same checks as an upload); it boots containers. Before, containers were refused.
async fn containers_are_captured_as_tar_images(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("ct").await;
    let root = c.create_image(&req("rootfs", ImageFormat::Tar, None, None)).await.unwrap();
    let root = c.upload_image(&root.id, targz("init.sh")).await.unwrap();
    let container = |name: &str, image: &ImageId| CreateInstance {
        hypervisor: Some(HypervisorKind::Lxc),
        memory_mib: 64,
        ..boot(image, name)
    };
    let ct = CreateInstance { root_disk_size: Some(3 << 30), ..container("ct", &root.id) };
    let ct = c.create_instance(&ct).await.unwrap().resource;
    vdc_tests::wait_state(&c, &ct.id, InstanceState::Running).await;
    let live = c.capture_instance(&ct.id, &capture_req("ct-live")).await.unwrap();
    assert_eq!(c.get_instance(&ct.id).await.unwrap().state, InstanceState::Running, "it runs on");
    c.wait_job_ok(&live.job.id, Duration::from_secs(20)).await.unwrap();
    let img = c.get_image(&live.resource.id).await.unwrap();
    assert_eq!((img.state, img.format), (ImageState::Available, ImageFormat::Tar));
    assert_eq!(img.hypervisors, [HypervisorKind::Lxc]);
    assert_eq!(img.checksum, root.checksum, "the sim's root is its image");
    assert_eq!(img.min_disk, Some(3 << 30), "its files had that room to run in");

    let st = c.stop_instance(&ct.id).await.unwrap();
    c.wait_job_ok(&st.job.id, Duration::from_secs(20)).await.unwrap();
    // A container's root filesystem has a size: its capture may say the smallest.
    let sized = CaptureInstance { min_disk: Some(4 << 30), ..capture_req("sized") };
    let sized = c.capture_instance(&ct.id, &sized).await.unwrap();
    c.wait_job_ok(&sized.job.id, Duration::from_secs(20)).await.unwrap();
    let stopped = c.capture_instance(&ct.id, &capture_req("ct-stopped")).await.unwrap();
    assert_eq!(c.get_instance(&ct.id).await.unwrap().state, InstanceState::Capturing);
    c.wait_job_ok(&stopped.job.id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(c.get_instance(&ct.id).await.unwrap().state, InstanceState::Stopped);
    assert_eq!(c.get_image(&stopped.resource.id).await.unwrap().format, ImageFormat::Tar);

    // The capture boots a container with the root filesystem its source had (before, the
    // default 2 GiB); the sized one's is the min_disk asked. Below that is refused.
    let child = c.create_instance(&container("child", &stopped.resource.id)).await.unwrap().resource;
    assert_eq!(child.root_disk_size, Some(3 << 30));
    vdc_tests::wait_state(&c, &child.id, InstanceState::Running).await;
    let big = c.create_instance(&container("big", &sized.resource.id)).await.unwrap().resource;
    assert_eq!(big.root_disk_size, Some(4 << 30));
    let less = CreateInstance { root_disk_size: Some(2 << 30), ..container("less", &stopped.resource.id) };
    let Err(ClientError::Api { code, .. }) = c.create_instance(&less).await else { panic!("below min_disk") };
    assert_eq!(code, "root_disk_too_small");

    // A tar image's virtual size is what it unpacks to: a container's root filesystem
    // below it is refused at create (before, its host failed it later), and one given no
    // size gets half as much again.
    let mut tar = tar_entry("var/big", b'0', &vec![0u8; 96 << 20]);
    tar.extend([0u8; 1024]);
    let fat = c.create_image(&req("fat", ImageFormat::Tar, None, None)).await.unwrap();
    let fat = c.upload_image(&fat.id, gzip(&tar)).await.unwrap();
    let unpacked = fat.virtual_size.unwrap();
    assert!(((96 << 20)..=tar.len() as u64).contains(&unpacked), "{unpacked}");
    let small = CreateInstance { root_disk_size: Some(80 << 20), ..container("small", &fat.id) };
    let Err(ClientError::Api { status, code, message }) = c.create_instance(&small).await else {
        panic!("a root filesystem below the image was accepted")
    };
    assert_eq!((status, code.as_str()), (400, "root_disk_too_small"), "{message}");
    assert!(message.contains(&format!("below the {unpacked} bytes image {} unpacks to", fat.id)), "{message}");
    let fits = c.create_instance(&container("fits", &fat.id)).await.unwrap().resource;
    assert_eq!(fits.root_disk_size, Some(2 << 30), "96 MiB unpacked and half again is below the default");
    s.stop().await;
}

/// Capture with the simulated hva (its "disk" is the image it booted, sent back over the
/// agent endpoint and checked like an upload): a stopped instance becomes an available
/// image with its source's properties; a running one is refused and nothing is created;
/// the same bytes captured twice are stored once; concurrent captures never overlap.
async fn stopped_instances_are_captured_as_images(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("cap").await;
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = disks(tmp.path());
    let mut base = req("base", ImageFormat::Qcow2, None, None);
    base.os = Some("debian-12".into());
    base.default_user = Some("debian".into());
    base.min_memory = Some(128 << 20);
    base.min_disk = Some(32 << 20);
    let base = c.create_image(&base).await.unwrap();
    let base = c.upload_image(&base.id, good).await.unwrap();
    let blobs = images_dir(&s).join("blobs/sha256");
    assert_eq!(files_in(&blobs).len(), 1);

    let inst = c.create_instance(&boot(&base.id, "golden")).await.unwrap().resource;
    vdc_tests::wait_state(&c, &inst.id, InstanceState::Running).await;
    // Running: captured as it runs (crash-consistently: a real host copies the disk at one
    // instant), and it runs on. Twenty at once: one capture of an instance at a time, the
    // others told a capture is under way.
    let reqs = (0..20).map(|i| {
        let (c, id) = (c.clone(), inst.id.clone());
        async move { c.capture_instance(&id, &capture_req(&format!("live{i}"))).await }
    });
    let mut live = vec![];
    for r in futures::future::join_all(reqs).await {
        match r {
            Ok(a) => live.push(a),
            Err(ClientError::Api { status: 409, code, .. }) => assert_eq!(code, "instance_capturing"),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!live.is_empty() && live.len() < 20, "{} live captures accepted", live.len());
    let mut spans = vec![];
    for a in &live {
        let j = c.wait_job_ok(&a.job.id, Duration::from_secs(20)).await.unwrap();
        spans.push((j.created_at, j.finished_at.unwrap()));
        let img = c.get_image(&a.resource.id).await.unwrap();
        assert_eq!((img.state, img.source.clone()), (ImageState::Available, format!("capture:{}", inst.id)));
        assert_eq!(img.checksum, base.checksum, "the sim's disk is its image");
    }
    spans.sort();
    assert!(spans.windows(2).all(|w| w[1].0 >= w[0].1), "live captures never overlap: {spans:?}");
    let images = c.list_all_images().await.unwrap();
    assert_eq!(images.iter().filter(|i| i.name.starts_with("live")).count(), live.len(), "the losers made no image");
    assert_eq!(c.get_instance(&inst.id).await.unwrap().state, InstanceState::Running, "it ran throughout");

    let stop = c.stop_instance(&inst.id).await.unwrap();
    c.wait_job_ok(&stop.job.id, Duration::from_secs(20)).await.unwrap();

    // Twenty captures at once: one at a time is accepted, the others are told a capture is
    // under way (before, that the instance was not stopped: it is `capturing`); the sim is
    // quick, so a later one may find the instance stopped again and win.
    let reqs = (0..20).map(|i| {
        let (c, id) = (c.clone(), inst.id.clone());
        async move { c.capture_instance(&id, &capture_req(&format!("gold{i}"))).await }
    });
    let results = futures::future::join_all(reqs).await;
    let mut won = vec![];
    for r in results {
        match r {
            Ok(a) => won.push(a),
            Err(ClientError::Api { status: 409, code, .. }) => assert_eq!(code, "instance_capturing"),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!won.is_empty() && won.len() < 20, "{} captures accepted", won.len());
    let mut spans = vec![];
    for a in &won {
        assert_eq!((a.resource.state, a.job.resource_id.as_str()), (ImageState::Pending, a.resource.id.as_str()));
        let j = c.wait_job_ok(&a.job.id, Duration::from_secs(20)).await.unwrap();
        spans.push((j.created_at, j.finished_at.unwrap()));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "captures never overlap: {spans:?}");
    }
    let images = c.list_all_images().await.unwrap();
    assert_eq!(images.iter().filter(|i| i.name.starts_with("gold")).count(), won.len(), "the losers made no image");
    let gold = c.get_image(&won[0].resource.id).await.unwrap();
    assert_eq!(gold.state, ImageState::Available);
    assert_eq!(gold.source, format!("capture:{}", inst.id));
    assert_eq!(gold.format, ImageFormat::Qcow2);
    assert_eq!(gold.hypervisors, base.hypervisors);
    assert_eq!(gold.os.as_deref(), Some("debian-12"));
    assert_eq!(gold.default_user.as_deref(), Some("debian"));
    assert_eq!((gold.min_memory, gold.min_disk, gold.boot_mode), (base.min_memory, base.min_disk, base.boot_mode));
    assert!(!gold.public);
    assert_eq!(c.get_instance(&inst.id).await.unwrap().state, InstanceState::Stopped, "stopped again");

    // The same bytes again (the sim's disk is unchanged), with a property replaced: a
    // second image, one blob.
    let mut again = capture_req("gold-again");
    again.os = Some("debian-12-custom".into());
    let acc2 = c.capture_instance(&inst.id, &again).await.unwrap();
    c.wait_job_ok(&acc2.job.id, Duration::from_secs(20)).await.unwrap();
    let gold2 = c.get_image(&acc2.resource.id).await.unwrap();
    assert_eq!(gold2.os.as_deref(), Some("debian-12-custom"));
    assert_eq!(gold2.checksum, gold.checksum);
    assert_eq!(gold.checksum, base.checksum, "the sim's disk is its image");
    assert_eq!(files_in(&blobs).len(), 1, "the same bytes are stored once");

    // The capture boots, and the instance starts again.
    let child = c.create_instance(&boot(&gold.id, "child")).await.unwrap().resource;
    vdc_tests::wait_state(&c, &child.id, InstanceState::Running).await;
    let start = c.start_instance(&inst.id).await.unwrap();
    c.wait_job_ok(&start.job.id, Duration::from_secs(20)).await.unwrap();

    // Another account's instance is not found; an instance without a root disk (the
    // tiny kernel image) cannot be captured.
    let other = s.account("other").await;
    assert_eq!(err(other.capture_instance(&inst.id, &capture_req("x")).await).0, 404);
    let k = s.running_instance(&c, "kernel").await;
    let st = c.stop_instance(&k.id).await.unwrap();
    c.wait_job_ok(&st.job.id, Duration::from_secs(20)).await.unwrap();
    let (status, code) = err(c.capture_instance(&k.id, &capture_req("k")).await);
    assert_eq!((status, code.as_str()), (409, "capture_unsupported"));
    // A bad name is refused before anything changes.
    let (status, code) = err(c.capture_instance(&inst.id, &capture_req(" ")).await);
    assert_eq!((status, code.as_str()), (400, "invalid_name"));
    // Names are the account's: an image of that name already exists.
    let st = c.stop_instance(&inst.id).await.unwrap();
    c.wait_job_ok(&st.job.id, Duration::from_secs(20)).await.unwrap();
    let (status, code) = err(c.capture_instance(&inst.id, &capture_req("base")).await);
    assert_eq!((status, code.as_str()), (409, "name_taken"));
    assert_eq!(c.get_instance(&inst.id).await.unwrap().state, InstanceState::Stopped, "nothing changed");

    // The agent endpoint takes data only with a node credential.
    let http = reqwest::Client::new();
    let url = format!("{}/agent/v1/images/{}/file", s.url(), gold.id);
    let r = http.put(&url).bearer_auth("hn-x.00").body(vec![0u8; 10]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Its failure report too, whatever the body: the credential is checked first.
    let url = format!("{}/agent/v1/images/{}/capture-failure", s.url(), gold.id);
    for body in [&b"not json"[..], &br#"{"reason": "x"}"#[..]] {
        let r = http.post(&url).bearer_auth("hn-x.00").body(body.to_vec()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    s.stop().await;
}

fn snap_image(name: &str) -> CreateSnapshotImage {
    CreateSnapshotImage { image_name: name.into(), ..Default::default() }
}

/// An available snapshot of a new 16 MiB volume of `c`'s.
async fn available_snapshot(c: &Client, name: &str) -> Snapshot {
    let vol = CreateVolume { name: format!("{name}-vol"), size_mib: Some(16), snapshot_id: None, image_id: None };
    let vol = c.create_volume(&vol).await.unwrap();
    c.wait_job_ok(&vol.job.id, Duration::from_secs(20)).await.unwrap();
    let snap = c.create_snapshot(&CreateSnapshot { volume_id: vol.resource.id, name: name.into() }).await.unwrap();
    c.wait_job_ok(&snap.job.id, Duration::from_secs(20)).await.unwrap();
    c.get_snapshot(&snap.resource.id).await.unwrap()
}

/// Images from snapshots with the simulated sta (its snapshot data is 1 MiB naming the
/// volume, sent over the agent endpoint and checked like an upload): raw by default,
/// qcow2 when asked; the caller's and private; twenty at once from one snapshot all
/// succeed and share one blob, twenty at once with one name make one image; refusals
/// leave nothing behind.
async fn snapshots_become_images(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("snapimg").await;
    let snap = available_snapshot(&c, "s1").await;
    let blobs = images_dir(&s).join("blobs/sha256");
    let before = files_in(&blobs).len();

    let mut r = snap_image("from-s1");
    r.os = Some("debian-12".into());
    r.default_user = Some("debian".into());
    r.min_disk = Some(16 << 20);
    let acc = c.snapshot_image(&snap.id, &r).await.unwrap();
    assert_eq!(acc.resource.state, ImageState::Pending);
    assert_eq!((acc.job.action.as_str(), acc.job.resource_id.as_str()), ("snapshot.image", acc.resource.id.as_str()));
    c.wait_job_ok(&acc.job.id, Duration::from_secs(20)).await.unwrap();
    let img = c.get_image(&acc.resource.id).await.unwrap();
    assert_eq!(img.state, ImageState::Available);
    assert_eq!(img.source, format!("snapshot:{}", snap.id));
    assert_eq!(img.format, ImageFormat::Raw, "a volume is a raw disk");
    assert_eq!(img.size_bytes, Some(1 << 20));
    assert_eq!(img.hypervisors, vec![HypervisorKind::Kvm, HypervisorKind::Qemu]);
    assert_eq!(
        (img.os.as_deref(), img.default_user.as_deref(), img.min_disk),
        (Some("debian-12"), Some("debian"), Some(16 << 20))
    );
    assert!(!img.public);
    let expected: Vec<u8> = format!("vdc-sim volume {}\n", snap.volume_id).bytes().cycle().take(1 << 20).collect();
    assert_eq!(img.checksum.as_deref(), Some(format!("sha256:{}", sha256(&expected)).as_str()), "the snapshot's bytes");
    assert_eq!(files_in(&blobs).len(), before + 1);
    // It boots like any disk image.
    let inst = c.create_instance(&boot(&img.id, "from-snap")).await.unwrap().resource;
    vdc_tests::wait_state(&c, &inst.id, InstanceState::Running).await;

    // qcow2 when asked: converted by the storage node, probed by dcmgr.
    let q = CreateSnapshotImage { format: Some(ImageFormat::Qcow2), ..snap_image("from-s1-qcow2") };
    let acc = c.snapshot_image(&snap.id, &q).await.unwrap();
    c.wait_job_ok(&acc.job.id, Duration::from_secs(20)).await.unwrap();
    let qimg = c.get_image(&acc.resource.id).await.unwrap();
    assert_eq!((qimg.state, qimg.format), (ImageState::Available, ImageFormat::Qcow2));
    assert_ne!(qimg.checksum, img.checksum);

    // Twenty at once with distinct names: each is its own image, all succeed, and the
    // equal bytes are stored once.
    let blobs_now = files_in(&blobs).len();
    let reqs = (0..20).map(|i| {
        let (c, id) = (c.clone(), snap.id.clone());
        async move { c.snapshot_image(&id, &snap_image(&format!("many{i}"))).await }
    });
    let accepted: Vec<_> = futures::future::join_all(reqs).await.into_iter().map(Result::unwrap).collect();
    for a in &accepted {
        let j = c.wait_job_ok(&a.job.id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        let i = c.get_image(&a.resource.id).await.unwrap();
        assert_eq!((i.state, i.checksum.clone()), (ImageState::Available, img.checksum.clone()));
    }
    assert_eq!(files_in(&blobs).len(), blobs_now, "the same bytes are stored once");
    // Twenty at once with one name: one image, the others 409 name_taken.
    let reqs = (0..20).map(|_| {
        let (c, id) = (c.clone(), snap.id.clone());
        async move { c.snapshot_image(&id, &snap_image("same")).await }
    });
    let mut won = vec![];
    for r in futures::future::join_all(reqs).await {
        match r {
            Ok(a) => won.push(a),
            Err(ClientError::Api { status: 409, code, .. }) => assert_eq!(code, "name_taken"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won.len(), 1);
    assert_eq!(c.list_all_images().await.unwrap().iter().filter(|i| i.name == "same").count(), 1);
    c.wait_job_ok(&won[0].job.id, Duration::from_secs(20)).await.unwrap();

    // Refusals, each with nothing left behind.
    let n = c.list_all_images().await.unwrap().len();
    let (status, code) = err(c.snapshot_image(&snap.id, &snap_image("from-s1")).await);
    assert_eq!((status, code.as_str()), (409, "name_taken"));
    let other = s.account("other").await;
    let (status, code) = err(other.snapshot_image(&snap.id, &snap_image("mine")).await);
    assert_eq!((status, code.as_str()), (404, "not_found"), "another account's snapshot is not found");
    let (status, code) = err(c.snapshot_image(&snap.id, &snap_image(" ")).await);
    assert_eq!((status, code.as_str()), (400, "invalid_name"));
    let bad = CreateSnapshotImage { format: Some(ImageFormat::Tar), ..snap_image("tar") };
    assert_eq!(err(c.snapshot_image(&snap.id, &bad).await), (400, "invalid_image".into()));
    let bad = CreateSnapshotImage { hypervisors: Some(vec![HypervisorKind::Lxc]), ..snap_image("lxc") };
    assert_eq!(err(c.snapshot_image(&snap.id, &bad).await), (400, "unsupported_format".into()));
    // Not available: being deleted, then deleted.
    let del = c.delete_snapshot(&snap.id).await.unwrap();
    let (status, code) = err(c.snapshot_image(&snap.id, &snap_image("late")).await);
    assert_eq!((status, code.as_str()), (409, "invalid_state"));
    c.wait_job_ok(&del.job.id, Duration::from_secs(20)).await.unwrap();
    let (status, code) = err(c.snapshot_image(&snap.id, &snap_image("late")).await);
    assert_eq!((status, code.as_str()), (409, "invalid_state"));
    assert_eq!(c.list_all_images().await.unwrap().len(), n, "nothing half-created");
    s.stop().await;
}

/// While an image is being made of a snapshot, the snapshot's delete is refused with
/// `snapshot_capturing` (the image's data would vanish under sta's read); deleting the
/// pending image cancels it (its job fails); once no image of it is pending the snapshot
/// is deleted as usual, and a finished image stays.
async fn a_snapshot_is_not_deleted_while_an_image_is_made_of_it(db: Db) {
    let mut opts = StackOptions::new(db);
    // Slow agents: the upload starts 1.5 s after the request, long enough to act in.
    opts.sim.delay = Duration::from_millis(1500);
    let s = Stack::start(opts).await;
    let c = s.account("snapdel").await;
    let snap = available_snapshot(&c, "s").await;
    let keep = c.snapshot_image(&snap.id, &snap_image("keep")).await.unwrap();
    let cancel = c.snapshot_image(&snap.id, &snap_image("cancel")).await.unwrap();
    let (status, code) = err(c.delete_snapshot(&snap.id).await);
    assert_eq!((status, code.as_str()), (409, "snapshot_capturing"));
    assert_eq!(c.get_snapshot(&snap.id).await.unwrap().state, SnapshotState::Available, "nothing changed");
    // Deleting a pending image cancels it; the other still holds the snapshot.
    c.delete_image(&cancel.resource.id).await.unwrap();
    let j = c.wait_job(&cancel.job.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert!(j.message.as_deref().unwrap_or_default().contains("deleted before its data arrived"), "{j:?}");
    assert_eq!(err(c.delete_snapshot(&snap.id).await), (409, "snapshot_capturing".into()));
    c.wait_job_ok(&keep.job.id, Duration::from_secs(20)).await.unwrap();
    let del = c.delete_snapshot(&snap.id).await.unwrap();
    c.wait_job_ok(&del.job.id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(c.get_image(&keep.resource.id).await.unwrap().state, ImageState::Available, "the image outlives it");
    // The cancelled image's data, sent anyway, made nothing.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(err(c.get_image(&cancel.resource.id).await).0, 404);
    assert_eq!(files_in(&images_dir(&s).join("blobs/sha256")).len(), 1, "only the kept image's data");
    s.stop().await;
}

/// The lock that keeps a blob from removal until its image commits is the blob's own: an
/// upload whose blob is being stored (into an S3 store, minutes for a large image) holds
/// up no upload of other data.
async fn storing_a_blob_holds_up_only_uploads_of_the_same_data(db: Db) {
    use vdc_dcmgr::app::blob_refs::{hold, stripe};
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("stripes").await;
    let a = vec![1u8; 4096];
    let mut b = vec![2u8; 4096];
    while stripe(&sha256(&b)) == stripe(&sha256(&a)) {
        b[0] += 1;
    }
    let held = hold(&s.dcmgr().ctx, [sha256(&a).as_str()]).await.unwrap();
    let ib = c.create_image(&req("b", ImageFormat::Raw, None, None)).await.unwrap();
    let up = tokio::time::timeout(Duration::from_secs(20), c.upload_image(&ib.id, b))
        .await
        .expect("other data is not held up")
        .unwrap();
    assert_eq!(up.state, ImageState::Available);

    let ia = c.create_image(&req("a", ImageFormat::Raw, None, None)).await.unwrap();
    let upload = tokio::spawn({
        let (c, id) = (c.clone(), ia.id.clone());
        async move { c.upload_image(&id, a).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!upload.is_finished(), "the same data waits for its blob's lock");
    assert_eq!(c.get_image(&ia.id).await.unwrap().state, ImageState::Pending);
    drop(held);
    let up = tokio::time::timeout(Duration::from_secs(20), upload).await.expect("stored once the lock is free");
    assert_eq!(up.unwrap().unwrap().state, ImageState::Available);
    s.stop().await;
}

/// Where another account's image came from is its owner's: tenants saw the operator's
/// host paths and the snapshot IDs behind images shared with them (and an import URL may
/// carry a signature). They see the kind of source; the owner and admins see it all.
async fn other_accounts_see_the_kind_of_an_images_source_only(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("tenant").await;
    let mut r = vdc_tests::image_request("golden", ImageFormat::Qcow2);
    r.source = Some("/var/lib/vdc/images/debian.qcow2".into());
    r.public = true;
    let img = s.admin.create_image(&r).await.unwrap();
    assert_eq!(s.admin.get_image(&img.id).await.unwrap().source, "/var/lib/vdc/images/debian.qcow2");
    assert_eq!(c.get_image(&img.id).await.unwrap().source, "host file");
    let listed = c.list_all_images().await.unwrap();
    assert_eq!(listed.iter().find(|i| i.id == img.id).unwrap().source, "host file");
    // The builtin tiny image says what it is.
    assert_eq!(c.get_image(&s.image).await.unwrap().source, "builtin:tiny-kernel");
    s.stop().await;
}
