//! The hosts' free room, read into dcmgr's memory, so that placing an instance does not
//! read and sort every host row (issue 15: at 10,000 hosts that query bounded creates at
//! 85/s). The database stays the truth: the model only proposes candidates, and the
//! reservation is still the conditional UPDATE of [`crate::datastore::host::try_reserve`],
//! which refuses a host that filled up, went offline or was cordoned meanwhile.
//!
//! The model follows this process's reservations and releases at once. It is read again
//! from SQL when it is older than [`REFRESH`] (what other dcmgrs did, and transactions
//! that reserved and then rolled back), when this process changed a host (registration,
//! state, capacity, zone, labels, cordon), when every candidate it gave was refused, and before
//! it answers that no host fits. Placements into a server group keep the SQL query,
//! which reads where the group's members are.

use crate::config::Placement;
use crate::datastore::{
    self as db,
    host::{Booking, Filter},
};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};
use vdc_schema::HypervisorKind;

/// How old the model may be before a placement reads it again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A model younger than this is not read again to confirm that nothing fits: a full
/// cloud refuses creates without reading every host for each of them.
const RECHECK_EMPTY: Duration = Duration::from_millis(100);
/// Candidates proposed per placement (as the SQL query's LIMIT).
const CANDIDATES: usize = 8;

#[derive(Debug, Clone, PartialEq)]
struct Host {
    /// Online and taking new instances (not cordoned): only those are proposed.
    open: bool,
    hypervisors: Vec<HypervisorKind>,
    /// As stored: `,bios,uefi,`.
    boot_modes: String,
    zone: String,
    /// As stored: `,k=v,k2=v2,`.
    labels: String,
    cpus_allocatable: i64,
    cpus_used: i64,
    memory_allocatable_mib: i64,
    memory_used_mib: i64,
    /// None: the host reported no disk, and none is booked against it.
    disk_allocatable_mib: Option<i64>,
    disk_used_mib: i64,
}

impl Host {
    fn free(&self) -> (i64, i64) {
        (self.memory_allocatable_mib - self.memory_used_mib, self.cpus_allocatable - self.cpus_used)
    }

    fn disk_fits(&self, disk_mib: u32) -> bool {
        disk_mib == 0 || self.disk_allocatable_mib.is_none_or(|a| a - self.disk_used_mib >= i64::from(disk_mib))
    }
}

/// A host's place in the order of the configured placement, best first: spread, most free
/// memory, then most free vCPUs; pack, least; then by ID (the SQL query's order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    memory: i64,
    cpus: i64,
    id: String,
}

#[derive(Debug, Default)]
struct Model {
    loaded: Option<Instant>,
    hosts: HashMap<String, Host>,
    /// Online hosts per hypervisor kind they offer, best first.
    order: HashMap<HypervisorKind, BTreeSet<Key>>,
}

pub struct Room {
    placement: Placement,
    model: RwLock<Model>,
    dirty: AtomicBool,
    /// A reload is reading the hosts: the model is stale until it is done (it cleared
    /// `dirty` as it began, so that an invalidation meanwhile is not lost).
    reading: AtomicBool,
    /// One reload at a time; the others wait for it and use its result.
    reloading: tokio::sync::Mutex<()>,
}

impl Room {
    pub fn new(placement: Placement) -> Room {
        Room {
            placement,
            model: RwLock::new(Model::default()),
            dirty: AtomicBool::new(true),
            reading: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    fn key(&self, id: &str, h: &Host) -> Key {
        let (memory, cpus) = h.free();
        match self.placement {
            Placement::Spread => Key { memory: -memory, cpus: -cpus, id: id.to_owned() },
            Placement::Pack => Key { memory, cpus, id: id.to_owned() },
        }
    }

    /// Read the hosts from SQL at the next placement.
    pub fn invalidate(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    fn stale(&self, older_than: Duration) -> bool {
        // Without `reading`, a placement during a reload used the old model: after a
        // group of creates rolled back, the room they had taken in memory refused the
        // creates made again on their own (`no_capacity` with room free).
        self.dirty.load(Ordering::Acquire)
            || self.reading.load(Ordering::Acquire)
            || self.model.read().unwrap().loaded.is_none_or(|t| t.elapsed() >= older_than)
    }

    /// Reads the hosts again if the model is dirty or older than `older_than`.
    async fn refresh(&self, pool: &db::Pool, older_than: Duration) -> Result<(), sqlx::Error> {
        if !self.stale(older_than) {
            return Ok(());
        }
        let _one = self.reloading.lock().await;
        if !self.stale(older_than) {
            return Ok(()); // another placement read them while this one waited
        }
        self.reading.store(true, Ordering::Release);
        self.dirty.store(false, Ordering::Release);
        let rows = match db::host::room_rows(pool).await {
            Ok(rows) => rows,
            Err(e) => {
                self.invalidate();
                self.reading.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let mut m = Model { loaded: Some(Instant::now()), ..Default::default() };
        for r in rows {
            let h = Host {
                open: r.state == "online" && r.schedulable == 1,
                hypervisors: db::split_list(&r.hypervisors),
                boot_modes: r.boot_modes,
                zone: r.zone,
                labels: r.labels,
                cpus_allocatable: r.cpus_allocatable,
                cpus_used: r.cpus_used,
                memory_allocatable_mib: r.memory_allocatable_mib,
                memory_used_mib: r.memory_used_mib,
                disk_allocatable_mib: r.disk_allocatable_mib,
                disk_used_mib: r.disk_used_mib,
            };
            m.insert(self, r.id, h);
        }
        *self.model.write().unwrap() = m;
        self.reading.store(false, Ordering::Release);
        Ok(())
    }

    /// Up to [`CANDIDATES`] online, uncordoned hosts offering `hypervisor` (and `uefi` firmware if
    /// asked) with room for `b` that pass `filter`, best first; `None` when the filter
    /// names a server group (the SQL query reads its members).
    pub async fn candidates(
        &self,
        pool: &db::Pool,
        hypervisor: HypervisorKind,
        b: Booking,
        uefi: bool,
        filter: &Filter,
    ) -> Result<Option<Vec<String>>, sqlx::Error> {
        if filter.group.is_some() {
            return Ok(None);
        }
        self.refresh(pool, REFRESH).await?;
        let found = self.pick(hypervisor, b, uefi, filter);
        if !found.is_empty() {
            return Ok(Some(found));
        }
        // Nothing fits in what this process saw: confirm with the database.
        self.refresh(pool, RECHECK_EMPTY).await?;
        Ok(Some(self.pick(hypervisor, b, uefi, filter)))
    }

    /// As [`Room::candidates`] from the model as it is, without reading SQL (empty for a
    /// server group's placement): what a create reserves from, just before it does.
    pub fn candidates_now(&self, hypervisor: HypervisorKind, b: Booking, uefi: bool, filter: &Filter) -> Vec<String> {
        if filter.group.is_some() {
            return vec![];
        }
        self.pick(hypervisor, b, uefi, filter)
    }

    fn pick(&self, hypervisor: HypervisorKind, b: Booking, uefi: bool, f: &Filter) -> Vec<String> {
        let m = self.model.read().unwrap();
        let Some(order) = m.order.get(&hypervisor) else { return vec![] };
        let (cpus, memory) = (i64::from(b.cpus), i64::from(b.memory_mib));
        let labels: Vec<String> = f.labels.iter().map(|(k, v)| format!(",{k}={v},")).collect();
        let fits = |h: &Host| {
            let (free_mem, free_cpus) = h.free();
            free_mem >= memory
                && free_cpus >= cpus
                && h.disk_fits(b.disk_mib)
                && (!uefi || h.boot_modes.contains(",uefi,"))
                && (f.zone.is_empty() || h.zone == f.zone)
                && labels.iter().all(|l| h.labels.contains(l.as_str()))
        };
        // Spread: from the most free memory down, so stop once a host has too little.
        // Pack: from the least, so start at the first host with enough.
        let ids: Box<dyn Iterator<Item = &Key>> = match self.placement {
            Placement::Spread => Box::new(order.iter().take_while(|k| -k.memory >= memory)),
            Placement::Pack => Box::new(order.range(Key { memory, cpus: i64::MIN, id: String::new() }..)),
        };
        ids.filter(|k| m.hosts.get(&k.id).is_some_and(fits)).take(CANDIDATES).map(|k| k.id.clone()).collect()
    }

    /// Puts `ids` in the placement's order by the room their hosts have now (hosts the
    /// model lacks last). Candidates are read before the placing transaction, so without
    /// this a burst of creates all tried the host that was best when they read: 40 at once
    /// over 4 equal hosts went 39 to one.
    pub fn rerank(&self, ids: &mut [String]) {
        let m = self.model.read().unwrap();
        ids.sort_by_cached_key(|id| match m.hosts.get(id) {
            Some(h) => (false, Some(self.key(id, h))),
            None => (true, None),
        });
    }

    /// This process reserved room on `host` (the transaction may still roll back: the
    /// next reload corrects that).
    pub fn took(&self, host: &str, b: Booking) {
        self.adjust(host, |h| {
            h.cpus_used += i64::from(b.cpus);
            h.memory_used_mib += i64::from(b.memory_mib);
            h.disk_used_mib += i64::from(b.disk_mib);
        });
    }

    /// This process gave room on `host` back (as the SQL does, never below zero).
    pub fn gave_back(&self, host: &str, b: Booking) {
        self.adjust(host, |h| {
            h.cpus_used = (h.cpus_used - i64::from(b.cpus)).max(0);
            h.memory_used_mib = (h.memory_used_mib - i64::from(b.memory_mib)).max(0);
            h.disk_used_mib = (h.disk_used_mib - i64::from(b.disk_mib)).max(0);
        });
    }

    fn adjust(&self, host: &str, change: impl FnOnce(&mut Host)) {
        let mut m = self.model.write().unwrap();
        let Some(mut h) = m.remove(self, host) else { return };
        change(&mut h);
        m.insert(self, host.to_owned(), h);
    }
}

impl Model {
    fn insert(&mut self, room: &Room, id: String, h: Host) {
        if h.open {
            let key = room.key(&id, &h);
            for hv in &h.hypervisors {
                self.order.entry(*hv).or_default().insert(key.clone());
            }
        }
        self.hosts.insert(id, h);
    }

    fn remove(&mut self, room: &Room, id: &str) -> Option<Host> {
        let h = self.hosts.remove(id)?;
        if h.open {
            let key = room.key(id, &h);
            for hv in &h.hypervisors {
                if let Some(o) = self.order.get_mut(hv) {
                    o.remove(&key);
                }
            }
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(hv: &[HypervisorKind], free: (i64, i64), zone: &str, labels: &str, uefi: bool) -> Host {
        Host {
            open: true,
            hypervisors: hv.to_vec(),
            boot_modes: if uefi { ",bios,uefi,".into() } else { ",bios,".into() },
            zone: zone.into(),
            labels: labels.into(),
            cpus_allocatable: free.1 + 1,
            cpus_used: 1,
            memory_allocatable_mib: free.0 + 100,
            memory_used_mib: 100,
            disk_allocatable_mib: None,
            disk_used_mib: 0,
        }
    }

    fn room(placement: Placement) -> Room {
        use HypervisorKind::*;
        let r = Room::new(placement);
        let mut m = Model { loaded: Some(Instant::now()), ..Default::default() };
        m.insert(&r, "h-a".into(), host(&[Qemu, Kvm], (4096, 4), "z1", ",ssd=true,", false));
        m.insert(&r, "h-b".into(), host(&[Qemu], (8192, 8), "z2", ",", true));
        m.insert(&r, "h-c".into(), host(&[Qemu], (1024, 2), "z1", ",ssd=true,", true));
        m.insert(&r, "h-d".into(), host(&[Lxc], (16384, 16), "z1", ",", false));
        let mut off = host(&[Qemu], (65536, 64), "z1", ",", true);
        off.open = false;
        m.insert(&r, "h-off".into(), off);
        m.insert(&r, "h-e".into(), host(&[Qemu], (4096, 4), "z1", ",", false)); // ties h-a
        *r.model.write().unwrap() = m;
        r.dirty.store(false, Ordering::Release);
        r
    }

    fn pick(r: &Room, cpus: u32, mem: u32, uefi: bool, zone: &str, labels: &[(&str, &str)]) -> Vec<String> {
        let f = Filter {
            zone: zone.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            group: None,
        };
        r.pick(HypervisorKind::Qemu, Booking { cpus, memory_mib: mem, disk_mib: 0 }, uefi, &f)
    }

    #[test]
    fn hosts_are_proposed_in_the_sql_querys_order_and_filters() {
        let spread = room(Placement::Spread);
        assert_eq!(pick(&spread, 1, 64, false, "", &[]), ["h-b", "h-a", "h-e", "h-c"]);
        assert_eq!(pick(&spread, 1, 2048, false, "", &[]), ["h-b", "h-a", "h-e"]);
        assert_eq!(pick(&spread, 5, 2048, false, "", &[]), ["h-b"]);
        assert_eq!(pick(&spread, 1, 64, true, "", &[]), ["h-b", "h-c"], "UEFI firmware");
        assert_eq!(pick(&spread, 1, 64, false, "z1", &[]), ["h-a", "h-e", "h-c"]);
        assert_eq!(pick(&spread, 1, 64, false, "", &[("ssd", "true")]), ["h-a", "h-c"]);
        assert_eq!(pick(&spread, 1, 64, false, "z2", &[("ssd", "true")]), Vec::<String>::new());
        assert_eq!(pick(&spread, 1, 9000, false, "", &[]), Vec::<String>::new());
        let pack = room(Placement::Pack);
        assert_eq!(pick(&pack, 1, 64, false, "", &[]), ["h-c", "h-a", "h-e", "h-b"]);
        assert_eq!(pick(&pack, 1, 2048, false, "", &[]), ["h-a", "h-e", "h-b"]);
    }

    #[test]
    fn reservations_and_releases_move_a_host_in_the_order() {
        let r = room(Placement::Spread);
        r.took("h-b", Booking { cpus: 1, memory_mib: 6000, disk_mib: 0 }); // 2192 MiB left
        assert_eq!(pick(&r, 1, 64, false, "", &[]), ["h-a", "h-e", "h-b", "h-c"]);
        r.took("h-c", Booking { cpus: 2, memory_mib: 0, disk_mib: 0 }); // no vCPU left
        assert_eq!(pick(&r, 1, 64, false, "", &[]), ["h-a", "h-e", "h-b"]);
        r.gave_back("h-b", Booking { cpus: 1, memory_mib: 6000, disk_mib: 0 });
        assert_eq!(pick(&r, 1, 64, false, "", &[])[0], "h-b");
        // Never below zero, as the SQL.
        r.gave_back("h-b", Booking { cpus: 100, memory_mib: 1 << 20, disk_mib: 0 });
        let m = r.model.read().unwrap();
        assert_eq!((m.hosts["h-b"].cpus_used, m.hosts["h-b"].memory_used_mib), (0, 0));
        drop(m);
        r.took("h-unknown", Booking { cpus: 1, memory_mib: 1, disk_mib: 0 }); // a host this model has not read yet: nothing happens
    }

    #[test]
    fn a_host_without_room_for_the_disk_is_not_proposed() {
        let r = room(Placement::Spread);
        {
            let mut m = r.model.write().unwrap();
            let mut h = m.remove(&r, "h-b").unwrap();
            h.disk_allocatable_mib = Some(10_240);
            m.insert(&r, "h-b".into(), h);
        }
        let disk = |disk_mib| Booking { cpus: 1, memory_mib: 64, disk_mib };
        let f = Filter::default();
        assert_eq!(r.pick(HypervisorKind::Qemu, disk(10_240), false, &f)[0], "h-b");
        // The others reported no disk: nothing is booked against them.
        assert_eq!(r.pick(HypervisorKind::Qemu, disk(10_241), false, &f), ["h-a", "h-e", "h-c"]);
        r.took("h-b", disk(8192));
        assert_eq!(r.pick(HypervisorKind::Qemu, disk(4096), false, &f), ["h-a", "h-e", "h-c"]);
        assert_eq!(r.pick(HypervisorKind::Qemu, disk(0), false, &f)[0], "h-b", "a container books no disk");
        r.gave_back("h-b", disk(8192));
        assert_eq!(r.pick(HypervisorKind::Qemu, disk(4096), false, &f)[0], "h-b");
    }

    #[test]
    fn candidates_read_earlier_are_put_in_the_order_of_now() {
        let r = room(Placement::Spread);
        let read = pick(&r, 1, 64, false, "", &[]);
        assert_eq!(read, ["h-b", "h-a", "h-e", "h-c"]);
        r.took("h-b", Booking { cpus: 1, memory_mib: 6000, disk_mib: 0 }); // another create took most of h-b meanwhile
        let mut ids = read.clone();
        ids.push("h-gone".into());
        r.rerank(&mut ids);
        assert_eq!(ids, ["h-a", "h-e", "h-b", "h-c", "h-gone"], "hosts the model lacks go last");
        let pack = room(Placement::Pack);
        let mut ids = vec!["h-b".to_string(), "h-a".into(), "h-c".into()];
        pack.rerank(&mut ids);
        assert_eq!(ids, ["h-c", "h-a", "h-b"]);
    }
}
