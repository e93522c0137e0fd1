//! The relayed stream as hostile input (issue 13, point 7): a push carries `R` frames for
//! the chunks the receiver holds. Seeded mutations of a relayed bundle (truncations, bit
//! flips, inserted and deleted bytes, a reference's hash rewritten, frames swapped or
//! retagged, the end count changed) are relayed again, as a second pusher would, and read
//! by a receiver that resolves references from what it holds (sometimes less than the
//! sender thought). Neither the relay nor the reader panics, and the reader either
//! refuses with one of the bundle's codes or yields exactly the original manifest and
//! chunks. `VDC_FUZZ_CASES` sets the number of cases (3,000 by default).

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use vdc_bundle::*;
#[path = "support/image.rs"]
mod image;

use image::raw_image;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

type Chunks = BTreeMap<String, Vec<u8>>;

/// Six small images, one chunk each: (manifest, the full bundle, its chunks).
fn seed(key: &SigningKey) -> (Manifest, Vec<u8>, Chunks) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut images = Vec::new();
    let mut chunks = Vec::new();
    let mut store = Chunks::new();
    for i in 0..6 {
        let data: Vec<u8> = (0..100 + i * 37).map(|_| rng.next() as u8).collect();
        let (blob, refs) = chunk_blob(&data[..]).unwrap();
        for c in refs {
            store.insert(c.sha256.clone(), data.clone());
            chunks.push(c);
        }
        images.push(raw_image(&format!("img-{i}"), &format!("disk{i}"), blob));
    }
    let m = Manifest {
        format_version: FORMAT_VERSION,
        source: Source {
            site_key: key_hex(&key.verifying_key()),
            vdc_id: "a-1".into(),
            exported_at: "2026-12-01T00:00:00Z".into(),
        },
        model: Model { images, ..Default::default() },
        chunks,
    };
    let mut w = Writer::new(Vec::new(), &m, key).unwrap();
    for c in &m.chunks {
        w.write_chunk(&store[&c.sha256]).unwrap();
    }
    let full = w.finish(m.chunks.len() as u64).unwrap();
    (m, full, store)
}

fn relayed(bytes: &[u8], held: &HashSet<String>) -> Result<Vec<u8>, BundleError> {
    let mut r = bytes;
    let head = read_head(&mut r, &Limits::default())?;
    let mut out = head.bytes.clone();
    relay(&mut r, &mut out, held)?;
    Ok(out)
}

/// A receiver: chunks carried, references resolved from what it holds.
fn receive(bytes: &[u8], key: &SigningKey, holds: &Chunks) -> Result<(Manifest, Chunks), BundleError> {
    let mut r = Reader::open(bytes, &[key.verifying_key()], &Limits::default())?;
    let mut got = Chunks::new();
    while let Some(item) = r.next_item()? {
        match item {
            Item::Chunk(c) => {
                got.insert(c.sha256, c.data);
            }
            Item::Held { sha256, size } => {
                let data = holds.get(&sha256).ok_or_else(|| BundleError::ChunkNotHeld(sha256.clone()))?;
                if data.len() as u64 != size || sha256_hex(data) != sha256 {
                    return Err(BundleError::ChunkHashMismatch(sha256));
                }
                got.insert(sha256, data.clone());
            }
            Item::LeftOut { sha256, .. } => return Err(BundleError::ChunkLeftOut(sha256)),
        }
    }
    Ok((r.manifest().clone(), got))
}

/// (offset, length) of each frame after the magic, as far as the bytes parse.
fn frames(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 5 <= b.len() {
        let len = u32::from_be_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
        if at + 5 + len > b.len() {
            break;
        }
        out.push((at, 5 + len));
        at += 5 + len;
    }
    out
}

const KINDS: [&str; 9] = [
    "truncate",
    "flip bits",
    "insert bytes",
    "delete bytes",
    "reference to another listed chunk",
    "reference to garbage",
    "frames swapped",
    "frame retagged",
    "end count changed",
];

fn mutate(b: &[u8], m: &Manifest, r: &mut Rng) -> (usize, Vec<u8>) {
    let mut b = b.to_vec();
    let fs = frames(&b);
    // The data frames: after the manifest and the signature, before the end.
    let data = &fs[2..fs.len() - 1];
    let refs: Vec<(usize, usize)> = data.iter().copied().filter(|(at, _)| b[*at] == b'R').collect();
    let kind = r.below(KINDS.len());
    match kind {
        0 => b.truncate(r.below(b.len())),
        1 => {
            for _ in 0..1 + r.below(4) {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
        }
        2 => {
            let at = r.below(b.len() + 1);
            let junk: Vec<u8> = (0..1 + r.below(16)).map(|_| r.next() as u8).collect();
            b.splice(at..at, junk);
        }
        3 => {
            let at = r.below(b.len());
            let end = (at + 1 + r.below(64)).min(b.len());
            b.drain(at..end);
        }
        4 | 5 => {
            let (at, _) = refs[r.below(refs.len())];
            let hash = if kind == 4 {
                let now = hex::encode(&b[at + 5..at + 37]);
                let others: Vec<&ChunkRef> = m.chunks.iter().filter(|c| c.sha256 != now).collect();
                hex::decode(&others[r.below(others.len())].sha256).unwrap()
            } else {
                (0..32).map(|_| r.next() as u8).collect()
            };
            b[at + 5..at + 37].copy_from_slice(&hash);
        }
        6 => {
            let (x, y) = (data[r.below(data.len())], data[r.below(data.len())]);
            let (first, second) = if x.0 <= y.0 { (x, y) } else { (y, x) };
            if first.0 != second.0 {
                let mut out = b[..first.0].to_vec();
                out.extend_from_slice(&b[second.0..second.0 + second.1]);
                out.extend_from_slice(&b[first.0 + first.1..second.0]);
                out.extend_from_slice(&b[first.0..first.0 + first.1]);
                out.extend_from_slice(&b[second.0 + second.1..]);
                b = out;
            }
        }
        7 => {
            let (at, _) = data[r.below(data.len())];
            let others: Vec<u8> = b"CREMSX".iter().copied().filter(|t| *t != b[at]).collect();
            b[at] = others[r.below(others.len())];
        }
        _ => {
            let (at, _) = fs[fs.len() - 1];
            let n = u64::from_be_bytes(b[at + 5..at + 13].try_into().unwrap());
            let changed = [n.wrapping_add(1), n.wrapping_sub(1), r.next()][r.below(3)];
            b[at + 5..at + 13].copy_from_slice(&changed.to_be_bytes());
        }
    }
    (kind, b)
}

#[test]
fn mutated_relayed_bundles_are_refused_or_read_as_the_original() {
    let cases: u64 = std::env::var("VDC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let key = generate_key();
    let (m, full, store) = seed(&key);
    let held: HashSet<String> = m.chunks.iter().step_by(2).map(|c| c.sha256.clone()).collect();
    let base = relayed(&full, &held).unwrap();
    let holds: Chunks = store.iter().filter(|(h, _)| held.contains(*h)).map(|(h, d)| (h.clone(), d.clone())).collect();
    assert_eq!(receive(&base, &key, &holds).unwrap(), (m.clone(), store.clone()), "the relayed seed reads");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut refused, mut accepted) = ([0u64; KINDS.len()], [0u64; KINDS.len()]);
    let mut codes = BTreeMap::<&str, u64>::new();
    for i in 0..cases {
        let (kind, bytes) = mutate(&base, &m, &mut rng);
        // Sometimes the receiver lacks a chunk the sender thought it held.
        let mut holds = holds.clone();
        if rng.below(4) == 0 {
            let gone = holds.keys().nth(rng.below(holds.len())).cloned().unwrap();
            holds.remove(&gone);
        }
        let again = rng.below(3) == 0;
        let got = catch_unwind(AssertUnwindSafe(|| {
            // A second pusher relays it on (it verifies nothing: the receiver does).
            let bytes = if again { relayed(&bytes, &HashSet::new())? } else { bytes.clone() };
            receive(&bytes, &key, &holds)
        }));
        let why = |what: String| format!("case {i} ({}): {what}", KINDS[kind]);
        match got {
            Err(_) => panic!("{}", why("the relay or the reader panicked".into())),
            Ok(Ok(read)) => {
                assert!(read == (m.clone(), store.clone()), "{}", why("accepted as something else".into()));
                accepted[kind] += 1;
            }
            Ok(Err(e)) => {
                assert!(e.code().starts_with("bundle_"), "{}", why(format!("code {}", e.code())));
                *codes.entry(e.code()).or_default() += 1;
                refused[kind] += 1;
            }
        }
    }
    eprintln!("{cases} relayed cases: refused {refused:?}, accepted {accepted:?} (kinds {KINDS:?}); codes {codes:?}");
    for (k, name) in KINDS.iter().enumerate() {
        assert!(refused[k] + accepted[k] > 0, "no case of {name}");
    }
    // Every corruption is refused; only reordered frames (and flips that left the bytes
    // as they were, none here) may be accepted.
    for k in [0, 4, 5, 7, 8] {
        assert_eq!(accepted[k], 0, "a {} was accepted", KINDS[k]);
    }
    for code in ["bundle_truncated", "bundle_chunk_not_held", "bundle_chunk_duplicate", "bundle_bad_frame"] {
        assert!(codes.contains_key(code), "no case was refused with {code}: {codes:?}");
    }
}
