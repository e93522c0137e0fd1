//! The agent's report journal: a fact seen on a host is written here before it is sent,
//! and stays until dcmgr acks it, so a dcmgr or broker crash loses nothing (client-side
//! commit).
//!
//! The file is JSON lines: `{"r": Report}` adds a report, `{"a": [seq…]}` acks some. Only
//! the newest report per object is kept, since dcmgr applies only the newest generation
//! anyway; that bounds the journal by the number of objects on the host.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdc_schema::bus::{ObjectReport, Report};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Serialize, Deserialize)]
enum Line {
    #[serde(rename = "r")]
    Report(Report),
    #[serde(rename = "a")]
    Ack(Vec<u64>),
}

// Rewrite the file once this much has been appended since the last rewrite.
const COMPACT_BYTES: u64 = 4 << 20;

/// Syncs a journal's file ([`Journal::syncer`]).
pub struct Syncer {
    path: PathBuf,
    file: Arc<File>,
}

impl Syncer {
    pub fn sync(&self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }
}

pub struct Journal {
    // Shared with a [`Syncer`], which syncs it outside the journal's lock.
    file: Option<(PathBuf, Arc<File>)>,
    pending: BTreeMap<u64, Report>,
    by_object: HashMap<String, u64>,
    next_seq: u64,
    last_gen: u64,
    written: u64,
}

impl Journal {
    /// A journal that lives only in memory (simulated agents at scale).
    pub fn memory() -> Self {
        Journal {
            file: None,
            pending: BTreeMap::new(),
            by_object: HashMap::new(),
            next_seq: 1,
            last_gen: 0,
            written: 0,
        }
    }

    /// Opens (or creates) the journal at `path` and replays what was not acked.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let io = |source| JournalError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut j = Journal::memory();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io)?;
                // A torn last line after a crash is expected; skip what does not parse.
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Report(r)) => {
                        j.next_seq = j.next_seq.max(r.seq + 1);
                        j.last_gen = j.last_gen.max(r.gen);
                        j.insert(r);
                    }
                    Ok(Line::Ack(seqs)) => j.remove(&seqs),
                    Err(_) => continue,
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        j.file = Some((path.to_owned(), Arc::new(file)));
        j.compact()?;
        Ok(j)
    }

    pub fn last_gen(&self) -> u64 {
        self.last_gen
    }

    fn insert(&mut self, r: Report) {
        if let Some(old) = self.by_object.insert(r.object.object_id().to_owned(), r.seq) {
            self.pending.remove(&old);
        }
        self.pending.insert(r.seq, r);
    }

    fn remove(&mut self, seqs: &[u64]) {
        for s in seqs {
            if let Some(r) = self.pending.remove(s) {
                let id = r.object.object_id();
                if self.by_object.get(id) == Some(s) {
                    self.by_object.remove(id);
                }
            }
        }
    }

    fn write(&mut self, line: &Line) -> Result<(), JournalError> {
        if let Some((path, f)) = &self.file {
            let mut buf = serde_json::to_vec(line).expect("journal lines serialize");
            buf.push(b'\n');
            (&**f).write_all(&buf).map_err(|source| JournalError::Io { path: path.clone(), source })?;
            self.written += buf.len() as u64;
        }
        Ok(())
    }

    /// Records a new report and returns it.
    pub fn append(&mut self, gen: u64, object: ObjectReport) -> Result<Report, JournalError> {
        let report = Report { seq: self.next_seq, gen, object };
        self.next_seq += 1;
        self.last_gen = self.last_gen.max(gen);
        self.write(&Line::Report(report.clone()))?;
        self.insert(report.clone());
        Ok(report)
    }

    /// Forgets what dcmgr acknowledged.
    pub fn ack(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        self.remove(seqs);
        if self.pending.is_empty() {
            if let Some((path, f)) = &self.file {
                f.set_len(0).map_err(|source| JournalError::Io { path: path.clone(), source })?;
                self.written = 0;
            }
            return Ok(());
        }
        self.write(&Line::Ack(seqs.to_vec()))?;
        if self.written > COMPACT_BYTES {
            self.compact()?;
        }
        Ok(())
    }

    /// The oldest `max` unacknowledged reports.
    pub fn batch(&self, max: usize) -> Vec<Report> {
        self.pending.values().take(max).cloned().collect()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.syncer().map_or(Ok(()), |s| s.sync())
    }

    /// What makes everything appended so far durable, to run without the journal (the
    /// journal's lock is not held for milliseconds, nor an async runtime's thread).
    /// `None` for a journal in memory.
    pub fn syncer(&self) -> Option<Syncer> {
        self.file.as_ref().map(|(path, f)| Syncer { path: path.clone(), file: f.clone() })
    }

    fn compact(&mut self) -> Result<(), JournalError> {
        let Some((path, _)) = &self.file else { return Ok(()) };
        let path = path.clone();
        let io = |source| JournalError::Io { path: path.clone(), source };
        let tmp = path.with_extension("tmp");
        let mut out = File::create(&tmp).map_err(io)?;
        for r in self.pending.values() {
            let mut buf = serde_json::to_vec(&Line::Report(r.clone())).expect("journal lines serialize");
            buf.push(b'\n');
            out.write_all(&buf).map_err(io)?;
        }
        out.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        self.written = 0;
        self.file = Some((path, Arc::new(file)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_schema::bus::InstanceReport;
    use vdc_schema::ObservedInstance;

    fn inst(id: &str, state: ObservedInstance) -> ObjectReport {
        ObjectReport::Instance(InstanceReport {
            id: id.parse().unwrap(),
            spec_gen: 1,
            state,
            reboot_gen: 0,
            volumes: vec![],
            reason: None,
        })
    }

    #[test]
    fn unacked_reports_survive_a_reopen_and_acked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        {
            let mut j = Journal::open(&path).unwrap();
            let a = j.append(10, inst("i-a", ObservedInstance::Starting)).unwrap();
            j.append(11, inst("i-b", ObservedInstance::Running)).unwrap();
            j.append(12, inst("i-c", ObservedInstance::Running)).unwrap();
            j.ack(&[a.seq]).unwrap();
            j.sync().unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let ids: Vec<_> = j.batch(10).iter().map(|r| r.object.object_id().to_owned()).collect();
        assert_eq!(ids, ["i-b", "i-c"]);
        assert_eq!(j.last_gen(), 12);
    }

    #[test]
    fn only_the_newest_report_per_object_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = Journal::open(&path).unwrap();
        j.append(1, inst("i-a", ObservedInstance::Starting)).unwrap();
        j.append(2, inst("i-a", ObservedInstance::Running)).unwrap();
        assert_eq!(j.pending(), 1);
        drop(j);
        let j = Journal::open(&path).unwrap();
        let b = j.batch(10);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].gen, 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let mut j = Journal::open(&path).unwrap();
            j.append(1, inst("i-a", ObservedInstance::Running)).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"r\":{\"seq\":9,").unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.pending(), 1);
    }
}
