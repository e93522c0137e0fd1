//! The real storage agent: volumes on a [`Backend`], exported over iSCSI by tgtd, or
//! handed to a hypervisor on the same machine as a local path.
//!
//! ```text
//!  ensure_volume(spec) ─► per-volume lock ─► create (empty | from snapshot | from image)
//!      ─► grow to spec.size_mib ─► export to spec.export_to (iSCSI | local | none) ─► report
//! ```
//! What sta was asked for is kept in `state.json` beside the journal; the blocks live only
//! in the backend. A report always describes the backend as it is after acting.

use crate::backend::{Backend, BackendError};
use crate::cmd;
use crate::tgt::Tgt;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, StorageAgent};
use vdc_schema::bus::{
    initiator_iqn, ObjectReport, SnapshotReport, SnapshotSpec, VolumeReport, VolumeSpec, VolumeTarget,
};
use vdc_schema::id::{HostNodeId, SnapshotId, VolumeId};
use vdc_schema::{ImageFormat, ObservedStorage};

#[derive(Default, Serialize, Deserialize)]
struct State {
    volumes: HashMap<VolumeId, VolumeSpec>,
    /// snapshot → (its volume, size in MiB)
    snapshots: HashMap<SnapshotId, (VolumeId, u64)>,
}

pub struct RealStorage {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    tgt: Option<Tgt>,
    /// The hypervisor host on this machine: its volumes are attached as local files.
    local_host: Option<HostNodeId>,
    sink: ReportSink,
    file: PathBuf,
    state: Mutex<State>,
    locks: Mutex<HashMap<VolumeId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Why an ensure did not converge.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The request cannot be met as given: the volume is reported failed.
    #[error("{0}")]
    Permanent(String),
    /// A tool or daemon failed: logged, and retried on dcmgr's next ensure.
    #[error("{0}")]
    Transient(String),
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NoSnapshot(_) | BackendError::Invalid(_) => Failure::Permanent(e.to_string()),
            _ => Failure::Transient(e.to_string()),
        }
    }
}

impl Inner {
    fn lock(&self, id: &VolumeId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap().entry(id.clone()).or_default().clone()
    }

    fn save(&self) {
        let bytes = serde_json::to_vec(&*self.state.lock().unwrap()).unwrap_or_default();
        let tmp = self.file.with_extension("tmp");
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &self.file));
        if let Err(e) = ok {
            tracing::error!("cannot save {}: {e}", self.file.display());
        }
    }

    fn report_volume(&self, spec: &VolumeSpec, state: ObservedStorage, size_mib: u64, target: Option<VolumeTarget>) {
        self.sink.report(ObjectReport::Volume(VolumeReport {
            id: spec.id.clone(),
            spec_gen: spec.spec_gen,
            state,
            size_mib,
            target,
            reason: None,
        }));
    }

    fn report_failed(&self, spec: &VolumeSpec, why: String) {
        tracing::warn!(volume = %spec.id, "volume failed: {why}");
        self.sink.report(ObjectReport::Volume(VolumeReport {
            id: spec.id.clone(),
            spec_gen: spec.spec_gen,
            state: ObservedStorage::Failed,
            size_mib: 0,
            target: None,
            reason: Some(why),
        }));
    }

    fn local_target(&self, spec: &VolumeSpec) -> Option<VolumeTarget> {
        match (&spec.export_to, &self.local_host) {
            (Some(h), Some(l)) if h == l => {
                Some(VolumeTarget::Local { path: self.backend.lun_path(&spec.id).to_string_lossy().into_owned() })
            }
            _ => None,
        }
    }

    async fn fill_from_image(&self, spec: &VolumeSpec) -> Result<(), Failure> {
        let Some(img) = &spec.source_image else { return Ok(()) };
        let format = match img.format {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            f => {
                return Err(Failure::Permanent(format!("image {} is a {f} image; a volume needs qcow2 or raw", img.id)))
            }
        };
        let src = img.source.strip_prefix("file://").unwrap_or(&img.source);
        if !(src.starts_with('/') || src.starts_with("http://") || src.starts_with("https://")) {
            return Err(Failure::Permanent(format!(
                "image {} has source {}; a storage node reads absolute paths and http(s) URLs",
                img.id, img.source
            )));
        }
        let info = cmd::run("qemu-img", &["info", "--output=json", "-f", format, src])
            .await
            .map_err(|e| Failure::Permanent(format!("cannot read image {}: {e}", img.id)))?;
        let vsize = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v["virtual-size"].as_u64())
            .unwrap_or(u64::MAX);
        if vsize > spec.size_mib << 20 {
            return Err(Failure::Permanent(format!(
                "image {} is {} MiB, larger than the volume ({} MiB)",
                img.id,
                vsize.div_ceil(1 << 20),
                spec.size_mib
            )));
        }
        let lun = self.backend.lun_path(&spec.id);
        cmd::run("qemu-img", &["convert", "-n", "-f", format, "-O", "raw", src, &lun.to_string_lossy()])
            .await
            .map_err(|e| Failure::Transient(format!("copying image {}: {e}", img.id)))?;
        Ok(())
    }

    async fn create(&self, spec: &VolumeSpec) -> Result<(), Failure> {
        let id = &spec.id;
        match &spec.source_snapshot {
            Some(snap) => {
                let origin = self.state.lock().unwrap().snapshots.get(snap).map(|s| s.0.clone());
                let Some(origin) = origin else {
                    return Err(Failure::Permanent(format!("snapshot {snap} is not on this storage node")));
                };
                self.backend.create_from_snapshot(id, &origin, snap).await?;
            }
            None => self.backend.create(id, spec.size_mib).await?,
        }
        if let Err(e) = self.fill_from_image(spec).await {
            // Nothing half-made stays behind.
            let _ = self.backend.delete(id).await;
            return Err(e);
        }
        Ok(())
    }

    async fn converge_volume(&self, spec: VolumeSpec) -> Result<(), Failure> {
        let id = spec.id.clone();
        if self.state.lock().unwrap().volumes.get(&id).is_some_and(|v| v.spec_gen > spec.spec_gen) {
            return Ok(());
        }
        let created = !self.backend.exists(&id).await;
        if created {
            self.create(&spec).await?;
        }
        let size = self.backend.size_mib(&id).await?;
        let grown = size < spec.size_mib;
        if grown {
            self.backend.grow(&id, spec.size_mib).await?;
        }
        let target = match (&spec.export_to, self.local_target(&spec)) {
            (None, _) | (Some(_), Some(_)) => {
                if let Some(t) = &self.tgt {
                    t.unexport(&id).await.map_err(|e| Failure::Transient(e.to_string()))?;
                }
                self.local_target(&spec)
            }
            (Some(host), None) => {
                let Some(t) = &self.tgt else {
                    return Err(Failure::Permanent(format!(
                        "this storage node has no iSCSI target and host {host} is not local"
                    )));
                };
                if grown {
                    // tgt reads a LUN's size once: export it afresh.
                    t.unexport(&id).await.map_err(|e| Failure::Transient(e.to_string()))?;
                }
                let lun = self.backend.lun_path(&id);
                Some(t.export(&id, &lun, &initiator_iqn(host)).await.map_err(|e| Failure::Transient(e.to_string()))?)
            }
        };
        self.state.lock().unwrap().volumes.insert(id.clone(), spec.clone());
        self.save();
        let size = self.backend.size_mib(&id).await?;
        tracing::info!(volume = %id, created, grown, size_mib = size, "volume converged");
        self.report_volume(&spec, ObservedStorage::Available, size, target);
        Ok(())
    }

    async fn remove_volume(&self, id: &VolumeId, spec_gen: u64) -> Result<(), Failure> {
        if let Some(t) = &self.tgt {
            t.unexport(id).await.map_err(|e| Failure::Transient(e.to_string()))?;
        }
        self.backend.delete(id).await?;
        let old = self.state.lock().unwrap().volumes.remove(id);
        self.save();
        let spec = old.unwrap_or(VolumeSpec {
            id: id.clone(),
            spec_gen,
            size_mib: 0,
            source_snapshot: None,
            source_image: None,
            export_to: None,
        });
        self.report_volume(
            &VolumeSpec { spec_gen: spec.spec_gen.max(spec_gen), ..spec },
            ObservedStorage::Absent,
            0,
            None,
        );
        Ok(())
    }

    fn report_snapshot(&self, id: SnapshotId, state: ObservedStorage, size_mib: u64, reason: Option<String>) {
        self.sink.report(ObjectReport::Snapshot(SnapshotReport { id, state, size_mib, reason }));
    }

    async fn converge_snapshot(&self, spec: SnapshotSpec) -> Result<(), Failure> {
        let (id, vol) = (spec.id, spec.volume_id);
        if !self.backend.exists(&vol).await {
            let why = format!("volume {vol} is not on this storage node");
            self.report_snapshot(id, ObservedStorage::Failed, 0, Some(why));
            return Ok(());
        }
        if !self.backend.snapshot_exists(&vol, &id).await {
            self.backend.snapshot(&vol, &id).await?;
        }
        let size = self.backend.size_mib(&vol).await?;
        self.state.lock().unwrap().snapshots.insert(id.clone(), (vol, size));
        self.save();
        self.report_snapshot(id, ObservedStorage::Available, size, None);
        Ok(())
    }

    async fn report_all(&self) {
        let (vols, snaps): (Vec<VolumeSpec>, Vec<(SnapshotId, VolumeId, u64)>) = {
            let st = self.state.lock().unwrap();
            (
                st.volumes.values().cloned().collect(),
                st.snapshots.iter().map(|(k, v)| (k.clone(), v.0.clone(), v.1)).collect(),
            )
        };
        let exported = match &self.tgt {
            Some(t) => t.exported().await.unwrap_or_default(),
            None => vec![],
        };
        for v in vols {
            if !self.backend.exists(&v.id).await {
                self.report_failed(&v, format!("the data of volume {} is gone from this storage node", v.id));
                continue;
            }
            let size = self.backend.size_mib(&v.id).await.unwrap_or(v.size_mib);
            let iqn = vdc_schema::bus::target_iqn(&v.id);
            let target = self.local_target(&v).or_else(|| {
                let t = self.tgt.as_ref()?;
                (v.export_to.is_some() && exported.contains(&iqn)).then(|| VolumeTarget::Iscsi {
                    portal: t.portal.clone(),
                    iqn,
                    lun: 1,
                })
            });
            self.report_volume(&v, ObservedStorage::Available, size, target);
        }
        for (id, vol, size) in snaps {
            if self.backend.snapshot_exists(&vol, &id).await {
                self.report_snapshot(id, ObservedStorage::Available, size, None);
            } else {
                self.report_snapshot(
                    id,
                    ObservedStorage::Failed,
                    0,
                    Some("the snapshot is gone from this storage node".into()),
                );
            }
        }
    }
}

impl RealStorage {
    pub fn new(
        backend: Arc<dyn Backend>,
        tgt: Option<Tgt>,
        local_host: Option<HostNodeId>,
        sink: ReportSink,
        state_file: PathBuf,
    ) -> Self {
        let state = std::fs::read(&state_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        RealStorage {
            inner: Arc::new(Inner {
                backend,
                tgt,
                local_host,
                sink,
                file: state_file,
                state: Mutex::new(state),
                locks: Default::default(),
            }),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Runs `work` under the volume's lock, off the command loop: a copy of many GiB
    /// must not hold up other volumes.
    fn spawn<F, Fut>(&self, vol: VolumeId, what: &'static str, work: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), Failure>> + Send,
    {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let lock = inner.lock(&vol);
            let _g = lock.lock().await;
            match work(inner.clone()).await {
                Ok(()) => {}
                Err(Failure::Transient(e)) => {
                    tracing::warn!(volume = %vol, "{what} failed, retried on the next ensure: {e}")
                }
                Err(Failure::Permanent(e)) => tracing::warn!(volume = %vol, "{what} refused: {e}"),
            }
        });
    }
}

#[async_trait]
impl StorageAgent for RealStorage {
    async fn ensure_volume(&self, spec: VolumeSpec) -> Result<(), AgentError> {
        if spec.size_mib == 0 {
            return Err(AgentError::Invalid(format!("volume {} has size 0", spec.id)));
        }
        self.spawn(spec.id.clone(), "ensure volume", move |inner| async move {
            let s = spec.clone();
            match inner.converge_volume(spec).await {
                Err(Failure::Permanent(why)) => {
                    inner.report_failed(&s, why.clone());
                    Err(Failure::Permanent(why))
                }
                r => r,
            }
        });
        Ok(())
    }

    async fn ensure_volume_absent(&self, id: VolumeId, spec_gen: u64) -> Result<(), AgentError> {
        let vid = id.clone();
        self.spawn(vid, "remove volume", move |inner| async move { inner.remove_volume(&id, spec_gen).await });
        Ok(())
    }

    async fn ensure_snapshot(&self, spec: SnapshotSpec) -> Result<(), AgentError> {
        self.spawn(spec.volume_id.clone(), "snapshot", move |inner| async move {
            let id = spec.id.clone();
            match inner.converge_snapshot(spec).await {
                Err(Failure::Permanent(why)) => {
                    inner.report_snapshot(id, ObservedStorage::Failed, 0, Some(why.clone()));
                    Err(Failure::Permanent(why))
                }
                r => r,
            }
        });
        Ok(())
    }

    async fn ensure_snapshot_absent(&self, id: SnapshotId, volume_id: VolumeId) -> Result<(), AgentError> {
        self.spawn(volume_id.clone(), "remove snapshot", move |inner| async move {
            inner.backend.delete_snapshot(&volume_id, &id).await?;
            inner.state.lock().unwrap().snapshots.remove(&id);
            inner.save();
            inner.report_snapshot(id, ObservedStorage::Absent, 0, None);
            Ok(())
        });
        Ok(())
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        self.inner.report_all().await;
        Ok(())
    }
}
