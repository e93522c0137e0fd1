//! The disk room an agent offers on a file system it may share (with the host's other
//! files, and in the all-in-one with the other agent): its free space plus what the
//! agent's own files there take now, so that a restarted agent offers what it offered
//! before its guests and volumes wrote, less what its caches may still grow by.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// MiB of room on the file system holding `dir`: free, plus the files under `own`, less
/// what each cache `(dir, budget)` may still grow by (at most half of it: a small disk
/// keeps room for guests, and its caches evict sooner). None when it cannot be read.
pub fn room_mib(dir: &Path, own: &[PathBuf], caches: &[(PathBuf, u64)]) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    let free = s.f_bavail.saturating_mul(s.f_frsize);
    let room = free + own.iter().map(|d| allocated_bytes(d)).sum::<u64>();
    let growth: u64 = caches.iter().map(|(d, budget)| budget.saturating_sub(allocated_bytes(d))).sum();
    Some((room - growth.min(room / 2)) >> 20)
}

/// Bytes allocated to the files under `dir` (each inode once; links not followed).
pub fn allocated_bytes(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    // A container's root filesystem mounted in its directory is counted as its file.
    let dev = std::fs::metadata(dir).map(|m| m.dev()).ok();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if m.is_dir() {
                if Some(m.dev()) == dev {
                    todo.push(e.path());
                }
            } else if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_counts_own_files_once_and_keeps_the_caches_room() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("instances/i-a/disk.qcow2");
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        std::fs::write(&disk, vec![1u8; 3 << 20]).unwrap();
        // A hard link (a container's rootfs has them) is the same blocks.
        std::fs::hard_link(&disk, tmp.path().join("instances/i-a/again")).unwrap();
        std::os::unix::fs::symlink("/usr", tmp.path().join("instances/i-a/usr")).unwrap();
        let taken = allocated_bytes(&tmp.path().join("instances"));
        assert!((3 << 20..(3 << 20) + (64 << 10)).contains(&taken), "{taken}");
        let own = [tmp.path().join("instances")];
        let mib = room_mib(tmp.path(), &own, &[]).unwrap();
        let free = rustix::fs::statvfs(tmp.path()).map(|s| s.f_bavail * s.f_frsize).unwrap() >> 20;
        // Other writers on the machine move the free space a little between the two reads.
        assert!(mib + 256 >= free + 3 && mib <= free + 3 + 256, "{mib} MiB offered, {free} MiB free");
        // Room is kept for a cache to grow to its budget (1 MiB of it used).
        std::fs::create_dir_all(tmp.path().join("images")).unwrap();
        std::fs::write(tmp.path().join("images/abc"), vec![1u8; 1 << 20]).unwrap();
        let kept = room_mib(tmp.path(), &own, &[(tmp.path().join("images"), 100 << 20)]).unwrap();
        assert!(kept + 256 >= mib - 99 && kept <= mib - 99 + 256, "{kept} MiB with the cache's room kept");
        // A cache never takes more than half of the room.
        let small = room_mib(tmp.path(), &own, &[(tmp.path().join("images"), u64::MAX / 4)]).unwrap();
        assert!(small + 256 >= mib / 2 && small <= mib / 2 + 256, "{small} MiB of {mib}");
    }
}
