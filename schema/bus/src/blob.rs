//! Fetching a blob of dcmgr's image store into a node's cache: over HTTP with the node's
//! credential, hashed while it streams, resumed with a range request after a cut, and
//! renamed to its digest only once the digest matches. A second fetch of a cached blob
//! makes no request.

use crate::fileio::HashingFile;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vdc_schema::bus::BlobRef;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {sha256} from {url}: {why}")]
    Fetch { sha256: String, url: String, why: String },
    #[error("blob {sha256} is corrupt: the data fetched hashes to {got}")]
    Corrupt { sha256: String, got: String },
    #[error("blob cache {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Attempts of one fetch, waiting 0.5, 1, 2, 4 and 8 s between them: a dcmgr that
/// restarts (seconds) must not fail an instance for good.
const ATTEMPTS: u32 = 6;
const FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: p.display().to_string(), source }
}

/// One fetch per blob at a time in this process (two guests of one image share it).
fn blob_lock(sha: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    LOCKS.lock().unwrap().get_or_insert_with(HashMap::new).entry(sha.to_owned()).or_default().clone()
}

/// `DIR/<sha256>` holding the blob, fetched if it is not there yet. Returns the path and
/// whether it was fetched (false: it was cached).
pub async fn fetch(blob: &BlobRef, dir: &Path) -> Result<(PathBuf, bool), BlobError> {
    let client = client(blob)?;
    let dest = dir.join(&blob.sha256);
    let lock = blob_lock(&blob.sha256);
    let _one = lock.lock().await;
    if dest.exists() {
        return Ok((dest, false));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let partial = dir.join(format!(".partial-{}", blob.sha256));
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(FIRST_WAIT * 2u32.pow(n - 1)).await;
        }
        match attempt(&client, blob, &partial).await {
            Ok(Streamed::Done(got)) if got == blob.sha256 => {
                std::fs::rename(&partial, &dest).map_err(io(&dest))?;
                return Ok((dest, true));
            }
            Ok(Streamed::Done(got)) => {
                let _ = std::fs::remove_file(&partial);
                return Err(BlobError::Corrupt { sha256: blob.sha256.clone(), got });
            }
            Ok(Streamed::Cut { why, .. }) => last = why,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        }
    }
    // The partial file stays: the next fetch resumes it.
    Err(fail(blob, format!("the transfer broke off {ATTEMPTS} times, last: {last}")))
}

/// Fetches `blob` straight into `dest` from its start: an existing file that holds zeros
/// there (a new volume), whose length is kept. A volume filled from a raw image so gets
/// its bytes without a copy in the cache first. Hashed as it streams; a cut is resumed
/// with a range request (what was written, and its hash, kept); whole blocks of zeros
/// are left as holes. With a wrong digest (`Corrupt`) the file holds wrong bytes: the
/// caller removes it.
pub async fn fetch_into(blob: &BlobRef, dest: &Path) -> Result<(), BlobError> {
    let client = client(blob)?;
    // Skipped zeros past a file's end would leave it short: a file shorter than the blob
    // is first made as long (a block device has no length to check).
    let meta = std::fs::metadata(dest).map_err(io(dest))?;
    if meta.is_file() && meta.len() < blob.size {
        std::fs::OpenOptions::new().write(true).open(dest).and_then(|f| f.set_len(blob.size)).map_err(io(dest))?;
    }
    let (mut have, mut hash) = (0u64, Sha256::new());
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(FIRST_WAIT * 2u32.pow(n - 1)).await;
        }
        let open = |from: u64| {
            use std::io::Seek;
            let mut f = std::fs::OpenOptions::new().write(true).open(dest)?;
            f.seek(std::io::SeekFrom::Start(from))?;
            Ok(f)
        };
        match stream(&client, blob, have, hash.clone(), dest, true, open).await? {
            Streamed::Done(got) if got == blob.sha256 => return Ok(()),
            Streamed::Done(got) => return Err(BlobError::Corrupt { sha256: blob.sha256.clone(), got }),
            Streamed::Cut { why, have: h, hash: s } => (last, have, hash) = (why, h, s),
        }
    }
    Err(fail(blob, format!("the transfer broke off {ATTEMPTS} times, last: {last}")))
}

/// Marks a cached file as used now: [`prune_cache`] removes the least recently used.
pub fn touch(p: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(p) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used files of the cache `dir` (by modification time, which
/// a fetch or a [`touch`] sets) until it holds at most `max_bytes`, except those `in_use`
/// and transfers under way (`.partial-…`). Returns what it removed.
pub fn prune_cache(dir: &Path, max_bytes: u64, in_use: &std::collections::HashSet<PathBuf>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_file())?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut removed = vec![];
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if in_use.contains(&path) {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            removed.push(path);
        }
    }
    removed
}

/// A client for dcmgr's blob store, once `blob` names a SHA-256 (a path component).
fn client(blob: &BlobRef) -> Result<reqwest::Client, BlobError> {
    let valid = blob.sha256.len() == 64 && blob.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !valid {
        return Err(fail(blob, "not a SHA-256".into()));
    }
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| fail(blob, e.to_string()))
}

fn fail(blob: &BlobRef, why: String) -> BlobError {
    BlobError::Fetch { sha256: blob.sha256.clone(), url: blob.url.clone(), why }
}

enum Streamed {
    /// All bytes are written; they hash to this.
    Done(String),
    /// The connection broke; what arrived is written: `have` bytes hashing into `hash`.
    Cut { why: String, have: u64, hash: Sha256 },
}

/// One attempt into the cache's partial file, resumed from what it holds.
async fn attempt(client: &reqwest::Client, blob: &BlobRef, partial: &Path) -> Result<Streamed, BlobError> {
    // What is already there is hashed again, so the digest covers every byte.
    let mut hash = Sha256::new();
    let mut have = 0u64;
    if let Ok(mut f) = std::fs::File::open(partial) {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io(partial))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            have += n as u64;
        }
    }
    if have > blob.size {
        std::fs::remove_file(partial).map_err(io(partial))?;
        return Ok(Streamed::Cut { why: "a partial file longer than the blob".into(), have: 0, hash: Sha256::new() });
    }
    let open = |from: u64| {
        if from == 0 {
            std::fs::File::create(partial)
        } else {
            std::fs::OpenOptions::new().append(true).open(partial)
        }
    };
    stream(client, blob, have, hash, partial, false, open).await
}

/// Streams the blob from byte `have` (`hash` covering those before) into the file `open`
/// gives at an offset (from the start again when dcmgr answers with all of it).
async fn stream(
    client: &reqwest::Client,
    blob: &BlobRef,
    mut have: u64,
    mut hash: Sha256,
    path: &Path,
    holes: bool,
    open: impl FnOnce(u64) -> std::io::Result<std::fs::File>,
) -> Result<Streamed, BlobError> {
    if have == blob.size {
        return Ok(Streamed::Done(hex::encode(hash.finalize())));
    }
    let mut req = client.get(&blob.url).bearer_auth(&blob.token);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let cut = |why: String, have: u64, hash: Sha256| Ok(Streamed::Cut { why, have, hash });
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return cut(e.to_string(), have, hash),
    };
    let status = resp.status();
    match status.as_u16() {
        206 if have > 0 => {}
        200 => (have, hash) = (0, Sha256::new()),
        // dcmgr starting or busy: asked again.
        _ if status.is_server_error() => return cut(format!("dcmgr answered {status}"), have, hash),
        _ => {
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(blob, format!("dcmgr answered {status}: {}", body.chars().take(300).collect::<String>())));
        }
    };
    let file = open(have).map_err(io(path))?;
    let mut file =
        if holes { HashingFile::over_zeros(file, hash) } else { HashingFile::new(file, hash) }.map_err(io(path))?;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if have + c.len() as u64 > blob.size {
                    return Err(fail(blob, "more data than the blob's size".into()));
                }
                have += c.len() as u64;
                file.write(c).await.map_err(io(path))?;
            }
            Ok(None) => break,
            Err(e) => return cut(e.to_string(), have, file.stop().await.map_err(io(path))?),
        }
    }
    if have < blob.size {
        return cut(format!("{have} of {} bytes", blob.size), have, file.stop().await.map_err(io(path))?);
    }
    Ok(Streamed::Done(file.finish().await.map_err(io(path))?))
}

/// What dcmgr said to an image's upload (a capture's, or a snapshot's).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("upload to {url}: {why}")]
    Send { url: String, why: String },
    /// dcmgr refused the data or the image is no longer waiting for it.
    #[error("dcmgr answered {status}: {body}")]
    Refused { status: u16, body: String },
}

fn upload_client(timeout: Option<std::time::Duration>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().no_proxy().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| e.to_string())
}

/// `PUT`s `len` bytes of `body` to an image's upload URL with the node's credential.
async fn put(spec: &vdc_schema::bus::ImageUpload, body: reqwest::Body, len: u64) -> Result<(), UploadError> {
    let send = |why: String| UploadError::Send { url: spec.url.clone(), why };
    // No overall timeout: a disk takes as long as it takes; the connect timeout still holds.
    let client = upload_client(None).map_err(send)?;
    let resp = client
        .put(&spec.url)
        .bearer_auth(&spec.token)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(body)
        .send()
        .await
        .map_err(|e| send(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default().chars().take(500).collect();
    Err(UploadError::Refused { status: status.as_u16(), body })
}

/// Streams `file` (a regular file or a block device) to an image's upload URL.
pub async fn upload(spec: &vdc_schema::bus::ImageUpload, file: &Path) -> Result<(), UploadError> {
    use tokio::io::AsyncSeekExt;
    let read = |source| UploadError::Read { path: file.display().to_string(), source };
    let mut f = tokio::fs::File::open(file).await.map_err(read)?;
    // The end, not the metadata: a block device's metadata says 0 bytes.
    let len = f.seek(std::io::SeekFrom::End(0)).await.map_err(read)?;
    f.seek(std::io::SeekFrom::Start(0)).await.map_err(read)?;
    put(spec, reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)), len).await
}

/// Sends `data` as an image's data (the simulated storage node's made-up blocks).
pub async fn upload_bytes(spec: &vdc_schema::bus::ImageUpload, data: Vec<u8>) -> Result<(), UploadError> {
    let len = data.len() as u64;
    put(spec, reqwest::Body::from(data), len).await
}

/// Tells dcmgr a capture failed before its data could be sent.
pub async fn capture_failed(spec: &vdc_schema::bus::ImageUpload, reason: &str) -> Result<(), UploadError> {
    let send = |why: String| UploadError::Send { url: spec.failure_url.clone(), why };
    let client = upload_client(Some(std::time::Duration::from_secs(30))).map_err(send)?;
    let resp = client
        .post(&spec.failure_url)
        .bearer_auth(&spec.token)
        .json(&serde_json::json!({ "reason": reason }))
        .send()
        .await
        .map_err(|e| send(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default().chars().take(500).collect();
    Err(UploadError::Refused { status: status.as_u16(), body })
}

/// Sends a blob of dcmgr's store back as a capture's data, streamed from the `GET` into
/// the `PUT` (the simulated host's "disk" is its image, unchanged).
pub async fn relay(blob: &BlobRef, spec: &vdc_schema::bus::ImageUpload) -> Result<(), UploadError> {
    use futures::TryStreamExt;
    let send = |url: &str, why: String| UploadError::Send { url: url.to_owned(), why };
    let client = upload_client(None).map_err(|e| send(&blob.url, e))?;
    let got =
        client.get(&blob.url).bearer_auth(&blob.token).send().await.map_err(|e| send(&blob.url, e.to_string()))?;
    if !got.status().is_success() {
        return Err(UploadError::Refused { status: got.status().as_u16(), body: format!("fetching {}", blob.url) });
    }
    let body = reqwest::Body::wrap_stream(got.bytes_stream().map_err(std::io::Error::other));
    put(spec, body, blob.size).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A dcmgr that answers 503 twice (it is starting), then the blob.
    async fn starting_dcmgr(data: Vec<u8>) -> (String, Arc<Mutex<usize>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/agent/v1/blobs/x", l.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = l.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let n = {
                    let mut h = h.lock().unwrap();
                    *h += 1;
                    *h
                };
                let mut resp = if n <= 2 {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len())
                        .into_bytes()
                };
                if n > 2 {
                    resp.extend_from_slice(&data);
                }
                let _ = conn.write_all(&resp).await;
                let _ = conn.shutdown().await;
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn a_dcmgr_that_is_starting_is_asked_again_after_a_wait() {
        let data = b"an image".repeat(1000);
        let (url, hits) = starting_dcmgr(data.clone()).await;
        let blob =
            BlobRef { sha256: hex::encode(Sha256::digest(&data)), size: data.len() as u64, url, token: "t".into() };
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let (path, fetched) = fetch(&blob, dir.path()).await.unwrap();
        assert!(fetched);
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert_eq!(*hits.lock().unwrap(), 3);
        assert!(started.elapsed() >= FIRST_WAIT * 3, "it waited 0.5 s, then 1 s");
    }
}
