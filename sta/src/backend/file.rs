//! Volumes as raw files in a directory. Snapshots are `cp --reflink=auto` copies: atomic
//! (hence crash-consistent) where the filesystem can share blocks (XFS, btrfs); on others
//! (ext4) the copy is only a consistent point while nobody writes to the volume; use the
//! zfs or btrfs backend for snapshots of volumes in use.

use super::*;

pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    pub async fn open(dir: &Path) -> Result<Self> {
        for sub in ["volumes", "snapshots"] {
            let d = dir.join(sub);
            tokio::fs::create_dir_all(&d).await.map_err(|e| io(&d, e))?;
        }
        Ok(FileBackend { dir: dir.to_owned() })
    }

    fn snap_path(&self, snap: &SnapshotId) -> PathBuf {
        self.dir.join("snapshots").join(format!("{snap}.img"))
    }
}

#[async_trait]
impl Backend for FileBackend {
    fn kind(&self) -> StorageBackend {
        StorageBackend::File
    }

    fn lun_path(&self, id: &VolumeId) -> PathBuf {
        self.dir.join("volumes").join(format!("{id}.img"))
    }

    async fn create(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        create_file(&self.lun_path(id), size_mib).await
    }

    async fn create_from_snapshot(&self, id: &VolumeId, _volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let from = self.snap_path(snap);
        if tokio::fs::metadata(&from).await.is_err() {
            return Err(BackendError::NoSnapshot(snap.clone()));
        }
        // Copy under a temporary name: a crash never leaves a half-copied volume behind.
        let to = self.lun_path(id);
        let tmp = to.with_extension("img.part");
        let _ = tokio::fs::remove_file(&tmp).await;
        copy_file(&from, &tmp).await?;
        tokio::fs::rename(&tmp, &to).await.map_err(|e| io(&to, e))
    }

    async fn delete(&self, id: &VolumeId) -> Result<()> {
        let p = self.lun_path(id);
        match tokio::fs::remove_file(&p).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, e)),
            _ => Ok(()),
        }
    }

    async fn snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let to = self.snap_path(snap);
        let tmp = to.with_extension("img.part");
        let _ = tokio::fs::remove_file(&tmp).await;
        copy_file(&self.lun_path(volume), &tmp).await?;
        tokio::fs::rename(&tmp, &to).await.map_err(|e| io(&to, e))
    }

    async fn snapshot_exists(&self, _volume: &VolumeId, snap: &SnapshotId) -> bool {
        tokio::fs::metadata(self.snap_path(snap)).await.is_ok()
    }

    async fn delete_snapshot(&self, _volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let p = self.snap_path(snap);
        match tokio::fs::remove_file(&p).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, e)),
            _ => Ok(()),
        }
    }

    async fn capacity(&self) -> Result<(u64, u64)> {
        statvfs_mib(&self.dir)
    }
}
