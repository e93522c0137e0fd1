//! Resource IDs with Wakame-VDC's readable prefixes, each its own type so that an
//! instance ID can never be passed where a volume ID is expected.
//!
//! An ID is `<prefix>-<suffix>`; a generated suffix is 15 base32 characters: 11 from the
//! time in milliseconds and a per-process sequence, so that IDs made by one process sort
//! in the order they were made (pagination relies on it), then 4 random ones.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Why a string is not a valid ID of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid {kind} ID: expected {prefix}- followed by 1 to 40 characters of [0-9a-z]")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub input: String,
}

/// (milliseconds << 10 | sequence) of the last ID made by this process.
static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A strictly increasing (ms, sequence) pair: the sequence counts IDs within one
/// millisecond, and borrows from the next millisecond past 1024 of them.
fn next_stamp() -> u64 {
    use std::sync::atomic::Ordering;
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let candidate = ms << 10;
    let prev = LAST.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(candidate.max(last + 1))).unwrap_or(0);
    candidate.max(prev + 1)
}

fn generate_suffix() -> String {
    use rand::Rng;
    let stamp = next_stamp();
    let mut out = String::with_capacity(15);
    // 55 bits: 45 of milliseconds (enough until the year 3084) and 10 of sequence.
    for i in (0..11).rev() {
        out.push(ALPHABET[((stamp >> (i * 5)) & 31) as usize] as char);
    }
    let mut rng = rand::thread_rng();
    for _ in 0..4 {
        out.push(ALPHABET[rng.gen_range(0..32)] as char);
    }
    out
}

/// Whether `suffix` (what follows an ID's prefix) has the shape of a generated one.
pub fn generated_suffix(suffix: &str) -> bool {
    suffix.len() == 15 && suffix.bytes().all(|b| ALPHABET.contains(&b))
}

fn valid_suffix(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal, $pattern:tt) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, pattern = $pattern, example = json!(concat!($prefix, "-0kq3m5v2ab7x9c")))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const KIND: &'static str = $kind;
            /// What [`FromStr`] accepts, as the OpenAPI `pattern` of this ID.
            pub const PATTERN: &'static str = $pattern;

            /// A new, unique, time-ordered ID.
            pub fn generate() -> Self {
                Self(format!("{}-{}", $prefix, generate_suffix()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                match s.strip_prefix(concat!($prefix, "-")) {
                    Some(rest) if valid_suffix(rest) => Ok(Self(s.to_owned())),
                    _ => Err(IdError { kind: $kind, prefix: $prefix, input: s.chars().take(64).collect() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

define_id!(/** An account (tenant). */ AccountId, "a", "account", "^a-[0-9a-z]{1,40}$");
define_id!(/** An instance (virtual machine or container). */ InstanceId, "i", "instance", "^i-[0-9a-z]{1,40}$");
define_id!(/** A machine image. */ ImageId, "img", "image", "^img-[0-9a-z]{1,40}$");
define_id!(/** A block volume. */ VolumeId, "vol", "volume", "^vol-[0-9a-z]{1,40}$");
define_id!(/** A volume snapshot. */ SnapshotId, "snap", "snapshot", "^snap-[0-9a-z]{1,40}$");
define_id!(/** A virtual network. */ NetworkId, "nw", "network", "^nw-[0-9a-z]{1,40}$");
define_id!(/** A virtual interface of an instance on a network. */ VifId, "vif", "interface", "^vif-[0-9a-z]{1,40}$");
define_id!(/** A security group. */ SecurityGroupId, "sg", "security group", "^sg-[0-9a-z]{1,40}$");
define_id!(
    /** A server group: instances placed together or apart. */ ServerGroupId, "srvg", "server group",
    "^srvg-[0-9a-z]{1,40}$"
);
define_id!(/** A security group rule. */ RuleId, "sgr", "security group rule", "^sgr-[0-9a-z]{1,40}$");
define_id!(/** An ssh key pair. */ KeyPairId, "ssh", "key pair", "^ssh-[0-9a-z]{1,40}$");
define_id!(
    /** A hypervisor host node (where hva and nwagent run). */ HostNodeId, "hn", "host node", "^hn-[0-9a-z]{1,40}$"
);
define_id!(/** A storage node (where sta runs). */ StorageNodeId, "sn", "storage node", "^sn-[0-9a-z]{1,40}$");
define_id!(/** A floating IP. */ FloatingIpId, "fip", "floating IP", "^fip-[0-9a-z]{1,40}$");
define_id!(/** A job: the progress of one long operation. */ JobId, "job", "job", "^job-[0-9a-z]{1,40}$");
define_id!(/** A user: a person or robot holding a role in accounts. */ UserId, "u", "user", "^u-[0-9a-z]{1,40}$");
define_id!(/** An API token of a user in one account. */ TokenId, "tok", "token", "^tok-[0-9a-z]{1,40}$");
define_id!(/** A bundle import: one VDC bundle brought into an account. */ BundleImportId, "imp", "bundle import", "^imp-[0-9a-z]{1,40}$");
define_id!(/** An entry of the audit log: one state-changing API request. */ AuditId, "aud", "audit entry", "^aud-[0-9a-z]{1,40}$");
define_id!(/** One API request, as `x-request-id` names it. */ RequestId, "req", "request", "^req-[0-9a-z]{1,40}$");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = InstanceId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = InstanceId::generate();
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(a.as_str().parse::<InstanceId>().unwrap(), a);
        assert!(a.as_str().starts_with("i-"));
        assert_eq!(a.as_str().len(), 17);
    }

    #[test]
    fn ids_made_in_one_millisecond_still_sort_in_order() {
        let ids: Vec<InstanceId> = (0..5000).map(|_| InstanceId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn wrong_prefix_or_characters_are_refused() {
        assert!("vol-abc".parse::<InstanceId>().is_err());
        assert!("i-".parse::<InstanceId>().is_err());
        assert!("i-ABC".parse::<InstanceId>().is_err());
        assert!("i-abc;drop".parse::<InstanceId>().is_err());
        let err = "img-x".parse::<VolumeId>().unwrap_err();
        assert!(err.to_string().contains("volume"), "{err}");
    }

    #[test]
    fn patterns_say_what_parsing_accepts() {
        fn check<T: std::str::FromStr>(prefix: &str, pattern: &str) {
            assert_eq!(pattern, format!("^{prefix}-[0-9a-z]{{1,40}}$"));
            assert!(format!("{prefix}-{}", "a".repeat(40)).parse::<T>().is_ok());
            assert!(format!("{prefix}-{}", "a".repeat(41)).parse::<T>().is_err());
        }
        check::<AccountId>(AccountId::PREFIX, AccountId::PATTERN);
        check::<InstanceId>(InstanceId::PREFIX, InstanceId::PATTERN);
        check::<ImageId>(ImageId::PREFIX, ImageId::PATTERN);
        check::<VolumeId>(VolumeId::PREFIX, VolumeId::PATTERN);
        check::<SnapshotId>(SnapshotId::PREFIX, SnapshotId::PATTERN);
        check::<NetworkId>(NetworkId::PREFIX, NetworkId::PATTERN);
        check::<VifId>(VifId::PREFIX, VifId::PATTERN);
        check::<SecurityGroupId>(SecurityGroupId::PREFIX, SecurityGroupId::PATTERN);
        check::<RuleId>(RuleId::PREFIX, RuleId::PATTERN);
        check::<KeyPairId>(KeyPairId::PREFIX, KeyPairId::PATTERN);
        check::<HostNodeId>(HostNodeId::PREFIX, HostNodeId::PATTERN);
        check::<StorageNodeId>(StorageNodeId::PREFIX, StorageNodeId::PATTERN);
        check::<FloatingIpId>(FloatingIpId::PREFIX, FloatingIpId::PATTERN);
        check::<JobId>(JobId::PREFIX, JobId::PATTERN);
        check::<ServerGroupId>(ServerGroupId::PREFIX, ServerGroupId::PATTERN);
    }

    #[test]
    fn serde_checks_the_prefix() {
        let ok: InstanceId = serde_json::from_str("\"i-abc123\"").unwrap();
        assert_eq!(ok.as_str(), "i-abc123");
        assert!(serde_json::from_str::<InstanceId>("\"vol-abc123\"").is_err());
    }
}
