//! Shared vocabulary: kinds and states, with their wire spellings.
//!
//! Instance states, after Wakame-VDC:
//!
//! ```text
//!   create ──► scheduling ──► pending ──► starting ──► running ──► stopping ──► stopped
//!                                             ▲           │  ▲                     │ start
//!                                             │    halt   ▼  │ poweron             ▼
//!                                             │         halting ──► halted    scheduling …
//!                                             └────────────────────────┘
//!   any ── terminate ──► shuttingdown ──► terminated         any ── error ──► failed
//! ```
//!
//! `halted` keeps the host (and its reservation); `stopped` releases it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An unknown spelling of one of the enums below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid {kind}; expected one of: {}", listed(.expected))]
pub struct ParseEnumError {
    pub kind: &'static str,
    pub input: String,
    /// The spellings, each followed by a space.
    pub expected: &'static str,
}

/// "a, b, c" of "a b c ".
fn listed(spellings: &str) -> String {
    spellings.split_whitespace().collect::<Vec<_>>().join(", ")
}

// The spellings are `tt`, not `literal`: a `literal` fragment reaches derive macros
// wrapped in an invisible group, and utoipa's reading of `#[serde(rename = ...)]` then
// misses it, so the OpenAPI document showed the Rust variant names instead of these.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal, { $($variant:ident => $s:tt),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, ParseEnumError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(ParseEnumError {
                        kind: $kind,
                        input: s.chars().take(64).collect(),
                        expected: concat!($($s, " "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// What a user may do in an account: `owner` manages members and tokens, `member`
    /// does everything else, `reader` only reads.
    Role, "role", {
        Reader => "reader", Member => "member", Owner => "owner",
    }
);

wire_enum!(
    /// How a server group places its members: `affinity`, all on one host;
    /// `anti-affinity`, each on a host of its own; the `soft-` forms prefer so but place
    /// anyway when they cannot.
    ServerGroupPolicy, "server group policy", {
        Affinity => "affinity", AntiAffinity => "anti-affinity",
        SoftAffinity => "soft-affinity", SoftAntiAffinity => "soft-anti-affinity",
    }
);

wire_enum!(
    /// Where an account stands with an image shared with it: `pending` (offered, not
    /// listed; it can be shown and booted by its ID), `accepted` (listed, found by its
    /// name) or `rejected` (declined: hidden, and not offered again).
    MemberStatus, "member status", {
        Pending => "pending", Accepted => "accepted", Rejected => "rejected",
    }
);

wire_enum!(
    /// How an instance is run. The image lists the kinds it can boot on.
    HypervisorKind, "hypervisor kind", {
        Kvm => "kvm", Qemu => "qemu", Lxc => "lxc",
    }
);

wire_enum!(
    /// The lifecycle state of an instance as the user sees it.
    InstanceState, "instance state", {
        Scheduling => "scheduling",
        Pending => "pending",
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Halting => "halting",
        Halted => "halted",
        ShuttingDown => "shuttingdown",
        Terminated => "terminated",
        Failed => "failed",
        Capturing => "capturing",
    }
);

wire_enum!(
    /// What the user asked an instance to be: dcmgr's intent.
    InstanceGoal, "instance goal", {
        Running => "running", Halted => "halted", Stopped => "stopped", Terminated => "terminated",
    }
);

wire_enum!(
    /// What an agent asks its driver to make true for one instance.
    DesiredPower, "desired power state", {
        Running => "running", Off => "off",
    }
);

wire_enum!(
    /// What hva saw of one instance on its host.
    ObservedInstance, "observed instance state", {
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Off => "off",
        Absent => "absent",
        Failed => "failed",
    }
);

wire_enum!(
    /// A user-requested instance action.
    InstanceAction, "instance action", {
        Start => "start", Stop => "stop", Halt => "halt", Poweron => "poweron",
        Reboot => "reboot", Terminate => "terminate",
    }
);

wire_enum!(
    VolumeState, "volume state", {
        Creating => "creating",
        Available => "available",
        Attaching => "attaching",
        Attached => "attached",
        Detaching => "detaching",
        Deleting => "deleting",
        Deleted => "deleted",
        Failed => "failed",
    }
);

wire_enum!(
    SnapshotState, "snapshot state", {
        Creating => "creating", Available => "available", Deleting => "deleting",
        Deleted => "deleted", Failed => "failed",
    }
);

wire_enum!(
    /// What sta saw of a volume or snapshot.
    ObservedStorage, "observed storage state", {
        Creating => "creating", Available => "available", Absent => "absent", Failed => "failed",
    }
);

wire_enum!(
    /// What nwagent saw of an interface.
    ObservedInterface, "observed interface state", {
        Active => "active", Absent => "absent", Failed => "failed",
    }
);

wire_enum!(
    InterfaceState, "interface state", {
        Pending => "pending", Active => "active", Failed => "failed", Deleted => "deleted",
    }
);

wire_enum!(
    JobState, "job state", {
        Running => "running", Succeeded => "succeeded", Failed => "failed", Cancelled => "cancelled",
    }
);

wire_enum!(
    NodeState, "node state", { Online => "online", Offline => "offline" }
);

wire_enum!(
    ImageFormat, "image format", {
        Raw => "raw", Qcow2 => "qcow2", Tar => "tar", Dir => "dir", Kernel => "kernel",
    }
);

wire_enum!(
    /// An image is `pending` until its data is stored and checked (upload, URL import),
    /// then `available`; `failed` (with `failure_reason`) when its data was refused.
    ImageState, "image state", { Pending => "pending", Available => "available", Failed => "failed" }
);

wire_enum!(
    /// How a disk image's bootloader is started: legacy BIOS, or UEFI firmware (OVMF).
    BootMode, "boot mode", { Bios => "bios", Uefi => "uefi" }
);

// By hand: wire_enum! takes no variant attributes, so `#[default]` cannot be derived.
#[allow(clippy::derivable_impls)]
impl Default for BootMode {
    fn default() -> Self {
        BootMode::Bios
    }
}

wire_enum!(
    Arch, "architecture", { X86_64 => "x86_64", Aarch64 => "aarch64" }
);

wire_enum!(
    Protocol, "protocol", { Tcp => "tcp", Udp => "udp", Icmp => "icmp", Any => "any" }
);

wire_enum!(
    Direction, "direction", { Ingress => "ingress", Egress => "egress" }
);

wire_enum!(
    StorageBackend, "storage backend", { Zfs => "zfs", File => "file", Btrfs => "btrfs", Sim => "sim" }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        let err = "kvmm".parse::<HypervisorKind>().unwrap_err();
        assert!(err.to_string().ends_with("expected one of: kvm, qemu, lxc"), "{err}");
    }

    /// The OpenAPI schema of every enum lists exactly the spellings serde sends.
    #[test]
    fn openapi_schemas_list_the_wire_spellings() {
        fn check<T: utoipa::PartialSchema + Serialize>(all: &[T]) {
            let schema = serde_json::to_value(T::schema()).unwrap();
            let listed: Vec<String> = serde_json::from_value(schema["enum"].clone()).unwrap();
            let wire: Vec<String> =
                all.iter().map(|v| serde_json::to_value(v).unwrap().as_str().unwrap().into()).collect();
            assert_eq!(listed, wire, "{schema}");
        }
        check(HypervisorKind::ALL);
        check(InstanceState::ALL);
        check(InstanceGoal::ALL);
        check(DesiredPower::ALL);
        check(ObservedInstance::ALL);
        check(InstanceAction::ALL);
        check(VolumeState::ALL);
        check(SnapshotState::ALL);
        check(ObservedStorage::ALL);
        check(ObservedInterface::ALL);
        check(InterfaceState::ALL);
        check(JobState::ALL);
        check(NodeState::ALL);
        check(ImageFormat::ALL);
        check(ImageState::ALL);
        check(Arch::ALL);
        check(BootMode::ALL);
        check(Protocol::ALL);
        check(Direction::ALL);
        check(StorageBackend::ALL);
    }
}
