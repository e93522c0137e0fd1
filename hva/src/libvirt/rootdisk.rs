//! A container's root filesystem of a fixed size (its `root_disk_size`): an ext4 file
//! system in `instances/<id>/root.ext4`, loop-mounted on `instances/<id>/rootfs`.
//!
//! libvirt's own loop mount (`<filesystem type='file'>`) happens inside the container's
//! user namespace, where the kernel refuses to mount ext4 ("Permission denied" on
//! /dev/loop0), so hva mounts it before the start. It mounts in the libvirt daemon's
//! mount namespace, which the LXC controllers inherit, not in its own: libvirtd may run in
//! a private one (packaging/start-libvirt.sh), and hva in another (`vdc up` inside
//! `ip netns exec`). hva reads the mounted files (a capture) through
//! `/proc/<daemon>/root`.

use super::host::{self, Runner};
use std::path::{Path, PathBuf};

/// The file system's file in the instance's directory.
pub const IMAGE: &str = "root.ext4";

/// Where the daemon that runs containers writes its PID: the modular daemon first.
const PID_FILES: [&str; 2] = ["/run/virtlxcd.pid", "/run/libvirtd.pid"];

pub struct Mounts {
    tools: Runner,
    /// The daemon whose mount namespace is used; None: found from its PID file.
    daemon: Option<u32>,
}

impl Mounts {
    pub fn new(tools: Runner, daemon: Option<u32>) -> Self {
        Mounts { tools, daemon }
    }

    fn daemon(&self) -> Result<u32, String> {
        if let Some(pid) = self.daemon {
            return Ok(pid);
        }
        // The daemon itself, not a process that took the PID of one that has ended.
        let daemon = |pid: &u32| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            ["libvirtd", "virtlxcd"].contains(&comm.trim())
        };
        PID_FILES
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse::<u32>().ok())
            .find(daemon)
            .ok_or_else(|| {
                format!(
                    "no running libvirt daemon found (read {}) to mount a container's root in",
                    PID_FILES.join(", ")
                )
            })
    }

    /// Makes the file system at `image`, `size` bytes, holding the files of `tree` with
    /// its root directory owned by `owner` (the container's root as the host sees it).
    /// Made as `image.partial` and renamed when complete, so a file system cut short is
    /// never mounted.
    pub fn make(&self, tree: &Path, image: &Path, size: u64, owner: u32) -> Result<(), String> {
        let partial = image.with_extension("ext4.partial");
        // Readable by the host's root only: it holds the tenant's files, whatever their
        // own modes (red team, 2026-12-07: any host user read a 0600 file with debugfs).
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        file.set_len(size).map_err(|e| format!("{}: {e}", partial.display()))?;
        drop(file);
        // No blocks reserved for the host's root: the container's root is not the host's.
        let root_owner = format!("root_owner={owner}:{owner}");
        let made = self.tools.run(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", "-E", &root_owner, "-d", &host::path(tree), &host::path(&partial)],
        );
        if let Err(e) = made {
            let _ = std::fs::remove_file(&partial);
            // What mkfs said, not its command line: the reason reaches the tenant, and the
            // host's paths are not theirs to see.
            let e = e.detail.replace(&host::path(tree), "/").replace(&host::path(&partial), "the file system");
            return Err(format!(
                "the container's root filesystem of {} MiB (root_disk_size) could not be made of its image's files \
                 (too small for them, or too few inodes, if mkfs says it could not allocate): {e}",
                size >> 20
            ));
        }
        std::fs::rename(&partial, image).map_err(|e| format!("{}: {e}", image.display()))
    }

    fn mounted(&self, pid: u32, at: &Path) -> bool {
        let task = pid.to_string();
        self.tools
            .run("findmnt", &["--task", &task, "--noheadings", "--output", "TARGET", "--mountpoint", &host::path(at)])
            .is_ok_and(|out| !out.trim().is_empty())
    }

    /// Mounts `image` on `at` unless it is; after a host or libvirt restart it is not.
    pub fn ensure_mounted(&self, image: &Path, at: &Path) -> Result<(), String> {
        let pid = self.daemon()?;
        if self.mounted(pid, at) {
            return Ok(());
        }
        let ns = format!("--mount=/proc/{pid}/ns/mnt");
        // Set-user-ID programs work (sudo in the guest): its files belong to the
        // container's users, never to the host's root, so none gives the host's root.
        self.tools
            .run("nsenter", &[&ns, "--", "mount", "-o", "loop,nodev", &host::path(image), &host::path(at)])
            .map_err(|e| format!("mounting the container's root filesystem: {e}"))?;
        Ok(())
    }

    /// Unmounts `at` if it is mounted (the loop device goes with it).
    pub fn unmount(&self, at: &Path) -> Result<(), String> {
        let pid = self.daemon()?;
        if !self.mounted(pid, at) {
            return Ok(());
        }
        let ns = format!("--mount=/proc/{pid}/ns/mnt");
        self.tools
            .run("nsenter", &[&ns, "--", "umount", &host::path(at)])
            .map_err(|e| format!("unmounting the container's root filesystem: {e}"))?;
        Ok(())
    }

    /// `at` as the daemon sees it: the mounted files, wherever hva runs.
    pub fn seen(&self, at: &Path) -> Result<PathBuf, String> {
        let pid = self.daemon()?;
        Ok(PathBuf::from(format!("/proc/{pid}/root")).join(at.strip_prefix("/").unwrap_or(at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::host::FakeRunner;

    #[test]
    fn it_mounts_in_the_daemons_namespace_once() {
        let fake = FakeRunner::new();
        // Not mounted at first; mounted after.
        fake.fail(&["findmnt"], "exit status: 1").ok(&["findmnt"], "/d/rootfs\n");
        let m = Mounts::new(fake.clone(), Some(42));
        let (img, at) = (Path::new("/d/root.ext4"), Path::new("/d/rootfs"));
        m.ensure_mounted(img, at).unwrap();
        m.ensure_mounted(img, at).unwrap();
        let mounts: Vec<_> = fake.lines().into_iter().filter(|l| l.starts_with("nsenter")).collect();
        assert_eq!(mounts, ["nsenter --mount=/proc/42/ns/mnt -- mount -o loop,nodev /d/root.ext4 /d/rootfs"]);
        assert_eq!(m.seen(at).unwrap(), Path::new("/proc/42/root/d/rootfs"));
        m.unmount(at).unwrap();
        assert_eq!(fake.lines().last().unwrap(), "nsenter --mount=/proc/42/ns/mnt -- umount /d/rootfs");
    }

    #[test]
    fn a_file_system_that_cannot_be_made_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeRunner::new();
        fake.fail(&["mkfs.ext4"], "Could not allocate block in ext2 filesystem");
        let m = Mounts::new(fake.clone(), Some(42));
        let img = tmp.path().join(IMAGE);
        let e = m.make(tmp.path(), &img, 64 << 20, 100000).unwrap_err();
        assert!(e.contains("root filesystem of 64 MiB (root_disk_size) could not be made"), "{e}");
        assert!(e.contains("Could not allocate block") && !e.contains(tmp.path().to_str().unwrap()), "{e}");
        assert!(!img.exists() && !tmp.path().join("root.ext4.partial").exists());
        assert!(
            fake.lines()[0].starts_with("mkfs.ext4 -q -F -m 0 -E root_owner=100000:100000 -d "),
            "{:?}",
            fake.lines()
        );
    }
}
