//! Applies one tar entry to the root with OCI layer semantics. Every final operation is a
//! `*at()` call on a parent directory descriptor resolved inside the root, on a single name, and
//! never follows a symlink in that name: an existing entry is removed first and the new one
//! created exclusively.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::resolve::{split_name, ResolveError, Resolved, Root};
use super::{sys, UnpackError, UnpackStats};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Ownership, permissions, times and xattrs from an entry's header and PAX records.
struct Meta {
    uid: u32,
    gid: u32,
    mode: libc::mode_t,
    mtime: (i64, i64),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// State that lives across all layers of one unpack.
pub(crate) struct Applier<'a> {
    pub root: Root,
    pub max_bytes: Option<u64>,
    pub stats: UnpackStats,
    /// The layer being applied (for error messages).
    pub digest: &'a str,
    /// Paths (from the root, symlink-free) the current layer wrote, and their ancestors: an
    /// opaque marker keeps these.
    pub written: HashSet<PathBuf>,
    /// Directory mtimes, applied after everything else is written.
    pub dir_times: HashMap<PathBuf, (i64, i64)>,
    /// The last entry's parent components and their resolved directory: consecutive entries
    /// of a tar mostly share a parent, and resolving it walks every component (an openat2
    /// and a stat each). An entry only ever changes its own name inside its parent, never the
    /// parent's chain, so the cache stays true until a whiteout or opaque marker (which
    /// remove things) or the next layer; those drop it.
    pub parent_cache: Option<(Vec<OsString>, Resolved)>,
}

/// The error context of one entry.
struct Ctx<'e> {
    digest: &'e str,
    entry: &'e str,
}

impl Ctx<'_> {
    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        move |source| {
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ) {
                UnpackError::DiskFull {
                    digest: self.digest.to_owned(),
                    entry: self.entry.to_owned(),
                    source,
                }
            } else {
                UnpackError::Io {
                    digest: self.digest.to_owned(),
                    entry: self.entry.to_owned(),
                    op,
                    source,
                }
            }
        }
    }

    fn corrupt(&self, source: io::Error) -> UnpackError {
        UnpackError::Corrupt {
            digest: self.digest.to_owned(),
            source,
        }
    }

    fn unsafe_path(&self, reason: String) -> UnpackError {
        UnpackError::UnsafePath {
            digest: self.digest.to_owned(),
            entry: self.entry.to_owned(),
            reason,
        }
    }

    fn bad(&self, reason: String) -> UnpackError {
        UnpackError::BadEntry {
            digest: self.digest.to_owned(),
            entry: self.entry.to_owned(),
            reason,
        }
    }

    fn resolve(&self, err: ResolveError) -> UnpackError {
        let (digest, entry) = (self.digest.to_owned(), self.entry.to_owned());
        match err {
            ResolveError::Escape { symlink, target } => UnpackError::SymlinkEscape {
                digest,
                entry,
                symlink,
                target,
            },
            ResolveError::Loop => UnpackError::SymlinkLoop { digest, entry },
            ResolveError::NotADirectory { parent } => UnpackError::NotADirectory {
                digest,
                entry,
                parent,
            },
            ResolveError::Io { op, source } => self.io(op)(source),
        }
    }
}

impl Applier<'_> {
    /// Applies one entry. `tick` is called while file data is copied (for progress).
    pub(crate) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        tick: &mut dyn FnMut(),
    ) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let digest = self.digest;
        let ctx = Ctx {
            digest,
            entry: &shown,
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
            return Ok(());
        }
        let comps = split_name(&raw).map_err(|r| ctx.unsafe_path(r.to_owned()))?;

        if let Some(last) = comps.last() {
            if last.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                self.stats.whiteouts += 1;
                return self.whiteout(&ctx, &comps[..comps.len() - 1], last);
            }
        }
        let meta = read_meta(entry, &ctx)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`): only its metadata can change.
            if kind != EntryType::Directory {
                return Err(ctx.unsafe_path("a non-directory entry names the root".to_owned()));
            }
            let dir = self
                .root
                .open_dir(Path::new(""), libc::O_RDONLY)
                .map_err(ctx.io("open"))?;
            set_fd_meta(dir.as_fd(), &meta, &ctx)?;
            self.dir_times.insert(PathBuf::new(), meta.mtime);
            self.stats.entries += 1;
            return Ok(());
        };
        let (cached_comps, parent) = match self.parent_cache.take() {
            Some((c, r)) if c.as_slice() == parents => (c, r),
            _ => {
                let written = &mut self.written;
                let r = self
                    .root
                    .resolve_dir(parents, true, &mut |p| {
                        written.insert(p.to_path_buf());
                    })
                    .map_err(|e| ctx.resolve(e))?
                    .expect("resolve_dir with create always yields a directory");
                (parents.to_vec(), r)
            }
        };
        let r = self.apply_at(entry, &ctx, kind, &parent, name, meta, tick);
        self.parent_cache = Some((cached_comps, parent));
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_at<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        ctx: &Ctx<'_>,
        kind: EntryType,
        parent: &Resolved,
        name: &OsStr,
        meta: Meta,
        tick: &mut dyn FnMut(),
    ) -> Result<(), UnpackError> {
        let (digest, shown) = (ctx.digest, ctx.entry);
        let path = parent.path.join(name);

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, parent, name, &meta, ctx, tick)?
            }
            EntryType::Directory => {
                self.mkdir(parent, name, &meta, ctx)?;
                self.dir_times.insert(path.clone(), meta.mtime);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx.bad("symlink without a target".to_owned()))?
                    .into_owned();
                clear(parent.dir.as_fd(), name, false, ctx)?;
                sys::symlinkat(OsStr::from_bytes(&target), parent.dir.as_fd(), name)
                    .map_err(ctx.io("symlink"))?;
                set_named_meta(parent.dir.as_fd(), name, &meta, false, ctx)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx.bad("hard link without a target".to_owned()))?
                    .into_owned();
                self.hard_link(parent, name, &target, ctx)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let fmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = if kind == EntryType::Fifo {
                    0
                } else {
                    let h = entry.header();
                    let major = h.device_major().map_err(|e| ctx.bad(e.to_string()))?;
                    let minor = h.device_minor().map_err(|e| ctx.bad(e.to_string()))?;
                    match (major, minor) {
                        (Some(ma), Some(mi)) => libc::makedev(ma, mi),
                        _ => return Err(ctx.bad("device without major/minor numbers".to_owned())),
                    }
                };
                clear(parent.dir.as_fd(), name, false, ctx)?;
                sys::mknodat(parent.dir.as_fd(), name, fmt | 0o600, dev)
                    .map_err(ctx.io("mknod"))?;
                set_named_meta(parent.dir.as_fd(), name, &meta, true, ctx)?;
            }
            other => {
                tracing::warn!(digest, entry = %shown, kind = ?other, "skipping unsupported tar entry");
                return Ok(());
            }
        }
        self.record(&path);
        self.stats.entries += 1;
        Ok(())
    }

    fn record(&mut self, path: &Path) {
        for p in path.ancestors() {
            if !p.as_os_str().is_empty() && !self.written.insert(p.to_path_buf()) {
                break;
            }
        }
    }

    fn whiteout(
        &mut self,
        ctx: &Ctx<'_>,
        parents: &[OsString],
        marker: &OsStr,
    ) -> Result<(), UnpackError> {
        self.parent_cache = None;
        let parent = match self.root.resolve_dir(parents, false, &mut |_| {}) {
            Ok(Some(parent)) => parent,
            // Whiting out something that does not exist (a missing parent, or a parent that is
            // not a directory) changes nothing.
            Ok(None) | Err(ResolveError::NotADirectory { .. }) => return Ok(()),
            Err(e) => return Err(ctx.resolve(e)),
        };
        if marker == OPAQUE {
            return self.opaque(parent.dir.as_fd(), &parent.path, ctx);
        }
        let name = OsStr::from_bytes(&marker.as_bytes()[WHITEOUT_PREFIX.len()..]);
        if name.is_empty() || name == "." || name == ".." {
            return Err(ctx.unsafe_path("whiteout of an invalid name".to_owned()));
        }
        clear(parent.dir.as_fd(), name, false, ctx).map(drop)
    }

    /// Removes everything below `dir` that the current layer did not write.
    fn opaque(&self, dir: BorrowedFd<'_>, path: &Path, ctx: &Ctx<'_>) -> Result<(), UnpackError> {
        for name in sys::read_dir_names(dir).map_err(ctx.io("read directory"))? {
            let child = path.join(&name);
            if !self.written.contains(&child) {
                clear(dir, &name, false, ctx)?;
                continue;
            }
            let Some(st) = sys::lstatat(dir, &name).map_err(ctx.io("stat"))? else {
                continue;
            };
            if sys::is_dir(&st) {
                let sub = sys::openat(
                    dir,
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(ctx.io("open"))?;
                self.opaque(sub.as_fd(), &child, ctx)?;
            }
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &Resolved,
        name: &OsStr,
        meta: &Meta,
        ctx: &Ctx<'_>,
        tick: &mut dyn FnMut(),
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        let total = self.stats.bytes.saturating_add(size);
        if let Some(limit) = self.max_bytes {
            if total > limit {
                return Err(UnpackError::TooLarge {
                    limit,
                    total,
                    digest: ctx.digest.to_owned(),
                    entry: ctx.entry.to_owned(),
                });
            }
        }
        clear(parent.dir.as_fd(), name, false, ctx)?;
        let fd = sys::openat(
            parent.dir.as_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(ctx.io("create"))?;
        let mut file = File::from(fd);
        let mut buf = vec![0u8; 128 * 1024];
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ctx.corrupt(e)),
            };
            let chunk = &buf[..n];
            if chunk.iter().all(|b| *b == 0) {
                // Leave a hole: sparse entries (and runs of zeros) stay sparse on disk.
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(ctx.io("seek"))?;
            } else {
                file.write_all(chunk).map_err(ctx.io("write"))?;
            }
            written += n as u64;
            tick();
        }
        if written != size {
            return Err(ctx.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {:?} ends after {written} of {size} bytes", ctx.entry),
            )));
        }
        file.set_len(written).map_err(ctx.io("truncate"))?;
        self.stats.bytes = total;
        set_fd_meta(file.as_fd(), meta, ctx)?;
        sys::set_times(file.as_fd(), None, meta.mtime.0, meta.mtime.1).map_err(ctx.io("utimens"))
    }

    fn mkdir(
        &mut self,
        parent: &Resolved,
        name: &OsStr,
        meta: &Meta,
        ctx: &Ctx<'_>,
    ) -> Result<(), UnpackError> {
        let exists = clear(parent.dir.as_fd(), name, true, ctx)?;
        if !exists {
            sys::mkdirat(parent.dir.as_fd(), name, 0o700).map_err(ctx.io("mkdir"))?;
        }
        let dir = sys::openat(
            parent.dir.as_fd(),
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(ctx.io("open"))?;
        set_fd_meta(dir.as_fd(), meta, ctx)
    }

    fn hard_link(
        &mut self,
        parent: &Resolved,
        name: &OsStr,
        target: &[u8],
        ctx: &Ctx<'_>,
    ) -> Result<(), UnpackError> {
        let shown_target = String::from_utf8_lossy(target).into_owned();
        let bad = |reason: &'static str| UnpackError::BadHardLink {
            digest: ctx.digest.to_owned(),
            entry: ctx.entry.to_owned(),
            target: shown_target.clone(),
            reason,
        };
        let comps = split_name(target)
            .map_err(|r| ctx.unsafe_path(format!("hard link target {shown_target:?}: {r}")))?;
        let Some((tname, tparents)) = comps.split_last() else {
            return Err(bad("the target is the root"));
        };
        let Some(tdir) = self
            .root
            .resolve_dir(tparents, false, &mut |_| {})
            .map_err(|e| ctx.resolve(e))?
        else {
            return Err(bad("the target does not exist"));
        };
        let Some(tst) = sys::lstatat(tdir.dir.as_fd(), tname).map_err(ctx.io("stat"))? else {
            return Err(bad("the target does not exist"));
        };
        if sys::is_dir(&tst) {
            return Err(bad("the target is a directory"));
        }
        if let Some(st) = sys::lstatat(parent.dir.as_fd(), name).map_err(ctx.io("stat"))? {
            if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                return Ok(()); // already this very file
            }
        }
        clear(parent.dir.as_fd(), name, false, ctx)?;
        sys::linkat(tdir.dir.as_fd(), tname, parent.dir.as_fd(), name).map_err(ctx.io("link"))
    }

    /// Sets the recorded directory mtimes (after all layers: writing into a directory changes it).
    pub(crate) fn finish_dir_times(&mut self) -> Result<(), UnpackError> {
        let ctx = Ctx {
            digest: self.digest,
            entry: "",
        };
        for (path, (secs, nsecs)) in self.dir_times.drain() {
            let dir = match self.root.open_dir(&path, libc::O_RDONLY) {
                Ok(dir) => dir,
                // Removed or replaced by a later layer.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(Ctx {
                        entry: &path.to_string_lossy(),
                        ..ctx
                    }
                    .io("open")(e))
                }
            };
            sys::set_times(dir.as_fd(), None, secs, nsecs).map_err(|e| {
                Ctx {
                    entry: &path.to_string_lossy(),
                    ..ctx
                }
                .io("utimens")(e)
            })?;
        }
        Ok(())
    }
}

/// Removes `dir/name` if present (a directory with everything below it), unless it is a
/// directory and `keep_dir` is set. Returns whether a kept directory exists.
fn clear(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    keep_dir: bool,
    ctx: &Ctx<'_>,
) -> Result<bool, UnpackError> {
    let Some(st) = sys::lstatat(dir, name).map_err(ctx.io("stat"))? else {
        return Ok(false);
    };
    if sys::is_dir(&st) {
        if keep_dir {
            return Ok(true);
        }
        remove_tree(dir, name).map_err(ctx.io("remove directory"))?;
    } else {
        sys::unlinkat(dir, name, false).map_err(ctx.io("unlink"))?;
    }
    Ok(false)
}

fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let dir: OwnedFd = sys::openat(
        parent,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    for child in sys::read_dir_names(dir.as_fd())? {
        match sys::lstatat(dir.as_fd(), &child)? {
            Some(st) if sys::is_dir(&st) => remove_tree(dir.as_fd(), &child)?,
            Some(_) => sys::unlinkat(dir.as_fd(), &child, false)?,
            None => {}
        }
    }
    sys::unlinkat(parent, name, true)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, ctx: &Ctx<'_>) -> Result<Meta, UnpackError> {
    let h = entry.header();
    let uid = h.uid().map_err(|e| ctx.bad(format!("uid: {e}")))?;
    let gid = h.gid().map_err(|e| ctx.bad(format!("gid: {e}")))?;
    let mode = h.mode().map_err(|e| ctx.bad(format!("mode: {e}")))?;
    let mtime = h.mtime().map_err(|e| ctx.bad(format!("mtime: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| ctx.bad(format!("uid {uid} is out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| ctx.bad(format!("gid {gid} is out of range")))?;
    let mut meta = Meta {
        uid,
        gid,
        mode: mode & 0o7777,
        mtime: (i64::try_from(mtime).unwrap_or(i64::MAX), 0),
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions().map_err(|e| ctx.corrupt(e))? {
        for ext in exts {
            let ext = ext.map_err(|e| ctx.corrupt(e))?;
            let key = ext.key_bytes();
            if let Some(xname) = key.strip_prefix(XATTR_PREFIX) {
                meta.xattrs.push((
                    OsStr::from_bytes(xname).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            } else if key == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    meta.mtime = t;
                }
            }
        }
    }
    Ok(meta)
}

/// Parses a PAX time (`secs[.fraction]`, possibly negative) into seconds and nanoseconds.
fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nsecs: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    if secs < 0 && nsecs > 0 {
        // -1.5 means 1.5 s before the epoch: -2 s + 0.5 s.
        return Some((secs - 1, 1_000_000_000 - nsecs));
    }
    Some((secs, nsecs))
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs, on an open file or directory.
fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta, ctx: &Ctx<'_>) -> Result<(), UnpackError> {
    sys::lchownat(fd, None, meta.uid, meta.gid).map_err(ctx.io("chown"))?;
    sys::fchmod_any(fd, meta.mode).map_err(ctx.io("chmod"))?;
    for (key, value) in &meta.xattrs {
        set_xattr(fd, None, key, value, ctx)?;
    }
    Ok(())
}

/// The same for a symlink or device node `dir/name`, never following `name`.
fn set_named_meta(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Meta,
    chmod: bool,
    ctx: &Ctx<'_>,
) -> Result<(), UnpackError> {
    sys::lchownat(dir, Some(name), meta.uid, meta.gid).map_err(ctx.io("chown"))?;
    if chmod {
        let node =
            sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(ctx.io("open"))?;
        sys::fchmod_any(node.as_fd(), meta.mode).map_err(ctx.io("chmod"))?;
    }
    for (key, value) in &meta.xattrs {
        set_xattr(dir, Some(name), key, value, ctx)?;
    }
    sys::set_times(dir, Some(name), meta.mtime.0, meta.mtime.1).map_err(ctx.io("utimensat"))
}

fn set_xattr(
    fd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    key: &OsStr,
    value: &[u8],
    ctx: &Ctx<'_>,
) -> Result<(), UnpackError> {
    match sys::set_xattr(fd, name, key, value) {
        Ok(()) => Ok(()),
        // The kernel allows `user.` attributes on regular files and directories only.
        Err(e)
            if key.as_bytes().starts_with(b"user.")
                && matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP)) =>
        {
            tracing::warn!(digest = ctx.digest, entry = ctx.entry, xattr = ?key, "skipping xattr: {e}");
            Ok(())
        }
        Err(e) => Err(ctx.io("setxattr")(e)),
    }
}
