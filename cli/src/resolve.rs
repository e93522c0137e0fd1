//! Resources named on the command line by name or by ID.
//!
//! An argument that parses as an ID of the right kind and exists is that resource; anything
//! else is looked up by exact name with the list endpoint's `?name=` filter, which covers
//! what the caller can see (their own resources, and public images). A name may belong to
//! several resources: that is refused with the candidates listed, never guessed.

use crate::client::{Client, ClientError};
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use vdc_schema::api::*;
use vdc_schema::*;

/// A resource the CLI can find by name.
pub trait Named: DeserializeOwned {
    type Id: FromStr + fmt::Display + Clone;
    /// What the user calls it, e.g. `network`.
    const KIND: &'static str;
    /// The collection's API path, e.g. `/networks`.
    const PATH: &'static str;
    /// The CLI noun, e.g. `network` in `vdc network list`.
    const NOUN: &'static str;
    fn id(&self) -> &Self::Id;
    fn name(&self) -> &str;
    /// Extra words shown beside a candidate of an ambiguous name.
    fn note(&self) -> Option<&'static str> {
        None
    }
    /// Terminated or deleted: still listed, but a live one of the same name is meant.
    fn gone(&self) -> bool {
        false
    }
}

macro_rules! named {
    ($t:ty, $id:ty, $kind:literal, $path:literal, $noun:literal $(, gone when $gone:expr)?) => {
        impl Named for $t {
            type Id = $id;
            const KIND: &'static str = $kind;
            const PATH: &'static str = $path;
            const NOUN: &'static str = $noun;
            fn id(&self) -> &$id {
                &self.id
            }
            fn name(&self) -> &str {
                &self.name
            }
            $(
                fn gone(&self) -> bool {
                    self.state == $gone
                }
            )?
        }
    };
}

named!(Account, AccountId, "account", "/accounts", "account");
named!(User, UserId, "user", "/users", "user");
named!(Token, TokenId, "token", "/tokens", "token");
named!(KeyPair, KeyPairId, "key pair", "/keypairs", "keypair");
named!(Network, NetworkId, "network", "/networks", "network");
named!(SecurityGroup, SecurityGroupId, "security group", "/security_groups", "secgroup");
named!(Instance, InstanceId, "instance", "/instances", "instance", gone when InstanceState::Terminated);
named!(ServerGroup, ServerGroupId, "server group", "/server_groups", "server-group");
named!(Volume, VolumeId, "volume", "/volumes", "volume", gone when VolumeState::Deleted);
named!(Snapshot, SnapshotId, "snapshot", "/snapshots", "snapshot", gone when SnapshotState::Deleted);

impl Named for Image {
    type Id = ImageId;
    const KIND: &'static str = "image";
    const PATH: &'static str = "/images";
    const NOUN: &'static str = "image";
    fn id(&self) -> &ImageId {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn note(&self) -> Option<&'static str> {
        self.public.then_some("public")
    }
}

/// A command-line argument naming a `T` by name or ID, resolved with [`resolve`].
pub struct Ref<T> {
    raw: String,
    kind: PhantomData<fn() -> T>,
}

impl<T> Ref<T> {
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl<T> Clone for Ref<T> {
    fn clone(&self) -> Self {
        Ref { raw: self.raw.clone(), kind: PhantomData }
    }
}

impl<T> fmt::Debug for Ref<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl<T> fmt::Display for Ref<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl<T> FromStr for Ref<T> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let raw = s.trim();
        if raw.is_empty() {
            return Err("expected a name or an ID".into());
        }
        Ok(Ref { raw: raw.to_string(), kind: PhantomData })
    }
}

/// One resource a name matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub note: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no {kind} has the name or ID {arg:?}; see `vdc {noun} list`")]
    NotFound { kind: &'static str, noun: &'static str, arg: String },
    #[error("{} {kind}s are named {arg:?}\n{}\nuse one of these IDs instead", .candidates.len(), list(.candidates))]
    Ambiguous { kind: &'static str, arg: String, candidates: Vec<Candidate> },
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ResolveError {
    pub fn code(&self) -> &str {
        match self {
            ResolveError::NotFound { .. } => "not_found",
            ResolveError::Ambiguous { .. } => "ambiguous_name",
            ResolveError::Client(e) => e.code(),
        }
    }
}

fn list(candidates: &[Candidate]) -> String {
    candidates
        .iter()
        .map(|c| match c.note {
            Some(n) => format!("  {}  {} ({n})", c.id, c.name),
            None => format!("  {}  {}", c.id, c.name),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one match of `arg` among the resources listed under that name. Terminated
/// instances and deleted volumes and snapshots stay listed under their names: a name
/// used again after a terminate or delete means the live one, and a gone one is still
/// found while it is the only one.
pub fn pick<T: Named>(arg: &str, matches: &[T]) -> Result<T::Id, ResolveError> {
    let mut exact: Vec<&T> = matches.iter().filter(|m| m.name() == arg).collect();
    if exact.iter().any(|m| !m.gone()) {
        exact.retain(|m| !m.gone());
    }
    match exact.as_slice() {
        [one] => Ok(one.id().clone()),
        [] => Err(ResolveError::NotFound { kind: T::KIND, noun: T::NOUN, arg: arg.to_string() }),
        many => Err(ResolveError::Ambiguous {
            kind: T::KIND,
            arg: arg.to_string(),
            candidates: many
                .iter()
                .map(|m| Candidate { id: m.id().to_string(), name: m.name().to_string(), note: m.note() })
                .collect(),
        }),
    }
}

/// The ID `r` stands for: an existing ID as is, else the one resource of that name.
pub async fn resolve<T: Named>(client: &Client, r: &Ref<T>) -> Result<T::Id, ResolveError> {
    let arg = r.as_str();
    if let Ok(id) = arg.parse::<T::Id>() {
        // A name may look like an ID (`nw-1`); only an existing ID wins outright. A
        // generated one not found (deleted) is not looked up as a name: names of that
        // shape are refused, and one made before would be another resource's.
        match client.get::<serde_json::Value>(&format!("{}/{id}", T::PATH)).await {
            Ok(_) => return Ok(id),
            Err(e) if e.is_not_found() && generated(arg) => {
                return Err(ResolveError::NotFound { kind: T::KIND, noun: T::NOUN, arg: arg.to_string() })
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let query = ListQuery { name: Some(arg.to_string()), ..Default::default() };
    let matches: Vec<T> = client.list_all(T::PATH, &query).await?;
    pick(arg, &matches)
}

/// Whether `arg` (an ID of some kind) has a generated suffix.
fn generated(arg: &str) -> bool {
    arg.split_once('-').is_some_and(|(_, suffix)| vdc_schema::id::generated_suffix(suffix))
}

/// [`resolve`] for each of `refs`, in order.
pub async fn resolve_all<T: Named>(client: &Client, refs: &[Ref<T>]) -> Result<Vec<T::Id>, ResolveError> {
    let mut ids = Vec::with_capacity(refs.len());
    for r in refs {
        ids.push(resolve(client, r).await?);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, name: &str) -> Network {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
            "dhcp_start": "10.0.0.2", "dhcp_end": "10.0.0.254", "vni": 1,
            "created_at": "2024-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn image(id: &str, name: &str, public: bool) -> Image {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "format": "qcow2", "arch": "x86_64", "hypervisors": ["qemu"],
            "source": "/x", "checksum": null, "initrd": null, "kernel_cmdline": null,
            "public": public, "created_at": "2024-01-01T00:00:00Z", "state": "available",
        }))
        .unwrap()
    }

    #[test]
    fn only_generated_ids_are_never_names() {
        assert!(generated("img-1m95xw75001qhyg"));
        assert!(!generated("nw-1"));
        assert!(!generated("img-root"));
    }

    #[test]
    fn one_match_is_its_id() {
        let id = pick("net1", &[net("nw-a", "net1")]).unwrap();
        assert_eq!(id.as_str(), "nw-a");
        // The server's filter is exact, but a lax one must not make a wrong match.
        let id = pick("net1", &[net("nw-b", "Net1"), net("nw-a", "net1")]).unwrap();
        assert_eq!(id.as_str(), "nw-a");
    }

    #[test]
    fn no_match_says_where_to_look() {
        let err = pick::<Network>("net9", &[]).unwrap_err();
        assert_eq!(err.code(), "not_found");
        assert_eq!(err.to_string(), "no network has the name or ID \"net9\"; see `vdc network list`");
    }

    #[test]
    fn several_matches_list_the_candidates() {
        let err = pick("debian", &[image("img-a", "debian", false), image("img-b", "debian", true)]).unwrap_err();
        assert_eq!(err.code(), "ambiguous_name");
        let msg = err.to_string();
        assert_eq!(
            msg,
            "2 images are named \"debian\"\n  img-a  debian\n  img-b  debian (public)\nuse one of these IDs instead"
        );
    }

    fn instance(id: &str, name: &str, state: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": id, "account_id": "a-1", "name": name, "state": state, "goal": "running", "image_id": "img-a",
            "hypervisor": "qemu", "cpus": 1, "memory_mib": 256, "host_node_id": null, "ssh_key_id": null,
            "root_disk_size": null, "interfaces": [], "volumes": [], "failure_reason": null,
            "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_name_used_again_means_the_live_one() {
        let old = instance("i-old", "web1", "terminated");
        let new = instance("i-new", "web1", "running");
        assert_eq!(pick("web1", &[old.clone(), new.clone()]).unwrap().as_str(), "i-new");
        // Only gone ones: the one is still found (to show it), several are ambiguous.
        assert_eq!(pick("web1", std::slice::from_ref(&old)).unwrap().as_str(), "i-old");
        let err = pick("web1", &[old.clone(), instance("i-old2", "web1", "terminated")]).unwrap_err();
        assert_eq!(err.code(), "ambiguous_name");
        // Two live ones stay ambiguous, and the gone one is not offered.
        let err = pick("web1", &[old, new, instance("i-new2", "web1", "stopped")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 instances are named \"web1\"\n  i-new  web1\n  i-new2  web1\nuse one of these IDs instead"
        );
    }

    #[test]
    fn refs_parse_trimmed_and_refuse_empty() {
        let r: Ref<Network> = " net1 ".parse().unwrap();
        assert_eq!(r.as_str(), "net1");
        assert!("  ".parse::<Ref<Network>>().is_err());
    }

    #[tokio::test]
    async fn ids_are_checked_then_names_are_looked_up() {
        let (base, log) = crate::testutil::mock(|req| match req.target.as_str() {
            "/api/v1/networks/nw-a" => (200, serde_json::to_string(&net("nw-a", "x")).unwrap()),
            t if t.starts_with("/api/v1/networks/") => (404, r#"{"error":{"code":"not_found","message":"no"}}"#.into()),
            t if t.contains("name=nw-1") => {
                (200, serde_json::json!({"items": [net("nw-c", "nw-1")], "next_cursor": null}).to_string())
            }
            t if t.contains("name=twice") => (
                200,
                serde_json::json!({"items": [net("nw-d", "twice"), net("nw-e", "twice")], "next_cursor": null})
                    .to_string(),
            ),
            _ => (200, r#"{"items": [], "next_cursor": null}"#.into()),
        })
        .await;
        let c = Client::new(base, "t");
        let r = |s: &str| s.parse::<Ref<Network>>().unwrap();
        assert_eq!(resolve(&c, &r("nw-a")).await.unwrap().as_str(), "nw-a");
        // Shaped like an ID, but it is a name.
        assert_eq!(resolve(&c, &r("nw-1")).await.unwrap().as_str(), "nw-c");
        let err = resolve(&c, &r("twice")).await.unwrap_err();
        assert!(matches!(&err, ResolveError::Ambiguous { candidates, .. } if candidates.len() == 2), "{err}");
        let err = resolve(&c, &r("nothing")).await.unwrap_err();
        assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");
        let targets: Vec<String> = log.lock().unwrap().iter().map(|s| s.target.clone()).collect();
        assert_eq!(targets[0], "/api/v1/networks/nw-a");
        assert_eq!(targets[1], "/api/v1/networks/nw-1");
        assert!(targets[2].starts_with("/api/v1/networks?") && targets[2].contains("name=nw-1"), "{targets:?}");
    }
}
