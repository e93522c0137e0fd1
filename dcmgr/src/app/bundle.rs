//! VDC bundles (issue 13): export the caller's model (and its images' data) as a signed
//! bundle, plan an import, import it. The format is the `vdc-bundle` crate's.
//!
//! An import verifies the whole stream before anything is created: the reader checks the
//! signature against the trusted keys, the manifest, and every chunk's hash as it arrives;
//! verified chunks go into the blobs assembled as they arrive, and are kept when needed
//! again ([`bundle_stage`](crate::app::bundle_stage)). Then the pure [`decide`] turns (manifest, the account's state, the maps) into a plan, and one
//! transaction creates it all, recording the import first: the same bundle again finds
//! the record and changes nothing; a crash before commit leaves nothing but staged data,
//! and the same command completes it.

use crate::app::bundle_stage::{Assembled, Stager};
use crate::app::{bundle_data, floating_ip, image, instance, interface, keypair, quota, scheduler, secgroup, volume};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::{
    self as db, account as accounts, bundle as store, instance as istore, job, network as nstore, volume as vstore,
};
use crate::error::{ApiError, ApiResult};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use vdc_bundle::{BundleError, Manifest};
use vdc_bus::fileio::DirectReader;
use vdc_schema::api::{
    BundleChange, BundleConflict, BundleCreate, BundleImport, BundleImported, BundlePlan, Image, Network, QuotaKey,
    RuleSpec,
};
use vdc_schema::id::*;
use vdc_schema::state::{HypervisorKind, ImageFormat, ImageState, ServerGroupPolicy};

impl From<BundleError> for ApiError {
    fn from(e: BundleError) -> Self {
        match e {
            BundleError::Io(e) => ApiError::bad("bundle_io", format!("reading the bundle failed: {e}")),
            e => ApiError::bad(e.code(), e.to_string()),
        }
    }
}

fn chunk_dir(ctx: &SharedCtx) -> PathBuf {
    ctx.config.images_dir().join("bundle-chunks")
}

/// Where blobs are made before the store takes them (the same file system: a rename).
fn staging_dir(ctx: &SharedCtx) -> PathBuf {
    ctx.config.images_dir().join("staging")
}

// ---------------------------------------------------------------- export

/// The caller's VDC as a manifest, the blobs (local paths) whose chunks follow it, and
/// what the export made to read its data (removed once the bundle is written). Without
/// `model_only`, instances' disks and volumes' data are captured first (see
/// [`bundle_data`](crate::app::bundle_data)); `stop` lets running instances be stopped for it.
///
/// The work runs in a task of its own and ends even when the caller stops waiting (a
/// client that went away while disks were captured, for minutes): then what it made is
/// removed, and the instances it stopped are started again, as after a failure.
pub async fn manifest(
    ctx: &SharedCtx,
    caller: &Caller,
    model_only: bool,
    stop: bool,
) -> ApiResult<(Manifest, Vec<BlobFile>, bundle_data::Temporaries)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ctx, caller) = (ctx.clone(), caller.clone());
    tokio::spawn(async move {
        // A stopping dcmgr drops the export where it is: what it made is recorded, and
        // swept at the next start (`bundle_data::sweep`).
        let r = tokio::select! {
            r = capture_manifest(&ctx, &caller, model_only, stop) => r,
            _ = ctx.stopping.cancelled() => return,
        };
        if let Err(Ok((_, _, temp))) = tx.send(r) {
            tracing::info!(account = %caller.account_id, "bundle export: the client went away; its captures are removed");
            temp.remove(&ctx, &caller).await;
        }
    });
    rx.await.map_err(|_| ApiError::internal("the export's capture ended without an answer"))?
}

async fn capture_manifest(
    ctx: &SharedCtx,
    caller: &Caller,
    model_only: bool,
    stop: bool,
) -> ApiResult<(Manifest, Vec<BlobFile>, bundle_data::Temporaries)> {
    let started = std::time::Instant::now();
    let s = store::snapshot(&ctx.db, &caller.account_id).await?;
    let (captured, temp) = if model_only {
        (bundle_data::Captured::default(), bundle_data::Temporaries::default())
    } else {
        let format_of: HashMap<&str, &str> = s.images.iter().map(|i| (i.0.as_str(), i.2.as_str())).collect();
        let sources: Vec<bundle_data::DiskSource> = s
            .instances
            .iter()
            .map(|i| bundle_data::DiskSource {
                id: i.0.clone(),
                name: i.1.clone(),
                hypervisor: i.3.clone(),
                image_format: format_of.get(i.2.as_str()).copied().unwrap_or_default().to_owned(),
            })
            .collect();
        let volumes: Vec<String> = s.volumes.iter().map(|v| v.0.clone()).collect();
        bundle_data::capture_all(ctx, caller, &sources, &volumes, stop).await?
    };
    let captured_in = started.elapsed();
    match build_manifest(ctx, caller, s, model_only, &captured).await {
        Ok((m, paths)) => {
            tracing::info!(account = %caller.account_id, ?captured_in, chunked_in = ?(started.elapsed() - captured_in),
                chunks = m.chunks.len(), "bundle export: data captured and chunked");
            Ok((m, paths, temp))
        }
        Err(e) => {
            temp.remove(ctx, caller).await;
            Err(e)
        }
    }
}

/// Splits blobs into chunk lists, each chunk listed once, each blob's file read once.
#[derive(Default)]
struct Blobs {
    chunks: Vec<vdc_bundle::ChunkRef>,
    seen: HashSet<String>,
    files: Vec<BlobFile>,
    done: HashMap<String, vdc_bundle::BlobRef>,
}

/// A blob's file and its chunks as listed, which the bundle's data pass reads again.
pub type BlobFile = (PathBuf, Vec<vdc_bundle::Listed>);

impl Blobs {
    async fn add(&mut self, ctx: &SharedCtx, sha: &str) -> ApiResult<vdc_bundle::BlobRef> {
        if let Some(b) = self.done.get(sha) {
            return Ok(b.clone());
        }
        let path = ctx.blobs.local_path(sha).ok_or_else(|| ApiError::internal("blob store is not local"))?;
        let (blob, listed) = match ctx.chunk_lists.get(sha) {
            // Hashed as the capture arrived.
            Some(chunks) => {
                let listed: Vec<vdc_bundle::Listed> = chunks
                    .into_iter()
                    .map(|(sha256, size, crc32)| vdc_bundle::Listed { sha256, size, crc32 })
                    .collect();
                (vdc_bundle::blob_of_chunks(sha.to_owned(), &listed), listed)
            }
            None => {
                let (p, name) = (path.clone(), sha.to_owned());
                tokio::task::spawn_blocking(move || vdc_bundle::chunk_stored_blob(DirectReader::open(&p)?, &name))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(|e| ApiError::internal(format!("reading blob {sha}: {e}")))?
            }
        };
        for c in &listed {
            if self.seen.insert(c.sha256.clone()) {
                self.chunks.push(c.chunk_ref());
            }
        }
        self.files.push((path, listed));
        self.done.insert(sha.to_owned(), blob.clone());
        Ok(blob)
    }
}

async fn build_manifest(
    ctx: &SharedCtx,
    caller: &Caller,
    s: store::Snapshot,
    model_only: bool,
    captured: &bundle_data::Captured,
) -> ApiResult<(Manifest, Vec<BlobFile>)> {
    let mut m = vdc_bundle::Model::default();
    for n in s.networks {
        m.networks.push(vdc_bundle::Network {
            id: n.0,
            name: n.1,
            cidr: n.2,
            gateway: n.3,
            dhcp_start: n.4,
            dhcp_end: n.5,
        });
    }
    let mut rules: HashMap<String, Vec<vdc_bundle::Rule>> = HashMap::new();
    for r in s.rules {
        rules.entry(r.0).or_default().push(vdc_bundle::Rule {
            direction: r.1.parse().map_err(ApiError::internal)?,
            protocol: r.2.parse().map_err(ApiError::internal)?,
            port_min: r.3.map(|p| p as u16),
            port_max: r.4.map(|p| p as u16),
            cidr: r.5,
            group: r.6,
        });
    }
    for g in s.groups {
        let rules = rules.remove(&g.0).unwrap_or_default();
        m.security_groups.push(vdc_bundle::SecurityGroup { id: g.0, name: g.1, description: g.2, rules });
    }
    for k in s.keypairs {
        m.keypairs.push(vdc_bundle::KeyPair { id: k.0, name: k.1, public_key: k.2 });
    }
    for g in s.server_groups {
        m.server_groups.push(vdc_bundle::ServerGroup {
            id: g.0,
            name: g.1,
            policy: g.2.parse().map_err(ApiError::internal)?,
        });
    }
    let mut blobs = Blobs::default();
    for i in s.images {
        let own = i.12 == caller.account_id.as_str();
        let blob = match (&i.11, own && !model_only) {
            (Some(sha), true) => Some(blobs.add(ctx, sha).await?),
            _ => None,
        };
        m.images.push(vdc_bundle::Image {
            id: i.0,
            name: i.1,
            format: i.2.parse().map_err(ApiError::internal)?,
            arch: i.3.parse().map_err(ApiError::internal)?,
            hypervisors: db::split_list(&i.4),
            boot_mode: i.5.parse().map_err(ApiError::internal)?,
            kernel_id: i.6,
            min_disk: i.7.map(|v| v as u64),
            min_memory: i.8.map(|v| v as u64),
            os: i.9,
            default_user: i.10,
            // Only an own image that travels with its data: one resolved by name at the
            // target is that site's to keep or not.
            deleted: i.13 == 1 && blob.is_some(),
            blob,
        });
    }
    let mut groups_of: HashMap<String, Vec<String>> = HashMap::new();
    for (vif, g) in s.vif_groups {
        groups_of.entry(vif).or_default().push(g);
    }
    let mut nics: HashMap<String, Vec<vdc_bundle::Interface>> = HashMap::new();
    for v in s.vifs {
        nics.entry(v.1).or_default().push(vdc_bundle::Interface {
            network: v.2,
            ip: v.3,
            mac: v.4,
            security_groups: groups_of.remove(&v.0).unwrap_or_default(),
        });
    }
    for i in s.instances {
        let (root_disk, root_disk_format) = match captured.disks.get(&i.0) {
            Some((sha, format)) => (Some(blobs.add(ctx, sha).await?), Some(*format)),
            None => (None, None),
        };
        m.instances.push(vdc_bundle::Instance {
            hostname: crate::app::instance::hostname(&i.1, &i.0),
            interfaces: nics.remove(&i.0).unwrap_or_default(),
            id: i.0,
            name: i.1,
            image: i.2,
            hypervisor: i.3.parse().map_err(ApiError::internal)?,
            cpus: i.4 as u32,
            memory_mib: i.5 as u32,
            // A key pair deleted since the instance was made is not carried (it is an
            // input of create only): the manifest refers only to what it holds.
            keypair: i.6.filter(|k| m.keypairs.iter().any(|x| &x.id == k)),
            user_data: i.7,
            root_disk_size: i.8.map(|v| v as u64),
            root_disk,
            root_disk_format,
            // Its goal as the tenant left it (an export with `stop` starts it again); a
            // halted one (powered off, its host kept) travels stopped, as it is: marked
            // not stopped, it ran at the target.
            stopped: [vdc_schema::InstanceGoal::Stopped, vdc_schema::InstanceGoal::Halted]
                .iter()
                .any(|g| i.9 == g.as_str()),
            zone: Some(i.10).filter(|z| !z.is_empty()),
            host_labels: crate::datastore::host::split_labels(&i.11),
            server_group: i.12.filter(|g| m.server_groups.iter().any(|x| &x.id == g)),
        });
    }
    for v in s.volumes {
        let (data, data_format) = match captured.volumes.get(&v.0) {
            Some((sha, format)) => (Some(blobs.add(ctx, sha).await?), Some(*format)),
            None => (None, None),
        };
        // Attached to an instance the bundle holds (a live one: the snapshot's instances).
        let attached_to = v.3.filter(|i| m.instances.iter().any(|x| &x.id == i));
        m.volumes.push(vdc_bundle::Volume { id: v.0, name: v.1, size_mib: v.2 as u64, data, data_format, attached_to });
    }
    for f in s.floating_ips {
        m.floating_ips.push(vdc_bundle::FloatingIp { id: f.0, instance: f.1 });
    }
    let manifest = Manifest {
        format_version: vdc_bundle::FORMAT_VERSION,
        source: vdc_bundle::Source {
            site_key: vdc_bundle::key_hex(&ctx.site_key.verifying_key()),
            vdc_id: caller.account_id.to_string(),
            exported_at: db::now(),
        },
        model: m,
        chunks: blobs.chunks,
    };
    // What this site writes, it must read back.
    manifest.validate(&vdc_bundle::Limits::default())?;
    Ok((manifest, blobs.files))
}

/// Writes the bundle of `manifest` to `w`: the blobs' files split as listed, each chunk
/// checked against its listing (`Writer::write_listed`: size and CRC-32, not SHA-256
/// again). Blobs are read direct, as when listed ([`DirectReader`]: not through the page
/// cache, read ahead on a thread of its own).
pub fn write_bundle<W: std::io::Write>(
    w: W,
    manifest: &Manifest,
    key: &vdc_bundle::SigningKey,
    files: &[BlobFile],
) -> Result<W, BundleError> {
    let mut writer = vdc_bundle::Writer::new(w, manifest, key)?;
    let mut written = 0;
    for (path, chunks) in files {
        let mut f = DirectReader::open(path)?;
        for c in chunks {
            if writer.write_listed(c, &f.next_exactly(c.size as usize)?)? {
                written += 1;
            }
        }
    }
    writer.finish(written)
}

// ---------------------------------------------------------------- receive and verify

/// A bundle read in full and verified.
pub struct Received {
    pub manifest: Manifest,
    pub hash: String,
    pub chunks: u64,
    pub bytes: u64,
    /// Of `chunks`, those referenced by the sender and read from what this site holds.
    pub held: u64,
    /// Of `chunks`, those the sender left out (a push: this site said it does not need
    /// them). A blob holding one cannot be stored from this bundle.
    pub left_out: HashSet<String>,
    /// The blobs assembled while the chunks arrived (an import's; none for a plan).
    pub assembled: Assembled,
}

struct Counting<R> {
    r: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Where a chunk the account holds is: (blob file, offset, size).
pub type HeldChunks = HashMap<String, (PathBuf, u64, u64)>;

/// Reads a held chunk and checks it is the chunk its hash names.
fn read_held(sha: &str, size: u64, at: Option<&(PathBuf, u64, u64)>) -> Result<Vec<u8>, BundleError> {
    use std::io::{Seek, SeekFrom};
    let not_held = || BundleError::ChunkNotHeld(sha.to_owned());
    let (path, offset, held_size) = at.ok_or_else(not_held)?;
    if *held_size != size {
        return Err(not_held());
    }
    let mut f = std::fs::File::open(path).map_err(|_| not_held())?;
    f.seek(SeekFrom::Start(*offset)).map_err(|_| not_held())?;
    let mut data = vec![0u8; size as usize];
    if vdc_bundle::read_full(&mut f, &mut data)? != data.len() || vdc_bundle::sha256_hex(&data) != sha {
        return Err(not_held());
    }
    Ok(data)
}

/// Reads and verifies a whole bundle from `r` (blocking). With `stage` (which makes a
/// [`Stager`] for the manifest), each verified chunk goes into the blobs assembled as they
/// arrive, and is kept in the staging directory under its hash when it is needed again
/// (see [`bundle_stage`](crate::app::bundle_stage)). A chunk the sender references
/// instead of carrying (a push) is read from what `held` (asked once, with the manifest's
/// chunks) says the account holds, and its hash checked again; one it does not hold
/// refuses the bundle (`bundle_chunk_not_held`).
pub fn receive<R: Read>(
    r: R,
    trusted: &[vdc_bundle::VerifyingKey],
    stage: Option<impl FnOnce(&Manifest) -> std::io::Result<Stager>>,
    mut held: impl FnMut(&[String]) -> Result<HeldChunks, BundleError>,
) -> Result<Received, BundleError> {
    let mut reader = vdc_bundle::Reader::open(Counting { r, n: 0 }, trusted, &vdc_bundle::Limits::default())?;
    let stager = match stage {
        Some(make) => Some(make(reader.manifest())?),
        None => None,
    };
    let (mut chunks, mut referenced, mut left_out) = (0u64, 0u64, HashSet::new());
    let mut holdings: Option<HeldChunks> = None;
    let assembled = std::thread::scope(|s| -> Result<Assembled, BundleError> {
        // Verified chunks go to the stager on a thread of their own while the next one is
        // read, decompressed and hashed. `Err`: a chunk left out.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<vdc_bundle::Chunk, String>>(2);
        let writer = stager.map(|mut st| {
            s.spawn(move || {
                rx.into_iter().try_for_each(|c| match c {
                    Ok(c) => st.chunk(c),
                    Err(sha) => st.leave_out(&sha),
                })?;
                st.finish()
            })
        });
        let mut read = || -> Result<(), BundleError> {
            while let Some(item) = reader.next_item()? {
                chunks += 1;
                let c = match item {
                    vdc_bundle::Item::Chunk(c) => Ok(c),
                    vdc_bundle::Item::Held { sha256, size } => {
                        if holdings.is_none() {
                            let all: Vec<String> = reader.manifest().chunks.iter().map(|c| c.sha256.clone()).collect();
                            holdings = Some(held(&all)?);
                        }
                        referenced += 1;
                        let data = read_held(&sha256, size, holdings.as_ref().and_then(|h| h.get(&sha256)))?;
                        Ok(vdc_bundle::Chunk { sha256, data })
                    }
                    vdc_bundle::Item::LeftOut { sha256, .. } => {
                        left_out.insert(sha256.clone());
                        Err(sha256)
                    }
                };
                if writer.is_some() && tx.send(c).is_err() {
                    break; // the writer stopped on an error: joined below
                }
            }
            Ok(())
        };
        let r = read();
        drop(tx);
        let w = writer.map_or(Ok(Assembled::default()), |w| w.join().expect("staging a chunk does not panic"));
        r.and(w)
    })?;
    let bytes = reader.get_ref().n;
    Ok(Received {
        manifest: reader.manifest().clone(),
        hash: reader.manifest_hash().to_owned(),
        chunks,
        bytes,
        held: referenced,
        left_out,
        assembled,
    })
}

/// The account's chunks among `hashes` whose blob is still stored here.
async fn held_by(ctx: &SharedCtx, account: &AccountId, hashes: &[String]) -> ApiResult<HeldChunks> {
    let rows = store::held_chunks(&ctx.db, account, hashes).await?;
    Ok(rows
        .into_iter()
        .filter_map(|c| {
            let path = ctx.blobs.local_path(&c.blob).filter(|p| p.exists())?;
            Some((c.sha256, (path, c.offset, c.size)))
        })
        .collect())
}

/// Which of `q.chunks` the caller's account does not hold here (issue 13, point 6): a
/// pusher sends those and references the rest.
pub async fn missing(
    ctx: &SharedCtx,
    caller: &Caller,
    q: vdc_schema::api::BundleChunkQuery,
) -> ApiResult<vdc_schema::api::BundleChunksMissing> {
    let max = vdc_schema::api::MAX_CHUNK_QUERY;
    if q.chunks.len() > max {
        return Err(ApiError::bad(
            "too_many_chunks",
            format!("{} chunks asked about at once; ask about at most {max} per request", q.chunks.len()),
        ));
    }
    if let Some(bad) =
        q.chunks.iter().find(|h| h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(ApiError::bad(
            "invalid_request",
            format!("{:?} is not a lower-case hex SHA-256", bad.chars().take(80).collect::<String>()),
        ));
    }
    let held = held_by(ctx, &caller.account_id, &q.chunks).await?;
    Ok(vdc_schema::api::BundleChunksMissing {
        missing: q.chunks.into_iter().filter(|h| !held.contains_key(h)).collect(),
    })
}

/// Records the chunks of the blobs an import stored as held by the account.
async fn record_held(
    ctx: &SharedCtx,
    account: &AccountId,
    m: &Manifest,
    blobs: &[&vdc_bundle::BlobRef],
) -> ApiResult<()> {
    let sizes: HashMap<&str, u64> = m.chunks.iter().map(|c| (c.sha256.as_str(), c.size)).collect();
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for b in blobs {
        let mut offset = 0u64;
        for c in &b.chunks {
            let size = sizes.get(c.as_str()).copied().unwrap_or_default();
            if seen.insert(c.clone()) {
                rows.push(store::HeldChunk { sha256: c.clone(), blob: b.sha256.clone(), offset, size });
            }
            offset += size;
        }
    }
    store::record_chunks(&ctx.db, account, &rows).await?;
    Ok(())
}

// ---------------------------------------------------------------- plan

/// The `--map KEY=VALUE` pairs of a plan or import.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    /// network name → new CIDR (same prefix length; host parts of addresses are kept).
    cidr: HashMap<String, Ipv4Net>,
    /// (kind, bundle name) → name here.
    rename: HashMap<(String, String), String>,
    hypervisor: HashMap<HypervisorKind, HypervisorKind>,
    /// image name → an image of this site the account may use.
    image: HashMap<String, String>,
    /// zone of the bundle → zone here (`None`: any zone).
    zone: HashMap<String, Option<String>>,
    /// host label key → value here (`None`: not asked for).
    label: HashMap<String, Option<String>>,
    /// server group name → its policy here.
    policy: HashMap<String, ServerGroupPolicy>,
    skip_volumes: bool,
    skip_floating_ips: bool,
    /// `downgrade=allow`: a bundle exported before the one imported is applied anyway
    /// (a source whose clock ran ahead once would otherwise lock its updates out).
    allow_downgrade: bool,
    invalid: Vec<String>,
    /// An update deletes the objects of the earlier import gone from the bundle.
    pub prune: bool,
}

const KINDS: &[&str] = &["network", "security_group", "keypair", "image", "instance", "volume", "server_group"];

pub fn parse_maps(pairs: &[String]) -> Maps {
    let mut m = Maps::default();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            m.invalid.push(format!("{p:?} is not KEY=VALUE"));
            continue;
        };
        let parts: Vec<&str> = k.splitn(2, '.').collect();
        let ok = match (parts.as_slice(), v) {
            (["volumes"], "skip") => {
                m.skip_volumes = true;
                true
            }
            (["floating_ips"], "skip") => {
                m.skip_floating_ips = true;
                true
            }
            (["downgrade"], "allow") => {
                m.allow_downgrade = true;
                true
            }
            (["zone", from], "any") => m.zone.insert(from.to_string(), None).is_none(),
            (["zone", from], to) => {
                crate::app::node::check_zone(to).is_ok() && m.zone.insert(from.to_string(), Some(to.into())).is_none()
            }
            (["label", key], "any") => m.label.insert(key.to_string(), None).is_none(),
            (["label", key], to) => {
                crate::app::node::check_label(key, to).is_ok()
                    && m.label.insert(key.to_string(), Some(to.into())).is_none()
            }
            (["hypervisor", from], to) => match (from.parse(), to.parse()) {
                (Ok(f), Ok(t)) => m.hypervisor.insert(f, t).is_none(),
                _ => false,
            },
            ([kind, rest], v) => match rest.rsplit_once('.') {
                Some((name, "policy")) if *kind == "server_group" => match v.parse::<ServerGroupPolicy>() {
                    Ok(p) => m.policy.insert(name.to_owned(), p).is_none(),
                    _ => false,
                },
                Some((name, "cidr")) if *kind == "network" => match v.parse::<Ipv4Net>() {
                    Ok(n) if n.trunc() == n => m.cidr.insert(name.to_owned(), n).is_none(),
                    _ => false,
                },
                Some((name, "name")) if KINDS.contains(kind) => match crate::app::validate_name(kind, v) {
                    Ok(()) => m.rename.insert((kind.to_string(), name.to_owned()), v.to_owned()).is_none(),
                    // A new name the API would refuse (`instance.vm1.name=../..`).
                    Err(e) => {
                        m.invalid.push(format!("--map {p:?}: {e}"));
                        continue;
                    }
                },
                _ if *kind == "image" && v.parse::<ImageId>().is_ok() => {
                    m.image.insert(rest.to_string(), v.to_owned()).is_none()
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            m.invalid.push(format!("--map {p:?} is not understood (or repeats a key)"));
        }
    }
    m
}

/// A network as it will be created.
#[derive(Debug, Clone)]
pub struct PlannedNetwork {
    pub bundle_id: String,
    pub name: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    /// The bundle's CIDR, when remapped: addresses keep their host part.
    pub from: Option<Ipv4Net>,
    /// The network of the earlier import it is (an update), by ID here.
    pub existing: Option<String>,
}

impl PlannedNetwork {
    fn translate(&self, a: Ipv4Addr) -> Ipv4Addr {
        match self.from {
            Some(from) => Ipv4Addr::from(u32::from(self.cidr.network()) + (u32::from(a) - u32::from(from.network()))),
            None => a,
        }
    }
}

/// The plan's note on an image deleted at the source ([`vdc_bundle::Image::deleted`]).
const DELETED_AT_SOURCE: &str =
    "deleted at the source (kept there for its instances): deleted here too, kept hidden while instances here boot it";

/// Where an instance's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageChoice {
    /// Created from the bundle's data.
    New,
    /// An image of this site the account may use.
    Existing(String),
    /// The image the earlier import of this VDC made (an update).
    Kept(String),
    /// Not made and not looked for here: deleted at the source, and made by the earlier
    /// import and gone since ([`dropped`]); or travelling without data, with no image of
    /// its name here, while only instances that bring their own root disks boot it
    /// ([`only_root_disks`]).
    Dropped,
}

/// Whether the bundle's disk image `i` is only what instances that bring their own root
/// disks were made from: none of its images names it as its kernel, and every instance
/// that boots it has a root disk in the bundle.
fn only_root_disks(m: &Manifest, i: &vdc_bundle::Image) -> bool {
    matches!(i.format, vdc_schema::ImageFormat::Qcow2 | vdc_schema::ImageFormat::Raw)
        && m.model.images.iter().all(|x| x.kernel_id.as_deref() != Some(i.id.as_str()))
        && m.model.instances.iter().filter(|x| x.image == i.id).all(|x| x.root_disk.is_some())
}

/// Whether image `id` of the bundle, deleted at the source, need not be made again: the
/// earlier import made it and it is gone here (deleted, and nothing here used it), every
/// instance of the bundle that boots it is here already on a root disk of its own, and no
/// image of the bundle names it as its kernel. Made again, it would only be collected
/// again, on every update.
fn dropped(m: &Manifest, h: &Have, id: &str) -> bool {
    h.map.contains_key(id)
        && h.image(id).is_none()
        && m.model.images.iter().all(|x| x.kernel_id.as_deref() != Some(id))
        && m.model
            .instances
            .iter()
            .filter(|x| x.image == id)
            .all(|x| h.instance(&x.id).is_some() && h.map.contains_key(&root_key(&x.id)))
}

/// What an import does: decided by [`decide`], applied by [`import`] in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub creates: Vec<BundleCreate>,
    pub conflicts: Vec<BundleConflict>,
    pub networks: Vec<PlannedNetwork>,
    /// (kind, bundle ID) → name here.
    pub names: HashMap<(String, String), String>,
    /// (kind, name here) of what this plan creates, for the kinds whose names are unique
    /// in an account (all but instances): looked up for each create.
    pub unique_names: HashSet<(String, String)>,
    pub images: HashMap<String, ImageChoice>,
    /// image bundle ID → its hypervisors here.
    pub image_hypervisors: HashMap<String, Vec<HypervisorKind>>,
    /// instance bundle ID → hypervisor here.
    pub hypervisors: HashMap<String, HypervisorKind>,
    /// instance bundle ID → the host classes it asks for here: zone ('' for any), labels.
    pub host_classes: HashMap<String, (String, BTreeMap<String, String>)>,
    /// server group bundle ID → its policy here (the bundle's, or mapped).
    pub group_policies: HashMap<String, ServerGroupPolicy>,
    /// An update: the earlier import, and bundle ID → ID here of its objects that exist
    /// and stay (not created again).
    pub update_of: Option<BundleImportId>,
    pub kept: HashMap<String, String>,
    pub updates: Vec<BundleChange>,
    pub deletes: Vec<BundleChange>,
    pub unchanged: Vec<BundleChange>,
    /// In-place changes: network ID here → DHCP range.
    pub dhcp: Vec<(String, Ipv4Addr, Ipv4Addr)>,
    /// Bundle IDs of kept groups whose description and rules are replaced.
    pub group_updates: Vec<String>,
    /// Bundle IDs of kept key pairs whose public key is replaced.
    pub key_updates: Vec<String>,
    /// Interface ID here → its groups (bundle IDs).
    pub nic_updates: Vec<(String, Vec<String>)>,
    /// Deletes applied (`--prune`): (kind, ID here).
    pub removes: Vec<(String, String)>,
    /// Of `removes`, those whose name an object of the bundle takes: renamed out of its way
    /// (`pruned-ID`) before anything is made. (kind, ID here)
    pub set_aside: Vec<(String, String)>,
    /// The `name_taken` conflicts: (index in `conflicts`, kind, name here).
    taken: Vec<(usize, String, String)>,
    /// The `ip_in_use` conflicts: (index in `conflicts`, the instance here holding it).
    held_ips: Vec<(usize, String)>,
    /// Instances here that `--prune` terminates before anything is made, since instances
    /// of the bundle take their names or addresses (the source replaced them).
    pub replaced: Vec<String>,
    /// Kept instances stopped or started as the bundle has them: (ID here, stop).
    pub power: Vec<(String, bool)>,
    /// Instance created again (deleted here since) → the root disk image the earlier
    /// import made for it, still here with the same bytes: it boots that again.
    pub roots_kept: HashMap<String, String>,
    /// Kept instance bundle ID → its first interface here (for a new floating IP).
    pub first_vifs: HashMap<String, String>,
    /// The entries of the earlier map the updated import keeps.
    pub carry: BTreeMap<String, String>,
    /// Kept volumes attached elsewhere than the bundle says: (volume here, detached from
    /// the import's instance it is on here, the instance (bundle ID) to attach it to).
    pub volume_moves: Vec<(String, bool, Option<String>)>,
    /// Kept floating IPs associated elsewhere than the bundle says: (floating IP here, the
    /// instance (bundle ID) to associate it with, none to disassociate it).
    pub fip_moves: Vec<(String, Option<String>)>,
}

impl Decision {
    /// Whether the same bundle imported again has nothing to do: it makes again what was
    /// deleted here since and applies the deletes `--prune` asks for, and nothing else.
    /// (What changed here on objects still here stays until a newer bundle: right after
    /// an import, its own volume moves and power changes are still under way, and ten
    /// identical imports at once must apply once.)
    fn nothing_again(&self) -> bool {
        self.creates.is_empty() && self.removes.is_empty()
    }

    /// The hypervisor instance `i` runs on here (the bundle's, or mapped).
    fn hypervisor_of(&self, i: &vdc_bundle::Instance) -> HypervisorKind {
        self.hypervisors.get(&i.id).copied().unwrap_or(i.hypervisor)
    }
}

fn conflict(code: &str, message: String, resolve: Option<String>) -> BundleConflict {
    BundleConflict { code: code.into(), message, resolve }
}

/// The pure decision of an import: what the manifest becomes in an account with
/// `existing` state under `maps`, and what keeps it from being imported.
pub fn decide(m: &Manifest, e: &store::Existing, maps: &Maps) -> Decision {
    let mut d = Decision::default();
    for i in &maps.invalid {
        d.conflicts.push(conflict("invalid_map", i.clone(), None));
    }
    // A map of something the bundle does not have is a typo, not a no-op.
    let names = |kind: &str| -> Vec<&str> {
        let mm = &m.model;
        match kind {
            "network" => mm.networks.iter().map(|x| x.name.as_str()).collect(),
            "security_group" => mm.security_groups.iter().map(|x| x.name.as_str()).collect(),
            "keypair" => mm.keypairs.iter().map(|x| x.name.as_str()).collect(),
            "image" => mm.images.iter().map(|x| x.name.as_str()).collect(),
            "instance" => mm.instances.iter().map(|x| x.name.as_str()).collect(),
            "volume" => mm.volumes.iter().map(|x| x.name.as_str()).collect(),
            "server_group" => mm.server_groups.iter().map(|x| x.name.as_str()).collect(),
            _ => vec![],
        }
    };
    let mut unknown: Vec<String> = maps
        .cidr
        .keys()
        .filter(|n| !names("network").contains(&n.as_str()))
        .map(|n| format!("network.{n}.cidr"))
        .chain(
            maps.rename.keys().filter(|(k, n)| !names(k).contains(&n.as_str())).map(|(k, n)| format!("{k}.{n}.name")),
        )
        .collect();
    unknown.sort();
    for u in unknown {
        let what = u.split('.').next().unwrap_or_default().replace('_', " ");
        d.conflicts.push(conflict("invalid_map", format!("--map {u}: the bundle has no {what} of that name"), None));
    }
    let taken: HashSet<(&str, &str)> = e.names.iter().map(|(k, n)| (k.as_str(), n.as_str())).collect();
    let have = e.prior.as_ref().map(Have::new);
    if let Some(p) = &e.prior {
        d.update_of = Some(p.import.id.clone());
        if !maps.allow_downgrade {
            downgrade(m, p, &mut d);
        }
    }
    // Created again: the earlier import made it, and it was deleted here since.
    let again = |id: &str| -> Option<String> {
        let h = have.as_ref()?;
        (h.map.contains_key(id) && h.live(id).is_none()).then(|| "created again: deleted here since the import".into())
    };
    // Names are unique per kind in an account (instances aside): also among what this
    // plan creates (a crafted bundle's two networks of one name failed the import with
    // 503 busy on the unique index).
    let planned = |d: &Decision, kind: &str, here: &str| d.unique_names.contains(&(kind.to_owned(), here.to_owned()));
    let name = |d: &mut Decision, kind: &str, id: &str, n: &str, note: Option<String>| {
        let note = note.or_else(|| again(id));
        let here = maps.rename.get(&(kind.to_owned(), n.to_owned())).cloned().unwrap_or_else(|| n.to_owned());
        if taken.contains(&(kind, here.as_str())) {
            d.taken.push((d.conflicts.len(), kind.to_owned(), here.clone()));
            d.conflicts.push(conflict(
                "name_taken",
                format!("{kind} {here:?} exists in this account already"),
                Some(format!("{kind}.{n}.name=NEW-NAME")),
            ));
        } else if kind == "image" && taken.contains(&("image:deleted", here.as_str())) {
            d.conflicts.push(conflict(
                "name_taken",
                format!("image {here:?} was deleted here, and instances still use it: its name is held until they go"),
                Some(format!("image.{n}.name=NEW-NAME")),
            ));
        } else if planned(d, kind, &here) {
            d.conflicts.push(conflict(
                "name_taken",
                format!("two {kind}s of the bundle would be named {here:?}"),
                Some(format!("{kind}.{n}.name=NEW-NAME")),
            ));
        }
        d.creates.push(BundleCreate {
            kind: kind.into(),
            bundle_id: id.into(),
            name: here.clone(),
            note: note.or_else(|| (here != n).then(|| format!("renamed from {n:?}"))),
        });
        if kind != "instance" {
            d.unique_names.insert((kind.to_owned(), here.clone()));
        }
        d.names.insert((kind.to_owned(), id.to_owned()), here);
    };
    // The images an import makes of root disks and volume data are named after their
    // instance or volume, which need not be free (instance names repeat, an image may
    // have the name, an earlier import's image of the same volume may be left): the
    // first free of NAME, NAME-2, NAME-3, …
    let helper_name = |d: &Decision, base: String| -> String {
        let free = |n: &str| {
            let here = maps.rename.get(&("image".to_owned(), n.to_owned())).map_or(n, String::as_str);
            !taken.contains(&("image", here)) && !taken.contains(&("image:deleted", here)) && !planned(d, "image", here)
        };
        if free(&base) {
            return base;
        }
        (2..).map(|k| derived_name(&base, &format!("-{k}"))).find(|n| free(n)).expect("some number is free")
    };

    let existing: Vec<Ipv4Net> = e.cidrs.iter().filter_map(|(_, c)| c.parse().ok()).collect();
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    for n in &m.model.networks {
        let req = vdc_schema::api::CreateNetwork {
            name: n.name.clone(),
            cidr: n.cidr.clone(),
            gateway: Some(n.gateway.clone()),
            dhcp_start: Some(n.dhcp_start.clone()),
            dhcp_end: Some(n.dhcp_end.clone()),
        };
        let (cidr, gateway, start, end) = match crate::app::network::plan(&req) {
            Ok(p) => p,
            Err(err) => {
                d.conflicts.push(conflict("invalid_network", format!("network {}: {err}", n.name), None));
                continue;
            }
        };
        let mut p = PlannedNetwork {
            bundle_id: n.id.clone(),
            name: n.name.clone(),
            cidr,
            gateway,
            start,
            end,
            from: None,
            existing: None,
        };
        if let Some((t, row)) = have.as_ref().and_then(|h| h.network(&n.id)) {
            update_network(&mut d, n, p, t, row);
            continue;
        }
        if let Some(to) = maps.cidr.get(&n.name) {
            if to.prefix_len() != cidr.prefix_len() {
                d.conflicts.push(conflict(
                    "invalid_map",
                    format!("network {}: remap {cidr} to a /{} network, not {to}", n.name, cidr.prefix_len()),
                    None,
                ));
                continue;
            }
            // What a network made by the API may not have, a map may not give it either.
            let why = if to.trunc() != *to {
                Some(format!("cidr {to} has host bits set; did you mean {}?", to.trunc()))
            } else {
                crate::app::network::reserved(to)
            };
            if let Some(why) = why {
                d.conflicts.push(conflict("invalid_map", format!("network {}: {why}", n.name), None));
                continue;
            }
            p.from = Some(cidr);
            p.cidr = *to;
            p.gateway = p.translate(gateway);
            p.start = p.translate(start);
            p.end = p.translate(end);
        }
        if let Some(x) = e.external_cidr.filter(|x| overlaps(x, &p.cidr)) {
            d.conflicts.push(conflict(
                "cidr_overlap",
                format!("network {} ({}) overlaps this site's external network {x} (floating IPs)", n.name, p.cidr),
                Some(format!("network.{}.cidr=OTHER/{}", n.name, p.cidr.prefix_len())),
            ));
        } else if let Some(o) = existing.iter().chain(d.networks.iter().map(|x| &x.cidr)).find(|o| overlaps(o, &p.cidr))
        {
            d.conflicts.push(conflict(
                "cidr_overlap",
                format!("network {} ({}) overlaps {o}, already in this account (or the bundle)", n.name, p.cidr),
                Some(format!("network.{}.cidr=OTHER/{}", n.name, p.cidr.prefix_len())),
            ));
        }
        let note = p.from.map(|f| format!("{f} → {}", p.cidr));
        name(&mut d, "network", &n.id, &n.name, note);
        d.networks.push(p);
    }
    for g in &m.model.security_groups {
        for r in &g.rules {
            if let Some(why) = rule_problem(r) {
                d.conflicts.push(conflict("invalid_rule", format!("security group {}: {why}", g.name), None));
            }
        }
        match have.as_ref().and_then(|h| h.group(&g.id).map(|t| (h, t))) {
            Some((h, t)) => update_group(&mut d, m, h, g, t),
            None => name(&mut d, "security_group", &g.id, &g.name, None),
        }
    }
    for k in &m.model.keypairs {
        if keypair::parse_public_key(&k.public_key).is_err() {
            d.conflicts.push(conflict(
                "invalid_keypair",
                format!("key pair {}: not an OpenSSH public key", k.name),
                None,
            ));
        }
        match have.as_ref().and_then(|h| h.keypair(&k.id)) {
            Some(t) => {
                // Named as here (a map may have renamed it), as the deletes are.
                let change = change("keypair", &k.id, &t.0, &t.1);
                d.kept.insert(k.id.clone(), t.0.clone());
                if t.2.trim() == k.public_key.trim() {
                    d.unchanged.push(change(String::new()));
                } else {
                    d.key_updates.push(k.id.clone());
                    d.updates.push(change("public key replaced (instances made with it keep the old one)".into()));
                }
            }
            None => name(&mut d, "keypair", &k.id, &k.name, None),
        }
    }
    for g in &m.model.server_groups {
        let policy = maps.policy.get(&g.name).copied().unwrap_or(g.policy);
        d.group_policies.insert(g.id.clone(), policy);
        let mapped = (policy != g.policy).then(|| format!("{} → {policy}", g.policy));
        match have.as_ref().and_then(|h| h.server_group(&g.id)) {
            Some(t) => {
                d.kept.insert(g.id.clone(), t.0.clone());
                if t.2 != policy.as_str() {
                    d.conflicts.push(conflict(
                        "replace_needed",
                        format!(
                            "server group {} ({}): {} here, {policy} in the bundle; a group's policy does not \
                             change in place (keep this one, or delete it here once it has no members)",
                            g.name, t.0, t.2
                        ),
                        Some(format!("server_group.{}.policy={}", g.name, t.2)),
                    ));
                }
                d.unchanged.push(change("server_group", &g.id, &t.0, &t.1)(mapped.unwrap_or_default()));
            }
            None => name(&mut d, "server_group", &g.id, &g.name, Some(mapped.unwrap_or_else(|| policy.to_string()))),
        }
    }
    let map_hv = |h: HypervisorKind| maps.hypervisor.get(&h).copied().unwrap_or(h);
    for i in &m.model.images {
        // Only those that boot its format: `hypervisor.qemu=lxc` made lxc instances of
        // qcow2 disks, which then failed to start.
        let hvs: Vec<HypervisorKind> = {
            let mut v: Vec<HypervisorKind> =
                i.hypervisors.iter().map(|h| map_hv(*h)).filter(|h| image::boots(*h, i.format)).collect();
            v.dedup();
            v
        };
        d.image_hypervisors.insert(i.id.clone(), hvs);
        if let Some(id) = maps.image.get(&i.name) {
            match e.usable_images.iter().find(|f| &f.0 == id) {
                Some(_) => {
                    d.images.insert(i.id.clone(), ImageChoice::Existing(id.clone()));
                }
                None => d.conflicts.push(conflict(
                    "image_missing",
                    format!("image {id} (mapped for {:?}) is not an image this account may use", i.name),
                    None,
                )),
            }
            continue;
        }
        if let Some(t) = have.as_ref().and_then(|h| h.image(&i.id)) {
            // Images are immutable: one whose data changed is a new image at the source.
            let same = match (&i.blob, &t.11) {
                (Some(b), Some(here)) => &b.sha256 == here,
                _ => true,
            };
            if !same {
                d.conflicts.push(conflict(
                    "replace_needed",
                    format!(
                        "image {}: its data changed since the import, and images do not change in place; \
                         delete image {} here and terminate what boots it (its name is held until then) and \
                         import again, or give it a new name at the source",
                        i.name, t.0
                    ),
                    None,
                ));
            }
            d.kept.insert(i.id.clone(), t.0.clone());
            d.images.insert(i.id.clone(), ImageChoice::Kept(t.0.clone()));
            if t.13 == 1 && !i.deleted {
                // Deleted here since, and kept for what still boots it: made an image again.
                let note = "restored: deleted here since the import, its data kept for instances".to_owned();
                d.updates.push(change("image", &i.id, &t.0, &i.name)(note));
            } else if t.13 == 0 && i.deleted {
                d.updates.push(change("image", &i.id, &t.0, &i.name)(DELETED_AT_SOURCE.to_owned()));
            } else {
                d.unchanged.push(change("image", &i.id, &t.0, &i.name)(String::new()));
            }
            continue;
        }
        if i.blob.is_some() && i.deleted && have.as_ref().is_some_and(|h| dropped(m, h, &i.id)) {
            d.images.insert(i.id.clone(), ImageChoice::Dropped);
            continue;
        }
        // Kernels and directory roots are a host's files, never an image's data here: one
        // carried would be made and then fail every boot (red team, 2026-12-06 and -07),
        // unchecked. A tenant cannot make one, so the site's own is named.
        if let (Some(_), ImageFormat::Kernel | ImageFormat::Dir) = (&i.blob, i.format) {
            let what = if i.format == ImageFormat::Kernel { "kernels boot" } else { "directory roots are" };
            d.conflicts.push(conflict(
                "image_missing",
                format!(
                    "image {:?} is a {} image: {what} this site's own files, not a bundle's data; name this \
                     site's image",
                    i.name, i.format
                ),
                Some(format!("image.{}=img-…", i.name)),
            ));
            continue;
        }
        if i.blob.is_some() {
            d.images.insert(i.id.clone(), ImageChoice::New);
            name(&mut d, "image", &i.id, &i.name, i.deleted.then(|| DELETED_AT_SOURCE.to_owned()));
            continue;
        }
        // Never guessed, as the CLI resolves names: its own image and a public one of the
        // same name are two candidates, and `--map` chooses. One another account shared
        // with this one is not a candidate (whoever shares an image of the name would
        // choose what the import boots); a map may name it.
        let found: Vec<_> = e.usable_images.iter().filter(|f| f.1 == i.name && f.3 == 0).collect();
        match found.as_slice() {
            [one] => {
                d.images.insert(i.id.clone(), ImageChoice::Existing(one.0.clone()));
            }
            // Not needed: the disks that were made of it travel.
            [] if only_root_disks(m, i) => {
                d.images.insert(i.id.clone(), ImageChoice::Dropped);
            }
            _ => d.conflicts.push(conflict(
                "image_missing",
                format!(
                    "image {:?} travels without its data, and this site has {} images of that name the account \
                     owns or that are public",
                    i.name,
                    if found.is_empty() { "no" } else { "several" }
                ),
                Some(format!("image.{}=img-…", i.name)),
            )),
        }
    }
    let mut addresses: HashSet<(String, Ipv4Addr)> = HashSet::new();
    let site_hypervisors = e.hypervisors();
    for i in &m.model.instances {
        let hv = map_hv(i.hypervisor);
        if !site_hypervisors.contains(&hv.as_str()) {
            let offer = (hv == HypervisorKind::Kvm && site_hypervisors.contains(&"qemu"))
                .then(|| "hypervisor.kvm=qemu".to_owned());
            d.conflicts.push(conflict(
                "hypervisor_missing",
                format!("instance {}: this site has no {hv} host (it has: {})", i.name, site_hypervisors.join(", ")),
                offer,
            ));
        }
        let image_ok = match d.images.get(&i.image) {
            Some(ImageChoice::New) => d.image_hypervisors.get(&i.image).is_some_and(|v| v.contains(&hv)),
            Some(ImageChoice::Existing(id)) => e
                .usable_images
                .iter()
                .find(|f| &f.0 == id)
                .is_some_and(|f| db::split_list::<HypervisorKind>(&f.2).contains(&hv)),
            Some(ImageChoice::Kept(id)) => have
                .as_ref()
                .and_then(|h| h.images.get(id.as_str()))
                .is_some_and(|f| db::split_list::<HypervisorKind>(&f.4).contains(&hv)),
            // Dropped: only instances here already boot it, on their own root disks.
            Some(ImageChoice::Dropped) | None => true, // None: already a conflict of its image
        };
        if !image_ok {
            d.conflicts.push(conflict(
                "hypervisor_missing",
                format!("instance {}: its image does not run on {hv} here", i.name),
                None,
            ));
        }
        if let Err(e) = instance::check_shape(i.cpus, i.memory_mib) {
            d.conflicts.push(conflict(e.code(), format!("instance {}: {e}", i.name), None));
        }
        let class = host_class(i, maps);
        if have.as_ref().and_then(|h| h.instance(&i.id)).is_none() {
            if let Some(c) = class_missing(i, &class, e) {
                d.conflicts.push(c);
            }
        }
        d.host_classes.insert(i.id.clone(), class);
        for nic in &i.interfaces {
            let Some(net) = d.networks.iter().find(|n| n.bundle_id == nic.network) else { continue };
            let on = net.from.unwrap_or(net.cidr);
            let why = match nic.ip.parse::<Ipv4Addr>() {
                Ok(a) if !on.contains(&a) => Some("is not on"),
                Ok(a) if a == on.network() || a == on.broadcast() => Some("is not a host address of"),
                Ok(a) if net.translate(a) == net.gateway => Some("is the gateway of"),
                Ok(a) if !addresses.insert((net.bundle_id.clone(), a)) => Some("is given twice on"),
                Ok(_) => None,
                Err(_) => Some("is not an IPv4 address, on"),
            };
            if let Some(why) = why {
                d.conflicts.push(conflict(
                    "invalid_address",
                    format!("instance {}: address {:?} {why} network {}", i.name, nic.ip, net.name),
                    None,
                ));
                continue;
            }
            // A new instance's address on a network here that another instance here holds
            // (the source terminated one and gave its address to another): the plan said
            // nothing and the import failed with ip_in_use, `--prune` too (it terminates
            // after the import commits).
            let (Some(h), Some(here), Ok(a)) = (have.as_ref(), net.existing.as_deref(), nic.ip.parse::<Ipv4Addr>())
            else {
                continue;
            };
            if h.instance(&i.id).is_some() {
                continue;
            }
            let ip = net.translate(a).to_string();
            let holder = h
                .vifs
                .values()
                .flatten()
                .find(|v| v.2 == here && v.3 == ip)
                .map(|v| v.1.as_str())
                .or_else(|| h.ending_vifs.iter().find(|v| v.1 == here && v.2 == ip).map(|v| v.0.as_str()));
            if let Some(id) = holder {
                let who = h.instances.get(id).map(|r| r.1.as_str()).or_else(|| h.ending_instances.get(id).copied());
                let who = who.unwrap_or(id);
                d.held_ips.push((d.conflicts.len(), id.to_owned()));
                d.conflicts.push(conflict(
                    "ip_in_use",
                    format!(
                        "instance {}: address {ip} on network {} is held here by instance {who} ({}); terminate \
                         that one here first, or, if the earlier import made it and the bundle no longer has it, \
                         import with --prune (which terminates it first)",
                        i.name, net.name, id
                    ),
                    None,
                ));
            }
        }
        d.hypervisors.insert(i.id.clone(), hv);
        if let Some((h, (t, row))) = have.as_ref().and_then(|h| h.instance(&i.id).map(|t| (h, t))) {
            update_instance(&mut d, h, i, hv, t, row);
            continue;
        }
        name(&mut d, "instance", &i.id, &i.name, (hv != i.hypervisor).then(|| format!("{} → {hv}", i.hypervisor)));
    }
    for g in &m.model.server_groups {
        if let Some(c) = group_unplaceable(m, &d, e, g) {
            d.conflicts.push(c);
        }
    }
    let room = room_missing(m, &d, e, &HashMap::new());
    d.conflicts.extend(room);
    // Root disks become private images of the account, booted by their instance.
    for i in &m.model.instances {
        if let (Some(blob), false) = (&i.root_disk, d.kept.contains_key(&i.id)) {
            let same = |h: &Have| {
                let t = h.live(&root_key(&i.id))?;
                (h.images.get(t.as_str())?.11.as_deref() == Some(blob.sha256.as_str())).then_some(t)
            };
            if let Some(t) = have.as_ref().and_then(same) {
                d.roots_kept.insert(i.id.clone(), t);
                continue;
            }
            let n = helper_name(&d, derived_name(&i.name, "-root"));
            name(&mut d, "image", &root_key(&i.id), &n, Some(format!("the root disk of instance {}", i.name)));
        }
    }
    if !maps.skip_volumes {
        for v in &m.model.volumes {
            let kept = have.as_ref().and_then(|h| {
                h.map.get(&v.id).and_then(|t| h.volumes.get(t.as_str())).map(|r| (r.0.clone(), r.2, r.3.is_some()))
            });
            if let Some((t, here, attached)) = kept {
                let c = change("volume", &v.id, &t, &v.name);
                if here as u64 != v.size_mib {
                    // Grown at the source: the same grow here (detached) resolves it; the
                    // import after attaches it again as the bundle has it.
                    let detach =
                        if attached { format!("`vdc volume detach {}`, then ", v.name) } else { String::new() };
                    let fix = match (here as u64) < v.size_mib {
                        true => format!(
                            "; extend it here as it was at the source ({detach}`vdc volume extend {} --size {}M`) \
                             and import again",
                            v.name, v.size_mib
                        ),
                        false => "; volumes never shrink".to_owned(),
                    };
                    d.conflicts.push(conflict(
                        "replace_needed",
                        format!(
                            "volume {}: {} MiB here, {} MiB in the bundle; a volume's size does not change by an \
                             update (its data here is its own){fix}",
                            v.name, here, v.size_mib
                        ),
                        None,
                    ));
                }
                d.kept.insert(v.id.clone(), t.clone());
                match attachment_change(m, &d, v, h_instance(&have, &t)) {
                    Some((detail, detach, attach)) => {
                        d.updates.push(c(detail));
                        d.volume_moves.push((t.clone(), detach, attach));
                    }
                    None => d
                        .unchanged
                        .push(c("the data here is the volume's own: a bundle fills only a new volume".into())),
                }
                continue;
            }
            // Its data arrives as a private raw image the volume is filled from: the one
            // the earlier import made, when it is here with the same data (a volume
            // deleted here is made again), else a new one (the first stayed, made by no
            // import's map, in the images quota).
            let made = have.as_ref().and_then(|h| h.image(&data_key(&v.id)));
            if let (Some(blob), Some(t)) = (&v.data, made) {
                if t.13 == 0 && t.11.as_deref() == Some(blob.sha256.as_str()) {
                    d.kept.insert(data_key(&v.id), t.0.clone());
                    d.unchanged.push(change("image", &data_key(&v.id), &t.0, &t.1)(format!(
                        "the data of volume {}, made by the earlier import",
                        v.name
                    )));
                }
            }
            if v.data.is_some() && !d.kept.contains_key(&data_key(&v.id)) {
                let n = helper_name(&d, derived_name(&v.name, "-data"));
                name(&mut d, "image", &data_key(&v.id), &n, Some(format!("the data of volume {}", v.name)));
            }
            if v.size_mib == 0 || v.size_mib > volume::MAX_SIZE_MIB {
                d.conflicts.push(conflict(
                    "invalid_size",
                    format!(
                        "volume {}: size_mib must be between 1 and {}, not {}",
                        v.name,
                        volume::MAX_SIZE_MIB,
                        v.size_mib
                    ),
                    None,
                ));
            }
            let on = v.attached_to.as_ref().and_then(|i| m.model.instances.iter().find(|x| &x.id == i));
            name(&mut d, "volume", &v.id, &v.name, on.map(|i| format!("attached to {} once its data is in", i.name)));
        }
    }
    if !m.model.floating_ips.is_empty() && !maps.skip_floating_ips {
        let mut fips: Vec<&vdc_bundle::FloatingIp> = vec![];
        for f in &m.model.floating_ips {
            match have.as_ref().and_then(|h| Some((h, h.fip(&f.id)?))) {
                Some((h, row)) => {
                    d.kept.insert(f.id.clone(), row.0.clone());
                    fip_moved(&mut d, m, h, f, row);
                }
                None => fips.push(f),
            }
        }
        fip_taken(&mut d, have.as_ref());
        if fips.is_empty() {
        } else if e.external {
            for f in fips {
                let to = f.instance.as_ref().and_then(|i| m.model.instances.iter().find(|x| &x.id == i));
                d.creates.push(BundleCreate {
                    kind: "floating_ip".into(),
                    bundle_id: f.id.clone(),
                    name: to.map_or_else(|| "(unassociated)".to_owned(), |i| i.name.clone()),
                    note: Some("a new address from this site's pool".into()),
                });
            }
        } else {
            d.conflicts.push(conflict(
                "no_external_network",
                format!("{} floating IP(s): this site has no external network to allocate them from", fips.len()),
                Some("floating_ips=skip".into()),
            ));
        }
    }
    if let Some(h) = &have {
        plan_deletes(&mut d, m, h, maps.prune);
        free_pruned_names(&mut d, h);
        // The instances terminated first give their room back before anything is placed
        // (red team: a replace on a nearly full host was refused `no_capacity`).
        if !d.replaced.is_empty() {
            let mut freed: HashMap<&str, Shape> = HashMap::new();
            for (_, host, cpus, mem, disk) in h.bookings.iter().filter(|b| d.replaced.contains(&b.0)) {
                if let Some(host) = host {
                    let f = freed.entry(host.as_str()).or_default();
                    *f = f.add(Shape(*cpus, *mem, *disk));
                }
            }
            d.conflicts.retain(|c| c.code != "no_capacity");
            let room = room_missing(m, &d, e, &freed);
            d.conflicts.extend(room);
        }
        // The map keeps what stays: kept objects (with their root disk and data images),
        // and objects gone from the bundle that are still here. Objects created again
        // get new entries.
        // Objects a prune terminates, releases or deletes after the import commits stay in
        // the map until they are gone here: a prune that failed is tried again next time.
        let removed: HashSet<&str> = d
            .removes
            .iter()
            .filter(|r| matches!(r.0.as_str(), "network" | "security_group" | "keypair" | "server_group"))
            .map(|r| r.1.as_str())
            .collect();
        let in_bundle = |b: &str| d.kept.contains_key(b) || d.creates.iter().any(|c| c.bundle_id == b);
        let mut carry = BTreeMap::new();
        for (b, t) in h.map {
            // A root disk or data image goes with its owner, unless the owner is gone from
            // the bundle: then it stays in the map until a prune deletes it.
            let keep = match b.split_once(':') {
                Some((owner, kind)) if in_bundle(owner) => {
                    let kept = d.kept.contains_key(owner) || d.roots_kept.get(owner).is_some_and(|r| r == t);
                    // An instance made again with a root of other bytes: the root image
                    // the earlier import made stays listed (as `ID:root@IMAGE`) until a
                    // prune deletes it. Before, it left the map and stayed for ever.
                    let live = h.images.get(t.as_str()).is_some_and(|r| r.13 == 0);
                    if !kept && live && (kind == "root" || kind.starts_with("root@")) {
                        carry.insert(format!("{owner}:root@{t}"), t.clone());
                    }
                    kept
                }
                _ => {
                    d.kept.contains_key(b)
                        || (!in_bundle(b) && h.live(b).is_some() && !removed.contains(t.as_str()))
                        // So that the next update finds it made before, and gone.
                        || d.images.get(b) == Some(&ImageChoice::Dropped)
                }
            };
            if keep {
                carry.insert(b.clone(), t.clone());
            }
        }
        d.carry = carry;
    }
    d
}

/// A kept floating IP: unchanged where it is on the instance the bundle says (or on none
/// as the bundle has it), else moved there (before, it stayed where the first import or
/// a hand here had put it, and the plan said "unchanged").
fn fip_moved(d: &mut Decision, m: &Manifest, h: &Have, f: &vdc_bundle::FloatingIp, row: &store::FipRow) {
    let c = change("floating_ip", &f.id, &row.0, &row.2);
    let want = f.instance.as_deref().map(|i| Have::here(d, i));
    if row.1 == want {
        d.unchanged.push(c(String::new()));
        return;
    }
    let from = row.1.as_deref().map(|x| h.instances.get(x).map_or(x.to_owned(), |r| r.1.clone()));
    let to = f.instance.as_ref().map(|i| {
        let b = m.model.instances.iter().find(|x| &x.id == i).map_or(i.as_str(), |x| x.name.as_str());
        d.names.get(&("instance".to_owned(), i.clone())).cloned().unwrap_or_else(|| b.to_owned())
    });
    let detail = match (from, to) {
        (None, Some(to)) => format!("associated with {to}"),
        (Some(from), Some(to)) => format!("moved from {from} to {to}"),
        (Some(from), None) => format!("disassociated from {from}"),
        (None, None) => return,
    };
    d.updates.push(c(detail));
    d.fip_moves.push((row.0.clone(), f.instance.clone()));
}

/// A floating IP moving onto a kept instance whose interface has an address that stays
/// (one associated here by hand) cannot take it: said before anything is changed.
fn fip_taken(d: &mut Decision, have: Option<&Have>) {
    let Some(h) = have else { return };
    let moving: HashSet<&str> = d.fip_moves.iter().map(|m| m.0.as_str()).collect();
    let mut found = vec![];
    for (fip, to) in &d.fip_moves {
        let Some(i) = to.as_ref().filter(|i| d.kept.contains_key(*i)) else { continue };
        let Some(vif) = d.first_vifs.get(i) else {
            found.push(conflict(
                "no_interface",
                format!("instance {i} has no interface here for floating IP {fip}"),
                None,
            ));
            continue;
        };
        let held = h.fips.values().find(|r| r.3.as_deref() == Some(vif.as_str()) && !moving.contains(r.0.as_str()));
        if let Some(r) = held {
            let name = h.instances.get(d.kept[i].as_str()).map_or(i.as_str(), |r| r.1.as_str());
            found.push(conflict(
                "interface_has_floating_ip",
                format!(
                    "floating IP {}: instance {name}'s interface here has {} already, which is not the bundle's",
                    h.fips[fip.as_str()].2,
                    r.2
                ),
                Some(format!("`vdc floating-ip disassociate {}` here, then import again", r.0)),
            ));
        }
    }
    d.conflicts.extend(found);
}

/// What is wrong with a bundle's rule, checked as the API checks one: bundles carry
/// rules as exported, in their normal form, so one that is not is refused rather than
/// silently changed (an update compares rules as they are written).
fn rule_problem(r: &vdc_bundle::Rule) -> Option<String> {
    let spec = RuleSpec {
        direction: r.direction,
        protocol: r.protocol,
        port_min: r.port_min,
        port_max: r.port_max,
        cidr: r.cidr.clone(),
        // Only its presence counts here; the bundle's reference is checked by the reader.
        group: r.group.as_ref().map(|_| SecurityGroupId::generate()),
    };
    let shown = |s: &RuleSpec| {
        let ports = match (s.port_min, s.port_max) {
            (Some(a), Some(b)) => format!(" {a}-{b}"),
            (Some(a), None) => format!(" {a}"),
            _ => String::new(),
        };
        let from = s.cidr.clone().unwrap_or_else(|| "a group".into());
        format!("{} {}{ports} from {from}", s.direction.as_str(), s.protocol.as_str())
    };
    match secgroup::normalize(spec.clone()) {
        Err(e) => Some(format!("rule {}: {e}", shown(&spec))),
        Ok(n) if n.port_min != spec.port_min || n.port_max != spec.port_max || n.cidr != spec.cidr => {
            Some(format!("rule {} is not written as exported: {}", shown(&spec), shown(&n)))
        }
        Ok(_) => None,
    }
}

// ---------------------------------------------------------------- update

/// The account's model, indexed, against the earlier import's map.
struct Have<'a> {
    map: &'a BTreeMap<String, String>,
    networks: HashMap<&'a str, &'a store::NetworkRow>,
    groups: HashMap<&'a str, &'a store::GroupRow>,
    rules: HashMap<&'a str, Vec<&'a store::RuleRow>>,
    keypairs: HashMap<&'a str, &'a store::KeyRow>,
    images: HashMap<&'a str, &'a store::ImageRow>,
    instances: HashMap<&'a str, &'a store::InstanceRow>,
    /// instance → its interfaces in order
    vifs: HashMap<&'a str, Vec<&'a store::VifRow>>,
    vif_groups: HashMap<&'a str, Vec<&'a str>>,
    volumes: HashMap<&'a str, &'a store::VolumeRow>,
    fips: HashMap<&'a str, &'a store::FipRow>,
    /// Instances being terminated, by ID: their names.
    ending_instances: HashMap<&'a str, &'a str>,
    /// Their interfaces: (instance, network, address).
    ending_vifs: &'a [(String, String, String)],
    /// What hosts book for the account's instances: (instance, host, vCPUs, MiB, MiB).
    bookings: &'a [(String, Option<String>, i64, i64, i64)],
    server_groups: HashMap<&'a str, &'a store::ServerGroupRow>,
    /// Object here → instances being terminated that still use it.
    ending: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Have<'a> {
    fn new(p: &'a store::Prior) -> Self {
        let t = &p.target;
        let mut rules: HashMap<&str, Vec<&store::RuleRow>> = HashMap::new();
        for r in &t.rules {
            rules.entry(r.0.as_str()).or_default().push(r);
        }
        let mut vifs: HashMap<&str, Vec<&store::VifRow>> = HashMap::new();
        for v in &t.vifs {
            vifs.entry(v.1.as_str()).or_default().push(v);
        }
        let mut vif_groups: HashMap<&str, Vec<&str>> = HashMap::new();
        for (v, g) in &t.vif_groups {
            vif_groups.entry(v.as_str()).or_default().push(g.as_str());
        }
        Have {
            map: &p.import.id_map,
            networks: t.networks.iter().map(|r| (r.0.as_str(), r)).collect(),
            groups: t.groups.iter().map(|r| (r.0.as_str(), r)).collect(),
            rules,
            keypairs: t.keypairs.iter().map(|r| (r.0.as_str(), r)).collect(),
            images: t.images.iter().map(|r| (r.0.as_str(), r)).collect(),
            instances: t.instances.iter().map(|r| (r.0.as_str(), r)).collect(),
            vifs,
            vif_groups,
            volumes: t.volumes.iter().map(|r| (r.0.as_str(), r)).collect(),
            fips: t.floating_ips.iter().map(|r| (r.0.as_str(), r)).collect(),
            ending_instances: t.ending_instances.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect(),
            ending_vifs: &t.ending_vifs,
            bookings: &t.bookings,
            server_groups: t.server_groups.iter().map(|r| (r.0.as_str(), r)).collect(),
            ending: t.ending.iter().fold(HashMap::new(), |mut m, (o, i)| {
                m.entry(o.as_str()).or_insert_with(Vec::new).push(i.as_str());
                m
            }),
        }
    }

    /// The ID here of a bundle object the earlier import made, while it exists here.
    fn live(&self, id: &str) -> Option<String> {
        let t = self.map.get(id)?.as_str();
        let found = self.networks.contains_key(t)
            || self.groups.contains_key(t)
            || self.keypairs.contains_key(t)
            || self.images.contains_key(t)
            || self.instances.contains_key(t)
            || self.volumes.contains_key(t)
            || self.fips.contains_key(t)
            || self.server_groups.contains_key(t);
        found.then(|| t.to_owned())
    }
    fn network(&self, id: &str) -> Option<(String, &'a store::NetworkRow)> {
        let t = self.map.get(id)?;
        self.networks.get(t.as_str()).map(|r| (t.clone(), *r))
    }
    fn group(&self, id: &str) -> Option<&'a store::GroupRow> {
        self.groups.get(self.map.get(id)?.as_str()).copied()
    }
    fn keypair(&self, id: &str) -> Option<&'a store::KeyRow> {
        self.keypairs.get(self.map.get(id)?.as_str()).copied()
    }
    fn image(&self, id: &str) -> Option<&'a store::ImageRow> {
        self.images.get(self.map.get(id)?.as_str()).copied()
    }
    fn instance(&self, id: &str) -> Option<(String, &'a store::InstanceRow)> {
        let t = self.map.get(id)?;
        self.instances.get(t.as_str()).map(|r| (t.clone(), *r))
    }
    fn server_group(&self, id: &str) -> Option<&'a store::ServerGroupRow> {
        self.server_groups.get(self.map.get(id)?.as_str()).copied()
    }
    fn fip(&self, id: &str) -> Option<&'a store::FipRow> {
        self.map.get(id).and_then(|t| self.fips.get(t.as_str())).copied()
    }
    /// A bundle object's ID here: kept ones, else `new:ID` (created by this update).
    fn here(d: &Decision, id: &str) -> String {
        d.kept.get(id).cloned().unwrap_or_else(|| format!("new:{id}"))
    }
}

/// The group of the earlier import that server group `g` (bundle ID) is, as placement sees it.
fn kept_group(m: &Manifest, d: &Decision, g: &str) -> Option<scheduler::Group> {
    let id = d.kept.get(g)?;
    let b = m.model.server_groups.iter().find(|x| x.id == g)?;
    Some(scheduler::Group { id: id.clone(), name: b.name.clone(), policy: *d.group_policies.get(g)? })
}

/// The instances the import places: running and not kept (those of an earlier import
/// are where they are).
fn placed<'m>(m: &'m Manifest, d: &'m Decision) -> impl Iterator<Item = &'m vdc_bundle::Instance> + 'm {
    m.model.instances.iter().filter(|i| !i.stopped && !d.kept.contains_key(&i.id))
}

fn runs(h: &store::HostHere, hv: HypervisorKind) -> bool {
    h.hypervisors.iter().any(|x| x == hv.as_str())
}

/// What an instance books on its host: vCPUs, MiB of memory and MiB of root disk.
#[derive(Debug, Clone, Copy, Default)]
struct Shape(i64, i64, i64);

impl Shape {
    /// Instance `i` as placement books it, its disk as the bundle sizes it (an image's
    /// own size is known in the import only, so this never asks more than placement).
    fn of(d: &Decision, i: &vdc_bundle::Instance) -> Shape {
        let disk = scheduler::disk_mib(d.hypervisor_of(i), i.root_disk_size);
        Shape(i64::from(i.cpus), i64::from(i.memory_mib), i64::from(disk))
    }

    fn add(self, o: Shape) -> Shape {
        Shape(self.0 + o.0, self.1 + o.1, self.2 + o.2)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.2 {
            0 => write!(f, "{} vCPUs and {} MiB", self.0, self.1),
            disk => write!(f, "{} vCPUs, {} MiB and {disk} MiB of root disk", self.0, self.1),
        }
    }
}

/// Whether host `h` is online with `want` free (a host that reports no disk books none,
/// as the reservation does).
fn has_room(h: &store::HostHere, want: Shape) -> bool {
    h.online
        && h.cpus_free >= want.0
        && h.memory_free_mib >= want.1
        && (want.2 == 0 || h.disk_free_mib.is_none_or(|f| f >= want.2))
}

/// Whether host `h` is online, runs instance `i` (as mapped) and has room for it.
fn takes(h: &store::HostHere, d: &Decision, i: &vdc_bundle::Instance) -> bool {
    runs(h, d.hypervisor_of(i)) && has_room(h, Shape::of(d, i))
}

/// Whether a host of zone `z` and labels `l` is of the class (zone, labels) asked.
fn in_class((zone, labels): &(String, BTreeMap<String, String>), z: &str, l: &BTreeMap<String, String>) -> bool {
    (zone.is_empty() || zone == z) && labels.iter().all(|(k, v)| l.get(k) == Some(v))
}

/// A hard policy this site's hosts cannot meet for the members the import places, by
/// what the hosts run and have free now: anti-affinity needs a host per member,
/// affinity one host with room for them all. Only what placement must have: the import
/// places them and decides.
fn group_unplaceable(
    m: &Manifest,
    d: &Decision,
    e: &store::Existing,
    g: &vdc_bundle::ServerGroup,
) -> Option<BundleConflict> {
    let policy = *d.group_policies.get(&g.id)?;
    let members: Vec<&vdc_bundle::Instance> = placed(m, d).filter(|i| i.server_group.as_ref() == Some(&g.id)).collect();
    let (why, soft) = match policy {
        ServerGroupPolicy::AntiAffinity => {
            let hosts = e.hosts.iter().filter(|h| members.iter().any(|i| takes(h, d, i))).count();
            if members.len() <= hosts {
                return None;
            }
            (
                format!(
                    "{} running members need a host each, and {hosts} online host(s) here run them with room",
                    members.len()
                ),
                ServerGroupPolicy::SoftAntiAffinity,
            )
        }
        ServerGroupPolicy::Affinity => {
            let all = members.iter().fold(Shape::default(), |a, i| a.add(Shape::of(d, i)));
            if members.is_empty()
                || e.hosts.iter().any(|h| members.iter().all(|i| runs(h, d.hypervisor_of(i))) && has_room(h, all))
            {
                return None;
            }
            (
                format!(
                    "its running members share one host, and no online host here runs all of them with room for \
                     {all}"
                ),
                ServerGroupPolicy::SoftAffinity,
            )
        }
        _ => return None,
    };
    Some(conflict(
        "server_group_unsatisfiable",
        format!("server group {} ({policy}): {why}", g.name),
        Some(format!("server_group.{}.policy={soft}", g.name)),
    ))
}

/// Room the instances the import places need and the site's online hosts do not have
/// (`no_capacity`): an instance no host of its kind and classes has room for, and a
/// hypervisor whose hosts have less room free in all than its instances need. Only what
/// placement must have, so it never refuses what the import could place. An instance
/// whose kind or classes no host has is the hypervisor's or host class's conflict.
fn room_missing(m: &Manifest, d: &Decision, e: &store::Existing, freed: &HashMap<&str, Shape>) -> Vec<BundleConflict> {
    let mut out = Vec::new();
    // With the room the instances terminated first give back on their hosts.
    let hosts: Vec<store::HostHere> = e
        .hosts
        .iter()
        .map(|h| {
            let f = freed.get(h.id.as_str()).copied().unwrap_or_default();
            store::HostHere {
                cpus_free: h.cpus_free + f.0,
                memory_free_mib: h.memory_free_mib + f.1,
                disk_free_mib: h.disk_free_mib.map(|d| d + f.2),
                ..h.clone()
            }
        })
        .collect();
    let mut need: BTreeMap<&str, Shape> = BTreeMap::new();
    let labels: Vec<BTreeMap<String, String>> =
        hosts.iter().map(|h| crate::datastore::host::split_labels(&h.labels)).collect();
    let any = Default::default();
    for i in placed(m, d) {
        let hv = d.hypervisor_of(i);
        let class = d.host_classes.get(&i.id).unwrap_or(&any);
        let of_class: Vec<&store::HostHere> = hosts
            .iter()
            .zip(&labels)
            .filter(|(h, l)| runs(h, hv) && in_class(class, &h.zone, l))
            .map(|x| x.0)
            .collect();
        if of_class.is_empty() {
            continue;
        }
        let want = Shape::of(d, i);
        let n = need.entry(hv.as_str()).or_default();
        *n = n.add(want);
        if of_class.iter().any(|h| takes(h, d, i)) {
            continue;
        }
        // What the hosts have free is not said: a tenant's `no_capacity` does not tell
        // the cloud's free capacity (as an instance create's does not).
        let why = match of_class.iter().any(|h| h.online) {
            false => "no such host is online and takes new instances (not cordoned)",
            true => "none has that free now",
        };
        let class = if class.0.is_empty() && class.1.is_empty() { "" } else { " of its zone and labels" };
        out.push(conflict(
            "no_capacity",
            format!("instance {} needs {want} on a {hv} host{class}: {why}", i.name),
            None,
        ));
    }
    for (hv, want) in need {
        let runs: Vec<_> = hosts.iter().filter(|h| h.online && h.hypervisors.iter().any(|x| x == hv)).collect();
        let free = runs.iter().fold(Shape::default(), |a, h| {
            a.add(Shape(h.cpus_free.max(0), h.memory_free_mib.max(0), h.disk_free_mib.unwrap_or(0).max(0)))
        });
        // Hosts that report no disk book none: then disk is not what is missing.
        let disk_known = runs.iter().all(|h| h.disk_free_mib.is_some());
        let disk_short = disk_known && want.2 > free.2;
        if want.0 > free.0 || want.1 > free.1 || disk_short {
            out.push(conflict(
                "no_capacity",
                format!(
                    "the running instances the import places on {hv} hosts need {want} in all, more than the \
                     online, uncordoned {hv} hosts here have free now"
                ),
                None,
            ));
        }
    }
    out
}

/// The host classes instance `i` asks for here: the bundle's, mapped by `zone.Z=…` and
/// `label.K=…` (`any` drops the ask).
fn host_class(i: &vdc_bundle::Instance, maps: &Maps) -> (String, BTreeMap<String, String>) {
    let zone = match &i.zone {
        Some(z) => maps.zone.get(z).cloned().unwrap_or_else(|| Some(z.clone())).unwrap_or_default(),
        None => String::new(),
    };
    let labels = i
        .host_labels
        .iter()
        .filter_map(|(k, v)| match maps.label.get(k) {
            Some(to) => to.clone().map(|to| (k.clone(), to)),
            None => Some((k.clone(), v.clone())),
        })
        .collect();
    (zone, labels)
}

/// The conflict of an instance whose host classes no host here has (placement would
/// refuse it at import), with the maps that resolve it.
fn class_missing(
    i: &vdc_bundle::Instance,
    class: &(String, BTreeMap<String, String>),
    e: &store::Existing,
) -> Option<BundleConflict> {
    let (zone, labels) = class;
    if zone.is_empty() && labels.is_empty() {
        return None; // any host will do (whether there is one is the hypervisor's check)
    }
    let classes: Vec<(&str, BTreeMap<String, String>)> =
        e.hosts.iter().map(|h| (h.zone.as_str(), crate::datastore::host::split_labels(&h.labels))).collect();
    if classes.iter().any(|(z, l)| in_class(class, z, l)) {
        return None;
    }
    let mut asked = Vec::new();
    let mut resolve = Vec::new();
    if !zone.is_empty() {
        asked.push(format!("zone {zone:?}"));
        let from = i.zone.as_deref().unwrap_or(zone);
        resolve.push(format!("zone.{from}=ZONE or zone.{from}=any"));
    }
    for (k, v) in labels {
        asked.push(format!("label {k}={v}"));
        resolve.push(format!("label.{k}=VALUE or label.{k}=any"));
    }
    let mut zones: Vec<&str> = classes.iter().map(|c| c.0).filter(|z| !z.is_empty()).collect();
    zones.sort();
    zones.dedup();
    let have = match zones.as_slice() {
        [] => "no host here has a zone".to_owned(),
        z => format!("zones here: {}", z.join(", ")),
    };
    Some(conflict(
        "host_class_missing",
        format!("instance {}: no host here has {} ({have})", i.name, asked.join(" and ")),
        Some(resolve.join("; ")),
    ))
}

/// The instance volume `t` (here) is attached to.
fn h_instance(have: &Option<Have<'_>>, t: &str) -> Option<String> {
    have.as_ref()?.volumes.get(t)?.3.clone()
}

/// How a kept volume's attachment changes: (what the plan says, detach it from the
/// import's instance it is on here, the instance (bundle ID) to attach it to). An
/// attachment here to an instance the import did not make is the site's own: kept.
fn attachment_change(
    m: &Manifest,
    d: &Decision,
    v: &vdc_bundle::Volume,
    here: Option<String>,
) -> Option<(String, bool, Option<String>)> {
    let of_import = |h: &str| m.model.instances.iter().find(|i| d.kept.get(&i.id).is_some_and(|k| k == h));
    let now = match &here {
        Some(h) => Some(of_import(h)?),
        None => None,
    };
    let want = v.attached_to.as_ref().and_then(|i| m.model.instances.iter().find(|x| &x.id == i));
    let detail = match (now, want) {
        (Some(a), Some(b)) if a.id == b.id => return None,
        (None, None) => return None,
        (Some(a), Some(b)) => format!("attachment: {} → {}", a.name, b.name),
        (Some(a), None) => format!("detached from {}", a.name),
        (None, Some(b)) => format!("attached to {}", b.name),
    };
    Some((detail, now.is_some(), want.map(|w| w.id.clone())))
}

fn change<'x>(kind: &'x str, bundle_id: &'x str, id: &'x str, name: &'x str) -> impl Fn(String) -> BundleChange + 'x {
    move |detail| BundleChange {
        kind: kind.into(),
        bundle_id: bundle_id.into(),
        id: id.into(),
        name: name.into(),
        detail,
    }
}

/// A bundle exported before the one the earlier import holds would undo its changes
/// (and with `--prune` delete what was added since): refused, not applied backwards.
fn downgrade(m: &Manifest, p: &store::Prior, d: &mut Decision) {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    if let (Some(new), Some(old)) = (parse(&m.source.exported_at), p.exported_at.as_deref().and_then(parse)) {
        if new < old {
            d.conflicts.push(conflict(
                "bundle_downgrade",
                format!(
                    "this bundle was exported at {}, before the one import {} holds ({}): importing it would undo \
                     the changes since; export the source again, or, if that bundle's time was wrong (a clock \
                     ahead), pass --map downgrade=allow to import this one anyway",
                    m.source.exported_at,
                    p.import.id,
                    p.exported_at.as_deref().unwrap_or_default()
                ),
                None,
            ));
        }
    }
}

fn update_network(
    d: &mut Decision,
    n: &vdc_bundle::Network,
    mut p: PlannedNetwork,
    t: String,
    row: &store::NetworkRow,
) {
    let change = change("network", &n.id, &t, &row.1);
    // The import may have remapped its CIDR: addresses are translated into the one here.
    match row.2.parse::<Ipv4Net>() {
        Ok(here) if here.prefix_len() == p.cidr.prefix_len() => {
            if here != p.cidr {
                p.from = Some(p.cidr);
                p.cidr = here;
            }
        }
        _ => {
            d.conflicts.push(conflict(
                "replace_needed",
                format!(
                    "network {}: {} here, {} in the bundle; a network's size does not change in place \
                     (delete it here, with its instances, and import again)",
                    n.name, row.2, p.cidr
                ),
                None,
            ));
            return;
        }
    }
    p.gateway = p.translate(p.gateway);
    p.start = p.translate(p.start);
    p.end = p.translate(p.end);
    p.existing = Some(t.clone());
    if p.gateway.to_string() != row.3 {
        d.conflicts.push(conflict(
            "replace_needed",
            format!(
                "network {}: gateway {} here, {} in the bundle; the gateway does not change in place",
                n.name, row.3, p.gateway
            ),
            None,
        ));
    }
    if (p.start.to_string(), p.end.to_string()) != (row.4.clone(), row.5.clone()) {
        d.updates.push(change(format!("dhcp range {}-{} → {}-{}", row.4, row.5, p.start, p.end)));
        d.dhcp.push((t.clone(), p.start, p.end));
    } else {
        d.unchanged.push(change(String::new()));
    }
    d.kept.insert(n.id.clone(), t.clone());
    d.networks.push(p);
}

/// Whether a group's rule here is the rule `spec` (the group reference by its ID here).
fn same_rule(r: &db::secgroup::RuleRow, spec: &RuleSpec) -> bool {
    r.direction == spec.direction.as_str()
        && r.protocol == spec.protocol.as_str()
        && r.port_min == spec.port_min.map(i64::from)
        && r.port_max == spec.port_max.map(i64::from)
        && r.cidr == spec.cidr
        && r.remote_group_id.as_deref() == spec.group.as_ref().map(|g| g.as_str())
}

/// A rule as comparable text, which the plan shows (`ingress tcp 80 from 0.0.0.0/0`); a
/// group reference by its ID here (`new:…` for a group this update creates) and, for
/// people, by name.
fn rule_key(
    dir: &str,
    proto: &str,
    min: Option<i64>,
    max: Option<i64>,
    cidr: Option<&str>,
    group: Option<&str>,
) -> String {
    let ports = match (min, max) {
        (Some(a), Some(b)) if a == b => format!(" {a}"),
        (Some(a), Some(b)) => format!(" {a}-{b}"),
        (Some(a), None) => format!(" {a}-"),
        (None, Some(b)) => format!(" -{b}"),
        (None, None) => String::new(),
    };
    let from = match (cidr, group) {
        (Some(c), Some(g)) => format!("{c} and group {g}"),
        (Some(c), None) => c.to_owned(),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => "anywhere".to_owned(),
    };
    format!("{dir} {proto}{ports} from {from}")
}

fn update_group(d: &mut Decision, m: &Manifest, h: &Have, g: &vdc_bundle::SecurityGroup, t: &store::GroupRow) {
    d.kept.insert(g.id.clone(), t.0.clone());
    // Groups this update creates are not in `kept` yet: `Have::here` names them `new:`.
    let mut want: Vec<(String, String)> = g
        .rules
        .iter()
        .map(|r| {
            let here = r.group.as_ref().map(|b| h.group(b).map(|x| x.0.clone()).unwrap_or_else(|| Have::here(d, b)));
            let name = r
                .group
                .as_ref()
                .and_then(|b| m.model.security_groups.iter().find(|x| &x.id == b))
                .map(|x| x.name.as_str());
            let key = rule_key(
                r.direction.as_str(),
                r.protocol.as_str(),
                r.port_min.map(i64::from),
                r.port_max.map(i64::from),
                r.cidr.as_deref(),
                here.as_deref(),
            );
            (
                key,
                rule_key(
                    r.direction.as_str(),
                    r.protocol.as_str(),
                    r.port_min.map(i64::from),
                    r.port_max.map(i64::from),
                    r.cidr.as_deref(),
                    name,
                ),
            )
        })
        .collect();
    let mut have: Vec<(String, String)> = h
        .rules
        .get(t.0.as_str())
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let name = r.6.as_ref().and_then(|x| h.groups.get(x.as_str())).map(|x| x.1.as_str());
            (
                rule_key(&r.1, &r.2, r.3, r.4, r.5.as_deref(), r.6.as_deref()),
                rule_key(&r.1, &r.2, r.3, r.4, r.5.as_deref(), name),
            )
        })
        .collect();
    want.sort();
    have.sort();
    let mut detail = Vec::new();
    for w in want.iter().filter(|w| !have.iter().any(|x| x.0 == w.0)) {
        detail.push(format!("+ {}", w.1));
    }
    for x in have.iter().filter(|x| !want.iter().any(|w| w.0 == x.0)) {
        detail.push(format!("- {}", x.1));
    }
    if g.description != t.2 {
        detail.push(format!("description {:?} → {:?}", t.2, g.description));
    }
    let change = change("security_group", &g.id, &t.0, &t.1);
    if detail.is_empty() {
        d.unchanged.push(change(String::new()));
    } else {
        d.group_updates.push(g.id.clone());
        d.updates.push(change(detail.join("; ")));
    }
}

/// An instance of the earlier import: its interfaces' groups change in place; its image,
/// hypervisor, size, user data and interfaces' networks and addresses are inputs of its
/// creation (the guest holds them), so a change of those is refused, naming the fields:
/// terminating it here makes the next import create it again from the bundle. Its disk
/// here is its own (a root disk in the bundle is used only when it is created), and its
/// key pair is an input of create only (as for `vdc keypair delete`).
fn update_instance(
    d: &mut Decision,
    h: &Have,
    i: &vdc_bundle::Instance,
    hv: HypervisorKind,
    t: String,
    row: &store::InstanceRow,
) {
    let mut replace = Vec::new();
    let boots = match h.map.get(&root_key(&i.id)) {
        Some(root) => Some(root.clone()),
        None => match d.images.get(&i.image) {
            Some(ImageChoice::Existing(x)) | Some(ImageChoice::Kept(x)) => Some(x.clone()),
            _ => None,
        },
    };
    if boots.as_deref() != Some(row.2.as_str()) {
        replace.push("image".to_owned());
    }
    if hv.as_str() != row.3 {
        replace.push(format!("hypervisor {} → {hv}", row.3));
    }
    if i64::from(i.cpus) != row.4 {
        replace.push(format!("cpus {} → {}", row.4, i.cpus));
    }
    if i64::from(i.memory_mib) != row.5 {
        replace.push(format!("memory_mib {} → {}", row.5, i.memory_mib));
    }
    if i.root_disk_size.map(|v| v as i64) != row.8 {
        replace.push("root_disk_size".into());
    }
    if i.user_data != row.7 {
        replace.push("user_data".into());
    }
    if i.server_group.as_ref().map(|g| Have::here(d, g)) != row.12 {
        replace.push("server group".into());
    }
    let nics = h.vifs.get(t.as_str()).cloned().unwrap_or_default();
    let mut groups = Vec::new();
    if nics.len() != i.interfaces.len() {
        replace.push(format!("interfaces {} → {}", nics.len(), i.interfaces.len()));
    } else {
        for (pos, (nic, here)) in i.interfaces.iter().zip(&nics).enumerate() {
            let net = d.networks.iter().find(|n| n.bundle_id == nic.network);
            let ip = nic.ip.parse::<Ipv4Addr>().ok().zip(net).map(|(a, n)| n.translate(a).to_string());
            if net.and_then(|n| n.existing.as_deref()) != Some(here.2.as_str())
                || ip.as_deref() != Some(here.3.as_str())
            {
                replace.push(format!("interface {pos} (network or address)"));
                continue;
            }
            let mut want: Vec<String> = nic.security_groups.iter().map(|g| Have::here(d, g)).collect();
            let mut now: Vec<String> = h
                .vif_groups
                .get(here.0.as_str())
                .map(|v| v.iter().map(|g| g.to_string()).collect())
                .unwrap_or_default();
            want.sort();
            now.sort();
            if want != now {
                groups.push(format!("interface {pos} groups"));
                d.nic_updates.push((here.0.clone(), nic.security_groups.clone()));
            }
        }
    }
    d.kept.insert(i.id.clone(), t.clone());
    if let Some(v) = nics.first() {
        d.first_vifs.insert(i.id.clone(), v.0.clone());
    }
    // Stopped or started at the source since: as the bundle has it (the bundle wins for
    // what it carries). It stayed as it was, and the plan said "unchanged".
    match (i.stopped, row.9.as_str()) {
        (true, "running") => {
            groups.push("stop: stopped at the source".into());
            d.power.push((t.clone(), true));
        }
        (false, "stopped") => {
            groups.push("start: running at the source".into());
            d.power.push((t.clone(), false));
        }
        _ => {}
    }
    let change = change("instance", &i.id, &t, &row.1);
    if !replace.is_empty() {
        d.conflicts.push(conflict(
            "replace_needed",
            format!(
                "instance {} ({t}): {} change only by replacing it; terminate it here and import again \
                 (it is created from the bundle, with a new disk)",
                i.name,
                replace.join(", ")
            ),
            None,
        ));
    } else if groups.is_empty() {
        d.unchanged.push(change(String::new()));
    } else {
        d.updates.push(change(groups.join(", ")));
    }
}

/// Why an object gone from the bundle cannot be deleted now.
enum Held {
    /// Used by something that stays: a conflict with `--prune`.
    Stays(String),
    /// Used only by instances that are ending (this import terminates them, or they are
    /// being terminated): deleted by an import with `--prune` once they are gone.
    Ending(String),
}

/// What holds an object gone from the bundle: instances (by ID here and name) that use it,
/// and other reasons it stays; `ending` names instances being terminated already.
fn held(users: &[(&str, String)], pruned: &HashSet<&str>, ending: Option<&Vec<&str>>, what: &str) -> Option<Held> {
    let mut staying: Vec<&str> = users.iter().filter(|u| !pruned.contains(u.0)).map(|u| u.1.as_str()).collect();
    staying.sort();
    staying.dedup();
    if !staying.is_empty() {
        return Some(Held::Stays(format!("{what} instance(s) {}", staying.join(", "))));
    }
    let mut going: Vec<&str> =
        users.iter().map(|u| u.1.as_str()).chain(ending.into_iter().flatten().copied()).collect();
    going.sort();
    going.dedup();
    (!going.is_empty()).then(|| {
        Held::Ending(format!(
            "{what} instance(s) {} being terminated: an import with --prune deletes it once they are gone",
            going.join(", ")
        ))
    })
}

/// The objects of the earlier import that the bundle no longer has and that exist here.
/// With `prune` they go: instances are terminated, floating IPs released, networks,
/// groups, key pairs, volumes and images deleted. What something that stays uses is a
/// conflict naming it; what only instances that are ending use waits for them, and an
/// import with `--prune` after they are gone deletes it.
fn plan_deletes(d: &mut Decision, m: &Manifest, h: &Have, prune: bool) {
    let mo = &m.model;
    let in_bundle: HashSet<&str> = mo
        .networks
        .iter()
        .map(|x| x.id.as_str())
        .chain(mo.security_groups.iter().map(|x| x.id.as_str()))
        .chain(mo.keypairs.iter().map(|x| x.id.as_str()))
        .chain(mo.images.iter().map(|x| x.id.as_str()))
        .chain(mo.instances.iter().map(|x| x.id.as_str()))
        .chain(mo.volumes.iter().map(|x| x.id.as_str()))
        .chain(mo.floating_ips.iter().map(|x| x.id.as_str()))
        .chain(mo.server_groups.iter().map(|x| x.id.as_str()))
        .collect();
    // An instance's root disk image (`ID:root`) goes with its instance.
    let gone: Vec<(&String, &String)> = h
        .map
        .iter()
        .filter(|(b, _)| match b.split_once(':') {
            // The root image of an instance made again that boots another (or its image)
            // no longer boots anything; so with one listed as `ID:root@IMAGE` (`carry`).
            Some((owner, "root")) if in_bundle.contains(owner) => {
                !d.kept.contains_key(owner) && !d.roots_kept.contains_key(owner)
            }
            Some((owner, "root" | "data")) => !in_bundle.contains(owner),
            Some((_, k)) if k.starts_with("root@") => true,
            Some(_) => false,
            None => !in_bundle.contains(b.as_str()),
        })
        .collect();
    let pruned: HashSet<&str> =
        gone.iter().filter(|(_, t)| h.instances.contains_key(t.as_str())).map(|(_, t)| t.as_str()).collect();
    let gone_groups: HashSet<&str> =
        gone.iter().filter(|(_, t)| h.groups.contains_key(t.as_str())).map(|(_, t)| t.as_str()).collect();
    // Interfaces whose groups this update sets: their current groups do not count.
    let reset: HashSet<&str> = d.nic_updates.iter().map(|(v, _)| v.as_str()).collect();
    let new_groups: HashSet<String> =
        d.nic_updates.iter().flat_map(|(_, g)| g.iter().map(|g| Have::here(d, g))).collect();
    let updated: HashSet<&str> = d.group_updates.iter().filter_map(|b| d.kept.get(b)).map(String::as_str).collect();
    let kept_ref = |t: &str| -> Vec<String> {
        h.rules
            .iter()
            .filter(|(g, _)| **g != t && !gone_groups.contains(*g) && !updated.contains(*g))
            .filter(|(_, rs)| rs.iter().any(|r| r.6.as_deref() == Some(t)))
            .map(|(g, _)| h.groups.get(*g).map_or(g.to_string(), |x| x.1.clone()))
            .collect()
    };
    let name_of = |i: &str| h.instances.get(i).map_or(i.to_string(), |r| r.1.clone());
    let users = |pred: &dyn Fn(&store::VifRow) -> bool| -> Vec<(&str, String)> {
        h.vifs.iter().filter(|(_, vs)| vs.iter().any(|x| pred(x))).map(|(i, _)| (*i, name_of(i))).collect()
    };
    for (b, t) in gone {
        let t = t.as_str();
        let ending = h.ending.get(t);
        let (kind, name, why) = if let Some(r) = h.networks.get(t) {
            ("network", r.1.clone(), held(&users(&|v| v.2 == t), &pruned, ending, "in use by"))
        } else if let Some(r) = h.groups.get(t) {
            let u = users(&|v| {
                !reset.contains(v.0.as_str()) && h.vif_groups.get(v.0.as_str()).is_some_and(|g| g.contains(&t))
            });
            let refs = kept_ref(t);
            let why = if new_groups.contains(t) {
                Some(Held::Stays("in use by interfaces this import sets".into()))
            } else if !refs.is_empty() {
                Some(Held::Stays(format!("referred to by rules of security group(s) {}", refs.join(", "))))
            } else {
                held(&u, &pruned, ending, "in use by the interfaces of")
            };
            ("security_group", r.1.clone(), why)
        } else if let Some(r) = h.keypairs.get(t) {
            ("keypair", r.1.clone(), None)
        } else if let Some(r) = h.instances.get(t) {
            ("instance", r.1.clone(), None)
        } else if let Some(r) = h.images.get(t) {
            if r.13 == 1 {
                continue; // deleted here already (kept for what boots it)
            }
            // A delete hides it at once; what boots it keeps its data until it is gone.
            ("image", r.1.clone(), None)
        } else if let Some(r) = h.volumes.get(t) {
            // Attached by the import to an instance of its own that stays: the attachment
            // follows the bundle, so the prune detaches it (in the transaction) and then
            // deletes it. Before, it was refused as in use and blocked the whole update.
            if let Some(i) = r.3.as_deref().filter(|i| !pruned.contains(i) && h.map.values().any(|x| x == i)) {
                let c = change("volume", b, t, &r.1);
                if prune {
                    d.removes.push(("volume".to_owned(), t.to_owned()));
                    d.volume_moves.push((t.to_owned(), true, None));
                    d.deletes.push(c(format!("detached from {} and deleted (--prune)", name_of(i))));
                } else {
                    d.deletes.push(c("only with --prune".into()));
                }
                continue;
            }
            let u: Vec<(&str, String)> = r.3.iter().map(|i| (i.as_str(), name_of(i))).collect();
            ("volume", r.1.clone(), held(&u, &pruned, ending, "attached to"))
        } else if let Some(r) = h.fips.get(t) {
            // Gone at the source, it stops exposing its guest here at once; only a prune
            // releases the address. Before, B kept exposing the guest until a prune.
            if let (false, Some(i)) = (prune, r.1.as_deref()) {
                let detail = format!("disassociated from {}: gone from the bundle (released with --prune)", name_of(i));
                d.updates.push(change("floating_ip", b, t, &r.2)(detail));
                d.fip_moves.push((t.to_owned(), None));
            }
            ("floating_ip", r.2.clone(), None)
        } else if let Some(r) = h.server_groups.get(t) {
            let u: Vec<(&str, String)> = h
                .instances
                .values()
                .filter(|i| i.12.as_deref() == Some(t))
                .map(|i| (i.0.as_str(), i.1.clone()))
                .collect();
            ("server_group", r.1.clone(), held(&u, &pruned, None, "has member"))
        } else {
            continue; // gone here too
        };
        let c = change(kind, b, t, &name);
        let what = match kind {
            "instance" => "terminated",
            "floating_ip" => "released",
            _ => "deleted",
        };
        match (why, prune) {
            (Some(Held::Stays(why)), true) => {
                d.conflicts.push(conflict(
                    "in_use",
                    format!("{kind} {name} ({t}) is gone from the bundle but {why} that stay(s)"),
                    None,
                ));
                d.deletes.push(c(format!("refused: {why}")));
            }
            (Some(Held::Stays(why)), false) => d.deletes.push(c(format!("only with --prune (and now refused: {why})"))),
            (Some(Held::Ending(why)), true) => d.deletes.push(c(format!("waits: {why}"))),
            (Some(Held::Ending(_)), false) | (None, false) => d.deletes.push(c("only with --prune".into())),
            (None, true) => {
                d.removes.push((kind.to_owned(), t.to_owned()));
                d.deletes.push(c(format!("{what} (--prune)")));
            }
        }
    }
}

/// A name taken here by an object of the earlier import that this update removes
/// (`--prune`) is no conflict: the source deleted that object and made another of the same
/// name, and the old one is set aside (renamed) before the new one is made, then removed.
/// Without `--prune` the conflict says that `--prune` frees the name.
fn free_pruned_names(d: &mut Decision, h: &Have) {
    let holder = |kind: &str, name: &str| -> Option<&str> {
        let found = match kind {
            "network" => h.networks.iter().find(|(_, r)| r.1 == name).map(|(t, _)| *t),
            "security_group" => h.groups.iter().find(|(_, r)| r.1 == name).map(|(t, _)| *t),
            "keypair" => h.keypairs.iter().find(|(_, r)| r.1 == name).map(|(t, _)| *t),
            "server_group" => h.server_groups.iter().find(|(_, r)| r.1 == name).map(|(t, _)| *t),
            "volume" => h.volumes.iter().find(|(_, r)| r.1 == name).map(|(t, _)| *t),
            "instance" => h.instances.iter().find(|(_, r)| r.1 == name).map(|(t, _)| *t),
            _ => None,
        };
        // Of the import's objects gone from the bundle only.
        found.filter(|t| h.map.iter().any(|(b, here)| here == t && !d.kept.contains_key(b)))
    };
    // An instance being terminated holds its name and address until it is gone: the
    // import waits for it (a concurrent identical import's replace had just begun, and
    // this one failed with name_taken).
    let ending = |kind: &str, name: &str| -> Option<&str> {
        (kind == "instance").then(|| h.ending_instances.iter().find(|(_, n)| **n == name).map(|(t, _)| *t))?
    };
    let (mut freed, mut replaced) = (Vec::new(), Vec::new());
    for (at, kind, name) in std::mem::take(&mut d.taken) {
        if let Some(t) = ending(&kind, &name) {
            freed.push(at);
            replaced.push(t.to_owned());
            continue;
        }
        // Read after the names, the instances show none of that name live or ending: it
        // was terminated in between (on PostgreSQL each statement reads what is committed
        // when it starts), and the name is free.
        if kind == "instance" && !h.instances.values().any(|r| r.1 == name) {
            freed.push(at);
            continue;
        }
        let Some(t) = holder(&kind, &name) else { continue };
        if d.removes.iter().any(|(k, id)| *k == kind && id == t) {
            freed.push(at);
            match kind.as_str() {
                "instance" => replaced.push(t.to_owned()),
                _ => d.set_aside.push((kind, t.to_owned())),
            }
        } else if let Some(c) = d.conflicts.get_mut(at) {
            c.message += &format!(
                " (the earlier import made it, as {t}, and the bundle no longer has it: --prune removes it and \
                 frees the name)"
            );
        }
    }
    // An address held by an instance the prune terminates: terminated first, likewise.
    for (at, holder) in std::mem::take(&mut d.held_ips) {
        if h.ending_instances.contains_key(holder.as_str())
            || d.removes.iter().any(|(k, id)| k == "instance" && *id == holder)
        {
            freed.push(at);
            replaced.push(holder);
        }
    }
    for t in replaced {
        replace(d, &t);
    }
    freed.sort_unstable();
    freed.dedup();
    for at in freed.into_iter().rev() {
        d.conflicts.remove(at);
    }
}

/// Instance `t` here, pruned (or being terminated already), is terminated before the
/// import makes the instance of the bundle that takes its name or address (the source
/// terminated it and made another of the same name or address), and waited for. Before,
/// the plan called that a conflict even with `--prune` (red team, 2026-12-07), and only a
/// terminate by hand here let it through.
fn replace(d: &mut Decision, t: &str) {
    if d.replaced.iter().any(|r| r == t) {
        return;
    }
    d.replaced.push(t.to_owned());
    if let Some(c) = d.deletes.iter_mut().find(|c| c.kind == "instance" && c.id == t) {
        c.detail = "terminated first (--prune): an instance of the bundle takes its name or address".into();
    }
}

/// The ID-map key of an instance's root disk image.
fn root_key(instance: &str) -> String {
    format!("{instance}:root")
}

/// The ID-map key of a volume's data image.
fn data_key(volume: &str) -> String {
    format!("{volume}:data")
}

/// `name` + `suffix`, within the 64 characters a name may have.
fn derived_name(name: &str, suffix: &str) -> String {
    let keep: String = name.chars().take(64 - suffix.len()).collect();
    format!("{}{suffix}", keep.trim_end())
}

/// The account's state a plan is checked against, with the site's external network.
/// With the earlier import of the same VDC, when there is one (then `m` is an update).
async fn existing(
    ctx: &SharedCtx,
    conn: &mut sqlx::AnyConnection,
    account: &AccountId,
    m: &Manifest,
) -> ApiResult<store::Existing> {
    let mut e = store::existing(conn, account).await?;
    e.external = ctx.config.external.is_some();
    e.external_cidr = crate::app::network::external_cidr(ctx);
    e.prior = store::prior(conn, account, &m.source.site_key, &m.source.vdc_id).await?;
    Ok(e)
}

/// Verifies a bundle read from `body` (all of it) on a blocking thread.
pub async fn receive_body(
    ctx: &SharedCtx,
    caller: &Caller,
    body: axum::body::Body,
    stage: bool,
) -> ApiResult<Received> {
    use futures::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let trusted = ctx.trusted_keys.clone();
    // A plan hashes every blob too, keeping the chunks it needs again in a directory of
    // its own, removed when it is done.
    let plan_dir =
        (!stage).then(|| staging_dir(ctx).join(format!("plan-{}-{:016x}", std::process::id(), rand::random::<u64>())));
    let (chunks, staging, blobs, dir) = (chunk_dir(ctx), staging_dir(ctx), ctx.blobs.clone(), plan_dir.clone());
    let tar_max = ctx.config.images.max_virtual_bytes;
    let stage = Some(move |m: &Manifest| match &dir {
        Some(d) => Stager::verify(m, d, tar_max),
        None => Stager::new(m, &chunks, &staging, |sha| blobs.local_path(sha).is_some_and(|p| p.exists())),
    });
    let (c, account, handle) = (ctx.clone(), caller.account_id.clone(), tokio::runtime::Handle::current());
    // Asked on the blocking thread, once, at the first reference frame.
    let held = move |hashes: &[String]| {
        handle
            .block_on(held_by(&c, &account, hashes))
            .map_err(|e| BundleError::Io(std::io::Error::other(e.to_string())))
    };
    let r = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let r = receive(&mut reader, &trusted, stage, held);
        if r.is_err() {
            drain(&mut reader);
        }
        // Here, not after the await: a client gone mid-plan drops the awaiting future,
        // and this thread still ends.
        if let Some(d) = plan_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        r
    })
    .await;
    Ok(r.map_err(ApiError::internal)??)
}

/// The rest of a refused bundle, read and dropped (up to a bound): its client is still
/// sending, and a connection closed under it shows it a broken pipe ("the server may be
/// down") instead of the refusal's code (red team, 2026-12-07).
fn drain(r: &mut impl Read) {
    const MAX_BYTES: u64 = 64 << 30;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(600);
    let (start, mut buf, mut n) = (std::time::Instant::now(), vec![0u8; 1 << 16], 0u64);
    while n < MAX_BYTES && start.elapsed() < MAX_TIME {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
}

pub async fn plan(ctx: &SharedCtx, caller: &Caller, r: &Received, maps: &Maps) -> ApiResult<BundlePlan> {
    let mut conn = ctx.db.acquire().await?;
    let src = &r.manifest.source;
    let already = store::find_import(&mut conn, &caller.account_id, &src.site_key, &src.vdc_id, &r.hash).await?;
    // The same bundle again has nothing to do ([`Decision::nothing_again`]), or is planned
    // as any update.
    let e = existing(ctx, &mut conn, &caller.account_id, &r.manifest).await?;
    let mut d = decide(&r.manifest, &e, maps);
    let same = already.is_some() && !maps.prune && d.nothing_again();
    if same {
        d = Decision::default();
    }
    let asks = if same { vec![] } else { quota_asks(&r.manifest, &d, maps) };
    // The disks the import would store, checked from their first bytes as far as they
    // allow: a plan does not keep the whole data (the import checks it all). Tar images'
    // entries were checked whole as they arrived.
    let mut left_out = Vec::new();
    for (what, blob, format) in blobs_to_store(&r.manifest, &d, maps).into_iter().filter(|_| !same) {
        if let Some(c) = left_out_of(r, &what, blob) {
            left_out.push(c);
            continue;
        }
        let found = match (format, r.assembled.head(&blob.sha256)) {
            (Some(ImageFormat::Raw | ImageFormat::Qcow2), Some(head)) => {
                crate::app::image_check::inspect_head(head, blob.size, ctx.config.images.max_virtual_bytes)
            }
            (Some(ImageFormat::Tar), _) => match r.assembled.tar_check(&blob.sha256) {
                Some(checked) => crate::app::image_check::tar_checked(checked.clone()),
                None => continue,
            },
            _ => continue,
        };
        judge_blob(&what, format.expect("matched above"), found)?;
    }
    let mut conflicts = d.conflicts;
    conflicts.extend(left_out);
    // Each quota the import would exceed is shown with the rest (the import would refuse
    // it): all of them, not the first only, so that one plan says what to raise.
    for ask in &asks {
        match quota::check(&mut conn, ctx, &caller.account_id, std::slice::from_ref(ask)).await {
            Ok(()) => {}
            Err(ApiError::Unprocessable { code, message }) => conflicts.push(conflict(code, message, None)),
            Err(e) => return Err(e),
        }
    }
    Ok(BundlePlan {
        source_site: src.site_key.clone(),
        source_vdc: src.vdc_id.clone(),
        manifest_hash: r.hash.clone(),
        already_imported: already.map(|i| i.id),
        update_of: d.update_of,
        creates: d.creates,
        updates: d.updates,
        deletes: d.deletes,
        unchanged: d.unchanged,
        prune: maps.prune,
        conflicts,
        chunks: r.chunks,
        bytes: r.bytes,
        held: r.held,
        left_out: r.left_out.len() as u64,
    })
}

/// When the sender left out a chunk of `blob` (a push: this site said its import would
/// not store it, and something changed here since), the conflict that says so.
fn left_out_of(r: &Received, what: &str, blob: &vdc_bundle::BlobRef) -> Option<BundleConflict> {
    blob.chunks.iter().any(|c| r.left_out.contains(c)).then(|| {
        conflict(
            vdc_bundle::CHUNK_LEFT_OUT,
            format!(
                "the push left out the data of {what}, which this site said its import would not store; \
                 something changed here since (an object deleted or changed by hand): push again"
            ),
            None,
        )
    })
}

/// What a push should send of the bundle whose head (manifest and signature) is read
/// from `body` (issue 13, point 6): the chunks of the blobs an import with `maps` would
/// store in the caller's account now, split into those to carry and those the account
/// holds here. The rest (a kept instance's disk, a kept volume's data, images this
/// import made before) need not travel at all.
pub async fn wanted(
    ctx: &SharedCtx,
    caller: &Caller,
    body: axum::body::Body,
    maps: &Maps,
) -> ApiResult<vdc_schema::api::BundleChunksWanted> {
    use futures::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let trusted = ctx.trusted_keys.clone();
    let (m, hash) = tokio::task::spawn_blocking(move || {
        let r = vdc_bundle::Reader::open(reader, &trusted, &vdc_bundle::Limits::default())?;
        Ok::<_, BundleError>((r.manifest().clone(), r.manifest_hash().to_owned()))
    })
    .await
    .map_err(ApiError::internal)??;
    let mut conn = ctx.db.acquire().await?;
    let src = &m.source;
    let found = store::find_import(&mut conn, &caller.account_id, &src.site_key, &src.vdc_id, &hash).await?;
    let d = decide(&m, &existing(ctx, &mut conn, &caller.account_id, &m).await?, maps);
    drop(conn);
    let mut needed = Vec::new();
    // The same bundle again stores nothing, but for what it makes again and what `prune`
    // applies with it (as import_received decides).
    if found.is_none() || !d.nothing_again() {
        let mut seen = HashSet::new();
        for (_, blob, _) in blobs_to_store(&m, &d, maps) {
            needed.extend(blob.chunks.iter().filter(|c| seen.insert(c.as_str())).cloned());
        }
    }
    let held = held_by(ctx, &caller.account_id, &needed).await?;
    let (held, send) = needed.into_iter().partition(|c| held.contains_key(c));
    Ok(vdc_schema::api::BundleChunksWanted { send, held })
}

// ---------------------------------------------------------------- import

/// The blobs an import stores: new images', root disks' and (unless skipped) volumes'.
/// The blobs the import makes images of: (what, blob, the format the manifest gives it).
fn blobs_to_store<'a>(
    m: &'a Manifest,
    d: &Decision,
    maps: &Maps,
) -> Vec<(String, &'a vdc_bundle::BlobRef, Option<ImageFormat>)> {
    let mut out = Vec::new();
    for i in &m.model.images {
        if let (Some(blob), Some(ImageChoice::New)) = (&i.blob, d.images.get(&i.id)) {
            out.push((format!("image {}", i.name), blob, Some(i.format)));
        }
    }
    for i in m.model.instances.iter().filter(|i| !d.kept.contains_key(&i.id) && !d.roots_kept.contains_key(&i.id)) {
        if let Some(blob) = &i.root_disk {
            out.push((format!("the root disk of instance {}", i.name), blob, i.root_disk_format));
        }
    }
    if !maps.skip_volumes {
        for v in m.model.volumes.iter().filter(|v| !d.kept.contains_key(&v.id)) {
            if let Some(blob) = &v.data {
                out.push((format!("volume {}", v.name), blob, v.data_format));
            }
        }
    }
    out
}

/// Checks blob data as an upload's is checked (`image_check::inspect`) against the format
/// the manifest gives it: hosts and sta open it with that format, and a bundle is hostile
/// input even when its signer is trusted (a qcow2 naming a backing file would have a
/// volume filled from a host file). Kernels and initrds are passed to QEMU as they are.
/// The disk's virtual size when it is one.
async fn check_blob(ctx: &SharedCtx, what: &str, path: &Path, format: Option<ImageFormat>) -> ApiResult<Option<u64>> {
    let Some(format) = format.filter(|f| matches!(f, ImageFormat::Raw | ImageFormat::Qcow2 | ImageFormat::Tar)) else {
        return Ok(None);
    };
    let (path, max_virtual) = (path.to_owned(), ctx.config.images.max_virtual_bytes);
    let found = tokio::task::spawn_blocking(move || crate::app::image_check::inspect(&path, format, max_virtual))
        .await
        .map_err(ApiError::internal)?;
    judge_blob(what, format, found)
}

/// A blob's check as an error of the bundle: refused as an upload would be, or data of
/// another format than the manifest gives it.
fn judge_blob(
    what: &str,
    format: ImageFormat,
    found: Result<crate::app::image_check::Inspected, crate::app::image_check::Refusal>,
) -> ApiResult<Option<u64>> {
    let found = found.map_err(|r| ApiError::bad(r.code, format!("{what} in the bundle: {}", r.message)))?;
    if found.format != format {
        return Err(ApiError::bad(
            "format_mismatch",
            format!("{what} in the bundle: its data is {}, the manifest says {format}", found.format),
        ));
    }
    Ok(found.virtual_size)
}

/// Every blob the manifest names.
fn manifest_blobs(m: &Manifest) -> impl Iterator<Item = &str> {
    let images = m.model.images.iter().filter_map(|i| i.blob.as_ref());
    let disks = m.model.instances.iter().filter_map(|i| i.root_disk.as_ref());
    let volumes = m.model.volumes.iter().filter_map(|v| v.data.as_ref());
    images.chain(disks).chain(volumes).map(|b| b.sha256.as_str())
}

/// Stores each blob the import needs: assembled as the bundle arrived, or else from its
/// staged chunks (checked against its hash again); a blob the store has already is not
/// written twice. Answers the virtual size the check read from each disk.
async fn store_blobs(ctx: &SharedCtx, r: &Received, d: &Decision, maps: &Maps) -> ApiResult<VirtualSizes> {
    let mut done = HashSet::new();
    let mut sizes = VirtualSizes::new();
    for (what, blob, format) in blobs_to_store(&r.manifest, d, maps) {
        // In the store already (a blob an S3 store holds was checked when it came in).
        if let Some(p) = ctx.blobs.local_path(&blob.sha256).filter(|p| p.exists()) {
            if let Some(v) = check_blob(ctx, &what, &p, format).await? {
                sizes.insert(blob.sha256.clone(), v);
            }
            continue;
        }
        if !done.insert(&blob.sha256) {
            continue;
        }
        // Assembled and its hash checked as its chunks arrived.
        if let Some(p) = r.assembled.get(&blob.sha256) {
            if let Some(v) = check_blob(ctx, &what, p, format).await? {
                sizes.insert(blob.sha256.clone(), v);
            }
            ctx.blobs.put(&blob.sha256, p).await.map_err(ApiError::internal)?;
            continue;
        }
        let staging = staging_dir(ctx);
        let chunks = chunk_dir(ctx);
        let tmp = staging.join(format!("bundle-{}-{}-{}", std::process::id(), blob.sha256, rand::random::<u32>()));
        // The staged chunks read direct, one after the other; written and hashed on
        // threads of their own (vdc_bus::fileio), as an upload is.
        let ok = async {
            use sha2::Digest;
            tokio::fs::create_dir_all(&staging).await?;
            let mut out = vdc_bus::fileio::HashingFile::new(std::fs::File::create(&tmp)?, sha2::Sha256::new())?;
            let (tx, mut rx) = tokio::sync::mpsc::channel(2);
            let paths = blob.chunks.iter().map(|c| chunks.join(c)).collect();
            let read = tokio::task::spawn_blocking(move || {
                let mut r = DirectReader::open_all(paths)?;
                while let Some(b) = r.next_block()? {
                    if tx.blocking_send(b).is_err() {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            });
            while let Some(b) = rx.recv().await {
                out.write(b).await?;
            }
            read.await.map_err(std::io::Error::other)??;
            Ok::<_, std::io::Error>(out.finish().await? == blob.sha256)
        }
        .await;
        match ok {
            Ok(true) => {
                match check_blob(ctx, &what, &tmp, format).await {
                    Ok(v) => sizes.extend(v.map(|v| (blob.sha256.clone(), v))),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
                ctx.blobs.put(&blob.sha256, &tmp).await.map_err(ApiError::internal)?
            }
            Ok(false) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ApiError::bad(
                    "bundle_chunk_mismatch",
                    format!("{what}: its chunks do not make the blob its hash names"),
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ApiError::internal(format!("assembling {what}: {e}")));
            }
        }
    }
    Ok(sizes)
}

/// A disk blob's SHA-256 → its virtual size, as the import's check read it.
type VirtualSizes = HashMap<String, u64>;

/// Removes those of `blobs` no image holds (the caller holds `blob_refs`).
async fn drop_unheld(ctx: &SharedCtx, blobs: &[&vdc_bundle::BlobRef]) {
    for b in blobs {
        let users = async {
            let mut tx = db::begin(&ctx.db).await?;
            let n = crate::datastore::image::blob_users(&mut tx, &b.sha256).await?;
            tx.rollback().await?;
            Ok::<_, sqlx::Error>(n)
        };
        match users.await {
            Ok(0) => {
                if let Err(e) = ctx.blobs.delete(&b.sha256).await {
                    tracing::warn!(blob = %b.sha256, "bundle import: removing a blob it stored: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(blob = %b.sha256, "bundle import: a blob it stored is left: {e}"),
        }
    }
}

enum Applied {
    /// Made, with the work to send and the prunes to carry out once committed, and the
    /// volumes it moved.
    Created(BundleImport, Vec<Work>, Vec<(String, String)>, Moves),
    Found(BundleImport),
}

/// Kept volumes an update moves: the detaches its commit began, and the volumes to
/// attach where the bundle has them (now when available, else once detached).
struct Moves {
    detaching: Vec<crate::app::volume::Detaching>,
    attach: Vec<String>,
}

/// Imports a verified bundle: everything in one transaction, or nothing.
pub async fn import(ctx: &SharedCtx, caller: &Caller, r: &Received, maps: &Maps) -> ApiResult<BundleImported> {
    let done = import_received(ctx, caller, r, maps).await;
    if done.is_err() {
        // Refused (a conflict, bad data, a quota): its staged chunks stayed, across
        // restarts too. The command again sends them again.
        unstage(ctx, &r.manifest);
    }
    done
}

/// Chunks staged this long ago are an import's that never ended (dcmgr stopped during
/// it): [`sweep_staged`] removes them.
const STAGED_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes chunks staged more than [`STAGED_FOR`] ago (the reconciler's leftovers pass).
pub fn sweep_staged(ctx: &SharedCtx) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(chunk_dir(ctx)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let old = entry.metadata()?.modified()?.elapsed().is_ok_and(|age| age > STAGED_FOR);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

async fn import_received(ctx: &SharedCtx, caller: &Caller, r: &Received, maps: &Maps) -> ApiResult<BundleImported> {
    let src = &r.manifest.source;
    {
        // Read as the import's own transaction reads them (under the account's lock): an
        // identical import that commits between two separate reads looked like a name
        // taken by another.
        let mut tx = db::begin(&ctx.db).await?;
        accounts::lock(&mut tx, &caller.account_id).await?;
        let found =
            store::find_import(tx.conn().await?, &caller.account_id, &src.site_key, &src.vdc_id, &r.hash).await?;
        let e = existing(ctx, tx.conn().await?, &caller.account_id, &r.manifest).await?;
        drop(tx);
        let d = decide(&r.manifest, &e, maps);
        // The same bundle again changes nothing, but for what was deleted here since (made
        // again) and the deletes `--prune` asks for.
        if let Some(found) = found.filter(|_| d.nothing_again()) {
            unstage(ctx, &r.manifest);
            return Ok(BundleImported { import: found, created: false });
        }
        if let Some(c) = d.conflicts.first() {
            return Err(unresolved(&d.conflicts, c));
        }
        terminate_first(ctx, caller, &d.replaced).await?;
    }
    // The blobs are kept from removal (an image delete's cleanup) until their images
    // commit: all the manifest names, a superset of those the decision below stores.
    let _refs = crate::app::blob_refs::hold(ctx, manifest_blobs(&r.manifest)).await?;
    let d0 = {
        let mut conn = ctx.db.acquire().await?;
        decide(&r.manifest, &existing(ctx, &mut conn, &caller.account_id, &r.manifest).await?, maps)
    };
    if let Some(c) = blobs_to_store(&r.manifest, &d0, maps).iter().find_map(|(what, b, _)| left_out_of(r, what, b)) {
        return Err(ApiError::conflict(vdc_bundle::CHUNK_LEFT_OUT, c.message));
    }
    let t = std::time::Instant::now();
    let stored: Vec<&vdc_bundle::BlobRef> = blobs_to_store(&r.manifest, &d0, maps).into_iter().map(|b| b.1).collect();
    let applied = match store_blobs(ctx, r, &d0, maps).await {
        Ok(sizes) => db::retry(|| apply(ctx, caller, r, maps, &sizes)).await,
        Err(e) => Err(e),
    };
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            // Nothing was made (over a quota, no room, a conflict since the check): the
            // blobs stored for it that no image holds go again, under the same hold.
            drop_unheld(ctx, &stored).await;
            return Err(e);
        }
    };
    let stored_and_applied_in = t.elapsed();
    drop(_refs);
    // The account holds these blobs' chunks now: a later push need not send them.
    if let Err(e) = record_held(ctx, &caller.account_id, &r.manifest, &stored).await {
        // Only a later push's saving is lost: it sends these chunks again.
        tracing::warn!(error = %e, "bundle import: recording the chunks held");
    }
    // The data is in the blob store now; staged chunks have done their part.
    unstage(ctx, &r.manifest);
    match applied {
        Applied::Found(i) => Ok(BundleImported { import: i, created: false }),
        Applied::Created(i, work, prunes, moves) => {
            for w in work {
                ctx.enqueue(w);
            }
            // Detaches first: a volume the prune deletes may wait for its own.
            for d in &moves.detaching {
                d.enqueue(ctx);
            }
            prune(ctx, caller, &prunes).await;
            move_volumes(ctx, &moves).await;
            tracing::info!(import = %i.id, objects = i.id_map.len(), ?stored_and_applied_in, "bundle imported");
            Ok(BundleImported { import: i, created: true })
        }
    }
}

/// How long an import waits for a host to let go: of an instance it replaces
/// ([`Decision::replaced`]), or of a volume it detaches to delete. Either takes seconds.
const HOST_LETS_GO_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// Terminates the instances the import replaces and waits until they are gone, so that
/// their names and addresses are free for the decision made again after. A failure here
/// leaves them terminating: the same command again goes on.
async fn terminate_first(ctx: &SharedCtx, caller: &Caller, ids: &[String]) -> ApiResult<()> {
    for id in ids {
        let i: InstanceId = id.parse().map_err(ApiError::internal)?;
        instance::act(ctx, caller, &i, vdc_schema::InstanceAction::Terminate).await?;
        tracing::info!(instance = %id, "bundle import: terminated first, replaced by the bundle's");
    }
    let start = std::time::Instant::now();
    for id in ids {
        loop {
            let state = istore::get(&ctx.db, id).await?.map(|r| r.state);
            if state.is_none_or(|s| s == vdc_schema::InstanceState::Terminated.as_str()) {
                break;
            }
            if start.elapsed() > HOST_LETS_GO_WITHIN {
                return Err(ApiError::conflict(
                    "instance_terminating",
                    format!(
                        "instance {id}, which an instance of the bundle replaces, is still being terminated; \
                         import again once it is terminated"
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Carries out the prunes that are API actions of their own, after the import committed:
/// instances terminated first (what they held is deleted by a later prune), kept ones
/// stopped or started as the bundle has them, then floating IPs released, volumes and
/// images deleted. A failure is logged and left for the next import (with `--prune` for
/// a delete: the object stays in the import's map while it exists).
async fn prune(ctx: &SharedCtx, caller: &Caller, prunes: &[(String, String)]) {
    use vdc_schema::InstanceAction::{Start, Stop, Terminate};
    for kind in ["instance", STOP, START, "floating_ip", "volume", "image"] {
        for (_, id) in prunes.iter().filter(|p| p.0 == kind) {
            let r = match kind {
                "instance" | STOP | START => {
                    let action = match kind {
                        STOP => Stop,
                        START => Start,
                        _ => Terminate,
                    };
                    match id.parse() {
                        Ok(i) => instance::act(ctx, caller, &i, action).await.map(drop),
                        Err(e) => Err(ApiError::internal(e)),
                    }
                }
                "floating_ip" => match id.parse() {
                    Ok(f) => match floating_ip::disassociate(ctx, caller, &f).await {
                        Ok(_) => floating_ip::delete(ctx, caller, &f).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(ApiError::internal(e)),
                },
                "volume" => match id.parse() {
                    Ok(v) => delete_detached(ctx, caller, &v).await,
                    Err(e) => Err(ApiError::internal(e)),
                },
                _ => match id.parse() {
                    Ok(i) => image::delete(ctx, caller, &i).await,
                    Err(e) => Err(ApiError::internal(e)),
                },
            };
            match r {
                Ok(()) => tracing::info!(kind, id = %id, "bundle import: done after the commit"),
                Err(e) => {
                    tracing::warn!(kind, id = %id, error = %e, "bundle import: failed after the commit; the next import tries again")
                }
            }
        }
    }
}

/// Deletes a pruned volume once the detach the import committed is done (its host lets
/// go of it in seconds); a volume still attached after [`HOST_LETS_GO_WITHIN`] is left for
/// the next prune.
async fn delete_detached(ctx: &SharedCtx, caller: &Caller, id: &VolumeId) -> ApiResult<()> {
    let start = std::time::Instant::now();
    loop {
        match volume::delete(ctx, caller, id).await {
            Err(ApiError::Conflict { code: "volume_attached", .. }) if start.elapsed() < HOST_LETS_GO_WITHIN => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            r => return r.map(drop),
        }
    }
}

/// Attaches the moved volumes that are available already (`app::volume::attach_asked`;
/// the others are attached when their detach is reported). A failure is logged; the
/// reconciler carries it on.
async fn move_volumes(ctx: &SharedCtx, moves: &Moves) {
    for id in &moves.attach {
        let Ok(v) = id.parse::<VolumeId>() else { continue };
        if let Err(e) = volume::attach_asked(ctx, &v).await {
            tracing::warn!(volume = %v, error = %e, "bundle import: attaching a volume the bundle moved");
        }
    }
}

fn unstage(ctx: &SharedCtx, m: &Manifest) {
    for c in &m.chunks {
        let _ = std::fs::remove_file(chunk_dir(ctx).join(&c.sha256));
    }
}

fn unresolved(all: &[BundleConflict], first: &BundleConflict) -> ApiError {
    ApiError::conflict(
        "bundle_unresolved",
        format!(
            "{} conflict(s) keep this bundle from being imported, first: {} ({}); run `vdc bundle plan` to see them all",
            all.len(),
            first.message,
            first.code
        ),
    )
}

/// What an import would add to the account, per quota (only new images count; volumes
/// and floating IPs unless the map skips them). Objects an update keeps count already.
fn quota_asks(m: &Manifest, d: &Decision, maps: &Maps) -> Vec<(QuotaKey, u64)> {
    let new_images: Vec<&vdc_bundle::Image> =
        m.model.images.iter().filter(|i| matches!(d.images.get(&i.id), Some(ImageChoice::New))).collect();
    let instances: Vec<&vdc_bundle::Instance> =
        m.model.instances.iter().filter(|i| !d.kept.contains_key(&i.id)).collect();
    let new = |id: &String| !d.kept.contains_key(id);
    let volumes: Vec<&vdc_bundle::Volume> =
        m.model.volumes.iter().filter(|v| !maps.skip_volumes && new(&v.id)).collect();
    let floating_ips = m.model.floating_ips.iter().filter(|f| !maps.skip_floating_ips && new(&f.id)).count();
    // Images are also made of the new instances' root disks and the new volumes' data:
    // images of the account as any, counted as any.
    let image_bytes: Vec<u64> = new_images
        .iter()
        .filter_map(|i| i.blob.as_ref())
        .chain(instances.iter().filter_map(|i| i.root_disk.as_ref()))
        .chain(volumes.iter().filter(|v| !d.kept.contains_key(&data_key(&v.id))).filter_map(|v| v.data.as_ref()))
        .map(|b| b.size)
        .collect();
    // (A new image always has its data.)
    let images = image_bytes.len();
    vec![
        (QuotaKey::Instances, instances.len() as u64),
        (QuotaKey::Vcpus, instances.iter().map(|i| u64::from(i.cpus)).sum()),
        (QuotaKey::MemoryMib, instances.iter().map(|i| u64::from(i.memory_mib)).sum()),
        // The sizes the bundle gives (an image's own size is known in the import).
        (
            QuotaKey::RootDiskGib,
            instances.iter().map(|i| u64::from(crate::app::scheduler::disk_mib(i.hypervisor, i.root_disk_size))).sum(),
        ),
        (QuotaKey::Networks, d.networks.iter().filter(|n| n.existing.is_none()).count() as u64),
        (QuotaKey::SecurityGroups, m.model.security_groups.iter().filter(|g| new(&g.id)).count() as u64),
        (QuotaKey::Keypairs, m.model.keypairs.iter().filter(|k| new(&k.id)).count() as u64),
        (QuotaKey::ServerGroups, m.model.server_groups.iter().filter(|g| new(&g.id)).count() as u64),
        (QuotaKey::Images, images as u64),
        (QuotaKey::ImageGib, image_bytes.iter().sum()),
        (QuotaKey::Volumes, volumes.len() as u64),
        (QuotaKey::VolumeGib, volumes.iter().map(|v| v.size_mib).sum()),
        (QuotaKey::FloatingIps, floating_ips as u64),
    ]
}

async fn apply(
    ctx: &SharedCtx,
    caller: &Caller,
    r: &Received,
    maps: &Maps,
    sizes: &VirtualSizes,
) -> ApiResult<Applied> {
    let m = &r.manifest;
    let account = &caller.account_id;
    // Candidates are read before the transaction (as instance create does); the
    // reservation inside it re-checks.
    let pre = {
        let mut conn = ctx.db.acquire().await?;
        decide(m, &existing(ctx, &mut conn, account, m).await?, maps)
    };
    let mut candidates: HashMap<String, Vec<String>> = HashMap::new();
    // A stopped instance holds no host until it is started.
    for i in m.model.instances.iter().filter(|i| !i.stopped && !pre.kept.contains_key(&i.id)) {
        let hv = pre.hypervisor_of(i);
        // The disk as the bundle sized it (its image's size is known in the transaction).
        let disk_mib = scheduler::disk_mib(hv, i.root_disk_size);
        let demand =
            scheduler::Demand { hypervisor: hv, cpus: i.cpus, memory_mib: i.memory_mib, disk_mib, uefi: false };
        let (zone, labels) = pre.host_classes.get(&i.id).cloned().unwrap_or_default();
        // A group this import creates has no members yet: its policy narrows the
        // candidates in the transaction, as members are placed.
        let group = i.server_group.as_ref().and_then(|g| kept_group(m, &pre, g));
        let c = scheduler::Constraints { zone, labels: labels.into_iter().collect(), group };
        candidates.insert(i.id.clone(), scheduler::candidates(ctx, demand, &c).await?);
    }

    let mut tx = db::begin(&ctx.db).await?;
    // Serializes imports (and network creates) into this account: the checks below stay true.
    accounts::lock(&mut tx, account).await?;
    let found = store::find_import(tx.conn().await?, account, &m.source.site_key, &m.source.vdc_id, &r.hash).await?;
    let e = existing(ctx, tx.conn().await?, account, m).await?;
    let d = decide(m, &e, maps);
    if let Some(found) = found.filter(|_| d.nothing_again()) {
        return Ok(Applied::Found(found));
    }
    if let Some(c) = d.conflicts.first() {
        return Err(unresolved(&d.conflicts, c));
    }
    quota::enforce(&mut tx, ctx, account, &quota_asks(m, &d, maps)).await?;
    for (kind, id) in &d.set_aside {
        store::set_aside(&mut tx, kind, id).await?;
    }
    let name = |kind: &str, id: &str| d.names.get(&(kind.to_owned(), id.to_owned())).cloned().unwrap_or_default();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut work = Vec::new();
    let mut detaching = Vec::new();
    let now = db::now();

    let mut networks: HashMap<String, (Network, PlannedNetwork)> = HashMap::new();
    for p in &d.networks {
        if let Some(id) = &p.existing {
            // Instance creates lock the network; so does an update that adds to it.
            db::lock(&mut tx, db::Lock::Network, id).await?;
            let row = nstore::get_own(tx.conn().await?, account, &id.parse().map_err(ApiError::internal)?)
                .await?
                .ok_or_else(|| ApiError::Busy(format!("network {id} changed concurrently")))?;
            networks.insert(p.bundle_id.clone(), (row.into_api()?, p.clone()));
            continue;
        }
        let vni = nstore::next_vni(&mut tx).await?;
        let row = nstore::Row {
            id: NetworkId::generate().to_string(),
            name: name("network", &p.bundle_id),
            cidr: p.cidr.to_string(),
            gateway: p.gateway.to_string(),
            dhcp_start: p.start.to_string(),
            dhcp_end: p.end.to_string(),
            vni,
            created_at: now.clone(),
        };
        nstore::insert(&mut tx, account, &row).await?;
        ids.insert(p.bundle_id.clone(), row.id.clone());
        networks.insert(p.bundle_id.clone(), (row.into_api()?, p.clone()));
    }
    let mut groups: HashMap<String, SecurityGroupId> = HashMap::new();
    for g in &m.model.security_groups {
        if let Some(t) = d.kept.get(&g.id) {
            let id: SecurityGroupId = t.parse().map_err(ApiError::internal)?;
            db::lock(&mut tx, db::Lock::SecurityGroup, t).await?;
            groups.insert(g.id.clone(), id);
            continue;
        }
        let id = SecurityGroupId::generate();
        db::secgroup::insert(&mut tx, &id, account, &name("security_group", &g.id), &g.description).await?;
        ids.insert(g.id.clone(), id.to_string());
        groups.insert(g.id.clone(), id);
    }
    for g in &m.model.security_groups {
        let update = d.group_updates.contains(&g.id);
        if d.kept.contains_key(&g.id) && !update {
            continue;
        }
        // An updated group keeps the rules it has that the bundle still carries (and
        // their IDs); the others go, the new ones are added.
        let mut left = Vec::new();
        if update {
            store::set_group_description(&mut tx, groups[&g.id].as_str(), &g.description).await?;
            left = db::secgroup::rules(tx.conn().await?, groups[&g.id].as_str()).await?;
        }
        for rule in &g.rules {
            let spec = RuleSpec {
                direction: rule.direction,
                protocol: rule.protocol,
                port_min: rule.port_min,
                port_max: rule.port_max,
                cidr: rule.cidr.clone(),
                group: rule.group.as_ref().and_then(|b| groups.get(b)).cloned(),
            };
            match left.iter().position(|r| same_rule(r, &spec)) {
                Some(i) => drop(left.remove(i)),
                None => drop(db::secgroup::insert_rule(&mut tx, &groups[&g.id], &spec).await?),
            }
        }
        for r in left {
            db::secgroup::delete_rule(&mut tx, &groups[&g.id], &r.id.parse().map_err(ApiError::internal)?).await?;
        }
        if update {
            db::interface::bump_for_group(&mut tx, groups[&g.id].as_str(), db::interface::GroupChange::Rules).await?;
            db::event::record(
                tx.conn().await?,
                db::event::Kind::SecurityGroup,
                groups[&g.id].as_str(),
                db::event::Change::Updated,
            )
            .await?;
        }
        work.push(Work::SecurityGroup(groups[&g.id].clone(), db::interface::GroupChange::Rules));
    }
    let mut keys: HashMap<String, KeyPairId> = HashMap::new();
    for k in &m.model.keypairs {
        let (public_key, fingerprint) = keypair::parse_public_key(&k.public_key)?;
        if let Some(t) = d.kept.get(&k.id) {
            if d.key_updates.contains(&k.id) {
                store::set_public_key(&mut tx, t, &public_key, &fingerprint).await?;
            }
            keys.insert(k.id.clone(), t.parse().map_err(ApiError::internal)?);
            continue;
        }
        let id = KeyPairId::generate();
        store::insert_keypair(&mut tx, account, id.as_str(), &name("keypair", &k.id), &public_key, &fingerprint)
            .await?;
        ids.insert(k.id.clone(), id.to_string());
        keys.insert(k.id.clone(), id);
    }
    let mut server_groups: HashMap<String, scheduler::Group> = HashMap::new();
    for g in &m.model.server_groups {
        let group = match kept_group(m, &d, &g.id) {
            Some(kept) => kept,
            None => {
                let new = vdc_schema::api::ServerGroup {
                    id: ServerGroupId::generate(),
                    name: name("server_group", &g.id),
                    policy: d.group_policies[&g.id],
                    members: vec![],
                    created_at: db::parse_time(&now),
                };
                db::server_group::insert(&mut tx, account, &new).await?;
                ids.insert(g.id.clone(), new.id.to_string());
                scheduler::Group { id: new.id.to_string(), name: new.name, policy: new.policy }
            }
        };
        server_groups.insert(g.id.clone(), group);
    }
    // Kernels before the disk images that name them.
    let mut images: HashMap<String, (ImageId, vdc_schema::state::BootMode)> = HashMap::new();
    let mut order: Vec<&vdc_bundle::Image> = m.model.images.iter().collect();
    order.sort_by_key(|i| i.kernel_id.is_some());
    for i in order {
        match d.images.get(&i.id) {
            Some(ImageChoice::Existing(id)) => {
                let id: ImageId = id.parse().map_err(ApiError::internal)?;
                if !db::lock(&mut tx, db::Lock::Image, id.as_str()).await? {
                    return Err(ApiError::not_found("image", &id));
                }
                images.insert(i.id.clone(), (id, i.boot_mode));
            }
            Some(ImageChoice::Kept(id)) => {
                let id: ImageId = id.parse().map_err(ApiError::internal)?;
                // Deleted here since the import, and still used: restored, unless it is
                // deleted at the source too.
                let found = db::lock(&mut tx, db::Lock::Image, id.as_str()).await?
                    || if i.deleted {
                        db::image::is_deleted(&mut tx, id.as_str()).await?
                    } else {
                        db::image::restore(&mut tx, id.as_str()).await?
                            && db::lock(&mut tx, db::Lock::Image, id.as_str()).await?
                    };
                if !found {
                    return Err(ApiError::Busy(format!("image {id} changed concurrently")));
                }
                images.insert(i.id.clone(), (id, i.boot_mode));
            }
            Some(ImageChoice::New) => {
                let blob = i.blob.as_ref().expect("a new image has data");
                let image = Image {
                    id: ImageId::generate(),
                    name: name("image", &i.id),
                    format: i.format,
                    arch: i.arch,
                    hypervisors: d.image_hypervisors[&i.id].clone(),
                    source: format!("bundle:{}", r.hash),
                    checksum: Some(format!("sha256:{}", blob.sha256)),
                    state: ImageState::Available,
                    failure_reason: None,
                    size_bytes: Some(blob.size),
                    virtual_size: sizes.get(&blob.sha256).copied(),
                    owner: None,
                    member_status: None,
                    initrd: None,
                    kernel_cmdline: None,
                    boot_mode: i.boot_mode,
                    kernel_id: i.kernel_id.as_ref().and_then(|k| images.get(k)).map(|k| k.0.clone()),
                    min_disk: i.min_disk,
                    min_memory: i.min_memory,
                    os: i.os.clone(),
                    public: false,
                    created_at: db::parse_time(&now),
                    default_user: i.default_user.clone(),
                };
                store::insert_image(&mut tx, account, &image, &blob.sha256).await?;
                ids.insert(i.id.clone(), image.id.to_string());
                images.insert(i.id.clone(), (image.id, i.boot_mode));
            }
            Some(ImageChoice::Dropped) => {}
            None => return Err(ApiError::internal(format!("image {} undecided", i.id))),
        }
    }
    // Root disks: private images of the account (as a capture makes), booted by their
    // instance; the bundle's image stays what the disk was made from.
    let mut roots: HashMap<String, ImageId> = HashMap::new();
    for i in m.model.instances.iter().filter(|i| !d.kept.contains_key(&i.id)) {
        let Some(blob) = &i.root_disk else { continue };
        if let Some(id) = d.roots_kept.get(&i.id) {
            let id: ImageId = id.parse().map_err(ApiError::internal)?;
            if !db::lock(&mut tx, db::Lock::Image, id.as_str()).await? {
                return Err(ApiError::Busy(format!("image {id} changed concurrently")));
            }
            roots.insert(i.id.clone(), id);
            continue;
        }
        let src = m.model.images.iter().find(|x| x.id == i.image).ok_or_else(|| ApiError::internal("validated"))?;
        let key = root_key(&i.id);
        let mut image = data_image(&name("image", &key), blob, &r.hash, &now, sizes);
        image.format = i.root_disk_format.ok_or_else(|| ApiError::internal("validated"))?;
        image.arch = src.arch;
        image.hypervisors = d.image_hypervisors[&i.image].clone();
        image.boot_mode = src.boot_mode;
        image.kernel_id = src.kernel_id.as_ref().and_then(|k| images.get(k)).map(|k| k.0.clone());
        image.min_memory = src.min_memory;
        image.os = src.os.clone();
        image.default_user = src.default_user.clone();
        store::insert_image(&mut tx, account, &image, &blob.sha256).await?;
        ids.insert(key, image.id.to_string());
        roots.insert(i.id.clone(), image.id);
    }
    // instance bundle ID → (new ID, its first interface)
    let mut created: HashMap<String, (InstanceId, Option<String>)> = HashMap::new();
    for i in m.model.instances.iter().filter(|i| !d.kept.contains_key(&i.id)) {
        let hv = d.hypervisors[&i.id];
        let class = d.host_classes.get(&i.id).cloned().unwrap_or_default();
        let class_labels = crate::datastore::host::join_labels(&class.1);
        // Its root disk's image, else the image it boots (one only its disks were made of
        // may not be here: `ImageChoice::Dropped`).
        let (image, boot) = match (roots.get(&i.id), images.get(&i.image)) {
            (Some(root), _) => {
                let src =
                    m.model.images.iter().find(|x| x.id == i.image).ok_or_else(|| ApiError::internal("validated"))?;
                (root.clone(), src.boot_mode)
            }
            (None, Some(found)) => found.clone(),
            (None, None) => return Err(ApiError::internal(format!("instance {}: image {} undecided", i.id, i.image))),
        };
        // (A container given no size has the default: what its image unpacks to is not it.)
        let image_size = match i.root_disk_size {
            Some(_) => None,
            None if hv == HypervisorKind::Lxc => None,
            None => db::image::get_tx(&mut tx, &image).await?.and_then(|r| r.virtual_size).map(|v| v as u64),
        };
        let demand = scheduler::Demand {
            hypervisor: hv,
            cpus: i.cpus,
            memory_mib: i.memory_mib,
            disk_mib: scheduler::disk_mib(hv, i.root_disk_size.or(image_size)),
            uefi: boot == vdc_schema::state::BootMode::Uefi,
        };
        let group = i.server_group.as_ref().map(|g| &server_groups[g]);
        let host = match i.stopped {
            // Unused by insert_stopped.
            true => HostNodeId::generate(),
            false => {
                let mut cands = candidates[&i.id].clone();
                if let Some(g) = group {
                    // Where the members placed so far (this import's among them) are.
                    if !db::server_group::lock(&mut tx, &g.id).await? {
                        return Err(ApiError::not_found("server group", &g.id));
                    }
                    let hosts = db::server_group::member_hosts(tx.conn().await?, &g.id).await?;
                    cands = scheduler::allowed_by_policy(g.policy, &hosts, &cands);
                    if cands.is_empty() {
                        return Err(scheduler::group_unsatisfiable(g, demand));
                    }
                }
                // By the room the hosts have now, this import's earlier placements taken.
                scheduler::rank_now(ctx, group.map(|g| g.policy), &mut cands);
                match scheduler::reserve(ctx, &mut tx, demand, &cands, None).await {
                    // Its disk's size is known here only (the image is this import's): when
                    // no host has room for it, that is the answer, not a race to retry.
                    Err(ApiError::Busy(_)) if demand.disk_mib > 0 => {
                        let (zone, labels) = class.clone();
                        let c = scheduler::Constraints { zone, labels: labels.into_iter().collect(), group: None };
                        scheduler::candidates(ctx, demand, &c).await?;
                        return Err(ApiError::Busy("candidate hosts filled up concurrently".into()));
                    }
                    r => r?,
                }
            }
        };
        let id = InstanceId::generate();
        let key = i.keypair.as_ref().map(|k| keys[k].clone());
        let mut first_vif = None;
        let new = istore::New {
            id: &id,
            account,
            name: &name("instance", &i.id),
            image: &image,
            hypervisor: hv.as_str(),
            cpus: i.cpus,
            memory_mib: i.memory_mib,
            ssh_key: key.as_ref(),
            user_data: i.user_data.as_deref(),
            root_disk_size: i.root_disk_size,
            host: &host,
            now: &now,
            server_group: group.map(|g| g.id.as_str()),
            zone: &class.0,
            labels: &class_labels,
            disk_mib: demand.disk_mib,
        };
        if i.stopped {
            istore::insert_stopped(&mut tx, &new).await?;
        } else {
            istore::insert(&mut tx, &new).await?;
        }
        for (pos, nic) in i.interfaces.iter().enumerate() {
            let (net, p) = &networks[&nic.network];
            let ip = nic.ip.parse::<Ipv4Addr>().map_err(ApiError::internal)?;
            // MACs are unique site-wide: the bundle's is kept unless this site uses it, or
            // it is no guest's to have (a crafted bundle's broadcast, multicast or zero
            // MAC): then the interface gets one of this site's, as a create does.
            let unicast = |m: &vdc_schema::net::MacAddr| m.octets()[0] & 1 == 0 && m.octets() != [0; 6];
            let mac = match nic.mac.parse::<vdc_schema::net::MacAddr>() {
                Ok(mac) if unicast(&mac) && !store::mac_taken(&mut tx, &mac.to_string()).await? => Some(mac),
                _ => None,
            };
            let planned = interface::Planned {
                network: net.clone(),
                security_groups: nic.security_groups.iter().map(|g| groups[g].clone()).collect(),
                fixed_ip: Some(p.translate(ip)),
                mac,
            };
            let vif = interface::insert(&mut tx, account, &id, pos, &planned, false).await?;
            first_vif.get_or_insert_with(|| vif.id.to_string());
            work.push(Work::Interface(vif.id));
        }
        ids.insert(i.id.clone(), id.to_string());
        if !i.stopped {
            job::start_first(&mut tx, account, "instance.create", id.as_str(), "running").await?;
            work.push(Work::Instance(id.clone()));
        }
        created.insert(i.id.clone(), (id, first_vif));
    }
    // Kept instances: their interfaces' groups.
    for (vif, gs) in &d.nic_updates {
        let gs: Vec<String> = gs.iter().map(|g| groups[g].to_string()).collect();
        // Groups it joined or left have other members now: those referring to them follow.
        for g in store::set_vif_groups(&mut tx, vif, &gs).await? {
            db::interface::bump_for_group(&mut tx, &g, db::interface::GroupChange::Members).await?;
            work.push(Work::SecurityGroup(g.parse().map_err(ApiError::internal)?, db::interface::GroupChange::Members));
        }
        db::interface::bump(tx.conn().await?, vif).await?;
        work.push(Work::Interface(vif.parse().map_err(ApiError::internal)?));
    }
    for (net, start, end) in &d.dhcp {
        store::set_dhcp(&mut tx, net, &start.to_string(), &end.to_string()).await?;
    }
    // Deletes (`--prune`): rules first, so groups that refer to each other can go together.
    for (kind, id) in &d.removes {
        if kind == "security_group" {
            db::lock(&mut tx, db::Lock::SecurityGroup, id).await?;
            store::clear_group(&mut tx, id, "").await?;
        }
    }
    for (kind, id) in &d.removes {
        match kind.as_str() {
            "network" => {
                let nid: NetworkId = id.parse().map_err(ApiError::internal)?;
                db::lock(&mut tx, db::Lock::Network, id).await?;
                // Checked again under the lock: the plan read the model before it.
                let users = nstore::users(&mut tx, &nid).await?;
                if !users.is_empty() {
                    return Err(ApiError::conflict(
                        "in_use",
                        format!("network {id} is gone from the bundle but used by {}", users.join(", ")),
                    ));
                }
                nstore::delete(&mut tx, &nid).await?;
            }
            "security_group" => {
                let gid: SecurityGroupId = id.parse().map_err(ApiError::internal)?;
                let members = db::secgroup::member_instances(&mut tx, &gid).await?;
                let refs = db::secgroup::referring_groups(&mut tx, &gid).await?;
                if !members.is_empty() || !refs.is_empty() {
                    return Err(ApiError::conflict(
                        "in_use",
                        format!("security group {id} is gone from the bundle but still in use"),
                    ));
                }
                db::secgroup::delete(&mut tx, &gid).await?;
            }
            "keypair" => store::delete_keypair(&mut tx, id).await?,
            "server_group" => {
                let gid: ServerGroupId = id.parse().map_err(ApiError::internal)?;
                // The plan deletes a group once no live instance is in it; a member
                // created since is refused, under the group's lock.
                db::server_group::lock(&mut tx, id).await?;
                if !db::server_group::members(tx.conn().await?, id).await?.is_empty() {
                    return Err(ApiError::conflict(
                        "in_use",
                        format!("server group {id} is gone from the bundle but has members"),
                    ));
                }
                db::server_group::delete(&mut tx, &gid).await?;
            }
            // Each their own decision, as if asked through the API, once this commits.
            "instance" | "floating_ip" | "volume" | "image" => {}
            other => return Err(ApiError::internal(format!("cannot remove a {other}"))),
        }
    }
    if !maps.skip_volumes {
        for (vol, detach, to) in &d.volume_moves {
            // The detach is in this commit, so that nothing after it is needed for it.
            if *detach {
                let id: VolumeId = vol.parse().map_err(ApiError::internal)?;
                detaching.extend(crate::app::volume::detach_in(&mut tx, caller, &id).await?);
            }
            if let Some(i) = to.as_ref().and_then(|i| instance_here(&created, &d, i)) {
                vstore::set_attach_to(&mut tx, vol, &i).await?;
            }
        }
        for v in m.model.volumes.iter().filter(|v| !d.kept.contains_key(&v.id)) {
            let image = match &v.data {
                Some(_) if d.kept.contains_key(&data_key(&v.id)) => {
                    let kept = d.kept[&data_key(&v.id)].clone();
                    if !db::lock(&mut tx, db::Lock::Image, &kept).await? {
                        return Err(ApiError::Busy(format!("image {kept} changed concurrently")));
                    }
                    ids.insert(data_key(&v.id), kept.clone());
                    Some(kept)
                }
                Some(blob) => {
                    let key = data_key(&v.id);
                    let mut image = data_image(&name("image", &key), blob, &r.hash, &now, sizes);
                    image.format = v.data_format.ok_or_else(|| ApiError::internal("validated"))?;
                    store::insert_image(&mut tx, account, &image, &blob.sha256).await?;
                    ids.insert(key, image.id.to_string());
                    Some(image.id.to_string())
                }
                None => None,
            };
            let size = v.size_mib as i64;
            let node = crate::app::volume::reserve_storage(&mut tx, &ctx.db, size, None).await?;
            let id = VolumeId::generate();
            vstore::insert(
                &mut tx,
                vstore::New {
                    id: id.as_str(),
                    account,
                    name: &name("volume", &v.id),
                    size_mib: size,
                    node: &node,
                    snapshot_id: None,
                    image_id: image,
                    now: &now,
                },
            )
            .await?;
            job::start_first(&mut tx, account, "volume.create", id.as_str(), "available").await?;
            // Attached as soon as its data is in (`app::volume::attach_asked`).
            if let Some(i) = v.attached_to.as_ref().and_then(|i| instance_here(&created, &d, i)) {
                vstore::set_attach_to(&mut tx, id.as_str(), &i).await?;
            }
            ids.insert(v.id.clone(), id.to_string());
            work.push(Work::Volume(id));
        }
    }
    if !maps.skip_floating_ips && !m.model.floating_ips.is_empty() {
        let ext = ctx.config.external.as_ref().ok_or_else(|| ApiError::internal("decided without external"))?;
        let (start, end, _) = ext.pool().map_err(ApiError::internal)?;
        let (mut used, mut held) = crate::datastore::floating_ip::used_ips(tx.conn().await?).await?;
        for f in m.model.floating_ips.iter().filter(|f| !d.kept.contains_key(&f.id)) {
            let room = crate::app::floating_ip::room(ext, start, end, held);
            let ip = crate::app::floating_ip::pick(start, end, &used, None, Some(room))?;
            used.insert(ip.to_string());
            held += 1;
            let id = FloatingIpId::generate();
            let kept = |i: &String| Some((d.kept.get(i)?.as_str(), d.first_vifs.get(i)?.as_str()));
            let on = f.instance.as_ref().and_then(|i| match created.get(i) {
                Some((i, v)) => Some((i.as_str(), v.as_deref()?)),
                None => kept(i),
            });
            store::insert_floating_ip(&mut tx, id.as_str(), account, &ip.to_string(), on).await?;
            ids.insert(f.id.clone(), id.to_string());
        }
    }
    if !maps.skip_floating_ips {
        work.extend(move_fips(&mut tx, &d, &created).await?);
    }
    // Images deleted at the source (kept there for their instances): hidden here too, once
    // what boots them is made; the collector removes one nothing here uses.
    for i in m.model.images.iter().filter(|i| i.deleted) {
        let ours = matches!(d.images.get(&i.id), Some(ImageChoice::New | ImageChoice::Kept(_)));
        if let (true, Some((id, _))) = (ours, images.get(&i.id)) {
            if !db::image::is_deleted(&mut tx, id.as_str()).await? {
                db::image::mark_deleted(&mut tx, id).await?;
            }
        }
    }
    // An update: the import keeps its ID and creation, with the new hash and map.
    if let Some(p) = &e.prior {
        let mut all = d.carry.clone();
        all.extend(ids);
        let import = BundleImport {
            manifest_hash: r.hash.clone(),
            id_map: all,
            updated_at: Some(db::parse_time(&now)),
            ..p.import.clone()
        };
        store::update_import(&mut tx, &import, &m.source.exported_at).await?;
        tx.commit().await?;
        ctx.events.wake();
        return Ok(Applied::Created(import, work, after_commit(&d), Moves { detaching, attach: attaches(&d) }));
    }
    let import = BundleImport {
        id: BundleImportId::generate(),
        source_site: m.source.site_key.clone(),
        source_vdc: m.source.vdc_id.clone(),
        manifest_hash: r.hash.clone(),
        id_map: ids,
        created_at: db::parse_time(&now),
        updated_at: None,
    };
    // The unique (account, source, manifest) key is the last guard against a twin import.
    store::insert_import(&mut tx, account, &import, &m.source.exported_at).await?;
    tx.commit().await?;
    ctx.events.wake();
    Ok(Applied::Created(import, work, after_commit(&d), Moves { detaching, attach: attaches(&d) }))
}

/// Moves the kept floating IPs the bundle has elsewhere ([`Decision::fip_moves`]): all
/// off their interfaces first (two may swap), then onto theirs; the interfaces they leave
/// and join are re-sent, so their hosts change the mappings.
async fn move_fips(
    tx: &mut db::Tx<'_>,
    d: &Decision,
    created: &HashMap<String, (InstanceId, Option<String>)>,
) -> ApiResult<Vec<Work>> {
    use crate::datastore::{floating_ip as fstore, interface as ifstore};
    let mut resend = vec![];
    for (fip, _) in &d.fip_moves {
        let id: FloatingIpId = fip.parse().map_err(ApiError::internal)?;
        db::lock(tx, db::Lock::FloatingIp, fip).await?;
        let Some(row) = fstore::get(tx.conn().await?, &id).await? else {
            return Err(ApiError::Busy(format!("floating IP {fip} changed concurrently")));
        };
        fstore::disassociate(tx, &id).await?;
        resend.extend(row.vif_id);
    }
    for (fip, to) in &d.fip_moves {
        let Some(i) = to else { continue };
        let on = match created.get(i) {
            Some((inst, vif)) => vif.as_ref().map(|v| (inst.to_string(), v.clone())),
            None => d.kept.get(i).zip(d.first_vifs.get(i)).map(|(a, b)| (a.clone(), b.clone())),
        };
        let Some((inst, vif)) = on else { continue };
        if fstore::of_interface(tx.conn().await?, &vif).await?.is_some() {
            return Err(ApiError::Busy(format!("interface {vif} took a floating IP concurrently")));
        }
        fstore::associate(tx, &fip.parse().map_err(ApiError::internal)?, &inst, &vif).await?;
        resend.push(vif);
    }
    let mut work = vec![];
    for v in resend {
        ifstore::bump(tx.conn().await?, &v).await?;
        work.extend(v.parse().ok().map(Work::Interface));
    }
    Ok(work)
}

/// The ID here of instance `id` of the bundle: made by this import, or kept.
fn instance_here(created: &HashMap<String, (InstanceId, Option<String>)>, d: &Decision, id: &str) -> Option<String> {
    created.get(id).map(|c| c.0.to_string()).or_else(|| d.kept.get(id).cloned())
}

/// Kept volumes the update attaches elsewhere.
fn attaches(d: &Decision) -> Vec<String> {
    d.volume_moves.iter().filter(|m| m.2.is_some()).map(|m| m.0.clone()).collect()
}

/// The prunes that are API actions of their own: terminate, release, delete.
fn after_commit(d: &Decision) -> Vec<(String, String)> {
    let power = d.power.iter().map(|(id, stop)| (if *stop { STOP } else { START }.to_owned(), id.clone()));
    d.removes
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "instance" | "floating_ip" | "volume" | "image"))
        .cloned()
        .chain(power)
        .collect()
}

/// What [`after_commit`] asks of a kept instance that the bundle has stopped or running.
const STOP: &str = "instance:stop";
const START: &str = "instance:start";

/// A private image of the import holding `blob`: a volume's raw data unless changed.
fn data_image(name: &str, blob: &vdc_bundle::BlobRef, hash: &str, now: &str, sizes: &VirtualSizes) -> Image {
    Image {
        id: ImageId::generate(),
        name: name.to_owned(),
        format: vdc_schema::ImageFormat::Raw,
        arch: vdc_schema::Arch::X86_64,
        hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu],
        source: format!("bundle:{hash}"),
        checksum: Some(format!("sha256:{}", blob.sha256)),
        state: ImageState::Available,
        failure_reason: None,
        size_bytes: Some(blob.size),
        virtual_size: sizes.get(&blob.sha256).copied(),
        // Written with the importing account (`db::image::insert`); read back to be shown.
        owner: None,
        member_status: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: Default::default(),
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        public: false,
        created_at: db::parse_time(now),
        default_user: None,
    }
}

pub async fn list(ctx: &SharedCtx, caller: &Caller) -> ApiResult<Vec<BundleImport>> {
    store::list_imports(&ctx.db, &caller.account_id).await
}

pub async fn show(ctx: &SharedCtx, caller: &Caller, id: &str) -> ApiResult<BundleImport> {
    store::get_import(&ctx.db, &caller.account_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("bundle import", id.chars().take(64).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let key = vdc_bundle::generate_key();
        Manifest {
            format_version: 1,
            source: vdc_bundle::Source {
                site_key: vdc_bundle::key_hex(&key.verifying_key()),
                vdc_id: "a-1".into(),
                exported_at: "t".into(),
            },
            model: vdc_bundle::Model {
                networks: vec![vdc_bundle::Network {
                    id: "nw-1".into(),
                    name: "front".into(),
                    cidr: "10.0.0.0/24".into(),
                    gateway: "10.0.0.1".into(),
                    dhcp_start: "10.0.0.10".into(),
                    dhcp_end: "10.0.0.99".into(),
                }],
                images: vec![vdc_bundle::Image {
                    id: "img-1".into(),
                    name: "tiny".into(),
                    format: vdc_schema::ImageFormat::Kernel,
                    arch: vdc_schema::Arch::X86_64,
                    hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu],
                    boot_mode: Default::default(),
                    kernel_id: None,
                    min_disk: None,
                    min_memory: None,
                    os: None,
                    default_user: None,
                    blob: None,
                    deleted: false,
                }],
                instances: vec![vdc_bundle::Instance {
                    id: "i-1".into(),
                    name: "web".into(),
                    hostname: "web".into(),
                    image: "img-1".into(),
                    hypervisor: HypervisorKind::Kvm,
                    cpus: 1,
                    memory_mib: 64,
                    root_disk_size: None,
                    keypair: None,
                    user_data: None,
                    interfaces: vec![vdc_bundle::Interface {
                        network: "nw-1".into(),
                        ip: "10.0.0.20".into(),
                        mac: "52:54:00:00:00:01".into(),
                        security_groups: vec![],
                    }],
                    root_disk: None,
                    root_disk_format: None,
                    stopped: false,
                    zone: None,
                    host_labels: Default::default(),
                    server_group: None,
                }],
                ..Default::default()
            },
            chunks: vec![],
        }
    }

    fn existing() -> store::Existing {
        store::Existing {
            names: vec![("instance".into(), "web".into())],
            cidrs: vec![("nw-x".into(), "10.0.0.0/16".into())],
            usable_images: vec![("img-pub".into(), "tiny".into(), ",qemu,kvm,".into(), 0)],
            hosts: vec![host(&["lxc", "qemu"])],
            external: false,
            external_cidr: None,
            prior: None,
        }
    }

    /// An online host with room to spare, running `hypervisors`.
    fn host(hypervisors: &[&str]) -> store::HostHere {
        store::HostHere {
            id: "hn-1".into(),
            hypervisors: hypervisors.iter().map(|h| h.to_string()).collect(),
            zone: String::new(),
            labels: ",".into(),
            online: true,
            cpus_free: 64,
            memory_free_mib: 1 << 20,
            disk_free_mib: None,
        }
    }

    fn codes(d: &Decision) -> Vec<(String, Option<String>)> {
        d.conflicts.iter().map(|c| (c.code.clone(), c.resolve.clone())).collect()
    }

    #[test]
    fn collisions_are_named_with_the_map_that_resolves_them() {
        let d = decide(&manifest(), &existing(), &Maps::default());
        assert_eq!(
            codes(&d),
            vec![
                ("cidr_overlap".into(), Some("network.front.cidr=OTHER/24".into())),
                ("hypervisor_missing".into(), Some("hypervisor.kvm=qemu".into())),
                ("name_taken".into(), Some("instance.web.name=NEW-NAME".into())),
            ]
        );
        // The image without data resolves to the site's public one of that name.
        assert_eq!(d.images["img-1"], ImageChoice::Existing("img-pub".into()));
        // Nor may a network overlap the site's external network.
        let e = store::Existing { cidrs: vec![], external_cidr: Some("10.0.0.0/16".parse().unwrap()), ..existing() };
        let d = decide(&manifest(), &e, &Maps::default());
        let c = d.conflicts.iter().find(|c| c.code == "cidr_overlap").expect("the external network");
        assert!(c.message.contains("overlaps this site's external network 10.0.0.0/16"), "{}", c.message);
    }

    /// `hypervisor.kvm=lxc` made lxc instances of disk images (which then failed to start)
    /// and gave the images lxc: a mapped hypervisor that does not boot the format is not
    /// the image's, and the instance's plan says its image does not run there.
    #[test]
    fn a_hypervisor_map_keeps_what_boots_the_image() {
        let mut m = manifest();
        m.model.images[0].format = vdc_schema::ImageFormat::Qcow2;
        m.model.images[0].blob = Some(vdc_bundle::BlobRef { sha256: "ab".repeat(32), size: 1 << 20, chunks: vec![] });
        let d = decide(&m, &existing(), &parse_maps(&["hypervisor.kvm=lxc".into()]));
        assert_eq!(d.image_hypervisors["img-1"], [HypervisorKind::Qemu]);
        let said: Vec<&str> =
            d.conflicts.iter().filter(|c| c.code == "hypervisor_missing").map(|c| c.message.as_str()).collect();
        assert_eq!(said, ["instance web: its image does not run on lxc here"]);
        let d = decide(&m, &existing(), &parse_maps(&["hypervisor.kvm=qemu".into()]));
        assert!(!d.conflicts.iter().any(|c| c.code == "hypervisor_missing"), "{:?}", d.conflicts);
    }

    /// A kernel or directory image carried with its data is never made (it would fail
    /// every boot, and a tenant cannot make one): the plan asks for this site's instead.
    #[test]
    fn a_kernel_or_a_directory_with_data_is_not_made_here() {
        for (format, said) in [(ImageFormat::Kernel, "is a kernel image"), (ImageFormat::Dir, "is a dir image")] {
            let mut m = manifest();
            m.model.images[0].format = format;
            m.model.images[0].blob =
                Some(vdc_bundle::BlobRef { sha256: "ab".repeat(32), size: 1 << 20, chunks: vec![] });
            let d = decide(&m, &existing(), &parse_maps(&["hypervisor.kvm=qemu".into()]));
            let c = d.conflicts.iter().find(|c| c.code == "image_missing").expect("a conflict");
            assert!(c.message.contains(said), "{}", c.message);
            assert!(!matches!(d.images.get("img-1"), Some(ImageChoice::New)));
        }
    }

    /// A map may not give a network what the API refuses it (127.0.0.0/24 was made with
    /// `--map network.X.cidr=`), nor name what the bundle does not have.
    #[test]
    fn a_map_gives_nothing_the_api_refuses_and_names_what_the_bundle_has() {
        let messages = |pairs: &[&str]| -> Vec<String> {
            let maps = parse_maps(&pairs.iter().map(|p| p.to_string()).collect::<Vec<_>>());
            let d = decide(&manifest(), &store::Existing { cidrs: vec![], ..existing() }, &maps);
            d.conflicts.into_iter().filter(|c| c.code == "invalid_map").map(|c| c.message).collect()
        };
        for (to, range) in [
            ("127.0.0.0/24", "127.0.0.0/8, the loopback range"),
            ("169.254.0.0/24", "169.254.0.0/16, the link-local range of the metadata service"),
            ("224.0.0.0/24", "224.0.0.0/4, the multicast range"),
            ("0.0.0.0/24", "0.0.0.0/8"),
        ] {
            let said = messages(&[&format!("network.front.cidr={to}")]);
            assert_eq!(said.len(), 1, "{to}: {said:?}");
            assert!(said[0].starts_with(&format!("network front: cidr {to} overlaps {range}")), "{said:?}");
        }
        assert!(messages(&["network.front.cidr=10.9.0.0/24"]).is_empty());
        let renamed = messages(&["instance.web.name=../..", "network.front.name=a/b"]);
        assert_eq!(renamed.len(), 2, "{renamed:?}");
        assert!(renamed[0].starts_with("--map \"instance.web.name=../..\": instance name \"../..\" is invalid"));
        assert!(renamed[1].starts_with("--map \"network.front.name=a/b\": network name \"a/b\" is invalid"));
        assert_eq!(
            messages(&["network.nope.cidr=10.9.0.0/24", "instance.nobody.name=x", "instance.web.name=web2"]),
            [
                "--map instance.nobody.name: the bundle has no instance of that name",
                "--map network.nope.cidr: the bundle has no network of that name",
            ]
        );
    }

    #[test]
    fn what_the_api_refuses_a_bundle_may_not_bring() {
        use vdc_schema::{Direction, Protocol};
        let rule = |protocol, port_min, port_max, cidr: &str| vdc_bundle::Rule {
            direction: Direction::Ingress,
            protocol,
            port_min,
            port_max,
            cidr: Some(cidr.into()),
            group: None,
        };
        let mut m = manifest();
        m.model.security_groups.push(vdc_bundle::SecurityGroup {
            id: "sg-1".into(),
            name: "web".into(),
            description: String::new(),
            rules: vec![
                rule(Protocol::Tcp, Some(22), Some(22), "0.0.0.0/0"), // fine
                rule(Protocol::Tcp, Some(0), Some(0), "0.0.0.0/0"),
                rule(Protocol::Udp, Some(90), Some(80), "0.0.0.0/0"),
                rule(Protocol::Tcp, Some(22), None, "0.0.0.0/0"),
                rule(Protocol::Tcp, Some(22), Some(22), "10.1.2.3/8"),
                rule(Protocol::Any, Some(1), None, "0.0.0.0/0"),
            ],
        });
        m.model.instances[0].cpus = 0;
        let mut twin = m.model.instances[0].clone();
        twin.id = "i-2".into();
        twin.name = "twin".into();
        twin.memory_mib = 16;
        twin.cpus = 1;
        m.model.instances.push(twin); // the same address
        for (n, ip) in [("gw", "10.0.0.1"), ("bcast", "10.0.0.255"), ("net", "10.0.0.0")] {
            let mut x = m.model.instances[0].clone();
            x.id = format!("i-{n}");
            x.name = n.into();
            x.cpus = 1;
            x.interfaces[0].ip = ip.into();
            m.model.instances.push(x);
        }
        m.model.volumes.push(vdc_bundle::Volume {
            id: "vol-1".into(),
            name: "empty".into(),
            size_mib: 0,
            data: None,
            data_format: None,
            attached_to: None,
        });
        let mut e = existing();
        e.names.clear();
        e.cidrs.clear();
        e.hosts[0].hypervisors.push("kvm".into());
        let d = decide(&m, &e, &Maps::default());
        let got: Vec<String> = d.conflicts.iter().map(|c| format!("{}: {}", c.code, c.message)).collect();
        let want = [
            "invalid_rule: security group web: rule ingress tcp 0-0 from 0.0.0.0/0: port range 0-0 is invalid",
            "invalid_rule: security group web: rule ingress udp 90-80 from 0.0.0.0/0: port range 90-80 is invalid",
            "invalid_rule: security group web: rule ingress tcp 22 from 0.0.0.0/0 is not written as exported: \
             ingress tcp 22-22 from 0.0.0.0/0",
            "invalid_rule: security group web: rule ingress tcp 22-22 from 10.1.2.3/8 is not written as exported: \
             ingress tcp 22-22 from 10.0.0.0/8",
            "invalid_rule: security group web: rule ingress any 1 from 0.0.0.0/0: protocol any takes no ports",
            "invalid_cpus: instance web: cpus must be between 1 and 128, got 0",
            "invalid_memory: instance twin: memory_mib must be between 32 and 4194304, got 16",
            "invalid_address: instance twin: address \"10.0.0.20\" is given twice on network front",
            "invalid_address: instance gw: address \"10.0.0.1\" is the gateway of network front",
            "invalid_address: instance bcast: address \"10.0.0.255\" is not a host address of network front",
            "invalid_address: instance net: address \"10.0.0.0\" is not a host address of network front",
            "invalid_size: volume empty: size_mib must be between 1 and 16777216, not 0",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g}\n  should start with\n{w}");
        }
    }

    #[test]
    fn maps_remap_cidrs_keeping_host_parts_and_resolve_everything() {
        let maps = parse_maps(&[
            "network.front.cidr=10.9.0.0/24".into(),
            "hypervisor.kvm=qemu".into(),
            "instance.web.name=web-b".into(),
        ]);
        let d = decide(&manifest(), &existing(), &maps);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        let n = &d.networks[0];
        assert_eq!((n.cidr.to_string(), n.gateway.to_string()), ("10.9.0.0/24".into(), "10.9.0.1".into()));
        assert_eq!(n.translate("10.0.0.20".parse().unwrap()).to_string(), "10.9.0.20");
        assert_eq!(d.hypervisors["i-1"], HypervisorKind::Qemu);
        assert_eq!(d.names[&("instance".to_owned(), "i-1".to_owned())], "web-b");
    }

    #[test]
    fn hard_group_policies_the_hosts_cannot_meet_are_conflicts_a_map_softens() {
        let maps = parse_maps(&[
            "network.front.cidr=10.9.0.0/24".into(),
            "hypervisor.kvm=qemu".into(),
            "instance.web.name=w".into(),
        ]);
        let mut m = manifest();
        m.model.server_groups.push(vdc_bundle::ServerGroup {
            id: "srvg-1".into(),
            name: "ha".into(),
            policy: ServerGroupPolicy::AntiAffinity,
        });
        let mut db = m.model.instances[0].clone();
        (db.id, db.name, db.interfaces) = ("i-2".into(), "db".into(), vec![]);
        m.model.instances.push(db);
        for i in &mut m.model.instances {
            i.server_group = Some("srvg-1".into());
        }
        // One host: two running members of an anti-affinity group cannot both be placed.
        let d = decide(&m, &existing(), &maps);
        assert_eq!(
            codes(&d),
            vec![("server_group_unsatisfiable".into(), Some("server_group.ha.policy=soft-anti-affinity".into()))]
        );
        assert!(d.creates.iter().any(|c| c.kind == "server_group" && c.name == "ha"), "{:?}", d.creates);
        // A second host that runs them, a stopped member, or the soft policy: no conflict.
        let mut two = existing();
        two.hosts.push(host(&["qemu"]));
        assert!(decide(&m, &two, &maps).conflicts.is_empty());
        let mut stopped = m.clone();
        stopped.model.instances[1].stopped = true;
        assert!(decide(&stopped, &existing(), &maps).conflicts.is_empty());
        let mut soft = maps.clone();
        soft.policy.insert("ha".into(), ServerGroupPolicy::SoftAntiAffinity);
        let d = decide(&m, &existing(), &soft);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        assert_eq!(d.group_policies["srvg-1"], ServerGroupPolicy::SoftAntiAffinity);
        // Affinity: the members' hypervisors must be on one host.
        m.model.server_groups[0].policy = ServerGroupPolicy::Affinity;
        m.model.instances[1].hypervisor = HypervisorKind::Lxc;
        let mut split = existing();
        split.hosts = vec![host(&["qemu"]), host(&["lxc"])];
        let unsat = |e: &store::Existing| {
            decide(&m, e, &maps).conflicts.iter().filter(|c| c.code == "server_group_unsatisfiable").count()
        };
        assert_eq!(unsat(&split), 1);
        assert_eq!(unsat(&existing()), 0, "one host runs both");
        // Affinity needs room for all members on the one host (each asks 1 vCPU).
        let mut one = existing();
        one.hosts[0].cpus_free = 1;
        assert_eq!(unsat(&one), 1, "room for one member only");
        one.hosts[0].cpus_free = 2;
        assert_eq!(unsat(&one), 0);
        assert!(parse_maps(&["server_group.ha.policy=sometimes".into()]).invalid.len() == 1);
        // Anti-affinity counts the online hosts with room: a full or an offline second
        // host does not count.
        m.model.server_groups[0].policy = ServerGroupPolicy::AntiAffinity;
        m.model.instances[1].hypervisor = HypervisorKind::Kvm;
        let unsat = |e: &store::Existing| {
            decide(&m, e, &maps).conflicts.iter().filter(|c| c.code == "server_group_unsatisfiable").count()
        };
        let two = || {
            let mut e = existing();
            e.hosts.push(host(&["qemu"]));
            e
        };
        assert_eq!(unsat(&two()), 0);
        let mut full = two();
        full.hosts[1].memory_free_mib = 63;
        assert_eq!(unsat(&full), 1, "the second host has 63 MiB, a member asks 64");
        let mut offline = two();
        offline.hosts[1].online = false;
        assert_eq!(unsat(&offline), 1);
    }

    #[test]
    fn instances_the_hosts_have_no_room_for_are_conflicts() {
        let maps = parse_maps(&[
            "network.front.cidr=10.9.0.0/24".into(),
            "hypervisor.kvm=qemu".into(),
            "instance.web.name=w".into(),
        ]);
        let room = |m: &Manifest, e: &store::Existing| -> Vec<String> {
            decide(m, e, &maps).conflicts.into_iter().filter(|c| c.code == "no_capacity").map(|c| c.message).collect()
        };
        let m = manifest();
        assert!(room(&m, &existing()).is_empty());
        // The one qemu host has 32 MiB free; web asks 64.
        let mut small = existing();
        small.hosts[0].memory_free_mib = 32;
        let found = room(&m, &small);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("instance web needs 1 vCPUs and 64 MiB on a qemu host: none has"), "{found:?}");
        assert!(!found.iter().any(|f| f.contains("32")), "what the hosts have free is not told: {found:?}");
        assert!(found[1].contains("need 1 vCPUs and 64 MiB in all"), "{found:?}");
        let mut down = existing();
        down.hosts[0].online = false;
        assert!(room(&m, &down)[0].contains("no such host is online"), "{:?}", room(&m, &down));
        // Stopped, it needs no room.
        let mut stopped = m.clone();
        stopped.model.instances[0].stopped = true;
        assert!(room(&stopped, &small).is_empty());
        // Two instances that each fit, but not both: the total says so.
        let mut two = m.clone();
        let mut db = two.model.instances[0].clone();
        (db.id, db.name, db.interfaces) = ("i-2".into(), "db".into(), vec![]);
        two.model.instances.push(db);
        let mut tight = existing();
        tight.hosts[0].cpus_free = 1;
        let found = room(&two, &tight);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("need 2 vCPUs and 128 MiB in all, more than the online, uncordoned qemu hosts here have"),
            "{found:?}"
        );
        tight.hosts.push(host(&["qemu"]));
        tight.hosts[1].cpus_free = 1;
        assert!(room(&two, &tight).is_empty(), "one each");
        // No host of its kind: the hypervisor's conflict, not one of room.
        let mut lxc_only = existing();
        lxc_only.hosts = vec![host(&["lxc"])];
        assert!(room(&m, &lxc_only).is_empty());
        // Its root disk: a host that reports 1 GiB free has no room for 4 GiB (before,
        // the plan said nothing and the import failed; red team, 2026-12-07); one that
        // reports no disk books none.
        let mut disk = m.clone();
        disk.model.instances[0].root_disk_size = Some(4 << 30);
        let mut full = existing();
        full.hosts[0].disk_free_mib = Some(1024);
        let found = room(&disk, &full);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("needs 1 vCPUs, 64 MiB and 4096 MiB of root disk on a qemu host"), "{found:?}");
        assert!(found[1].contains("need 1 vCPUs, 64 MiB and 4096 MiB of root disk in all"), "{found:?}");
        full.hosts[0].disk_free_mib = Some(4096);
        assert!(room(&disk, &full).is_empty());
        full.hosts[0].disk_free_mib = None;
        assert!(room(&disk, &full).is_empty());
    }

    #[test]
    fn host_classes_are_asked_only_when_the_instance_has_some() {
        let maps = parse_maps(&[
            "network.front.cidr=10.9.0.0/24".into(),
            "hypervisor.kvm=qemu".into(),
            "instance.web.name=w".into(),
        ]);
        let classes = |d: &Decision| d.conflicts.iter().filter(|c| c.code == "host_class_missing").count();
        // No host at all: the hypervisor's conflict says so, not a host class one.
        let mut e = existing();
        e.hosts.clear();
        assert_eq!(classes(&decide(&manifest(), &e, &maps)), 0);
        let mut m = manifest();
        m.model.instances[0].zone = Some("z1".into());
        let d = decide(&m, &existing(), &maps);
        assert_eq!(codes(&d), vec![("host_class_missing".into(), Some("zone.z1=ZONE or zone.z1=any".into()))]);
        let mut any = maps.clone();
        any.zone.insert("z1".into(), None);
        let d = decide(&m, &existing(), &any);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        assert_eq!(d.host_classes["i-1"], (String::new(), BTreeMap::new()));
    }

    #[test]
    fn floating_ips_need_an_external_network_or_a_skip() {
        let mut m = manifest();
        m.model.floating_ips.push(vdc_bundle::FloatingIp { id: "fip-1".into(), instance: Some("i-1".into()) });
        let maps = parse_maps(&[
            "network.front.cidr=10.9.0.0/24".into(),
            "hypervisor.kvm=qemu".into(),
            "instance.web.name=w".into(),
        ]);
        let d = decide(&m, &existing(), &maps);
        assert_eq!(codes(&d), vec![("no_external_network".into(), Some("floating_ips=skip".into()))]);
        let mut skip = maps.clone();
        skip.skip_floating_ips = true;
        assert!(decide(&m, &existing(), &skip).conflicts.is_empty());
        let mut e = existing();
        e.external = true;
        let d = decide(&m, &e, &maps);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        assert!(d.creates.iter().any(|c| c.kind == "floating_ip" && c.name == "web"));
    }

    /// An earlier import that remapped `front` to 10.9.0.0/24 (DHCP range changed by hand
    /// since), put `web` in a group `old` the bundle no longer has.
    fn prior() -> store::Prior {
        let s = |v: &str| v.to_owned();
        store::Prior {
            import: BundleImport {
                id: BundleImportId::generate(),
                source_site: s("site"),
                source_vdc: s("a-1"),
                manifest_hash: s("h1"),
                id_map: [("nw-1", "nw-T"), ("i-1", "i-T"), ("sg-old", "sg-T")]
                    .into_iter()
                    .map(|(a, b)| (s(a), s(b)))
                    .collect(),
                created_at: chrono::Utc::now(),
                updated_at: None,
            },
            exported_at: None,
            target: store::Snapshot {
                networks: vec![(
                    s("nw-T"),
                    s("front"),
                    s("10.9.0.0/24"),
                    s("10.9.0.1"),
                    s("10.9.0.10"),
                    s("10.9.0.50"),
                )],
                groups: vec![(s("sg-T"), s("old"), String::new())],
                rules: vec![],
                keypairs: vec![],
                images: vec![],
                instances: vec![(
                    s("i-T"),
                    s("web"),
                    s("img-pub"),
                    s("qemu"),
                    1,
                    64,
                    None,
                    None,
                    None,
                    s("running"),
                    s(""),
                    s(","),
                    None,
                )],
                vifs: vec![(s("vif-T"), s("i-T"), s("nw-T"), s("10.9.0.20"), s("52:54:00:00:00:01"))],
                vif_groups: vec![(s("vif-T"), s("sg-T"))],
                volumes: vec![],
                floating_ips: vec![],
                server_groups: vec![],
                ending: vec![],
                ending_instances: vec![],
                ending_vifs: vec![],
                bookings: vec![],
            },
        }
    }

    #[test]
    fn a_prune_terminates_what_is_gone_and_deletes_what_it_held_once_it_is_gone() {
        let mut e = existing();
        e.prior = Some(prior());
        let mut m = manifest();
        m.model.instances.clear();
        m.model.networks.clear();
        let kinds = |d: &Decision| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = d.deletes.iter().map(|c| (c.kind.clone(), c.detail.clone())).collect();
            v.sort();
            v
        };
        let without = decide(&m, &e, &Maps::default());
        assert!(without.removes.is_empty() && without.conflicts.is_empty(), "{:?}", without.conflicts);
        assert!(without.deletes.iter().all(|c| c.detail == "only with --prune"), "{:?}", without.deletes);
        let prune = Maps { prune: true, ..Default::default() };
        // The instance is terminated; its network and group wait for it to be gone.
        let d = decide(&m, &e, &prune);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        assert_eq!(d.removes, vec![("instance".to_owned(), "i-T".to_owned())]);
        let waits = "waits: in use by instance(s) web being terminated: an import with --prune deletes it once they \
                     are gone";
        let waits_group = waits.replace("in use by", "in use by the interfaces of");
        assert_eq!(
            kinds(&d),
            vec![
                ("instance".into(), "terminated (--prune)".into()),
                ("network".into(), waits.to_owned()),
                ("security_group".into(), waits_group.clone()),
            ]
        );
        // Terminated after the import commits: it stays in the map until it is gone.
        assert!(["i-1", "nw-1", "sg-old"].iter().all(|k| d.carry.contains_key(*k)), "{:?}", d.carry);
        assert_eq!(after_commit(&d), d.removes);

        // Being terminated: no longer live, but still holding the network and the group.
        let mut p = prior();
        p.target.instances.clear();
        p.target.vifs.clear();
        p.target.vif_groups.clear();
        p.target.ending = vec![("nw-T".into(), "web".into()), ("sg-T".into(), "web".into())];
        e.prior = Some(p);
        let d = decide(&m, &e, &prune);
        assert!(d.removes.is_empty(), "{:?}", d.removes);
        assert_eq!(kinds(&d), vec![("network".into(), waits.to_owned()), ("security_group".into(), waits_group)]);

        // Gone: the network and the group are deleted.
        e.prior.as_mut().unwrap().target.ending.clear();
        let d = decide(&m, &e, &prune);
        let mut removes = d.removes.clone();
        removes.sort();
        assert_eq!(
            removes,
            vec![("network".to_owned(), "nw-T".to_owned()), ("security_group".to_owned(), "sg-T".to_owned())]
        );
        assert!(!d.carry.contains_key("nw-1") && !d.carry.contains_key("sg-old"), "{:?}", d.carry);
    }

    #[test]
    fn an_update_keeps_server_groups_and_their_members_and_prunes_a_group_only_without_them() {
        let mut p = prior();
        p.import.id_map.insert("srvg-1".into(), "srvg-T".into());
        p.target.server_groups.push(("srvg-T".into(), "ha".into(), "anti-affinity".into()));
        p.target.instances[0].12 = Some("srvg-T".into());
        let mut e = existing();
        e.prior = Some(p);
        let maps = parse_maps(&["hypervisor.kvm=qemu".into()]);
        let mut m = manifest();
        m.model.server_groups.push(vdc_bundle::ServerGroup {
            id: "srvg-1".into(),
            name: "ha".into(),
            policy: ServerGroupPolicy::AntiAffinity,
        });
        m.model.instances[0].server_group = Some("srvg-1".into());
        let d = decide(&m, &e, &maps);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        assert_eq!(d.kept["srvg-1"], "srvg-T");
        assert!(d.unchanged.iter().any(|c| c.kind == "server_group"), "{:?}", d.unchanged);
        assert!(d.carry.contains_key("srvg-1"));
        // Its policy does not change in place; mapping it to the policy here resolves that.
        let mut other = m.clone();
        other.model.server_groups[0].policy = ServerGroupPolicy::Affinity;
        assert_eq!(
            codes(&decide(&other, &e, &maps)),
            vec![("replace_needed".into(), Some("server_group.ha.policy=anti-affinity".into()))]
        );
        let mut keep = maps.clone();
        keep.policy.insert("ha".into(), ServerGroupPolicy::AntiAffinity);
        assert!(decide(&other, &e, &keep).conflicts.is_empty());
        // Nor does an instance's group; and the group's member stays, so a prune refuses it.
        let mut gone = manifest();
        gone.model.instances[0].server_group = None;
        let mut prune = maps.clone();
        prune.prune = true;
        let found: Vec<String> = decide(&gone, &e, &prune).conflicts.iter().map(|c| c.message.clone()).collect();
        assert!(found.iter().any(|c| c.contains("server group change only by replacing it")), "{found:?}");
        assert!(
            found.iter().any(|c| c.contains("server_group ha (srvg-T) is gone from the bundle but has member")),
            "{found:?}"
        );
        // With the member gone from the bundle too, the prune terminates it, and the group
        // goes by the next prune, once the member is gone (as networks and groups wait).
        gone.model.instances.clear();
        let d = decide(&gone, &e, &prune);
        let waits = d.deletes.iter().find(|c| c.kind == "server_group").map(|c| c.detail.clone()).unwrap();
        assert!(waits.starts_with("waits: has member instance(s) web being terminated"), "{waits}");
        if let Some(p) = e.prior.as_mut() {
            p.target.instances.clear();
            p.target.vifs.clear();
        }
        let d = decide(&gone, &e, &prune);
        assert!(d.removes.contains(&("server_group".to_owned(), "srvg-T".to_owned())), "{:?}", d.removes);
    }

    #[test]
    fn an_update_keeps_remaps_changes_in_place_and_prunes_only_when_asked() {
        let mut e = existing();
        e.prior = Some(prior());
        let maps = parse_maps(&["hypervisor.kvm=qemu".into()]);
        let d = decide(&manifest(), &e, &maps);
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        assert!(d.creates.is_empty(), "{:?}", d.creates);
        let updates: Vec<(&str, &str)> = d.updates.iter().map(|u| (u.kind.as_str(), u.detail.as_str())).collect();
        // The bundle's range, in the CIDR the first import remapped it to.
        assert_eq!(
            updates,
            vec![
                ("network", "dhcp range 10.9.0.10-10.9.0.50 → 10.9.0.10-10.9.0.99"),
                ("instance", "interface 0 groups")
            ]
        );
        assert_eq!(d.nic_updates, vec![("vif-T".to_owned(), vec![])]);
        // `old` is used by nothing once web's interface leaves it: deleted, with prune only.
        assert_eq!(d.deletes[0].detail, "only with --prune");
        assert!(d.removes.is_empty());
        let mut prune = maps.clone();
        prune.prune = true;
        let d = decide(&manifest(), &e, &prune);
        assert_eq!(d.removes, vec![("security_group".to_owned(), "sg-T".to_owned())]);
        assert!(!d.carry.contains_key("sg-old") && d.carry.contains_key("i-1"));

        // A group that stays in use is refused with the reason.
        let mut m = manifest();
        m.model.security_groups.push(vdc_bundle::SecurityGroup {
            id: "sg-new".into(),
            name: "new".into(),
            description: String::new(),
            rules: vec![],
        });
        m.model.instances[0].interfaces[0].security_groups = vec!["sg-new".into()];
        let mut p = prior();
        p.target.instances.push((
            "i-X".into(),
            "mine".into(),
            "img-pub".into(),
            "qemu".into(),
            1,
            64,
            None,
            None,
            None,
            "running".into(),
            String::new(),
            ",".into(),
            None,
        ));
        p.target.vifs.push((
            "vif-X".into(),
            "i-X".into(),
            "nw-T".into(),
            "10.9.0.30".into(),
            "52:54:00:00:00:02".into(),
        ));
        p.target.vif_groups.push(("vif-X".into(), "sg-T".into()));
        e.prior = Some(p);
        let d = decide(&m, &e, &prune);
        assert_eq!(d.conflicts.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(), vec!["in_use"]);
        assert!(d.conflicts[0].message.contains("mine"), "{:?}", d.conflicts);

        // What only a new instance can take: refused, naming the fields.
        let mut m = manifest();
        m.model.instances[0].cpus = 2;
        m.model.instances[0].user_data = Some("x".into());
        e.prior = Some(prior());
        let d = decide(&m, &e, &maps);
        assert_eq!(d.conflicts.len(), 1);
        assert_eq!(d.conflicts[0].code, "replace_needed");
        assert!(d.conflicts[0].message.contains("cpus 1 → 2, user_data"), "{}", d.conflicts[0].message);
    }

    #[test]
    fn an_older_bundle_than_the_one_imported_is_a_downgrade() {
        let mut e = existing();
        let mut p = prior();
        p.exported_at = Some("2026-11-30T20:00:00.000Z".into());
        e.prior = Some(p);
        let maps = parse_maps(&["hypervisor.kvm=qemu".into()]);
        let mut m = manifest();
        m.source.exported_at = "2026-11-30T19:59:59.999Z".into();
        assert_eq!(decide(&m, &e, &maps).conflicts[0].code, "bundle_downgrade");
        // Asked for (the earlier bundle's time was ahead): applied.
        let allowed = parse_maps(&["hypervisor.kvm=qemu".into(), "downgrade=allow".into()]);
        assert!(decide(&m, &e, &allowed).conflicts.is_empty(), "{:?}", decide(&m, &e, &allowed).conflicts);
        m.source.exported_at = "2026-11-30T20:00:00.001Z".into();
        assert!(decide(&m, &e, &maps).conflicts.is_empty());
    }

    #[test]
    fn bad_maps_are_conflicts_not_ignored() {
        for bad in [
            "x",
            "network.front.cidr=10.9.0.0/16",
            "network.front.cidr=10.9.0.5/24",
            "hypervisor.kvm=vmware",
            "volumes=keep",
        ] {
            let d = decide(&manifest(), &existing(), &parse_maps(&[bad.into()]));
            assert!(d.conflicts.iter().any(|c| c.code == "invalid_map"), "{bad}: {:?}", d.conflicts);
        }
    }
}
