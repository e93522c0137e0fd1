//! Where volumes live. Every backend keeps a volume as one raw file (or, for ZFS with its
//! kernel module, a zvol device): that is what tgtd exports and what a local hva opens.
//!
//! | backend | volume                          | snapshot                          |
//! |---------|---------------------------------|-----------------------------------|
//! | file    | `DIR/volumes/<vol>.img`         | reflink copy `DIR/snapshots/<snap>.img` |
//! | btrfs   | subvolume `DIR/<vol>/disk.img`  | read-only subvolume `DIR/.snapshots/<snap>` |
//! | zfs     | dataset `DS/<vol>` + `disk.img` (zvol `DS/<vol>` with the module) | `DS/<vol>@<snap>` |
//!
//! A snapshot's blocks are read (for an image of it) from the snapshot file, the
//! read-only subvolume's `disk.img`, or ZFS's `.zfs/snapshot/<snap>/disk.img` (the
//! device `/dev/zvol/DS/<vol>@<snap>` with zvols, made visible with `snapdev`).
//!
//! A volume made from a snapshot is a full, independent copy (btrfs: a writable snapshot,
//! which shares blocks but not lifetime), so snapshots and volumes can be deleted in any
//! order.

pub mod btrfs;
pub mod file;
pub mod zfs;

use crate::cmd::{self, CmdError, Runner};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use vdc_schema::id::{SnapshotId, VolumeId};
use vdc_schema::StorageBackend;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{0}")]
    Io(String),
    #[error("snapshot {0} is not on this storage node")]
    NoSnapshot(SnapshotId),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

pub(crate) fn io(path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Io(format!("{}: {e}", path.display()))
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> StorageBackend;
    /// The raw file (or device) holding the volume's blocks.
    fn lun_path(&self, id: &VolumeId) -> PathBuf;
    async fn exists(&self, id: &VolumeId) -> bool {
        tokio::fs::metadata(self.lun_path(id)).await.is_ok()
    }
    /// The volume's size in MiB.
    async fn size_mib(&self, id: &VolumeId) -> Result<u64> {
        let p = self.lun_path(id);
        let len = tokio::fs::metadata(&p).await.map_err(|e| io(&p, e))?.len();
        Ok(len >> 20)
    }
    /// A new, zero-filled volume.
    async fn create(&self, id: &VolumeId, size_mib: u64) -> Result<()>;
    /// A new volume holding what `volume` held when `snap` was taken.
    async fn create_from_snapshot(&self, id: &VolumeId, volume: &VolumeId, snap: &SnapshotId) -> Result<()>;
    /// Grows the volume to `size_mib` (never shrinks).
    async fn grow(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        grow_file(&self.lun_path(id), size_mib).await
    }
    /// Removes the volume and everything that belongs to it; absent is fine.
    async fn delete(&self, id: &VolumeId) -> Result<()>;
    /// A crash-consistent point-in-time copy.
    async fn snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()>;
    async fn snapshot_exists(&self, volume: &VolumeId, snap: &SnapshotId) -> bool;
    /// Absent is fine.
    async fn delete_snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()>;
    /// A readable path of the snapshot's blocks (a raw disk), to copy them out.
    async fn snapshot_data(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<PathBuf>;
    /// (capacity, used) in MiB.
    async fn capacity(&self) -> Result<(u64, u64)>;
}

/// `path` if it exists, or [`BackendError::NoSnapshot`].
pub(crate) async fn existing(path: PathBuf, snap: &SnapshotId) -> Result<PathBuf> {
    match tokio::fs::metadata(&path).await {
        Ok(_) => Ok(path),
        Err(_) => Err(BackendError::NoSnapshot(snap.clone())),
    }
}

/// Extends a file with a hole; tgt and QEMU see the new size on their next open.
pub(crate) async fn grow_file(path: &Path, size_mib: u64) -> Result<()> {
    let f = tokio::fs::OpenOptions::new().write(true).open(path).await.map_err(|e| io(path, e))?;
    let want = size_mib << 20;
    let have = f.metadata().await.map_err(|e| io(path, e))?.len();
    if want > have {
        f.set_len(want).await.map_err(|e| io(path, e))?;
        f.sync_all().await.map_err(|e| io(path, e))?;
    }
    Ok(())
}

/// Creates a sparse zero-filled file of `size_mib`, never overwriting one.
/// Readable by its owner only: a tenant's data (libvirt hands a locally attached file to
/// QEMU's user for the time it is attached; copies keep the mode).
pub(crate) async fn create_file(path: &Path, size_mib: u64) -> Result<()> {
    let f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| io(path, e))?;
    f.set_len(size_mib << 20).await.map_err(|e| io(path, e))?;
    f.sync_all().await.map_err(|e| io(path, e))?;
    Ok(())
}

/// (capacity, used) in MiB of the filesystem holding `path`.
pub(crate) fn statvfs_mib(path: &Path) -> Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path).map_err(|e| io(path, e.into()))?;
    let total = s.f_blocks.saturating_mul(s.f_frsize) >> 20;
    let free = s.f_bavail.saturating_mul(s.f_frsize) >> 20;
    Ok((total, total.saturating_sub(free)))
}

pub(crate) fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| BackendError::Invalid(format!("path {} is not UTF-8", p.display())))
}

/// Copies `from` to a new file `to`, sharing blocks where the filesystem can (reflink,
/// which is atomic) and keeping holes.
pub(crate) async fn copy_file(tools: &Runner, from: &Path, to: &Path) -> Result<()> {
    tools.run("cp", &["--reflink=auto", "--sparse=always", "--", path_str(from)?, path_str(to)?]).await?;
    Ok(())
}

/// Which backend a storage node uses, from its configuration.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    File { dir: PathBuf },
    Btrfs { dir: PathBuf },
    Zfs { dataset: String },
}

pub async fn open(cfg: &BackendConfig) -> Result<std::sync::Arc<dyn Backend>> {
    open_with(cfg, cmd::system()).await
}

/// [`open`] with the given way of running the tools.
pub async fn open_with(cfg: &BackendConfig, tools: Runner) -> Result<std::sync::Arc<dyn Backend>> {
    Ok(match cfg {
        BackendConfig::File { dir } => std::sync::Arc::new(file::FileBackend::open_with(dir, tools).await?),
        BackendConfig::Btrfs { dir } => std::sync::Arc::new(btrfs::BtrfsBackend::open_with(dir, tools).await?),
        BackendConfig::Zfs { dataset } => std::sync::Arc::new(zfs::ZfsBackend::open_with(dataset, tools).await?),
    })
}
