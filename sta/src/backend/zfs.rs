//! Volumes on ZFS, driven through the `zfs` command (see `cmd` for why). With the ZFS
//! kernel module a volume is a zvol (`DS/<vol>`, device `/dev/zvol/DS/<vol>`); without it
//! (zfs-fuse, which cannot do zvols) it is a dataset `DS/<vol>` holding one raw
//! `disk.img`. Either way snapshots are ZFS snapshots `DS/<vol>@<snap>`: atomic, so
//! crash-consistent. A volume from a snapshot is a `zfs send | zfs receive` copy, so it
//! never depends on its origin (a clone would pin the snapshot).

use super::*;
use crate::cmd::quote;

pub struct ZfsBackend {
    dataset: String,
    /// None: zvols. Some: the mountpoint of `dataset`, under which each volume's dataset
    /// is mounted.
    mountpoint: Option<PathBuf>,
    tools: Runner,
    /// Held while a command changes the pool: one at a time. zfs-fuse hung for good
    /// (its FUSE requests and six `zfs create` waiting on each other) when nine volumes
    /// were created at once beside their image copies (sta_backends, once in 18 runs);
    /// the ZFS kernel module serialises these in the pool's sync task anyway.
    changing: tokio::sync::Mutex<()>,
}

impl ZfsBackend {
    pub async fn open(dataset: &str) -> Result<Self> {
        Self::open_with(dataset, cmd::system()).await
    }

    /// [`ZfsBackend::open`] with the given way of running `zfs`: zvols where the ZFS
    /// kernel module is loaded, else a file per volume.
    pub async fn open_with(dataset: &str, tools: Runner) -> Result<Self> {
        Self::open_mode(dataset, tools, Path::new("/sys/module/zfs").exists()).await
    }

    /// Opens `dataset` keeping volumes as zvols (`zvols`) or as files on datasets.
    pub async fn open_mode(dataset: &str, tools: Runner, zvols: bool) -> Result<Self> {
        if dataset.is_empty() || dataset.starts_with('/') || dataset.contains(['@', ' ', '\'']) {
            return Err(BackendError::Invalid(format!("{dataset:?} is not a ZFS dataset name (e.g. tank/vdc)")));
        }
        if tools.run("zfs", &["list", "-H", "-o", "name", dataset]).await.is_err() {
            tools.run("zfs", &["create", "-p", dataset]).await?;
        }
        let mountpoint = if zvols {
            None
        } else {
            let mp = tools.run("zfs", &["get", "-H", "-o", "value", "mountpoint", dataset]).await?;
            let mp = mp.trim();
            if !mp.starts_with('/') {
                return Err(BackendError::Invalid(format!(
                    "dataset {dataset} has mountpoint {mp}; without zvols each volume is a file on a mounted dataset"
                )));
            }
            Some(PathBuf::from(mp))
        };
        Ok(ZfsBackend { dataset: dataset.to_owned(), mountpoint, tools, changing: Default::default() })
    }

    fn ds(&self, id: &VolumeId) -> String {
        format!("{}/{id}", self.dataset)
    }

    /// Runs `zfs ARGS`, which changes the pool, alone ([`ZfsBackend::changing`]).
    async fn change(&self, args: &[&str]) -> std::result::Result<String, CmdError> {
        let _alone = self.changing.lock().await;
        self.tools.run("zfs", args).await
    }

    async fn has(&self, name: &str, kind: &str) -> bool {
        self.tools.run("zfs", &["list", "-H", "-t", kind, "-o", "name", name]).await.is_ok()
    }
}

#[async_trait]
impl Backend for ZfsBackend {
    fn kind(&self) -> StorageBackend {
        StorageBackend::Zfs
    }

    fn lun_path(&self, id: &VolumeId) -> PathBuf {
        match &self.mountpoint {
            Some(mp) => mp.join(id.as_str()).join("disk.img"),
            None => PathBuf::from(format!("/dev/zvol/{}", self.ds(id))),
        }
    }

    async fn size_mib(&self, id: &VolumeId) -> Result<u64> {
        if self.mountpoint.is_some() {
            let p = self.lun_path(id);
            let len = tokio::fs::metadata(&p).await.map_err(|e| io(&p, e))?.len();
            return Ok(len >> 20);
        }
        let v = self.tools.run("zfs", &["get", "-Hp", "-o", "value", "volsize", &self.ds(id)]).await?;
        v.trim().parse::<u64>().map(|b| b >> 20).map_err(|e| BackendError::Invalid(format!("volsize {v:?}: {e}")))
    }

    async fn create(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        let ds = self.ds(id);
        if self.has(&ds, "all").await {
            // Left by a create that crashed before its disk existed.
            self.change(&["destroy", "-r", &ds]).await?;
        }
        if self.mountpoint.is_none() {
            self.change(&["create", "-V", &format!("{size_mib}M"), &ds]).await?;
            return Ok(());
        }
        self.change(&["create", &ds]).await?;
        create_file(&self.lun_path(id), size_mib).await
    }

    async fn create_from_snapshot(&self, id: &VolumeId, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let origin = format!("{}@{snap}", self.ds(volume));
        if !self.has(&origin, "snapshot").await {
            return Err(BackendError::NoSnapshot(snap.clone()));
        }
        let ds = self.ds(id);
        if self.has(&ds, "all").await {
            self.change(&["destroy", "-r", &ds]).await?;
        }
        {
            let _alone = self.changing.lock().await;
            self.tools.pipeline(&format!("zfs send {} | zfs receive {}", quote(&origin), quote(&ds))).await?;
        }
        // The copy arrives with the snapshot it was sent from; it is not one of ours.
        self.change(&["destroy", &format!("{ds}@{snap}")]).await?;
        Ok(())
    }

    async fn grow(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        if self.mountpoint.is_some() {
            return grow_file(&self.lun_path(id), size_mib).await;
        }
        if self.size_mib(id).await? < size_mib {
            self.change(&["set", &format!("volsize={size_mib}M"), &self.ds(id)]).await?;
        }
        Ok(())
    }

    async fn delete(&self, id: &VolumeId) -> Result<()> {
        let ds = self.ds(id);
        // Right after tgtd lets go of the file the dataset can still be busy: FUSE
        // delivers the close to zfs-fuse asynchronously, and on a loaded machine more
        // than 5 s later (seen in CI). Give it up to 30 s before the next ensure must.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.has(&ds, "all").await {
            match self.change(&["destroy", "-r", &ds]).await {
                Ok(_) => break,
                Err(CmdError::Failed { stderr, .. })
                    if stderr.contains("busy") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let name = format!("{}@{snap}", self.ds(volume));
        if !self.has(&name, "snapshot").await {
            self.change(&["snapshot", &name]).await?;
        }
        Ok(())
    }

    async fn snapshot_exists(&self, volume: &VolumeId, snap: &SnapshotId) -> bool {
        self.has(&format!("{}@{snap}", self.ds(volume)), "snapshot").await
    }

    async fn snapshot_data(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<PathBuf> {
        if !self.snapshot_exists(volume, snap).await {
            return Err(BackendError::NoSnapshot(snap.clone()));
        }
        match &self.mountpoint {
            // The hidden `.zfs` directory is reachable by path whatever `snapdir` says.
            Some(mp) => {
                existing(mp.join(volume.as_str()).join(".zfs/snapshot").join(snap.as_str()).join("disk.img"), snap)
                    .await
            }
            None => {
                // Snapshot devices exist only with `snapdev=visible` (udev makes them).
                self.change(&["set", "snapdev=visible", &self.ds(volume)]).await?;
                let dev = PathBuf::from(format!("/dev/zvol/{}@{snap}", self.ds(volume)));
                for _ in 0..50 {
                    if tokio::fs::metadata(&dev).await.is_ok() {
                        return Ok(dev);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(BackendError::Io(format!("{} did not appear after snapdev=visible", dev.display())))
            }
        }
    }

    async fn delete_snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let name = format!("{}@{snap}", self.ds(volume));
        if self.has(&name, "snapshot").await {
            self.change(&["destroy", &name]).await?;
        }
        Ok(())
    }

    async fn capacity(&self) -> Result<(u64, u64)> {
        let out = self.tools.run("zfs", &["get", "-Hp", "-o", "value", "available,used", &self.dataset]).await?;
        let v: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        match v[..] {
            [avail, used] => Ok(((avail + used) >> 20, used >> 20)),
            _ => Err(BackendError::Invalid(format!("unexpected `zfs get` output {out:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::FakeRunner;
    use std::sync::Arc;

    const DS: &str = "tank/vdc";

    fn vol(s: &str) -> VolumeId {
        s.parse().unwrap()
    }

    fn snap(s: &str) -> SnapshotId {
        s.parse().unwrap()
    }

    /// A fake on which no dataset exists but `tank/vdc` (scripted `zfs list` answers
    /// add more), and the backend on it, with zvols or with files under `mountpoint`.
    async fn backend(mountpoint: Option<&Path>) -> (Arc<FakeRunner>, ZfsBackend) {
        let f = FakeRunner::new();
        f.fail(&["zfs", "list"], "dataset does not exist");
        f.ok(&["zfs", "list", "-H", "-o", "name", DS], "tank/vdc\n");
        let mp = mountpoint.map(|p| format!("{}\n", p.display())).unwrap_or_default();
        f.ok(&["zfs", "get", "-H", "-o", "value", "mountpoint", DS], &mp);
        let b = ZfsBackend::open_mode(DS, f.clone(), mountpoint.is_none()).await.unwrap();
        f.clear();
        (f, b)
    }

    fn exists(f: &FakeRunner, kind: &str, name: &str) {
        f.ok(&["zfs", "list", "-H", "-t", kind, "-o", "name", name], &format!("{name}\n"));
    }

    #[tokio::test]
    async fn open_creates_a_missing_dataset_and_uses_its_mountpoint() {
        let f = FakeRunner::new();
        f.fail(&["zfs", "list"], "dataset does not exist");
        f.ok(&["zfs", "get"], "/tank/vdc\n");
        let b = ZfsBackend::open_mode(DS, f.clone(), false).await.unwrap();
        assert_eq!(
            f.lines(),
            ["zfs list -H -o name tank/vdc", "zfs create -p tank/vdc", "zfs get -H -o value mountpoint tank/vdc"]
        );
        assert_eq!(b.lun_path(&vol("vol-a")), Path::new("/tank/vdc/vol-a/disk.img"));
    }

    #[tokio::test]
    async fn open_refuses_bad_names_and_an_unmounted_dataset() {
        let f = FakeRunner::new();
        for bad in ["", "/tank/vdc", "tank/vdc@s", "tank/my vdc"] {
            let e = ZfsBackend::open_mode(bad, f.clone(), true).await.err().expect("refused");
            assert!(matches!(e, BackendError::Invalid(_)), "{bad:?}: {e}");
        }
        assert!(f.calls().is_empty(), "a bad name runs nothing: {:?}", f.lines());
        f.ok(&["zfs", "get"], "legacy\n");
        let e = ZfsBackend::open_mode(DS, f.clone(), false).await.err().expect("refused");
        assert!(e.to_string().contains("has mountpoint legacy"), "{e}");
        // With zvols the mountpoint does not matter.
        f.clear();
        let b = ZfsBackend::open_mode(DS, f.clone(), true).await.unwrap();
        assert_eq!(f.lines(), ["zfs list -H -o name tank/vdc"]);
        assert_eq!(b.lun_path(&vol("vol-a")), Path::new("/dev/zvol/tank/vdc/vol-a"));
    }

    #[tokio::test]
    async fn a_volume_is_a_zvol_of_the_size_asked_for() {
        let (f, b) = backend(None).await;
        b.create(&vol("vol-a"), 64).await.unwrap();
        assert_eq!(f.lines(), ["zfs list -H -t all -o name tank/vdc/vol-a", "zfs create -V 64M tank/vdc/vol-a"]);
    }

    #[tokio::test]
    async fn without_zvols_a_volume_is_a_dataset_holding_a_sparse_raw_file() {
        let mp = tempfile::tempdir().unwrap();
        let (f, b) = backend(Some(mp.path())).await;
        // What zfs does: mount the new dataset under the parent's mountpoint.
        let root = mp.path().to_owned();
        f.answer(&["zfs", "create"], move |c| {
            let argv = &c.argv;
            let name = argv.last().unwrap().rsplit('/').next().unwrap().to_owned();
            std::fs::create_dir(root.join(name)).map(|_| String::new()).map_err(|e| e.to_string())
        });
        b.create(&vol("vol-a"), 64).await.unwrap();
        assert_eq!(f.lines(), ["zfs list -H -t all -o name tank/vdc/vol-a", "zfs create tank/vdc/vol-a"]);
        let disk = mp.path().join("vol-a/disk.img");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 64 << 20);
        assert_eq!(b.size_mib(&vol("vol-a")).await.unwrap(), 64);
    }

    #[tokio::test]
    async fn a_dataset_left_by_a_crashed_create_is_destroyed_first() {
        let (f, b) = backend(None).await;
        exists(&f, "all", "tank/vdc/vol-a");
        b.create(&vol("vol-a"), 8).await.unwrap();
        assert_eq!(
            f.lines(),
            [
                "zfs list -H -t all -o name tank/vdc/vol-a",
                "zfs destroy -r tank/vdc/vol-a",
                "zfs create -V 8M tank/vdc/vol-a"
            ]
        );
    }

    #[tokio::test]
    async fn a_volume_from_a_snapshot_is_sent_and_received_not_cloned() {
        let (f, b) = backend(None).await;
        exists(&f, "snapshot", "tank/vdc/vol-a@snap-1");
        b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-1")).await.unwrap();
        let calls = f.calls();
        assert_eq!(
            calls[2].argv,
            ["bash", "-o", "pipefail", "-c", "zfs send 'tank/vdc/vol-a@snap-1' | zfs receive 'tank/vdc/vol-b'"]
        );
        assert_eq!(
            f.lines(),
            [
                "zfs list -H -t snapshot -o name tank/vdc/vol-a@snap-1",
                "zfs list -H -t all -o name tank/vdc/vol-b",
                &calls[2].argv.join(" "),
                // The copy's own copy of the snapshot is not one of ours.
                "zfs destroy tank/vdc/vol-b@snap-1",
            ]
        );
        assert!(!f.lines().iter().any(|l| l.contains("clone")));
    }

    #[tokio::test]
    async fn a_snapshots_data_is_read_under_the_hidden_zfs_directory() {
        let mp = tempfile::tempdir().unwrap();
        let (f, b) = backend(Some(mp.path())).await;
        let e = b.snapshot_data(&vol("vol-a"), &snap("snap-1")).await.unwrap_err();
        assert!(matches!(e, BackendError::NoSnapshot(_)), "{e}");
        exists(&f, "snapshot", "tank/vdc/vol-a@snap-1");
        let data = mp.path().join("vol-a/.zfs/snapshot/snap-1/disk.img");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, b"x").unwrap();
        assert_eq!(b.snapshot_data(&vol("vol-a"), &snap("snap-1")).await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_volume_from_a_missing_snapshot_is_refused_before_anything_is_made() {
        let (f, b) = backend(None).await;
        let e = b.create_from_snapshot(&vol("vol-b"), &vol("vol-a"), &snap("snap-9")).await.unwrap_err();
        assert!(matches!(e, BackendError::NoSnapshot(ref s) if s.as_str() == "snap-9"), "{e}");
        assert_eq!(f.lines(), ["zfs list -H -t snapshot -o name tank/vdc/vol-a@snap-9"]);
    }

    #[tokio::test]
    async fn a_zvol_grows_and_never_shrinks() {
        let (f, b) = backend(None).await;
        f.ok(&["zfs", "get", "-Hp", "-o", "value", "volsize"], "67108864\n");
        b.grow(&vol("vol-a"), 32).await.unwrap();
        b.grow(&vol("vol-a"), 64).await.unwrap();
        assert!(!f.lines().iter().any(|l| l.starts_with("zfs set")), "{:?}", f.lines());
        b.grow(&vol("vol-a"), 128).await.unwrap();
        assert_eq!(f.lines().last().unwrap(), "zfs set volsize=128M tank/vdc/vol-a");
        f.ok(&["zfs", "get", "-Hp", "-o", "value", "volsize"], "lots\n");
        assert!(matches!(b.size_mib(&vol("vol-a")).await, Err(BackendError::Invalid(_))));
    }

    #[tokio::test]
    async fn delete_waits_out_a_busy_dataset_and_stops_at_other_errors() {
        let (f, b) = backend(None).await;
        // Busy once (FUSE delivers the close late), then destroyed.
        exists(&f, "all", "tank/vdc/vol-a");
        f.fail(&["zfs", "destroy"], "cannot destroy 'tank/vdc/vol-a': dataset is busy").ok(&["zfs", "destroy"], "");
        b.delete(&vol("vol-a")).await.unwrap();
        let list = "zfs list -H -t all -o name tank/vdc/vol-a";
        let destroy = "zfs destroy -r tank/vdc/vol-a";
        assert_eq!(f.lines(), [list, destroy, list, destroy]);

        // Absent: nothing to do.
        f.fail(&["zfs", "list", "-H", "-t", "all", "-o", "name", "tank/vdc/vol-a"], "dataset does not exist");
        f.clear();
        b.delete(&vol("vol-a")).await.unwrap();
        assert_eq!(f.lines(), [list]);

        // Another failure is not retried, and names the command.
        exists(&f, "all", "tank/vdc/vol-b");
        f.fail(&["zfs", "destroy", "-r", "tank/vdc/vol-b"], "permission denied");
        f.clear();
        let e = b.delete(&vol("vol-b")).await.unwrap_err();
        assert_eq!(e.to_string(), "`zfs destroy -r tank/vdc/vol-b` failed: permission denied");
        assert_eq!(f.lines().iter().filter(|l| l.starts_with("zfs destroy")).count(), 1);
    }

    #[tokio::test]
    async fn snapshots_are_taken_and_destroyed_once() {
        let (f, b) = backend(None).await;
        let (v, s) = (vol("vol-a"), snap("snap-1"));
        b.snapshot(&v, &s).await.unwrap();
        b.delete_snapshot(&v, &s).await.unwrap();
        assert!(!b.snapshot_exists(&v, &s).await);
        let list = "zfs list -H -t snapshot -o name tank/vdc/vol-a@snap-1";
        assert_eq!(f.lines(), [list, "zfs snapshot tank/vdc/vol-a@snap-1", list, list]);
        f.clear();
        exists(&f, "snapshot", "tank/vdc/vol-a@snap-1");
        b.snapshot(&v, &s).await.unwrap();
        b.delete_snapshot(&v, &s).await.unwrap();
        assert_eq!(f.lines(), [list, list, "zfs destroy tank/vdc/vol-a@snap-1"]);
    }

    #[tokio::test]
    async fn capacity_is_available_plus_used() {
        let (f, b) = backend(None).await;
        f.ok(&["zfs", "get", "-Hp", "-o", "value", "available,used"], "1048576000\n52428800\n");
        assert_eq!(b.capacity().await.unwrap(), (1050, 50));
        assert_eq!(f.lines(), ["zfs get -Hp -o value available,used tank/vdc"]);
        f.ok(&["zfs", "get", "-Hp", "-o", "value", "available,used"], "-\n");
        assert!(matches!(b.capacity().await, Err(BackendError::Invalid(_))));
    }

    #[tokio::test]
    async fn a_failed_command_reaches_the_caller_with_its_command_line() {
        let (f, b) = backend(None).await;
        f.fail(&["zfs", "create"], "out of space");
        let e = b.create(&vol("vol-a"), 64).await.unwrap_err();
        assert!(matches!(e, BackendError::Cmd(CmdError::Failed { .. })));
        assert_eq!(e.to_string(), "`zfs create -V 64M tank/vdc/vol-a` failed: out of space");
    }
}
