//! Volumes as btrfs subvolumes (one `disk.img` each); snapshots are read-only btrfs
//! snapshots, atomic and so crash-consistent. `DIR` must be on a mounted btrfs.

use super::*;

pub struct BtrfsBackend {
    dir: PathBuf,
    tools: Runner,
}

impl BtrfsBackend {
    pub async fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, cmd::system()).await
    }

    /// [`BtrfsBackend::open`] with the given way of running `btrfs`.
    pub async fn open_with(dir: &Path, tools: Runner) -> Result<Self> {
        let fs = tools.run("stat", &["-f", "-c", "%T", path_str(dir)?]).await?;
        if fs.trim() != "btrfs" {
            return Err(BackendError::Invalid(format!("{} is on {}, not btrfs", dir.display(), fs.trim())));
        }
        let snaps = dir.join(".snapshots");
        tokio::fs::create_dir_all(&snaps).await.map_err(|e| io(&snaps, e))?;
        Ok(BtrfsBackend { dir: dir.to_owned(), tools })
    }

    fn subvol(&self, id: &VolumeId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    fn snap(&self, snap: &SnapshotId) -> PathBuf {
        self.dir.join(".snapshots").join(snap.as_str())
    }

    async fn delete_subvol(&self, p: &Path) -> Result<()> {
        if tokio::fs::metadata(p).await.is_ok() {
            self.tools.run("btrfs", &["subvolume", "delete", path_str(p)?]).await?;
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
        self.tools.run("btrfs", &["subvolume", "create", path_str(&sv)?]).await?;
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
        self.tools.run("btrfs", &["subvolume", "snapshot", path_str(&from)?, path_str(&sv)?]).await?;
        Ok(())
    }

    async fn delete(&self, id: &VolumeId) -> Result<()> {
        self.delete_subvol(&self.subvol(id)).await
    }

    async fn snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let to = self.snap(snap);
        self.delete_subvol(&to).await?;
        self.tools
            .run("btrfs", &["subvolume", "snapshot", "-r", path_str(&self.subvol(volume))?, path_str(&to)?])
            .await?;
        Ok(())
    }

    async fn snapshot_exists(&self, _volume: &VolumeId, snap: &SnapshotId) -> bool {
        tokio::fs::metadata(self.snap(snap).join("disk.img")).await.is_ok()
    }

    async fn snapshot_data(&self, _volume: &VolumeId, snap: &SnapshotId) -> Result<PathBuf> {
        existing(self.snap(snap).join("disk.img"), snap).await
    }

    async fn delete_snapshot(&self, _volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        self.delete_subvol(&self.snap(snap)).await
    }

    async fn capacity(&self) -> Result<(u64, u64)> {
        statvfs_mib(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::FakeRunner;
    use std::sync::Arc;

    fn vol(s: &str) -> VolumeId {
        s.parse().unwrap()
    }

    fn snap(s: &str) -> SnapshotId {
        s.parse().unwrap()
    }

    /// A backend on a directory the fake says is btrfs; `btrfs subvolume create` and
    /// `snapshot` make the directory as btrfs would.
    async fn backend(dir: &Path) -> (Arc<FakeRunner>, BtrfsBackend) {
        let f = FakeRunner::new();
        f.ok(&["stat"], "btrfs\n");
        let mkdir = |c: &vdc_bus::cmd::Call| {
            std::fs::create_dir_all(c.argv.last().unwrap()).map(|_| String::new()).map_err(|e| e.to_string())
        };
        f.answer(&["btrfs", "subvolume", "create"], mkdir);
        f.answer(&["btrfs", "subvolume", "snapshot"], mkdir);
        let b = BtrfsBackend::open_with(dir, f.clone()).await.unwrap();
        f.clear();
        (f, b)
    }

    #[tokio::test]
    async fn open_refuses_a_directory_on_another_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        f.ok(&["stat"], "ext2/ext3\n");
        let e = BtrfsBackend::open_with(dir.path(), f.clone()).await.err().expect("refused");
        assert_eq!(e.to_string(), format!("{} is on ext2/ext3, not btrfs", dir.path().display()));
        assert_eq!(f.lines(), [format!("stat -f -c %T {}", dir.path().display())]);
        assert!(!dir.path().join(".snapshots").exists());
    }

    #[tokio::test]
    async fn a_volume_is_a_subvolume_holding_a_sparse_raw_file() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        b.create(&vol("vol-a"), 16).await.unwrap();
        let d = dir.path().display();
        assert_eq!(f.lines(), [format!("btrfs subvolume create {d}/vol-a")]);
        assert_eq!(std::fs::metadata(b.lun_path(&vol("vol-a"))).unwrap().len(), 16 << 20);
        assert!(b.lun_path(&vol("vol-a")).ends_with("vol-a/disk.img"));
    }

    #[tokio::test]
    async fn a_subvolume_left_without_its_disk_is_deleted_before_create() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        std::fs::create_dir(dir.path().join("vol-a")).unwrap();
        b.create(&vol("vol-a"), 16).await.unwrap();
        let d = dir.path().display();
        assert_eq!(
            f.lines(),
            [format!("btrfs subvolume delete {d}/vol-a"), format!("btrfs subvolume create {d}/vol-a")]
        );
    }

    #[tokio::test]
    async fn snapshots_are_read_only_and_volumes_from_them_writable() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        let d = dir.path().display();
        b.snapshot(&vol("vol-a"), &snap("snap-1")).await.unwrap();
        assert_eq!(f.lines(), [format!("btrfs subvolume snapshot -r {d}/vol-a {d}/.snapshots/snap-1")]);
        f.clear();
        b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-1")).await.unwrap();
        assert_eq!(f.lines(), [format!("btrfs subvolume snapshot {d}/.snapshots/snap-1 {d}/vol-b")]);
        // Taken again (a repeated ensure after a crash): the old one goes first.
        f.clear();
        b.snapshot(&vol("vol-a"), &snap("snap-1")).await.unwrap();
        assert_eq!(
            f.lines(),
            [
                format!("btrfs subvolume delete {d}/.snapshots/snap-1"),
                format!("btrfs subvolume snapshot -r {d}/vol-a {d}/.snapshots/snap-1")
            ]
        );
    }

    #[tokio::test]
    async fn a_volume_from_a_missing_snapshot_is_refused_and_deletes_of_absent_things_run_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        let e = b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-9")).await.unwrap_err();
        assert!(matches!(e, BackendError::NoSnapshot(_)), "{e}");
        b.delete(&vol("vol-b")).await.unwrap();
        b.delete_snapshot(&vol("vol-a"), &snap("snap-9")).await.unwrap();
        assert!(f.calls().is_empty(), "{:?}", f.lines());
        std::fs::create_dir(dir.path().join("vol-b")).unwrap();
        b.delete(&vol("vol-b")).await.unwrap();
        assert_eq!(f.lines(), [format!("btrfs subvolume delete {}/vol-b", dir.path().display())]);
    }

    #[tokio::test]
    async fn a_failed_btrfs_command_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        f.fail(&["btrfs", "subvolume", "snapshot", "-r"], "ERROR: Could not statfs: No such file or directory");
        let e = b.snapshot(&vol("vol-a"), &snap("snap-1")).await.unwrap_err();
        let d = dir.path().display();
        assert_eq!(
            e.to_string(),
            format!(
                "`btrfs subvolume snapshot -r {d}/vol-a {d}/.snapshots/snap-1` failed: ERROR: Could not statfs: No such file or directory"
            )
        );
    }
}
