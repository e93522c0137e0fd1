//! [`S3BlobStore`]: blobs as objects `blobs/sha256/<hex>` of a bucket of an
//! S3-compatible object store (AWS S3, Ceph radosgw, MinIO, Garage, RustFS, …).
//!
//! The client is `rusty-s3`, a sans-IO SigV4 signer that makes presigned URLs, driven by
//! the reqwest dcmgr already uses for URL imports. It adds three small crates (0.8 shares
//! sha2 0.10, hmac 0.12 and md-5 with the rest of the tree); `aws-sdk-s3` brings its own
//! HTTP and TLS stacks, hundreds of crates to build on 2-core machines, and
//! `object_store` a cloud-neutral layer (and its own reqwest setup) we have no use for.
//! The signature is in the URL, so bodies stream from the staged file with their length
//! known, never held whole in memory.

use super::{valid, BlobStore, BlobStream};
use crate::config::S3Config;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, RANGE};
use reqwest::{Response, StatusCode};
use rusty_s3::actions::CreateMultipartUpload;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a signed URL is good for: each is used at once, and a part's upload only
/// has to start within it.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// S3 takes at most this many parts per object.
const MAX_PARTS: u64 = 10_000;

/// Why the object store could not do what was asked; the messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid images.s3 configuration: {0}")]
    Config(String),
    #[error("the S3 endpoint {endpoint} cannot be reached: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the bucket {bucket:?} does not exist at {endpoint}: create it, or name an existing one in images.s3.bucket"
    )]
    NoBucket { endpoint: String, bucket: String },
    #[error(
        "{endpoint} refuses access key {access_key:?} to bucket {bucket:?} ({code}): check images.s3.access_key, \
         its secret and the bucket's policy"
    )]
    Refused { endpoint: String, bucket: String, access_key: String, code: String },
    #[error("S3 {op} of {key:?} failed: {detail}")]
    Failed { op: &'static str, key: String, detail: String },
}

impl From<S3Error> for io::Error {
    fn from(e: S3Error) -> io::Error {
        io::Error::other(e)
    }
}

/// Blobs in a bucket. Holds no state but the signer: any number of dcmgrs may share the
/// bucket (a blob's name is its content).
pub struct S3BlobStore {
    bucket: Bucket,
    creds: Credentials,
    http: reqwest::Client,
    /// As configured, for messages.
    endpoint: String,
    part_size: u64,
}

impl S3BlobStore {
    /// Opens the bucket of `cfg`, checking that it exists and takes our credentials, so a
    /// dcmgr with an unusable store refuses to start instead of failing every upload.
    pub async fn connect(cfg: &S3Config) -> Result<S3BlobStore, S3Error> {
        let bad = |what: String| S3Error::Config(what);
        let endpoint: url::Url = cfg.endpoint.parse().map_err(|e| bad(format!("endpoint {:?}: {e}", cfg.endpoint)))?;
        let secret = match (&cfg.secret_key, &cfg.secret_key_file) {
            (Some(s), None) => s.clone(),
            (None, Some(p)) => std::fs::read_to_string(p)
                .map_err(|e| bad(format!("secret_key_file {}: {e}", p.display())))?
                .trim()
                .to_owned(),
            _ => return Err(bad("give the secret key as one of secret_key or secret_key_file".into())),
        };
        if secret.is_empty() || cfg.access_key.is_empty() {
            return Err(bad("the access key and the secret key must not be empty".into()));
        }
        if !(5..=5120).contains(&cfg.part_size_mib) {
            return Err(bad(format!("part_size_mib = {}: S3 parts are 5 to 5120 MiB", cfg.part_size_mib)));
        }
        let style = if cfg.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| bad(format!("endpoint {:?} with bucket {:?}: {e}", cfg.endpoint, cfg.bucket)))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A stalled transfer fails rather than holding an upload forever.
            .read_timeout(Duration::from_secs(120))
            // The endpoint is reached as configured; S3 answers no redirect we should follow.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| bad(format!("HTTP client: {e}")))?;
        let store = S3BlobStore {
            bucket,
            creds: Credentials::new(cfg.access_key.clone(), secret),
            http,
            endpoint: cfg.endpoint.clone(),
            part_size: cfg.part_size_mib << 20,
        };
        store.check_bucket().await?;
        Ok(store)
    }

    fn key(sha256: &str) -> String {
        format!("blobs/sha256/{sha256}")
    }

    async fn check_bucket(&self) -> Result<(), S3Error> {
        let url = self.bucket.head_bucket(Some(&self.creds)).sign(SIGNED_FOR);
        let resp = self.send("HEAD bucket", "", self.http.head(url)).await?;
        self.ok(resp, "HEAD bucket", "").await.map(drop)
    }

    async fn send(&self, op: &'static str, key: &str, req: reqwest::RequestBuilder) -> Result<Response, S3Error> {
        req.send().await.map_err(|e| {
            // The URL holds a signature: keep it out of messages.
            let e = e.without_url();
            if e.is_connect() {
                S3Error::Unreachable { endpoint: self.endpoint.clone(), source: e }
            } else {
                S3Error::Failed { op, key: key.to_owned(), detail: e.to_string() }
            }
        })
    }

    /// The response if it succeeded, else what its error means.
    async fn ok(&self, resp: Response, op: &'static str, key: &str) -> Result<Response, S3Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // An error body is a small XML document (none for HEAD).
        let body = resp.text().await.unwrap_or_default();
        let code = xml_field(&body, "Code").unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        match status {
            StatusCode::NOT_FOUND if op == "HEAD bucket" || code == "NoSuchBucket" => {
                Err(S3Error::NoBucket { endpoint: self.endpoint.clone(), bucket: self.bucket.name().to_owned() })
            }
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(S3Error::Refused {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.name().to_owned(),
                access_key: self.creds.key().to_owned(),
                code,
            }),
            _ => Err(S3Error::Failed {
                op,
                key: key.to_owned(),
                detail: format!(
                    "HTTP {} {code}{}",
                    status.as_u16(),
                    xml_field(&body, "Message").map(|m| format!(": {m}")).unwrap_or_default()
                ),
            }),
        }
    }

    /// The object's length, or None if there is no such object.
    async fn head(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let url = self.bucket.head_object(Some(&self.creds), key).sign(SIGNED_FOR);
        let resp = self.send("HEAD", key, self.http.head(url)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.ok(resp, "HEAD", key).await?;
        Ok(Some(header_u64(&resp, CONTENT_LENGTH).unwrap_or(0)))
    }

    /// `len` bytes of `file` from `offset`, as a request body streamed from the disk.
    async fn body(file: &Path, offset: u64, len: u64) -> io::Result<reqwest::Body> {
        let file = file.to_owned();
        let f = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let mut f = std::fs::File::open(file)?;
            io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
            Ok(f)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(reqwest::Body::wrap_stream(vdc_bus::fileio::read_stream(f, len)))
    }

    async fn put_whole(&self, key: &str, staged: &Path, len: u64) -> io::Result<()> {
        let url = self.bucket.put_object(Some(&self.creds), key).sign(SIGNED_FOR);
        // S3 wants the length up front (no chunked uploads).
        let req = self.http.put(url).header(CONTENT_LENGTH, len).body(Self::body(staged, 0, len).await?);
        let resp = self.send("PUT", key, req).await?;
        self.ok(resp, "PUT", key).await?;
        Ok(())
    }

    async fn put_parts(&self, key: &str, staged: &Path, len: u64) -> io::Result<()> {
        let url = self.bucket.create_multipart_upload(Some(&self.creds), key).sign(SIGNED_FOR);
        let resp = self.send("CreateMultipartUpload", key, self.http.post(url)).await?;
        let resp = self.ok(resp, "CreateMultipartUpload", key).await?;
        let text = resp.text().await.map_err(|e| io::Error::other(e.without_url()))?;
        let upload = CreateMultipartUpload::parse_response(&text).map_err(|e| S3Error::Failed {
            op: "CreateMultipartUpload",
            key: key.into(),
            detail: e.to_string(),
        })?;
        let id = upload.upload_id();
        let done = self.upload_parts(key, id, staged, len).await;
        if done.is_err() {
            // Parts of an unfinished upload take space until aborted.
            let url = self.bucket.abort_multipart_upload(Some(&self.creds), key, id).sign(SIGNED_FOR);
            match self.send("AbortMultipartUpload", key, self.http.delete(url)).await {
                Ok(r) if r.status().is_success() => {}
                other => tracing::warn!(%key, "cannot abort a failed multipart upload: {other:?}"),
            }
        }
        done
    }

    async fn upload_parts(&self, key: &str, id: &str, staged: &Path, len: u64) -> io::Result<()> {
        let part = self.part_size.max(len.div_ceil(MAX_PARTS));
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < len {
            let size = part.min(len - offset);
            let number = etags.len() as u16 + 1;
            let url = self.bucket.upload_part(Some(&self.creds), key, number, id).sign(SIGNED_FOR);
            let req = self.http.put(url).header(CONTENT_LENGTH, size).body(Self::body(staged, offset, size).await?);
            let resp = self.ok(self.send("UploadPart", key, req).await?, "UploadPart", key).await?;
            let etag = resp.headers().get(ETAG).and_then(|v| v.to_str().ok()).ok_or_else(|| S3Error::Failed {
                op: "UploadPart",
                key: key.into(),
                detail: format!("part {number} came back without an ETag"),
            })?;
            etags.push(etag.to_owned());
            offset += size;
        }
        let complete =
            self.bucket.complete_multipart_upload(Some(&self.creds), key, id, etags.iter().map(String::as_str));
        let url = complete.sign(SIGNED_FOR);
        let req = self.http.post(url).body(complete.body());
        let resp =
            self.ok(self.send("CompleteMultipartUpload", key, req).await?, "CompleteMultipartUpload", key).await?;
        // S3 may answer 200 and still have failed: the error is then the body.
        let text = resp.text().await.unwrap_or_default();
        if text.contains("<Error>") {
            return Err(S3Error::Failed {
                op: "CompleteMultipartUpload",
                key: key.into(),
                detail: xml_field(&text, "Message").or_else(|| xml_field(&text, "Code")).unwrap_or(text),
            }
            .into());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, sha256: &str, staged: &Path) -> io::Result<()> {
        if !valid(sha256) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a SHA-256"));
        }
        let key = Self::key(sha256);
        let len = tokio::fs::metadata(staged).await?.len();
        // The same name holds the same bytes (and S3 objects appear whole or not at all).
        if self.head(&key).await? == Some(len) {
            return Ok(());
        }
        if len > self.part_size {
            self.put_parts(&key, staged, len).await
        } else {
            self.put_whole(&key, staged, len).await
        }
    }

    async fn open(&self, sha256: &str, offset: u64) -> io::Result<Option<(u64, BlobStream)>> {
        if !valid(sha256) {
            return Ok(None);
        }
        let key = Self::key(sha256);
        let url = self.bucket.get_object(Some(&self.creds), &key).sign(SIGNED_FOR);
        let mut req = self.http.get(url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = self.send("GET", &key, req).await?;
        let total = match resp.status() {
            StatusCode::NOT_FOUND => {
                // A missing bucket is the store's failure, not a missing blob.
                self.ok(resp, "GET", &key).await.map(drop).or_else(|e| match e {
                    S3Error::NoBucket { .. } => Err(e),
                    _ => Ok(()),
                })?;
                return Ok(None);
            }
            // At or past the end: nothing to send, but the caller needs the length.
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Ok(self.head(&key).await?.map(|len| (len, futures::stream::empty().boxed())));
            }
            StatusCode::PARTIAL_CONTENT => resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .ok_or_else(|| S3Error::Failed { op: "GET", key: key.clone(), detail: "no Content-Range".into() })?,
            _ => {
                let resp = self.ok(resp, "GET", &key).await?;
                let len = header_u64(&resp, CONTENT_LENGTH).unwrap_or(0);
                // A server that ignores Range sends it all: skip what the caller has.
                let mut skip = offset;
                let rest = stream(resp)
                    .map_ok(move |mut b| {
                        let n = skip.min(b.len() as u64);
                        skip -= n;
                        b.split_off(n as usize)
                    })
                    .try_filter(|b| std::future::ready(!b.is_empty()));
                return Ok(Some((len, rest.boxed())));
            }
        };
        Ok(Some((total, stream(resp))))
    }

    async fn delete(&self, sha256: &str) -> io::Result<()> {
        if !valid(sha256) {
            return Ok(());
        }
        let key = Self::key(sha256);
        let url = self.bucket.delete_object(Some(&self.creds), &key).sign(SIGNED_FOR);
        let resp = self.send("DELETE", &key, self.http.delete(url)).await?;
        if resp.status() != StatusCode::NOT_FOUND {
            self.ok(resp, "DELETE", &key).await?;
        }
        Ok(())
    }

    fn local_path(&self, _sha256: &str) -> Option<PathBuf> {
        None
    }
}

fn stream(resp: Response) -> BlobStream {
    resp.bytes_stream().map_err(|e| io::Error::other(e.without_url())).boxed()
}

fn header_u64(resp: &Response, name: reqwest::header::HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// The text of the first `<name>` element of an S3 answer (error bodies are flat).
fn xml_field(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_bodies_are_read_for_their_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket \
                    does not exist</Message></Error>";
        assert_eq!(super::xml_field(body, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(super::xml_field(body, "Message").as_deref(), Some("The specified bucket does not exist"));
        assert_eq!(super::xml_field(body, "Resource"), None);
    }
}
