//! The simulated hypervisor: instances are entries in a map that move between states after
//! a configurable delay, with injected failures and message loss. With a state file it
//! keeps its "guests" across restarts, like libvirt keeps domains, so a restarted hva
//! re-reports them instead of losing them.
//!
//! The state file is a log: each change appends the guest as it now is (or its removal)
//! as one JSON line, replayed on start and rewritten whole when it holds many times more
//! lines than guests. Rewriting every guest on each change cost 17 % of `vdc-bench`'s
//! CPU at 60 guests per host (perf, 2026-12-05), and grew with the guests.
//!
//! An instance whose hostname contains `simfail` always fails to start (deterministic
//! failure for tests).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Write};
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
    /// Bumped by every ensure that changes course; a delayed transition applies only if
    /// still current.
    #[serde(skip)]
    op: u64,
    /// Where the delayed transition under way leads (`Absent`: removal). None after a
    /// restart: the transitions of the process before are gone with it.
    #[serde(skip)]
    pending: Option<ObservedInstance>,
}

/// One line of the state file: a guest as it is written (`&Guest`) and read (`Guest`).
#[derive(Serialize, Deserialize)]
enum Change<G> {
    Put(G),
    Gone(InstanceId),
}

/// The guests, and the log they are kept in (none: in memory only).
#[derive(Default)]
struct Guests {
    map: HashMap<InstanceId, Guest>,
    log: Option<Log>,
}

struct Log {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
}

/// The log is rewritten when it holds this many lines per guest (and a few more).
const LINES_PER_GUEST: usize = 8;

impl Guests {
    /// Replays the log at `path`. A line that does not parse (cut off when the process
    /// was killed while writing it) is skipped. Without a log, the guests an older vdc
    /// wrote whole to `sim-instances.json` beside it are taken over (an upgraded site's).
    fn open(path: PathBuf) -> std::io::Result<Guests> {
        let mut map = HashMap::new();
        let legacy = path.with_extension("json");
        if !path.exists() {
            if let Ok(text) = std::fs::read_to_string(&legacy) {
                let saved: Vec<Guest> = serde_json::from_str(&text).unwrap_or_default();
                map = saved.into_iter().map(|g| (g.spec.id.clone(), g)).collect();
            }
        }
        if let Ok(f) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(f).lines() {
                match serde_json::from_str::<Change<Guest>>(&line?) {
                    Ok(Change::Put(g)) => {
                        map.insert(g.spec.id.clone(), g);
                    }
                    Ok(Change::Gone(id)) => {
                        map.remove(&id);
                    }
                    Err(_) => {}
                }
            }
        }
        let mut g = Guests { map, log: None };
        g.rewrite(path)?;
        let _ = std::fs::remove_file(legacy);
        Ok(g)
    }

    /// Writes every guest to a new log that replaces the old one.
    fn rewrite(&mut self, path: PathBuf) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for g in self.map.values() {
            serde_json::to_writer(&mut out, &Change::Put(g)).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        self.log = Some(Log { path, file, lines: self.map.len() });
        Ok(())
    }

    /// Records guest `id` as it is now (gone when it is not in the map).
    fn save(&mut self, id: &InstanceId) {
        let Some(log) = &mut self.log else { return };
        let change = match self.map.get(id) {
            Some(g) => Change::Put(g),
            None => Change::Gone(id.clone()),
        };
        let mut line = serde_json::to_vec(&change).unwrap_or_default();
        line.push(b'\n');
        // One write: a line is whole unless the process dies inside it.
        if log.file.write_all(&line).is_err() {
            return;
        }
        log.lines += 1;
        if log.lines > LINES_PER_GUEST * self.map.len() + 64 {
            let path = log.path.clone();
            if let Err(e) = self.rewrite(path) {
                tracing::warn!("rewriting the simulated guests' log: {e}");
            }
        }
    }
}

pub struct SimHypervisor {
    sink: ReportSink,
    knobs: SimKnobs,
    guests: Arc<Mutex<Guests>>,
}

impl SimHypervisor {
    pub fn new(sink: ReportSink, knobs: SimKnobs, state_file: Option<PathBuf>) -> std::io::Result<Self> {
        let guests = match state_file {
            Some(p) => Guests::open(p)?,
            None => Guests::default(),
        };
        Ok(SimHypervisor { sink, knobs, guests: Arc::new(Mutex::new(guests)) })
    }

    /// How many guests this host has (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.guests.lock().unwrap().map.len()
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

    /// After the delay, moves the guest to `to` if no newer ensure arrived meanwhile.
    fn later(&self, id: InstanceId, op: u64, to: ObservedInstance, fail: Option<String>) {
        let (guests, sink, delay) = (self.guests.clone(), self.sink.clone(), self.knobs.delay);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            tokio::time::sleep(delay).await;
            // The simulated driver's operation, under the series the real drivers use.
            vdc_bus::metrics::driver_op("sim", "power", started, fail.is_none());
            let mut guests = guests.lock().unwrap();
            let Some(g) = guests.map.get_mut(&id) else { return };
            if g.op != op {
                return;
            }
            g.pending = None;
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
            guests.save(&id);
        });
    }

    fn remove_later(&self, id: InstanceId, op: u64) {
        let (guests, sink, delay) = (self.guests.clone(), self.sink.clone(), self.knobs.delay);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            tokio::time::sleep(delay).await;
            vdc_bus::metrics::driver_op("sim", "remove", started, true);
            let mut guests = guests.lock().unwrap();
            let gen = match guests.map.get(&id) {
                Some(g) if g.op == op => g.spec.spec_gen,
                _ => return,
            };
            guests.map.remove(&id);
            Self::report(&sink, &id, None, gen);
            guests.save(&id);
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
        let mut guests = self.guests.lock().unwrap();
        if guests.map.get(&id).is_some_and(|g| g.spec.spec_gen > spec.spec_gen) {
            return Ok(()); // an older intent arriving late
        }
        let g = guests.map.entry(id.clone()).or_insert_with(|| Guest {
            spec: spec.clone(),
            state: ObservedInstance::Off,
            reboot_done: spec.reboot_gen,
            volumes: vec![],
            reason: None,
            boots: 0,
            op: 0,
            pending: None,
        });
        g.spec = spec.clone();
        // Volumes follow the spec at once: the sim has no hotplug to wait for.
        g.volumes = spec.volumes.iter().map(|v| v.volume_id.clone()).collect();
        // The same ensure again while its start or stop is under way lets it finish, as
        // the real driver does (a start it took up again would never end under ensures
        // sent faster than it); the start sets the reboot generation it finds then.
        let want = match spec.power {
            DesiredPower::Running => ObservedInstance::Running,
            DesiredPower::Off => ObservedInstance::Off,
        };
        let under_way = g.pending == Some(want);
        if !under_way {
            g.op += 1;
        }
        let op = g.op;
        let (next, fail) = match (spec.power, g.state) {
            _ if under_way => (None, None),
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
        if next.is_some() {
            g.pending = next;
        }
        Self::report(&self.sink, &id, Some(g), 0);
        guests.save(&id);
        drop(guests);
        if let Some(to) = next {
            self.later(id, op, to, fail);
        }
        Ok(())
    }

    async fn ensure_instance_absent(&self, id: InstanceId, spec_gen: u64) -> Result<(), AgentError> {
        if self.knobs.should_drop() {
            return Ok(());
        }
        let mut guests = self.guests.lock().unwrap();
        match guests.map.get_mut(&id) {
            None => Self::report(&self.sink, &id, None, spec_gen),
            Some(g) => {
                g.op += 1;
                g.pending = Some(ObservedInstance::Absent);
                g.spec.spec_gen = g.spec.spec_gen.max(spec_gen);
                g.state = ObservedInstance::Stopping;
                Self::report(&self.sink, &id, Some(g), 0);
                let op = g.op;
                drop(guests);
                self.remove_later(id, op);
            }
        }
        Ok(())
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        let guests = self.guests.lock().unwrap();
        for (id, g) in guests.map.iter() {
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
            let guests = self.guests.lock().unwrap();
            match guests.map.get(&spec.instance_id) {
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
        let guests = self.guests.lock().unwrap();
        let g = guests.map.get(&id).ok_or_else(|| AgentError::NotFound(format!("no instance {id} on this host")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vdc_schema::HypervisorKind;

    fn spec(id: &InstanceId, spec_gen: u64) -> InstanceSpec {
        let image = crate::testing::image(vdc_schema::ImageFormat::Qcow2, "/sim");
        InstanceSpec { spec_gen, ..crate::testing::spec(id.as_str(), HypervisorKind::Qemu, image) }
    }

    fn sim(file: &std::path::Path) -> SimHypervisor {
        sim_taking(file, Duration::from_millis(1))
    }

    fn sim_taking(file: &std::path::Path, delay: Duration) -> SimHypervisor {
        let knobs = SimKnobs { delay, fail_rate: 0.0, drop_rate: 0.0 };
        SimHypervisor::new(ReportSink::open(None).unwrap(), knobs, Some(file.to_owned())).unwrap()
    }

    fn state(s: &SimHypervisor, id: &InstanceId) -> Option<(ObservedInstance, u64)> {
        s.guests.lock().unwrap().map.get(id).map(|g| (g.state, g.spec.spec_gen))
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn guests_come_back_after_a_restart_as_the_log_last_had_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sim-instances.jsonl");
        let (a, b): (InstanceId, InstanceId) = ("i-aaaaaaaa".parse().unwrap(), "i-bbbbbbbb".parse().unwrap());
        let s = sim(&file);
        s.ensure_instance(spec(&a, 1)).await.unwrap();
        s.ensure_instance(spec(&b, 1)).await.unwrap();
        settle().await;
        // Many changes of one guest: the log is rewritten instead of growing with them.
        for gen in 2..200 {
            s.ensure_instance(spec(&a, gen)).await.unwrap();
        }
        s.ensure_instance_absent(b.clone(), 2).await.unwrap();
        settle().await;
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines <= LINES_PER_GUEST + 64 + 1, "{lines} lines for one guest");
        drop(s);

        // A line cut off when the process was killed is skipped.
        let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{\"Put\":{\"spec\":").unwrap();
        let s = sim(&file);
        assert_eq!(state(&s, &a), Some((ObservedInstance::Running, 199)));
        assert_eq!(state(&s, &b), None, "a removed guest stays removed");
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn the_guests_an_older_vdc_wrote_whole_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sim-instances.jsonl");
        let a: InstanceId = "i-aaaaaaaa".parse().unwrap();
        let g = Guest {
            spec: spec(&a, 3),
            state: ObservedInstance::Running,
            reboot_done: 0,
            volumes: vec![],
            reason: None,
            boots: 2,
            op: 0,
            pending: None,
        };
        std::fs::write(dir.path().join("sim-instances.json"), serde_json::to_vec(&vec![g]).unwrap()).unwrap();
        let s = sim(&file);
        assert_eq!(state(&s, &a), Some((ObservedInstance::Running, 3)));
        drop(s);
        assert!(!dir.path().join("sim-instances.json").exists(), "taken into the log");
        assert_eq!(state(&sim(&file), &a), Some((ObservedInstance::Running, 3)));
    }

    #[tokio::test]
    async fn an_ensure_sent_again_lets_the_start_under_way_finish() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sim-instances.jsonl");
        let a: InstanceId = "i-aaaaaaaa".parse().unwrap();
        let s = sim_taking(&file, Duration::from_millis(60));
        // The same ensure every 20 ms, three times as often as a start takes.
        for _ in 0..10 {
            s.ensure_instance(spec(&a, 1)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(state(&s, &a), Some((ObservedInstance::Running, 1)));
        drop(s);

        // A start under way when the process stopped is started again by the next ensure.
        let s = sim_taking(&file, Duration::from_secs(60));
        s.ensure_instance(spec(&a, 2)).await.unwrap();
        s.ensure_instance(InstanceSpec { power: DesiredPower::Off, ..spec(&a, 3) }).await.unwrap();
        s.ensure_instance(spec(&a, 4)).await.unwrap();
        assert_eq!(state(&s, &a), Some((ObservedInstance::Starting, 4)));
        drop(s);
        let s = sim(&file);
        s.ensure_instance(spec(&a, 5)).await.unwrap();
        settle().await;
        assert_eq!(state(&s, &a), Some((ObservedInstance::Running, 5)));
    }
}
