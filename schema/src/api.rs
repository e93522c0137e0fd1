//! Web API bodies for `/api/v1`. Requests refuse unknown fields so that a typo is an error,
//! not a silently ignored setting; responses may grow fields (clients must ignore them).

use crate::id::*;
use crate::state::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The API version answered by `GET /api/v1`.
pub const API_VERSION: &str = "1.0";

/// Append-only list of API extensions this dcmgr serves.
pub const EXTENSIONS: &[&str] = &[
    "accounts",
    "keypairs",
    "images",
    "networks",
    "security_groups",
    "instances",
    "instance_console",
    "volumes",
    "snapshots",
    "host_nodes",
    "storage_nodes",
    "jobs",
];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiInfo {
    pub api_version: String,
    pub server_version: String,
    pub extensions: Vec<String>,
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (see ARCHITECTURE.md for the list).
    pub code: String,
    /// What went wrong and what to change.
    pub message: String,
}

/// One page of a list. Pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Query parameters shared by every list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many items (1–1000, default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only items in this state.
    pub state: Option<String>,
    /// Only items with this exact name.
    pub name: Option<String>,
}

/// The answer to a call that starts long work: 202 with the job that tracks it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted<T> {
    pub job: Job,
    pub resource: T,
}

// ---------------------------------------------------------------- accounts

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// A new API token. The token itself is shown only in this answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountToken {
    pub account_id: AccountId,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountCreated {
    pub account: Account,
    pub token: String,
}

// ---------------------------------------------------------------- key pairs

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyPair {
    pub id: KeyPairId,
    pub name: String,
    pub public_key: String,
    /// SHA256 fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

/// Import `public_key`, or leave it out to have an ed25519 key generated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyPair {
    pub name: String,
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyPairCreated {
    pub keypair: KeyPair,
    /// Only for a generated key, and only in this answer: save it now.
    pub private_key: Option<String>,
}

// ---------------------------------------------------------------- images

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: ImageId,
    pub name: String,
    pub format: ImageFormat,
    pub arch: Arch,
    pub hypervisors: Vec<HypervisorKind>,
    /// Where hosts fetch it from: a path, a `file://` or `http(s)://` URL, or `builtin:NAME`.
    pub source: String,
    /// `sha256:<hex>` of the image data, checked by the host's image cache.
    pub checksum: Option<String>,
    /// For `kernel` images: the initrd, beside the kernel in `source`.
    pub initrd: Option<String>,
    pub kernel_cmdline: Option<String>,
    /// Visible to every account (only an admin can publish).
    pub public: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub name: String,
    pub format: ImageFormat,
    #[serde(default = "default_arch")]
    pub arch: Arch,
    pub hypervisors: Vec<HypervisorKind>,
    pub source: String,
    pub checksum: Option<String>,
    pub initrd: Option<String>,
    pub kernel_cmdline: Option<String>,
    #[serde(default)]
    pub public: bool,
}

fn default_arch() -> Arch {
    Arch::X86_64
}

// ---------------------------------------------------------------- networks

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub id: NetworkId,
    pub name: String,
    /// IPv4 network in CIDR form, e.g. `10.0.0.0/24`.
    pub cidr: String,
    pub gateway: String,
    pub dhcp_start: String,
    pub dhcp_end: String,
    /// VXLAN network identifier, unique in the cloud.
    pub vni: u32,
    pub created_at: DateTime<Utc>,
}

/// Gateway and DHCP range default to the first address and the rest of the CIDR.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    pub cidr: String,
    pub gateway: Option<String>,
    pub dhcp_start: Option<String>,
    pub dhcp_end: Option<String>,
}

// ---------------------------------------------------------------- security groups

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecurityGroup {
    pub id: SecurityGroupId,
    pub name: String,
    pub description: String,
    pub rules: Vec<SecurityGroupRule>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecurityGroupRule {
    pub id: RuleId,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

/// One rule: traffic of `protocol` on ports `port_min..=port_max` from (ingress) or to
/// (egress) either `cidr` or the members of `group`. Exactly one of the two is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default = "default_direction")]
    pub direction: Direction,
    pub protocol: Protocol,
    /// For tcp and udp; leave both out for all ports. For icmp, the ICMP type.
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub cidr: Option<String>,
    pub group: Option<SecurityGroupId>,
}

fn default_direction() -> Direction {
    Direction::Ingress
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

// ---------------------------------------------------------------- instances

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub name: String,
    pub state: InstanceState,
    /// What was last asked of it.
    pub goal: InstanceGoal,
    pub image_id: ImageId,
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    pub host_node_id: Option<HostNodeId>,
    pub ssh_key_id: Option<KeyPairId>,
    pub interfaces: Vec<Interface>,
    pub volumes: Vec<VolumeId>,
    /// Set when `state` is `failed`.
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Interface {
    pub id: VifId,
    pub network_id: NetworkId,
    pub mac: String,
    pub ip: String,
    pub security_groups: Vec<SecurityGroupId>,
    pub state: InterfaceState,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    pub name: Option<String>,
    pub image_id: ImageId,
    /// Defaults to the first hypervisor kind the image lists.
    pub hypervisor: Option<HypervisorKind>,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub interfaces: Vec<CreateInterface>,
    pub ssh_key_id: Option<KeyPairId>,
    /// Passed to the guest as cloud-init user-data (at most 64 KiB).
    pub user_data: Option<String>,
}

fn default_cpus() -> u32 {
    1
}
fn default_memory() -> u32 {
    256
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInterface {
    pub network_id: NetworkId,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupId>,
    /// A fixed address inside the network's DHCP range; assigned when left out.
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleLog {
    pub instance_id: InstanceId,
    /// The serial console output kept by the host, oldest first.
    pub output: String,
}

// ---------------------------------------------------------------- volumes and snapshots

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: VolumeId,
    pub name: String,
    pub size_mib: u64,
    pub state: VolumeState,
    pub storage_node_id: Option<StorageNodeId>,
    pub instance_id: Option<InstanceId>,
    pub snapshot_id: Option<SnapshotId>,
    /// The image the volume was filled from.
    #[serde(default)]
    pub image_id: Option<ImageId>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Give `size_mib` for an empty volume; `snapshot_id` to copy a snapshot (size defaults
/// to the snapshot's); or `image_id` and `size_mib` to fill it from a qcow2 or raw image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    pub size_mib: Option<u64>,
    pub snapshot_id: Option<SnapshotId>,
    #[serde(default)]
    pub image_id: Option<ImageId>,
}

/// Grow a volume to `size_mib` (never shrinks).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendVolume {
    pub size_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    pub instance_id: InstanceId,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub name: String,
    pub volume_id: VolumeId,
    pub size_mib: u64,
    pub state: SnapshotState,
    pub storage_node_id: StorageNodeId,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub volume_id: VolumeId,
    pub name: String,
}

// ---------------------------------------------------------------- floating IPs

/// An address of the site's external network, mapped 1:1 (DNAT and SNAT) to one
/// interface of an instance while associated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FloatingIp {
    pub id: FloatingIpId,
    pub ip: String,
    pub instance_id: Option<InstanceId>,
    pub interface_id: Option<VifId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Allocates the next free address of the external pool (or the one asked for).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFloatingIp {
    #[serde(default)]
    pub ip: Option<String>,
}

/// Associates with an instance's interface (its first when `interface_id` is left out).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssociateFloatingIp {
    pub instance_id: InstanceId,
    #[serde(default)]
    pub interface_id: Option<VifId>,
}

// ---------------------------------------------------------------- nodes and jobs

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostNode {
    pub id: HostNodeId,
    pub state: NodeState,
    pub hypervisors: Vec<HypervisorKind>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub cpus_used: u32,
    pub memory_used_mib: u64,
    /// What the agent found it can do, e.g. `{"kvm_usable": false}`.
    #[schema(value_type = Object)]
    pub capabilities: serde_json::Value,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageNode {
    pub id: StorageNodeId,
    pub state: NodeState,
    pub backend: StorageBackend,
    pub capacity_mib: u64,
    pub used_mib: u64,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    /// e.g. `instance.create`, `volume.attach`.
    pub action: String,
    pub resource_id: String,
    pub state: JobState,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}
