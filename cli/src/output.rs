//! Rendering of API objects as tables, JSON or YAML. Everything renders to a `String` so
//! that the caller decides where it goes (and tests can look at it).

use crate::error::CliError;
use crate::parse::format_rule;
use chrono::{DateTime, Utc};
use comfy_table::{presets, ContentArrangement, Table};
use serde::{Deserialize, Serialize};
use std::fmt::Display;
use vdc_schema::api::*;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

/// What `--output` names: a format, or (only for `vdc bundle export`, whose file the
/// bundle spec calls `--output FILE`) a file. One flag with two meanings because clap
/// cannot give a subcommand its own `--output` beside the global one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputArg {
    Format(OutputFormat),
    File(std::path::PathBuf),
}

impl OutputArg {
    pub fn parse(s: &str) -> Result<Self, String> {
        use clap::ValueEnum;
        if s.is_empty() {
            return Err("give a format (table, json, yaml), or for `vdc bundle export` a file".into());
        }
        Ok(match OutputFormat::from_str(s, true) {
            Ok(f) => OutputArg::Format(f),
            Err(_) => OutputArg::File(s.into()),
        })
    }
}

/// How a resource shows as a row of a list and as a FIELD/VALUE table.
pub trait Tabular {
    fn headers() -> &'static [&'static str];
    fn row(&self) -> Vec<String>;
    fn fields(&self) -> Vec<(&'static str, String)>;
}

pub fn encode<T: Serialize + ?Sized>(format: OutputFormat, value: &T) -> Result<String, CliError> {
    match format {
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| CliError::Encode(e.to_string()))
        }
        OutputFormat::Yaml => serde_yaml::to_string(value).map_err(|e| CliError::Encode(e.to_string())),
        // Callers handle tables themselves; JSON is the sensible fallback.
        OutputFormat::Table => encode(OutputFormat::Json, value),
    }
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// A cell as the terminal is to show it: control characters (escape sequences that
/// would retitle, clear or recolour the terminal of whoever lists another tenant's
/// descriptions or key comments) and bidirectional overrides written out as `\u{..}`.
/// Line breaks stay.
fn printable(s: String) -> String {
    let unsafe_char =
        |c: char| (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(unsafe_char) {
        return s;
    }
    s.chars().map(|c| if unsafe_char(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// A list table: one row per item.
pub fn list_table<T: Tabular>(items: &[T]) -> String {
    let mut t = new_table();
    t.set_header(T::headers().iter().copied());
    for item in items {
        t.add_row(item.row().into_iter().map(printable));
    }
    format!("{t}\n")
}

/// A two-column FIELD/VALUE table.
pub fn fields_table(fields: Vec<(&'static str, String)>) -> String {
    let mut t = new_table();
    t.set_header(["FIELD", "VALUE"]);
    for (k, v) in fields {
        t.add_row([k.to_string(), printable(v)]);
    }
    format!("{t}\n")
}

pub fn render_list<T: Tabular + Serialize>(format: OutputFormat, page: &Page<T>) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => Ok(list_table(&page.items)),
        _ => encode(format, page),
    }
}

pub fn render_one<T: Tabular + Serialize>(format: OutputFormat, value: &T) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => Ok(fields_table(value.fields())),
        _ => encode(format, value),
    }
}

/// A 202 answer: the resource plus the job that tracks the work.
pub fn render_accepted<T: Tabular + Serialize>(
    format: OutputFormat,
    accepted: &Accepted<T>,
) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => {
            let mut fields = accepted.resource.fields();
            fields.push(("JOB", accepted.job.id.to_string()));
            fields.push(("JOB STATE", accepted.job.state.to_string()));
            Ok(fields_table(fields))
        }
        _ => encode(format, accepted),
    }
}

// ------------------------------------------------------------------ value formatting

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn opt<T: Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn join<T: Display>(items: &[T], sep: &str) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(sep)
}

/// `512 MiB`, `10 GiB`, `1.5 GiB`, `2 TiB`.
pub fn mib(n: u64) -> String {
    const G: u64 = 1024;
    const T: u64 = 1024 * 1024;
    match n {
        n if n >= T && n % T == 0 => format!("{} TiB", n / T),
        n if n >= T => format!("{:.1} TiB", n as f64 / T as f64),
        n if n >= G && n % G == 0 => format!("{} GiB", n / G),
        n if n >= G => format!("{:.1} GiB", n as f64 / G as f64),
        n => format!("{n} MiB"),
    }
}

// ------------------------------------------------------------------ resources

impl Tabular for ApiInfo {
    fn headers() -> &'static [&'static str] {
        &["API VERSION", "SERVER VERSION", "EXTENSIONS"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.api_version.clone(), self.server_version.clone(), self.extensions.join(", ")]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("API VERSION", self.api_version.clone()),
            ("SERVER VERSION", self.server_version.clone()),
            ("EXTENSIONS", self.extensions.join("\n")),
        ]
    }
}

impl Tabular for Account {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "ADMIN", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.id.to_string(), self.name.clone(), self.admin.to_string(), time(&self.created_at)]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("ADMIN", self.admin.to_string()),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

impl Tabular for User {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "ADMIN", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.id.to_string(), self.name.clone(), self.admin.to_string(), time(&self.created_at)]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

impl Tabular for Whoami {
    fn headers() -> &'static [&'static str] {
        &["USER", "ACCOUNT", "ROLE", "TOKEN"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.user.name.clone(), self.account.name.clone(), self.role.to_string(), self.token.name.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let accounts: Vec<String> =
            self.accounts.iter().map(|a| format!("{} ({}): {}", a.account_name, a.account_id, a.role)).collect();
        vec![
            ("USER", format!("{} ({})", self.user.name, self.user.id)),
            ("ADMIN", self.admin.to_string()),
            ("ACCOUNT", format!("{} ({})", self.account.name, self.account.id)),
            ("ROLE", self.role.to_string()),
            ("TOKEN", format!("{} ({})", self.token.name, self.token.id)),
            ("TOKEN ROLE", self.token.role.map(|r| r.to_string()).unwrap_or_else(|| "(the user's)".into())),
            ("EXPIRES", self.token.expires_at.as_ref().map(time).unwrap_or_else(|| "never".into())),
            ("ACCOUNTS", accounts.join("\n")),
        ]
    }
}

impl Tabular for AuditEntry {
    fn headers() -> &'static [&'static str] {
        &["TIME", "USER", "ACCOUNT", "ACTION", "RESOURCE", "STATUS", "CODE", "SOURCE", "REQUEST"]
    }
    fn row(&self) -> Vec<String> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        vec![
            time(&self.time),
            opt(self.user_id.as_ref().map(|u| u.to_string())),
            opt(self.account_id.as_ref().map(|a| a.to_string())),
            self.action.clone(),
            opt(self.resource_id.clone()),
            self.status.to_string(),
            opt(self.error_code.clone()),
            self.source.clone(),
            self.request_id.to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

impl Tabular for Member {
    fn headers() -> &'static [&'static str] {
        &["USER", "USER ID", "ROLE", "SINCE"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.user_name.clone(), self.user_id.to_string(), self.role.to_string(), time(&self.created_at)]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

impl Tabular for Token {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "USER", "ROLE", "EXPIRES", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.user_id.to_string(),
            self.role.map(|r| r.to_string()).unwrap_or_else(|| "(the user's)".into()),
            match &self.expires_at {
                None => "never".into(),
                // Listed until removed, but refused: say so where it is read.
                Some(e) if *e <= chrono::Utc::now() => format!("{} (expired)", time(e)),
                Some(e) => time(e),
            },
            time(&self.created_at),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

impl Tabular for QuotaUsage {
    fn headers() -> &'static [&'static str] {
        &["QUOTA", "USED", "LIMIT", "SET FOR ACCOUNT"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.key.to_string(),
            self.used.to_string(),
            self.limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string()),
            if self.set_for_account { "yes" } else { "no (default)" }.to_owned(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

impl Tabular for FloatingIp {
    fn headers() -> &'static [&'static str] {
        &["ID", "IP", "INSTANCE", "INTERFACE", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        vec![
            self.id.to_string(),
            self.ip.to_string(),
            opt(self.instance_id.as_ref().map(|i| i.to_string())),
            opt(self.interface_id.as_ref().map(|i| i.to_string())),
            time(&self.created_at),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

/// `k=v` pairs, or "-".
fn labels(l: &std::collections::BTreeMap<String, String>, sep: &str) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(sep)
}

impl Tabular for ServerGroup {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "POLICY", "MEMBERS", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.policy.to_string(),
            self.members.len().to_string(),
            time(&self.created_at),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("POLICY", self.policy.to_string()),
            ("MEMBERS", join(&self.members, "\n")),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

impl Tabular for KeyPair {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "FINGERPRINT", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.id.to_string(), self.name.clone(), self.fingerprint.clone(), time(&self.created_at)]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("FINGERPRINT", self.fingerprint.clone()),
            ("PUBLIC KEY", self.public_key.trim_end().to_string()),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

impl Tabular for ImageMembers {
    fn headers() -> &'static [&'static str] {
        &["IMAGE", "MEMBERS"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.image_id.to_string(), members(self)]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![("IMAGE", self.image_id.to_string()), ("MEMBERS", members(self))]
    }
}

/// "a-1 (accepted), a-2 (pending)".
fn members(m: &ImageMembers) -> String {
    if m.members.is_empty() {
        return "-".into();
    }
    let each = m.members.iter().map(|a| match m.member_status.get(a.as_str()) {
        Some(s) => format!("{a} ({s})"),
        None => a.to_string(),
    });
    each.collect::<Vec<_>>().join(", ")
}

impl Tabular for Image {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "STATE", "FORMAT", "ARCH", "HYPERVISORS", "PUBLIC", "USER", "SOURCE"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.state.to_string(),
            self.format.to_string(),
            self.arch.to_string(),
            join(&self.hypervisors, ","),
            self.public.to_string(),
            opt(&self.default_user),
            self.source.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("STATE", self.state.to_string()),
            ("FAILURE REASON", opt(&self.failure_reason)),
            ("FORMAT", self.format.to_string()),
            ("ARCH", self.arch.to_string()),
            ("HYPERVISORS", join(&self.hypervisors, ", ")),
            ("SOURCE", self.source.clone()),
            ("CHECKSUM", opt(&self.checksum)),
            ("SIZE", self.size_bytes.map(|s| s.to_string()).unwrap_or_else(|| "-".into())),
            ("DISK SIZE", self.virtual_size.map_or_else(|| "-".into(), |b| mib(b.div_ceil(1 << 20)))),
            ("INITRD", opt(&self.initrd)),
            ("KERNEL CMDLINE", opt(&self.kernel_cmdline)),
            ("BOOT MODE", self.boot_mode.to_string()),
            ("KERNEL", self.kernel_id.as_ref().map(|k| k.to_string()).unwrap_or_else(|| "-".into())),
            ("MIN DISK", self.min_disk.map_or_else(|| "-".into(), |b| mib(b.div_ceil(1 << 20)))),
            ("MIN MEMORY", self.min_memory.map_or_else(|| "-".into(), |b| mib(b.div_ceil(1 << 20)))),
            ("OS", opt(&self.os)),
            ("PUBLIC", self.public.to_string()),
            ("OWNER", self.owner.as_ref().map_or_else(|| "-".into(), |o| o.to_string())),
            ("SHARED WITH YOU", self.member_status.map_or_else(|| "-".into(), |s| s.to_string())),
            ("DEFAULT USER", opt(&self.default_user)),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

impl Tabular for Network {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "CIDR", "GATEWAY", "DHCP RANGE", "VNI"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.cidr.to_string(),
            self.gateway.to_string(),
            format!("{}-{}", self.dhcp_start, self.dhcp_end),
            self.vni.to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("CIDR", self.cidr.to_string()),
            ("GATEWAY", self.gateway.to_string()),
            ("DHCP START", self.dhcp_start.to_string()),
            ("DHCP END", self.dhcp_end.to_string()),
            ("VNI", self.vni.to_string()),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

impl Tabular for SecurityGroup {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "RULES", "DESCRIPTION"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.id.to_string(), self.name.clone(), self.rules.len().to_string(), self.description.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let rules = if self.rules.is_empty() {
            "-".to_string()
        } else {
            self.rules.iter().map(|r| format!("{} {}", r.id, format_rule(&r.spec))).collect::<Vec<_>>().join("\n")
        };
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("DESCRIPTION", self.description.clone()),
            ("RULES", rules),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

/// As OpenStack's server list: the fixed address, then the floating one.
fn addresses(i: &Instance) -> String {
    let ips: Vec<_> = i
        .interfaces
        .iter()
        .map(|i| match i.floating_ip {
            Some(f) => format!("{} ({f})", i.ip),
            None => i.ip.to_string(),
        })
        .collect();
    join(&ips, ", ")
}

/// An instance in an admin's list of every account's (`--all-accounts`): its account
/// first, by name when the CLI found it (JSON and YAML show the instance as the API does).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct InAnyAccount {
    pub instance: Instance,
    #[serde(skip)]
    pub account_name: Option<String>,
}

impl Tabular for InAnyAccount {
    fn headers() -> &'static [&'static str] {
        &["ID", "ACCOUNT", "NAME", "STATE", "HYPERVISOR", "HOST", "IPS"]
    }
    fn row(&self) -> Vec<String> {
        let i = &self.instance;
        let account = match &self.account_name {
            Some(n) => format!("{n} ({})", i.account_id),
            None => i.account_id.to_string(),
        };
        vec![
            i.id.to_string(),
            account,
            i.name.clone(),
            i.state.to_string(),
            i.hypervisor.to_string(),
            opt(&i.host_node_id),
            addresses(i),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.instance.fields()
    }
}

impl Tabular for Instance {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "STATE", "HYPERVISOR", "CPUS", "MEMORY", "HOST", "IPS"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.state.to_string(),
            self.hypervisor.to_string(),
            self.cpus.to_string(),
            mib(self.memory_mib.into()),
            opt(&self.host_node_id),
            addresses(self),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let interfaces = if self.interfaces.is_empty() {
            "-".to_string()
        } else {
            self.interfaces
                .iter()
                .map(|i| {
                    let fip = i.floating_ip.map(|f| format!(" floating:{f}")).unwrap_or_default();
                    format!(
                        "{} {} {} {} {} sg:{}{fip}",
                        i.id,
                        i.network_id,
                        i.ip,
                        i.mac,
                        i.state,
                        join(&i.security_groups, ",")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut f = vec![
            ("ID", self.id.to_string()),
            ("ACCOUNT", self.account_id.to_string()),
            ("NAME", self.name.clone()),
            ("STATE", self.state.to_string()),
            ("GOAL", self.goal.to_string()),
            ("IMAGE", self.image_id.to_string()),
            ("HYPERVISOR", self.hypervisor.to_string()),
            ("CPUS", self.cpus.to_string()),
            ("MEMORY", mib(self.memory_mib.into())),
            ("ROOT DISK", self.root_disk_size.map_or_else(|| "image size".into(), |b| mib(b.div_ceil(1 << 20)))),
            ("HOST", opt(&self.host_node_id)),
            ("SSH KEY", opt(&self.ssh_key_id)),
            ("SERVER GROUP", opt(&self.server_group_id)),
            ("INTERFACES", interfaces),
            ("VOLUMES", join(&self.volumes, "\n")),
        ];
        if let Some(reason) = &self.failure_reason {
            f.push(("FAILURE", reason.clone()));
        }
        f.push(("CREATED", time(&self.created_at)));
        f.push(("UPDATED", time(&self.updated_at)));
        f
    }
}

impl Tabular for ConsoleLog {
    fn headers() -> &'static [&'static str] {
        &["INSTANCE", "OUTPUT"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.instance_id.to_string(), self.output.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![("INSTANCE", self.instance_id.to_string()), ("OUTPUT", self.output.clone())]
    }
}

impl Tabular for Volume {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "SIZE", "STATE", "INSTANCE", "STORAGE NODE"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            mib(self.size_mib),
            self.state.to_string(),
            opt(&self.instance_id),
            opt(&self.storage_node_id),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("SIZE", mib(self.size_mib)),
            ("STATE", self.state.to_string()),
            ("INSTANCE", opt(&self.instance_id)),
            ("STORAGE NODE", opt(&self.storage_node_id)),
            ("SNAPSHOT", opt(&self.snapshot_id)),
        ];
        if let Some(reason) = &self.failure_reason {
            f.push(("FAILURE", reason.clone()));
        }
        f.push(("CREATED", time(&self.created_at)));
        f.push(("UPDATED", time(&self.updated_at)));
        f
    }
}

impl Tabular for Snapshot {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "VOLUME", "SIZE", "STATE", "STORAGE NODE", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.volume_id.to_string(),
            mib(self.size_mib),
            self.state.to_string(),
            self.storage_node_id.to_string(),
            time(&self.created_at),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("NAME", self.name.clone()),
            ("VOLUME", self.volume_id.to_string()),
            ("SIZE", mib(self.size_mib)),
            ("STATE", self.state.to_string()),
            ("STORAGE NODE", self.storage_node_id.to_string()),
            ("CREATED", time(&self.created_at)),
        ]
    }
}

/// " (over: the host offers less now)" when more disk is booked on a host than it offers
/// since its last start (something else took room on its file system).
fn over(h: &HostNode) -> &'static str {
    match h.disk_allocatable_mib {
        Some(a) if h.disk_used_mib > a => " (over: the host offers less now)",
        _ => "",
    }
}

impl Tabular for HostInstance {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "ACCOUNT", "STATE", "HYPERVISOR", "CPUS", "MEMORY", "DISK", "PLACED"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            format!("{} ({})", self.account_name, self.account_id),
            self.state.to_string(),
            self.hypervisor.to_string(),
            self.cpus.to_string(),
            mib(u64::from(self.memory_mib)),
            mib(self.disk_mib),
            if self.placed { "yes" } else { "no: stopped, disk kept" }.into(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

impl Tabular for Evacuation {
    fn headers() -> &'static [&'static str] {
        &["HOST", "INSTANCES"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.host_node_id.to_string(),
            if self.instances.is_empty() { "-".into() } else { join(&self.instances, "\n") },
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOST", self.host_node_id.to_string()),
            ("EVACUATED", if self.instances.is_empty() { "none".into() } else { join(&self.instances, "\n") }),
            (
                "NOW",
                "stopped with no host (terminated if a terminate was asked); started, each boots afresh elsewhere"
                    .into(),
            ),
        ]
    }
}

/// Whether a host takes new instances: "yes", or `cordoned` with the admin's reason.
fn placing(h: &HostNode, cordoned: &str) -> String {
    match (h.schedulable, &h.cordon_reason) {
        (true, _) => "yes".to_string(),
        (false, Some(r)) => format!("{cordoned}: {r}"),
        (false, None) => cordoned.to_string(),
    }
}

impl Tabular for HostNode {
    fn headers() -> &'static [&'static str] {
        &[
            "ID",
            "STATE",
            "PLACING",
            "HYPERVISORS",
            "ZONE",
            "LABELS",
            "CORES",
            "VCPUS USED/ALLOCATABLE",
            "MEMORY USED/ALLOCATABLE",
            "DISK USED/ALLOCATABLE",
            "LAST SEEN",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.state.to_string(),
            placing(self, "cordoned"),
            join(&self.hypervisors, ","),
            opt(&self.zone),
            labels(&self.labels, ","),
            self.cpus.to_string(),
            format!("{}/{}", self.cpus_used, self.cpus_allocatable),
            format!("{}/{}", mib(self.memory_used_mib), mib(self.memory_allocatable_mib)),
            format!(
                "{}/{}{}",
                mib(self.disk_used_mib),
                self.disk_allocatable_mib.map(mib).unwrap_or_else(|| "-".into()),
                over(self)
            ),
            time(&self.last_seen),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let caps = match &self.capabilities {
            serde_json::Value::Object(m) if m.is_empty() => "-".to_string(),
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n"),
            serde_json::Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        vec![
            ("ID", self.id.to_string()),
            ("STATE", self.state.to_string()),
            ("PLACING", placing(self, "cordoned, no new instances")),
            ("HYPERVISORS", join(&self.hypervisors, ", ")),
            ("ZONE", opt(&self.zone)),
            ("LABELS", labels(&self.labels, "\n")),
            ("CORES", self.cpus.to_string()),
            ("VCPUS USED", self.cpus_used.to_string()),
            ("VCPUS ALLOCATABLE", self.cpus_allocatable.to_string()),
            ("MEMORY", mib(self.memory_mib)),
            ("MEMORY USED", mib(self.memory_used_mib)),
            ("MEMORY ALLOCATABLE", mib(self.memory_allocatable_mib)),
            // "-": an older hva that does not report its disk, so none is booked there.
            ("DISK", self.disk_mib.map(mib).unwrap_or_else(|| "-".into())),
            ("DISK USED", format!("{}{}", mib(self.disk_used_mib), over(self))),
            ("DISK ALLOCATABLE", self.disk_allocatable_mib.map(mib).unwrap_or_else(|| "-".into())),
            ("CAPABILITIES", caps),
            ("LAST SEEN", time(&self.last_seen)),
        ]
    }
}

impl Tabular for StorageNode {
    fn headers() -> &'static [&'static str] {
        &["ID", "STATE", "BACKEND", "USED", "CAPACITY", "LAST SEEN"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.state.to_string(),
            self.backend.to_string(),
            mib(self.used_mib),
            mib(self.capacity_mib),
            time(&self.last_seen),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("STATE", self.state.to_string()),
            ("BACKEND", self.backend.to_string()),
            ("CAPACITY", mib(self.capacity_mib)),
            ("USED", mib(self.used_mib)),
            ("LAST SEEN", time(&self.last_seen)),
        ]
    }
}

impl Tabular for Job {
    fn headers() -> &'static [&'static str] {
        &["ID", "ACTION", "RESOURCE", "STATE", "CREATED", "MESSAGE"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.action.clone(),
            self.resource_id.clone(),
            self.state.to_string(),
            time(&self.created_at),
            opt(&self.message),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.to_string()),
            ("ACTION", self.action.clone()),
            ("RESOURCE", self.resource_id.clone()),
            ("STATE", self.state.to_string()),
            ("MESSAGE", opt(&self.message)),
            ("CREATED", time(&self.created_at)),
            ("FINISHED", self.finished_at.as_ref().map_or_else(|| "-".into(), time)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_schema::*;

    /// A tenant's description or key comment with escape sequences reached the terminal
    /// of whoever listed it (retitled, cleared, recoloured it).
    #[test]
    fn tables_show_control_characters_written_out() {
        let evil = "desc \u{1b}]0;PWNED\u{7} \u{1b}[2J\u{1b}[31mred \u{202e}txt.exe\r\0".to_owned();
        let shown = fields_table(vec![("DESCRIPTION", evil.clone()), ("USER DATA", "a\nb".into())]);
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n') && !shown.contains('\u{202e}'), "{shown:?}");
        assert!(shown.contains("desc \\u{1b}]0;PWNED\\u{7} \\u{1b}[2J\\u{1b}[31mred \\u{202e}txt.exe\\u{d}\\u{0}"));
        assert!(shown.contains("┆ a ") && shown.contains("┆ b "), "line breaks stay: {shown}");
        let mut v = volume();
        v.name = evil;
        let listed = list_table(&[v]);
        assert!(!listed.contains('\u{1b}') && listed.contains("\\u{1b}"), "{listed:?}");
    }

    /// An expired token is still listed (until removed) but refused: the list said
    /// nothing of it.
    #[test]
    fn expired_tokens_are_marked() {
        let token = |expires_at| Token {
            id: "tok-1".parse().unwrap(),
            name: "ci".into(),
            account_id: "a-1".parse().unwrap(),
            user_id: "u-1".parse().unwrap(),
            role: None,
            expires_at,
            created_at: Utc::now(),
        };
        let past = token(Some(Utc::now() - chrono::Duration::hours(1))).row();
        assert!(past[4].ends_with(" (expired)"), "{past:?}");
        let future = token(Some(Utc::now() + chrono::Duration::hours(1))).row();
        assert!(!future[4].contains("expired"), "{future:?}");
        assert_eq!(token(None).row()[4], "never");
    }

    fn job() -> Job {
        Job {
            id: "job-1".parse().unwrap(),
            action: "volume.create".into(),
            resource_id: "vol-1".into(),
            state: JobState::Running,
            message: None,
            created_at: Utc::now(),
            finished_at: None,
        }
    }

    fn volume() -> Volume {
        Volume {
            id: "vol-1".parse().unwrap(),
            name: "data".into(),
            size_mib: 10240,
            state: VolumeState::Creating,
            storage_node_id: None,
            instance_id: None,
            snapshot_id: None,
            image_id: None,
            failure_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn instance_rows_show_floating_ips_beside_fixed_ones() {
        let iface = |ip: &str, fip: Option<&str>| Interface {
            id: "vif-1".parse().unwrap(),
            network_id: "nw-1".parse().unwrap(),
            mac: "52:54:00:12:34:56".parse().unwrap(),
            ip: ip.parse().unwrap(),
            security_groups: vec![],
            state: InterfaceState::Active,
            floating_ip: fip.map(|f| f.parse().unwrap()),
        };
        let inst = Instance {
            id: "i-1".parse().unwrap(),
            account_id: "a-1".parse().unwrap(),
            name: "web1".into(),
            state: InstanceState::Running,
            goal: InstanceGoal::Running,
            image_id: "img-1".parse().unwrap(),
            hypervisor: HypervisorKind::Qemu,
            cpus: 1,
            memory_mib: 512,
            host_node_id: None,
            ssh_key_id: None,
            root_disk_size: None,
            server_group_id: None,
            interfaces: vec![iface("10.0.0.5", Some("203.0.113.7")), iface("10.1.0.5", None)],
            volumes: vec![],
            failure_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert_eq!(inst.row().last().unwrap(), "10.0.0.5 (203.0.113.7), 10.1.0.5");
        let fields = inst.fields();
        let ifaces = &fields.iter().find(|(k, _)| *k == "INTERFACES").unwrap().1;
        assert!(ifaces.lines().next().unwrap().ends_with("floating:203.0.113.7"), "{ifaces}");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(mib(256), "256 MiB");
        assert_eq!(mib(10240), "10 GiB");
        assert_eq!(mib(1536), "1.5 GiB");
        assert_eq!(mib(2 * 1024 * 1024), "2 TiB");
    }

    #[test]
    fn accepted_shows_resource_and_job() {
        let acc = Accepted { job: job(), resource: volume() };
        let table = render_accepted(OutputFormat::Table, &acc).unwrap();
        for needle in ["vol-1", "10 GiB", "JOB", "job-1", "running"] {
            assert!(table.contains(needle), "{table}");
        }
        let json = render_accepted(OutputFormat::Json, &acc).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["job"]["id"], "job-1");
        assert_eq!(v["resource"]["size_mib"], 10240);
        let yaml = render_accepted(OutputFormat::Yaml, &acc).unwrap();
        assert!(yaml.contains("size_mib: 10240"), "{yaml}");
    }

    #[test]
    fn lists_have_one_row_per_item() {
        let page = Page { items: vec![volume(), volume()], next_cursor: None };
        let table = render_list(OutputFormat::Table, &page).unwrap();
        assert_eq!(table.matches("vol-1").count(), 2, "{table}");
        assert!(table.contains("STORAGE NODE"));
    }
}
