//! Fixtures for tests on real storage: a private tgtd, a btrfs on a loop device and a
//! zfs-fuse pool on a file, each with a unique name, removed again on drop (also when the
//! test fails). Root only, like sta itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(prog: &str, args: &[&str]) -> std::io::Result<String> {
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

/// A unique short tag for names (pool, loop file, tgt control port).
pub fn tag() -> String {
    format!("{:x}{:04x}", std::process::id(), rand_u16())
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(7)) as u16
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(13260)
}

/// A tgtd of the test's own: its own control port and an iSCSI portal on a free loopback
/// port.
pub struct Tgtd {
    pub control_port: u16,
    pub portal: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Tgtd {
    pub fn start(dir: &Path) -> std::io::Result<Tgtd> {
        // It only names tgtd's unix socket (/var/run/tgtd/socket.N); tgtd takes 0..=32767.
        // Never one another tgtd (a machine's own, or another test's) has.
        let taken = |p: u16| Path::new(&format!("/var/run/tgtd/socket.{p}")).exists();
        let mut control_port = 1000 + (rand_u16() % 31000);
        while taken(control_port) {
            control_port = 1000 + (control_port - 1000 + 7919) % 31000;
        }
        let portal = format!("127.0.0.1:{}", free_port());
        let mut t = Tgtd { control_port, portal, child: None, log: dir.join(format!("tgtd-{control_port}.log")) };
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        std::fs::create_dir_all("/var/run/tgtd")?;
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new("tgtd")
            .args(["-f", "-C", &self.control_port.to_string(), "--iscsi", &format!("portal={}", self.portal)])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.adm(&["--op", "show", "--mode", "sys"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(std::io::Error::other(format!("tgtd did not answer; see {}", self.log.display())))
    }

    pub fn adm(&self, args: &[&str]) -> std::io::Result<String> {
        let port = self.control_port.to_string();
        let mut all = vec!["-C", &port, "--lld", "iscsi"];
        all.extend_from_slice(args);
        sh("tgtadm", &all)
    }

    /// The target names tgtd has now.
    pub fn targets(&self) -> Vec<String> {
        self.adm(&["--op", "show", "--mode", "target"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("Target ").and_then(|r| r.split_once(": ")).map(|(_, iqn)| iqn.to_owned()))
            .collect()
    }

    /// Stops tgtd (it ignores SIGTERM: delete its targets, then the system).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let out = self.adm(&["--op", "show", "--mode", "target"]).unwrap_or_default();
        for tid in out.lines().filter_map(|l| l.strip_prefix("Target ").and_then(|r| r.split_once(':')).map(|(t, _)| t))
        {
            let _ = self.adm(&["--op", "delete", "--mode", "target", "--tid", tid, "--force"]);
        }
        let port = self.control_port.to_string();
        let _ = sh("tgtadm", &["-C", &port, "--op", "delete", "--mode", "system"]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops tgtd and starts it again on the same ports: every target is gone.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A btrfs on a loop device over a sparse file, mounted at `mount`.
pub struct BtrfsLoop {
    pub mount: PathBuf,
    image: PathBuf,
    device: String,
}

impl BtrfsLoop {
    pub fn create(dir: &Path, size_mib: u64) -> std::io::Result<BtrfsLoop> {
        let image = dir.join("btrfs.img");
        std::fs::File::create(&image)?.set_len(size_mib << 20)?;
        sh("mkfs.btrfs", &["-q", &image.to_string_lossy()])?;
        let device = sh("losetup", &["-f", "--show", &image.to_string_lossy()])?.trim().to_owned();
        let mount = dir.join("btrfs");
        std::fs::create_dir_all(&mount)?;
        let b = BtrfsLoop { mount, image, device };
        sh("mount", &[&b.device, &b.mount.to_string_lossy()])?;
        Ok(b)
    }
}

impl Drop for BtrfsLoop {
    fn drop(&mut self) {
        let _ = sh("umount", &[&self.mount.to_string_lossy()]);
        let _ = sh("losetup", &["-d", &self.device]);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A zfs-fuse pool on a file, with the zfs-fuse daemon started if none runs (and then
/// stopped again on drop).
pub struct ZfsPool {
    pub name: String,
    started_daemon: Option<u32>,
    file: PathBuf,
}

impl ZfsPool {
    pub fn create(dir: &Path, size_mib: u64) -> std::io::Result<ZfsPool> {
        let running = sh("pgrep", &["-x", "zfs-fuse"]).is_ok();
        let mut started_daemon = None;
        if !running {
            let pidfile = dir.join("zfs-fuse.pid");
            sh("zfs-fuse", &["--pidfile", &pidfile.to_string_lossy(), "--no-kstat-mount"])?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) && sh("zpool", &["list"]).is_err() {
                std::thread::sleep(Duration::from_millis(100));
            }
            started_daemon = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok());
        }
        let name = format!("vdct{}", tag());
        let file = dir.join(format!("{name}.img"));
        std::fs::File::create(&file)?.set_len(size_mib << 20)?;
        let mnt = dir.join(&name);
        let pool = ZfsPool { name, started_daemon, file };
        sh("zpool", &["create", "-m", &mnt.to_string_lossy(), &pool.name, &pool.file.to_string_lossy()])?;
        Ok(pool)
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        // Right after the last close the pool can still be busy (FUSE hands closes to
        // zfs-fuse later): destroyed at once it failed every time, and each run left its
        // pool behind (FAULTED once its file went; 23 had piled up on one machine).
        let start = Instant::now();
        while let Err(e) = sh("zpool", &["destroy", "-f", &self.name]) {
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("pool {} is left behind: {e}", self.name);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = std::fs::remove_file(&self.file);
        if let Some(pid) = self.started_daemon {
            let _ = sh("kill", &[&pid.to_string()]);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) && Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
