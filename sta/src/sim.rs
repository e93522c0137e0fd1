//! The simulated storage agent: volumes and snapshots are map entries (kept in a state
//! file when one is given, as a real pool keeps its datasets), with a fake iSCSI target
//! for exported volumes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vdc_bus::sim::SimKnobs;
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, StorageAgent};
use vdc_schema::bus::{
    ObjectReport, SnapshotImageSpec, SnapshotReport, SnapshotSpec, VolumeReport, VolumeSpec, VolumeTarget,
};
use vdc_schema::id::{SnapshotId, VolumeId};
use vdc_schema::{ImageFormat, ObservedStorage};

#[derive(Default, Serialize, Deserialize)]
struct State {
    volumes: HashMap<VolumeId, VolumeSpec>,
    snapshots: HashMap<SnapshotId, (VolumeId, u64)>,
}

pub struct SimStorage {
    sink: ReportSink,
    knobs: SimKnobs,
    file: Option<PathBuf>,
    state: Arc<Mutex<State>>,
    /// Images being sent now: a re-sent command while one runs is dropped, as sta does.
    uploading: Arc<Mutex<std::collections::HashSet<vdc_schema::id::ImageId>>>,
}

fn target(spec: &VolumeSpec) -> Option<VolumeTarget> {
    spec.export_to.as_ref().map(|_| VolumeTarget::Iscsi {
        portal: "127.0.0.1:3260".into(),
        iqn: format!("iqn.2026-11.io.vdc:{}", spec.id),
        lun: 1,
    })
}

impl SimStorage {
    pub fn new(sink: ReportSink, knobs: SimKnobs, file: Option<PathBuf>) -> Self {
        let state = file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        SimStorage { sink, knobs, file, state: Arc::new(Mutex::new(state)), uploading: Default::default() }
    }

    fn save(&self, s: &State) {
        if let Some(p) = &self.file {
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, serde_json::to_vec(s).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(tmp, p);
            }
        }
    }

    fn vol(&self, spec: &VolumeSpec, state: ObservedStorage, reason: Option<String>) {
        self.sink.report(ObjectReport::Volume(VolumeReport {
            id: spec.id.clone(),
            spec_gen: spec.spec_gen,
            state,
            size_mib: spec.size_mib,
            target: if state == ObservedStorage::Available { target(spec) } else { None },
            reason,
        }));
    }

    fn snap(&self, id: SnapshotId, state: ObservedStorage, size_mib: u64, reason: Option<String>) {
        self.sink.report(ObjectReport::Snapshot(SnapshotReport { id, state, size_mib, reason }));
    }
}

#[async_trait]
impl StorageAgent for SimStorage {
    async fn ensure_volume(&self, spec: VolumeSpec) -> Result<(), AgentError> {
        if self.knobs.should_drop() {
            return Ok(());
        }
        let is_new = !self.state.lock().unwrap().volumes.contains_key(&spec.id);
        if is_new {
            let started = std::time::Instant::now();
            tokio::time::sleep(self.knobs.delay).await;
            vdc_bus::metrics::driver_op("sim", "create_volume", started, true);
            if let Some(s) = &spec.source_snapshot {
                if !self.state.lock().unwrap().snapshots.contains_key(s) {
                    self.vol(&spec, ObservedStorage::Failed, Some(format!("snapshot {s} is not on this node")));
                    return Ok(());
                }
            }
            if self.knobs.should_fail() {
                self.vol(&spec, ObservedStorage::Failed, Some("injected failure (sim fail_rate)".into()));
                return Ok(());
            }
        }
        let mut st = self.state.lock().unwrap();
        if st.volumes.get(&spec.id).is_some_and(|v| v.spec_gen > spec.spec_gen) {
            return Ok(());
        }
        st.volumes.insert(spec.id.clone(), spec.clone());
        self.save(&st);
        drop(st);
        self.vol(&spec, ObservedStorage::Available, None);
        Ok(())
    }

    async fn ensure_volume_absent(&self, id: VolumeId, spec_gen: u64) -> Result<(), AgentError> {
        let mut st = self.state.lock().unwrap();
        let old = st.volumes.remove(&id);
        self.save(&st);
        drop(st);
        let spec = old.unwrap_or(VolumeSpec {
            id,
            spec_gen,
            size_mib: 0,
            source_snapshot: None,
            source_image: None,
            export_to: None,
        });
        self.vol(&VolumeSpec { spec_gen: spec.spec_gen.max(spec_gen), ..spec }, ObservedStorage::Absent, None);
        Ok(())
    }

    async fn ensure_snapshot(&self, spec: SnapshotSpec) -> Result<(), AgentError> {
        let size = self.state.lock().unwrap().volumes.get(&spec.volume_id).map(|v| v.size_mib);
        let Some(size) = size else {
            self.snap(
                spec.id,
                ObservedStorage::Failed,
                0,
                Some(format!("volume {} is not on this node", spec.volume_id)),
            );
            return Ok(());
        };
        let started = std::time::Instant::now();
        tokio::time::sleep(self.knobs.delay).await;
        vdc_bus::metrics::driver_op("sim", "snapshot", started, true);
        let mut st = self.state.lock().unwrap();
        st.snapshots.insert(spec.id.clone(), (spec.volume_id, size));
        self.save(&st);
        drop(st);
        self.snap(spec.id, ObservedStorage::Available, size, None);
        Ok(())
    }

    async fn ensure_snapshot_absent(&self, id: SnapshotId, _volume_id: VolumeId) -> Result<(), AgentError> {
        let mut st = self.state.lock().unwrap();
        st.snapshots.remove(&id);
        self.save(&st);
        drop(st);
        self.snap(id, ObservedStorage::Absent, 0, None);
        Ok(())
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        let (vols, snaps): (Vec<VolumeSpec>, Vec<(SnapshotId, u64)>) = {
            let st = self.state.lock().unwrap();
            (st.volumes.values().cloned().collect(), st.snapshots.iter().map(|(k, v)| (k.clone(), v.1)).collect())
        };
        for v in vols {
            self.vol(&v, ObservedStorage::Available, None);
        }
        for (id, size) in snaps {
            self.snap(id, ObservedStorage::Available, size, None);
        }
        Ok(())
    }

    /// The sim's volumes hold no blocks: a snapshot's data is 1 MiB naming its volume, so
    /// the images of one snapshot are equal (and stored once). qcow2 is converted with
    /// qemu-img, as the real node does.
    async fn image_from_snapshot(&self, spec: SnapshotImageSpec) -> Result<(), AgentError> {
        if self.knobs.should_drop() {
            return Ok(());
        }
        if !self.uploading.lock().unwrap().insert(spec.upload.image_id.clone()) {
            return Ok(());
        }
        let (delay, uploading, state) = (self.knobs.delay, self.uploading.clone(), self.state.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Checked after the "read" time: a snapshot deleted meanwhile fails the image.
            let known = state.lock().unwrap().snapshots.contains_key(&spec.snapshot_id);
            let data = match known {
                true => sim_data(&spec).await,
                false => Err(format!("snapshot {} is not on this storage node", spec.snapshot_id)),
            };
            let outcome = match data {
                Ok(d) => vdc_bus::blob::upload_bytes(&spec.upload, d).await.map_err(|e| e.to_string()),
                Err(why) => vdc_bus::blob::capture_failed(&spec.upload, &why).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = outcome {
                tracing::warn!(snapshot = %spec.snapshot_id, image = %spec.upload.image_id, "image: {e}");
            }
            uploading.lock().unwrap().remove(&spec.upload.image_id);
        });
        Ok(())
    }
}

async fn sim_data(spec: &SnapshotImageSpec) -> Result<Vec<u8>, String> {
    let line = format!("vdc-sim volume {}\n", spec.volume_id);
    let raw: Vec<u8> = line.bytes().cycle().take(1 << 20).collect();
    match spec.format {
        ImageFormat::Raw => Ok(raw),
        ImageFormat::Qcow2 => {
            let dir = std::env::temp_dir().join(format!("vdc-sim-sta-{}", std::process::id()));
            tokio::fs::create_dir_all(&dir).await.map_err(|e| e.to_string())?;
            let (from, to) = (
                dir.join(format!("{}.raw", spec.upload.image_id)),
                dir.join(format!("{}.qcow2", spec.upload.image_id)),
            );
            tokio::fs::write(&from, raw).await.map_err(|e| e.to_string())?;
            let out = tokio::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&from)
                .arg(&to)
                .output()
                .await;
            let data = tokio::fs::read(&to).await;
            let _ = tokio::fs::remove_file(&from).await;
            let _ = tokio::fs::remove_file(&to).await;
            match out {
                Ok(o) if o.status.success() => data.map_err(|e| e.to_string()),
                Ok(o) => Err(format!("qemu-img convert: {}", String::from_utf8_lossy(&o.stderr).trim())),
                Err(e) => Err(format!("cannot run qemu-img: {e}")),
            }
        }
        f => Err(format!("an image from a snapshot is raw or qcow2, not {f}")),
    }
}
