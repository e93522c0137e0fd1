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
}

impl ZfsBackend {
    pub async fn open(dataset: &str) -> Result<Self> {
        if dataset.is_empty() || dataset.starts_with('/') || dataset.contains(['@', ' ', '\'']) {
            return Err(BackendError::Invalid(format!("{dataset:?} is not a ZFS dataset name (e.g. tank/vdc)")));
        }
        if cmd::run("zfs", &["list", "-H", "-o", "name", dataset]).await.is_err() {
            cmd::run("zfs", &["create", "-p", dataset]).await?;
        }
        let zvols = Path::new("/sys/module/zfs").exists();
        let mountpoint = if zvols {
            None
        } else {
            let mp = cmd::run("zfs", &["get", "-H", "-o", "value", "mountpoint", dataset]).await?;
            let mp = mp.trim();
            if !mp.starts_with('/') {
                return Err(BackendError::Invalid(format!(
                    "dataset {dataset} has mountpoint {mp}; without zvols each volume is a file on a mounted dataset"
                )));
            }
            Some(PathBuf::from(mp))
        };
        Ok(ZfsBackend { dataset: dataset.to_owned(), mountpoint })
    }

    fn ds(&self, id: &VolumeId) -> String {
        format!("{}/{id}", self.dataset)
    }

    async fn has(&self, name: &str, kind: &str) -> bool {
        cmd::run("zfs", &["list", "-H", "-t", kind, "-o", "name", name]).await.is_ok()
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
        let v = cmd::run("zfs", &["get", "-Hp", "-o", "value", "volsize", &self.ds(id)]).await?;
        v.trim().parse::<u64>().map(|b| b >> 20).map_err(|e| BackendError::Invalid(format!("volsize {v:?}: {e}")))
    }

    async fn create(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        let ds = self.ds(id);
        if self.has(&ds, "all").await {
            // Left by a create that crashed before its disk existed.
            cmd::run("zfs", &["destroy", "-r", &ds]).await?;
        }
        if self.mountpoint.is_none() {
            cmd::run("zfs", &["create", "-V", &format!("{size_mib}M"), &ds]).await?;
            return Ok(());
        }
        cmd::run("zfs", &["create", &ds]).await?;
        create_file(&self.lun_path(id), size_mib).await
    }

    async fn create_from_snapshot(&self, id: &VolumeId, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let origin = format!("{}@{snap}", self.ds(volume));
        if !self.has(&origin, "snapshot").await {
            return Err(BackendError::NoSnapshot(snap.clone()));
        }
        let ds = self.ds(id);
        if self.has(&ds, "all").await {
            cmd::run("zfs", &["destroy", "-r", &ds]).await?;
        }
        cmd::pipeline(&format!("zfs send {} | zfs receive {}", quote(&origin), quote(&ds))).await?;
        // The copy arrives with the snapshot it was sent from; it is not one of ours.
        cmd::run("zfs", &["destroy", &format!("{ds}@{snap}")]).await?;
        Ok(())
    }

    async fn grow(&self, id: &VolumeId, size_mib: u64) -> Result<()> {
        if self.mountpoint.is_some() {
            return grow_file(&self.lun_path(id), size_mib).await;
        }
        if self.size_mib(id).await? < size_mib {
            cmd::run("zfs", &["set", &format!("volsize={size_mib}M"), &self.ds(id)]).await?;
        }
        Ok(())
    }

    async fn delete(&self, id: &VolumeId) -> Result<()> {
        let ds = self.ds(id);
        // Right after tgtd lets go of the file the dataset can still be busy: FUSE
        // delivers the close to zfs-fuse asynchronously. Give it a few seconds.
        let mut tries = 0;
        while self.has(&ds, "all").await {
            match cmd::run("zfs", &["destroy", "-r", &ds]).await {
                Ok(_) => break,
                Err(CmdError::Failed { stderr, .. }) if stderr.contains("busy") && tries < 50 => {
                    tries += 1;
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
            cmd::run("zfs", &["snapshot", &name]).await?;
        }
        Ok(())
    }

    async fn snapshot_exists(&self, volume: &VolumeId, snap: &SnapshotId) -> bool {
        self.has(&format!("{}@{snap}", self.ds(volume)), "snapshot").await
    }

    async fn delete_snapshot(&self, volume: &VolumeId, snap: &SnapshotId) -> Result<()> {
        let name = format!("{}@{snap}", self.ds(volume));
        if self.has(&name, "snapshot").await {
            cmd::run("zfs", &["destroy", &name]).await?;
        }
        Ok(())
    }

    async fn capacity(&self) -> Result<(u64, u64)> {
        let out = cmd::run("zfs", &["get", "-Hp", "-o", "value", "available,used", &self.dataset]).await?;
        let v: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        match v[..] {
            [avail, used] => Ok(((avail + used) >> 20, used >> 20)),
            _ => Err(BackendError::Invalid(format!("unexpected `zfs get` output {out:?}"))),
        }
    }
}
