//! Volumes as btrfs subvolumes (one `disk.img` each); snapshots are read-only btrfs
//! snapshots, atomic and so crash-consistent. `DIR` must be on a mounted btrfs.

use super::*;

pub struct BtrfsBackend {
    dir: PathBuf,
}

impl BtrfsBackend {
    pub async fn open(dir: &Path) -> Result<Self> {
        let fs = cmd::run("stat", &["-f", "-c", "%T", path_str(dir)?]).await?;
        if fs.trim() != "btrfs" {
            return Err(BackendError::Invalid(format!("{} is on {}, not btrfs", dir.display(), fs.trim())));
        }
        let snaps = dir.join(".snapshots");
        tokio::fs::create_dir_all(&snaps).await.map_err(|e| io(&snaps, e))?;
        Ok(BtrfsBackend { dir: dir.to_owned() })
    }

    fn subvol(&self, id: &VolumeId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    fn snap(&self, snap: &SnapshotId) -> PathBuf {
        self.dir.join(".snapshots").join(snap.as_str())
    }

    async fn delete_subvol(&self, p: &Path) -> Result<()> {
        if tokio::fs::metadata(p).await.is_ok() {
            cmd::run("btrfs", &["subvolume", "delete", path_str(p)?]).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for BtrfsBackend {
    fn kind(&self) -> StorageBackend {
        StorageBackend::Btrfs
    }

    fn lun_path(&self, id: &VolumeId) -> PathBuf {
        self.subvol(id).join("disk.img")
    }

    async fn create(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        let sv = self.subvol(id);
        // A subvolume left by a create that crashed before its disk existed.
        if tokio::fs::metadata(&sv).await.is_ok() && !self.exists(id).await {
            self.delete_subvol(&sv).await?;
        }
        cmd::run("btrfs", &["subvolume", "create", path_str(&sv)?]).await?;
        create_file(&self.lun_path(id), size_mib).await
    }

    async fn create_from_snapshot(&self, id: &VolumeId, _volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let from = self.snap(snap);
        if tokio::fs::metadata(&from).await.is_err() {
            return Err(BackendError::NoSnapshot(snap.clone()));
        }
        let sv = self.subvol(id);
        self.delete_subvol(&sv).await?;
        // A writable snapshot of the read-only one: blocks shared, lifetimes independent.
        cmd::run("btrfs", &["subvolume", "snapshot", path_str(&from)?, path_str(&sv)?]).await?;
        Ok(())
    }

    async fn delete(&self, id: &VolumeId) -> Result<()> {
        self.delete_subvol(&self.subvol(id)).await
    }

    async fn snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let to = self.snap(snap);
        self.delete_subvol(&to).await?;
        cmd::run("btrfs", &["subvolume", "snapshot", "-r", path_str(&self.subvol(volume))?, path_str(&to)?]).await?;
        Ok(())
    }

    async fn snapshot_exists(&self, _volume: &VolumeId, snap: &SnapshotId) -> bool {
        tokio::fs::metadata(self.snap(snap).join("disk.img")).await.is_ok()
    }

    async fn delete_snapshot(&self, _volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        self.delete_subvol(&self.snap(snap)).await
    }

    async fn capacity(&self) -> Result<(u64, u64)> {
        statvfs_mib(&self.dir)
    }
}
