//! The stream: `MAGIC`, then frames `[tag: u8][length: u32 BE][payload]`:
//! `M` the manifest (JSON), `S` its signature (32-byte key, 64-byte signature), any
//! number of `C` chunks (32-byte SHA-256 of the uncompressed bytes, then zstd) and `R`
//! references (32-byte SHA-256 of a listed chunk the receiver holds already: a push sends
//! only what the target lacks), `N` (32-byte SHA-256 of a listed chunk left out: a push
//! leaves out what the target's import would not store), and `E` (u64 BE: the number of
//! `C`, `R` and `N` frames). A frame of our own rather than tar: no file names at all (so
//! nothing to traverse), every length bounded before it is read, and the manifest first,
//! so a reader verifies it before it reads any data.

use crate::{sha256_hex, BlobRef, BundleError, ChunkRef, Limits, Manifest, SigningKey, VerifyingKey, CHUNK_SIZE};
use ed25519_dalek::{Signature, Signer, Verifier};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

pub const MAGIC: &[u8; 8] = b"VDCBNDL\n";
/// What the signature covers: this, then the manifest's bytes.
const SIGNING_CONTEXT: &[u8] = b"vdc-bundle-manifest\0";
/// The largest chunk frame's compressed payload (zstd's bound for a 4 MiB block is far
/// below this).
pub const MAX_COMPRESSED: usize = CHUNK_SIZE + (CHUNK_SIZE >> 3);
/// zstd's name of `dstSize_tooSmall`: the chunk decompresses beyond its buffer.
const TOO_SMALL: &str = "Destination buffer is too small";

fn frame<W: Write>(w: &mut W, tag: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    w.write_all(&[tag])?;
    w.write_all(&(len as u32).to_be_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Writes a bundle: the manifest first, then exactly its chunks (any order), then the end.
pub struct Writer<W: Write> {
    w: W,
    pending: HashMap<String, u64>,
    written: HashSet<String>,
    bytes: u64,
    /// For [`Writer::write_listed`]: one zstd context and output buffer for every chunk
    /// (fresh memory per chunk costs more than the copy on this project's VM).
    z: Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>,
}

/// A chunk as it was listed from its blob: its hash and size, and the CRC-32 of its
/// bytes, so that [`Writer::write_listed`] checks it is the same when read again without
/// hashing it again (SHA-256 runs at 1.5 GB/s here, zstd -1 on incompressible data at
/// 6.7 GB/s, CRC-32 at 6.5 GB/s; the receiver checks the SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub sha256: String,
    pub size: u64,
    pub crc32: u32,
}

impl Listed {
    /// Lists `data`, whose SHA-256 (hex) is `sha256`.
    pub fn new(sha256: String, data: &[u8]) -> Listed {
        Listed { sha256, size: data.len() as u64, crc32: crc32fast::hash(data) }
    }

    pub fn chunk_ref(&self) -> ChunkRef {
        ChunkRef { sha256: self.sha256.clone(), size: self.size }
    }
}

impl<W: Write> Writer<W> {
    pub fn new(mut w: W, manifest: &Manifest, key: &SigningKey) -> Result<Writer<W>, BundleError> {
        let json = serde_json::to_vec(manifest).map_err(|e| BundleError::InvalidManifest(e.to_string()))?;
        let sig = key.sign(&[SIGNING_CONTEXT, &json].concat());
        w.write_all(MAGIC)?;
        frame(&mut w, b'M', &[&json])?;
        frame(&mut w, b'S', &[key.verifying_key().as_bytes(), &sig.to_bytes()])?;
        let pending = manifest.chunks.iter().map(|c| (c.sha256.clone(), c.size)).collect();
        let bytes = (MAGIC.len() + 5 + json.len() + 5 + 96) as u64;
        Ok(Writer { w, pending, written: HashSet::new(), bytes, z: None })
    }

    /// Writes one chunk the manifest lists. One written already is skipped (blobs share
    /// chunks, and one blob may repeat a chunk): whether it was written now.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<bool, BundleError> {
        // The hash and the compression of a chunk cost about the same: on two threads at
        // once. A repeated chunk is compressed for nothing; zstd is fastest on those
        // (zeros, mostly).
        let (hash, z) = std::thread::scope(|s| {
            let z = s.spawn(|| zstd::bulk::compress(data, 1));
            (sha256_hex(data), z.join().expect("zstd does not panic"))
        });
        if self.written.contains(&hash) {
            return Ok(false);
        }
        match self.pending.remove(&hash) {
            Some(size) if size == data.len() as u64 => {}
            Some(_) => return Err(BundleError::ChunkHashMismatch(hash)),
            None => return Err(BundleError::ChunkNotInManifest(hash)),
        }
        let z = z?;
        frame(&mut self.w, b'C', &[&hex::decode(&hash).expect("hex"), &z])?;
        self.bytes += 5 + 32 + z.len() as u64;
        self.written.insert(hash);
        Ok(true)
    }

    /// [`Writer::write_chunk`] of a chunk listed before ([`Listed`]): its bytes are
    /// checked against the listing's size and CRC-32 (a blob that changed since it was
    /// listed is refused, `ChunkHashMismatch`) rather than hashed again.
    pub fn write_listed(&mut self, listed: &Listed, data: &[u8]) -> Result<bool, BundleError> {
        let hash = &listed.sha256;
        if self.written.contains(hash) {
            return Ok(false);
        }
        if data.len() as u64 != listed.size || crc32fast::hash(data) != listed.crc32 {
            return Err(BundleError::ChunkHashMismatch(hash.clone()));
        }
        match self.pending.remove(hash) {
            Some(size) if size == listed.size => {}
            Some(_) => return Err(BundleError::ChunkHashMismatch(hash.clone())),
            None => return Err(BundleError::ChunkNotInManifest(hash.clone())),
        }
        let raw = hex::decode(hash).map_err(|_| BundleError::ChunkNotInManifest(hash.clone()))?;
        let (z, out) = match &mut self.z {
            Some(z) => z,
            None => self.z.insert((zstd::bulk::Compressor::new(1)?, Vec::with_capacity(MAX_COMPRESSED))),
        };
        out.clear();
        z.compress_to_buffer(data, out)?;
        frame(&mut self.w, b'C', &[&raw, out])?;
        self.bytes += 5 + 32 + out.len() as u64;
        self.written.insert(hash.clone());
        Ok(true)
    }

    /// Writes a reference to a chunk the manifest lists (and has not been written yet):
    /// the receiver holds it already and resolves it by its hash (checked again there).
    pub fn write_ref(&mut self, sha256: &str) -> Result<(), BundleError> {
        if self.pending.remove(sha256).is_none() {
            return Err(BundleError::ChunkNotInManifest(sha256.to_owned()));
        }
        let hash = hex::decode(sha256).map_err(|_| BundleError::ChunkNotInManifest(sha256.to_owned()))?;
        frame(&mut self.w, b'R', &[&hash])?;
        self.bytes += 5 + 32;
        self.written.insert(sha256.to_owned());
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(mut self, chunks: u64) -> Result<W, BundleError> {
        if let Some(h) = self.pending.keys().next() {
            return Err(BundleError::MissingChunk(h.clone()));
        }
        frame(&mut self.w, b'E', &[&chunks.to_be_bytes()])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Splits a blob into chunks (reading it once): its reference and its chunks' list.
pub fn chunk_blob<R: Read>(r: R) -> std::io::Result<(BlobRef, Vec<ChunkRef>)> {
    let mut whole = sha2::Sha256::new();
    let (size, chunks) = chunk_hashes(r, Some(&mut whole))?;
    let blob = blob_ref(hex::encode(whole.finalize()), size, &chunks);
    Ok((blob, chunks.iter().map(Listed::chunk_ref).collect()))
}

/// [`chunk_blob`] of a blob whose SHA-256 is known: its name in a content-addressed
/// store. The whole is not hashed again; were the stored bytes not the named ones, the
/// receiver's check of the assembled blob against its name refuses them.
pub fn chunk_stored_blob<R: Read>(r: R, sha256: &str) -> std::io::Result<(BlobRef, Vec<Listed>)> {
    let (size, chunks) = chunk_hashes(r, None)?;
    Ok((blob_ref(sha256.to_owned(), size, &chunks), chunks))
}

/// The reference of blob `sha256` made of `chunks`, in order (its size is theirs).
pub fn blob_of_chunks(sha256: String, chunks: &[Listed]) -> BlobRef {
    blob_ref(sha256, chunks.iter().map(|c| c.size).sum(), chunks)
}

fn blob_ref(sha256: String, size: u64, chunks: &[Listed]) -> BlobRef {
    BlobRef { sha256, size, chunks: chunks.iter().map(|c| c.sha256.clone()).collect() }
}

/// The chunks of `r` and its length, two chunks hashed at once (SHA-256 is most of the
/// CPU an export spends before it writes anything).
fn chunk_hashes<R: Read>(mut r: R, mut whole: Option<&mut sha2::Sha256>) -> std::io::Result<(u64, Vec<Listed>)> {
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let (mut a, mut b) = (vec![0u8; CHUNK_SIZE], vec![0u8; CHUNK_SIZE]);
    loop {
        let na = read_full(&mut r, &mut a)?;
        let nb = if na == CHUNK_SIZE { read_full(&mut r, &mut b)? } else { 0 };
        if na == 0 {
            break;
        }
        let (a, b) = (&a[..na], &b[..nb]);
        let (ha, hb) = std::thread::scope(|s| {
            let hb = (!b.is_empty()).then(|| s.spawn(|| Listed::new(sha256_hex(b), b)));
            (Listed::new(sha256_hex(a), a), hb.map(|h| h.join().expect("SHA-256 does not panic")))
        });
        for (data, listed) in [(a, Some(ha)), (b, hb)] {
            let Some(listed) = listed else { continue };
            if let Some(w) = whole.as_deref_mut() {
                w.update(data);
            }
            size += data.len() as u64;
            chunks.push(listed);
        }
        if nb < CHUNK_SIZE {
            break;
        }
    }
    Ok((size, chunks))
}

/// Reads until `buf` is full or the end.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    if read_full(r, buf)? < buf.len() {
        return Err(BundleError::Truncated(format!("the stream ends inside {what}")));
    }
    Ok(())
}

/// One frame header: tag and length, the length checked against `max` before any of the
/// payload is read.
fn header<R: Read>(r: &mut R) -> Result<Option<(u8, usize)>, BundleError> {
    let mut h = [0u8; 5];
    let n = read_full(r, &mut h)?;
    if n == 0 {
        return Ok(None);
    }
    if n < 5 {
        return Err(BundleError::Truncated("the stream ends inside a frame header".into()));
    }
    Ok(Some((h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)))
}

/// A chunk as read: its hash (checked) and its bytes.
#[derive(Debug)]
pub struct Chunk {
    pub sha256: String,
    pub data: Vec<u8>,
}

/// What a reader yields: a chunk carried in the stream (hash checked), or a reference to
/// a listed chunk the sender says this side holds. Whoever accepts references resolves
/// them from what it holds and checks the hash again; [`Reader::next_chunk`] refuses them.
#[derive(Debug)]
pub enum Item {
    Chunk(Chunk),
    Held {
        sha256: String,
        size: u64,
    },
    /// Left out by the sender (`N`): the receiver said it does not need it.
    LeftOut {
        sha256: String,
        size: u64,
    },
}

/// Reads and verifies a bundle. [`Reader::open`] verifies the manifest (signature, trust,
/// version, limits, references); [`Reader::next_chunk`] yields each chunk once its hash
/// is checked, and `Ok(None)` only after the end frame, when every listed chunk came.
pub struct Reader<R: Read> {
    r: R,
    manifest: Manifest,
    manifest_hash: String,
    signer: VerifyingKey,
    expected: HashMap<String, (u64, bool)>,
    seen: u64,
    done: bool,
    dctx: zstd::zstd_safe::DCtx<'static>,
}

impl<R: Read> Reader<R> {
    /// `trusted`: the keys whose bundles this reader accepts.
    pub fn open(mut r: R, trusted: &[VerifyingKey], limits: &Limits) -> Result<Reader<R>, BundleError> {
        let mut magic = [0u8; 8];
        let n = read_full(&mut r, &mut magic)?;
        if n < magic.len() || &magic != MAGIC {
            return Err(if n < magic.len() && magic[..n] == MAGIC[..n] {
                BundleError::Truncated("the stream ends inside the magic".into())
            } else {
                BundleError::BadMagic
            });
        }
        let (tag, len) = header(&mut r)?.ok_or_else(|| BundleError::Truncated("no manifest".into()))?;
        if tag != b'M' {
            return Err(BundleError::BadFrame(format!("expected the manifest frame first, found tag {tag:#04x}")));
        }
        if len > limits.max_manifest_bytes {
            return Err(BundleError::TooMany { what: "manifest bytes", count: len, max: limits.max_manifest_bytes });
        }
        let mut json = vec![0u8; len];
        read_exact(&mut r, &mut json, "the manifest")?;
        let (tag, len) = header(&mut r)?.ok_or_else(|| BundleError::Truncated("no signature".into()))?;
        if tag != b'S' || len != 96 {
            return Err(BundleError::BadFrame("expected the 96-byte signature frame after the manifest".into()));
        }
        let mut sig = [0u8; 96];
        read_exact(&mut r, &mut sig, "the signature")?;
        let key_bytes: [u8; 32] = sig[..32].try_into().expect("32");
        let signer = VerifyingKey::from_bytes(&key_bytes).map_err(|_| BundleError::BadSignature)?;
        let signature = Signature::from_bytes(&sig[32..].try_into().expect("64"));
        // Authenticity first: nothing of an unsigned manifest is parsed.
        signer.verify(&[SIGNING_CONTEXT, &json].concat(), &signature).map_err(|_| BundleError::BadSignature)?;
        if !trusted.contains(&signer) {
            return Err(BundleError::UntrustedKey(crate::key_hex(&signer)));
        }
        // The version before the schema, so a newer bundle says "upgrade" rather than
        // naming a field this version does not know.
        #[derive(serde::Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version = serde_json::from_slice(&json).map_err(|e| BundleError::InvalidManifest(e.to_string()))?;
        if v.format_version > crate::FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion { found: v.format_version, supported: crate::FORMAT_VERSION });
        }
        let manifest: Manifest =
            serde_json::from_slice(&json).map_err(|e| BundleError::InvalidManifest(e.to_string()))?;
        manifest.validate(limits)?;
        if manifest.source.site_key != crate::key_hex(&signer) {
            return Err(BundleError::InvalidManifest("source.site_key is not the key that signed the bundle".into()));
        }
        let expected = manifest.chunks.iter().map(|c| (c.sha256.clone(), (c.size, false))).collect();
        let dctx = zstd::zstd_safe::DCtx::try_create()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::OutOfMemory, "no zstd context"))?;
        Ok(Reader { r, manifest, manifest_hash: sha256_hex(&json), signer, expected, seen: 0, done: false, dctx })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 (hex) of the manifest's bytes as signed: with the source, an import's key.
    pub fn manifest_hash(&self) -> &str {
        &self.manifest_hash
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.r
    }

    pub fn signer(&self) -> &VerifyingKey {
        &self.signer
    }

    /// The next chunk; a reference frame is refused (`bundle_chunk_not_held`): this caller
    /// holds nothing to resolve it from.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, BundleError> {
        match self.next_item()? {
            None => Ok(None),
            Some(Item::Chunk(c)) => Ok(Some(c)),
            Some(Item::Held { sha256, .. }) => Err(BundleError::ChunkNotHeld(sha256)),
            Some(Item::LeftOut { sha256, .. }) => Err(BundleError::ChunkLeftOut(sha256)),
        }
    }

    /// The next chunk or reference; `Ok(None)` only after the end frame, when every listed
    /// chunk came once (carried or referenced).
    pub fn next_item(&mut self) -> Result<Option<Item>, BundleError> {
        if self.done {
            return Ok(None);
        }
        let Some((tag, len)) = header(&mut self.r)? else {
            return Err(BundleError::Truncated("the stream ends before the end frame".into()));
        };
        match tag {
            b'R' | b'N' => {
                if len != 32 {
                    return Err(BundleError::BadFrame(format!("a reference frame of {len} bytes (32)")));
                }
                let mut hash = [0u8; 32];
                read_exact(&mut self.r, &mut hash, "a reference")?;
                let hash = hex::encode(hash);
                let Some((size, seen)) = self.expected.get_mut(&hash) else {
                    return Err(BundleError::ChunkNotInManifest(hash));
                };
                if *seen {
                    return Err(BundleError::DuplicateChunk(hash));
                }
                *seen = true;
                self.seen += 1;
                Ok(Some(match tag {
                    b'R' => Item::Held { sha256: hash, size: *size },
                    _ => Item::LeftOut { sha256: hash, size: *size },
                }))
            }
            b'C' => {
                if !(32..=32 + MAX_COMPRESSED).contains(&len) {
                    return Err(BundleError::BadFrame(format!("a chunk frame of {len} bytes")));
                }
                let mut hash = [0u8; 32];
                read_exact(&mut self.r, &mut hash, "a chunk")?;
                let hash = hex::encode(hash);
                let mut z = vec![0u8; len - 32];
                read_exact(&mut self.r, &mut z, "a chunk")?;
                let Some((size, seen)) = self.expected.get_mut(&hash) else {
                    return Err(BundleError::ChunkNotInManifest(hash));
                };
                if *seen {
                    return Err(BundleError::DuplicateChunk(hash));
                }
                // Decompressed in one call into a buffer of the listed size plus one byte:
                // zstd writes nowhere else (no window buffer of the size a frame declares,
                // which a streaming decoder would allocate, up to 128 MiB), and stops with
                // "too small" at a bomb.
                let mut data = Vec::with_capacity(*size as usize + 1);
                match self.dctx.decompress(&mut data, &z) {
                    Ok(_) => {}
                    Err(e) if zstd::zstd_safe::get_error_name(e) == TOO_SMALL => {
                        return Err(BundleError::ChunkTooLarge { hash, size: *size })
                    }
                    Err(_) => return Err(BundleError::ChunkHashMismatch(hash)),
                }
                if data.len() as u64 > *size {
                    return Err(BundleError::ChunkTooLarge { hash, size: *size });
                }
                if data.len() as u64 != *size || sha256_hex(&data) != hash {
                    return Err(BundleError::ChunkHashMismatch(hash));
                }
                *seen = true;
                self.seen += 1;
                Ok(Some(Item::Chunk(Chunk { sha256: hash, data })))
            }
            b'E' => {
                if len != 8 {
                    return Err(BundleError::BadFrame("the end frame holds 8 bytes".into()));
                }
                let mut n = [0u8; 8];
                read_exact(&mut self.r, &mut n, "the end frame")?;
                if let Some((h, _)) = self.expected.iter().find(|(_, (_, seen))| !seen) {
                    return Err(BundleError::MissingChunk(h.clone()));
                }
                if u64::from_be_bytes(n) != self.seen {
                    return Err(BundleError::BadFrame("the end frame's chunk count is wrong".into()));
                }
                let mut extra = [0u8; 1];
                if read_full(&mut self.r, &mut extra)? != 0 {
                    return Err(BundleError::BadFrame("data after the end frame".into()));
                }
                self.done = true;
                Ok(None)
            }
            t => Err(BundleError::BadFrame(format!("unknown frame tag {t:#04x}"))),
        }
    }

    /// Reads every remaining chunk, handing each to `f`.
    pub fn for_each_chunk(&mut self, mut f: impl FnMut(Chunk) -> Result<(), BundleError>) -> Result<(), BundleError> {
        while let Some(c) = self.next_chunk()? {
            f(c)?;
        }
        Ok(())
    }
}

/// The head of a bundle as a pusher relays it: the bytes of the magic, the manifest and
/// signature frames (unchanged), and the chunks the manifest lists. Nothing is verified
/// here (the receiver verifies everything); lengths are bounded as a reader bounds them.
pub struct Head {
    pub bytes: Vec<u8>,
    pub chunks: Vec<ChunkRef>,
}

/// Reads a bundle's head from `r` (see [`Head`]).
pub fn read_head<R: Read>(r: &mut R, limits: &Limits) -> Result<Head, BundleError> {
    let mut bytes = vec![0u8; MAGIC.len()];
    read_exact(r, &mut bytes, "the magic")?;
    if &bytes[..] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let (tag, len) = header(r)?.ok_or_else(|| BundleError::Truncated("no manifest".into()))?;
    if tag != b'M' || len > limits.max_manifest_bytes {
        return Err(BundleError::BadFrame("expected a manifest frame within its bound first".into()));
    }
    let mut json = vec![0u8; len];
    read_exact(r, &mut json, "the manifest")?;
    let (tag, len) = header(r)?.ok_or_else(|| BundleError::Truncated("no signature".into()))?;
    if tag != b'S' || len != 96 {
        return Err(BundleError::BadFrame("expected the 96-byte signature frame after the manifest".into()));
    }
    let mut sig = [0u8; 96];
    read_exact(r, &mut sig, "the signature")?;
    // Only the chunk list: a newer exporter's other fields are the receiver's business.
    #[derive(serde::Deserialize)]
    struct Chunks {
        chunks: Vec<ChunkRef>,
    }
    let c: Chunks = serde_json::from_slice(&json).map_err(|e| BundleError::InvalidManifest(e.to_string()))?;
    if c.chunks.len() > limits.max_chunks {
        return Err(BundleError::TooMany { what: "chunks", count: c.chunks.len(), max: limits.max_chunks });
    }
    for (tag, payload) in [(b'M', &json[..]), (b'S', &sig[..])] {
        bytes.push(tag);
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
    }
    Ok(Head { bytes, chunks: c.chunks })
}

/// What [`relay`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes read after the head (the chunks and the end frame as the source wrote them).
    pub bytes_in: u64,
    /// Bytes written after the head.
    pub bytes_out: u64,
    /// Chunks carried (sent), referenced (held by the receiver) and left out (not needed
    /// by the receiver).
    pub carried: u64,
    pub referenced: u64,
    pub left_out: u64,
}

/// How [`relay_with`] passes a chunk on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Its data (`C`).
    Carry,
    /// A reference (`R`): the receiver holds it.
    Reference,
    /// Left out (`N`): the receiver does not need it.
    LeaveOut,
}

/// Relays the frames after a bundle's head from `r` to `w`, writing a reference frame
/// instead of each chunk whose hash is in `held` (the receiver said it holds them), up to
/// and including the end frame. The end frame's count is unchanged.
pub fn relay<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    held: &std::collections::HashSet<String>,
) -> Result<Relayed, BundleError> {
    relay_with(r, w, |h| if held.contains(h) { Pass::Reference } else { Pass::Carry })
}

/// Relays the frames after a bundle's head from `r` to `w`, each chunk as `pass` says
/// (by its hash), up to and including the end frame. A chunk the source referenced or
/// left out already stays so (there is no data to carry). The end frame's count (every
/// chunk, however passed) is unchanged.
pub fn relay_with<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    pass: impl Fn(&str) -> Pass,
) -> Result<Relayed, BundleError> {
    let mut out = Relayed::default();
    let mut buf = Vec::new();
    loop {
        let (tag, len) =
            header(r)?.ok_or_else(|| BundleError::Truncated("the stream ends before the end frame".into()))?;
        match tag {
            b'C' => {
                if !(32..=32 + MAX_COMPRESSED).contains(&len) {
                    return Err(BundleError::BadFrame(format!("a chunk frame of {len} bytes")));
                }
                buf.resize(len, 0);
                read_exact(r, &mut buf, "a chunk")?;
                out.bytes_in += 5 + len as u64;
                match pass(&hex::encode(&buf[..32])) {
                    Pass::Carry => {
                        frame(w, b'C', &[&buf])?;
                        out.bytes_out += 5 + len as u64;
                        out.carried += 1;
                    }
                    Pass::Reference => {
                        frame(w, b'R', &[&buf[..32]])?;
                        out.bytes_out += 5 + 32;
                        out.referenced += 1;
                    }
                    Pass::LeaveOut => {
                        frame(w, b'N', &[&buf[..32]])?;
                        out.bytes_out += 5 + 32;
                        out.left_out += 1;
                    }
                }
            }
            b'R' | b'N' if len == 32 => {
                let mut h = [0u8; 32];
                read_exact(r, &mut h, "a reference")?;
                let tag = match (tag, pass(&hex::encode(h))) {
                    (_, Pass::LeaveOut) | (b'N', _) => b'N',
                    _ => b'R',
                };
                frame(w, tag, &[&h])?;
                out.bytes_in += 37;
                out.bytes_out += 37;
                match tag {
                    b'R' => out.referenced += 1,
                    _ => out.left_out += 1,
                }
            }
            b'E' if len == 8 => {
                let mut n = [0u8; 8];
                read_exact(r, &mut n, "the end frame")?;
                frame(w, b'E', &[&n])?;
                out.bytes_in += 13;
                out.bytes_out += 13;
                w.flush()?;
                return Ok(out);
            }
            t => return Err(BundleError::BadFrame(format!("unexpected frame tag {t:#04x} of {len} bytes"))),
        }
    }
}
