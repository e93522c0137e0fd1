//! Messages between dcmgr and the agents.
//!
//! Every message travels in an [`Envelope`] that carries [`PROTOCOL_VERSION`]. Decoders
//! ignore unknown fields, so an agent one minor version newer or older still interoperates.
//!
//! - dcmgr → agent: [`Command`]s on [`subject::agent`]. Every command is an idempotent
//!   *ensure* of desired state; repeating one is harmless.
//! - agent → dcmgr: [`Register`], [`Heartbeat`] and [`ReportBatch`] (request/reply). Each
//!   [`Report`] carries a generation number; dcmgr applies it only if it is newer than the
//!   last one it applied for that object, and acks its `seq` so the agent can drop it from
//!   its journal.

use crate::id::*;
use crate::net::{Ipv4Addr, Ipv4Net, MacAddr};
use crate::state::*;
use serde::{Deserialize, Serialize};

/// Bumped on an incompatible change; dcmgr accepts agents of `PROTOCOL_VERSION - 1` and up.
pub const PROTOCOL_VERSION: u32 = 1;

/// Subject names on the bus.
pub mod subject {
    use super::AgentKind;

    pub const REGISTER: &str = "vdc.dcmgr.register";
    pub const HEARTBEAT: &str = "vdc.dcmgr.heartbeat";
    pub const REPORT: &str = "vdc.dcmgr.report";

    /// Where one agent receives its commands.
    pub fn agent(kind: AgentKind, node_id: &str) -> String {
        format!("vdc.agent.{}.{}", kind.as_str(), node_id)
    }

    /// Where one agent answers queries (request/reply), e.g. console logs.
    pub fn agent_query(kind: AgentKind, node_id: &str) -> String {
        format!("vdc.agent.{}.{}.query", kind.as_str(), node_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    Hva,
    Nwagent,
    Sta,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Hva => "hva",
            AgentKind::Nwagent => "nwagent",
            AgentKind::Sta => "sta",
        }
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub proto: u32,
    /// The request this message serves, so the agent's log lines carry the same
    /// resource and job IDs as dcmgr's (absent from older senders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
    pub msg: T,
}

/// The IDs a command's tracing span carries across the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The object the command is about (`i-…`, `vol-…`, `vif-…`).
    pub resource: String,
    /// The job waiting for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl<T> Envelope<T> {
    pub fn new(msg: T) -> Self {
        Envelope { proto: PROTOCOL_VERSION, trace: None, msg }
    }
}

/// Why a bus message was refused before it was acted on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u32 },
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own plain data types cannot fail.
    serde_json::to_vec(&Envelope::new(msg)).expect("bus messages serialize")
}

/// Encodes a message with the IDs of the request it serves.
pub fn encode_traced<T: Serialize>(msg: &T, trace: Option<Trace>) -> Vec<u8> {
    serde_json::to_vec(&Envelope { proto: PROTOCOL_VERSION, trace, msg }).expect("bus messages serialize")
}

/// Decodes an untrusted message and checks its protocol version.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_traced(bytes).map(|(msg, _)| msg)
}

/// Like [`decode`], with the trace IDs the sender attached.
pub fn decode_traced<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, Option<Trace>), DecodeError> {
    let env: Envelope<T> = serde_json::from_slice(bytes)?;
    if env.proto + 1 < PROTOCOL_VERSION || env.proto > PROTOCOL_VERSION + 1 {
        return Err(DecodeError::Version { got: env.proto });
    }
    Ok((env.msg, env.trace))
}

// ---------------------------------------------------------------- agent → dcmgr

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    /// `hn-…` for hva and nwagent, `sn-…` for sta.
    pub node_id: String,
    pub kind: AgentKind,
    pub agent_version: String,
    pub host: Option<HostInfo>,
    pub storage: Option<StorageInfo>,
    /// nwagent: this host's tunnel endpoint (underlay IPv4) for VXLAN.
    #[serde(default)]
    pub tunnel_ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpus: u32,
    pub memory_mib: u64,
    pub hypervisors: Vec<HypervisorKind>,
    /// Probed facts, e.g. `{"kvm_usable": false, "driver": "sim"}`.
    pub capabilities: serde_json::Value,
    /// How this host can boot disk images; `uefi` only where OVMF is installed. An older
    /// agent that does not say boots BIOS only.
    #[serde(default = "bios_only")]
    pub boot_modes: Vec<BootMode>,
    /// MiB of the file system that holds root disks, less the agent's reserve; the
    /// scheduler books disk images' sizes against it. None from an older agent.
    #[serde(default)]
    pub disk_mib: Option<u64>,
}

pub fn bios_only() -> Vec<BootMode> {
    vec![BootMode::Bios]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageInfo {
    pub backend: StorageBackend,
    pub capacity_mib: u64,
    pub used_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub kind: AgentKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// False when dcmgr does not know this agent (e.g. after dcmgr lost its memory):
    /// the agent registers again and re-reports everything.
    pub known: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportBatch {
    pub node_id: String,
    pub kind: AgentKind,
    pub reports: Vec<Report>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Journal sequence number, echoed in the [`Ack`].
    pub seq: u64,
    /// Per-agent monotonic generation; newer observations have larger numbers.
    pub gen: u64,
    pub object: ObjectReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObjectReport {
    Instance(InstanceReport),
    Interface(InterfaceReport),
    Volume(VolumeReport),
    Snapshot(SnapshotReport),
}

impl ObjectReport {
    pub fn object_id(&self) -> &str {
        match self {
            ObjectReport::Instance(r) => r.id.as_str(),
            ObjectReport::Interface(r) => r.id.as_str(),
            ObjectReport::Volume(r) => r.id.as_str(),
            ObjectReport::Snapshot(r) => r.id.as_str(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: InstanceId,
    /// The `spec_gen` of the last ensure the agent acted on.
    pub spec_gen: u64,
    pub state: ObservedInstance,
    /// The last `reboot_gen` the agent carried out.
    #[serde(default)]
    pub reboot_gen: u64,
    /// Volumes attached to the running guest.
    #[serde(default)]
    pub volumes: Vec<VolumeId>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceReport {
    pub id: VifId,
    pub spec_gen: u64,
    pub state: ObservedInterface,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeReport {
    pub id: VolumeId,
    pub spec_gen: u64,
    pub state: ObservedStorage,
    pub size_mib: u64,
    /// How the attaching host reaches it, when exported.
    pub target: Option<VolumeTarget>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub id: SnapshotId,
    pub state: ObservedStorage,
    pub size_mib: u64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub seqs: Vec<u64>,
}

// ---------------------------------------------------------------- dcmgr → agent

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    EnsureInstance(InstanceSpec),
    EnsureInstanceAbsent {
        id: InstanceId,
        spec_gen: u64,
    },
    EnsureInterface(InterfaceSpec),
    EnsureInterfaceAbsent {
        id: VifId,
        spec_gen: u64,
    },
    EnsureVolume(VolumeSpec),
    EnsureVolumeAbsent {
        id: VolumeId,
        spec_gen: u64,
    },
    EnsureSnapshot(SnapshotSpec),
    EnsureSnapshotAbsent {
        id: SnapshotId,
        volume_id: VolumeId,
    },
    /// Flatten a stopped instance's root disk and upload it as an image's data.
    CaptureInstance(CaptureSpec),
    /// Read a snapshot's blocks and upload them as an image's data (sta).
    ImageFromSnapshot(SnapshotImageSpec),
    /// Re-report every object the agent holds.
    ReportAll,
}

/// Everything hva needs to make one instance exist in the desired power state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// Bumped by dcmgr on every change of intent for this instance.
    pub spec_gen: u64,
    pub power: DesiredPower,
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    pub hostname: String,
    pub image: ImageSpec,
    pub nics: Vec<NicSpec>,
    pub ssh_public_keys: Vec<String>,
    pub user_data: Option<String>,
    pub volumes: Vec<VolumeAttachment>,
    /// Reboot when this is larger than the last reboot carried out.
    pub reboot_gen: u64,
    /// Bytes the root disk is grown to; None keeps the image's size.
    #[serde(default)]
    pub root_disk_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub id: ImageId,
    pub format: ImageFormat,
    pub source: String,
    pub checksum: Option<String>,
    pub initrd: Option<String>,
    pub kernel_cmdline: Option<String>,
    #[serde(default)]
    pub boot_mode: BootMode,
    /// A disk image booted by an outside kernel: that `kernel` image.
    #[serde(default)]
    pub kernel: Option<Box<ImageSpec>>,
    /// Data kept in dcmgr's image store: fetch it from there (then `source` is only a
    /// description). None for an operator's host file.
    #[serde(default)]
    pub blob: Option<BlobRef>,
}

impl ImageSpec {
    /// An operator's image at `source` on the host and nothing more: no checksum, initrd,
    /// command line, kernel or stored data.
    pub fn host_file(id: ImageId, format: ImageFormat, source: impl Into<String>) -> ImageSpec {
        ImageSpec {
            id,
            format,
            source: source.into(),
            checksum: None,
            initrd: None,
            kernel_cmdline: None,
            boot_mode: BootMode::default(),
            kernel: None,
            blob: None,
        }
    }
}

/// A blob of dcmgr's image store, as one node fetches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lower-case hex; the data must hash to it.
    pub sha256: String,
    pub size: u64,
    /// `GET` it (with `Range: bytes=N-` to resume).
    pub url: String,
    /// The node's credential: `Authorization: Bearer <token>`.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicSpec {
    pub id: VifId,
    pub network_id: NetworkId,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub vni: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub volume_id: VolumeId,
    /// None until sta has exported the volume to this host.
    pub target: Option<VolumeTarget>,
}

/// The iSCSI initiator name a host logs in with; sta binds each export to it.
pub fn initiator_iqn(host: &HostNodeId) -> String {
    format!("iqn.2026-11.io.vdc:{host}")
}

/// The iSCSI target name of a volume (IDs are lower case, as IQNs must be).
pub fn target_iqn(volume: &VolumeId) -> String {
    format!("iqn.2026-11.io.vdc:{volume}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VolumeTarget {
    Iscsi { portal: String, iqn: String, lun: u32 },
    Local { path: String },
}

/// Everything nwagent needs to plug one interface into its virtual network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceSpec {
    pub id: VifId,
    pub spec_gen: u64,
    pub instance_id: InstanceId,
    pub account_id: AccountId,
    pub network: NetworkSpec,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub security_groups: Vec<SecurityGroupSpec>,
    /// What the metadata service tells the guest behind this interface.
    #[serde(default)]
    pub metadata: Option<InstanceMetadata>,
    /// 1:1 NAT between this external address and `ip`.
    #[serde(default)]
    pub floating_ip: Option<Ipv4Addr>,
}

/// EC2-style instance metadata, served only to the interface it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceMetadata {
    pub hostname: String,
    pub public_keys: Vec<String>,
    pub user_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub id: NetworkId,
    pub vni: u32,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Tunnel endpoints (underlay IPv4) of the other hosts with interfaces on this network.
    #[serde(default)]
    pub peers: Vec<Ipv4Addr>,
    /// The external network, when the site has one: this host's router for the network
    /// SNATs guests without a floating IP to `snat_ip`.
    #[serde(default)]
    pub external: Option<ExternalSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalSpec {
    /// The external network, e.g. `203.0.113.0/24`.
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The address this host's router for the network uses for outbound SNAT.
    pub snat_ip: Ipv4Addr,
}

/// The host-side device of an interface (tap or veth): hva creates it with this name and
/// nwagent plugs it. 15 bytes at most (IFNAMSIZ): `vt` + the last 13 characters of the
/// ID, which hold its millisecond stamp's tail and its random part.
pub fn vif_device_name(id: &VifId) -> String {
    let s = id.as_str();
    format!("vt{}", &s[s.len().saturating_sub(13)..])
}

/// A security group with every group reference already resolved to member addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupSpec {
    pub id: SecurityGroupId,
    pub rules: Vec<ResolvedRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedRule {
    pub direction: Direction,
    pub protocol: Protocol,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    /// CIDRs the rule admits: the rule's own, or one /32 per member of the referred group.
    pub cidrs: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub id: VolumeId,
    pub spec_gen: u64,
    /// The size wanted; larger than the volume's size means grow it.
    pub size_mib: u64,
    pub source_snapshot: Option<SnapshotId>,
    /// Fill a new volume with this (qcow2 or raw) image.
    #[serde(default)]
    pub source_image: Option<ImageSpec>,
    /// Export the volume to this host, or to none.
    pub export_to: Option<HostNodeId>,
}

/// Where an agent sends an image's data: `PUT` to `url` with the node's credential, and
/// dcmgr checks it like any upload. A failure before the upload is `POST`ed as
/// `{"reason": …}` to `failure_url`. Repeating one is harmless: dcmgr takes data only
/// for a pending image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUpload {
    pub image_id: ImageId,
    pub url: String,
    pub failure_url: String,
    /// `Authorization: Bearer <token>`.
    pub token: String,
}

/// A capture: hva flattens the instance's disk and uploads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureSpec {
    pub instance_id: InstanceId,
    /// Flattened: the fields are on the wire as they were before snapshots had images.
    #[serde(flatten)]
    pub upload: ImageUpload,
}

/// An image from a snapshot: sta reads the snapshot's blocks (a raw disk), converts them
/// to `format` if that is not raw, and uploads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotImageSpec {
    pub snapshot_id: SnapshotId,
    pub volume_id: VolumeId,
    pub format: ImageFormat,
    #[serde(flatten)]
    pub upload: ImageUpload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    pub id: SnapshotId,
    pub volume_id: VolumeId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum Query {
    ConsoleLog { id: InstanceId },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum QueryReply {
    ConsoleLog { output: String },
    Error { code: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_versions_checked() {
        let raw = br#"{"proto":1,"msg":{"node_id":"hn-a","kind":"hva","future_field":[1,2]}}"#;
        let hb: Heartbeat = decode(raw).unwrap();
        assert_eq!(hb.node_id, "hn-a");
        let raw = br#"{"proto":9,"msg":{"node_id":"hn-a","kind":"hva"}}"#;
        assert!(matches!(decode::<Heartbeat>(raw), Err(DecodeError::Version { got: 9 })));
        assert!(decode::<Heartbeat>(b"not json").is_err());
    }

    /// An interface's ensure as it has always been written on the wire.
    fn ensure_interface_json() -> serde_json::Value {
        serde_json::json!({"proto": PROTOCOL_VERSION, "msg": {
            "op": "ensure_interface", "id": "vif-a", "spec_gen": 2, "instance_id": "i-a", "account_id": "a-a",
            "network": {"id": "nw-a", "vni": 100, "cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
                "peers": ["192.0.2.2", "192.0.2.3"],
                "external": {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "snat_ip": "203.0.113.11"}},
            "mac": "52:54:00:ab:cd:ef", "ip": "10.0.0.2",
            "security_groups": [{"id": "sg-a", "rules": [{"direction": "ingress", "protocol": "tcp",
                "port_min": 22, "port_max": 22, "cidrs": ["0.0.0.0/0", "10.0.0.3/32"]}]}],
            "metadata": null, "floating_ip": "203.0.113.50"}})
    }

    /// A capture as hva has always read it (the upload fields are flattened), and an
    /// image from a snapshot beside it.
    #[test]
    fn captures_keep_their_wire_shape() {
        let json = serde_json::json!({"proto": PROTOCOL_VERSION, "msg": {"op": "capture_instance",
            "instance_id": "i-a", "image_id": "img-a", "url": "http://d/file", "failure_url": "http://d/f",
            "token": "hn-a.00"}});
        let cmd: Command = decode(json.to_string().as_bytes()).unwrap();
        let Command::CaptureInstance(spec) = &cmd else { panic!("{cmd:?}") };
        assert_eq!((spec.upload.image_id.as_str(), spec.upload.token.as_str()), ("img-a", "hn-a.00"));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&encode(&cmd)).unwrap(), json);
        let json = serde_json::json!({"proto": PROTOCOL_VERSION, "msg": {"op": "image_from_snapshot",
            "snapshot_id": "snap-a", "volume_id": "vol-a", "format": "qcow2", "image_id": "img-b",
            "url": "http://d/file", "failure_url": "http://d/f", "token": "sn-a.00"}});
        let cmd: Command = decode(json.to_string().as_bytes()).unwrap();
        let Command::ImageFromSnapshot(spec) = &cmd else { panic!("{cmd:?}") };
        assert_eq!((spec.format, spec.upload.url.as_str()), (ImageFormat::Qcow2, "http://d/file"));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&encode(&cmd)).unwrap(), json);
    }

    #[test]
    fn addresses_keep_their_wire_strings() {
        let json = ensure_interface_json();
        let cmd: Command = decode(json.to_string().as_bytes()).unwrap();
        let Command::EnsureInterface(spec) = &cmd else { panic!("{cmd:?}") };
        assert_eq!(spec.mac, "52:54:00:ab:cd:ef".parse::<MacAddr>().unwrap());
        assert_eq!(spec.network.cidr.prefix_len(), 24);
        assert_eq!(spec.security_groups[0].rules[0].cidrs[1], "10.0.0.3/32".parse::<Ipv4Net>().unwrap());
        let again: serde_json::Value = serde_json::from_slice(&encode(&cmd)).unwrap();
        assert_eq!(again, json);

        let nic = serde_json::json!({"id": "vif-a", "network_id": "nw-a", "mac": "52:54:00:ab:cd:ef",
            "ip": "10.0.0.2", "prefix_len": 24, "gateway": "10.0.0.1", "vni": 100});
        let back: NicSpec = serde_json::from_value(nic.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), nic);
    }

    /// A malformed address fails the decode, before any agent acts on it.
    #[test]
    fn malformed_addresses_fail_at_decode() {
        for (field, value) in [
            ("/mac", "52:54:00:ab:cd"),
            ("/ip", "10.0.0.256"),
            ("/floating_ip", "203.0.113"),
            ("/network/cidr", "10.0.0.0"),
            ("/network/gateway", "gw"),
            ("/network/peers/1", "host2"),
            ("/network/external/cidr", "203.0.113.0/33"),
            ("/network/external/snat_ip", ""),
            ("/security_groups/0/rules/0/cidrs/0", "fd00::/64"),
        ] {
            let mut json = ensure_interface_json();
            *json["msg"].pointer_mut(field).unwrap() = value.into();
            let got = decode::<Command>(json.to_string().as_bytes());
            assert!(matches!(got, Err(DecodeError::Malformed(_))), "{field} = {value:?}: {got:?}");
        }
        let reg = |ip: &str| {
            format!(
                r#"{{"proto":1,"msg":{{"node_id":"hn-a","kind":"nwagent","agent_version":"0","host":null,"storage":null,"tunnel_ip":"{ip}"}}}}"#
            )
        };
        assert_eq!(
            decode::<Register>(reg("192.0.2.1").as_bytes()).unwrap().tunnel_ip,
            Some(Ipv4Addr::new(192, 0, 2, 1))
        );
        assert!(matches!(decode::<Register>(reg("192.0.2").as_bytes()), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn commands_round_trip() {
        let cmd = Command::EnsureInstanceAbsent { id: "i-abc".parse().unwrap(), spec_gen: 3 };
        let back: Command = decode(&encode(&cmd)).unwrap();
        assert!(matches!(back, Command::EnsureInstanceAbsent { spec_gen: 3, .. }));
    }
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn trace_ids_travel_and_old_envelopes_still_decode() {
        let t = Trace { resource: "i-abc".into(), job: Some("job-1".into()) };
        let bytes = encode_traced(&Heartbeat { node_id: "hn-x".into(), kind: AgentKind::Hva }, Some(t.clone()));
        let (hb, got): (Heartbeat, _) = decode_traced(&bytes).unwrap();
        assert_eq!((hb.node_id.as_str(), got), ("hn-x", Some(t)));
        let old = format!(r#"{{"proto":{PROTOCOL_VERSION},"msg":{{"node_id":"hn-x","kind":"hva"}}}}"#);
        let (_, none): (Heartbeat, _) = decode_traced(old.as_bytes()).unwrap();
        assert_eq!(none, None);
    }
}
