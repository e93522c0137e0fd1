//! Root filesystem tarballs (`tar` images, `.tar.gz`): one set of rules, applied by
//! dcmgr when it checks an upload and by hva as it unpacks a container's root, through
//! the same parser. The archive checked is then the archive used: GNU tar, which hva ran
//! before, reads some archives otherwise than the tar crate. For example, it unpacks
//! every member of concatenated gzip data where a single-member decoder stops at the
//! first, so a device node in a second member passed the check and was made by root.
//!
//! Refused: absolute paths and `..` leaving the root, entries below or in the place of a
//! symbolic link of the same archive, hard links out of the root or through a symbolic
//! link, device nodes, and entry types other than files, directories, links, FIFOs and
//! the headers that carry long names.
//!
//! A symbolic link's target is taken as it is, absolute or relative, also one that climbs
//! above the root with `..`: it is the container's own path, resolved inside it (where
//! `..` stops at the root), and nothing on the host follows it (the unpack refuses what
//! lies below a link, and the pack stores links as links). A guest's root makes such links
//! at will, so refusing them refused that guest's export (red team, 2026-12-06).
//!
//! Extended attributes travel as PAX `SCHILY.xattr.NAME` records (GNU tar's `--xattrs`)
//! on files and directories. The unpack sets only a container's own: `user.*`, and as
//! root file capabilities (`security.capability`: Debian's `ping` has one) and POSIX
//! ACLs. The others are the host's (`trusted.*`, which overlayfs reads, and security
//! labels such as `security.selinux`) and are never set from an image.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// Why a tarball is refused, with the stable code dcmgr answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// `format_mismatch` (not gzip), `invalid_image_data` (not a tarball, damaged, empty),
    /// `unsafe_tar` (an entry the rules refuse), `inspection_failed` (cannot be read).
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused { code, message: message.into() }
}

/// The rules, entry after entry (they remember the symbolic links seen).
#[derive(Default)]
struct Rules {
    /// The symbolic links' paths, as [`prefixes`] hashes them.
    symlinks: HashSet<u64>,
    count: u64,
}

/// The longest path or link target taken (Linux's PATH_MAX).
const PATH_MAX: usize = 4096;
/// The most symbolic links an archive may hold: a Debian root has about 20,000. (A
/// thousand in unit tests, which reach it without a 500 MB tarball.)
const SYMLINKS_MAX: usize = if cfg!(test) { 1_000 } else { 1_000_000 };

/// A hash of each leading part of `path` (`a`, `a/b`, `a/b/c`), each computed from the
/// one before. Checking every ancestor of a path then costs its length, not its length
/// squared (a 4 KiB path has 2,000 ancestors). Equal paths hash equal, so a link is never
/// missed; a collision could only refuse an archive.
fn prefixes(path: &Path) -> impl Iterator<Item = u64> + '_ {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    path.components().map(move |c| {
        for &b in c.as_os_str().as_bytes().iter().chain(b"/") {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h
    })
}

impl Rules {
    /// The entry's path under the root, if the rules take it.
    fn check<R: Read>(&mut self, entry: &tar::Entry<R>) -> Result<PathBuf, Refused> {
        let unsafe_entry = |name: &str, why: &str| refused("unsafe_tar", format!("tar entry {name:?} {why}"));
        self.count += 1;
        let raw = entry.path_bytes();
        let long = |what: &str, b: &[u8]| {
            let start = String::from_utf8_lossy(&b[..64.min(b.len())]).into_owned();
            refused("unsafe_tar", format!("tar entry {start:?}… has a {what} of {} bytes, over {PATH_MAX}", b.len()))
        };
        if raw.len() > PATH_MAX {
            return Err(long("path", &raw));
        }
        if let Some(target) = entry.link_name_bytes().filter(|t| t.len() > PATH_MAX) {
            return Err(long("link target", &target));
        }
        let name = String::from_utf8_lossy(&raw).into_owned();
        let path = inside_root(Path::new(&name)).ok_or_else(|| {
            unsafe_entry(&name, "is an absolute path or climbs out with `..`: entries must be relative to the root")
        })?;
        let hashes: Vec<u64> = prefixes(&path).collect();
        let (own, above) = hashes.split_last().map_or((None, &[][..]), |(o, a)| (Some(*o), a));
        if above.iter().any(|h| self.symlinks.contains(h)) {
            return Err(unsafe_entry(&name, "lies below a symbolic link of the same archive"));
        }
        // A directory written where a symbolic link is would have its mode and owner set
        // on what the link points to.
        if own.is_some_and(|h| self.symlinks.contains(&h)) {
            return Err(unsafe_entry(&name, "replaces a symbolic link of the same archive"));
        }
        // What the unpack sets on each entry must be readable, so that an archive the
        // check takes is one the unpack takes.
        let h = entry.header();
        if let Err(e) = h.mode().and(h.uid()).and(h.gid()).and(h.mtime()) {
            return Err(refused("invalid_image_data", format!("tar entry {name:?} has a damaged header: {e}")));
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular
            | T::Continuous
            | T::Directory
            | T::Fifo
            | T::GNULongName
            | T::GNULongLink
            | T::XHeader
            | T::XGlobalHeader => {}
            T::Char | T::Block => {
                return Err(unsafe_entry(&name, "is a device node: a container gets its devices from its host"));
            }
            T::Symlink => {
                let target = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned());
                target.ok_or_else(|| unsafe_entry(&name, "is a symbolic link without a target"))?;
                if self.symlinks.len() >= SYMLINKS_MAX {
                    return Err(unsafe_entry(&name, &format!("is one symbolic link too many (over {SYMLINKS_MAX})")));
                }
                self.symlinks.extend(own);
            }
            T::Link => {
                let target = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned());
                let target = target.ok_or_else(|| unsafe_entry(&name, "is a hard link without a target"))?;
                let t = inside_root(Path::new(&target))
                    .ok_or_else(|| unsafe_entry(&name, &format!("is a hard link to {target:?}, outside the root")))?;
                if prefixes(&t).any(|h| self.symlinks.contains(&h)) {
                    return Err(unsafe_entry(&name, "is a hard link through a symbolic link"));
                }
            }
            other => return Err(unsafe_entry(&name, &format!("has an entry type ({other:?}) that is not accepted"))),
        }
        Ok(path)
    }

    fn end(&self) -> Result<(), Refused> {
        if self.count == 0 {
            return Err(refused("invalid_image_data", "the tarball has no entries"));
        }
        Ok(())
    }
}

/// The data of the gzip-compressed tarball at `path`, every gzip member of it (as `gzip
/// -d` reads).
fn open(path: &Path) -> Result<impl Read, Refused> {
    let f =
        std::fs::File::open(path).map_err(|e| refused("inspection_failed", format!("cannot read the data: {e}")))?;
    gunzip(BufReader::new(f))
}

/// The data of the gzip-compressed tarball `r`, every gzip member of it.
fn gunzip<R: Read>(mut r: R) -> Result<impl Read, Refused> {
    let mut magic = [0u8; 2];
    if r.read_exact(&mut magic).is_err() || magic != [0x1f, 0x8b] {
        return Err(refused("format_mismatch", "a tar image must be a gzip-compressed tarball (.tar.gz)"));
    }
    Ok(flate2::read::MultiGzDecoder::new(std::io::Cursor::new(magic).chain(r)))
}

/// Bytes of long names, long link names and PAX records the tar crate may read before an
/// entry. It reads them whole into memory, so a tarball of a few megabytes holding a
/// gigabytes-long "name" of zeros took that much memory from the process checking it.
/// A real path is at most 4 KiB on Linux.
const EXTENSIONS_MAX: u64 = 1 << 20;

/// How far into the tar stream the tar crate may read now: set by the loop over entries
/// and enforced by the reader it reads through ([`Bounded`]).
struct Bounds {
    pos: Cell<u64>,
    stop_at: Cell<u64>,
    /// The end of the last entry's data (with its padding).
    data_end: Cell<u64>,
    /// The whole stream's limit (`max_unpacked`).
    total: u64,
    tripped: Cell<Option<Refused>>,
}

impl Bounds {
    fn new(total: u64) -> Rc<Bounds> {
        let b = Bounds { pos: 0.into(), stop_at: 0.into(), data_end: 0.into(), total, tripped: None.into() };
        b.before_header();
        Rc::new(b)
    }

    /// The next header, the extensions before it and the rest of the last entry's data.
    fn before_header(&self) {
        self.stop_at.set(self.data_end.get().saturating_add(EXTENSIONS_MAX).min(self.total));
    }

    /// `entry`'s data, which is streamed (unpacked or skipped), never held.
    fn entry<R: Read>(&self, entry: &tar::Entry<R>) {
        let end = entry.raw_file_position().saturating_add(entry.size().div_ceil(512).saturating_mul(512));
        self.data_end.set(end);
        self.stop_at.set(end.min(self.total));
    }

    /// The refusal behind a read error, if the bounds caused it.
    fn refusal(&self, e: std::io::Error) -> Refused {
        self.tripped.take().unwrap_or_else(|| damaged(e))
    }
}

struct Bounded<R> {
    inner: R,
    b: Rc<Bounds>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (pos, stop) = (self.b.pos.get(), self.b.stop_at.get());
        if pos >= stop && !buf.is_empty() {
            let why = if stop >= self.b.total {
                refused("virtual_size_too_large", format!("the tarball unpacks to more than {} bytes", self.b.total))
            } else {
                refused(
                    "unsafe_tar",
                    format!("the tarball has more than {EXTENSIONS_MAX} bytes of long names or PAX records before one entry"),
                )
            };
            let e = std::io::Error::other(why.message.clone());
            self.b.tripped.set(Some(why));
            return Err(e);
        }
        let room = (stop - pos).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.b.pos.set(pos + n as u64);
        Ok(n)
    }
}

/// The archive read from `r` within `max_unpacked` bytes, and its bounds.
fn archive<R: Read>(r: R, max_unpacked: u64) -> (tar::Archive<Bounded<R>>, Rc<Bounds>) {
    let b = Bounds::new(max_unpacked);
    (tar::Archive::new(Bounded { inner: r, b: b.clone() }), b)
}

fn damaged(e: std::io::Error) -> Refused {
    refused("invalid_image_data", format!("the tarball is damaged: {e}"))
}

/// Checks every entry of the gzip-compressed tarball at `path`, which must unpack to at
/// most `max_unpacked` bytes; the bytes of the tar stream (what its files hold, and
/// more: headers and padding). Blocking.
pub fn check(path: &Path, max_unpacked: u64) -> Result<u64, Refused> {
    check_tar(open(path)?, max_unpacked)
}

/// [`check`] on a gzip-compressed tarball read from `r` (a bundle's blob as it arrives).
pub fn check_gz(r: impl Read, max_unpacked: u64) -> Result<u64, Refused> {
    check_tar(gunzip(r)?, max_unpacked)
}

/// [`check`] on an uncompressed tar stream.
pub fn check_tar(r: impl Read, max_unpacked: u64) -> Result<u64, Refused> {
    let (mut archive, b) = archive(r, max_unpacked);
    each_entry(&mut archive, &b, |_, _| Ok(()))?;
    Ok(b.pos.get())
}

/// Entries a root file system may have (a Debian or Ubuntu root has 20,000 to 150,000):
/// a tarball of a million empty files costs a host inodes, not bytes.
pub const ENTRIES_MAX: usize = 1_000_000;

/// Calls `f` with each entry the rules take and its path under the root, the reads held
/// within `b`; refuses the first entry they do not take.
fn each_entry<R: Read>(
    archive: &mut tar::Archive<Bounded<R>>,
    b: &Bounds,
    mut f: impl FnMut(&mut tar::Entry<'_, Bounded<R>>, PathBuf) -> Result<(), Refused>,
) -> Result<(), Refused> {
    let mut rules = Rules::default();
    let mut entries =
        archive.entries().map_err(|e| refused("invalid_image_data", format!("the data is not a tarball: {e}")))?;
    let mut count = 0usize;
    loop {
        b.before_header();
        let Some(entry) = entries.next() else { break };
        count += 1;
        if count > ENTRIES_MAX {
            return Err(refused(
                "unsafe_tar",
                format!("the tarball has more than {ENTRIES_MAX} entries; a root file system has far fewer"),
            ));
        }
        let mut entry = entry.map_err(|e| b.refusal(e))?;
        b.entry(&entry);
        let path = rules.check(&entry)?;
        check_xattrs(&mut entry)?;
        f(&mut entry, path)?;
    }
    rules.end()
}

/// Unpacks the gzip-compressed tarball at `path` into the directory `dest` (which must
/// exist), each entry checked before it is written, keeping modes, times and (as root)
/// owners: a container's root. A refusal can come after earlier entries were written: the caller
/// unpacks into a directory of its own and throws it away on error. Blocking.
pub fn unpack(path: &Path, dest: &Path, max_unpacked: u64) -> Result<(), Refused> {
    // The total was checked by dcmgr, through this parser, on these bytes; `max_unpacked`
    // holds a host to the root filesystem the files are for.
    let (mut archive, b) = archive(open(path)?, max_unpacked);
    archive.set_preserve_permissions(true);
    // Owners as GNU tar keeps them: when unpacking as root (hva) only.
    let root = rustix::process::geteuid().is_root();
    archive.set_preserve_ownerships(root);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    each_entry(&mut archive, &b, |entry, path| {
        if entry.header().entry_type() == tar::EntryType::Fifo {
            // The tar crate would write a FIFO as an empty file.
            return make_fifo(entry.header(), &dest.join(&path), root)
                .map_err(|e| refused("unpack_failed", format!("tar entry {:?}: {e}", name_of(entry))));
        }
        // unpack_in also refuses, on its own, anything that would land outside `dest`.
        match entry.unpack_in(dest) {
            // After the owner and mode: a chown clears a file's capabilities.
            Ok(true) => set_xattrs(entry, &dest.join(&path), root),
            Ok(false) => {
                Err(refused("unsafe_tar", format!("tar entry {:?} would be written outside the root", name_of(entry))))
            }
            Err(e) => {
                // The tar crate says what it was doing; the cause is its source.
                let mut cause = String::new();
                let mut at: Option<&dyn std::error::Error> = std::error::Error::source(&e);
                while let Some(c) = at {
                    cause += &format!(": {c}");
                    at = c.source();
                }
                Err(refused("unpack_failed", format!("tar entry {:?}: {e}{cause}", name_of(entry))))
            }
        }
    })
}

/// The prefix of a PAX record carrying an extended attribute (GNU tar, libarchive).
const XATTR_RECORD: &str = "SCHILY.xattr.";

/// Whether the unpack sets the extended attribute `name` (when unpacking as root: `root`).
fn settable(name: &str, root: bool) -> bool {
    name.starts_with("user.")
        || (root && matches!(name, "security.capability" | "system.posix_acl_access" | "system.posix_acl_default"))
}

/// Whether Linux takes `value` for the extended attribute `name`: a name up to 255 bytes,
/// a value up to 64 KiB, a file capability of one of its three sizes (revisions 1 to 3),
/// an ACL of version 2 with whole 8-byte entries.
fn well_formed(name: &str, value: &[u8]) -> bool {
    let shaped = match name {
        "security.capability" => matches!(value.len(), 12 | 20 | 24),
        "system.posix_acl_access" | "system.posix_acl_default" => {
            value.len() >= 4 && value[..4] == 2u32.to_le_bytes() && (value.len() - 4).is_multiple_of(8)
        }
        _ => true,
    };
    name.len() <= 255 && value.len() <= 65536 && shaped
}

/// Refuses an extended attribute the unpack would set but Linux would not take
/// ([`well_formed`]), so that the check refuses what the unpack would fail on.
fn check_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> Result<(), Refused> {
    let name = name_of(entry);
    for (attr, value) in xattr_records(entry, true)? {
        if !well_formed(&attr, &value) {
            let start: String = attr.chars().take(64).collect();
            return Err(refused(
                "unsafe_tar",
                format!(
                    "tar entry {name:?} has an extended attribute {start:?} ({}-byte name, {}-byte value) that \
                     Linux would not take: names up to 255 bytes, values up to 64 KiB, file capabilities of \
                     12, 20 or 24 bytes, ACLs of version 2",
                    attr.len(),
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The extended attributes of `entry`'s PAX records that [`settable`] takes (unpacking
/// as root: `root`), as name and value.
fn xattr_records<R: Read>(entry: &mut tar::Entry<R>, root: bool) -> Result<Vec<(String, Vec<u8>)>, Refused> {
    let mut out = Vec::new();
    for record in entry.pax_extensions().map_err(damaged)?.into_iter().flatten() {
        let record = record.map_err(damaged)?;
        let Some(attr) = record.key().ok().and_then(|k| k.strip_prefix(XATTR_RECORD)) else { continue };
        if settable(attr, root) {
            out.push((attr.to_owned(), record.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// Sets on `at` (a file or directory just unpacked from `entry`) the extended
/// attributes of its PAX records that [`settable`] takes.
fn set_xattrs<R: Read>(entry: &mut tar::Entry<R>, at: &Path, root: bool) -> Result<(), Refused> {
    use tar::EntryType as T;
    if !matches!(entry.header().entry_type(), T::Regular | T::Continuous | T::Directory) {
        // A hard link shares its target's; a symbolic link takes no user attributes.
        return Ok(());
    }
    let name = name_of(entry);
    for (attr, value) in xattr_records(entry, root)? {
        rustix::fs::lsetxattr(at, &attr, &value, rustix::fs::XattrFlags::empty()).map_err(|e| {
            refused("unpack_failed", format!("tar entry {name:?}: cannot set its extended attribute {attr}: {e}"))
        })?;
    }
    Ok(())
}

/// The extended attributes of the file or directory at `path` that an unpack as root
/// sets, in name order.
fn xattrs_of(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    // The size asked first can grow before the read (ERANGE): ask again.
    type Query<'a> = &'a dyn Fn() -> rustix::io::Result<usize>;
    let read = |size: Query, f: &dyn Fn(&mut [u8]) -> rustix::io::Result<usize>| -> std::io::Result<Vec<u8>> {
        for _ in 0..8 {
            let mut buf = vec![0; size()?];
            if buf.is_empty() {
                return Ok(buf);
            }
            match f(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(std::io::Error::other(format!("the extended attributes of {} keep changing", path.display())))
    };
    let names = match read(&|| rustix::fs::llistxattr_query(path), &|b| rustix::fs::llistxattr(path, b)) {
        Ok(n) => n,
        // A file system without extended attributes has none to keep.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if !settable(name, true) {
            continue;
        }
        match read(&|| rustix::fs::lgetxattr_query(path, name), &|b| rustix::fs::lgetxattr(path, name, b)) {
            Ok(value) => out.push((name.to_owned(), value)),
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Appends the PAX records of `path`'s extended attributes, to go before its entry; with
/// `map`, in the container's terms ([`crate::idmap::xattr_to_container`]).
fn append_xattrs<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    map: Option<&crate::idmap::IdMap>,
) -> std::io::Result<()> {
    let mut attrs = xattrs_of(path)?;
    if let Some(m) = map {
        attrs = attrs
            .into_iter()
            .filter_map(|(n, v)| crate::idmap::xattr_to_container(m, &n, &v).map(|v| (n, v)))
            .collect();
    }
    let keys: Vec<String> = attrs.iter().map(|(n, _)| format!("{XATTR_RECORD}{n}")).collect();
    tar.append_pax_extensions(keys.iter().map(String::as_str).zip(attrs.iter().map(|(_, v)| v.as_slice())))
}

/// What [`pack`] wrote, and what it left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Packed {
    pub entries: u64,
    /// Device nodes and sockets: a container gets its devices from its host, and a socket
    /// is its server's while it runs. The rules refuse the first; neither can be stored.
    pub skipped: u64,
}

/// Packs the directory `root` (a container's root, stopped or frozen) into a
/// gzip-compressed tarball at `out`, as the unpack reads it back: modes, owners, times
/// and the extended attributes the unpack sets kept, a file's further names stored as
/// hard links to its first, symbolic links stored as links, never followed, nothing taken from
/// another file system mounted below the root. Entries go in name order with no time in
/// the gzip header, so the same tree gives the same bytes (stored once). With `map` (a
/// container of a user namespace), owners, file capabilities and ACLs are written in the
/// container's terms, as the image had them. Blocking.
pub fn pack(root: &Path, out: &Path, map: Option<&crate::idmap::IdMap>) -> std::io::Result<Packed> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dev = std::fs::symlink_metadata(root)?.dev();
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    let mut packed = Packed::default();
    // The first name packed of each file that has several, by device and inode.
    let mut first_names = std::collections::HashMap::<(u64, u64), PathBuf>::new();
    // Depth first, each directory's entries sorted: directories before what they hold.
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let mut names: Vec<_> =
            std::fs::read_dir(root.join(&rel))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        let mut below = Vec::new();
        for name in names {
            let path = rel.join(&name);
            let full = root.join(&path);
            let meta = std::fs::symlink_metadata(&full)?;
            let t = meta.file_type();
            if t.is_block_device() || t.is_char_device() || t.is_socket() {
                packed.skipped += 1;
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            h.set_mode(meta.mode() & 0o7777);
            if let Some(m) = map {
                h.set_uid(m.to_container(meta.uid()).into());
                h.set_gid(m.to_container(meta.gid()).into());
            }
            if t.is_symlink() {
                h.set_size(0);
                tar.append_link(&mut h, &path, std::fs::read_link(&full)?)?;
            } else if t.is_dir() {
                h.set_size(0);
                append_xattrs(&mut tar, &full, map)?;
                tar.append_data(&mut h, &path, std::io::empty())?;
                // A mount point is kept; what is mounted on it is not the root's.
                if meta.dev() == dev {
                    below.push(path);
                }
            } else if t.is_fifo() {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                tar.append_data(&mut h, &path, std::io::empty())?;
            } else if let Some(first) = (meta.nlink() > 1)
                .then(|| match first_names.entry((meta.dev(), meta.ino())) {
                    std::collections::hash_map::Entry::Occupied(o) => Some(o.get().clone()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(path.clone());
                        None
                    }
                })
                .flatten()
            {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                tar.append_link(&mut h, &path, first)?;
            } else {
                let f = std::fs::File::open(&full)?;
                append_xattrs(&mut tar, &full, map)?;
                tar.append_data(&mut h, &path, Exactly { inner: f, left: meta.len() })?;
            }
            packed.entries += 1;
        }
        // Popped in name order.
        todo.extend(below.into_iter().rev());
    }
    let mut w = tar.into_inner()?.finish()?.into_inner().map_err(|e| e.into_error())?;
    std::io::Write::flush(&mut w)?;
    w.sync_all()?;
    Ok(packed)
}

/// Exactly `left` bytes of a file whose header said so: zeros if it shrank since (it
/// cannot here, the container being stopped or frozen, but a short entry would shift
/// every header after it), cut if it grew.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = (self.left.min(buf.len() as u64)) as usize;
        if room == 0 {
            return Ok(0);
        }
        let n = match self.inner.read(&mut buf[..room])? {
            0 => {
                buf[..room].fill(0);
                room
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// A FIFO at `at` (its parents inside the root: no entry lies below a symbolic link),
/// with the header's mode, time and (`owner`) owner.
fn make_fifo(h: &tar::Header, at: &Path, owner: bool) -> std::io::Result<()> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(at) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mode = h.mode()? & 0o7777;
    rustix::fs::mknodat(rustix::fs::CWD, at, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(mode), 0)?;
    if owner {
        std::os::unix::fs::lchown(at, Some(h.uid()? as u32), Some(h.gid()? as u32))?;
    }
    // After the owner (a chown clears set-ID bits) and beyond the umask mknod applied.
    std::fs::set_permissions(at, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    let t = rustix::fs::Timespec { tv_sec: h.mtime()? as i64, tv_nsec: 0 };
    let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
    Ok(rustix::fs::utimensat(rustix::fs::CWD, at, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?)
}

fn name_of<R: Read>(entry: &tar::Entry<R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

/// `p` as a path under the root (`./` and repeated separators removed), or `None` if it
/// is absolute or leaves the root at any point.
fn inside_root(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tar header written by hand: the tar crate's builder refuses the hostile names.
    fn header(name: &str, kind: u8, link: &str, body: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(if kind == b'5' { b"0000755" } else { b"0000644" });
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", body.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    /// Entries without the end-of-archive blocks.
    fn entries_of(entries: &[(&str, u8, &str)]) -> Vec<u8> {
        let mut t = Vec::new();
        for (name, kind, link) in entries {
            let body: &[u8] = if *kind == b'0' { b"data" } else { b"" };
            t.extend(header(name, *kind, link, body));
        }
        t
    }

    fn tar_of(entries: &[(&str, u8, &str)]) -> Vec<u8> {
        let mut t = entries_of(entries);
        t.extend([0u8; 1024]);
        t
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    const SAFE: &[(&str, u8, &str)] = &[
        ("bin/", b'5', ""),
        ("bin/busybox", b'0', ""),
        ("bin/sh", b'2', "busybox"),
        ("sbin", b'2', "/bin"),
        ("usr/bin/env", b'2', "../../bin/busybox"),
        ("bin/ash", b'1', "bin/busybox"),
        ("run/initctl", b'6', ""),
    ];

    #[test]
    fn hostile_tarballs_are_refused_with_the_entry_named() {
        check_tar(&tar_of(SAFE)[..], u64::MAX).unwrap();
        type Entries<'a> = &'a [(&'a str, u8, &'a str)];
        let cases: &[(Entries, &str)] = &[
            (&[("../etc/cron.d/x", b'0', "")], "../etc/cron.d/x"),
            (&[("bin/../../x", b'0', "")], "bin/../../x"),
            (&[("/etc/shadow", b'0', "")], "/etc/shadow"),
            (&[("etc", b'2', "/etc"), ("etc/cron.d/x", b'0', "")], "etc/cron.d/x"),
            (&[("up", b'2', "../../../../etc"), ("up/cron.d/x", b'0', "")], "up/cron.d/x"),
            (&[("dev/sda", b'4', "")], "dev/sda"),
            (&[("dev/mem", b'3', "")], "dev/mem"),
            (&[("shadow", b'1', "/etc/shadow")], "shadow"),
            (&[("up", b'1', "../outside")], "up"),
            (&[("etc", b'2', "/etc"), ("etc/", b'5', "")], "etc/"),
            (&[("x", b'2', "/etc/shadow"), ("x", b'0', "")], "x"),
        ];
        for (entries, named) in cases {
            let e = check_tar(&tar_of(entries)[..], u64::MAX).unwrap_err();
            assert_eq!(e.code, "unsafe_tar", "{entries:?}: {e}");
            assert!(e.message.contains(named), "{entries:?}: {e}");
        }
        assert_eq!(check_tar(&b"not a tarball at all"[..], u64::MAX).unwrap_err().code, "invalid_image_data");
        assert_eq!(check_tar(&[0u8; 1024][..], u64::MAX).unwrap_err().code, "invalid_image_data", "no entries");
        // Paths and targets longer than Linux takes.
        let deep = vec!["d"; 2100].join("/");
        for (path, target, what) in [(deep.as_str(), "x", "path"), ("x", deep.as_str(), "link target")] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_link(&mut h, path, target).unwrap();
            let e = check_tar(&b.into_inner().unwrap()[..], u64::MAX).unwrap_err();
            assert!(e.code == "unsafe_tar" && e.message.contains(&format!("{what} of 4199 bytes")), "{e}");
        }
        // A numeric field the unpack could not read: refused by the check already.
        let mut h = header("init.sh", b'0', "", b"data");
        h[108..116].fill(0);
        let e = check_tar(&sized(h, 4)[..], u64::MAX).unwrap_err();
        assert_eq!(e.code, "invalid_image_data", "{e}");
        assert!(e.message.contains("init.sh"), "{e}");
    }

    /// The memory the check keeps for symbolic links is bounded: one more than the cap
    /// is refused, naming the entry; the cap itself passes.
    #[test]
    fn symbolic_links_are_counted() {
        let names: Vec<String> = (0..=SYMLINKS_MAX).map(|i| format!("l{i}")).collect();
        let entries: Vec<(&str, u8, &str)> = names.iter().map(|n| (n.as_str(), b'2', "target")).collect();
        check_tar(&tar_of(&entries[..SYMLINKS_MAX])[..], u64::MAX).unwrap();
        let e = check_tar(&tar_of(&entries)[..], u64::MAX).unwrap_err();
        assert_eq!(e.code, "unsafe_tar", "{e}");
        let last = format!("l{SYMLINKS_MAX}");
        assert!(e.message.contains(&last) && e.message.contains("one symbolic link too many"), "{e}");
    }

    /// `h` (a header of [`header`]) saying its data is `size` bytes.
    fn sized(mut h: Vec<u8>, size: u64) -> Vec<u8> {
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h[..512].iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    /// A "long name" or PAX record of gigabytes (zeros: a few megabytes gzip-compressed)
    /// is refused after a megabyte, not read into memory; nor does a stream go on past
    /// the limit of what may be unpacked.
    #[test]
    fn what_the_parser_would_hold_or_unpack_is_bounded() {
        use std::io::Read as _;
        for kind in [b'L', b'K', b'x'] {
            let h = sized(header("././@LongLink", kind, "", b""), 6 << 30);
            let bomb = (&h[..]).chain(std::io::repeat(0).take(6 << 30));
            let e = check_tar(bomb, u64::MAX).unwrap_err();
            assert_eq!(e.code, "unsafe_tar", "{}: {e}", kind as char);
            assert!(e.message.contains("long names or PAX records"), "{e}");
        }
        let big = sized(header("big", b'0', "", b""), 10 << 20);
        let e = check_tar((&big[..]).chain(std::io::repeat(0).take(10 << 20)), 1 << 20).unwrap_err();
        assert_eq!(e.code, "virtual_size_too_large", "{e}");
        check_tar((&big[..]).chain(std::io::repeat(0).take((10 << 20) + 1024)), 11 << 20).unwrap();
        // Real long names (a GNU long name entry of the tar crate's builder) pass.
        let long = format!("usr/share/{}/file", vec!["d".repeat(60); 5].join("/"));
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut file_header(4), &long, &b"data"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        check_tar(&tar[..], u64::MAX).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tmp.path().join("long.tar.gz");
        std::fs::write(&tgz, gzip(&tar)).unwrap();
        unpack(&tgz, tmp.path(), u64::MAX).unwrap();
        assert_eq!(std::fs::read(tmp.path().join(&long)).unwrap(), b"data");
    }

    #[test]
    fn a_safe_tarball_unpacks_with_its_links_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tmp.path().join("root.tar.gz");
        std::fs::write(&tgz, gzip(&tar_of(SAFE))).unwrap();
        let size = check(&tgz, u64::MAX).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // Held to a root filesystem's size: refused past it (what was written is thrown away).
        let cut = tmp.path().join("cut");
        std::fs::create_dir(&cut).unwrap();
        assert_eq!(unpack(&tgz, &cut, size - 512).unwrap_err().code, "virtual_size_too_large");
        unpack(&tgz, &root, size).unwrap();
        assert_eq!(std::fs::read(root.join("bin/busybox")).unwrap(), b"data");
        assert_eq!(std::fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(std::fs::read_link(root.join("sbin")).unwrap(), Path::new("/bin"), "the container's own /bin");
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let (a, b) = (root.join("bin/ash").metadata().unwrap(), root.join("bin/busybox").metadata().unwrap());
        assert_eq!(a.ino(), b.ino(), "a hard link");
        assert_eq!(b.mode() & 0o777, 0o644);
        assert!(root.join("run/initctl").metadata().unwrap().file_type().is_fifo());
        // Owners are kept when root unpacks (hva), as GNU tar keeps them.
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (kind, name) in [(tar::EntryType::Regular, "home/owned"), (tar::EntryType::Fifo, "home/fifo")] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o640);
            h.set_uid(4242);
            h.set_gid(4243);
            h.set_mtime(1_000_000);
            h.set_cksum();
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        }
        std::fs::write(&tgz, b.into_inner().unwrap().finish().unwrap()).unwrap();
        unpack(&tgz, &root, u64::MAX).unwrap();
        for name in ["home/owned", "home/fifo"] {
            let m = std::fs::symlink_metadata(root.join(name)).unwrap();
            let owner = if rustix::process::geteuid().is_root() { (4242, 4243) } else { (m.uid(), m.gid()) };
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
                (owner.0, owner.1, 0o640, 1_000_000),
                "{name}"
            );
        }
    }

    /// What GNU tar unpacked and a single-member gzip decoder never saw: the entries of a
    /// second gzip member after a first without the end-of-archive blocks.
    #[test]
    fn every_gzip_member_is_checked_and_unpacked_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tmp.path().join("two.tar.gz");
        let mut data = gzip(&entries_of(&[("init.sh", b'0', "")]));
        data.extend(gzip(&tar_of(&[("dev/mem", b'3', "")])));
        std::fs::write(&tgz, &data).unwrap();
        let e = check(&tgz, u64::MAX).unwrap_err();
        assert_eq!(e.code, "unsafe_tar", "{e}");
        assert!(e.message.contains("dev/mem"), "{e}");
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        assert_eq!(unpack(&tgz, &root, u64::MAX).unwrap_err().code, "unsafe_tar");
        assert!(!root.join("dev/mem").exists());
        // A benign second member is part of the root.
        let mut data = gzip(&entries_of(&[("init.sh", b'0', "")]));
        data.extend(gzip(&tar_of(&[("etc/", b'5', ""), ("etc/hostname", b'0', "")])));
        std::fs::write(&tgz, &data).unwrap();
        check(&tgz, u64::MAX).unwrap();
        let root = tmp.path().join("root2");
        std::fs::create_dir(&root).unwrap();
        unpack(&tgz, &root, u64::MAX).unwrap();
        assert!(root.join("init.sh").exists() && root.join("etc/hostname").exists());
    }

    /// The header of a regular file of `size` bytes, mode 0644, root's, at time 0.
    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// Packs `root` twice (the same bytes), checks it and unpacks it into `tmp/back`.
    fn round_trip(tmp: &Path, root: &Path) -> (Packed, PathBuf) {
        let (a, b) = (tmp.join("a.tar.gz"), tmp.join("b.tar.gz"));
        let packed = pack(root, &a, None).unwrap();
        pack(root, &b, None).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "the same tree, the same bytes");
        check(&a, u64::MAX).unwrap();
        let back = tmp.join("back");
        std::fs::create_dir(&back).unwrap();
        unpack(&a, &back, u64::MAX).unwrap();
        (packed, back)
    }

    /// A packed root passes the rules and unpacks as it was: long names, modes, links,
    /// FIFOs and times; sockets are left out.
    #[test]
    fn a_packed_root_is_taken_by_the_rules_and_unpacks_as_it_was() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc/deep").join("d".repeat(120))).unwrap();
        std::fs::write(root.join("etc/hostname"), b"web1\n").unwrap();
        std::fs::set_permissions(root.join("etc/hostname"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(root.join("etc/deep").join("d".repeat(120)).join("f".repeat(150)), b"long").unwrap();
        std::os::unix::fs::symlink("hostname", root.join("etc/name")).unwrap();
        std::os::unix::fs::symlink("/proc/self/mounts", root.join("etc/mtab")).unwrap();
        // A guest's root may make a link that climbs above the root: inside, it stops there.
        std::os::unix::fs::symlink("../../../../etc/hostname", root.join("etc/up")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), rustix::fs::FileType::Fifo, 0o640.into(), 0).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        let (packed, back) = round_trip(tmp.path(), &root);
        assert_eq!(packed, Packed { entries: 9, skipped: 1 }, "the socket is left out");
        assert_eq!(std::fs::read(back.join("etc/hostname")).unwrap(), b"web1\n");
        assert_eq!(std::fs::metadata(back.join("etc/hostname")).unwrap().mode() & 0o7777, 0o600);
        let long = back.join("etc/deep").join("d".repeat(120)).join("f".repeat(150));
        assert_eq!(std::fs::read(long).unwrap(), b"long");
        assert_eq!(std::fs::read_link(back.join("etc/name")).unwrap(), Path::new("hostname"));
        assert_eq!(std::fs::read_link(back.join("etc/mtab")).unwrap(), Path::new("/proc/self/mounts"));
        assert_eq!(std::fs::read_link(back.join("etc/up")).unwrap(), Path::new("../../../../etc/hostname"));
        let fifo = std::fs::symlink_metadata(back.join("fifo")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        assert_eq!(fifo.mode() & 0o7777, 0o640);
        assert!(!back.join("sock").exists());
        // A file's time travels.
        let (t0, t1) = (
            std::fs::metadata(root.join("etc/hostname")).unwrap(),
            std::fs::metadata(back.join("etc/hostname")).unwrap(),
        );
        assert_eq!(t0.mtime(), t1.mtime());
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0; 256];
        let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// A file's other names come back as hard links to it, and the extended attributes of
    /// a container's own (`user.*` here, which need no privilege) come back on files and
    /// directories.
    #[test]
    fn hard_links_and_extended_attributes_travel() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"one binary").unwrap();
        std::fs::hard_link(root.join("bin/busybox"), root.join("bin/ls")).unwrap();
        std::fs::hard_link(root.join("bin/busybox"), root.join("sh")).unwrap();
        let set =
            |p: &Path, n: &str, v: &[u8]| rustix::fs::lsetxattr(p, n, v, rustix::fs::XattrFlags::empty()).unwrap();
        set(&root.join("bin/busybox"), "user.vdc.note", b"\x00binary\xff");
        set(&root.join("bin"), "user.vdc.dir", b"d");
        let (packed, back) = round_trip(tmp.path(), &root);
        assert_eq!(packed, Packed { entries: 4, skipped: 0 });
        let ino = |p: &str| std::fs::metadata(back.join(p)).unwrap().ino();
        assert_eq!(ino("bin/busybox"), ino("bin/ls"));
        assert_eq!(ino("bin/busybox"), ino("sh"));
        assert_eq!(std::fs::metadata(back.join("sh")).unwrap().nlink(), 3);
        assert_eq!(std::fs::read(back.join("bin/ls")).unwrap(), b"one binary");
        assert_eq!(xattr(&back.join("bin/busybox"), "user.vdc.note").as_deref(), Some(&b"\x00binary\xff"[..]));
        assert_eq!(xattr(&back.join("bin"), "user.vdc.dir").as_deref(), Some(&b"d"[..]));
    }

    /// The host's attributes are never set from an image, whoever unpacks it: only
    /// `user.*` here, and as root also capabilities and ACLs.
    #[test]
    fn only_a_containers_own_extended_attributes_are_set() {
        let records: &[(&str, &[u8])] = &[
            ("SCHILY.xattr.user.ok", b"yes"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.security.selinux", b"system_u:object_r:shadow_t:s0"),
        ];
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_pax_extensions(records.iter().copied()).unwrap();
        let mut h = file_header(2);
        tar.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tmp.path().join("x.tar.gz");
        std::fs::write(&tgz, gzip(&tar.into_inner().unwrap())).unwrap();
        check(&tgz, u64::MAX).unwrap();
        let back = tmp.path().join("back");
        std::fs::create_dir(&back).unwrap();
        unpack(&tgz, &back, u64::MAX).unwrap();
        let f = back.join("f");
        assert_eq!(xattr(&f, "user.ok").as_deref(), Some(&b"yes"[..]));
        assert_eq!(xattr(&f, "trusted.overlay.opaque"), None);
        assert_eq!(xattr(&f, "security.selinux"), None);
        assert!(settable("security.capability", true) && !settable("security.capability", false));

        // One the unpack would set but Linux would refuse is refused by the check.
        let big = vec![b'x'; 65537];
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_pax_extensions([("SCHILY.xattr.user.big", &big[..])]).unwrap();
        tar.append_data(&mut h, "g", &b"hi"[..]).unwrap();
        std::fs::write(&tgz, gzip(&tar.into_inner().unwrap())).unwrap();
        let e = check(&tgz, u64::MAX).unwrap_err();
        assert_eq!(e.code, "unsafe_tar");
        assert!(e.message.contains("\"g\"") && e.message.contains("user.big"), "{e}");
        assert!(well_formed("security.capability", &[0; 20]) && !well_formed("security.capability", &[0; 7]));
        let acl = [&2u32.to_le_bytes()[..], &[0; 8]].concat();
        assert!(well_formed("system.posix_acl_access", &acl) && !well_formed("system.posix_acl_access", &acl[..9]));
        assert!(!settable("trusted.overlay.opaque", true) && !settable("security.selinux", true));
    }

    /// The rules hold while unpacking: nothing of a refused entry is written, and what
    /// came before it stays in the directory the caller throws away.
    #[test]
    fn unpacking_stops_at_the_first_refused_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let tgz = tmp.path().join("bad.tar.gz");
        let entries: &[(&str, u8, &str)] =
            &[("ok", b'0', ""), ("link", b'2', "/"), ("link/x", b'0', ""), ("../outside/x", b'0', "")];
        std::fs::write(&tgz, gzip(&tar_of(entries))).unwrap();
        let e = unpack(&tgz, &root, u64::MAX).unwrap_err();
        assert!(e.message.contains("link/x"), "{e}");
        assert!(root.join("ok").exists());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        let plain = tmp.path().join("plain.tar");
        std::fs::write(&plain, tar_of(SAFE)).unwrap();
        assert_eq!(unpack(&plain, &root, u64::MAX).unwrap_err().code, "format_mismatch");
    }
}
