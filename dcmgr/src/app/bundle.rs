//! VDC bundles (issue 13): export the caller's model (and its images' data) as a signed
//! bundle, plan an import, import it. The format is the `vdc-bundle` crate's.
//!
//! An import verifies the whole stream before anything is created: the reader checks the
//! signature against the trusted keys, the manifest, and every chunk's hash as it arrives;
//! verified chunks are staged (content-addressed, so staging again is harmless). Then the
//! pure [`decide`] turns (manifest, the account's state, the maps) into a plan, and one
//! transaction creates it all, recording the import first: the same bundle again finds
//! the record and changes nothing; a crash before commit leaves nothing but staged
//! chunks, and the same command completes it.

use crate::app::{bundle_data, interface, keypair, quota, scheduler};
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
use vdc_schema::api::{
    BundleConflict, BundleCreate, BundleImport, BundleImported, BundlePlan, Image, Network, QuotaKey, RuleSpec,
};
use vdc_schema::id::*;
use vdc_schema::state::{HypervisorKind, ImageState};

/// The site key: an ed25519 seed in `dir/site-key`, made (mode 0600) on first start.
pub fn load_site_key(dir: &Path) -> std::io::Result<vdc_bundle::SigningKey> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("site-key");
    match std::fs::read(&path) {
        Ok(b) => {
            let seed: [u8; 32] = b
                .try_into()
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "site-key is not 32 bytes"))?;
            Ok(vdc_bundle::SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let key = vdc_bundle::generate_key();
            let tmp = dir.join(".site-key.tmp");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            std::io::Write::write_all(&mut f, &key.to_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

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

// ---------------------------------------------------------------- export

/// The caller's VDC as a manifest, the blobs (local paths) whose chunks follow it, and
/// what the export made to read its data (removed once the bundle is written). Without
/// `model_only`, instances' disks and volumes' data are captured first (see
/// [`bundle_data`](crate::app::bundle_data)); `stop` lets running instances be stopped for it.
pub async fn manifest(
    ctx: &SharedCtx,
    caller: &Caller,
    model_only: bool,
    stop: bool,
) -> ApiResult<(Manifest, Vec<PathBuf>, bundle_data::Temporaries)> {
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
    match build_manifest(ctx, caller, s, model_only, &captured).await {
        Ok((m, paths)) => Ok((m, paths, temp)),
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
    paths: Vec<PathBuf>,
    done: HashMap<String, vdc_bundle::BlobRef>,
}

impl Blobs {
    async fn add(&mut self, ctx: &SharedCtx, sha: &str) -> ApiResult<vdc_bundle::BlobRef> {
        if let Some(b) = self.done.get(sha) {
            return Ok(b.clone());
        }
        let path = ctx.blobs.local_path(sha).ok_or_else(|| ApiError::internal("blob store is not local"))?;
        let p = path.clone();
        let (blob, refs) = tokio::task::spawn_blocking(move || vdc_bundle::chunk_blob(std::fs::File::open(p)?))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("reading blob {sha}: {e}")))?;
        for c in refs {
            if self.seen.insert(c.sha256.clone()) {
                self.chunks.push(c);
            }
        }
        self.paths.push(path);
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
) -> ApiResult<(Manifest, Vec<PathBuf>)> {
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
            keypair: i.6,
            user_data: i.7,
            root_disk_size: i.8.map(|v| v as u64),
            root_disk,
            root_disk_format,
            // Its goal as the tenant left it (an export with `stop` starts it again).
            stopped: i.9 == vdc_schema::InstanceGoal::Stopped.as_str(),
        });
    }
    for v in s.volumes {
        let (data, data_format) = match captured.volumes.get(&v.0) {
            Some((sha, format)) => (Some(blobs.add(ctx, sha).await?), Some(*format)),
            None => (None, None),
        };
        m.volumes.push(vdc_bundle::Volume { id: v.0, name: v.1, size_mib: v.2 as u64, data, data_format });
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
    Ok((manifest, blobs.paths))
}

/// Writes the bundle of `manifest` to `w`: the blobs in `paths` split as when hashed.
pub fn write_bundle<W: std::io::Write>(
    w: W,
    manifest: &Manifest,
    key: &vdc_bundle::SigningKey,
    paths: &[PathBuf],
) -> Result<W, BundleError> {
    let mut writer = vdc_bundle::Writer::new(w, manifest, key)?;
    let mut written = HashSet::new();
    let mut buf = vec![0u8; vdc_bundle::CHUNK_SIZE];
    for p in paths {
        let mut f = std::fs::File::open(p)?;
        loop {
            let n = vdc_bundle::read_full(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            if written.insert(vdc_bundle::sha256_hex(&buf[..n])) {
                writer.write_chunk(&buf[..n])?;
            }
            if n < buf.len() {
                break;
            }
        }
    }
    writer.finish(written.len() as u64)
}

// ---------------------------------------------------------------- receive and verify

/// A bundle read in full and verified.
pub struct Received {
    pub manifest: Manifest,
    pub hash: String,
    pub chunks: u64,
    pub bytes: u64,
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

/// Reads and verifies a whole bundle from `r` (blocking). With `stage`, each verified
/// chunk is kept in `dir` under its hash (written beside and renamed, so a chunk file is
/// whole or absent).
pub fn receive<R: Read>(
    r: R,
    trusted: &[vdc_bundle::VerifyingKey],
    stage: Option<&Path>,
) -> Result<Received, BundleError> {
    let mut reader = vdc_bundle::Reader::open(Counting { r, n: 0 }, trusted, &vdc_bundle::Limits::default())?;
    if let Some(dir) = stage {
        std::fs::create_dir_all(dir)?;
    }
    let mut chunks = 0u64;
    reader.for_each_chunk(|c| {
        chunks += 1;
        if let Some(dir) = stage {
            let path = dir.join(&c.sha256);
            if !path.exists() {
                let tmp = dir.join(format!(".{}.{}.tmp", c.sha256, rand::random::<u32>()));
                std::fs::write(&tmp, &c.data)?;
                std::fs::rename(&tmp, &path)?;
            }
        }
        Ok(())
    })?;
    let bytes = reader.get_ref().n;
    Ok(Received { manifest: reader.manifest().clone(), hash: reader.manifest_hash().to_owned(), chunks, bytes })
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
    skip_volumes: bool,
    skip_floating_ips: bool,
    invalid: Vec<String>,
}

const KINDS: &[&str] = &["network", "security_group", "keypair", "image", "instance", "volume"];

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
            (["hypervisor", from], to) => match (from.parse(), to.parse()) {
                (Ok(f), Ok(t)) => m.hypervisor.insert(f, t).is_none(),
                _ => false,
            },
            ([kind, rest], v) => match rest.rsplit_once('.') {
                Some((name, "cidr")) if *kind == "network" => match v.parse::<Ipv4Net>() {
                    Ok(n) if n.trunc() == n => m.cidr.insert(name.to_owned(), n).is_none(),
                    _ => false,
                },
                Some((name, "name")) if KINDS.contains(kind) && crate::app::validate_name(kind, v).is_ok() => {
                    m.rename.insert((kind.to_string(), name.to_owned()), v.to_owned()).is_none()
                }
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
}

impl PlannedNetwork {
    fn translate(&self, a: Ipv4Addr) -> Ipv4Addr {
        match self.from {
            Some(from) => Ipv4Addr::from(u32::from(self.cidr.network()) + (u32::from(a) - u32::from(from.network()))),
            None => a,
        }
    }
}

/// Where an instance's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageChoice {
    /// Created from the bundle's data.
    New,
    /// An image of this site the account may use.
    Existing(String),
}

/// What an import does: decided by [`decide`], applied by [`import`] in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub creates: Vec<BundleCreate>,
    pub conflicts: Vec<BundleConflict>,
    pub networks: Vec<PlannedNetwork>,
    /// (kind, bundle ID) → name here.
    pub names: HashMap<(String, String), String>,
    pub images: HashMap<String, ImageChoice>,
    /// image bundle ID → its hypervisors here.
    pub image_hypervisors: HashMap<String, Vec<HypervisorKind>>,
    /// instance bundle ID → hypervisor here.
    pub hypervisors: HashMap<String, HypervisorKind>,
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
    let taken: HashSet<(&str, &str)> = e.names.iter().map(|(k, n)| (k.as_str(), n.as_str())).collect();
    let name = |d: &mut Decision, kind: &str, id: &str, n: &str, note: Option<String>| {
        let here = maps.rename.get(&(kind.to_owned(), n.to_owned())).cloned().unwrap_or_else(|| n.to_owned());
        if taken.contains(&(kind, here.as_str())) {
            d.conflicts.push(conflict(
                "name_taken",
                format!("{kind} {here:?} exists in this account already"),
                Some(format!("{kind}.{n}.name=NEW-NAME")),
            ));
        }
        d.creates.push(BundleCreate {
            kind: kind.into(),
            bundle_id: id.into(),
            name: here.clone(),
            note: note.or_else(|| (here != n).then(|| format!("renamed from {n:?}"))),
        });
        d.names.insert((kind.to_owned(), id.to_owned()), here);
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
        let mut p =
            PlannedNetwork { bundle_id: n.id.clone(), name: n.name.clone(), cidr, gateway, start, end, from: None };
        if let Some(to) = maps.cidr.get(&n.name) {
            if to.prefix_len() != cidr.prefix_len() {
                d.conflicts.push(conflict(
                    "invalid_map",
                    format!("network {}: remap {cidr} to a /{} network, not {to}", n.name, cidr.prefix_len()),
                    None,
                ));
                continue;
            }
            p.from = Some(cidr);
            p.cidr = *to;
            p.gateway = p.translate(gateway);
            p.start = p.translate(start);
            p.end = p.translate(end);
        }
        if let Some(o) = existing.iter().chain(d.networks.iter().map(|x| &x.cidr)).find(|o| overlaps(o, &p.cidr)) {
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
        name(&mut d, "security_group", &g.id, &g.name, None);
    }
    for k in &m.model.keypairs {
        if keypair::parse_public_key(&k.public_key).is_err() {
            d.conflicts.push(conflict(
                "invalid_keypair",
                format!("key pair {}: not an OpenSSH public key", k.name),
                None,
            ));
        }
        name(&mut d, "keypair", &k.id, &k.name, None);
    }
    let map_hv = |h: HypervisorKind| maps.hypervisor.get(&h).copied().unwrap_or(h);
    for i in &m.model.images {
        let hvs: Vec<HypervisorKind> = {
            let mut v: Vec<HypervisorKind> = i.hypervisors.iter().map(|h| map_hv(*h)).collect();
            v.dedup();
            v
        };
        d.image_hypervisors.insert(i.id.clone(), hvs);
        if let Some(id) = maps.image.get(&i.name) {
            match e.foreign_images.iter().find(|f| &f.0 == id) {
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
        if i.blob.is_some() {
            d.images.insert(i.id.clone(), ImageChoice::New);
            name(&mut d, "image", &i.id, &i.name, None);
            continue;
        }
        let found: Vec<&(String, String, String)> = e.foreign_images.iter().filter(|f| f.1 == i.name).collect();
        match found.as_slice() {
            [one] => {
                d.images.insert(i.id.clone(), ImageChoice::Existing(one.0.clone()));
            }
            _ => d.conflicts.push(conflict(
                "image_missing",
                format!(
                    "image {:?} travels without its data, and this site has {} images of that name the account may use",
                    i.name,
                    if found.is_empty() { "no" } else { "several" }
                ),
                Some(format!("image.{}=img-…", i.name)),
            )),
        }
    }
    for i in &m.model.instances {
        let hv = map_hv(i.hypervisor);
        if !e.hypervisors.iter().any(|h| h == hv.as_str()) {
            let offer = (hv == HypervisorKind::Kvm && e.hypervisors.iter().any(|h| h == "qemu"))
                .then(|| "hypervisor.kvm=qemu".to_owned());
            d.conflicts.push(conflict(
                "hypervisor_missing",
                format!("instance {}: this site has no {hv} host (it has: {})", i.name, e.hypervisors.join(", ")),
                offer,
            ));
        }
        let image_ok = match d.images.get(&i.image) {
            Some(ImageChoice::New) => d.image_hypervisors.get(&i.image).is_some_and(|v| v.contains(&hv)),
            Some(ImageChoice::Existing(id)) => e
                .foreign_images
                .iter()
                .find(|f| &f.0 == id)
                .is_some_and(|f| db::split_list::<HypervisorKind>(&f.2).contains(&hv)),
            None => true, // already a conflict of its image
        };
        if !image_ok {
            d.conflicts.push(conflict(
                "hypervisor_missing",
                format!("instance {}: its image does not run on {hv} here", i.name),
                None,
            ));
        }
        for nic in &i.interfaces {
            let Some(net) = d.networks.iter().find(|n| n.bundle_id == nic.network) else { continue };
            match nic.ip.parse::<Ipv4Addr>() {
                Ok(a) if net.from.map_or(net.cidr, |f| f).contains(&a) => {}
                _ => d.conflicts.push(conflict(
                    "invalid_address",
                    format!("instance {}: address {:?} is not on network {}", i.name, nic.ip, net.name),
                    None,
                )),
            }
        }
        d.hypervisors.insert(i.id.clone(), hv);
        name(&mut d, "instance", &i.id, &i.name, (hv != i.hypervisor).then(|| format!("{} → {hv}", i.hypervisor)));
    }
    // Root disks become private images of the account, booted by their instance.
    for i in &m.model.instances {
        if i.root_disk.is_some() {
            let n = derived_name(&i.name, "-root");
            name(&mut d, "image", &root_key(&i.id), &n, Some(format!("the root disk of instance {}", i.name)));
        }
    }
    if !maps.skip_volumes {
        for v in &m.model.volumes {
            // Its data arrives as a private raw image the volume is filled from.
            if v.data.is_some() {
                let n = derived_name(&v.name, "-data");
                name(&mut d, "image", &data_key(&v.id), &n, Some(format!("the data of volume {}", v.name)));
            }
            name(&mut d, "volume", &v.id, &v.name, None);
        }
    }
    if !m.model.floating_ips.is_empty() && !maps.skip_floating_ips {
        if e.external {
            for f in &m.model.floating_ips {
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
                format!(
                    "{} floating IP(s): this site has no external network to allocate them from",
                    m.model.floating_ips.len()
                ),
                Some("floating_ips=skip".into()),
            ));
        }
    }
    d
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
async fn existing(ctx: &SharedCtx, conn: &mut sqlx::AnyConnection, account: &AccountId) -> ApiResult<store::Existing> {
    let mut e = store::existing(conn, account).await?;
    e.external = ctx.config.external.is_some();
    Ok(e)
}

/// Verifies a bundle read from `body` (all of it) on a blocking thread.
pub async fn receive_body(ctx: &SharedCtx, body: axum::body::Body, stage: bool) -> ApiResult<Received> {
    use futures::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let trusted = ctx.trusted_keys.clone();
    let dir = stage.then(|| chunk_dir(ctx));
    let r = tokio::task::spawn_blocking(move || receive(reader, &trusted, dir.as_deref()))
        .await
        .map_err(ApiError::internal)??;
    Ok(r)
}

pub async fn plan(ctx: &SharedCtx, caller: &Caller, r: &Received, maps: &Maps) -> ApiResult<BundlePlan> {
    let mut conn = ctx.db.acquire().await?;
    let src = &r.manifest.source;
    let already = store::find_import(&mut conn, &caller.account_id, &src.site_key, &src.vdc_id, &r.hash).await?;
    let (creates, conflicts) = if already.is_some() {
        (vec![], vec![])
    } else {
        let e = existing(ctx, &mut conn, &caller.account_id).await?;
        let d = decide(&r.manifest, &e, maps);
        (d.creates, d.conflicts)
    };
    Ok(BundlePlan {
        source_site: src.site_key.clone(),
        source_vdc: src.vdc_id.clone(),
        manifest_hash: r.hash.clone(),
        already_imported: already.map(|i| i.id),
        creates,
        conflicts,
        chunks: r.chunks,
        bytes: r.bytes,
    })
}

// ---------------------------------------------------------------- import

/// The blobs an import stores: new images', root disks' and (unless skipped) volumes'.
fn blobs_to_store<'a>(m: &'a Manifest, d: &Decision, maps: &Maps) -> Vec<(String, &'a vdc_bundle::BlobRef)> {
    let mut out = Vec::new();
    for i in &m.model.images {
        if let (Some(blob), Some(ImageChoice::New)) = (&i.blob, d.images.get(&i.id)) {
            out.push((format!("image {}", i.name), blob));
        }
    }
    for i in &m.model.instances {
        if let Some(blob) = &i.root_disk {
            out.push((format!("the root disk of instance {}", i.name), blob));
        }
    }
    if !maps.skip_volumes {
        for v in &m.model.volumes {
            if let Some(blob) = &v.data {
                out.push((format!("volume {}", v.name), blob));
            }
        }
    }
    out
}

/// Stores each blob the import needs from the staged chunks (checked against its hash
/// again); a blob the store has already is not written twice.
async fn store_blobs(ctx: &SharedCtx, m: &Manifest, d: &Decision, maps: &Maps) -> ApiResult<()> {
    for (what, blob) in blobs_to_store(m, d, maps) {
        if ctx.blobs.local_path(&blob.sha256).is_some_and(|p| p.exists()) {
            continue;
        }
        let staging = ctx.config.images_dir().join("staging");
        let chunks = chunk_dir(ctx);
        let sha = blob.sha256.clone();
        let blob = blob.clone();
        let tmp = staging.join(format!("bundle-{}-{}", blob.sha256, rand::random::<u32>()));
        let t = tmp.clone();
        let ok = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            use sha2::Digest;
            std::fs::create_dir_all(&staging)?;
            let mut out = std::fs::File::create(&t)?;
            let mut h = sha2::Sha256::new();
            for c in &blob.chunks {
                let data = std::fs::read(chunks.join(c))?;
                h.update(&data);
                std::io::Write::write_all(&mut out, &data)?;
            }
            out.sync_all()?;
            Ok(hex::encode(h.finalize()) == blob.sha256)
        })
        .await
        .map_err(ApiError::internal)?;
        match ok {
            Ok(true) => ctx.blobs.put(&sha, &tmp).await.map_err(ApiError::internal)?,
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
    Ok(())
}

enum Applied {
    Created(BundleImport, Vec<Work>),
    Found(BundleImport),
}

/// Imports a verified bundle: everything in one transaction, or nothing.
pub async fn import(ctx: &SharedCtx, caller: &Caller, r: &Received, maps: &Maps) -> ApiResult<BundleImported> {
    let src = &r.manifest.source;
    {
        let mut conn = ctx.db.acquire().await?;
        if let Some(found) =
            store::find_import(&mut conn, &caller.account_id, &src.site_key, &src.vdc_id, &r.hash).await?
        {
            unstage(ctx, &r.manifest);
            return Ok(BundleImported { import: found, created: false });
        }
        let e = existing(ctx, &mut conn, &caller.account_id).await?;
        let d = decide(&r.manifest, &e, maps);
        if let Some(c) = d.conflicts.first() {
            return Err(unresolved(&d.conflicts, c));
        }
    }
    // The blob is kept from removal (an image delete's cleanup) until its image commits.
    let _refs = ctx.blob_refs.lock().await;
    let d0 = {
        let mut conn = ctx.db.acquire().await?;
        decide(&r.manifest, &existing(ctx, &mut conn, &caller.account_id).await?, maps)
    };
    store_blobs(ctx, &r.manifest, &d0, maps).await?;
    let applied = db::retry(|| apply(ctx, caller, r, maps)).await?;
    drop(_refs);
    // The data is in the blob store now; staged chunks have done their part.
    unstage(ctx, &r.manifest);
    match applied {
        Applied::Found(i) => Ok(BundleImported { import: i, created: false }),
        Applied::Created(i, work) => {
            for w in work {
                ctx.enqueue(w);
            }
            tracing::info!(import = %i.id, objects = i.id_map.len(), "bundle imported");
            Ok(BundleImported { import: i, created: true })
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

/// What an import would add to the account, per quota (only new images count).
fn quota_asks(m: &Manifest, d: &Decision) -> Vec<(QuotaKey, u64)> {
    let new_images: Vec<&vdc_bundle::Image> =
        m.model.images.iter().filter(|i| matches!(d.images.get(&i.id), Some(ImageChoice::New))).collect();
    let instances = &m.model.instances;
    vec![
        (QuotaKey::Instances, instances.len() as u64),
        (QuotaKey::Vcpus, instances.iter().map(|i| u64::from(i.cpus)).sum()),
        (QuotaKey::MemoryMib, instances.iter().map(|i| u64::from(i.memory_mib)).sum()),
        (QuotaKey::Networks, d.networks.len() as u64),
        (QuotaKey::SecurityGroups, m.model.security_groups.len() as u64),
        (QuotaKey::Keypairs, m.model.keypairs.len() as u64),
        (QuotaKey::Images, new_images.len() as u64),
        (QuotaKey::ImageGib, new_images.iter().filter_map(|i| i.blob.as_ref()).map(|b| b.size).sum()),
    ]
}

async fn apply(ctx: &SharedCtx, caller: &Caller, r: &Received, maps: &Maps) -> ApiResult<Applied> {
    let m = &r.manifest;
    let account = &caller.account_id;
    // Candidates are read before the transaction (as instance create does); the
    // reservation inside it re-checks.
    let pre = {
        let mut conn = ctx.db.acquire().await?;
        decide(m, &existing(ctx, &mut conn, account).await?, maps)
    };
    let mut candidates: HashMap<String, Vec<String>> = HashMap::new();
    // A stopped instance holds no host until it is started.
    for i in m.model.instances.iter().filter(|i| !i.stopped) {
        let hv = pre.hypervisors.get(&i.id).copied().unwrap_or(i.hypervisor);
        let demand = scheduler::Demand { hypervisor: hv, cpus: i.cpus, memory_mib: i.memory_mib, uefi: false };
        candidates.insert(i.id.clone(), scheduler::candidates(ctx, demand, None).await?);
    }

    let mut tx = ctx.db.begin().await?;
    // Serializes imports (and network creates) into this account: the checks below stay true.
    accounts::lock(&mut tx, account).await?;
    if let Some(found) = store::find_import(&mut tx, account, &m.source.site_key, &m.source.vdc_id, &r.hash).await? {
        return Ok(Applied::Found(found));
    }
    let e = existing(ctx, &mut tx, account).await?;
    let d = decide(m, &e, maps);
    if let Some(c) = d.conflicts.first() {
        return Err(unresolved(&d.conflicts, c));
    }
    quota::enforce(&mut tx, ctx, account, &quota_asks(m, &d)).await?;
    let name = |kind: &str, id: &str| d.names.get(&(kind.to_owned(), id.to_owned())).cloned().unwrap_or_default();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut work = Vec::new();
    let now = db::now();

    let mut networks: HashMap<String, (Network, PlannedNetwork)> = HashMap::new();
    for p in &d.networks {
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
        let id = SecurityGroupId::generate();
        db::secgroup::insert(&mut tx, &id, account, &name("security_group", &g.id), &g.description).await?;
        ids.insert(g.id.clone(), id.to_string());
        groups.insert(g.id.clone(), id);
    }
    for g in &m.model.security_groups {
        for rule in &g.rules {
            let spec = RuleSpec {
                direction: rule.direction,
                protocol: rule.protocol,
                port_min: rule.port_min,
                port_max: rule.port_max,
                cidr: rule.cidr.clone(),
                group: rule.group.as_ref().and_then(|b| groups.get(b)).cloned(),
            };
            db::secgroup::insert_rule(&mut tx, &groups[&g.id], &spec).await?;
        }
        work.push(Work::SecurityGroup(groups[&g.id].clone()));
    }
    let mut keys: HashMap<String, KeyPairId> = HashMap::new();
    for k in &m.model.keypairs {
        let (public_key, fingerprint) = keypair::parse_public_key(&k.public_key)?;
        let id = KeyPairId::generate();
        store::insert_keypair(&mut tx, account, id.as_str(), &name("keypair", &k.id), &public_key, &fingerprint)
            .await?;
        ids.insert(k.id.clone(), id.to_string());
        keys.insert(k.id.clone(), id);
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
            None => return Err(ApiError::internal(format!("image {} undecided", i.id))),
        }
    }
    // Root disks: private images of the account (as a capture makes), booted by their
    // instance; the bundle's image stays what the disk was made from.
    let mut roots: HashMap<String, ImageId> = HashMap::new();
    for i in &m.model.instances {
        let Some(blob) = &i.root_disk else { continue };
        let src = m.model.images.iter().find(|x| x.id == i.image).ok_or_else(|| ApiError::internal("validated"))?;
        let key = root_key(&i.id);
        let mut image = data_image(&name("image", &key), blob, &r.hash, &now);
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
    for i in &m.model.instances {
        let hv = d.hypervisors[&i.id];
        let (image, boot) = images[&i.image].clone();
        let image = roots.get(&i.id).cloned().unwrap_or(image);
        let demand = scheduler::Demand {
            hypervisor: hv,
            cpus: i.cpus,
            memory_mib: i.memory_mib,
            uefi: boot == vdc_schema::state::BootMode::Uefi,
        };
        let host = match i.stopped {
            // Unused by insert_stopped.
            true => HostNodeId::generate(),
            false => scheduler::reserve(&mut tx, demand, &candidates[&i.id]).await?,
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
        };
        if i.stopped {
            istore::insert_stopped(&mut tx, &new).await?;
        } else {
            istore::insert(&mut tx, &new).await?;
        }
        for (pos, nic) in i.interfaces.iter().enumerate() {
            let (net, p) = &networks[&nic.network];
            let ip = nic.ip.parse::<Ipv4Addr>().map_err(ApiError::internal)?;
            // MACs are unique site-wide: the bundle's is kept unless this site uses it.
            let mac = match nic.mac.parse::<vdc_schema::net::MacAddr>() {
                Ok(mac) if !store::mac_taken(&mut tx, &mac.to_string()).await? => Some(mac),
                _ => None,
            };
            let planned = interface::Planned {
                network: net.clone(),
                security_groups: nic.security_groups.iter().map(|g| groups[g].clone()).collect(),
                fixed_ip: Some(p.translate(ip)),
                mac,
            };
            let vif = interface::insert(&mut tx, account, &id, pos, &planned).await?;
            first_vif.get_or_insert_with(|| vif.id.to_string());
            work.push(Work::Interface(vif.id));
        }
        ids.insert(i.id.clone(), id.to_string());
        if !i.stopped {
            job::start(&mut tx, account, "instance.create", id.as_str(), "running").await?;
            work.push(Work::Instance(id.clone()));
        }
        created.insert(i.id.clone(), (id, first_vif));
    }
    if !maps.skip_volumes {
        for v in &m.model.volumes {
            let image = match &v.data {
                Some(blob) => {
                    let key = data_key(&v.id);
                    let mut image = data_image(&name("image", &key), blob, &r.hash, &now);
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
            job::start(&mut tx, account, "volume.create", id.as_str(), "available").await?;
            ids.insert(v.id.clone(), id.to_string());
            work.push(Work::Volume(id));
        }
    }
    if !maps.skip_floating_ips && !m.model.floating_ips.is_empty() {
        let ext = ctx.config.external.as_ref().ok_or_else(|| ApiError::internal("decided without external"))?;
        let (start, end, _) = ext.pool().map_err(ApiError::internal)?;
        let mut used: HashSet<String> = store::used_ips(&mut tx).await?.into_iter().collect();
        for f in &m.model.floating_ips {
            let ip = crate::app::floating_ip::pick(start, end, &used, None)?;
            used.insert(ip.to_string());
            let id = FloatingIpId::generate();
            let on =
                f.instance.as_ref().and_then(|i| created.get(i)).and_then(|(i, v)| Some((i.as_str(), v.as_deref()?)));
            store::insert_floating_ip(&mut tx, id.as_str(), account, &ip.to_string(), on).await?;
            ids.insert(f.id.clone(), id.to_string());
        }
    }
    let import = BundleImport {
        id: BundleImportId::generate(),
        source_site: m.source.site_key.clone(),
        source_vdc: m.source.vdc_id.clone(),
        manifest_hash: r.hash.clone(),
        id_map: ids,
        created_at: db::parse_time(&now),
    };
    // The unique (account, source, manifest) key is the last guard against a twin import.
    store::insert_import(&mut tx, account, &import).await?;
    tx.commit().await?;
    ctx.events.wake();
    Ok(Applied::Created(import, work))
}

/// A private image of the import holding `blob`: a volume's raw data unless changed.
fn data_image(name: &str, blob: &vdc_bundle::BlobRef, hash: &str, now: &str) -> Image {
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
            foreign_images: vec![("img-pub".into(), "tiny".into(), ",qemu,kvm,".into())],
            hypervisors: vec!["lxc".into(), "qemu".into()],
            external: false,
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
