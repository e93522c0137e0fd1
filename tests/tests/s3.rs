//! The S3 image store against a real S3 server (`s3s-fs` on loopback, see
//! `vdc_tests::s3`): uploads land in the bucket, the same bytes once, hosts fetch and
//! resume off it, the last image's deletion removes the object, and a dcmgr whose bucket
//! is unusable refuses to start and says why. SQLite only: the store does not touch the
//! database, and images.rs runs these paths on both.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use vdc_cli::client::Client;
use vdc_dcmgr::config::StoreKind;
use vdc_schema::api::*;
use vdc_schema::*;
use vdc_tests::s3::S3Server;
use vdc_tests::{eventually, Db, Stack, StackOptions};

const BUCKET: &str = "vdc-images";

fn req(name: &str) -> CreateImage {
    vdc_tests::image_request(name, ImageFormat::Raw)
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn key(b: &[u8]) -> String {
    format!("blobs/sha256/{}", sha256(b))
}

/// Bytes no two calls with another `seed` share.
fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_add(seed << 24).wrapping_mul(2654435761) >> 13) as u8).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}

fn s3_stack(s3: &S3Server, bucket: &str) -> StackOptions {
    let mut opts = StackOptions::new(Db::Sqlite);
    opts.images.store = StoreKind::S3;
    opts.images.s3 = Some(s3.config(bucket));
    opts
}

#[tokio::test]
async fn an_s3_store_keeps_image_data_in_its_bucket() {
    vdc_tests::init_logging();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET).await;
    let mut s = Stack::start(s3_stack(&s3, BUCKET)).await;
    let c = s.account("s3").await;
    let local = s.opts.images.dir.clone().unwrap();

    // One PUT for a small blob, a multipart upload (5 MiB parts) for a larger one.
    let small = data(3_000_000, 1);
    let large = data(12 << 20, 2);
    let a = c.create_image(&req("small")).await.unwrap();
    assert_eq!(c.upload_image(&a.id, small.clone()).await.unwrap().state, ImageState::Available);
    let b = c.create_image(&req("large")).await.unwrap();
    let b = c.upload_image(&b.id, large.clone()).await.unwrap();
    assert_eq!((b.state, b.size_bytes), (ImageState::Available, Some(large.len() as u64)));
    assert!(s3.get(BUCKET, &key(&small)).await == Some(small.clone()), "the object holds the uploaded bytes");
    assert!(s3.get(BUCKET, &key(&large)).await == Some(large.clone()), "the parts make the whole");
    assert!(!local.join("blobs").exists(), "nothing kept on dcmgr's disk");
    assert!(files_in(&local.join("staging")).is_empty());

    // The same bytes as another image: stored once.
    let twin = c.create_image(&req("twin")).await.unwrap();
    c.upload_image(&twin.id, small.clone()).await.unwrap();
    let mut both = vec![key(&small), key(&large)];
    both.sort();
    assert_eq!(s3.keys(BUCKET).await, both);

    // A host fetches off the bucket through dcmgr, and resumes a cut transfer with a
    // range request (a wrong beginning fails the digest, so it was not fetched again).
    let tmp = tempfile::tempdir().unwrap();
    let host = s.hosts[0].node_id.clone();
    let spec = vdc_dcmgr::controller::image::spec(&s.dcmgr().ctx, b.id.as_str(), &host).await.unwrap();
    let blob = spec.blob.expect("stored data is fetched from dcmgr");
    let (p, fetched) = vdc_bus::blob::fetch(&blob, &tmp.path().join("fresh")).await.unwrap();
    assert!(fetched && std::fs::read(p).unwrap() == large);
    for (dir, head, good) in [("resumed", large[..5_000_000].to_vec(), true), ("corrupt", vec![0u8; 5_000_000], false)]
    {
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!(".partial-{}", blob.sha256)), head).unwrap();
        match vdc_bus::blob::fetch(&blob, &d).await {
            Ok((p, _)) => assert!(good && std::fs::read(p).unwrap() == large, "{dir}"),
            Err(e) => assert!(!good && matches!(e, vdc_bus::blob::BlobError::Corrupt { .. }), "{dir}: {e}"),
        }
    }
    // Resuming at the very end: nothing left to send, answered 416 (no error of the store).
    let r = reqwest::Client::new()
        .get(&blob.url)
        .header("Authorization", format!("Bearer {}", blob.token))
        .header("Range", format!("bytes={}-", large.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "{}", r.text().await.unwrap());

    // A restarted dcmgr opens the same bucket and serves the same data.
    s.restart_dcmgr().await;
    let (p, _) = vdc_bus::blob::fetch(&blob, &tmp.path().join("after-restart")).await.unwrap();
    assert!(std::fs::read(p).unwrap() == large);

    // An upload cut off half-way: no object, the image still pending.
    let cut = c.create_image(&req("cut")).await.unwrap();
    let extra = data(2_000_000, 3);
    let conn = partial_upload(&s, &c, &cut.id, extra.len(), &extra[..1_000_000]).await;
    eventually(Duration::from_secs(10), || async { (!files_in(&local.join("staging")).is_empty()).then_some(()) })
        .await
        .expect("the upload is being received");
    drop(conn);
    eventually(Duration::from_secs(10), || async { files_in(&local.join("staging")).is_empty().then_some(()) })
        .await
        .expect("the cut-off upload leaves no staging file");
    assert_eq!(c.get_image(&cut.id).await.unwrap().state, ImageState::Pending);
    assert_eq!(s3.keys(BUCKET).await, both, "no object for the cut-off upload");

    // The blob goes with the last image using it.
    c.delete_image(&twin.id).await.unwrap();
    assert!(s3.get(BUCKET, &key(&small)).await.is_some(), "still used by {}", a.id);
    c.delete_image(&a.id).await.unwrap();
    assert_eq!(s3.keys(BUCKET).await, [key(&large)]);
    c.delete_image(&b.id).await.unwrap();
    assert!(s3.keys(BUCKET).await.is_empty());
    s.stop().await;
}

/// Starts an upload by hand, sends `sent` of the `announced` bytes and returns the open
/// connection (dropping it cuts the upload off).
async fn partial_upload(s: &Stack, c: &Client, id: &ImageId, announced: usize, sent: &[u8]) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(s.dcmgr().addr).await.unwrap();
    let head = format!(
        "PUT /api/v1/images/{id}/file HTTP/1.1\r\nHost: vdc\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n",
        c.token()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(sent).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

#[tokio::test]
async fn dcmgr_refuses_to_start_on_an_unusable_bucket() {
    vdc_tests::init_logging();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET).await;
    let down = format!("http://127.0.0.1:{}", vdc_tests::procs::free_port());
    type Change = Box<dyn Fn(&mut StackOptions)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "wrong secret",
            Box::new(|o| o.images.s3.as_mut().unwrap().secret_key = Some("wrong".into())),
            "refuses access key",
        ),
        ("missing bucket", Box::new(|o| o.images.s3.as_mut().unwrap().bucket = "nobucket".into()), "does not exist"),
        (
            "endpoint down",
            Box::new(move |o| o.images.s3.as_mut().unwrap().endpoint = down.clone()),
            "cannot be reached",
        ),
        ("no [images.s3]", Box::new(|o| o.images.s3 = None), "needs an [images.s3] table"),
        (
            "secret twice",
            Box::new(|o| o.images.s3.as_mut().unwrap().secret_key_file = Some("/x".into())),
            "secret_key_file",
        ),
    ];
    for (what, change, says) in cases {
        let mut opts = s3_stack(&s3, BUCKET);
        change(&mut opts);
        let Err(e) = Stack::try_start(opts).await else { panic!("{what}: dcmgr started") };
        let e = format!("{e:#}");
        assert!(e.contains(says), "{what}: {e}");
        assert!(!e.contains(&s3.secret_key) && !e.contains("X-Amz-Signature"), "{what}: no secret in {e}");
    }
    // The secret from a file (as the example configuration has it) opens the bucket.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("secret"), format!("{}\n", s3.secret_key)).unwrap();
    let mut opts = s3_stack(&s3, BUCKET);
    let cfg = opts.images.s3.as_mut().unwrap();
    (cfg.secret_key, cfg.secret_key_file) = (None, Some(tmp.path().join("secret")));
    Stack::start(opts).await.stop().await;
}
