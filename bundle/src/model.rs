//! The manifest: the VDC as desired state. Objects refer to each other by their `id`
//! within the bundle (the source's IDs; the target gives new ones).

use crate::BundleError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use vdc_schema::state::{Arch, BootMode, Direction, HypervisorKind, ImageFormat, Protocol, ServerGroupPolicy};

/// The version this code writes. Readers accept every version up to it. Version 2 carries
/// instances' root disks and volumes' data, and whether an instance was stopped: a
/// version-1 reader would silently drop them, so it is told to upgrade instead.
pub const FORMAT_VERSION: u32 = 2;

/// Volumes attached to one instance at most (as vdc allows).
pub const MAX_VOLUMES_PER_INSTANCE: usize = 16;
/// The largest uncompressed chunk.
pub const CHUNK_SIZE: usize = 4 << 20;

/// What a reader accepts; the defaults are generous for a VDC and small for a server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_manifest_bytes: usize,
    pub max_objects: usize,
    pub max_rules: usize,
    pub max_chunks: usize,
    pub max_user_data: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 16 << 20,
            max_objects: 4096,
            max_rules: 200,
            max_chunks: 1 << 20,
            max_user_data: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Where the bundle comes from: the exporting site's public key (hex) and the
    /// exported VDC (the account) there. With the manifest's hash this names an import.
    pub source: Source,
    pub model: Model,
    /// Every chunk of the stream, once each, in stream order.
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub site_key: String,
    pub vdc_id: String,
    pub exported_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Model {
    pub networks: Vec<Network>,
    pub security_groups: Vec<SecurityGroup>,
    pub keypairs: Vec<KeyPair>,
    pub images: Vec<Image>,
    pub instances: Vec<Instance>,
    pub volumes: Vec<Volume>,
    pub floating_ips: Vec<FloatingIp>,
    /// Left out when there are none, so bundles without them read as before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_groups: Vec<ServerGroup>,
}

/// Instances placed together or apart; members name it (`Instance::server_group`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerGroup {
    pub id: String,
    pub name: String,
    pub policy: ServerGroupPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub dhcp_start: String,
    pub dhcp_end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub direction: Direction,
    pub protocol: Protocol,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub cidr: Option<String>,
    /// A security group of this bundle, by its bundle ID.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub id: String,
    pub name: String,
    /// OpenSSH public key; private keys never travel.
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub format: ImageFormat,
    pub arch: Arch,
    pub hypervisors: Vec<HypervisorKind>,
    pub boot_mode: BootMode,
    /// Another image of this bundle, by bundle ID.
    pub kernel_id: Option<String>,
    pub min_disk: Option<u64>,
    pub min_memory: Option<u64>,
    pub os: Option<String>,
    pub default_user: Option<String>,
    /// The image's data. `None`: an image the VDC uses but does not own (a public image of
    /// the source site); the target resolves it by name among its own public images.
    pub blob: Option<BlobRef>,
    /// Deleted at the source, and kept there only for the instances that boot it: the
    /// target keeps it hidden too (its name held until they go). Left out when false, so
    /// bundles of images that are not deleted read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// A blob carried as chunks: the blob is their concatenation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
    pub chunks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub image: String,
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    pub root_disk_size: Option<u64>,
    pub keypair: Option<String>,
    pub user_data: Option<String>,
    pub interfaces: Vec<Interface>,
    /// The root disk's data, a qcow2 image captured from the instance, or a container's
    /// root filesystem as a tarball; absent in a model-only bundle and for instances
    /// booting a kernel image (the instance then boots its image).
    pub root_disk: Option<BlobRef>,
    /// `raw` or `qcow2` (`tar` for a container): what the source found the root disk to
    /// be (the target never guesses a disk's format from tenant-written bytes). Given
    /// exactly when `root_disk` is.
    #[serde(default)]
    pub root_disk_format: Option<ImageFormat>,
    /// The instance was stopped at the source and stays stopped at the target. Absent in
    /// version 1 (instances were brought up).
    #[serde(default)]
    pub stopped: bool,
    /// The zone it was created to run in (a host class of the source). Left out when it
    /// asked for none, like `host_labels`, so bundles without them read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Labels its host must have (another host class).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_labels: BTreeMap<String, String>,
    /// The server group (bundle ID) it is a member of; left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub network: String,
    pub ip: String,
    pub mac: String,
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size_mib: u64,
    /// The volume's data as a raw disk image (from a snapshot of it); absent in a
    /// model-only bundle (an empty volume).
    pub data: Option<BlobRef>,
    /// `raw` or `qcow2`, as for an instance's root disk. Given exactly when `data` is.
    #[serde(default)]
    pub data_format: Option<ImageFormat>,
    /// The instance (bundle ID) it is attached to. Left out when it is attached to none,
    /// so a bundle without attachments reads as before; a reader that does not know the
    /// field refuses a bundle that has one (unknown fields are refused), never drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatingIp {
    pub id: String,
    /// The instance (bundle ID) whose first interface it should reach, if any.
    pub instance: Option<String>,
}

/// IDs inside a bundle: short and plain, so they can never be read as a path.
fn check_id(kind: &str, id: &str) -> Result<(), BundleError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(BundleError::InvalidName(format!(
            "{kind} ID {:?} is invalid: use 1 to 64 letters, digits, '-' or '_'",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// The longest description a security group has.
pub const MAX_DESCRIPTION: usize = 255;

/// A security group's description, as the API and a bundle accept it: at most
/// [`MAX_DESCRIPTION`] characters on one line, nothing invisible. The API took 1,024
/// bytes of anything, and a bundle of such a group was then refused at every import.
pub fn check_description(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(format!("a description is at most {MAX_DESCRIPTION} characters, got {}", text.chars().count()));
    }
    if text.chars().any(|c| c.is_control() || vdc_schema::invisible_char(c)) {
        return Err("a description is one line of visible characters: no control, zero-width or \
                    bidirectional characters"
            .into());
    }
    Ok(())
}

/// Names: what the API accepts (1–64 printable characters, no surrounding space, no white
/// space but the plain space, no invisible or bidirectional formatting characters), and
/// nothing path-like: no '/', '\\', NUL, and not "." or "..".
pub fn check_name(kind: &str, name: &str) -> Result<(), BundleError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name.trim() == name
        && !name.chars().any(|c| {
            c.is_control() || (c.is_whitespace() && c != ' ') || vdc_schema::invisible_char(c) || c == '/' || c == '\\'
        })
        && name != "."
        && name != ".."
        && !name.contains("..");
    if !ok {
        return Err(BundleError::InvalidName(format!(
            "{kind} name {:?} is invalid: use 1 to 64 printable characters, no '/', '\\' or '..', \
             no leading or trailing spaces, other white space, or invisible (zero-width, bidirectional) characters",
            name.chars().take(80).collect::<String>()
        )));
    }
    if shaped_like_id(kind, name) {
        // An ID no longer found (deleted) is looked up as a name by the CLI and the
        // console: another account's image shared under that name would be taken for it.
        return Err(BundleError::InvalidName(format!(
            "{kind} name {name:?} has the shape of a {kind} ID: a name may not, so that an ID always means \
             the resource it was made for; choose another name"
        )));
    }
    Ok(())
}

/// Whether `name` has the shape of a generated ID of the kind of resource it names
/// (`img-` and 15 characters of IDs' alphabet for an image; `img-root` is a name).
fn shaped_like_id(kind: &str, name: &str) -> bool {
    use vdc_schema::id::*;
    let prefix = match kind {
        "image" => ImageId::PREFIX,
        "instance" => InstanceId::PREFIX,
        "key pair" => KeyPairId::PREFIX,
        "network" => NetworkId::PREFIX,
        "security group" => SecurityGroupId::PREFIX,
        "server group" => ServerGroupId::PREFIX,
        "snapshot" => SnapshotId::PREFIX,
        "volume" => VolumeId::PREFIX,
        _ => return false,
    };
    name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')).is_some_and(generated_suffix)
}

fn check_hash(what: &str, h: &str) -> Result<(), BundleError> {
    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(BundleError::InvalidManifest(format!("{what}: {h:?} is not a lower-case hex SHA-256")))
    }
}

/// A guest's hostname: a DNS label (1 to 63 letters, digits and '-', not at either end).
fn check_hostname(from: &str, h: &str) -> Result<(), BundleError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(BundleError::InvalidName(format!(
            "{from}: hostname {:?} is not a DNS label (1 to 63 letters, digits or '-', not at either end)",
            h.chars().take(80).collect::<String>()
        )))
    }
}

/// A short field of a fixed alphabet (addresses, MACs, CIDRs, times): at most `max`
/// bytes, each one `ok` accepts. dcmgr parses the value; this keeps it small and plain.
fn check_plain(from: &str, field: &str, v: &str, max: usize, ok: impl Fn(u8) -> bool) -> Result<(), BundleError> {
    if !v.is_empty() && v.len() <= max && v.bytes().all(ok) {
        Ok(())
    } else {
        Err(BundleError::InvalidManifest(format!(
            "{from}: {field} {:?} is not valid",
            v.chars().take(80).collect::<String>()
        )))
    }
}

/// A zone, a label's key (`key` true: '/' too) or value as vdc takes them: up to 63 of
/// letters, digits, '.', '_', '-', starting with a letter or digit.
fn token_ok(v: &str, key: bool) -> bool {
    v.len() <= 63
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || (key && b == b'/'))
}

/// Host classes an instance asks for: a zone, and at most 16 labels.
fn check_host_class(from: &str, i: &Instance) -> Result<(), BundleError> {
    let bad = |what: String| Err(BundleError::InvalidManifest(format!("{from}: {what} is not valid")));
    if let Some(z) = &i.zone {
        if !token_ok(z, false) {
            return bad(format!("zone {:?}", z.chars().take(80).collect::<String>()));
        }
    }
    if i.host_labels.len() > 16 {
        return bad(format!("host_labels ({} labels; at most 16)", i.host_labels.len()));
    }
    for (k, v) in &i.host_labels {
        if !token_ok(k, true) || !(v.is_empty() || token_ok(v, false)) {
            let (k, v): (String, String) = (k.chars().take(80).collect(), v.chars().take(80).collect());
            return bad(format!("host label {k:?}={v:?}"));
        }
    }
    Ok(())
}

fn ipv4_char(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.'
}

fn cidr_char(b: u8) -> bool {
    ipv4_char(b) || b == b'/'
}

/// An RFC 3339 time as exporters write it (`2026-01-31T12:00:00.123Z`, `…+02:00`): its
/// shape, so that dcmgr's ordering of updates (downgrades) cannot be sidestepped by a
/// time it fails to parse.
fn check_time(from: &str, t: &str) -> Result<(), BundleError> {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let ok = (20..=40).contains(&b.len())
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19..].iter().all(|c| c.is_ascii_digit() || b".:+-Zz".contains(c))
        && matches!(b[b.len() - 1], b'Z' | b'z' | b'0'..=b'9');
    if ok {
        Ok(())
    } else {
        Err(BundleError::InvalidManifest(format!(
            "{from} {:?} is not an RFC 3339 time",
            t.chars().take(80).collect::<String>()
        )))
    }
}

/// Free text of one line (an image's os, a login name): at most `max` characters,
/// nothing invisible.
fn check_line(from: &str, field: &str, v: &str, max: usize) -> Result<(), BundleError> {
    if v.chars().count() <= max && !v.chars().any(|c| c.is_control() || vdc_schema::invisible_char(c)) {
        Ok(())
    } else {
        Err(BundleError::InvalidManifest(format!(
            "{from}: {field} {:?} is not one line of at most {max} visible characters",
            v.chars().take(80).collect::<String>()
        )))
    }
}

fn count(what: &'static str, n: usize, max: usize) -> Result<(), BundleError> {
    if n > max {
        Err(BundleError::TooMany { what, count: n, max })
    } else {
        Ok(())
    }
}

/// IDs of one kind, each once.
fn ids<'a>(kind: &str, it: impl Iterator<Item = &'a str>) -> Result<HashSet<&'a str>, BundleError> {
    let mut set = HashSet::new();
    for id in it {
        check_id(kind, id)?;
        if !set.insert(id) {
            return Err(BundleError::DuplicateId(format!("{kind} ID {id} appears twice")));
        }
    }
    Ok(set)
}

fn resolves(set: &HashSet<&str>, from: &str, kind: &str, id: &str) -> Result<(), BundleError> {
    if set.contains(id) {
        Ok(())
    } else {
        Err(BundleError::DanglingReference(format!(
            "{from} refers to {kind} {:?}, which the bundle does not hold",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// A disk's format comes with its data, and is one a disk can be.
/// A disk's format is given exactly when its data is, and is one of `allowed`.
fn disk_format(
    from: &str,
    what: &str,
    has_data: bool,
    f: Option<ImageFormat>,
    allowed: &[ImageFormat],
) -> Result<(), BundleError> {
    let names = || allowed.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" or ");
    match (has_data, f) {
        (false, None) => Ok(()),
        (true, Some(f)) if allowed.contains(&f) => Ok(()),
        (true, None) => Err(BundleError::InvalidManifest(format!("{from}: its {what} has no format"))),
        (false, Some(_)) => Err(BundleError::InvalidManifest(format!("{from}: a {what} format without data"))),
        (true, Some(f)) => Err(BundleError::InvalidManifest(format!("{from}: its {what} is {f}, not {}", names()))),
    }
}

/// What a disk's data may be: a volume's and a virtual machine's are disks; a
/// container's root is its file system as a tarball.
const DISKS: &[ImageFormat] = &[ImageFormat::Raw, ImageFormat::Qcow2];
const CONTAINER_ROOT: &[ImageFormat] = &[ImageFormat::Tar];

impl Manifest {
    /// Everything that can be checked without the chunks: version, counts, IDs, names,
    /// that every reference resolves inside the manifest, and that blobs are made of
    /// listed chunks whose sizes add up.
    pub fn validate(&self, limits: &Limits) -> Result<(), BundleError> {
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion { found: self.format_version, supported: FORMAT_VERSION });
        }
        let m = &self.model;
        let max = limits.max_objects;
        count("networks", m.networks.len(), max)?;
        count("security groups", m.security_groups.len(), max)?;
        count("key pairs", m.keypairs.len(), max)?;
        count("images", m.images.len(), max)?;
        count("instances", m.instances.len(), max)?;
        count("volumes", m.volumes.len(), max)?;
        count("floating IPs", m.floating_ips.len(), max)?;
        count("server groups", m.server_groups.len(), max)?;
        count("chunks", self.chunks.len(), limits.max_chunks)?;
        check_plain("source", "vdc_id", &self.source.vdc_id, 128, |b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
        })?;
        check_time("source.exported_at", &self.source.exported_at)?;
        crate::parse_key(&self.source.site_key)?;

        let mut chunks: HashMap<&str, u64> = HashMap::new();
        for c in &self.chunks {
            check_hash("chunk", &c.sha256)?;
            if c.size == 0 || c.size > CHUNK_SIZE as u64 {
                return Err(BundleError::InvalidManifest(format!(
                    "chunk {} has size {} (1 to {CHUNK_SIZE} bytes)",
                    c.sha256, c.size
                )));
            }
            if chunks.insert(&c.sha256, c.size).is_some() {
                return Err(BundleError::DuplicateChunk(c.sha256.clone()));
            }
        }
        let mut used: HashSet<&str> = HashSet::new();
        let mut blob = |what: String, b: &'_ BlobRef| -> Result<(), BundleError> {
            check_hash(&what, &b.sha256)?;
            let mut total = 0u64;
            for h in &b.chunks {
                let size = chunks.get(h.as_str()).ok_or_else(|| {
                    BundleError::MissingChunk(format!(
                        "{} (of {what}; not listed)",
                        h.chars().take(80).collect::<String>()
                    ))
                })?;
                total = total.saturating_add(*size);
            }
            if total != b.size {
                return Err(BundleError::InvalidManifest(format!(
                    "{what}: its chunks hold {total} bytes, not the {} it lists",
                    b.size
                )));
            }
            for h in &b.chunks {
                if let Some((k, _)) = chunks.get_key_value(h.as_str()) {
                    used.insert(k);
                }
            }
            Ok(())
        };

        let networks = ids("network", m.networks.iter().map(|n| n.id.as_str()))?;
        let groups = ids("security group", m.security_groups.iter().map(|g| g.id.as_str()))?;
        let keypairs = ids("key pair", m.keypairs.iter().map(|k| k.id.as_str()))?;
        let images = ids("image", m.images.iter().map(|i| i.id.as_str()))?;
        let instances = ids("instance", m.instances.iter().map(|i| i.id.as_str()))?;
        ids("volume", m.volumes.iter().map(|v| v.id.as_str()))?;
        ids("floating IP", m.floating_ips.iter().map(|f| f.id.as_str()))?;
        let server_groups = ids("server group", m.server_groups.iter().map(|g| g.id.as_str()))?;
        for g in &m.server_groups {
            check_name("server group", &g.name)?;
        }

        for n in &m.networks {
            check_name("network", &n.name)?;
            for (field, v) in
                [("cidr", &n.cidr), ("gateway", &n.gateway), ("dhcp_start", &n.dhcp_start), ("dhcp_end", &n.dhcp_end)]
            {
                if v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/') {
                    return Err(BundleError::InvalidManifest(format!("network {}: {field} {v:?} is not IPv4", n.id)));
                }
            }
        }
        for g in &m.security_groups {
            check_name("security group", &g.name)?;
            if let Err(e) = check_description(&g.description) {
                return Err(BundleError::InvalidManifest(format!("security group {}: {e}", g.id)));
            }
            count("rules in a group", g.rules.len(), limits.max_rules)?;
            for r in &g.rules {
                if let Some(c) = &r.cidr {
                    check_plain(&format!("a rule of security group {}", g.id), "cidr", c, 18, cidr_char)?;
                }
                if let Some(other) = &r.group {
                    resolves(&groups, &format!("a rule of security group {}", g.id), "security group", other)?;
                }
            }
        }
        for k in &m.keypairs {
            check_name("key pair", &k.name)?;
            if k.public_key.len() > 16 << 10 || k.public_key.chars().any(|c| c.is_control() && c != '\n') {
                return Err(BundleError::InvalidManifest(format!("key pair {}: public key invalid", k.id)));
            }
        }
        for i in &m.images {
            check_name("image", &i.name)?;
            for (field, v, max) in [("os", &i.os, 64), ("default_user", &i.default_user, 32)] {
                if let Some(v) = v {
                    check_line(&format!("image {}", i.id), field, v, max)?;
                }
            }
            if let Some(k) = &i.kernel_id {
                resolves(&images, &format!("image {}", i.id), "image", k)?;
                if k == &i.id {
                    return Err(BundleError::DanglingReference(format!("image {} names itself as kernel", i.id)));
                }
                // A kernel boots a disk image, and a kernel image has no kernel of its own:
                // so kernel references never chain, let alone form a cycle.
                if !matches!(i.format, ImageFormat::Raw | ImageFormat::Qcow2) {
                    return Err(BundleError::InvalidManifest(format!(
                        "image {}: kernel_id is for raw and qcow2 disk images, not a {} image",
                        i.id, i.format
                    )));
                }
                let kernel = m.images.iter().find(|x| &x.id == k).map(|x| x.format);
                if kernel != Some(ImageFormat::Kernel) {
                    return Err(BundleError::InvalidManifest(format!(
                        "image {}: its kernel_id {k} is not a kernel image",
                        i.id
                    )));
                }
            }
            if let Some(b) = &i.blob {
                blob(format!("image {}", i.id), b)?;
            }
        }
        for i in &m.instances {
            let from = format!("instance {}", i.id);
            check_name("instance", &i.name)?;
            check_hostname(&from, &i.hostname)?;
            resolves(&images, &from, "image", &i.image)?;
            if let Some(k) = &i.keypair {
                resolves(&keypairs, &from, "key pair", k)?;
            }
            if i.user_data.as_ref().is_some_and(|u| u.len() > limits.max_user_data) {
                return Err(BundleError::InvalidManifest(format!(
                    "{from}: user-data over {} bytes",
                    limits.max_user_data
                )));
            }
            count("interfaces of an instance", i.interfaces.len(), 8)?;
            for nic in &i.interfaces {
                resolves(&networks, &from, "network", &nic.network)?;
                check_plain(&from, "interface address", &nic.ip, 15, ipv4_char)?;
                check_plain(&from, "MAC", &nic.mac, 17, |b| b.is_ascii_hexdigit() || b == b':')?;
                for g in &nic.security_groups {
                    resolves(&groups, &from, "security group", g)?;
                }
            }
            if let Some(b) = &i.root_disk {
                blob(format!("the root disk of {from}"), b)?;
            }
            let allowed = if i.hypervisor == HypervisorKind::Lxc { CONTAINER_ROOT } else { DISKS };
            disk_format(&from, "root disk", i.root_disk.is_some(), i.root_disk_format, allowed)?;
            check_host_class(&from, i)?;
            if let Some(g) = &i.server_group {
                resolves(&server_groups, &from, "server group", g)?;
            }
        }
        let mut attached: HashMap<&str, usize> = HashMap::new();
        for v in &m.volumes {
            check_name("volume", &v.name)?;
            if let Some(b) = &v.data {
                blob(format!("volume {}", v.id), b)?;
                // Raw data is the disk as it is: more of it than the volume holds fails
                // at the import's end otherwise (a qcow2's own size is checked there).
                if v.data_format == Some(ImageFormat::Raw) && b.size > v.size_mib.saturating_mul(1 << 20) {
                    return Err(BundleError::InvalidManifest(format!(
                        "volume {}: its raw data is {} bytes, more than the volume's {} MiB",
                        v.id, b.size, v.size_mib
                    )));
                }
            }
            disk_format(&format!("volume {}", v.id), "data", v.data.is_some(), v.data_format, DISKS)?;
            if let Some(i) = &v.attached_to {
                let from = format!("volume {}", v.id);
                resolves(&instances, &from, "instance", i)?;
                // Volumes are virtio disks: a container has none (vdc refuses the attach).
                if m.instances.iter().any(|x| &x.id == i && x.hypervisor == HypervisorKind::Lxc) {
                    return Err(BundleError::InvalidManifest(format!(
                        "{from} is attached to instance {i}, an lxc container, which takes no volumes"
                    )));
                }
                let n = attached.entry(i.as_str()).or_insert(0);
                *n += 1;
                if *n > MAX_VOLUMES_PER_INSTANCE {
                    return Err(BundleError::InvalidManifest(format!(
                        "instance {i} has more than {MAX_VOLUMES_PER_INSTANCE} volumes attached"
                    )));
                }
            }
        }
        for f in &m.floating_ips {
            if let Some(i) = &f.instance {
                resolves(&instances, &format!("floating IP {}", f.id), "instance", i)?;
            }
        }
        // A chunk nothing uses is data nobody asked for.
        if let Some(c) = self.chunks.iter().find(|c| !used.contains(c.sha256.as_str())) {
            return Err(BundleError::InvalidManifest(format!("chunk {} is listed but no blob uses it", c.sha256)));
        }
        Ok(())
    }
}
