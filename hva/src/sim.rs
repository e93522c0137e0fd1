//! The simulated hypervisor: instances are entries in a map that move between states after
//! a configurable delay, with injected failures and message loss. With a state file it
//! keeps its "guests" across restarts, like libvirt keeps domains, so a restarted hva
//! re-reports them instead of losing them.
//!
//! An instance whose hostname contains `simfail` always fails to start (deterministic
//! failure for tests).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vdc_bus::sim::SimKnobs;
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, Hypervisor};
use vdc_schema::bus::{CaptureSpec, InstanceReport, InstanceSpec, ObjectReport};
use vdc_schema::id::{InstanceId, VolumeId};
use vdc_schema::{DesiredPower, ObservedInstance};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Guest {
    spec: InstanceSpec,
    state: ObservedInstance,
    reboot_done: u64,
    volumes: Vec<VolumeId>,
    reason: Option<String>,
    boots: u32,
    /// Bumped by every ensure; a delayed transition applies only if still current.
    #[serde(skip)]
    op: u64,
}

pub struct SimHypervisor {
    sink: ReportSink,
    knobs: SimKnobs,
    state_file: Option<PathBuf>,
    guests: Arc<Mutex<HashMap<InstanceId, Guest>>>,
}

impl SimHypervisor {
    pub fn new(sink: ReportSink, knobs: SimKnobs, state_file: Option<PathBuf>) -> std::io::Result<Self> {
        let mut guests = HashMap::new();
        if let Some(p) = &state_file {
            if let Ok(text) = std::fs::read_to_string(p) {
                let saved: Vec<Guest> = serde_json::from_str(&text).unwrap_or_default();
                guests = saved.into_iter().map(|g| (g.spec.id.clone(), g)).collect();
            }
        }
        Ok(SimHypervisor { sink, knobs, state_file, guests: Arc::new(Mutex::new(guests)) })
    }

    /// How many guests this host has (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.guests.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn report(sink: &ReportSink, id: &InstanceId, g: Option<&Guest>, spec_gen: u64) {
        let r = match g {
            Some(g) => InstanceReport {
                id: id.clone(),
                spec_gen: g.spec.spec_gen,
                state: g.state,
                reboot_gen: g.reboot_done,
                volumes: g.volumes.clone(),
                reason: g.reason.clone(),
            },
            None => InstanceReport {
                id: id.clone(),
                spec_gen,
                state: ObservedInstance::Absent,
                reboot_gen: 0,
                volumes: vec![],
                reason: None,
            },
        };
        sink.report(ObjectReport::Instance(r));
    }

    fn save(guests: &HashMap<InstanceId, Guest>, file: &Option<PathBuf>) {
        if let Some(p) = file {
            let all: Vec<&Guest> = guests.values().collect();
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, serde_json::to_vec(&all).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(tmp, p);
            }
        }
    }

    /// After the delay, moves the guest to `to` if no newer ensure arrived meanwhile.
    fn later(&self, id: InstanceId, op: u64, to: ObservedInstance, fail: Option<String>) {
        let (guests, sink, file, delay) =
            (self.guests.clone(), self.sink.clone(), self.state_file.clone(), self.knobs.delay);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            tokio::time::sleep(delay).await;
            // The simulated driver's operation, under the series the real drivers use.
            vdc_bus::metrics::driver_op("sim", "power", started, fail.is_none());
            let mut map = guests.lock().unwrap();
            let Some(g) = map.get_mut(&id) else { return };
            if g.op != op {
                return;
            }
            match &fail {
                Some(why) => {
                    g.state = ObservedInstance::Failed;
                    g.reason = Some(why.clone());
                }
                None => {
                    g.state = to;
                    if to == ObservedInstance::Running {
                        g.reboot_done = g.spec.reboot_gen;
                        g.boots += 1;
                    }
                }
            }
            Self::report(&sink, &id, Some(g), 0);
            Self::save(&map, &file);
        });
    }

    fn remove_later(&self, id: InstanceId, op: u64) {
        let (guests, sink, file, delay) =
            (self.guests.clone(), self.sink.clone(), self.state_file.clone(), self.knobs.delay);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            tokio::time::sleep(delay).await;
            vdc_bus::metrics::driver_op("sim", "remove", started, true);
            let mut map = guests.lock().unwrap();
            let gen = match map.get(&id) {
                Some(g) if g.op == op => g.spec.spec_gen,
                _ => return,
            };
            map.remove(&id);
            Self::report(&sink, &id, None, gen);
            Self::save(&map, &file);
        });
    }
}

#[async_trait]
impl Hypervisor for SimHypervisor {
    async fn ensure_instance(&self, spec: InstanceSpec) -> Result<(), AgentError> {
        if self.knobs.should_drop() {
            return Ok(());
        }
        let id = spec.id.clone();
        let mut map = self.guests.lock().unwrap();
        if map.get(&id).is_some_and(|g| g.spec.spec_gen > spec.spec_gen) {
            return Ok(()); // an older intent arriving late
        }
        let g = map.entry(id.clone()).or_insert_with(|| Guest {
            spec: spec.clone(),
            state: ObservedInstance::Off,
            reboot_done: spec.reboot_gen,
            volumes: vec![],
            reason: None,
            boots: 0,
            op: 0,
        });
        g.spec = spec.clone();
        g.op += 1;
        // Volumes follow the spec at once: the sim has no hotplug to wait for.
        g.volumes = spec.volumes.iter().map(|v| v.volume_id.clone()).collect();
        let op = g.op;
        let (next, fail) = match (spec.power, g.state) {
            (DesiredPower::Running, ObservedInstance::Running) if g.reboot_done >= spec.reboot_gen => (None, None),
            (DesiredPower::Running, _) => {
                let fail = if spec.hostname.contains("simfail") {
                    Some("injected failure: the hostname asks for it".to_owned())
                } else if self.knobs.should_fail() {
                    Some("injected failure (sim fail_rate)".to_owned())
                } else {
                    None
                };
                g.state = ObservedInstance::Starting;
                g.reason = None;
                (Some(ObservedInstance::Running), fail)
            }
            (DesiredPower::Off, ObservedInstance::Off) => (None, None),
            (DesiredPower::Off, _) => {
                g.state = ObservedInstance::Stopping;
                (Some(ObservedInstance::Off), None)
            }
        };
        Self::report(&self.sink, &id, Some(g), 0);
        Self::save(&map, &self.state_file);
        drop(map);
        if let Some(to) = next {
            self.later(id, op, to, fail);
        }
        Ok(())
    }

    async fn ensure_instance_absent(&self, id: InstanceId, spec_gen: u64) -> Result<(), AgentError> {
        if self.knobs.should_drop() {
            return Ok(());
        }
        let mut map = self.guests.lock().unwrap();
        match map.get_mut(&id) {
            None => Self::report(&self.sink, &id, None, spec_gen),
            Some(g) => {
                g.op += 1;
                g.spec.spec_gen = g.spec.spec_gen.max(spec_gen);
                g.state = ObservedInstance::Stopping;
                Self::report(&self.sink, &id, Some(g), 0);
                let op = g.op;
                drop(map);
                self.remove_later(id, op);
            }
        }
        Ok(())
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        let map = self.guests.lock().unwrap();
        for (id, g) in map.iter() {
            Self::report(&self.sink, id, Some(g), 0);
        }
        Ok(())
    }

    /// The sim's guests never write: the captured disk is the image they booted, sent
    /// back to dcmgr like the real driver sends its flattened overlay.
    async fn capture_instance(&self, spec: CaptureSpec) -> Result<(), AgentError> {
        if self.knobs.should_drop() {
            return Ok(());
        }
        let blob = {
            let map = self.guests.lock().unwrap();
            match map.get(&spec.instance_id) {
                None => Err(format!("no instance {} on this host", spec.instance_id)),
                // Off, or running (the real driver then copies the disk at one instant).
                Some(g) if !matches!(g.state, ObservedInstance::Off | ObservedInstance::Running) => {
                    Err(format!("instance {} is {}, neither powered off nor running", spec.instance_id, g.state))
                }
                Some(g) => g.spec.image.blob.clone().ok_or_else(|| "the instance has no stored root disk".to_owned()),
            }
        };
        tokio::spawn(async move {
            let outcome = match blob {
                Ok(b) => vdc_bus::blob::relay(&b, &spec.upload).await.map_err(|e| e.to_string()),
                Err(why) => vdc_bus::blob::capture_failed(&spec.upload, &why).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = outcome {
                tracing::warn!(instance = %spec.instance_id, image = %spec.upload.image_id, "capture: {e}");
            }
        });
        Ok(())
    }

    async fn console_log(&self, id: InstanceId) -> Result<String, AgentError> {
        let map = self.guests.lock().unwrap();
        let g = map.get(&id).ok_or_else(|| AgentError::NotFound(format!("no instance {id} on this host")))?;
        let mut out = String::new();
        for boot in 1..=g.boots {
            out.push_str(&format!(
                "[sim] boot {boot} of {id} ({}, {} vCPU, {} MiB)\nvdc-guest: instance-id={id} hostname={} up\n",
                g.spec.hypervisor, g.spec.cpus, g.spec.memory_mib, g.spec.hostname
            ));
        }
        Ok(out)
    }
}
