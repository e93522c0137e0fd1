//! `vdc instance ssh`: what `ssh` is run with, and the private keys the CLI remembers.
//!
//! `vdc keypair create NAME --private-key-out FILE` records FILE under the CLI config
//! directory (`keys/<key pair ID>`, holding the file's absolute path), so that a later
//! `vdc instance ssh` of an instance with that key pair finds it. The key itself stays
//! only where the user asked for it.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Everything `ssh` is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPlan {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
    pub user: String,
    /// A private key file; without it ssh uses the agent and the user's own keys.
    pub identity: Option<PathBuf>,
    /// The known_hosts file of the vdc CLI, kept apart from the user's own
    /// `~/.ssh/known_hosts`.
    pub known_hosts: PathBuf,
    /// The name the host key is recorded under: the instance's ID. A floating IP moves
    /// from guest to guest, so keyed by address, the next guest behind it would be
    /// refused as a changed host key (and a changed key of one instance must still be).
    pub host_key_alias: String,
    /// The remote command; empty for a login shell.
    pub command: Vec<String>,
}

/// The arguments of `ssh` (without the program name).
pub fn ssh_args(p: &SshPlan) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut opt = |o: String| {
        a.push("-o".into());
        a.push(o.into());
    };
    // A new guest's host key is unknown; trust it on first use, refuse a changed one.
    opt("StrictHostKeyChecking=accept-new".into());
    let mut kh = OsString::from("UserKnownHostsFile=");
    kh.push(&p.known_hosts);
    a.push("-o".into());
    a.push(kh);
    a.push("-o".into());
    a.push(format!("HostKeyAlias={}", p.host_key_alias).into());
    if let Some(id) = &p.identity {
        a.push("-i".into());
        a.push(id.into());
        // Only that key: an agent full of keys would otherwise exhaust the server's
        // MaxAuthTries before ssh gets to it.
        a.push("-o".into());
        a.push("IdentitiesOnly=yes".into());
    }
    if let Some(port) = p.port {
        a.push("-p".into());
        a.push(port.to_string().into());
    }
    a.push("-l".into());
    a.push(p.user.clone().into());
    a.push(p.ip.to_string().into());
    if !p.command.is_empty() {
        // `--` so that a command starting with `-` is not read as an ssh option.
        a.push("--".into());
        a.extend(p.command.iter().map(OsString::from));
    }
    a
}

/// What to tell a user whose instance has no floating IP.
pub fn no_floating_ip(instance: &str) -> String {
    format!(
        "instance {instance} has no floating IP, so it cannot be reached from here; give it one with\n  \
         vdc floating-ip create\n  \
         vdc floating-ip associate FIP_ID {instance}\n\
         (FIP_ID is the ID `vdc floating-ip create` prints)"
    )
}

/// Where the CLI keeps its own files: the directory of its config file.
pub fn config_dir(config_file: &Path) -> PathBuf {
    config_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned()
}

fn key_record(dir: &Path, keypair_id: &str) -> PathBuf {
    dir.join("keys").join(keypair_id)
}

/// Records that the private key of key pair `keypair_id` was saved at `key_file`.
pub fn remember_key(dir: &Path, keypair_id: &str, key_file: &Path) -> std::io::Result<()> {
    let abs = std::path::absolute(key_file)?;
    let record = key_record(dir, keypair_id);
    std::fs::create_dir_all(record.parent().expect("keys/ has a parent"))?;
    std::fs::write(record, abs.as_os_str().as_encoded_bytes())
}

/// Drops the record for `keypair_id` (a key pair that is gone); the key file stays.
pub fn forget_key(dir: &Path, keypair_id: &str) {
    let _ = std::fs::remove_file(key_record(dir, keypair_id));
}

/// The private key file recorded for `keypair_id`, if it still exists.
pub fn saved_key(dir: &Path, keypair_id: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(key_record(dir, keypair_id)).ok()?;
    let path = PathBuf::from(text.trim_end_matches('\n'));
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SshPlan {
        SshPlan {
            ip: Ipv4Addr::new(192, 0, 2, 10),
            port: None,
            user: "debian".into(),
            identity: None,
            known_hosts: "/cfg/known_hosts".into(),
            host_key_alias: "i-1".into(),
            command: vec![],
        }
    }

    fn strs(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn a_login_uses_the_agent_and_our_known_hosts() {
        assert_eq!(
            strs(ssh_args(&plan())),
            [
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "UserKnownHostsFile=/cfg/known_hosts",
                "-o",
                "HostKeyAlias=i-1",
                "-l",
                "debian",
                "192.0.2.10"
            ]
        );
    }

    #[test]
    fn a_key_a_port_and_a_command() {
        let p = SshPlan {
            identity: Some("/home/u/k".into()),
            port: Some(2222),
            command: vec!["-x".into(), "echo hi".into()],
            ..plan()
        };
        let a = strs(ssh_args(&p));
        assert_eq!(
            a[6..],
            [
                "-i",
                "/home/u/k",
                "-o",
                "IdentitiesOnly=yes",
                "-p",
                "2222",
                "-l",
                "debian",
                "192.0.2.10",
                "--",
                "-x",
                "echo hi"
            ]
        );
    }

    #[test]
    fn the_hint_shows_the_commands() {
        let m = no_floating_ip("web1");
        assert!(m.contains("vdc floating-ip create\n") && m.contains("vdc floating-ip associate FIP_ID web1"), "{m}");
    }

    #[test]
    fn keys_are_remembered_by_key_pair_id() {
        let dir = std::env::temp_dir().join(format!("vdc-ssh-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id_k");
        assert_eq!(saved_key(&dir, "ssh-a"), None);
        remember_key(&dir, "ssh-a", &key).unwrap();
        assert_eq!(saved_key(&dir, "ssh-a"), None, "a key file that is gone is not offered");
        std::fs::write(&key, "k").unwrap();
        assert_eq!(saved_key(&dir, "ssh-a"), Some(key.clone()));
        assert_eq!(saved_key(&dir, "ssh-b"), None);
        forget_key(&dir, "ssh-a");
        assert_eq!(saved_key(&dir, "ssh-a"), None);
        assert!(key.exists(), "forgetting keeps the key file");
        assert_eq!(config_dir(Path::new("config.toml")), Path::new("."));
        assert_eq!(config_dir(&dir.join("config.toml")), dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
