//! Volumes as raw files in a directory. Snapshots are `cp --reflink=auto` copies: atomic
//! (hence crash-consistent) where the filesystem can share blocks (XFS, btrfs); on others
//! (ext4) the copy is only a consistent point while nobody writes to the volume; use the
//! zfs or btrfs backend for snapshots of volumes in use.

use super::*;

pub struct FileBackend {
    dir: PathBuf,
    tools: Runner,
}

impl FileBackend {
    pub async fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, cmd::system()).await
    }

    /// [`FileBackend::open`] with the given way of running `cp`.
    pub async fn open_with(dir: &Path, tools: Runner) -> Result<Self> {
        // Volumes: QEMU (another user) opens a locally attached one by its path, so the
        // directory lets it pass but not list; snapshots are sta's alone.
        for (sub, mode) in [("volumes", 0o711), ("snapshots", 0o700)] {
            let d = dir.join(sub);
            tokio::fs::create_dir_all(&d).await.map_err(|e| io(&d, e))?;
            tokio::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .await
                .map_err(|e| io(&d, e))?;
        }
        Ok(FileBackend { dir: dir.to_owned(), tools })
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
        copy_file(&self.tools, &from, &tmp).await?;
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
        copy_file(&self.tools, &self.lun_path(volume), &tmp).await?;
        tokio::fs::rename(&tmp, &to).await.map_err(|e| io(&to, e))
    }

    async fn snapshot_exists(&self, _volume: &VolumeId, snap: &SnapshotId) -> bool {
        tokio::fs::metadata(self.snap_path(snap)).await.is_ok()
    }

    async fn snapshot_data(&self, _volume: &VolumeId, snap: &SnapshotId) -> Result<PathBuf> {
        existing(self.snap_path(snap), snap).await
    }

    async fn delete_snapshot(&self, _volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let p = self.snap_path(snap);
        match tokio::fs::remove_file(&p).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, e)),
            _ => Ok(()),
        }
    }

    /// The file system's free space plus what the volumes take: the total of a file
    /// system shared with the host's other files promised room that was not there
    /// (250 GiB of volumes on 38 GiB free, red team 2026-12-07).
    async fn capacity(&self) -> Result<(u64, u64)> {
        let dir = self.dir.clone();
        let room = tokio::task::spawn_blocking(move || {
            // The volumes walked once: the room is the free space plus them.
            let taken = vdc_bus::room::allocated_bytes(&dir) >> 20;
            vdc_bus::room::room_mib(&dir, &[], &[]).map(|free| (free + taken, taken))
        })
        .await
        .map_err(|e| BackendError::Invalid(e.to_string()))?;
        room.ok_or_else(|| BackendError::Invalid(format!("cannot read the file system of {}", self.dir.display())))
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

    /// A backend whose `cp` copies as cp would (the fake's answer does the copy).
    async fn backend(dir: &Path) -> (Arc<FakeRunner>, FileBackend) {
        let f = FakeRunner::new();
        f.answer(&["cp"], |c| {
            let [.., from, to] = &c.argv[..] else { return Err("cp: missing operand".into()) };
            std::fs::copy(from, to).map(|_| String::new()).map_err(|e| e.to_string())
        });
        let b = FileBackend::open_with(dir, f.clone()).await.unwrap();
        (f, b)
    }

    #[tokio::test]
    async fn the_capacity_is_the_free_space_and_what_the_volumes_take_not_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (_, b) = backend(dir.path()).await;
        std::fs::write(dir.path().join("written"), vec![1u8; 2 << 20]).unwrap();
        let (cap, used) = b.capacity().await.unwrap();
        let s = rustix::fs::statvfs(dir.path()).unwrap();
        let (total, free) = ((s.f_blocks * s.f_frsize) >> 20, (s.f_bavail * s.f_frsize) >> 20);
        assert_eq!(used, 2);
        // Other writers on the machine move the free space a little between the reads.
        assert!(cap + 256 >= free + 2 && cap <= free + 2 + 256, "{cap} MiB offered, {free} free, {total} in all");
    }

    #[tokio::test]
    async fn a_snapshot_is_a_reflink_copy_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        b.create(&vol("vol-a"), 4).await.unwrap();
        assert!(f.calls().is_empty(), "a new volume is a sparse file, no command");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode("volumes/vol-a.img"), mode("volumes"), mode("snapshots")),
            (0o600, 0o711, 0o700),
            "a tenant's data is no other user's to read"
        );
        b.snapshot(&vol("vol-a"), &snap("snap-1")).await.unwrap();
        let d = dir.path().display();
        assert_eq!(
            f.lines(),
            [format!("cp --reflink=auto --sparse=always -- {d}/volumes/vol-a.img {d}/snapshots/snap-1.img.part")]
        );
        assert!(b.snapshot_exists(&vol("vol-a"), &snap("snap-1")).await);
        assert!(!dir.path().join("snapshots/snap-1.img.part").exists());
        f.clear();
        b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-1")).await.unwrap();
        assert_eq!(
            f.lines(),
            [format!("cp --reflink=auto --sparse=always -- {d}/snapshots/snap-1.img {d}/volumes/vol-b.img.part")]
        );
        assert_eq!(b.size_mib(&vol("vol-b")).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_snapshots_data_is_its_file_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_f, b) = backend(dir.path()).await;
        let e = b.snapshot_data(&vol("vol-a"), &snap("snap-1")).await.unwrap_err();
        assert!(matches!(e, BackendError::NoSnapshot(ref s) if s.as_str() == "snap-1"), "{e}");
        std::fs::write(dir.path().join("snapshots/snap-1.img"), b"x").unwrap();
        let p = b.snapshot_data(&vol("vol-a"), &snap("snap-1")).await.unwrap();
        assert_eq!(p, dir.path().join("snapshots/snap-1.img"));
    }

    #[tokio::test]
    async fn a_failed_copy_leaves_no_volume_and_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (f, b) = backend(dir.path()).await;
        let e = b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-1")).await.unwrap_err();
        assert!(matches!(e, BackendError::NoSnapshot(_)), "{e}");
        assert!(f.calls().is_empty(), "nothing is copied from a missing snapshot");
        std::fs::write(dir.path().join("snapshots/snap-1.img"), b"x").unwrap();
        f.fail(&["cp", "--reflink=auto"], "cp: error writing: No space left on device");
        let e = b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-1")).await.unwrap_err();
        assert!(e.to_string().starts_with("`cp --reflink=auto --sparse=always -- "), "{e}");
        assert!(e.to_string().ends_with("failed: cp: error writing: No space left on device"), "{e}");
        assert!(!b.exists(&vol("vol-b")).await);
    }
}
