//! Reference frames (`R`, issue 13 point 6): a pusher relays a bundle with the chunks the
//! receiver holds replaced by references. The relayed stream reads back as the same
//! manifest and items; a reader that holds nothing refuses a reference; references are
//! listed, once, like chunks; the full bundle (no references) reads as before.

use std::collections::HashSet;
use vdc_bundle::*;
#[path = "support/image.rs"]
mod image;

use image::raw_image;

/// Three 4 MiB chunks and a short one of incompressible bytes, as one image.
fn data() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..(3 * CHUNK_SIZE + 1000))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bundle(key: &SigningKey) -> (Manifest, Vec<u8>) {
    let data = data();
    let (blob, chunks) = chunk_blob(&data[..]).unwrap();
    let m = Manifest {
        format_version: FORMAT_VERSION,
        source: Source {
            site_key: key_hex(&key.verifying_key()),
            vdc_id: "a-1".into(),
            exported_at: "2026-12-01T00:00:00Z".into(),
        },
        model: Model { images: vec![raw_image("img-1", "disk", blob)], ..Default::default() },
        chunks,
    };
    let mut w = Writer::new(Vec::new(), &m, key).unwrap();
    for c in data.chunks(CHUNK_SIZE) {
        assert!(w.write_chunk(c).unwrap());
    }
    (m.clone(), w.finish(m.chunks.len() as u64).unwrap())
}

#[test]
fn a_chunk_written_again_is_skipped() {
    let key = generate_key();
    let (m, full) = bundle(&key);
    let data = data();
    let mut w = Writer::new(Vec::new(), &m, &key).unwrap();
    for c in data.chunks(CHUNK_SIZE) {
        assert!(w.write_chunk(c).unwrap());
        assert!(!w.write_chunk(c).unwrap(), "written once");
    }
    assert_eq!(w.finish(m.chunks.len() as u64).unwrap(), full);
}

/// Chunks written as listed (`write_listed`, checked by CRC-32 rather than hashed again)
/// make the same bundle as chunks hashed as they are written; bytes changed since they
/// were listed are refused, and nothing of them is written.
#[test]
fn chunks_written_as_listed_are_checked_against_their_listing() {
    let key = generate_key();
    let (m, full) = bundle(&key);
    let data = data();
    let (_, listed) = chunk_stored_blob(&data[..], &sha256_hex(&data)).unwrap();
    let mut w = Writer::new(Vec::new(), &m, &key).unwrap();
    for (c, l) in data.chunks(CHUNK_SIZE).zip(&listed) {
        assert!(w.write_listed(l, c).unwrap());
        assert!(!w.write_listed(l, c).unwrap(), "written once");
    }
    assert_eq!(w.finish(m.chunks.len() as u64).unwrap(), full);

    let mut w = Writer::new(Vec::new(), &m, &key).unwrap();
    let before = w.bytes();
    let mut changed = data[..CHUNK_SIZE].to_vec();
    changed[12345] ^= 1;
    let e = w.write_listed(&listed[0], &changed).unwrap_err();
    assert!(matches!(&e, BundleError::ChunkHashMismatch(h) if h == &listed[0].sha256), "{e}");
    let e = w.write_listed(&listed[3], &data[..1000]).unwrap_err();
    assert!(matches!(&e, BundleError::ChunkHashMismatch(h) if h == &listed[3].sha256), "a short read: {e}");
    assert_eq!(w.bytes(), before, "nothing of them written");
    // Still pending: the bundle cannot be finished without them.
    assert!(matches!(w.finish(0), Err(BundleError::MissingChunk(_))));
}

fn relayed(full: &[u8], held: &HashSet<String>) -> (Vec<u8>, Relayed) {
    let mut r = full;
    let head = read_head(&mut r, &Limits::default()).unwrap();
    let mut out = head.bytes.clone();
    let stats = relay(&mut r, &mut out, held).unwrap();
    (out, stats)
}

#[test]
fn a_relayed_bundle_references_the_held_chunks_and_reads_back() {
    let key = generate_key();
    let (m, full) = bundle(&key);
    let held: HashSet<String> = [m.chunks[1].sha256.clone(), m.chunks[2].sha256.clone()].into();
    let (out, stats) = relayed(&full, &held);
    assert_eq!((stats.carried, stats.referenced), (2, 2));
    assert_eq!(stats.bytes_out + (full.len() as u64 - stats.bytes_in), out.len() as u64);
    assert!(out.len() < full.len() / 2, "{} of {}", out.len(), full.len());

    let mut r = Reader::open(&out[..], &[key.verifying_key()], &Limits::default()).unwrap();
    assert_eq!(r.manifest(), &m);
    let mut items = vec![];
    while let Some(i) = r.next_item().unwrap() {
        items.push(match i {
            Item::Chunk(c) => ("C", c.sha256),
            Item::Held { sha256, size } => {
                assert_eq!(size, CHUNK_SIZE as u64);
                ("R", sha256)
            }
            Item::LeftOut { .. } => unreachable!("nothing left out"),
        });
    }
    let want: Vec<(&str, String)> = m
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| (if i == 1 || i == 2 { "R" } else { "C" }, c.sha256.clone()))
        .collect();
    assert_eq!(items, want);

    // A reader that holds nothing refuses the reference; the full bundle reads as before.
    let mut r = Reader::open(&out[..], &[key.verifying_key()], &Limits::default()).unwrap();
    r.next_chunk().unwrap().unwrap();
    assert_eq!(r.next_chunk().unwrap_err().code(), "bundle_chunk_not_held");
    let mut r = Reader::open(&full[..], &[key.verifying_key()], &Limits::default()).unwrap();
    let mut n = 0;
    while r.next_chunk().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 4);

    // Nothing held: the relay is the bundle, byte for byte.
    assert_eq!(relayed(&full, &HashSet::new()).0, full);
}

#[test]
fn references_are_listed_chunks_each_once() {
    let key = generate_key();
    let (m, _) = bundle(&key);
    let data = data();
    let parts: Vec<&[u8]> = data.chunks(CHUNK_SIZE).collect();
    let read_all = |bytes: Vec<u8>| -> Result<(), BundleError> {
        let mut r = Reader::open(&bytes[..], &[key.verifying_key()], &Limits::default())?;
        while r.next_item()?.is_some() {}
        Ok(())
    };
    // A reference to a chunk the manifest does not list.
    let mut w = Writer::new(Vec::new(), &m, &key).unwrap();
    assert_eq!(w.write_ref(&sha256_hex(b"other")).unwrap_err().code(), "bundle_chunk_unlisted");
    // Written by hand: R of an unlisted chunk, then R twice, then R and C of one chunk.
    let mut bytes = {
        let mut w = Writer::new(Vec::new(), &m, &key).unwrap();
        for p in &parts {
            w.write_chunk(p).unwrap();
        }
        w.finish(4).unwrap()
    };
    let mut r = &bytes[..];
    let h = read_head(&mut r, &Limits::default()).unwrap();
    bytes.truncate(h.bytes.len());
    let frame = |out: &mut Vec<u8>, tag: u8, p: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    };
    let hash = |i: usize| hex::decode(&m.chunks[i].sha256).unwrap();
    let mut unlisted = bytes.clone();
    frame(&mut unlisted, b'R', &hex::decode(sha256_hex(b"other")).unwrap());
    assert_eq!(read_all(unlisted).unwrap_err().code(), "bundle_chunk_unlisted");
    let mut twice = bytes.clone();
    frame(&mut twice, b'R', &hash(0));
    frame(&mut twice, b'R', &hash(0));
    assert_eq!(read_all(twice).unwrap_err().code(), "bundle_chunk_duplicate");
    let mut both = bytes.clone();
    frame(&mut both, b'R', &hash(0));
    frame(&mut both, b'C', &[hash(0), zstd::bulk::compress(parts[0], 1).unwrap()].concat());
    assert_eq!(read_all(both).unwrap_err().code(), "bundle_chunk_duplicate");
    let mut short = bytes.clone();
    frame(&mut short, b'R', &hash(0)[..31]);
    assert_eq!(read_all(short).unwrap_err().code(), "bundle_bad_frame");
    // All four referenced, and the end frame counts them: read through.
    let mut all = bytes.clone();
    for i in 0..4 {
        frame(&mut all, b'R', &hash(i));
    }
    let mut missing_one = all.clone();
    frame(&mut all, b'E', &4u64.to_be_bytes());
    read_all(all).unwrap();
    frame(&mut missing_one, b'E', &3u64.to_be_bytes());
    assert!(read_all(missing_one).is_err());
    // A relay of a cut stream fails; it never ends the stream as if whole.
    let (_, full) = bundle(&key);
    let cut = &full[..full.len() - 100];
    let mut r = cut;
    let hd = read_head(&mut r, &Limits::default()).unwrap();
    let mut out = hd.bytes;
    assert_eq!(relay(&mut r, &mut out, &HashSet::new()).unwrap_err().code(), "bundle_truncated");
}

#[test]
fn a_relay_leaves_out_what_the_receiver_does_not_need() {
    let key = generate_key();
    let (m, full) = bundle(&key);
    let (held, out_of) = (m.chunks[1].sha256.clone(), m.chunks[2].sha256.clone());
    let pass = |h: &str| match h {
        h if h == held => Pass::Reference,
        h if h == out_of => Pass::LeaveOut,
        _ => Pass::Carry,
    };
    let mut r = &full[..];
    let mut out = read_head(&mut r, &Limits::default()).unwrap().bytes;
    let stats = relay_with(&mut r, &mut out, pass).unwrap();
    assert_eq!((stats.carried, stats.referenced, stats.left_out), (2, 1, 1));
    assert_eq!(stats.bytes_out + (full.len() as u64 - stats.bytes_in), out.len() as u64);

    let mut r = Reader::open(&out[..], &[key.verifying_key()], &Limits::default()).unwrap();
    let mut items = vec![];
    while let Some(i) = r.next_item().unwrap() {
        items.push(match i {
            Item::Chunk(c) => ("C", c.sha256),
            Item::Held { sha256, .. } => ("R", sha256),
            Item::LeftOut { sha256, size } => {
                assert_eq!(size, CHUNK_SIZE as u64);
                ("N", sha256)
            }
        });
    }
    let tags: Vec<&str> = items.iter().map(|i| i.0).collect();
    assert_eq!(tags, ["C", "R", "N", "C"]);

    // Relayed again (a second pusher): what was referenced or left out stays so, and a
    // reference may be left out too.
    let mut r = &out[..];
    let mut again = read_head(&mut r, &Limits::default()).unwrap().bytes;
    let s2 = relay_with(&mut r, &mut again, |h| if h == held { Pass::LeaveOut } else { Pass::Carry }).unwrap();
    assert_eq!((s2.carried, s2.referenced, s2.left_out), (2, 0, 2));

    // A reader that can use only chunks refuses the chunk left out.
    let mut r = Reader::open(&out[..], &[key.verifying_key()], &Limits::default()).unwrap();
    r.next_chunk().unwrap().unwrap();
    assert_eq!(r.next_chunk().unwrap_err().code(), "bundle_chunk_not_held");
    assert_eq!(r.next_chunk().unwrap_err().code(), "bundle_chunk_left_out");
}
