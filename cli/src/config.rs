//! Where the API URL and token come from: `--api`/`--token`, else `VDC_API`/`VDC_TOKEN`,
//! else the config file (`$VDC_CONFIG`, or `<config dir>/vdc/config.toml`). Each of the two
//! settings is resolved on its own, so a flag can override just the URL.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const ENV_API: &str = "VDC_API";
pub const ENV_TOKEN: &str = "VDC_TOKEN";
pub const ENV_CONFIG: &str = "VDC_CONFIG";
pub const ENV_ACCOUNT: &str = "VDC_ACCOUNT";

/// The config file's contents; also one layer (flags, environment) of the lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliConfig {
    /// Server root, e.g. `http://127.0.0.1:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The account (name or ID) that `--account` defaults to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Sessions kept by `vdc login`: account name → token. `--account NAME` (or its
    /// default) uses that account's token unless a token is given by flag or environment.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tokens: std::collections::BTreeMap<String, String>,
}

impl CliConfig {
    pub fn new(api: impl Into<String>, token: impl Into<String>) -> Self {
        Self { api: Some(api.into()), token: Some(token.into()), ..Default::default() }
    }

    /// The layer given by `VDC_API` and `VDC_TOKEN`.
    pub fn from_env() -> Self {
        Self {
            api: std::env::var(ENV_API).ok(),
            token: std::env::var(ENV_TOKEN).ok(),
            account: std::env::var(ENV_ACCOUNT).ok(),
            tokens: Default::default(),
        }
    }
}

/// The resolved settings to build a [`crate::client::Client`] from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub api: String,
    pub token: String,
    /// `--account`, else `VDC_ACCOUNT`, else the file's `account`, if any.
    pub account: Option<String>,
    /// The account was named by `--account` or `VDC_ACCOUNT` (not the file's default).
    pub account_explicit: bool,
    /// The token is the session `vdc login` kept for `account`.
    pub token_for_account: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no API {what} configured: pass {flag}, set {env}, or put {key} = \"...\" in {path} (`vdc up` writes that file)", path = .path.display())]
    Missing { what: &'static str, flag: &'static str, env: &'static str, key: &'static str, path: PathBuf },
    #[error("no session is kept for account {account} in {path}: sign in to it with `vdc login USER --account {account}`, or pass --token", path = .path.display())]
    NoSession { account: String, path: PathBuf },
    #[error("cannot read config file {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {} is not valid: {source}", .path.display())]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("cannot write config file {}: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("config file {} is not a regular file, so vdc does not write its sessions there: point VDC_CONFIG or --config at a file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot encode config: {0}")]
    Encode(#[from] toml::ser::Error),
}

impl ConfigError {
    /// Whether the user must change how vdc is invoked or configured (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ConfigError::Missing { .. }
                | ConfigError::NoSession { .. }
                | ConfigError::Parse { .. }
                | ConfigError::NotAFile { .. }
        )
    }
}

/// `$VDC_CONFIG`, else `<config dir>/vdc/config.toml` (`~/.config/vdc/config.toml` on Linux).
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_CONFIG).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::config_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("vdc")
        .join("config.toml")
}

/// Resolve with the real environment and config file; the arguments are the flag values.
pub fn load(
    api_flag: Option<&str>,
    token_flag: Option<&str>,
    account_flag: Option<&str>,
) -> Result<Endpoint, ConfigError> {
    let flags = CliConfig {
        api: api_flag.map(str::to_owned),
        token: token_flag.map(str::to_owned),
        account: account_flag.map(str::to_owned),
        tokens: Default::default(),
    };
    load_with(&flags, &CliConfig::from_env(), &config_path())
}

/// [`load`] with explicit layers; the file at `path` is read only if a setting is missing
/// from `flags` and `env`, so a broken file does not matter when it is not needed.
pub fn load_with(flags: &CliConfig, env: &CliConfig, path: &Path) -> Result<Endpoint, ConfigError> {
    let mut api = non_empty(&flags.api).or_else(|| non_empty(&env.api));
    let mut token = non_empty(&flags.token).or_else(|| non_empty(&env.token));
    let mut account = non_empty(&flags.account).or_else(|| non_empty(&env.account));
    let account_explicit = account.is_some();
    let mut token_for_account = false;
    if api.is_none() || token.is_none() {
        if let Some(file) = read(path)? {
            api = api.or_else(|| non_empty(&file.api));
            account = account.or_else(|| non_empty(&file.account));
            if token.is_none() {
                // The account's own session first, then the file's token.
                let kept = account.as_ref().and_then(|a| file.tokens.get(a)).filter(|t| !t.trim().is_empty());
                token_for_account = kept.is_some();
                token = kept.map(|t| t.trim().to_owned()).or_else(|| non_empty(&file.token));
            }
        }
    } else if account.is_none() {
        // Only when the file is read anyway for nothing else: a broken file stays harmless.
        account = read(path).ok().flatten().and_then(|f| non_empty(&f.account));
    }
    let api = api.ok_or_else(|| ConfigError::Missing {
        what: "URL",
        flag: "--api URL",
        env: ENV_API,
        key: "api",
        path: path.to_owned(),
    })?;
    // An account named, or the file's after `vdc logout`: signing in again is the fix.
    if let (None, Some(a)) = (&token, &account) {
        return Err(ConfigError::NoSession { account: a.clone(), path: path.to_owned() });
    }
    let token = token.ok_or_else(|| ConfigError::Missing {
        what: "token",
        flag: "--token TOKEN",
        env: ENV_TOKEN,
        key: "token",
        path: path.to_owned(),
    })?;
    Ok(Endpoint { api, token, account, account_explicit, token_for_account })
}

/// The API URL alone (`vdc login` has no token yet): `--api`, `VDC_API`, the file's.
pub fn load_api(api_flag: Option<&str>) -> Result<String, ConfigError> {
    let path = config_path();
    let api = non_empty(&api_flag.map(str::to_owned))
        .or_else(|| non_empty(&CliConfig::from_env().api))
        .or(read(&path)?.and_then(|f| non_empty(&f.api)));
    api.ok_or(ConfigError::Missing { what: "URL", flag: "--api URL", env: ENV_API, key: "api", path })
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The config file, or `None` if there is none.
pub fn read(path: &Path) -> Result<Option<CliConfig>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
    };
    toml::from_str(&text).map(Some).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
}

/// Write the config file (mode 0600, as it holds a token), creating parent directories.
/// The file is replaced atomically so a reader never sees half of it.
pub fn save(path: &Path, config: &CliConfig) -> Result<(), ConfigError> {
    let text = toml::to_string(config)?;
    let werr = |source| ConfigError::Write { path: path.to_owned(), source };
    let path = &writable(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = opts.open(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = result.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}

/// The file a save replaces: a link's target (a dotfiles manager's link stays a link),
/// never something that is not a regular file. Before, `VDC_CONFIG=/dev/null` had a
/// login run as root replace `/dev/null` with the config (red team, 2026-12-07).
fn writable(path: &Path) -> Result<PathBuf, ConfigError> {
    let target = match std::fs::canonicalize(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_owned()),
        Err(source) => return Err(ConfigError::Write { path: path.to_owned(), source }),
    };
    match std::fs::metadata(&target) {
        Ok(m) if !m.is_file() => Err(ConfigError::NotAFile { path: path.to_owned() }),
        _ => Ok(target),
    }
}

/// Whether `path` can hold vdc's config (and so its directory vdc's key records): it is a
/// regular file, a link to one, or nothing yet.
pub fn usable(path: &Path) -> bool {
    writable(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that is not a regular file is refused and left as it was; a link is written
    /// through, and stays a link.
    #[test]
    fn a_save_never_replaces_what_is_not_a_regular_file() {
        let dir = temp_dir("not-a-file");
        std::fs::create_dir_all(dir.join("a-dir")).unwrap();
        let c = CliConfig::new("http://x:1", "t");
        let err = save(&dir.join("a-dir"), &c).unwrap_err();
        assert!(matches!(err, ConfigError::NotAFile { .. }) && err.is_usage(), "{err}");
        assert!(dir.join("a-dir").is_dir());
        assert!(!usable(Path::new("/dev/null")));
        assert!(matches!(save(Path::new("/dev/null"), &c), Err(ConfigError::NotAFile { .. })));
        let real = dir.join("real.toml");
        save(&real, &c).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("link.toml")).unwrap();
        save(&dir.join("link.toml"), &CliConfig::new("http://y:2", "u")).unwrap();
        assert!(std::fs::symlink_metadata(dir.join("link.toml")).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&real).unwrap().contains("http://y:2"));
        assert!(usable(&dir.join("link.toml")) && usable(&dir.join("none.toml")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn layer(api: Option<&str>, token: Option<&str>) -> CliConfig {
        CliConfig { api: api.map(Into::into), token: token.map(Into::into), ..Default::default() }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vdc-cli-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = temp_dir("precedence");
        let path = dir.join("sub/config.toml");
        save(&path, &CliConfig::new("http://file:1", "file-token")).unwrap();

        let none = CliConfig::default();
        let ep = load_with(&none, &none, &path).unwrap();
        assert_eq!(ep.api, "http://file:1");
        assert_eq!(ep.token, "file-token");

        let env = layer(Some("http://env:2"), None);
        let ep = load_with(&none, &env, &path).unwrap();
        assert_eq!(ep.api, "http://env:2");
        assert_eq!(ep.token, "file-token");

        let env = layer(Some("http://env:2"), Some("env-token"));
        let flags = layer(None, Some("flag-token"));
        let ep = load_with(&flags, &env, &path).unwrap();
        assert_eq!(ep.api, "http://env:2");
        assert_eq!(ep.token, "flag-token");

        let flags = layer(Some("http://flag:3"), Some("flag-token"));
        let ep = load_with(&flags, &env, &path).unwrap();
        assert_eq!((ep.api.as_str(), ep.token.as_str()), ("http://flag:3", "flag-token"));

        // An empty variable counts as unset.
        let env = layer(Some(""), Some("  "));
        let ep = load_with(&none, &env, &path).unwrap();
        assert_eq!(ep.token, "file-token");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_settings_say_how_to_set_them() {
        let dir = temp_dir("missing");
        let path = dir.join("config.toml");
        let err = load_with(&layer(Some("http://x"), None), &CliConfig::default(), &path).unwrap_err();
        assert!(err.is_usage());
        let msg = err.to_string();
        for needle in ["--token", "VDC_TOKEN", "vdc up", "config.toml"] {
            assert!(msg.contains(needle), "{msg:?} lacks {needle}");
        }
    }

    #[test]
    fn a_broken_file_is_reported_only_when_needed() {
        let dir = temp_dir("broken");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "api = [").unwrap();
        let full = layer(Some("http://x"), Some("t"));
        assert!(load_with(&full, &CliConfig::default(), &path).is_ok());
        let err = load_with(&CliConfig::default(), &CliConfig::default(), &path).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_account_uses_its_kept_session() {
        let dir = temp_dir("sessions");
        let path = dir.join("config.toml");
        let mut file = CliConfig::new("http://file:1", "default-token");
        file.account = Some("team".into());
        file.tokens.insert("team".into(), "team-session".into());
        file.tokens.insert("lab".into(), "lab-session".into());
        save(&path, &file).unwrap();
        let none = CliConfig::default();
        let ep = load_with(&none, &none, &path).unwrap();
        assert_eq!((ep.token.as_str(), ep.account.as_deref()), ("team-session", Some("team")));
        assert!(ep.token_for_account && !ep.account_explicit);
        let lab = CliConfig { account: Some("lab".into()), ..Default::default() };
        let ep = load_with(&lab, &none, &path).unwrap();
        assert_eq!(ep.token, "lab-session");
        assert!(ep.token_for_account && ep.account_explicit);
        // An account without a kept session: the file's token, which run() checks.
        let other = CliConfig { account: Some("other".into()), ..Default::default() };
        let ep = load_with(&none, &other, &path).unwrap();
        assert_eq!(ep.token, "default-token");
        assert!(!ep.token_for_account && ep.account_explicit);
        // A token given by flag or environment wins over kept sessions.
        let env = CliConfig { token: Some("env-token".into()), ..Default::default() };
        let ep = load_with(&lab, &env, &path).unwrap();
        assert_eq!(ep.token, "env-token");
        assert!(!ep.token_for_account);
        // After `vdc logout`: the file's account and no token says to sign in again (it
        // said to pass --token or put one in the file).
        let mut out =
            CliConfig { api: Some("http://file:1".into()), account: Some("team".into()), ..Default::default() };
        out.tokens.clear();
        save(&path, &out).unwrap();
        let e = load_with(&none, &none, &path).unwrap_err().to_string();
        assert!(e.contains("sign in to it with `vdc login USER --account team`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn saved_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("save");
        let path = dir.join("a/b/config.toml");
        let cfg = CliConfig::new("http://127.0.0.1:9000", "secret");
        save(&path, &cfg).unwrap();
        save(&path, &cfg).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path).unwrap(), Some(cfg));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
