//! The bundle reader's fuzzer (issue 13, point 7), shared by `tests/fuzz.rs` (a few
//! thousand cases in `cargo test`) and `examples/fuzz.rs` (millions, with figures).
//!
//! Valid bundles are built with the crate's [`Writer`] (networks, groups referring to
//! each other, key pairs, a kernel and a disk image with data, instances with root disks,
//! volumes with data, floating-IP intents; one with chunks and one model-only), signed
//! with a trusted test key. Each case applies one structured mutation, chosen by a seeded
//! xorshift generator: to the stream's bytes (truncations at every kind of boundary, bit
//! flips, inserted and deleted bytes, lengths rewritten, zstd bombs, chunks duplicated,
//! dropped, added, reordered or altered, signatures from an untrusted key or garbage,
//! frames out of order) or to the manifest, re-signed with the trusted key so that it
//! reaches the checks behind the signature (versions, IDs, names, references, kernel
//! cycles, counts, limits, chunk lists, raw JSON edits). Each mutation says what the
//! reader must do: refuse it (with one of the listed codes), accept it as the original
//! (a reorder), accept it as changed (a semantically valid edit), or either (a random
//! edit: then what it accepts must pass [`invariants`], an independent statement of the
//! documented rules). A panic is caught and reported; the heap the reader allocates is
//! counted per thread and checked against a bound.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use vdc_bundle::*;
use vdc_schema::state::{Arch, BootMode, Direction, HypervisorKind, ImageFormat, Protocol, ServerGroupPolicy};

// ------------------------------------------------------------------ memory

/// Counts the bytes each thread has live on the heap, and the peak since a reset.
pub struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        account(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            account(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f`, returning its result and the most heap it had live at once (this thread).
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(|p| p.get());
    (out, (peak - base).max(0) as usize)
}

// ------------------------------------------------------------------ randomness

/// xorshift64*: small, fast and reproducible from one number.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64, so that neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------------ the seeds

/// The limits the fuzzer reads with: small, so that counts and sizes are cheap to exceed.
pub fn limits() -> Limits {
    Limits { max_manifest_bytes: 256 << 10, max_objects: 32, max_rules: 16, max_chunks: 64, max_user_data: 4096 }
}

const SIGNING_CONTEXT: &[u8] = b"vdc-bundle-manifest\0";

/// One frame of a bundle's bytes: where its header starts, its tag, its payload's length.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub at: usize,
    pub tag: u8,
    pub len: usize,
}

impl Frame {
    fn end(&self) -> usize {
        self.at + 5 + self.len
    }
}

pub fn frames(b: &[u8]) -> Vec<Frame> {
    let mut out = vec![];
    let mut at = MAGIC.len();
    while at + 5 <= b.len() {
        let len = u32::from_be_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push(Frame { at, tag: b[at], len });
        at += 5 + len;
    }
    out
}

/// A valid bundle and what reading it gives.
pub struct Seed {
    pub name: &'static str,
    pub manifest: Manifest,
    /// Chunks' uncompressed bytes, by hash.
    pub chunks: BTreeMap<String, Vec<u8>>,
    pub bytes: Vec<u8>,
    pub frames: Vec<Frame>,
    pub json: Vec<u8>,
}

impl Seed {
    fn chunk_frames(&self) -> Vec<Frame> {
        self.frames.iter().copied().filter(|f| f.tag == b'C').collect()
    }
    fn end_frame(&self) -> Frame {
        *self.frames.last().unwrap()
    }
}

pub struct Corpus {
    pub key: SigningKey,
    pub untrusted: SigningKey,
    pub trusted: Vec<VerifyingKey>,
    pub limits: Limits,
    pub seeds: Vec<Seed>,
    /// Compressed payloads that decompress far beyond any listed chunk size.
    pub bombs: Vec<(&'static str, Vec<u8>)>,
}

fn data(rng: &mut Rng, n: usize) -> Vec<u8> {
    // Compressible but not trivial: runs of a few random bytes.
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let b = rng.next() as u8;
        let run = 1 + rng.below(12);
        v.extend(std::iter::repeat_n(b, run.min(n - v.len())));
    }
    v
}

/// A blob of `parts` chunks (each listed once in `chunks`, reused if already there).
fn blob(parts: &[&Vec<u8>], chunks: &mut Vec<ChunkRef>, store: &mut BTreeMap<String, Vec<u8>>) -> BlobRef {
    let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut hashes = vec![];
    for p in parts {
        let h = sha256_hex(p);
        if !store.contains_key(&h) {
            chunks.push(ChunkRef { sha256: h.clone(), size: p.len() as u64 });
            store.insert(h.clone(), (*p).clone());
        }
        hashes.push(h);
    }
    BlobRef { sha256: sha256_hex(&whole), size: whole.len() as u64, chunks: hashes }
}

fn rule(group: Option<&str>, cidr: Option<&str>, port: u16) -> Rule {
    Rule {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        port_min: Some(port),
        port_max: Some(port),
        cidr: cidr.map(str::to_owned),
        group: group.map(str::to_owned),
    }
}

fn nic(network: &str, ip: &str, mac: u8, groups: &[&str]) -> Interface {
    Interface {
        network: network.into(),
        ip: ip.into(),
        mac: format!("52:54:00:00:00:{mac:02x}"),
        security_groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// The full model: with data (`with_data`) or model-only.
fn model(key: &SigningKey, with_data: bool) -> (Manifest, BTreeMap<String, Vec<u8>>) {
    let mut rng = Rng::new(42);
    let mut chunks = vec![];
    let mut store = BTreeMap::new();
    let kernel = data(&mut rng, 700);
    let (d1, d2, d3) = (data(&mut rng, 1500), data(&mut rng, 900), data(&mut rng, 333));
    let (r1, v1) = (data(&mut rng, 1200), data(&mut rng, 600));
    let mut b = |parts: &[&Vec<u8>]| with_data.then(|| blob(parts, &mut chunks, &mut store));
    let kernel_blob = b(&[&kernel]);
    // The disk image shares a chunk with the kernel, and repeats one of its own.
    let disk_blob = b(&[&d1, &d2, &kernel, &d2, &d3]);
    let root_blob = b(&[&r1, &d3]);
    let vol_blob = b(&[&v1]);
    let image = |id: &str, name: &str, format: ImageFormat, kernel: Option<&str>, blob: Option<BlobRef>| Image {
        id: id.into(),
        name: name.into(),
        format,
        arch: Arch::X86_64,
        hypervisors: vec![HypervisorKind::Qemu, HypervisorKind::Kvm],
        boot_mode: BootMode::Bios,
        kernel_id: kernel.map(str::to_owned),
        min_disk: None,
        min_memory: Some(64 << 20),
        os: Some("debian-12".into()),
        default_user: Some("debian".into()),
        blob,
        deleted: false,
    };
    let net = |id: &str, name: &str, n: u8| Network {
        id: id.into(),
        name: name.into(),
        cidr: format!("10.{n}.0.0/24"),
        gateway: format!("10.{n}.0.1"),
        dhcp_start: format!("10.{n}.0.10"),
        dhcp_end: format!("10.{n}.0.200"),
    };
    let group = |id: &str, name: &str, rules: Vec<Rule>| SecurityGroup {
        id: id.into(),
        name: name.into(),
        description: format!("the {name} tier"),
        rules,
    };
    let instance = |id: &str, name: &str, image: &str, nics: Vec<Interface>| Instance {
        id: id.into(),
        name: name.into(),
        hostname: name.into(),
        image: image.into(),
        hypervisor: HypervisorKind::Qemu,
        cpus: 1,
        memory_mib: 128,
        root_disk_size: None,
        keypair: None,
        user_data: None,
        interfaces: nics,
        root_disk: None,
        root_disk_format: None,
        stopped: false,
        zone: None,
        host_labels: Default::default(),
        server_group: None,
    };
    let mut web = instance(
        "i-web",
        "web",
        "img-disk",
        vec![nic("nw-front", "10.1.0.20", 1, &["sg-web"]), nic("nw-back", "10.2.0.20", 2, &[])],
    );
    web.keypair = Some("kp-deploy".into());
    web.user_data = Some("#cloud-config\nhostname: web\n".into());
    web.root_disk_format = root_blob.as_ref().map(|_| ImageFormat::Raw);
    web.root_disk = root_blob;
    let mut db = instance("i-db", "db", "img-pub", vec![nic("nw-back", "10.2.0.30", 3, &["sg-db", "sg-mgmt"])]);
    db.stopped = true;
    db.hypervisor = HypervisorKind::Kvm;
    db.zone = Some("z1".into());
    db.host_labels = [("disk/type".to_string(), "ssd".to_string())].into_iter().collect();
    let mut ops = instance("i-ops", "ops", "img-disk", vec![nic("nw-mgmt", "10.3.0.5", 4, &["sg-mgmt"])]);
    web.server_group = Some("srvg-ha".into());
    ops.server_group = Some("srvg-ha".into());
    let m = Manifest {
        format_version: FORMAT_VERSION,
        source: Source {
            site_key: key_hex(&key.verifying_key()),
            vdc_id: "a-fuzz".into(),
            exported_at: "2026-12-01T03:00:00.123Z".into(),
        },
        model: Model {
            networks: vec![net("nw-front", "front", 1), net("nw-back", "back", 2), net("nw-mgmt", "mgmt", 3)],
            security_groups: vec![
                group("sg-web", "web", vec![rule(None, Some("0.0.0.0/0"), 80), rule(Some("sg-web"), None, 22)]),
                group("sg-db", "db", vec![rule(Some("sg-web"), None, 5432), rule(Some("sg-mgmt"), None, 22)]),
                group("sg-mgmt", "mgmt", vec![rule(Some("sg-db"), None, 9100)]),
            ],
            keypairs: vec![
                KeyPair {
                    id: "kp-deploy".into(),
                    name: "deploy".into(),
                    public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzz deploy"
                        .into(),
                },
                KeyPair {
                    id: "kp-ops".into(),
                    name: "ops".into(),
                    public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsOpsOpsOpsOpsOpsOpsOpsOpsOpsOpsOpsOps ops"
                        .into(),
                },
            ],
            images: vec![
                image("img-k", "vmlinuz", ImageFormat::Kernel, None, kernel_blob),
                image("img-disk", "app-disk", ImageFormat::Raw, Some("img-k"), disk_blob),
                image("img-pub", "debian-12", ImageFormat::Qcow2, None, None),
            ],
            instances: vec![web, db, ops],
            volumes: vec![
                Volume {
                    id: "vol-data".into(),
                    name: "data".into(),
                    size_mib: 1,
                    data_format: vol_blob.as_ref().map(|_| ImageFormat::Raw),
                    data: vol_blob,
                    attached_to: Some("i-db".into()),
                },
                Volume {
                    id: "vol-empty".into(),
                    name: "scratch".into(),
                    size_mib: 8,
                    data: None,
                    data_format: None,
                    attached_to: None,
                },
            ],
            floating_ips: vec![
                FloatingIp { id: "fip-web".into(), instance: Some("i-web".into()) },
                FloatingIp { id: "fip-spare".into(), instance: None },
            ],
            server_groups: vec![ServerGroup {
                id: "srvg-ha".into(),
                name: "ha".into(),
                policy: ServerGroupPolicy::AntiAffinity,
            }],
        },
        chunks,
    };
    (m, store)
}

fn write_bundle(m: &Manifest, chunks: &BTreeMap<String, Vec<u8>>, key: &SigningKey) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), m, key).unwrap();
    for c in &m.chunks {
        w.write_chunk(&chunks[&c.sha256]).unwrap();
    }
    w.finish(m.chunks.len() as u64).unwrap()
}

fn seed(name: &'static str, key: &SigningKey, with_data: bool) -> Seed {
    let (manifest, chunks) = model(key, with_data);
    let bytes = write_bundle(&manifest, &chunks, key);
    let frames = frames(&bytes);
    let json = bytes[frames[0].at + 5..frames[0].end()].to_vec();
    Seed { name, manifest, chunks, bytes, frames, json }
}

impl Corpus {
    pub fn new() -> Corpus {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let untrusted = SigningKey::from_bytes(&[9u8; 32]);
        let seeds = vec![seed("full", &key, true), seed("model-only", &key, false)];
        // 64 MiB of zeros in a few KiB, its size in the frame header.
        let zeros = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        // 32 MiB without a declared size, with a 128 MiB window (zstd's largest by default):
        // a streaming decoder would allocate the window before the first byte.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.window_log(27).unwrap();
        std::io::Write::write_all(&mut enc, &vec![1u8; 32 << 20]).unwrap();
        let window = enc.finish().unwrap();
        // A skippable frame, then the zeros.
        let mut skip = vec![0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skip.extend_from_slice(&zeros);
        // Two frames, each the largest chunk.
        let max = zstd::bulk::compress(&vec![3u8; CHUNK_SIZE], 1).unwrap();
        let twice = [max.clone(), max].concat();
        let bombs = vec![
            ("64 MiB of zeros", zeros),
            ("no size, 128 MiB window", window),
            ("skippable+zeros", skip),
            ("two 4 MiB frames", twice),
        ];
        Corpus { trusted: vec![key.verifying_key()], key, untrusted, limits: limits(), seeds, bombs }
    }
}

impl Default for Corpus {
    fn default() -> Self {
        Corpus::new()
    }
}

// ------------------------------------------------------------------ cases

/// What the reader must do with a case.
#[derive(Debug, Clone)]
pub enum Want {
    /// Refuse it, with one of these codes (any code when empty).
    Refuse(&'static [&'static str]),
    /// Refuse it, or read exactly the seed (the mutation may not have changed anything a
    /// reader can tell, e.g. in zstd's framing, which the hash does not cover).
    SameOrRefuse,
    /// Read it: exactly this manifest (and its chunks).
    Accept(Box<Manifest>),
    /// Anything but a panic; what it accepts must pass [`invariants`].
    Valid,
}

pub struct Case {
    pub what: String,
    pub seed: usize,
    pub bytes: Vec<u8>,
    pub want: Want,
}

const TRUNCATED: &[&str] = &["bundle_truncated"];
const BAD_FRAME: &[&str] = &["bundle_bad_frame"];
const INVALID: &[&str] = &["bundle_invalid_manifest"];
const BAD_NAME: &[&str] = &["bundle_invalid_name"];
const DANGLING: &[&str] = &["bundle_dangling_reference"];
const ANY: &[&str] = &[];

fn put_len(b: &mut [u8], f: Frame, len: u32) {
    b[f.at + 1..f.at + 5].copy_from_slice(&len.to_be_bytes());
}

fn frame_bytes(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn sign(json: &[u8], key: &SigningKey) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let sig = key.sign(&[SIGNING_CONTEXT, json].concat());
    [key.verifying_key().as_bytes().as_slice(), &sig.to_bytes()].concat()
}

/// The seed's stream with another manifest (bytes), signed by `key`; chunks and end as
/// they were.
pub fn resigned(s: &Seed, json: &[u8], key: &SigningKey) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend(frame_bytes(b'M', json));
    b.extend(frame_bytes(b'S', &sign(json, key)));
    b.extend_from_slice(&s.bytes[s.frames[2].at..]);
    b
}

/// A chunk frame: `hash` (hex) and a compressed payload.
fn chunk_frame(hash: &str, z: &[u8]) -> Vec<u8> {
    frame_bytes(b'C', &[hex::decode(hash).unwrap(), z.to_vec()].concat())
}

/// One byte-level mutation of the seed's stream.
fn mutate_stream(c: &Corpus, s: &Seed, r: &mut Rng) -> (String, Vec<u8>, Want) {
    let b = &s.bytes;
    let chunks = s.chunk_frames();
    let end = s.end_frame();
    let some_frame = |r: &mut Rng| *r.pick(&s.frames);
    match r.below(20) {
        // Truncation at every kind of boundary: in the magic, at a frame, in its header,
        // at its payload, in it, at its last byte; or anywhere.
        0 | 1 => {
            let f = some_frame(r);
            let cut = match r.below(8) {
                0 => r.below(MAGIC.len() + 1),
                1 => f.at,
                2 => f.at + 1 + r.below(4),
                3 => f.at + 5,
                4 => f.at + 5 + r.below(f.len.max(1)),
                5 => f.end() - 1,
                _ => r.below(b.len()),
            };
            (format!("truncated at {cut} of {}", b.len()), b[..cut].to_vec(), Want::Refuse(TRUNCATED))
        }
        // Bit flips: anywhere, or in a frame's header or payload.
        2 | 3 => {
            let mut v = b.clone();
            let n = 1 + r.below(3);
            let mut at = vec![];
            for _ in 0..n {
                let f = some_frame(r);
                let i = match r.below(3) {
                    0 => r.below(v.len()),
                    1 => f.at + r.below(5),
                    _ => f.at + 5 + r.below(f.len.max(1)).min(f.len.saturating_sub(1)),
                };
                let bit = r.below(8);
                v[i] ^= 1 << bit;
                at.push(format!("{i}.{bit}"));
            }
            (format!("bits flipped at {}", at.join(",")), v, Want::SameOrRefuse)
        }
        // Bytes inserted or deleted.
        4 => {
            let mut v = b.clone();
            let i = r.below(v.len() + 1);
            let n = 1 + r.below(16);
            let ins = r.bytes(n);
            v.splice(i..i, ins.iter().copied());
            (format!("{} bytes inserted at {i}", ins.len()), v, Want::SameOrRefuse)
        }
        5 => {
            let mut v = b.clone();
            let i = r.below(v.len());
            let n = (1 + r.below(64)).min(v.len() - i);
            v.drain(i..i + n);
            (format!("{n} bytes deleted at {i}"), v, Want::SameOrRefuse)
        }
        // A frame's length rewritten: oversized, off by one, zero.
        6 | 7 => {
            let f = some_frame(r);
            let lens = [
                u32::MAX,
                0x8000_0000,
                (c.limits.max_manifest_bytes + 1) as u32,
                (MAX_COMPRESSED + 33) as u32,
                (CHUNK_SIZE * 2) as u32,
                f.len as u32 + 1,
                (f.len as u32).wrapping_sub(1),
                0,
                31,
                95,
                97,
                7,
                9,
            ];
            let len = *r.pick(&lens);
            let mut v = b.clone();
            put_len(&mut v, f, len);
            (format!("frame {} at {} given length {len}", f.tag as char, f.at), v, Want::SameOrRefuse)
        }
        // A zstd bomb under a listed chunk's hash.
        8 if !chunks.is_empty() => {
            let f = *r.pick(&chunks);
            let (name, z) = r.pick(&c.bombs);
            let hash = hex::encode(&b[f.at + 5..f.at + 5 + 32]);
            let mut v = b[..f.at].to_vec();
            v.extend(chunk_frame(&hash, z));
            v.extend_from_slice(&b[f.end()..]);
            (format!("zstd bomb ({name}) as chunk {hash}"), v, Want::Refuse(&["bundle_chunk_too_large"]))
        }
        // One byte more than the chunk's listed size, validly compressed.
        9 if !chunks.is_empty() => {
            let f = *r.pick(&chunks);
            let hash = hex::encode(&b[f.at + 5..f.at + 5 + 32]);
            let mut data = s.chunks[&hash].clone();
            data.push(r.next() as u8);
            let z = zstd::bulk::compress(&data, 1).unwrap();
            let mut v = b[..f.at].to_vec();
            v.extend(chunk_frame(&hash, &z));
            v.extend_from_slice(&b[f.end()..]);
            (format!("chunk {hash} one byte longer than listed"), v, Want::Refuse(&["bundle_chunk_too_large"]))
        }
        // A chunk twice.
        10 if !chunks.is_empty() => {
            let f = *r.pick(&chunks);
            let g = *r.pick(&chunks);
            let mut v = b[..g.end()].to_vec();
            v.extend_from_slice(&b[f.at..f.end()]);
            v.extend_from_slice(&b[g.end()..]);
            (format!("chunk frame at {} repeated after {}", f.at, g.at), v, Want::Refuse(&["bundle_chunk_duplicate"]))
        }
        // A chunk missing (the end frame's count left, or corrected).
        11 if !chunks.is_empty() => {
            let f = *r.pick(&chunks);
            let mut v = b[..f.at].to_vec();
            v.extend_from_slice(&b[f.end()..]);
            if r.chance(2) {
                let n = v.len();
                v[n - 8..].copy_from_slice(&(chunks.len() as u64 - 1).to_be_bytes());
            }
            (format!("chunk frame at {} dropped", f.at), v, Want::Refuse(&["bundle_chunk_missing"]))
        }
        // A chunk nobody listed, anywhere among the chunks.
        12 => {
            let n = 1 + r.below(100);
            let extra = r.bytes(n);
            let z = zstd::bulk::compress(&extra, 1).unwrap();
            let at = r.pick(&[s.frames[2].at, end.at]).to_owned();
            let mut v = b[..at].to_vec();
            v.extend(chunk_frame(&sha256_hex(&extra), &z));
            v.extend_from_slice(&b[at..]);
            (format!("an unlisted chunk at {at}"), v, Want::Refuse(&["bundle_chunk_unlisted"]))
        }
        // Chunks reordered: still the same bundle.
        13 if chunks.len() > 1 => {
            let mut order: Vec<Frame> = chunks.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, r.below(i + 1));
            }
            let mut v = b[..chunks[0].at].to_vec();
            for f in &order {
                v.extend_from_slice(&b[f.at..f.end()]);
            }
            v.extend_from_slice(&b[end.at..]);
            ("chunks shuffled".into(), v, Want::Accept(Box::new(s.manifest.clone())))
        }
        // A chunk's bytes changed (validly compressed, under its hash), or another
        // chunk's payload under its hash.
        14 if !chunks.is_empty() => {
            let f = *r.pick(&chunks);
            let hash = hex::encode(&b[f.at + 5..f.at + 5 + 32]);
            let (what, z) = if r.chance(2) {
                let mut data = s.chunks[&hash].clone();
                let i = r.below(data.len());
                data[i] ^= 1 << r.below(8);
                (format!("chunk {hash}: byte {i} changed"), zstd::bulk::compress(&data, 1).unwrap())
            } else {
                let g = *r.pick(&chunks);
                (format!("chunk {hash}: the payload of the frame at {}", g.at), b[g.at + 5 + 32..g.end()].to_vec())
            };
            let mut v = b[..f.at].to_vec();
            v.extend(chunk_frame(&hash, &z));
            v.extend_from_slice(&b[f.end()..]);
            let same = s.chunks[&hash] == zstd::bulk::decompress(&z, CHUNK_SIZE).unwrap_or_default();
            let want = if same {
                Want::Accept(Box::new(s.manifest.clone()))
            } else {
                Want::Refuse(&["bundle_chunk_mismatch", "bundle_chunk_too_large"])
            };
            (what, v, want)
        }
        // The end frame: a wrong count, data after it, missing.
        15 => {
            let mut v = b.clone();
            match r.below(3) {
                0 => {
                    let n = v.len();
                    let count = u64::from_be_bytes(v[n - 8..].try_into().unwrap());
                    v[n - 8..].copy_from_slice(&(count ^ (1 + r.below(1000) as u64)).to_be_bytes());
                    ("the end frame's count changed".into(), v, Want::Refuse(BAD_FRAME))
                }
                1 => {
                    let n = 1 + r.below(20);
                    v.extend(r.bytes(n));
                    ("data after the end frame".into(), v, Want::Refuse(BAD_FRAME))
                }
                _ => ("no end frame".into(), b[..end.at].to_vec(), Want::Refuse(TRUNCATED)),
            }
        }
        // The manifest signed by a key this site does not trust.
        16 => (
            "signed by an untrusted key".into(),
            resigned(s, &s.json, &c.untrusted),
            Want::Refuse(&["bundle_untrusted_key"]),
        ),
        // A signature frame of garbage, or the trusted key's with another key's signature.
        17 => {
            let mut sig = if r.chance(2) { r.bytes(96) } else { sign(&s.json, &c.untrusted) };
            sig[..32].copy_from_slice(c.key.verifying_key().as_bytes());
            let mut v = MAGIC.to_vec();
            v.extend(frame_bytes(b'M', &s.json));
            v.extend(frame_bytes(b'S', &sig));
            v.extend_from_slice(&b[s.frames[2].at..]);
            ("a forged signature".into(), v, Want::Refuse(&["bundle_bad_signature"]))
        }
        // Frames out of order, an unknown tag, another magic.
        18 => {
            let (m, sf) = (s.frames[0], s.frames[1]);
            match r.below(4) {
                0 => {
                    let mut v = MAGIC.to_vec();
                    v.extend_from_slice(&b[sf.at..sf.end()]);
                    v.extend_from_slice(&b[m.at..m.end()]);
                    v.extend_from_slice(&b[sf.end()..]);
                    ("signature before manifest".into(), v, Want::Refuse(BAD_FRAME))
                }
                1 => {
                    let mut v = b[..end.at].to_vec();
                    v.extend_from_slice(&b[m.at..m.end()]);
                    v.extend_from_slice(&b[end.at..]);
                    ("a second manifest among the chunks".into(), v, Want::Refuse(BAD_FRAME))
                }
                2 => {
                    let mut v = b.clone();
                    let f = some_frame(r);
                    let tag = loop {
                        let t = r.next() as u8;
                        if !b"MSCE".contains(&t) {
                            break t;
                        }
                    };
                    v[f.at] = tag;
                    (format!("frame at {} given tag {tag:#04x}", f.at), v, Want::Refuse(BAD_FRAME))
                }
                _ => {
                    let mut v = b.clone();
                    let i = r.below(MAGIC.len());
                    v[i] ^= 1 + r.below(255) as u8;
                    ("the magic changed".into(), v, Want::Refuse(&["bundle_bad_magic"]))
                }
            }
        }
        // Random garbage, or a prefix of the bundle followed by garbage.
        _ => {
            let keep = r.below(b.len());
            let mut v = b[..keep].to_vec();
            let n = r.below(200);
            v.extend(r.bytes(n));
            (format!("garbage after {keep} bytes"), v, Want::SameOrRefuse)
        }
    }
}

const BAD_NAMES: &[&str] = &[
    "",
    " lead",
    "trail ",
    "bell\u{7}",
    "line\nbreak",
    "tab\there",
    "\u{202E}gnp.exe",
    "iso\u{2066}late",
    "zero\u{200B}width",
    "bom\u{FEFF}",
    "nb\u{A0}sp",
    "soft\u{AD}hyphen",
    "a/b",
    "a\\b",
    "..",
    "x..y",
    "del\u{7F}",
    "nul\0",
];
const GOOD_NAMES: &[&str] = &["café ☕", "a b", "日本語", "x", "UPPER-lower_09", "émoji 🚀"];
const BAD_IDS: &[&str] = &["", "../x", "a b", "é", "-x", "a/b", "a\0", "x.y", "\u{202E}x"];

fn names_of(m: &mut Manifest, k: usize) -> Vec<&mut String> {
    let md = &mut m.model;
    match k {
        0 => md.networks.iter_mut().map(|x| &mut x.name).collect(),
        1 => md.security_groups.iter_mut().map(|x| &mut x.name).collect(),
        2 => md.keypairs.iter_mut().map(|x| &mut x.name).collect(),
        3 => md.images.iter_mut().map(|x| &mut x.name).collect(),
        4 => md.instances.iter_mut().map(|x| &mut x.name).collect(),
        _ => md.volumes.iter_mut().map(|x| &mut x.name).collect(),
    }
}

fn ids_of(m: &mut Manifest, k: usize) -> Vec<&mut String> {
    let md = &mut m.model;
    match k {
        0 => md.networks.iter_mut().map(|x| &mut x.id).collect(),
        1 => md.security_groups.iter_mut().map(|x| &mut x.id).collect(),
        2 => md.keypairs.iter_mut().map(|x| &mut x.id).collect(),
        3 => md.images.iter_mut().map(|x| &mut x.id).collect(),
        4 => md.instances.iter_mut().map(|x| &mut x.id).collect(),
        5 => md.volumes.iter_mut().map(|x| &mut x.id).collect(),
        _ => md.floating_ips.iter_mut().map(|x| &mut x.id).collect(),
    }
}

/// A duplicate of one object of kind `k` (same ID).
fn duplicate(m: &mut Manifest, k: usize) {
    let md = &mut m.model;
    match k {
        0 => md.networks.push(md.networks[0].clone()),
        1 => md.security_groups.push(md.security_groups[1].clone()),
        2 => md.keypairs.push(md.keypairs[1].clone()),
        3 => md.images.push(md.images[2].clone()),
        4 => md.instances.push(md.instances[2].clone()),
        5 => md.volumes.push(md.volumes[1].clone()),
        _ => md.floating_ips.push(md.floating_ips[1].clone()),
    }
}

/// A structured change of the manifest (to be re-signed with the trusted key).
fn mutate_manifest(c: &Corpus, s: &Seed, r: &mut Rng) -> (String, Vec<u8>, Want) {
    let mut m = s.manifest.clone();
    let accept = |m: &Manifest| Want::Accept(Box::new(m.clone()));
    let has_data = !m.chunks.is_empty();
    let (what, want): (String, Want) = match r.below(if has_data { 24 } else { 20 }) {
        0 => {
            let v = *r.pick(&[0, FORMAT_VERSION + 1, 99, u32::MAX]);
            m.format_version = v;
            (format!("format_version {v}"), Want::Refuse(&["bundle_unsupported_version"]))
        }
        1 => {
            m.format_version = 1;
            ("format_version 1 (older versions are read)".into(), accept(&m))
        }
        2 => {
            let k = r.below(7);
            duplicate(&mut m, k);
            (format!("an object of kind {k} twice"), Want::Refuse(&["bundle_duplicate_id"]))
        }
        3 => {
            let k = r.below(7);
            let bad = if r.chance(4) { "i".repeat(65) } else { r.pick(BAD_IDS).to_string() };
            let mut ids = ids_of(&mut m, k);
            let i = r.below(ids.len());
            *ids[i] = bad.clone();
            (format!("ID of kind {k} #{i} = {bad:?}"), Want::Refuse(BAD_NAME))
        }
        // References to what the bundle does not hold.
        4 | 5 => {
            let md = &mut m.model;
            let gone = "zz-gone".to_owned();
            let what = match r.below(14) {
                13 => {
                    md.instances[2].server_group = Some(gone);
                    "instance → missing server group"
                }
                12 => {
                    md.volumes[0].attached_to = Some(gone);
                    "volume → missing instance"
                }
                0 => {
                    md.instances[0].image = gone;
                    "instance → missing image"
                }
                1 => {
                    md.instances[0].interfaces[1].network = gone;
                    "interface → missing network"
                }
                2 => {
                    md.instances[1].interfaces[0].security_groups[1] = gone;
                    "interface → missing group"
                }
                3 => {
                    md.security_groups[2].rules[0].group = Some(gone);
                    "rule → missing group"
                }
                4 => {
                    md.instances[2].keypair = Some(gone);
                    "instance → missing key pair"
                }
                5 => {
                    md.floating_ips[1].instance = Some(gone);
                    "floating IP → missing instance"
                }
                6 => {
                    md.images[1].kernel_id = Some(gone);
                    "image → missing kernel"
                }
                7 => {
                    md.images[1].kernel_id = Some("img-disk".into());
                    "image → itself as kernel"
                }
                8 => {
                    md.networks[0].id = "nw-renamed".into();
                    "a used network's ID changed"
                }
                9 => {
                    md.security_groups[0].id = "sg-renamed".into();
                    "a used group's ID changed"
                }
                10 => {
                    md.networks.remove(1);
                    "a used network removed"
                }
                _ => {
                    md.instances.remove(0);
                    "an instance a floating IP names removed"
                }
            };
            (what.into(), Want::Refuse(DANGLING))
        }
        // Kernel references that chain or cycle.
        6 => {
            let md = &mut m.model;
            let what = match r.below(3) {
                0 => {
                    md.images[0].kernel_id = Some("img-disk".into());
                    "kernel image → disk image → kernel image (a cycle)"
                }
                1 => {
                    md.images[1].kernel_id = Some("img-pub".into());
                    md.images[2].kernel_id = Some("img-disk".into());
                    "two disk images naming each other as kernel"
                }
                _ => {
                    md.images[0].format = ImageFormat::Raw;
                    "kernel_id names a raw image"
                }
            };
            (what.into(), Want::Refuse(INVALID))
        }
        // Group references form cycles: that is allowed (groups admit each other).
        7 => {
            let g = &mut m.model.security_groups;
            g[0].rules.push(rule(Some("sg-mgmt"), None, 443));
            g[2].rules.push(rule(Some("sg-web"), None, 443));
            g[2].rules.push(rule(Some("sg-mgmt"), None, 8080));
            ("group references in a cycle".into(), accept(&m))
        }
        // Hostile names, and names that are fine.
        8 | 9 => {
            let k = r.below(6);
            let bad = if r.chance(5) { "n".repeat(65) } else { r.pick(BAD_NAMES).to_string() };
            let mut names = names_of(&mut m, k);
            let i = r.below(names.len());
            *names[i] = bad.clone();
            (format!("name of kind {k} #{i} = {bad:?}"), Want::Refuse(BAD_NAME))
        }
        10 => {
            let k = r.below(6);
            let good = if r.chance(4) { "é".repeat(64) } else { r.pick(GOOD_NAMES).to_string() };
            let mut names = names_of(&mut m, k);
            let i = r.below(names.len());
            *names[i] = good.clone();
            (format!("name of kind {k} #{i} = {good:?}"), accept(&m))
        }
        11 => {
            let bad = *r.pick(&["-web", "web-", "we_b", "a.b", "", "wéb", "a b", "x\n"]);
            let bad = if r.chance(4) { "h".repeat(64) } else { bad.to_owned() };
            m.model.instances[0].hostname = bad.clone();
            (format!("hostname {bad:?}"), Want::Refuse(BAD_NAME))
        }
        // Free text over its bounds or with invisible characters.
        12 => {
            let md = &mut m.model;
            let what = match r.below(10) {
                0 => {
                    md.security_groups[0].description = "d".repeat(256);
                    "description of 256 characters"
                }
                1 => {
                    md.security_groups[0].description = "a\u{1b}[31m".into();
                    "description with an escape"
                }
                2 => {
                    md.instances[0].user_data = Some("u".repeat(c.limits.max_user_data + 1));
                    "user-data over the limit"
                }
                3 => {
                    md.keypairs[0].public_key = "k".repeat((16 << 10) + 1);
                    "public key over 16 KiB"
                }
                4 => {
                    md.images[0].os = Some("debian\u{202E}21".into());
                    "os with a bidi override"
                }
                5 => {
                    md.images[1].default_user = Some("root\nx".into());
                    "default_user with a newline"
                }
                6 => {
                    md.instances[0].interfaces[0].mac = "52:54:00:00:00:01; reboot".into();
                    "a MAC with a command"
                }
                7 => {
                    md.instances[0].interfaces[0].ip = "10.1.0.20".repeat(3);
                    "an over-long address"
                }
                8 => {
                    md.security_groups[0].rules[0].cidr = Some("0.0.0.0/0\n".into());
                    "a rule CIDR with a newline"
                }
                _ => {
                    md.networks[0].cidr = "10.1.0.0/24; x".into();
                    "a network CIDR with text"
                }
            };
            (what.into(), Want::Refuse(INVALID))
        }
        13 => {
            let what = match r.below(5) {
                0 => {
                    m.source.vdc_id = "a-\u{7}x".into();
                    "vdc_id with a control character"
                }
                1 => {
                    m.source.vdc_id = "a".repeat(129);
                    "vdc_id of 129 characters"
                }
                2 => {
                    m.source.exported_at = "now".into();
                    "exported_at not a time"
                }
                3 => {
                    m.source.exported_at = "2026-12-01T03:00:00Z\u{202E}".into();
                    "exported_at with a bidi override"
                }
                _ => {
                    m.source.site_key = key_hex(&c.untrusted.verifying_key());
                    "source.site_key not the signer"
                }
            };
            (what.into(), Want::Refuse(INVALID))
        }
        14 => {
            m.source.site_key = (*r.pick(&["", "zz", "00", "ab"])).repeat(1 + r.below(40));
            (
                "source.site_key malformed (or a key, not the signer's)".into(),
                Want::Refuse(&["bundle_bad_key", "bundle_invalid_manifest"]),
            )
        }
        // Counts over the limits.
        15 => {
            let md = &mut m.model;
            let what = match r.below(5) {
                0 => {
                    let n = md.networks[2].clone();
                    for i in 0..c.limits.max_objects {
                        md.networks.push(Network { id: format!("nw-x{i}"), ..n.clone() });
                    }
                    "too many networks"
                }
                1 => {
                    for i in 0..=c.limits.max_rules {
                        md.security_groups[1].rules.push(rule(None, Some("10.0.0.0/8"), i as u16));
                    }
                    "too many rules"
                }
                2 => {
                    let nic = md.instances[2].interfaces[0].clone();
                    md.instances[2].interfaces = vec![nic; 9];
                    "nine interfaces"
                }
                3 => {
                    for i in 0..=c.limits.max_objects {
                        md.floating_ips.push(FloatingIp { id: format!("fip-{i}"), instance: None });
                    }
                    "too many floating IPs"
                }
                _ => {
                    for i in 0..=c.limits.max_chunks {
                        m.chunks.push(ChunkRef { sha256: sha256_hex(&i.to_be_bytes()), size: 1 });
                    }
                    "too many chunks"
                }
            };
            (what.into(), Want::Refuse(&["bundle_too_many"]))
        }
        // Semantically valid edits.
        16 => {
            let md = &mut m.model;
            let what = match r.below(5) {
                0 => {
                    md.instances[1].cpus = 1 + r.below(64) as u32;
                    "cpus changed"
                }
                1 => {
                    md.floating_ips.clear();
                    "floating IPs removed"
                }
                2 => {
                    md.instances.remove(2);
                    "an instance nothing names removed"
                }
                3 => {
                    md.networks.reverse();
                    md.instances.reverse();
                    "objects reordered"
                }
                _ => {
                    md.keypairs.remove(1);
                    "a key pair nothing names removed"
                }
            };
            (what.into(), accept(&m))
        }
        // A disk's format without data, or of a kind a disk is not.
        17 => {
            let md = &mut m.model;
            if md.instances[0].root_disk.is_some() && r.chance(2) {
                md.instances[0].root_disk_format =
                    r.pick(&[None, Some(ImageFormat::Tar), Some(ImageFormat::Kernel)]).to_owned();
            } else {
                md.volumes[1].data_format = Some(ImageFormat::Raw);
            }
            ("a disk's format and data disagree".into(), Want::Refuse(INVALID))
        }
        18 | 19 => return json_mutation(c, s, r),
        // The chunk list and the blobs against the stream.
        _ => {
            let n = m.chunks.len();
            let j = r.below(n);
            let what = match r.below(9) {
                0 => {
                    m.chunks.remove(j);
                    ("a chunk a blob uses not listed".into(), Want::Refuse(&["bundle_chunk_missing"]))
                }
                1 => {
                    m.chunks.push(ChunkRef { sha256: sha256_hex(b"unused"), size: 6 });
                    ("a listed chunk no blob uses".into(), Want::Refuse(INVALID))
                }
                2 => {
                    m.chunks.push(m.chunks[j].clone());
                    ("a chunk listed twice".into(), Want::Refuse(&["bundle_chunk_duplicate"]))
                }
                3 => {
                    m.chunks[j].size += 1;
                    ("a chunk's size changed".into(), Want::Refuse(INVALID))
                }
                4 => {
                    let size = *r.pick(&[0, CHUNK_SIZE as u64 + 1, u64::MAX]);
                    m.chunks[j].size = size;
                    (format!("a chunk's size {size}"), Want::Refuse(INVALID))
                }
                5 => {
                    m.chunks[j].sha256 = m.chunks[j].sha256.to_uppercase();
                    ("a chunk's hash in upper case".into(), Want::Refuse(INVALID))
                }
                6 => {
                    // The listed size one less, the blobs' sizes too: the manifest holds
                    // together, the chunk in the stream is one byte too long.
                    let h = m.chunks[j].sha256.clone();
                    m.chunks[j].size -= 1;
                    for b in all_blobs(&mut m) {
                        b.size -= b.chunks.iter().filter(|c| **c == h).count() as u64;
                    }
                    ("a chunk listed one byte shorter".into(), Want::Refuse(&["bundle_chunk_too_large"]))
                }
                7 => {
                    m.chunks.swap(j, r.below(n));
                    ("the chunk list reordered".into(), accept(&m))
                }
                _ => {
                    // The reader cannot check a whole blob's hash (its chunks are shared
                    // and come in stream order); dcmgr checks it when it assembles the blob.
                    let b = all_blobs(&mut m).into_iter().next().unwrap();
                    b.sha256 = sha256_hex(b"another blob");
                    ("a blob's own hash changed".into(), accept(&m))
                }
            };
            what
        }
    };
    (what, serde_json::to_vec(&m).unwrap(), want)
}

fn all_blobs(m: &mut Manifest) -> Vec<&mut BlobRef> {
    let md = &mut m.model;
    let mut v: Vec<&mut BlobRef> = vec![];
    v.extend(md.images.iter_mut().filter_map(|i| i.blob.as_mut()));
    v.extend(md.instances.iter_mut().filter_map(|i| i.root_disk.as_mut()));
    v.extend(md.volumes.iter_mut().filter_map(|v| v.data.as_mut()));
    v
}

/// An edit of the manifest's JSON text (re-signed).
fn json_mutation(c: &Corpus, s: &Seed, r: &mut Rng) -> (String, Vec<u8>, Want) {
    let text = String::from_utf8(s.json.clone()).unwrap();
    let refuse = |what: &str, t: Vec<u8>, codes: &'static [&'static str]| (what.to_owned(), t, Want::Refuse(codes));
    let (what, t, want) = match r.below(10) {
        0 => refuse("an unknown top-level field", text.replacen('{', "{\"extra\":1,", 1).into_bytes(), INVALID),
        1 => refuse(
            "an unknown field in a network",
            text.replacen("\"cidr\":", "\"vlan\":7,\"cidr\":", 1).into_bytes(),
            INVALID,
        ),
        2 => refuse(
            "format_version twice",
            text.replacen('{', &format!("{{\"format_version\":{FORMAT_VERSION},"), 1).into_bytes(),
            INVALID,
        ),
        3 => {
            let depth = 1000 + r.below(50_000);
            let deep = format!("\"os\":{}{}", "[".repeat(depth), "]".repeat(depth));
            refuse("arrays nested deeply", text.replacen("\"os\":\"debian-12\"", &deep, 1).into_bytes(), INVALID)
        }
        4 => refuse("cpus beyond u32", text.replacen("\"cpus\":1", "\"cpus\":99999999999", 1).into_bytes(), INVALID),
        5 => {
            let mut t = text.clone().into_bytes();
            t.extend_from_slice(b" {}");
            refuse("trailing data after the manifest", t, INVALID)
        }
        6 => {
            let mut t = text.clone().into_bytes();
            let i = t.windows(7).position(|w| w == b"\"front\"").unwrap();
            t[i + 1] = 0xff;
            refuse("a name that is not UTF-8", t, INVALID)
        }
        7 => {
            // White space: the same manifest, or over the manifest limit.
            let over = r.chance(2);
            let pad = if over { c.limits.max_manifest_bytes } else { r.below(1000) };
            let t = text.replacen(',', &format!(",{}", " ".repeat(pad)), 1).into_bytes();
            if over {
                refuse("white space past the manifest limit", t, &["bundle_too_many"])
            } else {
                ("white space".to_owned(), t, Want::Accept(Box::new(s.manifest.clone())))
            }
        }
        _ => {
            // Random byte edits of the text: whatever is accepted must hold together.
            let mut t = text.into_bytes();
            let mut ops = vec![];
            for _ in 0..1 + r.below(3) {
                let i = r.below(t.len());
                match r.below(3) {
                    0 => {
                        t[i] ^= 1 << r.below(8);
                        ops.push(format!("flip {i}"));
                    }
                    1 => {
                        let b = *r.pick(b"0123456789\"{}[],:.-aZ ");
                        t.insert(i, b);
                        ops.push(format!("insert {:?} at {i}", b as char));
                    }
                    _ => {
                        t.remove(i);
                        ops.push(format!("delete {i}"));
                    }
                }
            }
            (format!("JSON text edited: {}", ops.join(", ")), t, Want::Valid)
        }
    };
    (what, t, want)
}

/// Case `i` of the run with `seed`: reproducible from those two numbers.
pub fn case(c: &Corpus, seed: u64, i: u64) -> Case {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let si = r.below(c.seeds.len());
    let s = &c.seeds[si];
    if r.below(100) < 45 {
        let (what, bytes, want) = mutate_stream(c, s, &mut r);
        Case { what, seed: si, bytes, want }
    } else {
        let (what, json, want) = mutate_manifest(c, s, &mut r);
        Case { what, seed: si, bytes: resigned(s, &json, &c.key), want }
    }
}

// ------------------------------------------------------------------ the property

/// What a read gave.
pub type Read = Result<(Manifest, BTreeMap<String, Vec<u8>>), BundleError>;

/// The most heap a reader may hold at once: while it opens the bundle, the manifest's
/// bytes and its parse (a generous multiple); for each chunk, one compressed frame and
/// one chunk (plus one byte), and a little.
pub fn open_bound(l: &Limits) -> usize {
    16 * l.max_manifest_bytes + (1 << 20)
}
pub fn chunk_bound() -> usize {
    MAX_COMPRESSED + CHUNK_SIZE + 1 + (256 << 10)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Peaks {
    pub open: usize,
    pub chunk: usize,
}

/// Reads a whole bundle, measuring the heap of `open` and of each `next_chunk`.
pub fn read(bytes: &[u8], c: &Corpus) -> (Read, Peaks) {
    let mut peaks = Peaks::default();
    let (opened, p) = measured(|| Reader::open(bytes, &c.trusted, &c.limits));
    peaks.open = p;
    let mut reader = match opened {
        Ok(r) => r,
        Err(e) => return (Err(e), peaks),
    };
    let mut chunks = BTreeMap::new();
    loop {
        let (next, p) = measured(|| reader.next_chunk());
        peaks.chunk = peaks.chunk.max(p);
        match next {
            Ok(Some(ch)) => {
                chunks.insert(ch.sha256, ch.data);
            }
            Ok(None) => break,
            Err(e) => return (Err(e), peaks),
        }
    }
    (Ok((reader.manifest().clone(), chunks)), peaks)
}

fn id_ok(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=64).contains(&b.len())
        && b[0] != b'-'
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

fn name_ok(n: &str) -> bool {
    let formatting = |c: char| matches!(c as u32, 0xAD | 0x61C | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0xFEFF);
    (1..=64).contains(&n.chars().count())
        && !n.starts_with(' ')
        && !n.ends_with(' ')
        && !n.contains("..")
        && n.chars()
            .all(|c| !c.is_control() && (c == ' ' || !c.is_whitespace()) && !formatting(c) && c != '/' && c != '\\')
}

/// The documented rules, stated again independently of the reader: what it accepted must
/// satisfy them, with the chunks it yielded being exactly the listed ones.
pub fn invariants(m: &Manifest, chunks: &BTreeMap<String, Vec<u8>>, l: &Limits) -> Result<(), String> {
    let mut e = String::new();
    let mut fail = |s: String| {
        let _ = writeln!(e, "{s}");
    };
    if !(1..=FORMAT_VERSION).contains(&m.format_version) {
        fail(format!("version {}", m.format_version));
    }
    let md = &m.model;
    let kinds: [(&str, Vec<&str>, Vec<&str>); 7] = [
        (
            "network",
            md.networks.iter().map(|x| x.id.as_str()).collect(),
            md.networks.iter().map(|x| x.name.as_str()).collect(),
        ),
        (
            "group",
            md.security_groups.iter().map(|x| x.id.as_str()).collect(),
            md.security_groups.iter().map(|x| x.name.as_str()).collect(),
        ),
        (
            "keypair",
            md.keypairs.iter().map(|x| x.id.as_str()).collect(),
            md.keypairs.iter().map(|x| x.name.as_str()).collect(),
        ),
        (
            "image",
            md.images.iter().map(|x| x.id.as_str()).collect(),
            md.images.iter().map(|x| x.name.as_str()).collect(),
        ),
        (
            "instance",
            md.instances.iter().map(|x| x.id.as_str()).collect(),
            md.instances.iter().map(|x| x.name.as_str()).collect(),
        ),
        (
            "volume",
            md.volumes.iter().map(|x| x.id.as_str()).collect(),
            md.volumes.iter().map(|x| x.name.as_str()).collect(),
        ),
        ("fip", md.floating_ips.iter().map(|x| x.id.as_str()).collect(), vec![]),
    ];
    let mut sets: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (kind, ids, names) in &kinds {
        if ids.len() > l.max_objects {
            fail(format!("{} {kind}s", ids.len()));
        }
        let set: HashSet<&str> = ids.iter().copied().collect();
        if set.len() != ids.len() {
            fail(format!("duplicate {kind} IDs"));
        }
        for id in ids {
            if !id_ok(id) {
                fail(format!("{kind} ID {id:?}"));
            }
        }
        for n in names {
            if !name_ok(n) {
                fail(format!("{kind} name {n:?}"));
            }
        }
        sets.insert(kind, set);
    }
    let has = |kind: &str, id: &str| sets[kind].contains(id);
    for g in &md.security_groups {
        if g.rules.len() > l.max_rules {
            fail(format!("{} rules", g.rules.len()));
        }
        for r in &g.rules {
            if r.group.as_deref().is_some_and(|x| !has("group", x)) {
                fail(format!("rule of {} → {:?}", g.id, r.group));
            }
        }
    }
    for i in &md.images {
        if let Some(k) = &i.kernel_id {
            let kernel = md.images.iter().find(|x| &x.id == k);
            if !kernel.is_some_and(|k| k.format == ImageFormat::Kernel && k.kernel_id.is_none()) {
                fail(format!("image {} kernel {k}", i.id));
            }
        }
    }
    for i in &md.instances {
        let h = i.hostname.as_bytes();
        if h.is_empty()
            || h.len() > 63
            || h[0] == b'-'
            || h[h.len() - 1] == b'-'
            || !h.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            fail(format!("hostname {:?}", i.hostname));
        }
        if !has("image", &i.image) || i.keypair.as_deref().is_some_and(|k| !has("keypair", k)) {
            fail(format!("instance {} image/keypair", i.id));
        }
        if i.interfaces.len() > 8 || i.user_data.as_ref().is_some_and(|u| u.len() > l.max_user_data) {
            fail(format!("instance {} sizes", i.id));
        }
        for n in &i.interfaces {
            if !has("network", &n.network) || n.security_groups.iter().any(|g| !has("group", g)) {
                fail(format!("instance {} interface", i.id));
            }
            if n.ip.len() > 15 || n.mac.len() > 17 {
                fail(format!("instance {} address", i.id));
            }
        }
        if i.root_disk.is_some() != i.root_disk_format.is_some() {
            fail(format!("instance {} root disk format", i.id));
        }
        // A container's root is a tarball, a virtual machine's a disk.
        let container = i.hypervisor == HypervisorKind::Lxc;
        if let Some(f) = i.root_disk_format {
            if container != (f == ImageFormat::Tar) || matches!(f, ImageFormat::Kernel | ImageFormat::Dir) {
                fail(format!("instance {} root disk format {f}", i.id));
            }
        }
    }
    for f in &md.floating_ips {
        if f.instance.as_deref().is_some_and(|x| !has("instance", x)) {
            fail(format!("fip {}", f.id));
        }
    }
    if m.source.exported_at.len() > 40 || m.source.exported_at.chars().any(|c| c.is_control() || c as u32 > 127) {
        fail("exported_at".into());
    }
    // Chunks: listed once, of a size a chunk may have, all used, all yielded with their
    // hash; blobs made of listed chunks adding up to their size.
    if m.chunks.len() > l.max_chunks {
        fail(format!("{} chunks", m.chunks.len()));
    }
    let listed: HashMap<&str, u64> = m.chunks.iter().map(|c| (c.sha256.as_str(), c.size)).collect();
    if listed.len() != m.chunks.len() {
        fail("a chunk listed twice".into());
    }
    let mut used = HashSet::new();
    let mut blobs: Vec<&BlobRef> = vec![];
    blobs.extend(md.images.iter().filter_map(|i| i.blob.as_ref()));
    blobs.extend(md.instances.iter().filter_map(|i| i.root_disk.as_ref()));
    blobs.extend(md.volumes.iter().filter_map(|v| v.data.as_ref()));
    for b in blobs {
        let mut total = 0u64;
        for h in &b.chunks {
            match listed.get(h.as_str()) {
                Some(s) => total += s,
                None => fail(format!("blob chunk {h} not listed")),
            }
            used.insert(h.as_str());
        }
        if total != b.size {
            fail(format!("blob {} size", b.sha256));
        }
    }
    for (h, size) in &listed {
        if *size == 0 || *size > CHUNK_SIZE as u64 || !used.contains(h) {
            fail(format!("chunk {h} size {size} used {}", used.contains(h)));
        }
        match chunks.get(*h) {
            Some(d) if d.len() as u64 == *size && sha256_hex(d) == *h => {}
            _ => fail(format!("chunk {h} not yielded as listed")),
        }
    }
    if chunks.len() != listed.len() {
        fail(format!("{} chunks yielded, {} listed", chunks.len(), listed.len()));
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(e)
    }
}

/// Why a case failed the property, if it did.
pub fn judge(c: &Corpus, case: &Case, got: &Read, peaks: Peaks) -> Option<String> {
    let s = &c.seeds[case.seed];
    if peaks.open > open_bound(&c.limits) || peaks.chunk > chunk_bound() {
        return Some(format!(
            "heap peak: open {} bytes (bound {}), chunk {} bytes (bound {})",
            peaks.open,
            open_bound(&c.limits),
            peaks.chunk,
            chunk_bound()
        ));
    }
    let listed = |m: &Manifest| -> BTreeMap<String, Vec<u8>> {
        m.chunks.iter().map(|ch| (ch.sha256.clone(), s.chunks[&ch.sha256].clone())).collect()
    };
    match (&case.want, got) {
        (Want::Refuse(codes), Err(e)) if codes.is_empty() || codes.contains(&e.code()) => None,
        (Want::Refuse(codes), Err(e)) => Some(format!("refused as {} ({e}), expected one of {codes:?}", e.code())),
        (Want::Refuse(_), Ok(_)) => Some("accepted, expected a refusal".into()),
        (Want::SameOrRefuse, Err(_)) => None,
        (Want::SameOrRefuse, Ok((m, ch))) => {
            (m != &s.manifest || ch != &s.chunks).then(|| "accepted, and not as the original bundle".into())
        }
        (Want::Accept(want), Ok((m, ch))) => {
            if m != want.as_ref() {
                Some("accepted another manifest than the one written".into())
            } else if ch != &listed(m) {
                Some("accepted with other chunks than listed".into())
            } else {
                invariants(m, ch, &c.limits).err().map(|e| format!("accepted but breaks invariants:\n{e}"))
            }
        }
        (Want::Accept(_), Err(e)) => Some(format!("refused a valid bundle: {} ({e})", e.code())),
        (Want::Valid, Err(_)) => None,
        (Want::Valid, Ok((m, ch))) => {
            invariants(m, ch, &c.limits).err().map(|e| format!("accepted but breaks invariants:\n{e}"))
        }
    }
}

/// The outcome of one case: its error code (or `ok`), or a failure (with the panic's
/// message if it panicked).
pub fn run_case(c: &Corpus, seed: u64, i: u64) -> (Case, Result<&'static str, String>, Peaks) {
    let case = case(c, seed, i);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&case.bytes, c)));
    let peaks = out.as_ref().map(|o| o.1).unwrap_or_default();
    let res = match out {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("PANIC: {msg}"))
        }
        Ok((got, peaks)) => match judge(c, &case, &got, peaks) {
            Some(why) => Err(why),
            None => Ok(match &got {
                Ok(_) => "ok",
                Err(e) => e.code(),
            }),
        },
    };
    (case, res, peaks)
}

/// A failure's report: enough to reproduce it.
pub fn report(seed: u64, i: u64, case: &Case, why: &str) -> String {
    format!(
        "bundle fuzz case failed: seed {seed}, case {i} (reproduce: cargo run --release -p vdc-bundle --example fuzz -- \
         --seed {seed} --case {i})\n  bundle: {} seed, {} bytes\n  mutation: {}\n  expected: {:?}\n  {why}",
        c_name(case),
        case.bytes.len(),
        case.what,
        match &case.want {
            Want::Accept(_) => "accept".to_string(),
            w => format!("{w:?}"),
        }
    )
}

fn c_name(case: &Case) -> &'static str {
    ["full", "model-only"].get(case.seed).copied().unwrap_or("?")
}
