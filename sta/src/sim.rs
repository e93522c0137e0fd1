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
use vdc_schema::bus::{ObjectReport, SnapshotReport, SnapshotSpec, VolumeReport, VolumeSpec, VolumeTarget};
use vdc_schema::id::{SnapshotId, VolumeId};
use vdc_schema::ObservedStorage;

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
        SimStorage { sink, knobs, file, state: Arc::new(Mutex::new(state)) }
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
            tokio::time::sleep(self.knobs.delay).await;
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
        tokio::time::sleep(self.knobs.delay).await;
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
}
