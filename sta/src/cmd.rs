//! Running the storage tools (zfs, btrfs, tgtadm, qemu-img, cp), behind one small trait.
//!
//! Why commands and not libraries: `zfs-core`/`libzetta` need libzfs_core, which zfs-fuse
//! does not ship; tgt has no library API (tgtadm's IPC format is private to tgt); btrfs
//! ioctls would need unsafe code for what `btrfs subvolume` already does well.
//!
//! Drivers hold a [`Runner`]: [`SystemRunner`] runs the tools; [`FakeRunner`] records
//! every command line and answers from a script, so driver logic has unit tests without
//! root or the tools.

pub use vdc_bus::cmd::{quote, system, CmdError, CommandRunner, FakeRunner, Runner, SystemRunner};
