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
use crate::cmd::{self, Runner};
use crate::tgt::Tgt;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, StorageAgent};
use vdc_schema::bus::{
    initiator_iqn, ObjectReport, SnapshotImageSpec, SnapshotReport, SnapshotSpec, VolumeReport, VolumeSpec,
    VolumeTarget,
};
use vdc_schema::id::{HostNodeId, ImageId, SnapshotId, VolumeId};
use vdc_schema::{ImageFormat, ObservedStorage};

#[derive(Default, Serialize, Deserialize)]
struct State {
    volumes: HashMap<VolumeId, VolumeSpec>,
    /// snapshot → (its volume, size in MiB)
    snapshots: HashMap<SnapshotId, (VolumeId, u64)>,
    /// Volumes being made (created, then filled from an image or a snapshot). One found
    /// here at the next ensure was cut short (sta stopped mid-copy) and is made again;
    /// without it, a half-copied volume would have been taken as whole.
    #[serde(default)]
    making: std::collections::HashSet<VolumeId>,
}

pub struct RealStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Runs qemu-img (the backend and tgt hold their own runner).
    tools: Runner,
    backend: Arc<dyn Backend>,
    tgt: Option<Tgt>,
    /// The hypervisor host on this machine: its volumes are attached as local files.
    local_host: Option<HostNodeId>,
    sink: ReportSink,
    file: PathBuf,
    state: Mutex<State>,
    locks: Mutex<HashMap<VolumeId, Arc<tokio::sync::Mutex<()>>>>,
    /// Images being sent from snapshots now: a re-sent command while one runs is dropped.
    uploading: Mutex<std::collections::HashSet<ImageId>>,
    /// The most the image cache keeps ([`RealStorage::with_image_cache_max`]).
    cache_max: Option<u64>,
    /// Held (shared) from an image's fetch into the cache to the end of its copy into a
    /// volume, and (exclusively) while the cache is pruned.
    cache_use: tokio::sync::RwLock<()>,
    /// Volume work and uploads under way, for [`StorageAgent::drain`].
    work: tokio_util::task::TaskTracker,
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

/// Why an image's data was not sent.
#[derive(Debug)]
enum SendFailure {
    /// Before the upload: this node could not read or convert the snapshot.
    Here(String),
    Upload(vdc_bus::blob::UploadError),
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
        if let Err(e) = self.try_save() {
            tracing::error!("cannot save {}: {e}", self.file.display());
        }
    }

    fn try_save(&self) -> std::io::Result<()> {
        // Written under the lock it is read under, as hva saves: two saves at once (two
        // volumes made at once, as an import does) shared the temporary file, so one
        // failed ("cannot save …: No such file") and an older state could replace a newer
        // one, a volume then forgotten at the next start.
        let state = self.state.lock().unwrap();
        let bytes = serde_json::to_vec(&*state).unwrap_or_default();
        let tmp = self.file.with_extension("tmp");
        std::fs::File::create(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &self.file))
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
        let started = std::time::Instant::now();
        let cache = self.file.parent().unwrap_or(std::path::Path::new(".")).join("images");
        // A raw image not in the cache goes straight into the new volume: a copy through
        // the cache cost as much again (a bundle's 256 MiB volume: fetched in 0.23-0.38 s,
        // then copied in 0.22-0.30 s). The cache keeps what instances' disks reuse.
        // (Holes are left where the image has zeros: only a new volume holds zeros.)
        let fresh = spec.source_snapshot.is_none();
        if let Some(blob) = img.blob.as_ref().filter(|b| fresh && format == "raw" && !cache.join(&b.sha256).exists()) {
            if blob.size > spec.size_mib << 20 {
                return Err(Failure::Permanent(format!(
                    "image {} is {} MiB, larger than the volume ({} MiB)",
                    img.id,
                    blob.size.div_ceil(1 << 20),
                    spec.size_mib
                )));
            }
            let lun = self.backend.lun_path(&spec.id);
            vdc_bus::blob::fetch_into(blob, &lun).await.map_err(|e| blob_failure(&img.id, e))?;
            tracing::info!(volume = %spec.id, image = %img.id, streamed_in = ?started.elapsed(),
                "volume filled from its image, streamed into it");
            return Ok(());
        }
        // Data in dcmgr's store is fetched into this node's cache (beside its state file).
        let using = self.cache_use.read().await;
        let fetched = match &img.blob {
            Some(blob) => {
                let (p, fetched) = vdc_bus::blob::fetch(blob, &cache).await.map_err(|e| blob_failure(&img.id, e))?;
                if !fetched {
                    vdc_bus::blob::touch(&p);
                }
                Some(p.to_string_lossy().into_owned())
            }
            None => None,
        };
        let src = match &fetched {
            Some(p) => p.as_str(),
            None => img.source.strip_prefix("file://").unwrap_or(&img.source),
        };
        if !src.starts_with('/') {
            return Err(Failure::Permanent(format!(
                "image {} has source {}; a storage node reads absolute paths and dcmgr's image store",
                img.id, img.source
            )));
        }
        let info = self
            .tools
            .run("qemu-img", &["info", "--output=json", "-f", format, src])
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
        let fetched_in = started.elapsed();
        let lun = self.backend.lun_path(&spec.id);
        let mut args = vec!["convert", "-n"];
        // Around the page cache where both file systems take O_DIRECT: through it, a
        // 256 MiB raw image into a volume took 5.9 s here (3.5 s of it in the kernel),
        // with `-T none -t none` 1.0 s (qemu-img 8, 2026-12-02). The image in the cache
        // was written with O_DIRECT (vdc_bus::fileio), so it is not in the page cache.
        if takes_direct(Path::new(src), false) && takes_direct(&lun, true) {
            args.extend(["-T", "none", "-t", "none"]);
        }
        let lun = lun.to_string_lossy();
        args.extend(["-f", format, "-O", "raw", src, &lun]);
        self.tools
            .run("qemu-img", &args)
            .await
            .map_err(|e| Failure::Transient(format!("copying image {}: {e}", img.id)))?;
        tracing::info!(volume = %spec.id, image = %img.id, ?fetched_in, copied_in = ?(started.elapsed() - fetched_in),
            "volume filled from its image");
        drop(using);
        if let Some(max) = self.cache_max {
            let _pruning = self.cache_use.write().await;
            for p in vdc_bus::blob::prune_cache(&cache, max, &Default::default()) {
                tracing::info!(image = %p.display(), "pruned from the image cache");
            }
        }
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
        let exists = self.backend.exists(&id).await;
        let cut_short = self.state.lock().unwrap().making.contains(&id);
        if exists && cut_short {
            tracing::warn!(volume = %id, "the volume's making was cut short: made again");
            self.backend.delete(&id).await?;
        }
        let created = !exists || cut_short;
        if created {
            self.state.lock().unwrap().making.insert(id.clone());
            self.save();
            self.create(&spec).await?;
            self.state.lock().unwrap().making.remove(&id);
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
        self.state.lock().unwrap().making.remove(id);
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
            // A snapshot is one point in time: once made here, its data lost is a failure,
            // never made again from the volume as it is now (a re-sent ensure did that,
            // and a capture of the lost snapshot got the volume's later bytes).
            if self.state.lock().unwrap().snapshots.contains_key(&id) {
                let why = "the snapshot is gone from this storage node".to_owned();
                self.report_snapshot(id, ObservedStorage::Failed, 0, Some(why));
                return Ok(());
            }
            self.backend.snapshot(&vol, &id).await?;
        }
        let size = self.backend.size_mib(&vol).await?;
        self.state.lock().unwrap().snapshots.insert(id.clone(), (vol, size));
        self.save();
        self.report_snapshot(id, ObservedStorage::Available, size, None);
        Ok(())
    }

    /// Sends a snapshot's blocks as an image's data: the raw blocks as they are, or a
    /// qcow2 converted beside the state file (`-f raw`: a tenant's bytes are never
    /// probed for a format on this host). dcmgr checks them like any upload. Raw blocks
    /// that begin with an image format's header go as qcow2 too: sent raw, they would be
    /// taken for that image (or refused), not for the volume's bytes.
    async fn image_from_snapshot(&self, spec: &SnapshotImageSpec) -> Result<(), SendFailure> {
        use SendFailure::Here;
        let data =
            self.backend.snapshot_data(&spec.volume_id, &spec.snapshot_id).await.map_err(|e| Here(e.to_string()))?;
        let format = match spec.format {
            ImageFormat::Raw
                if looks_like_an_image(&data).await.map_err(|e| Here(format!("{}: {e}", data.display())))? =>
            {
                ImageFormat::Qcow2
            }
            f => f,
        };
        let (file, scratch) = match format {
            ImageFormat::Raw => (data, None),
            ImageFormat::Qcow2 => {
                let dir = self.file.parent().unwrap_or(std::path::Path::new(".")).join("captures");
                tokio::fs::create_dir_all(&dir).await.map_err(|e| Here(format!("{}: {e}", dir.display())))?;
                let out = dir.join(format!("{}.qcow2", spec.upload.image_id));
                let _ = tokio::fs::remove_file(&out).await;
                let (from, to) = (data.to_string_lossy(), out.to_string_lossy());
                if let Err(e) = self.tools.run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &from, &to]).await {
                    let _ = tokio::fs::remove_file(&out).await;
                    return Err(Here(format!("converting snapshot {} to qcow2: {e}", spec.snapshot_id)));
                }
                (out.clone(), Some(out))
            }
            f => return Err(Here(format!("an image from a snapshot is raw or qcow2, not {f}"))),
        };
        let sent = vdc_bus::blob::upload(&spec.upload, &file).await.map_err(SendFailure::Upload);
        if let Some(p) = scratch {
            let _ = tokio::fs::remove_file(p).await;
        }
        sent
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
        Self::with_runner(cmd::system(), backend, tgt, local_host, sink, state_file)
    }

    /// [`RealStorage::new`] with the given way of running qemu-img.
    pub fn with_runner(
        tools: Runner,
        backend: Arc<dyn Backend>,
        tgt: Option<Tgt>,
        local_host: Option<HostNodeId>,
        sink: ReportSink,
        state_file: PathBuf,
    ) -> Self {
        let state = std::fs::read(&state_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        RealStorage {
            inner: Arc::new(Inner {
                tools,
                backend,
                tgt,
                local_host,
                sink,
                file: state_file,
                state: Mutex::new(state),
                locks: Default::default(),
                uploading: Default::default(),
                cache_max: None,
                cache_use: Default::default(),
                work: Default::default(),
            }),
        }
    }

    /// Keeps the cache of images made into volumes (`DATA_DIR/images`) to `max` bytes,
    /// least recently used removed first: without a cap every qcow2 image ever made into
    /// a volume stayed there.
    pub fn with_image_cache_max(mut self, max: Option<u64>) -> Self {
        Arc::get_mut(&mut self.inner).expect("set before the storage is shared").cache_max = max;
        self
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
        self.inner.work.spawn(async move {
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

    /// Not under the volume's lock: reading a snapshot needs none (dcmgr refuses its
    /// delete meanwhile), and an upload of many GiB must not hold up the volume.
    async fn image_from_snapshot(&self, spec: SnapshotImageSpec) -> Result<(), AgentError> {
        if !self.inner.uploading.lock().unwrap().insert(spec.upload.image_id.clone()) {
            return Ok(());
        }
        let inner = self.inner.clone();
        self.inner.work.spawn(async move {
            let outcome = match inner.image_from_snapshot(&spec).await {
                Ok(()) => Ok(()),
                // dcmgr has its answer (a refusal fails the image; a cut upload leaves it
                // pending, to be asked again).
                Err(SendFailure::Upload(e)) => Err(e.to_string()),
                // Nothing reached dcmgr: tell it why, so the image and its job fail.
                Err(SendFailure::Here(why)) => match vdc_bus::blob::capture_failed(&spec.upload, &why).await {
                    Ok(()) => Err(why),
                    Err(e) => Err(format!("{why}; and telling dcmgr: {e}")),
                },
            };
            match outcome {
                Ok(()) => tracing::info!(snapshot = %spec.snapshot_id, image = %spec.upload.image_id, "image sent"),
                Err(e) => tracing::warn!(snapshot = %spec.snapshot_id, image = %spec.upload.image_id, "image: {e}"),
            }
            inner.uploading.lock().unwrap().remove(&spec.upload.image_id);
        });
        Ok(())
    }

    async fn drain(&self) {
        self.inner.work.close();
        self.inner.work.wait().await;
    }
}

/// A failed fetch of an image's blob: the store's data itself wrong is for good (fetching
/// again cannot help), anything else is tried again.
fn blob_failure(image: &vdc_schema::id::ImageId, e: vdc_bus::blob::BlobError) -> Failure {
    match e {
        vdc_bus::blob::BlobError::Corrupt { .. } => Failure::Permanent(format!("image {image}: {e}")),
        e => Failure::Transient(format!("image {image}: {e}")),
    }
}

/// Whether the file at `path` opens with O_DIRECT (for writing with `write`): a file
/// system that does not take it refuses the open (EINVAL).
fn takes_direct(path: &Path, write: bool) -> bool {
    use rustix::fs::{Mode, OFlags};
    let access = if write { OFlags::WRONLY } else { OFlags::RDONLY };
    rustix::fs::open(path, access | OFlags::DIRECT | OFlags::CLOEXEC, Mode::empty()).is_ok()
}

/// Whether a volume's data begins with a disk image format's header.
async fn looks_like_an_image(path: &std::path::Path) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(vdc_schema::disk::HEAD);
    tokio::fs::File::open(path).await?.take(vdc_schema::disk::HEAD as u64).read_to_end(&mut head).await?;
    Ok(vdc_schema::disk::format_of(&head).is_some())
}

#[cfg(test)]
mod tests {
    //! The agent's decisions, on a backend and a tgt whose commands go to one fake, so
    //! the order of commands across both shows.

    use super::*;
    use crate::backend::{file::FileBackend, zfs::ZfsBackend};
    use crate::cmd::FakeRunner;
    use std::path::Path;
    use std::time::Duration;
    use vdc_schema::bus::{ImageSpec, VolumeReport};

    fn vol(s: &str) -> VolumeId {
        s.parse().unwrap()
    }

    fn spec(id: &str, gen: u64, size_mib: u64, to: Option<&str>) -> VolumeSpec {
        VolumeSpec {
            id: vol(id),
            spec_gen: gen,
            size_mib,
            source_snapshot: None,
            source_image: None,
            export_to: to.map(|h| h.parse().unwrap()),
        }
    }

    /// The report of `id` once one of at least `gen` arrives.
    async fn report(sink: &ReportSink, id: &str, gen: u64) -> VolumeReport {
        for _ in 0..1000 {
            if let Some(ObjectReport::Volume(v)) = sink.newest(id) {
                if v.spec_gen >= gen {
                    return v;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no report of {id} at generation {gen}");
    }

    /// Image `img-a` of `format` at `source`, with no data in dcmgr's store.
    fn image_spec(format: vdc_schema::ImageFormat, source: String) -> ImageSpec {
        ImageSpec::host_file("img-a".parse().unwrap(), format, source)
    }

    fn storage(f: &Arc<FakeRunner>, backend: Arc<dyn Backend>, dir: &Path) -> (RealStorage, ReportSink) {
        let sink = ReportSink::open(None).unwrap();
        let tgt = Tgt::with_runner(7, "192.0.2.10:3260".into(), f.clone());
        let sta = RealStorage::with_runner(f.clone(), backend, Some(tgt), None, sink.clone(), dir.join("state.json"));
        (sta, sink)
    }

    fn target(tid: u32, vol: &str, lun: &Path, acl: &str) -> String {
        format!(
            "Target {tid}: iqn.2026-11.io.vdc:{vol}\n    LUN information:\n        LUN: 1\n            Backing store path: {}\n    ACL information:\n        {acl}\n",
            lun.display()
        )
    }

    const SHOW: [&str; 9] = ["tgtadm", "-C", "7", "--lld", "iscsi", "--op", "show", "--mode", "target"];

    /// A snapshot whose data is lost is failed, not made again from the volume's data of
    /// now, also when its ensure comes again (a host test in CI captured the lost
    /// snapshot's "data" after a re-sent ensure had made it again).
    #[tokio::test]
    async fn a_lost_snapshot_is_failed_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(FileBackend::open_with(&dir.path().join("vols"), crate::cmd::system()).await.unwrap());
        backend.create(&vol("vol-s"), 1).await.unwrap();
        let (sta, sink) = storage(&f, backend.clone(), dir.path());
        let spec = SnapshotSpec { id: "snap-1".parse().unwrap(), volume_id: vol("vol-s") };
        let newest = |want: ObservedStorage| async move {
            for _ in 0..1000 {
                if let Some(ObjectReport::Snapshot(r)) = sink.newest("snap-1") {
                    if r.state == want {
                        return r;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("snap-1 never {want:?}: {:?}", sink.newest("snap-1"));
        };
        sta.ensure_snapshot(spec.clone()).await.unwrap();
        newest.clone()(ObservedStorage::Available).await;
        let data = backend.snapshot_data(&spec.volume_id, &spec.id).await.unwrap();
        std::fs::remove_file(&data).unwrap();
        sta.ensure_snapshot(spec.clone()).await.unwrap();
        let r = newest(ObservedStorage::Failed).await;
        assert!(r.reason.unwrap_or_default().contains("gone"));
        assert!(!data.exists(), "not made again");
    }

    #[tokio::test]
    async fn a_volume_is_unexported_before_it_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(ZfsBackend::open_mode("tank/vdc", f.clone(), true).await.unwrap());
        f.ok(&SHOW, &target(1, "vol-a", Path::new("/dev/zvol/tank/vdc/vol-a"), "iqn.2026-11.io.vdc:hn-a"));
        f.ok(&["zfs", "list", "-H", "-t", "all"], "tank/vdc/vol-a\n");
        f.clear();
        let (sta, sink) = storage(&f, backend, dir.path());
        sta.ensure_volume_absent(vol("vol-a"), 4).await.unwrap();
        let r = report(&sink, "vol-a", 4).await;
        assert_eq!((r.state, r.target), (ObservedStorage::Absent, None));
        assert_eq!(
            f.lines(),
            [
                SHOW.join(" ").as_str(),
                "tgtadm -C 7 --lld iscsi --op delete --mode target --tid 1 --force",
                "zfs list -H -t all -o name tank/vdc/vol-a",
                "zfs destroy -r tank/vdc/vol-a",
            ]
        );
    }

    #[tokio::test]
    async fn a_volume_is_not_destroyed_while_its_export_cannot_be_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(ZfsBackend::open_mode("tank/vdc", f.clone(), true).await.unwrap());
        f.fail(&SHOW, "tgtadm: can't connect to the tgt daemon");
        f.clear();
        let (sta, sink) = storage(&f, backend, dir.path());
        sta.ensure_volume_absent(vol("vol-a"), 4).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(sink.newest("vol-a").is_none(), "no report: retried on the next ensure");
        assert_eq!(f.lines(), [SHOW.join(" ")]);
    }

    #[tokio::test]
    async fn an_image_larger_than_the_volume_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(ZfsBackend::open_mode("tank/vdc", f.clone(), true).await.unwrap());
        // Absent, then made.
        f.fail(&["zfs", "list", "-H", "-t", "all"], "no such dataset")
            .ok(&["zfs", "list", "-H", "-t", "all"], "tank/vdc/vol-b\n");
        f.ok(&["qemu-img", "info"], r#"{"format": "qcow2", "virtual-size": 2147483648}"#);
        f.clear();
        let (sta, sink) = storage(&f, backend, dir.path());
        let image = image_spec(vdc_schema::ImageFormat::Qcow2, "file:///images/a.qcow2".into());
        sta.ensure_volume(VolumeSpec { source_image: Some(image), ..spec("vol-b", 1, 64, None) }).await.unwrap();
        let r = report(&sink, "vol-b", 1).await;
        assert_eq!(r.state, ObservedStorage::Failed);
        assert_eq!(r.reason.as_deref(), Some("image img-a is 2048 MiB, larger than the volume (64 MiB)"));
        assert_eq!(
            f.lines(),
            [
                "zfs list -H -t all -o name tank/vdc/vol-b",
                "zfs create -V 64M tank/vdc/vol-b",
                "qemu-img info --output=json -f qcow2 /images/a.qcow2",
                "zfs list -H -t all -o name tank/vdc/vol-b",
                "zfs destroy -r tank/vdc/vol-b",
            ]
        );
    }

    /// An image is copied into a volume around the page cache (`-T none -t none`) where
    /// both files open with O_DIRECT, and through it where one does not.
    #[tokio::test]
    async fn an_image_is_copied_direct_where_the_file_systems_take_it() {
        let dir = tempfile::tempdir().unwrap();
        // A file on this disk opens with O_DIRECT; one that does not open stands for a
        // file system that refuses it (the command is faked).
        for direct in [true, false] {
            let f = FakeRunner::new();
            let backend = Arc::new(FileBackend::open_with(&dir.path().join("vols"), f.clone()).await.unwrap());
            f.ok(&["qemu-img", "info"], r#"{"format": "raw", "virtual-size": 1048576}"#);
            let src = dir.path().join(format!("{direct}.raw"));
            if direct {
                std::fs::write(&src, [7u8; 4096]).unwrap();
            }
            let (sta, sink) = storage(&f, backend.clone(), dir.path());
            let image = image_spec(vdc_schema::ImageFormat::Raw, src.display().to_string());
            let id = if direct { "vol-d" } else { "vol-e" };
            sta.ensure_volume(VolumeSpec { source_image: Some(image), ..spec(id, 1, 64, None) }).await.unwrap();
            assert_eq!(report(&sink, id, 1).await.state, ObservedStorage::Available);
            let cache = if direct { "-T none -t none " } else { "" };
            let convert = format!(
                "qemu-img convert -n {cache}-f raw -O raw {} {}",
                src.display(),
                backend.lun_path(&vol(id)).display()
            );
            assert!(f.lines().contains(&convert), "{convert} in {:?}", f.lines());
        }
    }

    /// sta stopped while it copied an image into a new volume: the volume exists, half
    /// filled. The next ensure makes it again instead of reporting it available.
    #[tokio::test]
    async fn a_volume_whose_making_was_cut_short_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(FileBackend::open_with(&dir.path().join("vols"), f.clone()).await.unwrap());
        f.ok(&["qemu-img", "info"], r#"{"format": "raw", "virtual-size": 1048576}"#);
        let src = dir.path().join("img.raw");
        std::fs::write(&src, [7u8; 4096]).unwrap();
        let image = image_spec(vdc_schema::ImageFormat::Raw, src.display().to_string());
        let want = VolumeSpec { source_image: Some(image), ..spec("vol-f", 1, 64, None) };
        // What the stopped sta left: the volume made, its copy never ended.
        f.fail(&["qemu-img", "convert"], "killed").ok(&["qemu-img", "convert"], "");
        let (sta, sink) = storage(&f, backend.clone(), dir.path());
        sta.ensure_volume(want.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(sink.newest("vol-f").is_none(), "a failed copy is retried, not reported");
        drop(sta);
        backend.create(&vol("vol-f"), 64).await.unwrap();
        std::fs::write(backend.lun_path(&vol("vol-f")), b"half").unwrap();

        f.clear();
        let (sta, sink) = storage(&f, backend.clone(), dir.path());
        sta.ensure_volume(want.clone()).await.unwrap();
        assert_eq!(report(&sink, "vol-f", 1).await.state, ObservedStorage::Available);
        let lun = backend.lun_path(&vol("vol-f"));
        let convert = format!("qemu-img convert -n -T none -t none -f raw -O raw {} {}", src.display(), lun.display());
        assert!(f.lines().contains(&convert), "the image is copied again: {:?}", f.lines());
        assert_eq!(std::fs::metadata(&lun).unwrap().len(), 64 << 20, "made afresh");
        // Made whole: a later ensure (the same sta or a restarted one) leaves it alone.
        f.clear();
        let (sta, sink) = storage(&f, backend.clone(), dir.path());
        sta.ensure_volume(VolumeSpec { spec_gen: 2, ..want }).await.unwrap();
        assert_eq!(report(&sink, "vol-f", 2).await.state, ObservedStorage::Available);
        assert!(!f.lines().iter().any(|l| l.starts_with("qemu-img convert")), "{:?}", f.lines());
    }

    #[tokio::test]
    async fn an_unreadable_image_fails_the_volume_with_the_command_in_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(FileBackend::open_with(&dir.path().join("vols"), f.clone()).await.unwrap());
        f.fail(&["qemu-img", "info"], "Could not open '/images/a.qcow2': No such file or directory");
        let (sta, sink) = storage(&f, backend.clone(), dir.path());
        let image = image_spec(vdc_schema::ImageFormat::Qcow2, "/images/a.qcow2".into());
        sta.ensure_volume(VolumeSpec { source_image: Some(image), ..spec("vol-c", 1, 64, None) }).await.unwrap();
        let r = report(&sink, "vol-c", 1).await;
        assert_eq!(r.state, ObservedStorage::Failed);
        assert_eq!(
            r.reason.as_deref(),
            Some(
                "cannot read image img-a: `qemu-img info --output=json -f qcow2 /images/a.qcow2` failed: \
                 Could not open '/images/a.qcow2': No such file or directory"
            )
        );
        assert!(!backend.exists(&vol("vol-c")).await, "the new volume is removed again");
    }

    #[tokio::test]
    async fn every_ensure_rechecks_the_export_and_a_grown_volume_is_exported_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(FileBackend::open_with(&dir.path().join("vols"), f.clone()).await.unwrap());
        let lun = backend.lun_path(&vol("vol-a"));
        let exported = target(1, "vol-a", &lun, "iqn.2026-11.io.vdc:hn-a");
        // What tgtd has at each look: nothing; the export (twice: the repeated ensure, then
        // the grown volume's unexport); nothing; the export again.
        f.ok(&SHOW, "").ok(&SHOW, &exported).ok(&SHOW, &exported).ok(&SHOW, "").ok(&SHOW, &exported);
        let (sta, sink) = storage(&f, backend, dir.path());
        let bind = "tgtadm -C 7 --lld iscsi --op bind --mode target --tid 1 --initiator-name iqn.2026-11.io.vdc:hn-a";
        let new = "tgtadm -C 7 --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.vdc:vol-a";

        sta.ensure_volume(spec("vol-a", 1, 64, Some("hn-a"))).await.unwrap();
        let r = report(&sink, "vol-a", 1).await;
        assert_eq!((r.state, r.size_mib), (ObservedStorage::Available, 64));
        assert!(
            matches!(r.target, Some(VolumeTarget::Iscsi { ref iqn, lun: 1, .. }) if iqn == "iqn.2026-11.io.vdc:vol-a")
        );
        let lines = f.lines();
        assert_eq!((lines[0].as_str(), lines[1].as_str()), (SHOW.join(" ").as_str(), new));
        assert_eq!(lines.last().unwrap(), bind);

        // The same ensure again: tgtd has it, nothing changes.
        f.clear();
        sta.ensure_volume(spec("vol-a", 2, 64, Some("hn-a"))).await.unwrap();
        report(&sink, "vol-a", 2).await;
        assert_eq!(f.lines(), [SHOW.join(" ")]);

        // Grown: tgt reads a LUN's size once, so the target is made again.
        f.clear();
        sta.ensure_volume(spec("vol-a", 3, 128, Some("hn-a"))).await.unwrap();
        let r = report(&sink, "vol-a", 3).await;
        assert_eq!(r.size_mib, 128);
        let lines = f.lines();
        assert_eq!(
            lines[..3],
            [
                SHOW.join(" "),
                "tgtadm -C 7 --lld iscsi --op delete --mode target --tid 1 --force".into(),
                SHOW.join(" ")
            ]
        );
        assert_eq!(lines[3], new);
        assert_eq!(lines.last().unwrap(), bind);
    }

    #[tokio::test]
    async fn volume_bytes_that_begin_with_an_image_header_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, qcow) = (dir.path().join("plain"), dir.path().join("qcow"));
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        let mut bytes = b"QFI\xfb\0\0\0\x03".to_vec();
        bytes.resize(4096, 7);
        std::fs::write(&qcow, bytes).unwrap();
        assert!(!looks_like_an_image(&plain).await.unwrap());
        assert!(looks_like_an_image(&qcow).await.unwrap());
        assert!(looks_like_an_image(&dir.path().join("gone")).await.is_err());
    }

    /// Saves from many threads at once leave the latest state in the file.
    #[tokio::test]
    async fn saves_at_once_keep_the_latest_state() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeRunner::new();
        let backend = Arc::new(FileBackend::open(&dir.path().join("volumes")).await.unwrap());
        let (sta, _) = storage(&f, backend, dir.path());
        std::thread::scope(|s| {
            for t in 0..8 {
                let inner = &sta.inner;
                s.spawn(move || {
                    for n in 0..50u64 {
                        inner
                            .state
                            .lock()
                            .unwrap()
                            .snapshots
                            .insert(SnapshotId::generate(), (vol("vol-a"), t * 100 + n));
                        inner.try_save().expect("a save at once with others");
                    }
                });
            }
        });
        let saved: State = serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(saved.snapshots.len(), 400, "a save lost a newer state");
    }
}
