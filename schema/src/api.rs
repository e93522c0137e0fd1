//! Web API bodies for `/api/v1`. Requests refuse unknown fields so that a typo is an error,
//! not a silently ignored setting; responses may grow fields (clients must ignore them).
//!
//! Addresses in responses are typed ([`crate::net`]); their `#[schema(value_type = String,
//! …)]` keeps the OpenAPI document as it was. Requests carry addresses as strings: dcmgr
//! parses them itself and says what to send instead, which a serde error could not.

use crate::id::*;
use crate::net::{Ipv4Addr, Ipv4Net, MacAddr};
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
    "users",
    "tokens",
    "quotas",
    "events",
    "audit",
    "whoami",
    "server_groups",
];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiInfo {
    pub api_version: String,
    pub server_version: String,
    pub extensions: Vec<String>,
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "instance i-0kq3m5v2ab7x9c not found"}}))]
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
    /// Null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Query parameters shared by every list; any other parameter is refused (400).
///
/// The document shows `limit` and `cursor` from here; each list declares the `state`
/// (typed with its own states) and `name` filters it applies, beside its `params(...)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many items (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(max_length = 64, pattern = "^[0-9A-Za-z-]*$")]
    pub cursor: Option<String>,
    /// Only items in this state.
    #[param(ignore)]
    pub state: Option<String>,
    /// Only items with this exact name.
    #[param(ignore)]
    pub name: Option<String>,
    /// Instances only: an admin's list of every account's instances.
    #[param(ignore)]
    pub all_accounts: Option<bool>,
    /// Instances only: the instance with this address (an interface's or a floating IP).
    #[param(ignore)]
    pub address: Option<String>,
    /// Images only: which images shared with the account are listed.
    #[param(ignore)]
    pub member_status: Option<String>,
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
    /// 1 to 64 of `[A-Za-z0-9._-]`, unique in the cloud.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
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

// ---------------------------------------------------------------- users, members, tokens

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub name: String,
    /// A cloud operator: manages accounts, users, nodes and public images.
    pub admin: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 of `[A-Za-z0-9._-]`, unique in the cloud.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    #[serde(default)]
    pub admin: bool,
    /// A password to sign in to the console with (at least 10 characters, at most 1024
    /// bytes); stored as an Argon2id hash, never shown. Absent: tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A user's new password: `PUT /api/v1/users/{id}/password` (the user itself, or an admin).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// At least 10 characters, at most 1024 bytes; `null` removes the password (tokens only).
    pub password: Option<String>,
    /// The user's password now: required when users change (or remove) their own
    /// password and have one, so that a session or token someone else got hold of cannot
    /// lock them out. An admin setting another user's password leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
}

impl std::fmt::Debug for SetPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetPassword")
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("current_password", &self.current_password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Signing in: `POST /api/v1/sessions`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The user's name.
    pub user: String,
    pub password: String,
    /// The account to act in (its ID or name; the user must be a member). Default: the
    /// account the user was first made a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl std::fmt::Debug for CreateSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSession").field("user", &self.user).field("account", &self.account).finish()
    }
}

/// Switching accounts: `POST /api/v1/sessions/switch` with a session token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchSession {
    /// Another account of the user (its ID or name).
    pub account: String,
}

/// A session: a short-lived token (`[auth] session_ttl_secs`) of the user in one account.
/// The secret is shown only in this answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The session's token ID (`tok-…`; listed with the user's tokens, revocable).
    pub id: TokenId,
    /// The secret: `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
    /// The account the session acts in.
    pub account: Account,
    /// The user's role there.
    pub role: Role,
    /// Whether the session acts as a cloud operator.
    pub admin: bool,
    /// Every account the user holds a role in, by name.
    pub accounts: Vec<WhoamiAccount>,
}

/// A user's role in an account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub account_id: AccountId,
    pub user_id: UserId,
    pub user_name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// Gives a user a role in the account, or changes the role it has.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The user's name.
    pub user: String,
    pub role: Role,
}

/// An API token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: TokenId,
    pub name: String,
    pub account_id: AccountId,
    pub user_id: UserId,
    /// At most this role, whatever the user's; absent: the user's role in the account.
    pub role: Option<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 64 of `[A-Za-z0-9._-]`, unique among the user's live tokens in the account.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// The account the token acts in (the caller's user must be a member); default: the
    /// caller's token's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    /// When it stops working (RFC 3339, in the future).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Cap the token's role below the user's (e.g. a `reader` token for a dashboard); a role
    /// above the user's (or the calling token's) is refused, `invalid_role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A token for another user, a member of the account (a cloud admin's call only): how
    /// a new user gets a first token. Default: the caller's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
}

/// A new token and its secret, shown only in this answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: Token,
    pub secret: String,
}

/// Who a token acts as: `GET /api/v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    pub user: User,
    /// The token of this call (its role cap and expiry).
    pub token: Token,
    /// The account the token acts in.
    pub account: Account,
    /// The role the token acts with there: the user's role, capped by the token's.
    pub role: Role,
    /// Whether this token acts as a cloud operator (an admin user's token without a cap).
    pub admin: bool,
    /// Every account the user holds a role in, by name.
    pub accounts: Vec<WhoamiAccount>,
}

/// One of a user's accounts and its role there.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiAccount {
    pub account_id: AccountId,
    pub account_name: String,
    pub role: Role,
}

// ---------------------------------------------------------------- audit

/// One state-changing API request (POST, PUT, PATCH, DELETE under `/api/v1`), answered
/// or refused, as the audit log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: AuditId,
    pub time: DateTime<Utc>,
    /// Absent when the request had no token dcmgr knows (401); a revoked or expired
    /// token's user, and a sign-in's user when the name exists.
    pub user_id: Option<UserId>,
    /// The token of the call, also when it was refused as revoked or expired; a sign-in's
    /// new session.
    pub token_id: Option<TokenId>,
    /// The account the token acts in (absent without a known token).
    pub account_id: Option<AccountId>,
    /// The operation, `<kind>.<verb>` (`instance.create`, `volume.attach`,
    /// `account.member_add`); `unknown` for a route that does not exist.
    pub action: String,
    /// What the request is about (`instance`, `volume`, `account`, …); empty when unknown.
    pub resource_kind: String,
    /// The ID in the path, or the created ID when a create answered with one.
    pub resource_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code of a refusal (`quota_exceeded`, `read_only`, …).
    pub error_code: Option<String>,
    /// The `x-request-id` the response carried.
    pub request_id: RequestId,
    /// The client's address and port, as dcmgr saw it.
    pub source: String,
    pub duration_ms: u64,
}

/// `GET /api/v1/audit`: newest first; filters combine with AND.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this account's entries (an owner: only their own account).
    pub account: Option<AccountId>,
    /// Only this user's entries.
    pub user: Option<UserId>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Only this action (`instance.create`).
    #[param(max_length = 64)]
    pub action: Option<String>,
    /// At most this many entries (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (older entries follow).
    #[param(max_length = 64, pattern = "^[0-9A-Za-z-]*$")]
    pub cursor: Option<String>,
}

// ---------------------------------------------------------------- quotas

/// What a quota limits, per account. Counts are of live objects (instances not
/// terminated, volumes and snapshots not deleted); sizes are in the unit the name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaKey {
    Instances,
    Vcpus,
    MemoryMib,
    Volumes,
    VolumeGib,
    Snapshots,
    Networks,
    SecurityGroups,
    FloatingIps,
    Images,
    ImageGib,
    Keypairs,
    ServerGroups,
    /// GiB of root disks instances book on their hosts (disk images' sizes; containers
    /// book none yet).
    RootDiskGib,
}

impl QuotaKey {
    pub const ALL: [QuotaKey; 14] = [
        QuotaKey::Instances,
        QuotaKey::Vcpus,
        QuotaKey::MemoryMib,
        QuotaKey::Volumes,
        QuotaKey::VolumeGib,
        QuotaKey::Snapshots,
        QuotaKey::Networks,
        QuotaKey::SecurityGroups,
        QuotaKey::FloatingIps,
        QuotaKey::Images,
        QuotaKey::ImageGib,
        QuotaKey::Keypairs,
        QuotaKey::ServerGroups,
        QuotaKey::RootDiskGib,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKey::Instances => "instances",
            QuotaKey::Vcpus => "vcpus",
            QuotaKey::MemoryMib => "memory_mib",
            QuotaKey::Volumes => "volumes",
            QuotaKey::VolumeGib => "volume_gib",
            QuotaKey::Snapshots => "snapshots",
            QuotaKey::Networks => "networks",
            QuotaKey::SecurityGroups => "security_groups",
            QuotaKey::FloatingIps => "floating_ips",
            QuotaKey::Images => "images",
            QuotaKey::ImageGib => "image_gib",
            QuotaKey::Keypairs => "keypairs",
            QuotaKey::ServerGroups => "server_groups",
            QuotaKey::RootDiskGib => "root_disk_gib",
        }
    }
}

impl std::fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QuotaKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QuotaKey::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = QuotaKey::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown quota {s:?}: use one of {}", all.join(", "))
        })
    }
}

/// One quota of an account: its limit and what is used of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    pub key: QuotaKey,
    /// The limit; absent (null) when unlimited.
    pub limit: Option<u64>,
    /// What the account holds now (sizes rounded up to whole GiB).
    pub used: u64,
    /// True when the limit was set for this account; false when it is dcmgr's default.
    pub set_for_account: bool,
}

/// An account's quotas with their usage, in [`QuotaKey::ALL`]'s order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountQuotas {
    pub account_id: AccountId,
    pub quotas: Vec<QuotaUsage>,
}

/// Sets quotas of one account (admin). Keys not named keep their limit; a null value
/// returns that key to dcmgr's configured default. An unknown key or a negative value
/// is refused (422 `invalid_quota`) and nothing is changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuotas {
    /// Quota key → limit (an integer ≥ 0), or null for the default.
    #[schema(example = json!({"instances": 10, "vcpus": 20, "keypairs": null}))]
    pub quotas: std::collections::BTreeMap<String, Option<i64>>,
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
    /// 1 to 64 printable characters, no leading or trailing space; unique in the account.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// One OpenSSH public key line, e.g. `ssh-ed25519 AAAA… comment`.
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyPairCreated {
    pub keypair: KeyPair,
    /// Only for a generated key, and only in this answer: save it now. Null otherwise.
    #[schema(required = true)]
    pub private_key: Option<String>,
}

// ---------------------------------------------------------------- server groups

/// Instances placed together (`affinity`) or apart (`anti-affinity`), as OpenStack's
/// server groups. An instance joins at create (`server_group`) and leaves when it is
/// terminated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerGroup {
    pub id: ServerGroupId,
    pub name: String,
    pub policy: ServerGroupPolicy,
    /// Its instances that are not terminated, oldest first.
    pub members: Vec<InstanceId>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServerGroup {
    /// 1 to 64 printable characters, no leading or trailing space; unique in the account.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    pub policy: ServerGroupPolicy,
}

// ---------------------------------------------------------------- images

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: ImageId,
    pub name: String,
    pub format: ImageFormat,
    pub arch: Arch,
    pub hypervisors: Vec<HypervisorKind>,
    /// Where the data came from: `upload`, the `http(s)://` URL dcmgr imported, or (for an
    /// operator's image) a host file or `builtin:NAME`. Another account's image shows the
    /// kind only: `upload`, `builtin:NAME`, `https://HOST/…`, `snapshot`, `capture`,
    /// `bundle` or `host file`.
    pub source: String,
    /// `sha256:<hex>` of the image data: for stored images (upload, URL import) the digest
    /// dcmgr computed; hosts verify it as they fetch.
    #[schema(required = true)]
    pub checksum: Option<String>,
    /// `pending` until the data is stored and checked, then `available` (only then can it
    /// boot) or `failed`.
    pub state: ImageState,
    /// Why the data was refused (`failed` only).
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    /// Bytes of the stored data (stored images only).
    #[schema(required = true)]
    pub size_bytes: Option<u64>,
    /// Bytes of the disk a qcow2 or raw image holds, read from its data when it was
    /// stored: a volume from the image is at least this large (and this large when its
    /// size is left out), as is an instance's root disk. For a tar image, the bytes it
    /// unpacks to: a container's root filesystem is at least this large. Null where dcmgr
    /// has not read it (an operator's host file, an image stored before it was recorded).
    #[serde(default)]
    #[schema(required = true)]
    pub virtual_size: Option<u64>,
    /// For `kernel` images: the initrd, beside the kernel in `source`.
    #[schema(required = true)]
    pub initrd: Option<String>,
    #[schema(required = true)]
    pub kernel_cmdline: Option<String>,
    /// How a disk image boots: `bios` (default) or `uefi` (hosts with OVMF only).
    /// (`bios` when an older dcmgr leaves it out.)
    #[serde(default)]
    #[schema(required = true)]
    pub boot_mode: BootMode,
    /// For disk images booted by an outside kernel, like an AMI naming its AKI and ARI: the
    /// `kernel` image (kernel, initrd, command line) started with this disk as `vda`.
    #[schema(required = true)]
    pub kernel_id: Option<ImageId>,
    /// Smallest root disk (bytes) the image works with; instances ask for at least this.
    #[schema(required = true)]
    pub min_disk: Option<u64>,
    /// Smallest instance memory (bytes) the image works with.
    #[schema(required = true)]
    pub min_memory: Option<u64>,
    /// What is inside, free text such as `debian-12`.
    #[schema(required = true)]
    pub os: Option<String>,
    /// Visible to every account (only an admin can publish).
    pub public: bool,
    /// The account that owns it (and alone can change, share or delete it). Null only
    /// from an older dcmgr.
    #[serde(default)]
    #[schema(required = true)]
    pub owner: Option<AccountId>,
    /// For an image another account shares with the caller's: `pending` until the
    /// caller accepts it (`PUT /images/{id}/members/{its own account}`), then `accepted`.
    /// Null for the caller's own images and public ones.
    #[serde(default)]
    #[schema(required = true)]
    pub member_status: Option<MemberStatus>,
    pub created_at: DateTime<Utc>,
    /// The user `vdc instance ssh` logs in as (e.g. `debian`, `root`), if the image says.
    #[serde(default)]
    #[schema(required = true)]
    pub default_user: Option<String>,
}

/// `POST /api/v1/instances/{id}/capture`: a new image from a stopped instance's root disk.
/// The image inherits the source image's properties (format of the disk, architecture,
/// hypervisors, boot mode, kernel, default user, OS, minimum disk and memory); the
/// optional fields here replace them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureInstance {
    /// The new image's name: 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub image_name: String,
    /// Free text such as `debian-12`, at most 64 characters.
    #[schema(max_length = 64)]
    pub os: Option<String>,
    /// Bytes. Left out: the root disk the instance had (a container's root filesystem),
    /// or its image's `min_disk` if larger.
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub min_disk: Option<u64>,
    /// Bytes.
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub min_memory: Option<u64>,
    /// A POSIX user name (`[a-z_][a-z0-9_-]*`, ≤ 32).
    pub default_user: Option<String>,
}

/// `POST /api/v1/snapshots/{id}/image`: a new image (yours, private) holding the
/// snapshot's blocks. A volume is a raw block device, so the image is `raw` unless
/// `qcow2` is asked for (the storage node converts). As with any upload, the real format
/// is probed and checked before the image is `available`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotImage {
    /// The new image's name: 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub image_name: String,
    /// `raw` (default) or `qcow2`. Blocks that begin with a disk image format's header
    /// are stored as qcow2 even when raw is asked: raw, they would be read as that image.
    pub format: Option<ImageFormat>,
    /// Default `x86_64`.
    pub arch: Option<Arch>,
    /// Default `[kvm, qemu]`: a disk boots in a virtual machine, not a container.
    pub hypervisors: Option<Vec<HypervisorKind>>,
    /// `bios` (default) or `uefi`.
    pub boot_mode: Option<BootMode>,
    /// Free text such as `debian-12`, at most 64 characters.
    #[schema(max_length = 64)]
    pub os: Option<String>,
    /// Bytes.
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub min_disk: Option<u64>,
    /// Bytes.
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub min_memory: Option<u64>,
    /// A POSIX user name (`[a-z_][a-z0-9_-]*`, ≤ 32).
    pub default_user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    pub format: ImageFormat,
    #[serde(default = "default_arch")]
    pub arch: Arch,
    /// At least one.
    #[schema(min_items = 1)]
    pub hypervisors: Vec<HypervisorKind>,
    /// Where the data comes from, at most 4096 bytes:
    /// - absent: the image is `pending` until its data is uploaded with
    ///   `PUT /api/v1/images/{id}/file`;
    /// - an `http(s)://` URL: dcmgr fetches it (public addresses only, unless the operator
    ///   allows others) and checks it; the image is `pending` meanwhile;
    /// - a host path, `file://` URL or `builtin:NAME`: operators (admin) only, in the
    ///   directories dcmgr's configuration names.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub source: Option<String>,
    /// `sha256:` and 64 hex digits: the data must have this digest (or the image fails).
    #[schema(pattern = "^sha256:[0-9A-Fa-f]{64}$")]
    pub checksum: Option<String>,
    /// Required for `kernel` images, refused for others.
    pub initrd: Option<String>,
    /// One line of at most 2048 bytes; `kernel` images only.
    pub kernel_cmdline: Option<String>,
    /// `bios` (default) or `uefi`; disk images (`qcow2`, `raw`) only.
    #[serde(default)]
    pub boot_mode: BootMode,
    /// A `kernel` image to boot this disk image with (`qcow2`/`raw` only): the instance gets
    /// that kernel, initrd and command line, and this image as its root disk `vda`.
    pub kernel_id: Option<ImageId>,
    /// Bytes; disk images only.
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub min_disk: Option<u64>,
    /// Bytes.
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub min_memory: Option<u64>,
    /// Free text such as `debian-12`, at most 64 characters.
    #[schema(max_length = 64)]
    pub os: Option<String>,
    /// Only an admin can publish (403 otherwise).
    #[serde(default)]
    pub public: bool,
    /// The user to log in as over ssh: a POSIX user name (`[a-z_][a-z0-9_-]*`, ≤ 32).
    #[serde(default)]
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub default_user: Option<String>,
}

/// The accounts an image is shared with: they can see and boot it, not change it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageMembers {
    pub image_id: ImageId,
    /// Every account it is offered to, whatever it answered.
    pub members: Vec<AccountId>,
    /// Each member's answer: `pending` (offered), `accepted` (listed in its images) or
    /// `rejected` (declined; sharing again does not offer it anew).
    #[serde(default)]
    #[schema(example = json!({"a-1m95xw75001qhyg": "pending"}))]
    pub member_status: std::collections::BTreeMap<String, MemberStatus>,
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
    #[schema(value_type = String, example = "10.0.0.0/24")]
    pub cidr: Ipv4Net,
    #[schema(value_type = String, format = Ipv4)]
    pub gateway: Ipv4Addr,
    #[schema(value_type = String, format = Ipv4)]
    pub dhcp_start: Ipv4Addr,
    #[schema(value_type = String, format = Ipv4)]
    pub dhcp_end: Ipv4Addr,
    /// VXLAN network identifier, unique in the cloud.
    pub vni: u32,
    pub created_at: DateTime<Utc>,
}

/// Gateway and DHCP range default to the first address and the rest of the CIDR.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    /// 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// An IPv4 network from /8 to /29 without host bits, e.g. `10.0.0.0/24`.
    #[schema(example = "10.0.0.0/24")]
    pub cidr: String,
    /// A host address of `cidr`.
    #[schema(format = Ipv4)]
    pub gateway: Option<String>,
    /// A host address of `cidr`.
    #[schema(format = Ipv4)]
    pub dhcp_start: Option<String>,
    /// A host address of `cidr`, not before `dhcp_start`.
    #[schema(format = Ipv4)]
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

/// A rule as answered: its ID beside the fields of its [`RuleSpec`], flattened. Its
/// OpenAPI schema is [`SecurityGroupRuleSchema`]'s, which says what is sent: every field,
/// always, with null for those the rule does not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: RuleId,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

impl utoipa::PartialSchema for SecurityGroupRule {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        SecurityGroupRuleSchema::schema()
    }
}

impl ToSchema for SecurityGroupRule {
    fn name() -> std::borrow::Cow<'static, str> {
        "SecurityGroupRule".into()
    }
    fn schemas(out: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        SecurityGroupRuleSchema::schemas(out)
    }
}

// The serialized form of a `SecurityGroupRule`, for the OpenAPI document only (a test
// keeps the two in step): derived from the struct itself, the `#[serde(flatten)]` of the
// `deny_unknown_fields` `RuleSpec` came out as an `allOf` that forbids `id`, and left out
// that the unused fields are sent as null, so no rule the server sent matched it.
/// A rule of a security group, as answered: every field is always present, and those
/// the rule does not use are null.
#[derive(ToSchema)]
#[schema(as = SecurityGroupRule)]
#[allow(dead_code)]
pub struct SecurityGroupRuleSchema {
    pub id: RuleId,
    pub direction: Direction,
    pub protocol: Protocol,
    /// The first port (tcp, udp: normalized, both ends are always set), or the ICMP type
    /// (icmp, null for every type); null for `any`.
    #[schema(required = true, maximum = 65535)]
    pub port_min: Option<u16>,
    /// The last port (tcp, udp); null for icmp and `any`.
    #[schema(required = true, maximum = 65535)]
    pub port_max: Option<u16>,
    /// The peer network, truncated to its prefix; null when the rule names a `group`.
    #[schema(required = true)]
    pub cidr: Option<String>,
    /// The peer security group; null when the rule names a `cidr`.
    #[schema(required = true)]
    pub group: Option<SecurityGroupId>,
}

/// One rule: traffic of `protocol` on ports `port_min..=port_max` from (ingress) or to
/// (egress) either `cidr` or the members of `group`. Exactly one of the two is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default = "default_direction")]
    pub direction: Direction,
    pub protocol: Protocol,
    /// For tcp and udp; leave both out for all ports (one alone is a single port).
    /// For icmp, the ICMP type (0–255; leave out for every type). Not for `any`.
    #[schema(maximum = 65535)]
    pub port_min: Option<u16>,
    /// For tcp and udp, the last port.
    #[schema(maximum = 65535)]
    pub port_max: Option<u16>,
    /// An IPv4 network, e.g. `0.0.0.0/0`.
    #[schema(example = "0.0.0.0/0")]
    pub cidr: Option<String>,
    pub group: Option<SecurityGroupId>,
}

fn default_direction() -> Direction {
    Direction::Ingress
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroup {
    /// 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// At most 255 characters on one line; no control, zero-width or bidirectional
    /// characters.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub description: String,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub rules: Vec<RuleSpec>,
}

// ---------------------------------------------------------------- instances

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    /// The account it belongs to.
    pub account_id: AccountId,
    pub name: String,
    pub state: InstanceState,
    /// What was last asked of it.
    pub goal: InstanceGoal,
    pub image_id: ImageId,
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The host it is placed on; null while it has none (e.g. stopped).
    #[schema(required = true)]
    pub host_node_id: Option<HostNodeId>,
    #[schema(required = true)]
    pub ssh_key_id: Option<KeyPairId>,
    /// The server group it was created in; null when none.
    #[serde(default)]
    #[schema(required = true)]
    pub server_group_id: Option<ServerGroupId>,
    /// Bytes, as asked at create (or the image's min_disk where that is larger than the
    /// image and none was asked); null: the image's own size. A container's is the size
    /// of its root filesystem (2 GiB when none was asked, or the image's min_disk if
    /// larger); null for one made before containers had sizes: no limit of its own.
    #[schema(required = true)]
    pub root_disk_size: Option<u64>,
    pub interfaces: Vec<Interface>,
    pub volumes: Vec<VolumeId>,
    /// Set when `state` is `failed`, else null.
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Interface {
    pub id: VifId,
    pub network_id: NetworkId,
    #[schema(value_type = String, pattern = "^([0-9a-f]{2}:){5}[0-9a-f]{2}$", example = "52:54:00:12:34:56")]
    pub mac: MacAddr,
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    pub security_groups: Vec<SecurityGroupId>,
    pub state: InterfaceState,
    /// The floating IP associated with this interface; null when none is.
    #[serde(default)]
    #[schema(required = true, value_type = Option<String>, format = Ipv4)]
    pub floating_ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// 1 to 64 printable characters, no leading or trailing space; the ID when left out.
    #[schema(min_length = 1, max_length = 64)]
    pub name: Option<String>,
    pub image_id: ImageId,
    /// Defaults to the first hypervisor kind the image lists.
    pub hypervisor: Option<HypervisorKind>,
    #[serde(default = "default_cpus")]
    #[schema(minimum = 1, maximum = 128, default = 1)]
    pub cpus: u32,
    #[serde(default = "default_memory")]
    #[schema(minimum = 32, maximum = 4194304, default = 256)]
    pub memory_mib: u32,
    /// At most 8, on different networks.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub interfaces: Vec<CreateInterface>,
    pub ssh_key_id: Option<KeyPairId>,
    /// Passed to the guest as cloud-init user-data (at most 64 KiB).
    pub user_data: Option<String>,
    /// Bytes: the root disk grown to this size (at least the image's `min_disk` and its
    /// own size). Left out: the image's size, or its `min_disk` where that is larger. For
    /// a container (lxc), the size of its own root filesystem (at least 64 MiB; left out:
    /// 2 GiB, or the image's `min_disk` if larger).
    #[schema(minimum = 1, maximum = 1125899906842624.0)]
    pub root_disk_size: Option<u64>,
    /// A server group of the account (its ID or name) the instance joins; its policy
    /// decides the host (and, for a stopped member, the host it starts on).
    #[serde(default)]
    #[schema(max_length = 64)]
    pub server_group: Option<String>,
    /// Only a host in this zone (see `PATCH /api/v1/host_nodes/{id}`).
    #[serde(default)]
    #[schema(max_length = 63)]
    pub zone: Option<String>,
    /// Only a host that carries every one of these labels with these values (at most 16).
    #[serde(default)]
    pub host_labels: std::collections::BTreeMap<String, String>,
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
    #[schema(format = Ipv4)]
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
    #[schema(required = true)]
    pub storage_node_id: Option<StorageNodeId>,
    /// The instance it is attached to (or attaching to, detaching from), else null.
    #[schema(required = true)]
    pub instance_id: Option<InstanceId>,
    /// The snapshot the volume was copied from, else null.
    #[schema(required = true)]
    pub snapshot_id: Option<SnapshotId>,
    /// The image the volume was filled from, else null.
    #[serde(default)]
    #[schema(required = true)]
    pub image_id: Option<ImageId>,
    /// Set when `state` is `failed`, else null.
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Give `size_mib` for an empty volume; `snapshot_id` to copy a snapshot (size defaults
/// to the snapshot's); or `image_id` to fill it from a qcow2 or raw image (size defaults
/// to the image's `virtual_size`, rounded up to MiB).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// At most 16 TiB (16777216 MiB).
    #[schema(minimum = 1, maximum = 16777216)]
    pub size_mib: Option<u64>,
    pub snapshot_id: Option<SnapshotId>,
    #[serde(default)]
    pub image_id: Option<ImageId>,
}

/// Grow a volume to `size_mib` (never shrinks).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendVolume {
    /// Larger than the volume's size, at most 16777216 MiB.
    #[schema(minimum = 1, maximum = 16777216)]
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
    /// 1 to 64 printable characters, no leading or trailing space.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
}

// ---------------------------------------------------------------- floating IPs

/// An address of the site's external network, mapped 1:1 (DNAT and SNAT) to one
/// interface of an instance while associated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FloatingIp {
    pub id: FloatingIpId,
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// Null while not associated.
    #[schema(required = true)]
    pub instance_id: Option<InstanceId>,
    /// Null while not associated.
    #[schema(required = true)]
    pub interface_id: Option<VifId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Allocates the next free address of the external pool (or the one asked for).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFloatingIp {
    /// An address of the external pool.
    #[serde(default)]
    #[schema(format = Ipv4)]
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
    /// vCPUs the scheduler may place here: `cpus` × the CPU allocation ratio (overcommit).
    pub cpus_allocatable: u32,
    /// MiB the scheduler may place here: `memory_mib` × the memory allocation ratio.
    pub memory_allocatable_mib: u64,
    /// MiB of the file system that holds the host's root disks, less hva's reserve, as
    /// hva reported it; null when it did not (an older agent: its disk is not checked).
    #[serde(default)]
    #[schema(required = true)]
    pub disk_mib: Option<u64>,
    /// MiB of root disks booked here: the sizes of the disk images of the instances it
    /// keeps, running or stopped (containers are not counted yet).
    #[serde(default)]
    pub disk_used_mib: u64,
    /// MiB of root disks the scheduler may book here: `disk_mib` × the disk allocation
    /// ratio; null when the host did not report its disk.
    #[serde(default)]
    #[schema(required = true)]
    pub disk_allocatable_mib: Option<u64>,
    /// What the agent found it can do, e.g. `{"kvm_usable": false}`, as the agent
    /// reported it (null if it reported nothing readable).
    #[schema(value_type = Option<Object>, required = true)]
    pub capabilities: serde_json::Value,
    /// When dcmgr last heard the node's hva (its heartbeat, or its registration).
    pub last_seen: DateTime<Utc>,
    /// The zone an admin put the host in; null when none.
    #[serde(default)]
    #[schema(required = true)]
    pub zone: Option<String>,
    /// Labels an admin gave the host (`ssd=true`), matched by instances' `host_labels`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Whether new instances are placed here; false once an admin cordoned the host (for
    /// maintenance or retirement): what runs there keeps running, and an instance stopped
    /// there starts there again.
    #[serde(default = "yes")]
    #[schema(required = true)]
    pub schedulable: bool,
    /// Why an admin cordoned the host; null when it is not cordoned or no reason was given.
    #[serde(default)]
    #[schema(required = true)]
    pub cordon_reason: Option<String>,
}

fn yes() -> bool {
    true
}

/// An instance a host holds, as an admin sees it whatever its account: placed there
/// (`placed`: its vCPUs and memory are booked there), or stopped with its disk kept
/// there (it starts there again).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostInstance {
    pub id: InstanceId,
    pub name: String,
    pub account_id: AccountId,
    pub account_name: String,
    pub state: InstanceState,
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    pub placed: bool,
    /// MiB of root disk it books on the host (its disk image's size; 0 for a container):
    /// the sum over the host's instances is its `disk_used_mib`.
    #[serde(default)]
    pub disk_mib: u64,
}

/// What `POST /host_nodes/{id}/evacuate` did: the instances the host held (placed there,
/// or stopped with their disk there), each now stopped with no host, or terminated when
/// a terminate was asked. Their guests and root disks were on the host; started, each
/// boots a fresh root disk from its image on another host, with its volumes, addresses
/// and floating IPs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Evacuation {
    pub host_node_id: HostNodeId,
    pub instances: Vec<InstanceId>,
}

/// What an admin changes on a host node. Labels merge as a JSON merge patch: a key with
/// a value sets it, a key with null removes it, keys not named stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateHostNode {
    /// The host's zone; an empty string takes it out of any zone. Unchanged when absent.
    #[schema(max_length = 63)]
    pub zone: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub labels: std::collections::BTreeMap<String, Option<String>>,
    /// false cordons the host (no new instance is placed there), true opens it again.
    /// Unchanged when absent.
    #[serde(default)]
    pub schedulable: Option<bool>,
    /// Why the host is cordoned (maintenance, a ticket), shown with it: with
    /// `schedulable: false`, or alone for a host already cordoned. Opening the host again
    /// clears it.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub cordon_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageNode {
    pub id: StorageNodeId,
    pub state: NodeState,
    pub backend: StorageBackend,
    pub capacity_mib: u64,
    pub used_mib: u64,
    /// When dcmgr last heard the node's sta (its heartbeat, or its registration).
    pub last_seen: DateTime<Utc>,
}

/// One change, as `GET /api/v1/events` sends it (the SSE `data` of an event whose `id`
/// is [`Event::seq`] and whose `event` name is [`Event::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Grows with every event dcmgr records; resume after it with `Last-Event-ID`.
    pub seq: u64,
    pub account_id: AccountId,
    /// `instance`, `interface` (an instance's network interface), `volume`, `snapshot`,
    /// `image`, `network`, `security_group`, `keypair`, `floating_ip`, `server_group` or
    /// `job`.
    pub kind: String,
    /// The object's ID (a job's own ID for `job`).
    pub resource_id: String,
    /// `created`, `state` (its state changed), `updated` (something else changed: a
    /// security group's rules, a floating IP's association), `deleted`; for a job:
    /// `created` or `state`.
    pub change: String,
    /// The object's state after the change; empty for objects without one.
    pub state: String,
    /// For a job: its action and the resource it acts on (`instance.create i-…`); for an
    /// interface: its instance's ID.
    pub detail: String,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    /// e.g. `instance.create`, `volume.attach`.
    pub action: String,
    pub resource_id: String,
    pub state: JobState,
    /// A note on how it ended or why it failed; may be null.
    #[schema(required = true)]
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Null while running.
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`SecurityGroupRuleSchema`] describes exactly what a [`SecurityGroupRule`] sends:
    /// the same keys, every one of them required.
    #[test]
    fn security_group_rule_schema_matches_its_serialization() {
        let rule = SecurityGroupRule {
            id: RuleId::generate(),
            spec: RuleSpec {
                direction: Direction::Ingress,
                protocol: Protocol::Icmp,
                port_min: None,
                port_max: None,
                cidr: Some("0.0.0.0/0".into()),
                group: None,
            },
        };
        let sent = serde_json::to_value(&rule).unwrap();
        let mut sent_keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
        sent_keys.sort();
        let schema = serde_json::to_value(<SecurityGroupRule as utoipa::PartialSchema>::schema()).unwrap();
        let mut properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        properties.sort();
        assert_eq!(sent_keys, properties, "{schema}");
        let mut required: Vec<&str> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        required.sort();
        assert_eq!(sent_keys, required, "{schema}");
        assert_eq!(<SecurityGroupRule as ToSchema>::name(), "SecurityGroupRule");
    }
}

// ---------------------------------------------------------------- bundles

/// This site's bundle signing key: other sites add it to `[bundles] trusted_keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleKey {
    /// ed25519 public key, 64 hex digits.
    pub public_key: String,
}

/// One object an import creates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleCreate {
    /// `network`, `security_group`, `keypair`, `image` or `instance`.
    pub kind: String,
    /// Its ID inside the bundle (the source's ID).
    pub bundle_id: String,
    pub name: String,
    /// What it becomes here, when that differs from the bundle (a remapped CIDR, …).
    #[schema(required = true)]
    pub note: Option<String>,
}

/// Something that keeps the bundle from being imported as it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleConflict {
    /// Stable code: `cidr_overlap`, `name_taken`, `hypervisor_missing`, `image_missing`,
    /// `external_pool_missing`, `invalid_map`, `not_supported`, `quota_exceeded`.
    pub code: String,
    pub message: String,
    /// A `--map KEY=VALUE` that would resolve it, when there is one.
    #[schema(required = true)]
    pub resolve: Option<String>,
}

/// One object of an earlier import that a newer bundle of the same VDC updates, deletes
/// or leaves as it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleChange {
    /// `network`, `security_group`, `keypair`, `image`, `instance`, `volume` or `floating_ip`.
    pub kind: String,
    /// Its ID inside the bundle (the source's ID).
    pub bundle_id: String,
    /// The ID it has here.
    pub id: String,
    pub name: String,
    /// What changes (`dhcp range 10.0.0.10-10.0.0.99 → …`, rules added and removed), or
    /// why a delete is not applied.
    pub detail: String,
}

/// What importing a bundle would do, after it was verified in full.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundlePlan {
    pub source_site: String,
    pub source_vdc: String,
    pub manifest_hash: String,
    /// The import of this same bundle into this account, if it happened already.
    #[schema(required = true)]
    pub already_imported: Option<BundleImportId>,
    /// The earlier import of the same VDC (same site and source VDC, another bundle) that
    /// this bundle updates: then `updates`, `deletes` and `unchanged` are against the
    /// objects it made.
    #[schema(required = true)]
    pub update_of: Option<BundleImportId>,
    /// Objects to create (new in the bundle, or deleted here since the import).
    pub creates: Vec<BundleCreate>,
    /// Objects changed in place (the bundle wins for the fields it carries).
    #[serde(default)]
    pub updates: Vec<BundleChange>,
    /// Objects of the earlier import gone from the bundle, deleted only with `prune`
    /// (instances terminated, floating IPs released); `detail` says what happens: one
    /// still used by something that stays is refused (an `in_use` conflict), one used
    /// only by what this import ends waits for it (`waits: …`).
    #[serde(default)]
    pub deletes: Vec<BundleChange>,
    #[serde(default)]
    pub unchanged: Vec<BundleChange>,
    /// Whether deletes are applied (`prune=true`).
    #[serde(default)]
    pub prune: bool,
    pub conflicts: Vec<BundleConflict>,
    /// Chunks verified and bytes received.
    pub chunks: u64,
    pub bytes: u64,
    /// Of `chunks`, those the sender referenced as held here (a push): read from this
    /// site's store for the account and verified again, not received.
    #[serde(default)]
    pub held: u64,
    /// Of `chunks`, those the sender left out (a push): this site's import does not store
    /// their data (the objects holding it are kept as they are here).
    #[serde(default)]
    pub left_out: u64,
}

/// The most chunk hashes one `bundle/chunks/missing` request may ask about.
pub const MAX_CHUNK_QUERY: usize = 16384;

/// A pusher's question: which of these chunks (SHA-256, hex) does the target lack?
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleChunkQuery {
    /// At most 16384 lower-case hex SHA-256 hashes.
    pub chunks: Vec<String>,
}

/// The chunks of a [`BundleChunkQuery`] the target does not hold for the caller's account
/// (in the order asked). Held means: the account imported them earlier (in a bundle or a
/// push, verified) and the blob holding them is still stored here.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleChunksMissing {
    pub missing: Vec<String>,
}

/// What a push of a bundle should send the target: the chunks of the data an import with
/// these maps would store here, those to carry and those the account holds here already
/// (sent as references). Every other chunk of the manifest may be left out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleChunksWanted {
    /// Chunks (SHA-256, hex) to carry.
    pub send: Vec<String>,
    /// Chunks the account holds here: sent as references.
    pub held: Vec<String>,
}

/// A bundle import: the old → new ID map.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleImport {
    pub id: BundleImportId,
    pub source_site: String,
    pub source_vdc: String,
    pub manifest_hash: String,
    /// Bundle ID → ID created here.
    pub id_map: std::collections::BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// When a newer bundle of the same VDC last updated it (`manifest_hash` and `id_map`
    /// are then that bundle's).
    #[serde(default)]
    #[schema(required = true)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// The answer to an import: the import (new or found) and whether this call created it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleImported {
    pub import: BundleImport,
    /// False when the same bundle had been imported into this account already: nothing changed.
    pub created: bool,
}
