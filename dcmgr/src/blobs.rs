//! The image store: content-addressed blobs (named by their SHA-256), behind a trait so a
//! datacenter can keep them elsewhere than dcmgr's disk.
//!
//! Data arrives in a staging file on dcmgr's disk first ([`Staging`]), hashed while it is
//! written, because it must be inspected (`qemu-img info`, tar entries) before anything
//! may use it; only checked data is [`BlobStore::put`] into the store. A staging file
//! that is not put is removed when dropped, so an interrupted upload leaves nothing.

pub mod s3;

use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use vdc_bus::fileio::Chunks;

/// A blob's bytes as they are read.
pub type BlobStream = std::pin::Pin<Box<dyn futures::Stream<Item = io::Result<bytes::Bytes>> + Send>>;

/// Where blobs live. Blobs are immutable: the same name always holds the same bytes.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the staged file as blob `sha256` (hex). Storing a blob that exists is a
    /// no-op (capturing the same bytes twice stores them once).
    async fn put(&self, sha256: &str, staged: &Path) -> io::Result<()>;
    /// The blob from byte `offset` on, with its full length; `None` if there is no such blob.
    async fn open(&self, sha256: &str, offset: u64) -> io::Result<Option<(u64, BlobStream)>>;
    async fn delete(&self, sha256: &str) -> io::Result<()>;
    /// The blob as a file of this machine, when the store keeps it so.
    fn local_path(&self, sha256: &str) -> Option<PathBuf>;
}

/// Blobs as files `DIR/blobs/sha256/<hex>`.
pub struct FsBlobStore {
    dir: PathBuf,
}

impl FsBlobStore {
    pub fn new(dir: &Path) -> io::Result<FsBlobStore> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        // Tenants' data (blobs, uploads being staged) and the node key: dcmgr's to read
        // (hosts fetch blobs over HTTP), no one else's.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        // What a stopped dcmgr left to remove.
        let trash = dir.join("blobs/trash");
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::create_dir_all(&trash)?;
        Ok(FsBlobStore { dir: dir.to_owned() })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(sha256)
    }
}

/// A blob name is 64 lower-case hex digits; anything else names no file.
fn valid(sha256: &str) -> bool {
    sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[async_trait::async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, sha256: &str, staged: &Path) -> io::Result<()> {
        if !valid(sha256) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a SHA-256"));
        }
        let dest = self.path(sha256);
        if tokio::fs::try_exists(&dest).await? {
            return Ok(());
        }
        // Read-only: nothing should ever change a stored blob in place.
        tokio::fs::set_permissions(staged, std::os::unix::fs::PermissionsExt::from_mode(0o444)).await?;
        // Staging is in the same file system, so this is a rename, never a copy.
        tokio::fs::rename(staged, &dest).await?;
        Ok(())
    }

    async fn open(&self, sha256: &str, offset: u64) -> io::Result<Option<(u64, BlobStream)>> {
        if !valid(sha256) {
            return Ok(None);
        }
        let path = self.path(sha256);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<(u64, std::fs::File)>> {
            let mut f = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let len = f.metadata()?.len();
            io::Seek::seek(&mut f, io::SeekFrom::Start(offset.min(len)))?;
            Ok(Some((len, f)))
        })
        .await
        .map_err(io::Error::other)??;
        Ok(opened.map(|(len, f)| (len, Box::pin(vdc_bus::fileio::read_stream(f, len - offset.min(len))) as BlobStream)))
    }

    async fn delete(&self, sha256: &str) -> io::Result<()> {
        if !valid(sha256) {
            return Ok(());
        }
        // Renamed away at once, removed after: freeing a large file's blocks takes its
        // time on ext4 (a 256 MiB blob: 0.2 s here, 2026-12-02), which an image delete,
        // and the bundle export whose temporary images it removes, need not wait for.
        // A blob of the same bytes stored meanwhile is a new file.
        let trash = self.dir.join("blobs/trash").join(format!("{sha256}-{:08x}", rand::random::<u32>()));
        match tokio::fs::rename(self.path(sha256), &trash).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(()),
            Ok(()) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = std::fs::remove_file(&trash) {
                        tracing::warn!(path = %trash.display(), "removing a deleted blob: {e}");
                    }
                });
                Ok(())
            }
        }
    }

    fn local_path(&self, sha256: &str) -> Option<PathBuf> {
        valid(sha256).then(|| self.path(sha256))
    }
}

/// The chunk lists (SHA-256 hex and length of each 4 MiB span, as a bundle lists a
/// blob's chunks) of the blobs captured lately, hashed as their data arrived: a bundle
/// export captures disks and volumes, then lists their chunks without reading them again
/// (a read of 256 MiB took 0.33-0.45 s). Only the latest few are kept, in memory: an
/// export that finds none reads the blob.
#[derive(Default)]
pub struct ChunkLists(std::sync::Mutex<std::collections::VecDeque<(String, Chunks)>>);

/// Chunk lists kept: the captures of a few exports at once.
const CHUNK_LISTS: usize = 64;

impl ChunkLists {
    pub fn remember(&self, sha256: &str, chunks: Chunks) {
        let mut lists = self.0.lock().unwrap();
        if lists.iter().any(|(s, _)| s == sha256) {
            return;
        }
        if lists.len() == CHUNK_LISTS {
            lists.pop_front();
        }
        lists.push_back((sha256.to_owned(), chunks));
    }

    pub fn get(&self, sha256: &str) -> Option<Chunks> {
        self.0.lock().unwrap().iter().find(|(s, _)| s == sha256).map(|(_, c)| c.clone())
    }
}

/// Why data could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the data is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The source stopped (a cut connection, a failed read).
    #[error("the data stopped arriving: {0}")]
    Source(String),
    #[error("cannot write the staging file: {0}")]
    Io(#[from] io::Error),
}

/// Data being received: a file in the staging directory and its running SHA-256.
/// Dropped without [`Staging::finish`] being used by a put, the file is removed.
pub struct Staging {
    path: PathBuf,
    /// Written and hashed on threads of their own (see `vdc_bus::fileio`).
    file: Option<vdc_bus::fileio::HashingFile>,
    len: u64,
    limit: u64,
}

impl Staging {
    pub async fn create(dir: &Path, limit: u64) -> io::Result<Staging> {
        Self::open(dir, limit, None).await
    }

    /// Data also hashed in spans of `chunk` bytes ([`Staging::finish_with_chunks`]).
    pub async fn create_chunked(dir: &Path, limit: u64, chunk: usize) -> io::Result<Staging> {
        Self::open(dir, limit, Some(chunk)).await
    }

    async fn open(dir: &Path, limit: u64, chunk: Option<usize>) -> io::Result<Staging> {
        use vdc_bus::fileio::HashingFile;
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(format!("incoming-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let file = match chunk {
            Some(c) => HashingFile::with_chunks(file, c)?,
            None => HashingFile::new(file, Sha256::new())?,
        };
        Ok(Staging { path, file: Some(file), len: 0, limit })
    }

    pub async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), StageError> {
        if self.len + chunk.len() as u64 > self.limit {
            return Err(StageError::TooLarge { limit: self.limit });
        }
        self.len += chunk.len() as u64;
        self.file.as_mut().expect("open until finished").write(chunk).await?;
        Ok(())
    }

    /// Syncs the file to disk; returns its SHA-256 (hex) and length.
    pub async fn finish(&mut self) -> Result<(String, u64), StageError> {
        self.finish_with_chunks().await.map(|(sha, len, _)| (sha, len))
    }

    /// [`Staging::finish`], with the chunks' hashes and lengths when created chunked.
    pub async fn finish_with_chunks(&mut self) -> Result<(String, u64, Option<Chunks>), StageError> {
        let (sha, chunks) = self.file.take().expect("finished once").finish_with_chunks().await?;
        Ok((sha, self.len, chunks))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long an entry in staging that no process of this host owns must have been left
/// unchanged before it is taken for a stopped dcmgr's: another host's dcmgr sharing the
/// directory (README: several controllers) writes its transfers under pids this host
/// does not have.
pub const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes what a dcmgr stopped mid-way left in the staging directory: uploads and
/// imports cut short (`incoming-<pid>-…`), a bundle's blobs (`bundle-<pid>-…`) and plans
/// (`plan-<pid>-…`) of processes that are gone, and files named before names carried a
/// pid, once unchanged for `unchanged_for` (at start, a shared directory: [`STALE_STAGING`];
/// every reconcile pass too). Another live dcmgr's files are kept: this host's by their
/// pid, another host's by their writes (a dcmgr starting on another host deleted the
/// uploads under way through the others).
pub fn remove_stale_staging(dir: &Path, unchanged_for: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = ["plan-", "incoming-", "bundle-"].iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        let not_here = match rest.split_once('-').map(|(pid, _)| pid.parse::<u32>()) {
            Some(Ok(pid)) => pid == me || !Path::new(&format!("/proc/{pid}")).exists(),
            _ => true,
        };
        let unchanged = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age >= unchanged_for);
        if not_here && unchanged {
            tracing::info!(path = %e.path().display(), "removing what a stopped dcmgr left in staging");
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // After a put the file has been renamed away and this finds nothing.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// Another host's dcmgr sharing the directory writes under a pid this host does not
    /// have: its transfer under way is kept; one left unchanged long enough is not.
    #[test]
    fn staging_keeps_what_another_host_is_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, left) = (tmp.path().join("incoming-4194999-aa"), tmp.path().join("incoming-4194998-bb"));
        std::fs::write(&live, b"under way").unwrap();
        std::fs::write(&left, b"left").unwrap();
        let old = std::time::SystemTime::now() - 2 * STALE_STAGING;
        std::fs::File::options().write(true).open(&left).unwrap().set_modified(old).unwrap();
        remove_stale_staging(tmp.path(), STALE_STAGING);
        assert!(live.exists(), "written just now: another host's");
        assert!(!left.exists(), "unchanged for longer than STALE_STAGING");
        // One dcmgr alone on its directory (SQLite) takes all that is not its host's.
        remove_stale_staging(tmp.path(), std::time::Duration::ZERO);
        assert!(!live.exists());
    }

    #[tokio::test]
    async fn a_blob_is_stored_once_under_its_digest_and_read_from_an_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(tmp.path()).unwrap();
        let mut st = Staging::create(&tmp.path().join("staging"), 1 << 20).await.unwrap();
        st.write(bytes::Bytes::from_static(b"hello ")).await.unwrap();
        st.write(bytes::Bytes::from_static(b"world")).await.unwrap();
        let (sha, len) = st.finish().await.unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(len, 11);
        store.put(&sha, st.path()).await.unwrap();
        drop(st);
        let (total, r) = store.open(&sha, 6).await.unwrap().unwrap();
        let rest: Vec<bytes::Bytes> = r.try_collect().await.unwrap();
        assert_eq!((total, rest.concat().as_slice()), (11, &b"world"[..]));
        // Same bytes again: stored once, the second staging file is gone.
        let mut st = Staging::create(&tmp.path().join("staging"), 1 << 20).await.unwrap();
        st.write(bytes::Bytes::from_static(b"hello world")).await.unwrap();
        assert_eq!(st.finish().await.unwrap().0, sha);
        store.put(&sha, st.path()).await.unwrap();
        drop(st);
        assert_eq!(std::fs::read_dir(tmp.path().join("staging")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(tmp.path().join("blobs/sha256")).unwrap().count(), 1);
        assert!(store.open("../../etc/passwd", 0).await.unwrap().is_none());
        // Deleted: gone from the store at once, its file removed after.
        store.delete(&sha).await.unwrap();
        assert!(store.open(&sha, 0).await.unwrap().is_none());
        let trash = tmp.path().join("blobs/trash");
        for _ in 0..100 {
            if std::fs::read_dir(&trash).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
        store.delete(&sha).await.unwrap();
        // What a stopped dcmgr left in the trash goes when the store opens again.
        std::fs::write(trash.join("left"), b"x").unwrap();
        FsBlobStore::new(tmp.path()).unwrap();
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
    }

    /// Data staged chunked gives its chunk list with its hash; the lists kept are the
    /// latest few, each blob's once.
    #[tokio::test]
    async fn chunk_lists_come_with_chunked_staging_and_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = Staging::create_chunked(tmp.path(), 1 << 20, 4).await.unwrap();
        st.write(bytes::Bytes::from_static(b"hello world")).await.unwrap();
        let (sha, len, chunks) = st.finish_with_chunks().await.unwrap();
        assert_eq!((sha.as_str(), len), (hex::encode(Sha256::digest(b"hello world")).as_str(), 11));
        let want: Chunks = [&b"hell"[..], b"o wo", b"rld"]
            .iter()
            .map(|c| (hex::encode(Sha256::digest(c)), c.len() as u64, crc32fast::hash(c)))
            .collect();
        assert_eq!(chunks.as_ref(), Some(&want));
        let mut plain = Staging::create(tmp.path(), 1 << 20).await.unwrap();
        assert_eq!(plain.finish_with_chunks().await.unwrap().2, None);

        let lists = ChunkLists::default();
        lists.remember(&sha, want.clone());
        lists.remember(&sha, vec![]);
        assert_eq!(lists.get(&sha), Some(want), "the first list of a blob stays");
        for i in 0..CHUNK_LISTS {
            lists.remember(&format!("{i:064x}"), vec![]);
        }
        assert_eq!(lists.get(&sha), None, "the oldest goes");
        assert_eq!(lists.get(&format!("{:064x}", CHUNK_LISTS - 1)), Some(vec![]));
    }

    #[tokio::test]
    async fn data_over_the_limit_or_abandoned_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = Staging::create(tmp.path(), 10).await.unwrap();
        st.write(bytes::Bytes::from_static(b"0123456789")).await.unwrap();
        assert!(matches!(st.write(bytes::Bytes::from_static(b"x")).await, Err(StageError::TooLarge { limit: 10 })));
        drop(st);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
