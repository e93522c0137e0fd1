//! A read model of instances as the API shows them, in this dcmgr's memory: the reads
//! users repeat most (`GET /instances/{id}` and the list, polled by consoles and
//! scripts) need no SQL while nothing changes (issue 15: reads near the floor).
//!
//! SQL stays the truth: an entry is a copy of what SQL answered, served only while it is
//! known to be current.
//! - Each entry carries the change generation ([`crate::app::event::Hub::generation`])
//!   read before its SQL read began; only entries of the current generation are served.
//!   The generation moves when this process commits a change (`Hub::wake`, called after
//!   every commit that changes what the API shows) and when the event pump reads events,
//!   which is how changes committed by another dcmgr on the same database arrive. So a
//!   read here after a change made here always sees it, and one made through another
//!   dcmgr is seen within the pump's poll (`event::FALLBACK_POLL`).
//! - A change that records no event (an agent's report that moves only `updated_at`) is
//!   seen within [`TTL`]: no entry is older.
//! - Any change invalidates every entry. That is coarse, and simple to keep right: under
//!   a steady stream of changes the reads go to SQL, as they did before.
//!
//! Bounded: past [`MAX_INSTANCES`] instances or [`MAX_LISTS`] lists it starts again empty.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdc_schema::api::{Image, Instance, Page};

/// The oldest an entry may be when it is served.
pub const TTL: Duration = Duration::from_secs(1);
pub const MAX_INSTANCES: usize = 65_536;
pub const MAX_LISTS: usize = 64;
pub const MAX_IMAGES: usize = 4096;

/// A list call: its account and every parameter that shapes the page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    pub account: String,
    pub limit: i64,
    pub cursor: String,
    pub state: Option<String>,
    pub name: Option<String>,
}

struct Entry<T> {
    at: Instant,
    value: Arc<T>,
}

impl<T> Entry<T> {
    fn fresh(&self) -> Option<Arc<T>> {
        (self.at.elapsed() < TTL).then(|| self.value.clone())
    }
}

#[derive(Default)]
struct Inner {
    /// The generation of every entry held: entries of an older one are dropped when one
    /// read at a newer generation comes ([`Inner::admit`]).
    gen: u64,
    /// instance ID → (its account, the instance)
    instances: HashMap<String, (String, Entry<Instance>)>,
    lists: HashMap<ListKey, Entry<Page<Instance>>>,
}

impl Inner {
    /// Whether an entry read at `gen` may be kept: never one older than what is held.
    fn admit(&mut self, gen: u64) -> bool {
        if gen > self.gen {
            self.instances.clear();
            self.lists.clear();
            self.gen = gen;
        }
        gen == self.gen
    }
}

/// Images as an account may boot them ([`Views::image`]), with their own generation.
#[derive(Default)]
struct Images {
    gen: u64,
    /// image ID → account → the image as that account sees it (looked up by `&str`,
    /// without building a key on every create)
    held: HashMap<String, HashMap<String, Entry<Image>>>,
    /// Entries in `held`, all accounts counted.
    count: usize,
}

#[derive(Default)]
pub struct Views {
    inner: Mutex<Inner>,
    /// Every create reads its image, and images rarely change: these are kept at the
    /// image generation ([`crate::app::event::Hub::image_generation`]), which moves only
    /// when the event pump reads an image's event (every change of an image, or of the
    /// accounts it is shared with, records one), so the creates and reports that move
    /// the instances' generation leave them current. A change is seen once the pump has
    /// read it: woken by the commit here, within its poll from another dcmgr. A create
    /// that used an image deleted meanwhile is still refused: its transaction locks the
    /// image's row.
    images: Mutex<Images>,
    /// Lookups answered from memory, and not (for `/metrics`).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Views {
    /// Instance `id` of `account`, if held and current at generation `gen`.
    pub fn instance(&self, gen: u64, account: &str, id: &str) -> Option<Arc<Instance>> {
        let found = {
            let inner = self.inner.lock().expect("views lock");
            let held = inner.instances.get(id).filter(|(owner, _)| inner.gen == gen && owner == account);
            held.and_then(|(_, e)| e.fresh())
        };
        self.count(found)
    }

    fn count<T>(&self, found: Option<T>) -> Option<T> {
        let n = if found.is_some() { &self.hits } else { &self.misses };
        n.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Lookups so far: (answered from memory, not).
    pub fn reads(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Keeps what SQL answered for instance `id` of `account`; `gen` is the generation
    /// read before that SQL read began.
    pub fn put_instance(&self, gen: u64, account: &str, id: &str, value: Arc<Instance>) {
        let mut inner = self.inner.lock().expect("views lock");
        if !inner.admit(gen) {
            return;
        }
        if inner.instances.len() >= MAX_INSTANCES {
            inner.instances.clear();
        }
        inner.instances.insert(id.to_owned(), (account.to_owned(), Entry { at: Instant::now(), value }));
    }

    /// Image `id` as `account` may see it, if held and current at image generation `gen`.
    /// Not counted in [`Views::reads`], which `/metrics` shows as instance reads.
    pub fn image(&self, gen: u64, account: &str, id: &str) -> Option<Arc<Image>> {
        let images = self.images.lock().expect("views lock");
        if images.gen != gen {
            return None;
        }
        images.held.get(id)?.get(account)?.fresh()
    }

    /// Keeps what SQL answered for image `id` as `account` sees it; `gen` is the image
    /// generation read before that SQL read began.
    pub fn put_image(&self, gen: u64, account: &str, id: &str, value: Arc<Image>) {
        let mut images = self.images.lock().expect("views lock");
        if gen > images.gen {
            *images = Images { gen, ..Images::default() };
        }
        if gen != images.gen {
            return;
        }
        if images.count >= MAX_IMAGES {
            *images = Images { gen, ..Images::default() };
        }
        let entry = Entry { at: Instant::now(), value };
        if images.held.entry(id.to_owned()).or_default().insert(account.to_owned(), entry).is_none() {
            images.count += 1;
        }
    }

    pub fn list(&self, gen: u64, key: &ListKey) -> Option<Arc<Page<Instance>>> {
        let found = {
            let inner = self.inner.lock().expect("views lock");
            inner.lists.get(key).filter(|_| inner.gen == gen).and_then(|e| e.fresh())
        };
        self.count(found)
    }

    pub fn put_list(&self, gen: u64, key: ListKey, value: Arc<Page<Instance>>) {
        let mut inner = self.inner.lock().expect("views lock");
        if !inner.admit(gen) {
            return;
        }
        if inner.lists.len() >= MAX_LISTS {
            inner.lists.clear();
        }
        inner.lists.insert(key, Entry { at: Instant::now(), value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Arc<Instance> {
        let json = serde_json::json!({
            "id": "i-1m8s7q6xd00kqdx", "account_id": "a-1", "name": "vm", "state": "running", "goal": "running",
            "image_id": "img-1m8s7q6ww001y2n", "hypervisor": "qemu", "cpus": 1, "memory_mib": 256,
            "host_node_id": null, "ssh_key_id": null, "server_group_id": null, "root_disk_size": null,
            "interfaces": [], "volumes": [], "failure_reason": null,
            "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:00Z"
        });
        Arc::new(serde_json::from_value(json).expect("an instance"))
    }

    #[test]
    fn only_the_current_generation_of_the_owning_account_is_served() {
        let v = Views::default();
        v.put_instance(3, "acc-a", "i-1", instance());
        assert!(v.instance(3, "acc-a", "i-1").is_some());
        assert!(v.instance(3, "acc-b", "i-1").is_none(), "another account's instance is not found");
        assert!(v.instance(4, "acc-a", "i-1").is_none(), "a change since the read hides it");
        // A read that began before the newest change held is not kept.
        v.put_instance(5, "acc-a", "i-2", instance());
        v.put_instance(4, "acc-a", "i-1", instance());
        assert!(v.instance(4, "acc-a", "i-1").is_none() && v.instance(5, "acc-a", "i-1").is_none());
        assert!(v.instance(5, "acc-a", "i-2").is_some());
        let key = ListKey { account: "acc-a".into(), limit: 100, cursor: String::new(), state: None, name: None };
        v.put_list(5, key.clone(), Arc::new(Page { items: vec![], next_cursor: None }));
        assert!(v.list(5, &key).is_some());
        assert!(v.list(6, &key).is_none());
        assert!(v.list(5, &ListKey { limit: 10, ..key.clone() }).is_none());
        // A newer generation drops everything older.
        v.put_instance(6, "acc-a", "i-3", instance());
        assert!(v.list(5, &key).is_none() && v.instance(5, "acc-a", "i-2").is_none());
        assert_eq!(v.reads(), (3, 8), "lookups answered from memory, and not");
    }

    #[test]
    fn images_are_kept_per_account_at_their_own_generation() {
        let image: Arc<Image> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "id": "img-1m8s7q6ww001y2n", "name": "tiny", "format": "raw", "arch": "x86_64",
                "hypervisors": ["qemu"], "source": "", "checksum": null, "state": "available",
                "failure_reason": null, "size_bytes": null, "initrd": null, "kernel_cmdline": null,
                "kernel_id": null, "min_disk": null, "min_memory": null, "os": null, "public": false,
                "created_at": "2026-12-01T00:00:00Z"
            }))
            .expect("an image"),
        );
        let v = Views::default();
        v.put_image(2, "acc-a", "img-1", image.clone());
        assert!(v.image(2, "acc-a", "img-1").is_some());
        assert!(v.image(2, "acc-b", "img-1").is_none(), "kept for the account that read it only");
        // The instances' generation does not touch images; an image change hides them.
        v.put_instance(9, "acc-a", "i-1", instance());
        assert!(v.image(2, "acc-a", "img-1").is_some());
        assert!(v.image(3, "acc-a", "img-1").is_none());
        // A read that began before the newest image change is not kept.
        v.put_image(3, "acc-b", "img-1", image.clone());
        v.put_image(2, "acc-a", "img-1", image.clone());
        assert!(v.image(2, "acc-a", "img-1").is_none() && v.image(3, "acc-b", "img-1").is_some());
        v.images.lock().unwrap().held.values_mut().flat_map(|a| a.values_mut()).for_each(|e| e.at -= TTL);
        assert!(v.image(3, "acc-b", "img-1").is_none(), "an entry older than the TTL is read again");
    }

    #[test]
    fn entries_expire_and_the_maps_stay_bounded() {
        let v = Views::default();
        v.put_instance(1, "acc-a", "i-old", instance());
        v.inner.lock().unwrap().instances.get_mut("i-old").unwrap().1.at -= TTL;
        assert!(v.instance(1, "acc-a", "i-old").is_none(), "an entry older than the TTL is read again");
        for i in 0..=MAX_INSTANCES {
            v.put_instance(1, "acc-a", &format!("i-{i}"), instance());
        }
        assert!(v.inner.lock().unwrap().instances.len() <= MAX_INSTANCES);
        for i in 0..=MAX_LISTS as i64 {
            let key = ListKey { account: "acc-a".into(), limit: i + 1, cursor: String::new(), state: None, name: None };
            v.put_list(1, key, Arc::new(Page { items: vec![], next_cursor: None }));
        }
        assert!(v.inner.lock().unwrap().lists.len() <= MAX_LISTS);
    }
}
