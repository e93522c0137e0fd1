//! The `vdc` command line: `vdc [-o FORMAT] [--api URL] [--token TOKEN] <resource> <verb> …`.

mod exec;

use crate::error::CliError;
use crate::output::{OutputArg, OutputFormat};
use crate::parse::{parse_checksum, parse_memory_mib, parse_rule_arg, parse_size_bytes, parse_size_mib, RuleArg};
use crate::resolve::Ref;
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use vdc_schema::api;
use vdc_schema::*;

/// A clap parser for one of the schema's wire enums, listing its spellings in help and
/// completions.
macro_rules! wire {
    ($t:ty) => {
        clap::builder::TypedValueParser::try_map(
            clap::builder::PossibleValuesParser::new(<$t>::ALL.iter().map(|v| v.as_str())),
            |s| s.parse::<$t>(),
        )
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "vdc",
    version,
    about = "Command-line client of the vdc IaaS cloud controller",
    after_help = "The API URL and token come from --api/--token, else VDC_API/VDC_TOKEN, else the \
                  config file ($VDC_CONFIG or ~/.config/vdc/config.toml, written by `vdc up`)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Output format: table, json or yaml (for `vdc bundle export`, a FILE to write the
    /// bundle to, as --out)
    #[arg(short, long, value_name = "FORMAT", default_value = "table", value_parser = OutputArg::parse, global = true)]
    pub output: OutputArg,
    /// API server URL, e.g. http://127.0.0.1:9000 [default: $VDC_API, then the config file]
    #[arg(long, value_name = "URL", global = true)]
    pub api: Option<String>,
    /// API token [default: $VDC_TOKEN, then the config file]
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// The account (name or ID) to act in: its session from `vdc login` when one is kept
    /// (an admin's token acts in any account), and the account member and token commands manage [default: $VDC_ACCOUNT, then the
    /// config file's `account`, then the token's own account]
    #[arg(long = "account", id = "global_account", value_name = "ACCOUNT", global = true)]
    pub account: Option<String>,
    /// How long --wait waits for a job before giving up
    #[arg(long, value_name = "SECONDS", default_value_t = 1800, global = true)]
    pub wait_timeout: u64,
    /// Log more to stderr (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the server's API version and extensions
    Info,
    /// Accounts and their API tokens (admin only)
    #[command(subcommand)]
    Account(AccountCmd),
    /// Users: people and robots holding roles in accounts (admin only)
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens: named, optionally expiring, revocable one by one
    #[command(subcommand)]
    Token(TokenCmd),
    /// SSH key pairs for instances
    #[command(subcommand, visible_alias = "key")]
    Keypair(KeypairCmd),
    /// Machine images
    #[command(subcommand)]
    Image(ImageCmd),
    /// Virtual networks
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Security groups and their rules
    #[command(subcommand, visible_alias = "sg")]
    Secgroup(SecgroupCmd),
    /// Server groups: instances placed together (affinity) or apart (anti-affinity)
    #[command(subcommand, name = "server-group", visible_alias = "srvg")]
    ServerGroup(ServerGroupCmd),
    /// Instances (virtual machines and containers)
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Block volumes
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Volume snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Floating IPs: external addresses mapped 1:1 to an instance
    #[command(subcommand, name = "floating-ip", visible_alias = "fip")]
    FloatingIp(FloatingIpCmd),
    /// Host and storage nodes (admin only)
    #[command(subcommand)]
    Host(HostCmd),
    /// Jobs: the progress of long operations
    #[command(subcommand)]
    Job(JobCmd),
    /// What changed in the account (instances, volumes, jobs, …), oldest first
    Events {
        /// Keep printing events as they happen (reconnects and resumes if cut off)
        #[arg(short, long)]
        follow: bool,
        /// Only events after this event ID (0: every event still kept)
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Who the token acts as: user, token, account, role, and the user's accounts
    Whoami,
    /// Sign in with a user's password: a session token for one account (--account, else
    /// the user's first), kept in the config file with the account's name, so that
    /// `--account NAME` on any command uses it
    Login {
        /// The user's name
        user: String,
        /// Read the password from the first line of standard input (else it is asked for)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sign out: revoke the session in use and forget it (--all: every kept session)
    Logout {
        #[arg(long)]
        all: bool,
    },
    /// The audit log: every state-changing request, newest first (owners: their account)
    #[command(subcommand)]
    Audit(AuditCmd),
    /// VDC bundles: move the whole VDC to another site (export, plan, import)
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Print a shell completion script to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a single-machine vdc cloud and write the CLI config for it
    Up(UpArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Where to keep the cloud's state
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for the API server
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// Use simulated agents instead of real hypervisors and storage
    #[arg(long)]
    pub sim: bool,
    /// The tiny image built by packaging/build-tiny-image.sh (default: DATA_DIR/tiny-image)
    #[arg(long)]
    pub tiny_image: Option<PathBuf>,
    /// The external network's range (floating IPs; bridge vdc-ex holds its first address);
    /// default: the one saved in DATA_DIR, else the first of 192.168.213.0/24,
    /// 192.168.217.0/24, … that no route of the host overlaps
    #[arg(long, value_name = "CIDR", conflicts_with = "no_external")]
    pub external_cidr: Option<String>,
    /// No external network: no bridge, no NAT, no floating IPs
    #[arg(long)]
    pub no_external: bool,
    /// Prefix of the network namespaces made for each network's services and routers
    /// (they are machine-wide): another one lets a second all-in-one, started in a network
    /// namespace of its own, run beside the first
    #[arg(long, value_name = "PREFIX", default_value = "vdc", value_parser = parse_ns_prefix)]
    pub namespace_prefix: String,
    /// Days after which terminated instances, deleted volumes and snapshots and finished
    /// jobs leave the database (0 keeps them for ever)
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub retention_days: u64,
    /// Import VDC bundles signed by this site's key too (64 hex digits, as `vdc bundle key`
    /// shows it there; repeatable). This cloud's own key is always trusted
    #[arg(long = "trust-key", value_name = "KEY")]
    pub trust_keys: Vec<String>,
}

fn parse_ns_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 8 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(s.to_owned())
    } else {
        Err("1 to 8 lower-case letters or digits (names of namespaces and devices are short)".into())
    }
}

// Paging of list commands: by default every page is fetched. (A plain comment: clap
// would show a doc comment as the help of a command that has none of its own.)
#[derive(Debug, Clone, Default, Args)]
pub struct ListArgs {
    /// Fetch only one page of at most N items
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Fetch only the page starting at this cursor (a previous page's next_cursor)
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Args)]
pub struct WaitArg {
    /// Wait for the job to finish, then print the final resource
    #[arg(long)]
    pub wait: bool,
}

// ------------------------------------------------------------------ audit

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List entries, newest first; the global --account (name or ID) filters by account
    #[command(visible_alias = "ls")]
    List {
        /// Only entries from this time on: a duration before now (1h, 7d) or an RFC 3339 time
        #[arg(long, value_name = "WHEN", value_parser = crate::parse::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only entries of this user (name or ID)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only this action (instance.create, volume.attach, …)
        #[arg(long)]
        action: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
}

// ------------------------------------------------------------------ accounts

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account and print its first token
    Create {
        name: String,
        /// Allow it to manage accounts, nodes and public images
        #[arg(long)]
        admin: bool,
    },
    /// List accounts
    #[command(visible_alias = "ls")]
    List {
        /// Only accounts with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show an account
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Account>,
    },
    /// Delete an account that holds nothing any more (delete its instances, volumes,
    /// images, networks, … first: `vdc --account NAME …`)
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Account>,
    },
    /// Create another API token for the account and print it
    Token {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Account>,
    },
    /// The account's users and their roles (owner: members and tokens; member: everything
    /// else; reader: reads only)
    #[command(subcommand)]
    Member(MemberCmd),
    /// Leave the account (--account, else the token's): your role in it and your tokens
    /// there go (not the last owner's)
    Leave,
    /// Set an account's quotas (admin)
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// Show quotas with what is in use: your own account's, or (admin) any account's
    Usage {
        #[arg(value_name = "NAME|ID")]
        id: Option<Ref<api::Account>>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// Give a user a role in the account (--account), or change its role (an owner's)
    Add {
        /// The user's name
        user: String,
        #[arg(long, value_parser = wire!(Role), default_value = "member")]
        role: Role,
    },
    /// Take a user's role away and revoke its tokens in the account (an owner's)
    #[command(visible_alias = "rm")]
    Remove {
        /// The user's name or ID
        user: String,
    },
    #[command(visible_alias = "ls")]
    List,
}

// ------------------------------------------------------------------ users

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; give it a role with `vdc account member add` and a first token with
    /// `vdc token create --user`
    Create {
        name: String,
        /// A cloud operator: manages accounts, users, nodes and public images
        #[arg(long)]
        admin: bool,
        /// Read a console password from standard input (its first line; at least 10 characters)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a console password (read from standard input): your own, or (admin) another user's.
    /// The user's console sessions are signed out, but for the one of this command
    Passwd {
        /// The user (default: you)
        #[arg(value_name = "NAME|ID")]
        id: Option<Ref<api::User>>,
        /// Read the passwords from standard input, one per line, so that none appears in a
        /// command line: for your own password that you have, the current one, then the new
        /// one; else the new one. With --remove: your current one. Without it, on a
        /// terminal, they are asked for
        #[arg(long)]
        password_stdin: bool,
        /// Remove the password instead (the user signs in with tokens only)
        #[arg(long)]
        remove: bool,
    },
    /// List users
    #[command(visible_alias = "ls")]
    List {
        /// Only the user with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a user
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::User>,
    },
    /// Delete a user, its roles and its tokens
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::User>,
    },
}

// ------------------------------------------------------------------ tokens

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token and print its secret (shown only this once)
    Create {
        /// 1 to 64 of [A-Za-z0-9._-], unique among your live tokens in the account
        name: String,
        /// When it stops working: a duration (30d, 12h, 90m, 45s) or an RFC 3339 time
        #[arg(long, visible_alias = "expires-in", value_name = "WHEN", value_parser = crate::parse::parse_expiry)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
        /// At most this role, below yours (e.g. reader for a dashboard)
        #[arg(long, value_parser = wire!(Role))]
        role: Option<Role>,
        /// For this member of the account (name), not for you (an admin's only)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Your tokens in the account, or everyone's for an owner (never their secrets)
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Revoke a token: it is refused (401 token_revoked) from now on
    Revoke {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Token>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Set limits, e.g. `vdc account quota set team1 instances=10 vcpus=20`; `KEY=default`
    /// returns a key to dcmgr's configured default. Keys: instances, vcpus, memory_mib,
    /// volumes, volume_gib, snapshots, networks, security_groups, floating_ips, images,
    /// image_gib, keypairs, server_groups.
    Set {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Account>,
        #[arg(value_name = "KEY=VALUE", required = true, value_parser = parse_quota)]
        quotas: Vec<(String, Option<i64>)>,
    },
}

/// `KEY=N` or `KEY=default`; whether KEY exists and N ≥ 0 is dcmgr's to say (one list).
fn parse_quota(s: &str) -> Result<(String, Option<i64>), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: write KEY=VALUE, e.g. instances=10"))?;
    let v = match v {
        "default" => None,
        n => Some(n.parse::<i64>().map_err(|_| format!("{s:?}: the value is a whole number or `default`"))?),
    };
    Ok((k.to_owned(), v))
}

// ------------------------------------------------------------------ key pairs

#[derive(Debug, Subcommand)]
pub enum KeypairCmd {
    /// Import a public key, or have an ed25519 key pair generated
    Create {
        name: String,
        /// Import the OpenSSH public key in FILE
        #[arg(long, value_name = "FILE", conflicts_with = "public_key")]
        public_key_file: Option<PathBuf>,
        /// Import this OpenSSH public key
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// Write the generated private key to FILE (mode 0600) instead of printing it
        #[arg(long, value_name = "FILE", conflicts_with_all = ["public_key", "public_key_file"])]
        private_key_out: Option<PathBuf>,
    },
    /// List key pairs
    #[command(visible_alias = "ls")]
    List {
        /// Only key pairs with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a key pair
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::KeyPair>,
    },
    /// Delete a key pair
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::KeyPair>,
    },
}

// ------------------------------------------------------------------ server groups

#[derive(Debug, Subcommand)]
pub enum ServerGroupCmd {
    /// Create a server group with a placement policy
    Create {
        name: String,
        /// affinity (one host), anti-affinity (a host each), or soft-affinity /
        /// soft-anti-affinity (preferred, not required)
        #[arg(long, value_parser = wire!(ServerGroupPolicy))]
        policy: ServerGroupPolicy,
    },
    /// List server groups
    #[command(visible_alias = "ls")]
    List {
        /// Only server groups with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a server group
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::ServerGroup>,
    },
    /// Delete a server group (refused while it has members)
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::ServerGroup>,
    },
}

// ------------------------------------------------------------------ floating IPs

#[derive(Debug, Subcommand)]
pub enum FloatingIpCmd {
    /// Allocate an address of the external network
    Create {
        /// This address of the pool rather than the next free one
        #[arg(long)]
        ip: Option<Ipv4Addr>,
    },
    /// List floating IPs
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a floating IP
    Show {
        #[arg(value_name = "ID|ADDRESS")]
        id: FipRef,
    },
    /// Map the address to an instance (its first interface unless --interface); one mapped
    /// elsewhere moves
    Associate {
        #[arg(value_name = "ID|ADDRESS")]
        id: FipRef,
        #[arg(value_name = "INSTANCE")]
        instance: Ref<api::Instance>,
        #[arg(long, value_name = "VIF_ID")]
        interface: Option<VifId>,
    },
    /// Unmap it
    Disassociate {
        #[arg(value_name = "ID|ADDRESS")]
        id: FipRef,
    },
    /// Release the address (disassociate it first)
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "ID|ADDRESS")]
        id: FipRef,
    },
}

/// A floating IP named by its ID (`fip-…`) or by its address, as OpenStack's CLI takes
/// either.
#[derive(Debug, Clone)]
pub enum FipRef {
    Id(FloatingIpId),
    Address(Ipv4Addr),
}

impl std::str::FromStr for FipRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(FipRef::Address(ip));
        }
        s.parse::<FloatingIpId>()
            .map(FipRef::Id)
            .map_err(|e| format!("{s:?} is neither a floating IP's ID (fip-…) nor its address: {e}"))
    }
}

// ------------------------------------------------------------------ images

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Register an image from a file the hosts hold (admin)
    Create(ImageCreateArgs),
    /// Upload a local file or have dcmgr import an http(s) URL; prints the image once it is
    /// available
    Import(ImageImportArgs),
    /// List images (your own, public ones, and those shared with you that you accepted)
    #[command(visible_alias = "ls")]
    List {
        /// Only images with this exact name
        #[arg(long)]
        name: Option<String>,
        /// Only images offered to you that you have not answered (accept or decline them)
        #[arg(long, conflicts_with_all = ["declined", "all"])]
        offered: bool,
        /// Only images shared with you that you declined
        #[arg(long, conflicts_with = "all")]
        declined: bool,
        /// Every image you see: offered and declined ones too
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show an image
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Image>,
    },
    /// Delete an image
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Image>,
    },
    /// Offer one of your images to another account: it sees and boots it by its ID, and
    /// once it accepts, finds it in its list and by its name
    Share {
        #[arg(value_name = "IMAGE")]
        image: Ref<api::Image>,
        /// Account ID (a-…), or an account name for an admin who can list accounts
        #[arg(value_name = "ACCOUNT")]
        account: Ref<api::Account>,
    },
    /// Stop sharing one of your images with an account
    Unshare {
        #[arg(value_name = "IMAGE")]
        image: Ref<api::Image>,
        #[arg(value_name = "ACCOUNT")]
        account: Ref<api::Account>,
    },
    /// The accounts one of your images is shared with, and their answers
    Members {
        #[arg(value_name = "IMAGE")]
        image: Ref<api::Image>,
    },
    /// Accept an image another account offered yours (`vdc image list --offered`): it is
    /// listed, and found by its name, from now on
    Accept {
        #[arg(value_name = "IMAGE_ID")]
        image: ImageId,
    },
    /// Decline an image shared with your account: no longer listed, and not offered again
    Decline {
        #[arg(value_name = "IMAGE_ID")]
        image: ImageId,
    },
}

#[derive(Debug, Args)]
pub struct ImageImportArgs {
    pub name: String,
    /// A local file (streamed to the API) or an http(s):// URL (fetched by dcmgr)
    pub source: String,
    /// qcow2 or raw (a disk; dcmgr probes which it really is) or tar (a .tar.gz root file
    /// system for lxc). Default: tar for *.tar.gz, else qcow2
    #[arg(long, value_parser = clap::builder::TypedValueParser::try_map(
        clap::builder::PossibleValuesParser::new(["qcow2", "raw", "tar"]),
        |s| s.parse::<ImageFormat>(),
    ))]
    pub format: Option<ImageFormat>,
    /// The SHA-256 the data must have (HEX or sha256:HEX)
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Option<String>,
    /// A hypervisor kind the image boots on (repeatable). Default: qemu and kvm for a disk,
    /// lxc for tar
    #[arg(long = "hypervisor", value_name = "KIND", value_parser = wire!(HypervisorKind))]
    pub hypervisors: Vec<HypervisorKind>,
    #[arg(long, default_value = "x86_64", value_parser = wire!(Arch))]
    pub arch: Arch,
    /// Make it visible to every account (admin only)
    #[arg(long)]
    pub public: bool,
    /// The user `vdc instance ssh` logs in as (e.g. debian)
    #[arg(long, value_name = "USER")]
    pub default_user: Option<String>,
    /// For disks: bios, or uefi (hosts with OVMF only)
    #[arg(long, value_name = "MODE", default_value = "bios", value_parser = wire!(BootMode))]
    pub boot_mode: BootMode,
    /// The smallest root disk an instance of it may have (e.g. 2G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub min_disk: Option<u64>,
    /// The least memory an instance of it may have (e.g. 512M)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub min_memory: Option<u64>,
    /// The operating system, as free text (e.g. debian-12)
    #[arg(long, value_name = "TEXT")]
    pub os: Option<String>,
}

fn parse_sha256(s: &str) -> Result<String, String> {
    let t = s.trim();
    crate::parse::parse_checksum(&format!("sha256:{}", t.strip_prefix("sha256:").unwrap_or(t)))
}

#[derive(Debug, Args)]
pub struct ImageCreateArgs {
    pub name: String,
    #[arg(long, value_parser = wire!(ImageFormat))]
    pub format: ImageFormat,
    /// A hypervisor kind the image boots on (repeatable)
    #[arg(long = "hypervisor", value_name = "KIND", required = true, value_parser = wire!(HypervisorKind))]
    pub hypervisors: Vec<HypervisorKind>,
    /// A file every host holds: a path, a file:// URL, or builtin:NAME (admin only, from the
    /// directories dcmgr's configuration names). To upload a file or import a URL: vdc image import
    #[arg(long, value_name = "SRC")]
    pub source: String,
    #[arg(long, default_value = "x86_64", value_parser = wire!(Arch))]
    pub arch: Arch,
    /// sha256:HEX of the image data
    #[arg(long, value_name = "sha256:HEX", value_parser = parse_checksum)]
    pub checksum: Option<String>,
    /// For kernel images only: the initrd beside the kernel
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<String>,
    /// For kernel images only: the kernel command line
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// For qcow2/raw disk images: bios, or uefi (hosts with OVMF only)
    #[arg(long, value_name = "MODE", default_value = "bios", value_parser = wire!(BootMode))]
    pub boot_mode: BootMode,
    /// For qcow2/raw disk images: boot them with this kernel image (its kernel, initrd and
    /// command line; the disk is vda), like an AMI naming its AKI/ARI
    #[arg(long = "kernel", value_name = "IMAGE_ID")]
    pub kernel_id: Option<ImageId>,
    /// Smallest root disk (or container root file system) instances may have (512M, 10G, …)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub min_disk: Option<u64>,
    /// Smallest memory instances may have (256M, 1G, …)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub min_memory: Option<u64>,
    /// What the image holds, free text such as debian-12
    #[arg(long, value_name = "TEXT")]
    pub os: Option<String>,
    /// Make it visible to every account (admin only)
    #[arg(long)]
    pub public: bool,
    /// The user `vdc instance ssh` logs in as, e.g. debian or root
    #[arg(long, value_name = "USER")]
    pub default_user: Option<String>,
}

// ------------------------------------------------------------------ networks

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network; gateway and DHCP range default to the first address and the rest
    Create {
        name: String,
        /// IPv4 network, e.g. 10.0.0.0/24
        #[arg(long)]
        cidr: String,
        #[arg(long, value_name = "IP")]
        gateway: Option<Ipv4Addr>,
        #[arg(long, value_name = "IP")]
        dhcp_start: Option<Ipv4Addr>,
        #[arg(long, value_name = "IP")]
        dhcp_end: Option<Ipv4Addr>,
    },
    /// List networks
    #[command(visible_alias = "ls")]
    List {
        /// Only networks with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a network
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Network>,
    },
    /// Delete a network
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Network>,
    },
}

// ------------------------------------------------------------------ security groups

/// Rule syntax shown in help.
const SPEC_HELP: &str = "SPEC is PROTO[:PORTS[:SOURCE]]: PROTO tcp|udp|icmp|any; PORTS 22 or \
                         1000-2000 (the ICMP type for icmp; empty for all); SOURCE a CIDR or a \
                         security group's name or ID (default 0.0.0.0/0). Examples: tcp:22, \
                         udp:53:10.0.0.0/8, icmp::web, any";

#[derive(Debug, Subcommand)]
pub enum SecgroupCmd {
    /// Create a security group, optionally with ingress rules
    #[command(after_help = SPEC_HELP)]
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// An ingress rule (repeatable)
        #[arg(long = "rule", value_name = "SPEC", value_parser = parse_rule_arg)]
        rules: Vec<RuleArg>,
    },
    /// List security groups
    #[command(visible_alias = "ls")]
    List {
        /// Only groups with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a security group
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::SecurityGroup>,
    },
    /// Delete a security group
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::SecurityGroup>,
    },
    /// Add a rule to a group
    #[command(after_help = SPEC_HELP)]
    RuleAdd {
        /// The group (name or ID)
        #[arg(value_name = "SG")]
        sg: Ref<api::SecurityGroup>,
        /// The rule: PROTO[:PORTS[:SOURCE]], as below
        #[arg(value_name = "SPEC", value_parser = parse_rule_arg)]
        spec: RuleArg,
        /// Outgoing traffic; SOURCE is then the destination
        #[arg(long)]
        egress: bool,
    },
    /// Remove a rule from a group
    RuleDelete {
        /// The group (name or ID)
        #[arg(value_name = "SG")]
        sg: Ref<api::SecurityGroup>,
        /// The rule's ID (sgr-…, as `vdc secgroup show` lists them)
        rule_id: RuleId,
    },
}

// ------------------------------------------------------------------ instances

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Create and start an instance
    Create(InstanceCreateArgs),
    /// List instances (terminated ones for an hour; all of them with --state terminated)
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, value_parser = wire!(InstanceState))]
        state: Option<InstanceState>,
        /// Only instances with this exact name
        #[arg(long)]
        name: Option<String>,
        /// Only the instance with this address (an interface's or its floating IP)
        #[arg(long, value_name = "IP")]
        address: Option<std::net::Ipv4Addr>,
        /// Every account's instances, with their account (admins only)
        #[arg(long)]
        all_accounts: bool,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show an instance
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Instance>,
    },
    /// Start a stopped instance (on the host that keeps its disk)
    Start(InstanceActionArgs),
    /// Shut down and release the host
    Stop(InstanceActionArgs),
    /// Shut down but keep the host reserved
    Halt(InstanceActionArgs),
    /// Power a halted instance back on
    Poweron(InstanceActionArgs),
    /// Reboot an instance: a hard reset (a container is started afresh)
    Reboot(InstanceActionArgs),
    /// Destroy the instance
    #[command(visible_alias = "delete")]
    Terminate(InstanceActionArgs),
    /// Log in over ssh through the instance's floating IP, or run COMMAND there
    #[command(after_help = "The key is -i FILE, else the one `vdc keypair create --private-key-out` saved for \
                            the instance's key pair, else your ssh agent and keys. The user is -l USER, else \
                            the image's default user. Exits with the remote command's exit code.\n\
                            Example: vdc instance ssh web1 -- uname -a")]
    Ssh(InstanceSshArgs),
    /// Print the serial console output
    ConsoleLog {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Instance>,
    },
    /// Make a new image of an instance's root disk, or of a container's root file system
    /// (a tar image; it keeps the source image's properties; the options below replace
    /// them). A stopped instance cannot start until the capture ends; a running one is
    /// copied as it runs, a container frozen meanwhile (crash-consistent, as after a
    /// power cut: stop it first for a clean copy)
    Capture(InstanceCaptureArgs),
}

#[derive(Debug, Args)]
pub struct InstanceCaptureArgs {
    #[arg(value_name = "NAME|ID")]
    pub id: Ref<api::Instance>,
    #[command(flatten)]
    pub props: CaptureProps,
}

/// A snapshot's image: raw unless `--format qcow2`
#[derive(Debug, Args)]
pub struct SnapshotImageArgs {
    #[arg(value_name = "NAME|ID")]
    pub id: Ref<api::Snapshot>,
    /// raw (default: a volume is a raw disk) or qcow2 (converted by the storage node)
    #[arg(long, value_parser = snapshot_image_format())]
    pub format: Option<ImageFormat>,
    /// Hypervisors that may boot it (repeatable; default kvm and qemu)
    #[arg(long = "hypervisor", value_name = "KIND", value_parser = wire!(HypervisorKind))]
    pub hypervisors: Vec<HypervisorKind>,
    #[command(flatten)]
    pub props: CaptureProps,
}

/// Only the formats a snapshot's image can have are offered.
fn snapshot_image_format() -> impl clap::builder::TypedValueParser<Value = ImageFormat> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["raw", "qcow2"]).map(|s| {
        if s == "qcow2" {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        }
    })
}

/// What a captured image is called and says about itself.
#[derive(Debug, Args)]
pub struct CaptureProps {
    /// The new image's name
    #[arg(long, value_name = "NEW")]
    pub image_name: String,
    /// The operating system, as free text (e.g. debian-12)
    #[arg(long, value_name = "TEXT")]
    pub os: Option<String>,
    /// The smallest root disk an instance of it may have (e.g. 2G) [default for an instance's capture: the root disk it had, or its image's min_disk if larger]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub min_disk: Option<u64>,
    /// The least memory an instance of it may have (e.g. 512M)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub min_memory: Option<u64>,
    /// The user to log in as over ssh
    #[arg(long, value_name = "USER")]
    pub default_user: Option<String>,
    #[command(flatten)]
    pub wait: WaitArg,
}

#[derive(Debug, Args)]
pub struct InstanceActionArgs {
    #[arg(value_name = "NAME|ID")]
    pub id: Ref<api::Instance>,
    #[command(flatten)]
    pub wait: WaitArg,
}

#[derive(Debug, Args)]
pub struct InstanceSshArgs {
    #[arg(value_name = "NAME|ID")]
    pub id: Ref<api::Instance>,
    /// Private key file
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Log in as USER [default: the image's default user]
    #[arg(short = 'l', long, value_name = "USER")]
    pub user: Option<String>,
    /// The guest's ssh port
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// The command to run (after --); without it, a login shell
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InstanceCreateArgs {
    /// The instance's name (also its hostname)
    #[arg(value_name = "NAME", conflicts_with = "name_flag")]
    pub name: Option<String>,
    /// Same as NAME
    #[arg(long = "name", id = "name_flag", value_name = "NAME", hide = true)]
    pub name_flag: Option<String>,
    /// Image name or ID (own or public)
    #[arg(long, value_name = "IMAGE")]
    pub image: Ref<api::Image>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: u32,
    /// Memory in MiB, or with a unit (512M, 2G)
    #[arg(long, value_name = "MIB", default_value = "256", value_parser = parse_memory_mib)]
    pub memory: u32,
    /// Add an interface on this network (repeatable)
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<Ref<api::Network>>,
    /// Apply this security group to every interface (repeatable)
    #[arg(long = "secgroup", value_name = "SG", requires = "networks")]
    pub secgroups: Vec<Ref<api::SecurityGroup>>,
    /// Fixed address of the interface (only with exactly one --network)
    #[arg(long, value_name = "IP", requires = "networks")]
    pub ip: Option<Ipv4Addr>,
    /// SSH key pair to install
    #[arg(long, value_name = "KEYPAIR")]
    pub keypair: Option<Ref<api::KeyPair>>,
    /// cloud-init user-data (at most 64 KiB)
    #[arg(long, value_name = "FILE")]
    pub user_data_file: Option<PathBuf>,
    /// [default: the image's first hypervisor kind]
    #[arg(long, value_name = "KIND", value_parser = wire!(HypervisorKind))]
    pub hypervisor: Option<HypervisorKind>,
    /// Grow the root disk to this size (10G, …) [default: the image's size, or its min_disk if larger]; a container's root filesystem size [default: 2G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub root_disk_size: Option<u64>,
    /// Join this server group (name or ID): its policy picks the host
    #[arg(long, value_name = "GROUP")]
    pub server_group: Option<String>,
    /// Only a host in this zone
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// Only a host carrying this label (repeatable: all must match)
    #[arg(long = "host-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub host_labels: Vec<(String, String)>,
    #[command(flatten)]
    pub wait: WaitArg,
}

/// `KEY=VALUE`; what a key and a value may hold is dcmgr's to say.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: write KEY=VALUE, e.g. ssd=true"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// `KEY=VALUE` sets a label, `KEY-` removes it (as kubectl label does).
fn parse_label_change(s: &str) -> Result<(String, Option<String>), String> {
    match (s.split_once('='), s.strip_suffix('-')) {
        (Some((k, v)), _) => Ok((k.to_owned(), Some(v.to_owned()))),
        (None, Some(k)) => Ok((k.to_owned(), None)),
        _ => Err(format!("{s:?}: write KEY=VALUE to set a label, KEY- to remove it")),
    }
}

// ------------------------------------------------------------------ volumes and snapshots

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume: empty, from a snapshot, or filled from a qcow2/raw image
    #[command(group(ArgGroup::new("origin").required(true).multiple(true).args(["size", "snapshot", "image"])))]
    Create {
        name: String,
        /// Size in MiB, or with a unit (512M, 10G, 1T) [default with --snapshot: the
        /// snapshot's; with --image: the image's disk size]
        #[arg(long, value_parser = parse_size_mib)]
        size: Option<u64>,
        /// Copy this snapshot
        #[arg(long, value_name = "SNAPSHOT", conflicts_with = "image")]
        snapshot: Option<Ref<api::Snapshot>>,
        /// Fill the volume from this image
        #[arg(long, value_name = "IMAGE")]
        image: Option<Ref<api::Image>>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// List volumes (deleted ones for an hour; all of them with --state deleted)
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, value_parser = wire!(VolumeState))]
        state: Option<VolumeState>,
        /// Only volumes with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a volume
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Volume>,
    },
    /// Delete a volume
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Volume>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Attach a volume to an instance
    Attach {
        volume: Ref<api::Volume>,
        instance: Ref<api::Instance>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Detach a volume from its instance
    Detach {
        volume: Ref<api::Volume>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Grow a detached volume
    Extend {
        volume: Ref<api::Volume>,
        /// The new size in MiB, or with a unit (512M, 10G, 1T)
        #[arg(long, value_parser = parse_size_mib)]
        size: u64,
        #[command(flatten)]
        wait: WaitArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a volume
    Create {
        volume: Ref<api::Volume>,
        name: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// List snapshots (deleted ones for an hour; all of them with --state deleted)
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, value_parser = wire!(SnapshotState))]
        state: Option<SnapshotState>,
        /// Only snapshots with this exact name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a snapshot
    Show {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Snapshot>,
    },
    /// Delete a snapshot
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(value_name = "NAME|ID")]
        id: Ref<api::Snapshot>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Make a new image of a snapshot's blocks. The snapshot cannot be deleted until the
    /// image is available or failed
    Image(SnapshotImageArgs),
}

// ------------------------------------------------------------------ nodes and jobs

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List host nodes (hypervisors)
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, value_parser = wire!(NodeState))]
        state: Option<NodeState>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a host node
    Show { id: HostNodeId },
    /// The instances a host holds, of every account: placed there, or stopped with their
    /// disk there (PLACED no: they start there again)
    Instances {
        id: HostNodeId,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Take every instance off a host that is gone for good: each becomes stopped with no
    /// host (its guest and root disk are lost with the host) and starts anew elsewhere,
    /// with its volumes and addresses. Refused while the host is online
    Evacuate {
        id: HostNodeId,
        /// Start again those whose goal was running (each in its own account)
        #[arg(long)]
        start: bool,
    },
    /// Take a host out of placement (maintenance, retirement): no new instance goes there;
    /// what runs there keeps running, and an instance stopped there starts there again
    Cordon {
        id: HostNodeId,
        /// Why, shown with the host (`host list`, `host show`); a cordoned host's reason
        /// can be changed by cordoning it again
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let new instances be placed on a cordoned host again
    Uncordon { id: HostNodeId },
    /// Set or remove a host's labels (matched by `instance create --host-label`)
    Label {
        id: HostNodeId,
        /// KEY=VALUE sets a label, KEY- removes it
        #[arg(value_name = "KEY=VALUE|KEY-", required = true, value_parser = parse_label_change)]
        labels: Vec<(String, Option<String>)>,
    },
    /// Put a host in a zone (matched by `instance create --zone`)
    Zone {
        id: HostNodeId,
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        zone: Option<String>,
        /// Take the host out of any zone
        #[arg(long)]
        clear: bool,
    },
    /// List storage nodes
    StorageList {
        #[arg(long, value_parser = wire!(NodeState))]
        state: Option<NodeState>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a storage node
    StorageShow { id: StorageNodeId },
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs, newest first (--limit N: the newest N)
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, value_parser = wire!(JobState))]
        state: Option<JobState>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a job
    Show { id: JobId },
    /// Wait for a job to finish; exits 1 if it did not succeed
    Wait { id: JobId },
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Show this site's bundle signing key (other sites trust it in [bundles] trusted_keys)
    Key,
    /// Export the account's VDC as a signed bundle
    Export {
        /// Where to write it (default: vdc-<time>.bundle in the current directory);
        /// `--output FILE` says the same
        #[arg(short = 'O', long = "out", value_name = "FILE")]
        out: Option<std::path::PathBuf>,
        /// Only the model: no data (no images' data, instances' disks or volumes' data)
        #[arg(long, conflicts_with = "stop")]
        model_only: bool,
        /// Stop running instances to capture their disks, and start them again afterwards;
        /// halted ones are left stopped (without it, a running instance's disk is copied
        /// as it runs: crash-consistent, and a halted one is refused)
        #[arg(long)]
        stop: bool,
    },
    /// Verify a bundle and show what importing it would create and what collides, or,
    /// for a newer bundle of a VDC imported before, what it creates, updates and deletes;
    /// exits 1 when something is unresolved
    Plan {
        file: std::path::PathBuf,
        /// KEY=VALUE: network.NAME.cidr=CIDR, KIND.NAME.name=NEW, hypervisor.kvm=qemu,
        /// image.NAME=img-…, zone.ZONE=ZONE|any, label.KEY=VALUE|any,
        /// server_group.NAME.policy=POLICY, volumes=skip, floating_ips=skip,
        /// downgrade=allow (a bundle exported before the one imported last, applied anyway)
        #[arg(long = "map", value_name = "KEY=VALUE")]
        maps: Vec<String>,
        /// Plan as `import --prune` would apply it
        #[arg(long)]
        prune: bool,
    },
    /// Import a bundle (verified in full first; the same bundle again changes nothing);
    /// a newer bundle of a VDC imported before updates what that import made
    Import {
        file: std::path::PathBuf,
        #[arg(long = "map", value_name = "KEY=VALUE")]
        maps: Vec<String>,
        /// Remove what the earlier import made and the bundle no longer has: instances
        /// terminated, floating IPs released, networks, groups, key pairs, volumes and images
        /// deleted (what only ending instances use goes with the next --prune)
        #[arg(long)]
        prune: bool,
    },
    /// Push the account's VDC to another site: plan and import there, sending only the
    /// chunks the target lacks (it reports the bytes sent). The bundle streams from this
    /// site through vdc to the target; the target's token never reaches this site
    Push {
        /// The target site's API URL, e.g. https://dc.example.net:9000
        #[arg(long, value_name = "URL")]
        to: String,
        /// A token of the account at the target (or $VDC_PUSH_TOKEN). Not `--token`: that
        /// global option is this site's token (the source's)
        #[arg(
            long = "to-token",
            id = "to_token",
            value_name = "TOKEN",
            env = "VDC_PUSH_TOKEN",
            hide_env_values = true
        )]
        to_token: String,
        /// KEY=VALUE, as for `bundle plan`
        #[arg(long = "map", value_name = "KEY=VALUE")]
        maps: Vec<String>,
        /// A file of KEY=VALUE lines (blank lines and `#` comments ignored), before --map
        #[arg(long, value_name = "FILE")]
        map_file: Option<std::path::PathBuf>,
        /// Delete at the target what an earlier push made and the VDC no longer has
        #[arg(long)]
        prune: bool,
        /// Only the model: no data
        #[arg(long, conflicts_with = "stop")]
        model_only: bool,
        /// Stop running instances to capture their disks, and start them again afterwards
        #[arg(long)]
        stop: bool,
        /// Only plan at the target (everything verified, nothing created); exits 1 when
        /// something is unresolved
        #[arg(long)]
        dry_run: bool,
    },
    /// The bundles imported into the account
    Imports,
    /// One import: the bundle's IDs and the IDs created for them
    Show { id: String },
}

/// Run every command but `up` (which main hands to [`crate::up::run`]).
pub async fn run(global: &GlobalArgs, command: Command) -> Result<(), CliError> {
    exec::run(global, command).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vdc").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["instance", "list", "-o", "json", "--api", "http://x:1"]).unwrap();
        assert_eq!(cli.global.output, OutputArg::Format(OutputFormat::Json));
        assert_eq!(cli.global.api.as_deref(), Some("http://x:1"));
        assert!(matches!(cli.command, Command::Instance(InstanceCmd::List { .. })));
    }

    #[test]
    fn output_names_a_format_or_the_bundle_file() {
        let cli = parse(&["bundle", "export", "--output", "my.bundle"]).unwrap();
        assert_eq!(cli.global.output, OutputArg::File("my.bundle".into()));
        let cli = parse(&["-o", "YAML", "bundle", "export", "--out", "b"]).unwrap();
        assert_eq!(cli.global.output, OutputArg::Format(OutputFormat::Yaml));
        assert!(matches!(cli.command, Command::Bundle(BundleCmd::Export { out: Some(_), .. })));
        assert!(parse(&["instance", "list", "--output="]).is_err());
    }

    #[test]
    fn instance_create_parses() {
        let cli = parse(&[
            "instance",
            "create",
            "--image",
            "img-abc",
            "--memory",
            "1G",
            "--network",
            "nw-a",
            "--secgroup",
            "sg-a",
            "--secgroup",
            "sg-b",
            "--ip",
            "10.0.0.5",
            "--wait",
        ])
        .unwrap();
        let Command::Instance(InstanceCmd::Create(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.memory, 1024);
        assert_eq!(a.cpus, 1);
        assert_eq!(a.secgroups.len(), 2);
        assert!(a.wait.wait);
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for args in [
            &["secgroup", "rule-add", "sg-a", "tcp:99999"][..],
            &["secgroup", "create", "web", "--rule", "ssh"],
            &["image", "create", "x", "--format", "vmdk", "--hypervisor", "kvm", "--source", "s"],
            &["image", "create", "x", "--format", "raw", "--source", "s"],
            &["volume", "create", "data"],
            &["volume", "create", "data", "--size", "10X"],
            &["instance", "create", "--image", "img-a", "--ip", "10.0.0.1"],
            &["keypair", "create", "k", "--public-key", "x", "--private-key-out", "f"],
        ] {
            let err = parse(args).expect_err(&args.join(" "));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn rule_specs_and_sizes_reach_the_args() {
        let cli = parse(&["sg", "rule-add", "sg-a", "udp:53:10.0.0.0/8", "--egress"]).unwrap();
        let Command::Secgroup(SecgroupCmd::RuleAdd { spec, egress, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(spec.spec.port_min, Some(53));
        assert!(egress);
        let cli = parse(&["volume", "create", "data", "--size", "10G"]).unwrap();
        assert!(matches!(cli.command, Command::Volume(VolumeCmd::Create { size: Some(10240), .. })));
        // The image's disk size is dcmgr's default.
        let cli = parse(&["volume", "create", "data", "--image", "debian"]).unwrap();
        assert!(matches!(cli.command, Command::Volume(VolumeCmd::Create { size: None, image: Some(_), .. })));
    }
}
