//! Running Open vSwitch's daemons privately (tests, `vdc up`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs a command; its standard output, or an error carrying the command line and its
/// standard error.
pub fn sh(prog: &str, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// An ovsdb-server and ovs-vswitchd of vdc's own (private run directory and database),
/// in namespace `netns` or in the caller's: for tests, and for `vdc up` on a machine
/// where no Open vSwitch service runs. Stopped on drop.
pub struct Switch {
    pub dir: PathBuf,
    /// Tests remove their bridges on drop; `vdc up` keeps them (and their ports' numbers)
    /// for the next start.
    pub remove_bridges: bool,
    /// The namespace the daemons run in; None: the caller's.
    netns: Option<String>,
}

impl Switch {
    /// A fresh switch whose bridges go with it (tests).
    pub fn start(netns: Option<&str>, dir: &Path) -> std::io::Result<Switch> {
        Self::start_with(netns, dir, true)
    }

    /// A switch whose database survives it: started again, it has the same bridges.
    pub fn start_persistent(dir: &Path) -> std::io::Result<Switch> {
        Self::start_with(None, dir, false)
    }

    fn start_with(netns: Option<&str>, dir: &Path, remove_bridges: bool) -> std::io::Result<Switch> {
        std::fs::create_dir_all(dir)?;
        if !dir.join("conf.db").exists() {
            let db = format!("{}/conf.db", dir.display());
            sh("ovsdb-tool", &["create", &db, "/usr/share/openvswitch/vswitch.ovsschema"])?;
        }
        let sw = Switch { dir: dir.to_owned(), remove_bridges, netns: netns.map(str::to_owned) };
        sw.launch()?;
        Ok(sw)
    }

    /// Starts both daemons, first stopping any left over (a run that was killed, or the
    /// survivor of a pair one of which died).
    fn launch(&self) -> std::io::Result<()> {
        stop_daemons(&self.dir);
        let d = self.dir.to_string_lossy().into_owned();
        let rundir = format!("OVS_RUNDIR={d}");
        let run = |args: &[&str]| -> std::io::Result<String> {
            let mut all = vec![];
            if let Some(n) = &self.netns {
                all.extend(["ip", "netns", "exec", n.as_str()]);
            }
            all.extend(["env", rundir.as_str()]);
            all.extend_from_slice(args);
            sh(all[0], &all[1..])
        };
        run(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            &format!("--log-file={d}/ovsdb-server.log"),
            "--detach",
        ])?;
        sh("ovs-vsctl", &[&format!("--db=unix:{d}/db.sock"), "--no-wait", "init"])?;
        run(&[
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            "--detach",
        ])?;
        Ok(())
    }

    /// What a service manager does for the system's switch: when either daemon has died,
    /// both are started again (the database keeps bridges and ports; nwagent sees the new
    /// ovs-vswitchd and puts its flows back). Returns the daemons that were found dead.
    pub fn revive(&self) -> std::io::Result<Vec<&'static str>> {
        let dead: Vec<&'static str> = DAEMONS
            .into_iter()
            .filter(|p| {
                let pid = std::fs::read_to_string(self.dir.join(format!("{p}.pid"))).unwrap_or_default();
                !running(pid.trim())
            })
            .collect();
        if !dead.is_empty() {
            self.launch()?;
        }
        Ok(dead)
    }

    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    pub fn vsctl(&self, args: &[&str]) -> std::io::Result<String> {
        let db = format!("--db=unix:{}/db.sock", self.dir.display());
        // A change waits for ovs-vswitchd to apply it: bounded, so that a dead one (a test
        // that failed around a restart) does not hang the caller for good.
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        sh("ovs-vsctl", &all)
    }

    /// `ovs-ofctl dump-flows` of a bridge, without counters, sorted: comparable.
    pub fn flows(&self, bridge: &str) -> Vec<String> {
        let target = format!("unix:{}/{bridge}.mgmt", self.dir.display());
        let out = sh("ovs-ofctl", &["-O", "OpenFlow13", "--no-stats", "dump-flows", &target]).unwrap_or_default();
        let mut v: Vec<String> = out.lines().filter(|l| !l.starts_with("OFPST")).map(|l| l.trim().to_owned()).collect();
        v.sort();
        v
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // Bridges first: a netdev bridge's tap lives in the namespace until then.
        if self.remove_bridges {
            for br in self.vsctl(&["list-br"]).unwrap_or_default().lines() {
                let _ = self.vsctl(&["del-br", br.trim()]);
            }
        }
        stop_daemons(&self.dir);
    }
}

/// Stops the daemons whose pid files are in `dir` and waits (up to 10 s) until they are
/// gone. A daemon started again at once found the old one still exiting with its pid
/// file locked ("already running as pid …, aborting"; a host test's switch restart in CI).
fn stop_daemons(dir: &Path) {
    let mut pids = vec![];
    for p in DAEMONS {
        if let Ok(pid) = std::fs::read_to_string(dir.join(format!("{p}.pid"))) {
            if sh("kill", &[pid.trim()]).is_ok() {
                pids.push(pid.trim().to_owned());
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|p| running(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

const DAEMONS: [&str; 2] = ["ovs-vswitchd", "ovsdb-server"];

/// Whether process `pid` runs: not gone, nor a zombie (whose files and locks are released).
pub fn running(pid: &str) -> bool {
    !pid.is_empty()
        && std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
            .is_ok_and(|st| st.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}
