//! Fetching a blob of dcmgr's image store into a node's cache: over HTTP with the node's
//! credential, hashed while it streams, resumed with a range request after a cut, and
//! renamed to its digest only once the digest matches. A second fetch of a cached blob
//! makes no request.

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
    let valid = blob.sha256.len() == 64 && blob.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !valid {
        return Err(BlobError::Fetch {
            sha256: blob.sha256.clone(),
            url: blob.url.clone(),
            why: "not a SHA-256".into(),
        });
    }
    let dest = dir.join(&blob.sha256);
    let lock = blob_lock(&blob.sha256);
    let _one = lock.lock().await;
    if dest.exists() {
        return Ok((dest, false));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let partial = dir.join(format!(".partial-{}", blob.sha256));
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| fail(blob, e.to_string()))?;
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(FIRST_WAIT * 2u32.pow(n - 1)).await;
        }
        match attempt(&client, blob, &partial).await {
            Ok(Attempt::Done(got)) if got == blob.sha256 => {
                std::fs::rename(&partial, &dest).map_err(io(&dest))?;
                return Ok((dest, true));
            }
            Ok(Attempt::Done(got)) => {
                let _ = std::fs::remove_file(&partial);
                return Err(BlobError::Corrupt { sha256: blob.sha256.clone(), got });
            }
            Ok(Attempt::Cut(why)) => last = why,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        }
    }
    // The partial file stays: the next fetch resumes it.
    Err(fail(blob, format!("the transfer broke off {ATTEMPTS} times, last: {last}")))
}

fn fail(blob: &BlobRef, why: String) -> BlobError {
    BlobError::Fetch { sha256: blob.sha256.clone(), url: blob.url.clone(), why }
}

enum Attempt {
    /// All bytes are in the partial file, which hashes to this.
    Done(String),
    /// The connection broke; what arrived is kept for a resume.
    Cut(String),
}

async fn attempt(client: &reqwest::Client, blob: &BlobRef, partial: &Path) -> Result<Attempt, BlobError> {
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
        return Ok(Attempt::Cut("a partial file longer than the blob".into()));
    }
    if have == blob.size {
        return Ok(Attempt::Done(hex::encode(hash.finalize())));
    }
    let mut req = client.get(&blob.url).bearer_auth(&blob.token);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Cut(e.to_string())),
    };
    let status = resp.status();
    let file = match status.as_u16() {
        206 if have > 0 => std::fs::OpenOptions::new().append(true).open(partial).map_err(io(partial))?,
        200 => {
            hash = Sha256::new();
            have = 0;
            std::fs::File::create(partial).map_err(io(partial))?
        }
        // dcmgr starting or busy: asked again.
        _ if status.is_server_error() => return Ok(Attempt::Cut(format!("dcmgr answered {status}"))),
        _ => {
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(blob, format!("dcmgr answered {status}: {}", body.chars().take(300).collect::<String>())));
        }
    };
    let mut file = crate::fileio::HashingFile::new(file, hash).map_err(io(partial))?;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if have + c.len() as u64 > blob.size {
                    return Err(fail(blob, "more data than the blob's size".into()));
                }
                have += c.len() as u64;
                file.write(c).await.map_err(io(partial))?;
            }
            Ok(None) => break,
            Err(e) => {
                file.stop().await.map_err(io(partial))?;
                return Ok(Attempt::Cut(e.to_string()));
            }
        }
    }
    if have < blob.size {
        file.stop().await.map_err(io(partial))?;
        return Ok(Attempt::Cut(format!("{have} of {} bytes", blob.size)));
    }
    Ok(Attempt::Done(file.finish().await.map_err(io(partial))?))
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
