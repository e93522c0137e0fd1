//! The PostgreSQL the tests use: `VDC_TEST_PG_URL` (a superuser URL; tests/run.sh starts
//! one server for all test processes), else a private server of this test process.
//!
//! The private server is started once per process, on first use: `initdb` into a fresh
//! directory under /tmp (as the `postgres` user when running as root: initdb refuses
//! root), `pg_ctl start` on a free loopback port, its socket in that directory, fsync off.
//! A test binary has no global teardown, so a watchdog removes it: a shell whose standard
//! input is a pipe only this process holds (std's pipes are close-on-exec, so no other
//! child inherits it). When the process ends — normally, by a panic, or killed — the pipe
//! closes, and the watchdog stops the server and deletes the directory. The watchdog and
//! the server run in process groups of their own, so a Ctrl-C at the terminal does not
//! take the watchdog down before it has cleaned up.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The environment variable naming a running server (a superuser URL ending in `/DBNAME`).
pub const ENV_URL: &str = "VDC_TEST_PG_URL";

static PRIVATE: OnceLock<Result<String, String>> = OnceLock::new();

/// The superuser URL of the tests' PostgreSQL: `VDC_TEST_PG_URL`, else this process's
/// private server (started on the first call; this call then blocks for a few seconds).
/// Panics if neither can be had, saying why.
pub fn admin_url() -> String {
    if let Some(url) = std::env::var(ENV_URL).ok().filter(|u| !u.is_empty()) {
        return url;
    }
    match PRIVATE.get_or_init(|| start_private().map_err(|e| format!("{e:#}"))) {
        Ok(url) => url.clone(),
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A command run as the server's owner: `postgres` when we are root, else ourselves.
fn as_owner(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs `c` in `dir` (readable by the server's owner, unlike perhaps our own directory).
fn run(c: &mut Command, dir: &Path, what: &str) -> anyhow::Result<()> {
    let out = c.current_dir(dir).stdin(Stdio::null()).output().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn start_private() -> anyhow::Result<String> {
    let bin = bin_dir().ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `bash packaging/install-deps.sh` \
             (as root), or set {ENV_URL} to the superuser URL of a running server"
        )
    })?;
    let root = is_root();
    // Short and world-traversable: the Unix socket path must stay under 108 bytes, and
    // as root the server runs as `postgres`.
    let dir = PathBuf::from(format!("/tmp/vdc-test-pg.{}.{:08x}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let data = dir.join("data");

    // The watchdog first, so that the directory goes even if starting fails half-way.
    let mut stop = if root { vec!["runuser", "-u", "postgres", "--"] } else { vec![] };
    let pg_ctl = bin.join("pg_ctl");
    stop.push(pg_ctl.to_str().unwrap_or("pg_ctl"));
    let script = format!(
        "cat >/dev/null; {} -D \"$1/data\" -m immediate stop >/dev/null 2>&1; rm -rf \"$1\"",
        stop.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
    );
    let mut watchdog = Command::new("sh")
        .args(["-c", &script, "vdc-test-pg-watchdog"])
        .arg(&dir)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting the PostgreSQL watchdog: {e}"))?;
    // Held open until this process exits; never written to.
    let pipe = watchdog.stdin.take().expect("piped stdin");
    std::mem::forget(pipe);
    std::mem::forget(watchdog);

    if root {
        run(Command::new("chown").arg("postgres:").arg(&dir), &dir, "chown postgres")?;
    }
    let mut initdb = as_owner(root, &bin.join("initdb"));
    initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(&mut initdb, &dir, "initdb")?;

    // A free port may be taken between looking and binding: try a few.
    let mut last = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut start = as_owner(root, &pg_ctl);
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                dir.display()
            ))
            .arg("start")
            .process_group(0);
        match run(&mut start, &dir, "pg_ctl start") {
            Ok(()) => return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                last = Some(anyhow::anyhow!("{e}; server log:\n{log}"));
            }
        }
    }
    Err(last.expect("at least one attempt"))
}
