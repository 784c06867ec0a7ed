//! Safe tar layer extraction into a root directory.
//!
//! Every path is resolved from a directory fd of the root with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`, the way a container runtime sees the rootfs: an absolute symlink
//! (`var/run -> /run`) resolves against the root, and `..` stops at the root. So an entry written
//! through a symlink always lands inside the root, wherever the symlink points: `evil ->
//! /../../etc` then `evil/passwd` writes `<root>/etc/passwd`, and `up -> ../../..` then
//! `up/tmp/x` writes `<root>/tmp/x` (the missing directories are created there, as umoci and
//! containerd do). Nothing is ever created or changed outside the root. `..` in an entry's own
//! path is still refused outright ([`ImageError::PathTraversal`]), and `/proc/self/...`-style
//! magic links are never followed. The final component is never followed: existing entries are
//! removed and new ones created with `O_EXCL|O_NOFOLLOW`; symlink entries are stored as given
//! (absolute targets included), never resolved by the unpacker.
//!
//! Whiteouts: in [`WhiteoutMode::Apply`] (a flattened rootfs) `.wh.<name>` removes `<name>` and
//! `.wh..wh..opq` removes everything lower layers put in its directory; in
//! [`WhiteoutMode::Overlay`] (one directory per layer, for overlayfs) they become 0/0 character
//! devices and the `trusted.overlay.opaque` xattr.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use super::error::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
/// Mode bits a tar header may set (permissions, setuid/setgid/sticky).
const MODE_MASK: u32 = 0o7777;
/// Symlinks followed while creating one entry's parent directories (the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;
/// Mode of parent directories that the layer does not list itself (as `mkdir -p`, umask 022).
const IMPLICIT_DIR_MODE: libc::mode_t = 0o755;

/// How whiteout entries are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Apply them to the directory (flattened rootfs).
    Apply,
    /// Keep them as overlayfs whiteouts (per-layer directories).
    Overlay,
}

/// Limits that stop a hostile layer from filling the guest's memory-backed disk.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Largest single file.
    pub max_entry_size: u64,
    /// Sum of all file sizes in one image.
    pub max_total_size: u64,
    /// Number of tar entries in one layer.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_entry_size: 16 << 30,
            max_total_size: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// Options of one layer extraction.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    pub limits: UnpackLimits,
    /// chown to the tar header's uid/gid and create device nodes (needs root).
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: WhiteoutMode::Apply,
            limits: UnpackLimits::default(),
            // SAFETY: geteuid has no preconditions.
            preserve_ownership: unsafe { libc::geteuid() } == 0,
        }
    }
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `openat2` with `rootfd` as the root: absolute symlinks and `..` resolve inside it.
fn open_in_root(rootfd: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str())?;
    // SAFETY: open_how is plain data; zero is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid fd, NUL-terminated path, `how` lives across the call with its size given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                rootfd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a new fd that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

fn openat(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and NUL-terminated name.
    let r = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: new fd owned by us.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
}

fn lstat_at(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: stat is plain data; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, name and out pointer.
    let r = unsafe {
        libc::fstatat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// The target of symlink `name` in `dirfd`.
fn readlink_at(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid fd, name and buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// Names in a directory (without `.` and `..`).
fn list_dir(dirfd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let fd = openat(dirfd, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is an open directory fd; on success the DIR stream owns it.
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own `raw`.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `dir` is a valid stream; errno is reset to tell end-of-directory from errors.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: valid stream.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: valid stream, closed once.
            unsafe { libc::closedir(dir) };
            if e.raw_os_error().unwrap_or(0) != 0 {
                return Err(e);
            }
            return Ok(names);
        }
        // SAFETY: d_name is NUL-terminated within the entry returned by readdir.
        let n = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
}

/// Remove `name` in `dirfd`, recursively, never following symlinks. Missing is fine.
pub(crate) fn remove_all_at(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_at(dirfd, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = openat(
            dirfd,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        for child in list_dir(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        // SAFETY: valid fd and name.
        cvt(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: valid fd and name.
        let r = unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), 0) };
        match cvt(r) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// Remove a directory tree by path (used to discard temporary unpack directories).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot remove a root path",
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = File::open(parent)?;
    remove_all_at(dir.as_fd(), &cstring(name)?)
}

/// Normalise a tar path: drop `.`, leading `/`; `Ok(None)` for the root itself; `Err` on `..`.
fn normalize(path: &Path) -> std::result::Result<Option<PathBuf>, ()> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(()),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

enum ResolveError {
    /// `openat2` refused to leave the root (`EXDEV`; with `RESOLVE_IN_ROOT` only on a detected
    /// rename race, kept as a hard error).
    Escape,
    Io(io::Error),
}

impl ResolveError {
    fn from_open(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::EXDEV) {
            ResolveError::Escape
        } else {
            ResolveError::Io(e)
        }
    }
}

/// Extracts one layer's tar stream into `root`.
pub(crate) struct LayerUnpacker<'a> {
    root: OwnedFd,
    opts: UnpackOptions,
    digest: &'a str,
    /// Bytes of file content unpacked so far in the whole image.
    pub total: u64,
    created: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, u64)>,
}

impl<'a> LayerUnpacker<'a> {
    pub(crate) fn new(
        root: &Path,
        opts: UnpackOptions,
        digest: &'a str,
        total: u64,
    ) -> Result<Self> {
        let root_fd = File::open(root).map_err(|e| ImageError::io("open unpack root", root, e))?;
        Ok(LayerUnpacker {
            root: root_fd.into(),
            opts,
            digest,
            total,
            created: HashSet::new(),
            dir_times: Vec::new(),
        })
    }

    fn err(&self, entry: &Path, source: io::Error) -> ImageError {
        ImageError::Unpack {
            digest: self.digest.to_string(),
            entry: entry.display().to_string(),
            source,
        }
    }

    fn bad(&self, entry: &Path, reason: impl Into<String>) -> ImageError {
        ImageError::BadEntry {
            digest: self.digest.to_string(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    fn escape(&self, entry: &Path) -> ImageError {
        ImageError::SymlinkEscape {
            digest: self.digest.to_string(),
            entry: entry.display().to_string(),
        }
    }

    /// Open directory `rel` (resolved inside the root), creating missing components when
    /// `create`.
    fn open_dir(&self, rel: &Path, create: bool) -> std::result::Result<OwnedFd, ResolveError> {
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().map_err(ResolveError::Io);
        }
        match open_in_root(self.root.as_fd(), rel, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => self.create_dirs(rel),
            Err(e) => Err(ResolveError::from_open(e)),
        }
    }

    /// `mkdir -p rel` as a container runtime does it in a rootfs: a component that is a symlink
    /// is followed as if the root were `/`, also when it dangles (the missing directories are
    /// then created where it points, inside the root); `..` in a symlink target stops at the
    /// root. Returns the directory.
    fn create_dirs(&self, rel: &Path) -> std::result::Result<OwnedFd, ResolveError> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut pending: VecDeque<OsString> =
            rel.components().map(|c| c.as_os_str().to_owned()).collect();
        // `prefix` resolves (in the root) to the directory `cur`.
        let mut prefix = PathBuf::new();
        let mut cur = self.root.try_clone().map_err(ResolveError::Io)?;
        let mut symlinks = 0;
        while let Some(comp) = pending.pop_front() {
            let candidate = prefix.join(&comp);
            match open_in_root(self.root.as_fd(), &candidate, flags) {
                Ok(fd) => {
                    (cur, prefix) = (fd, candidate);
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(ResolveError::from_open(e)),
            }
            let name = cstring(&comp).map_err(ResolveError::Io)?;
            match lstat_at(cur.as_fd(), &name).map_err(ResolveError::Io)? {
                None => {
                    // SAFETY: valid fd and name.
                    let r =
                        unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), IMPLICIT_DIR_MODE) };
                    cvt(r).map_err(ResolveError::Io)?;
                    let fd = openat(cur.as_fd(), &name, flags | libc::O_NOFOLLOW, 0)
                        .map_err(ResolveError::Io)?;
                    (cur, prefix) = (fd, candidate);
                }
                Some(st) if is_symlink(&st) => {
                    // A symlink whose target (or a directory on the way to it) is missing:
                    // continue with the target's components in its place.
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(ResolveError::Io(io::Error::from_raw_os_error(libc::ELOOP)));
                    }
                    let target =
                        PathBuf::from(readlink_at(cur.as_fd(), &name).map_err(ResolveError::Io)?);
                    if target.is_absolute() {
                        prefix = PathBuf::new();
                        cur = self.root.try_clone().map_err(ResolveError::Io)?;
                    }
                    for c in target.components().rev() {
                        if let Component::Normal(_) | Component::ParentDir = c {
                            pending.push_front(c.as_os_str().to_owned());
                        }
                    }
                }
                // Exists, is no symlink, yet did not resolve: changed under us.
                Some(_) => {
                    return Err(ResolveError::Io(io::Error::from_raw_os_error(libc::ENOENT)));
                }
            }
        }
        Ok(cur)
    }

    fn parent_of(&self, entry: &Path, create: bool) -> Result<(OwnedFd, CString)> {
        let parent = entry.parent().unwrap_or(Path::new(""));
        let name = entry
            .file_name()
            .ok_or_else(|| self.bad(entry, "entry has no file name"))?;
        let name = cstring(name).map_err(|e| self.err(entry, e))?;
        let fd = self.open_dir(parent, create).map_err(|e| match e {
            ResolveError::Escape => self.escape(entry),
            ResolveError::Io(io) => self.err(entry, io),
        })?;
        Ok((fd, name))
    }

    /// Extract every entry of `archive`.
    pub(crate) fn unpack<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let digest = self.digest.to_string();
        let tar_err = |e: io::Error| -> ImageError {
            ImageError::Unpack {
                digest: digest.clone(),
                entry: "<tar stream>".to_string(),
                source: e,
            }
        };
        let mut count = 0u64;
        for entry in archive.entries().map_err(&tar_err)? {
            let mut entry = entry.map_err(&tar_err)?;
            count += 1;
            if count > self.opts.limits.max_entries {
                return Err(self.bad(
                    Path::new("<tar stream>"),
                    format!("more than {} entries", self.opts.limits.max_entries),
                ));
            }
            self.entry(&mut entry)?;
        }
        // Directory mtimes last: creating children changed them.
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            if let Ok(fd) = open_in_root(
                self.root.as_fd(),
                &path,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            ) {
                set_fd_mtime(fd.as_fd(), mtime).map_err(|e| self.err(&path, e))?;
            }
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry
            .path()
            .map_err(|e| self.err(Path::new("<tar header>"), e))?
            .into_owned();
        let Ok(path) = normalize(&raw_path) else {
            return Err(ImageError::PathTraversal {
                digest: self.digest.to_string(),
                entry: raw_path.display().to_string(),
            });
        };
        let kind = entry.header().entry_type();
        let Some(path) = path else {
            return Ok(()); // "./": the root directory keeps the mode we created it with.
        };
        let size = entry.size();
        if size > self.opts.limits.max_entry_size {
            return Err(ImageError::EntryTooLarge {
                digest: self.digest.to_string(),
                entry: path.display().to_string(),
                size,
                limit: self.opts.limits.max_entry_size,
            });
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.opts.limits.max_total_size {
            return Err(ImageError::ImageTooLarge {
                digest: self.digest.to_string(),
                limit: self.opts.limits.max_total_size,
            });
        }

        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&path, hidden, file_name == OPAQUE_WHITEOUT);
        }

        let xattrs = self.xattrs(entry, &path)?;
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.err(&path, e))? & MODE_MASK;
        let uid = header.uid().map_err(|e| self.err(&path, e))?;
        let gid = header.gid().map_err(|e| self.err(&path, e))?;
        let mtime = header.mtime().map_err(|e| self.err(&path, e))?;
        let (major, minor) = if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            (
                header
                    .device_major()
                    .map_err(|e| self.err(&path, e))?
                    .unwrap_or(0),
                header
                    .device_minor()
                    .map_err(|e| self.err(&path, e))?
                    .unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        let uid = u32::try_from(uid).map_err(|_| self.bad(&path, "uid out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| self.bad(&path, "gid out of range"))?;

        let (parent, name) = self.parent_of(&path, true)?;
        let existing = lstat_at(parent.as_fd(), &name).map_err(|e| self.err(&path, e))?;
        let keep_existing_dir = kind.is_dir() && existing.as_ref().is_some_and(is_dir);
        if existing.is_some() && !keep_existing_dir {
            remove_all_at(parent.as_fd(), &name).map_err(|e| self.err(&path, e))?;
        }
        let io = |r: io::Result<()>| r.map_err(|e| self.err(&path, e));
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                let fd = openat(
                    parent.as_fd(),
                    &name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(|e| self.err(&path, e))?;
                let mut file = File::from(fd);
                let written = io::copy(entry, &mut file).map_err(|e| self.err(&path, e))?;
                if written != size {
                    return Err(self.bad(
                        &path,
                        format!("tar stream ended after {written} of {size} bytes"),
                    ));
                }
                io(self.finish_fd(file.as_fd(), uid, gid, mode, &xattrs))?;
                io(set_fd_mtime(file.as_fd(), mtime))?;
            }
            T::Directory => {
                if !keep_existing_dir {
                    // SAFETY: valid fd and name.
                    io(cvt(unsafe {
                        libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700)
                    }))?;
                }
                let fd = openat(
                    parent.as_fd(),
                    &name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| self.err(&path, e))?;
                io(self.finish_fd(fd.as_fd(), uid, gid, mode, &xattrs))?;
                self.dir_times.push((path.clone(), mtime));
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.err(&path, e))?
                    .ok_or_else(|| self.bad(&path, "symlink without target"))?;
                let target = cstring(target.as_os_str()).map_err(|e| self.err(&path, e))?;
                // SAFETY: valid strings and fd. The target is stored, never followed by us.
                io(cvt(unsafe {
                    libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), name.as_ptr())
                }))?;
                io(self.chown_at(parent.as_fd(), &name, uid, gid))?;
                io(set_mtime_at(parent.as_fd(), &name, mtime))?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.err(&path, e))?
                    .ok_or_else(|| self.bad(&path, "hardlink without target"))?;
                let Ok(Some(target)) = normalize(&target) else {
                    return Err(ImageError::PathTraversal {
                        digest: self.digest.to_string(),
                        entry: format!("{} -> {}", path.display(), target.display()),
                    });
                };
                let (tparent, tname) = self.parent_of(&target, false)?;
                // SAFETY: valid fds and names; flags 0 links a symlink itself, not its target.
                let r = unsafe {
                    libc::linkat(
                        tparent.as_raw_fd(),
                        tname.as_ptr(),
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        0,
                    )
                };
                cvt(r).map_err(|e| {
                    self.bad(
                        &path,
                        format!("hardlink to {} failed: {e}", target.display()),
                    )
                })?;
            }
            T::Char | T::Block | T::Fifo => {
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if fmt != libc::S_IFIFO && !self.opts.preserve_ownership {
                    return Err(self.bad(&path, "device nodes need root; run the pull as root"));
                }
                let dev = libc::makedev(major, minor);
                // SAFETY: valid fd and name.
                io(cvt(unsafe {
                    libc::mknodat(parent.as_raw_fd(), name.as_ptr(), fmt | 0o600, dev)
                }))?;
                io(self.chown_at(parent.as_fd(), &name, uid, gid))?;
                // SAFETY: the node was just created (not a symlink), in a directory only we write.
                io(cvt(unsafe {
                    libc::fchmodat(parent.as_raw_fd(), name.as_ptr(), mode, 0)
                }))?;
                io(set_mtime_at(parent.as_fd(), &name, mtime))?;
            }
            T::XGlobalHeader => return Ok(()),
            other => return Err(self.bad(&path, format!("unsupported tar entry type {other:?}"))),
        }
        self.created.insert(path);
        Ok(())
    }

    fn xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
    ) -> Result<Vec<(CString, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| self.err(path, e))? {
            for ext in exts {
                let ext = ext.map_err(|e| self.err(path, e))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    let name = CString::new(name)
                        .map_err(|_| self.bad(path, "xattr name contains NUL"))?;
                    out.push((name, ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(out)
    }

    fn chown_at(&self, dirfd: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
        if !self.opts.preserve_ownership {
            return Ok(());
        }
        // SAFETY: valid fd and name; does not follow symlinks.
        cvt(unsafe {
            libc::fchownat(
                dirfd.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    fn finish_fd(
        &self,
        fd: BorrowedFd<'_>,
        uid: u32,
        gid: u32,
        mode: u32,
        xattrs: &[(CString, Vec<u8>)],
    ) -> io::Result<()> {
        if self.opts.preserve_ownership {
            // SAFETY: valid fd.
            cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
        }
        // After chown, which clears setuid/setgid.
        // SAFETY: valid fd.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
        for (name, value) in xattrs {
            // SAFETY: valid fd, name and buffer.
            let r = unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            cvt(r)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, path: &Path, hidden: &str, opaque: bool) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new(""));
        match (self.opts.whiteouts, opaque) {
            (WhiteoutMode::Apply, true) => {
                let fd = match self.open_dir(dir, true) {
                    Ok(fd) => fd,
                    Err(ResolveError::Escape) => return Err(self.escape(path)),
                    Err(ResolveError::Io(e)) => return Err(self.err(path, e)),
                };
                for child in list_dir(fd.as_fd()).map_err(|e| self.err(path, e))? {
                    let child_path = dir.join(OsStr::from_bytes(child.as_bytes()));
                    if !self.created.contains(&child_path) {
                        remove_all_at(fd.as_fd(), &child).map_err(|e| self.err(path, e))?;
                    }
                }
            }
            (WhiteoutMode::Apply, false) => {
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(self.bad(path, "whiteout of an invalid name"));
                }
                let fd = match self.open_dir(dir, false) {
                    Ok(fd) => fd,
                    Err(ResolveError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                        return Ok(());
                    }
                    Err(ResolveError::Escape) => return Err(self.escape(path)),
                    Err(ResolveError::Io(e)) => return Err(self.err(path, e)),
                };
                let name = CString::new(hidden).map_err(|_| self.bad(path, "NUL in name"))?;
                remove_all_at(fd.as_fd(), &name).map_err(|e| self.err(path, e))?;
            }
            (WhiteoutMode::Overlay, true) => {
                let fd = match self.open_dir(dir, true) {
                    Ok(fd) => fd,
                    Err(ResolveError::Escape) => return Err(self.escape(path)),
                    Err(ResolveError::Io(e)) => return Err(self.err(path, e)),
                };
                let fd = openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| self.err(path, e))?;
                // SAFETY: valid fd, name and value.
                let r = unsafe {
                    libc::fsetxattr(
                        fd.as_raw_fd(),
                        OVERLAY_OPAQUE_XATTR.as_ptr(),
                        b"y".as_ptr().cast(),
                        1,
                        0,
                    )
                };
                cvt(r).map_err(|e| self.err(path, e))?;
            }
            (WhiteoutMode::Overlay, false) => {
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(self.bad(path, "whiteout of an invalid name"));
                }
                let target = dir.join(hidden);
                let (parent, name) = self.parent_of(&target, true)?;
                remove_all_at(parent.as_fd(), &name).map_err(|e| self.err(path, e))?;
                // SAFETY: valid fd and name; a 0/0 char device is overlayfs' whiteout.
                let r = unsafe {
                    libc::mknodat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::S_IFCHR,
                        libc::makedev(0, 0),
                    )
                };
                cvt(r).map_err(|e| self.err(path, e))?;
                self.created.insert(target);
            }
        }
        Ok(())
    }
}

fn timespecs(mtime: u64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    [t, t]
}

fn set_fd_mtime(fd: BorrowedFd<'_>, mtime: u64) -> io::Result<()> {
    let ts = timespecs(mtime);
    // SAFETY: valid fd and two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })
}

fn set_mtime_at(dirfd: BorrowedFd<'_>, name: &CStr, mtime: u64) -> io::Result<()> {
    let ts = timespecs(mtime);
    // SAFETY: valid fd, name and two timespecs; does not follow symlinks.
    cvt(unsafe {
        libc::utimensat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Extract one uncompressed layer tar stream into the existing directory `root`.
/// Returns the bytes of file content written (cumulative with `total_before`).
pub fn unpack_layer<R: Read>(
    reader: R,
    root: &Path,
    opts: UnpackOptions,
    digest: &str,
    total_before: u64,
) -> Result<u64> {
    let mut u = LayerUnpacker::new(root, opts, digest, total_before)?;
    let mut archive = tar::Archive::new(reader);
    u.unpack(&mut archive)?;
    Ok(u.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn raw_name(h: &mut tar::Header, name: &str) {
        let bytes = &mut h.as_old_mut().name;
        bytes[..name.len()].copy_from_slice(name.as_bytes());
    }

    #[test]
    fn rejects_dotdot() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            raw_name(&mut h, "../evil");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err =
            unpack_layer(&data[..], &root, UnpackOptions::default(), "sha256:x", 0).unwrap_err();
        assert!(matches!(err, ImageError::PathTraversal { .. }), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: impl AsRef<Path>) {
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    fn regular(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn entries_through_absolute_symlinks_land_in_root() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            b.append_data(&mut h, "run/", &b""[..]).unwrap();
            symlink(b, "var/run", "/run");
            regular(b, "var/run/foo", b"foo");
            // Hardlink whose target path goes through the symlink.
            let mut h = header(tar::EntryType::Link, 0, 0o644);
            b.append_link(&mut h, "var/run/hard", "var/run/foo")
                .unwrap();
            // Dangling absolute symlink: its missing directories are made inside the root.
            symlink(b, "var/lock", "/run/lock/sub");
            regular(b, "var/lock/x", b"x");
            // Chains of absolute and relative symlinks.
            symlink(b, "lib", "usr/lib");
            symlink(b, "usr/lib64", "/lib");
            regular(b, "usr/lib64/libc.so", b"libc");
        });
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        unpack_layer(&data[..], r, UnpackOptions::default(), "sha256:x", 0).unwrap();
        assert_eq!(
            std::fs::read_link(r.join("var/run")).unwrap(),
            Path::new("/run")
        );
        assert_eq!(std::fs::read(r.join("run/foo")).unwrap(), b"foo");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(r.join("run/hard")).unwrap().nlink(), 2);
        assert_eq!(std::fs::read(r.join("run/lock/sub/x")).unwrap(), b"x");
        assert!(
            std::fs::symlink_metadata(r.join("var/lock"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read(r.join("usr/lib/libc.so")).unwrap(), b"libc");
    }

    #[test]
    fn symlink_escapes_stay_in_root() {
        let outside = tempfile::tempdir().unwrap();
        let o = outside.path();
        let rel_o = o.strip_prefix("/").unwrap();
        let etc_name = format!("podvm-unpack-test-{}", std::process::id());
        let data = tar_with(|b| {
            symlink(b, "abs", o);
            regular(b, "abs/pwned-abs", b"x");
            symlink(b, "dotdot", Path::new("/../../..").join(rel_o));
            regular(b, "dotdot/pwned-dotdot", b"x");
            symlink(b, "up", "../../../../../../..");
            regular(b, &format!("up/{}/pwned-up", rel_o.display()), b"x");
            symlink(b, "evil", "/../../etc");
            regular(b, &format!("evil/{etc_name}"), b"x");
            // A symlink chain and a relative hop through an absolute one.
            symlink(b, "hop", "/abs/../../../..");
            regular(b, &format!("hop/{}/pwned-hop", rel_o.display()), b"x");
        });
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().join("root");
        std::fs::create_dir(&r).unwrap();
        let res = unpack_layer(&data[..], &r, UnpackOptions::default(), "sha256:x", 0);
        let host_etc = Path::new("/etc").join(&etc_name);
        let leaked = host_etc.exists();
        let _ = std::fs::remove_file(&host_etc);
        assert!(!leaked, "an entry was written to the host's /etc");
        res.unwrap();
        assert_eq!(
            std::fs::read_dir(o).unwrap().count(),
            0,
            "written outside the root"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        for p in ["pwned-abs", "pwned-dotdot", "pwned-up", "pwned-hop"] {
            assert!(
                r.join(rel_o).join(p).is_file(),
                "{p} is not inside the root"
            );
        }
        assert!(r.join("etc").join(&etc_name).is_file());
        // The symlinks themselves are stored as given.
        assert_eq!(std::fs::read_link(r.join("abs")).unwrap(), o);
    }

    #[test]
    fn hardlink_and_loops_cannot_reach_outside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        let data = tar_with(|b| {
            symlink(b, "abs", outside.path());
            let mut h = header(tar::EntryType::Link, 0, 0o644);
            b.append_link(&mut h, "stolen", "abs/secret").unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(
            &data[..],
            dir.path(),
            UnpackOptions::default(),
            "sha256:x",
            0,
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::Unpack { .. }), "{err}");
        assert!(!dir.path().join("stolen").exists());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(outside.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );

        let data = tar_with(|b| {
            symlink(b, "a", "/b");
            symlink(b, "b", "a");
            regular(b, "a/x", b"x");
        });
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(
            &data[..],
            dir.path(),
            UnpackOptions::default(),
            "sha256:x",
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }

    #[test]
    fn whiteouts_and_opaque_apply() {
        let dir = tempfile::tempdir().unwrap();
        let lower = tar_with(|b| {
            for p in ["a/keep", "a/gone", "o/old"] {
                let mut h = header(tar::EntryType::Regular, 1, 0o640);
                b.append_data(&mut h, p, &b"1"[..]).unwrap();
            }
        });
        let upper = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 0, 0o644);
            b.append_data(&mut h, "a/.wh.gone", &b""[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            b.append_data(&mut h, "o/new", &b"2"[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 0, 0o644);
            b.append_data(&mut h, "o/.wh..wh..opq", &b""[..]).unwrap();
        });
        let opts = UnpackOptions::default();
        unpack_layer(&lower[..], dir.path(), opts, "l", 0).unwrap();
        unpack_layer(&upper[..], dir.path(), opts, "u", 0).unwrap();
        assert!(dir.path().join("a/keep").exists());
        assert!(!dir.path().join("a/gone").exists());
        assert!(!dir.path().join("o/old").exists());
        assert!(dir.path().join("o/new").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("a/keep"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
    }

    #[test]
    fn oversize_entry_rejected() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 100, 0o644);
            b.append_data(&mut h, "big", &[0u8; 100][..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let mut opts = UnpackOptions::default();
        opts.limits.max_entry_size = 10;
        let err = unpack_layer(&data[..], dir.path(), opts, "sha256:x", 0).unwrap_err();
        assert!(
            matches!(err, ImageError::EntryTooLarge { size: 100, .. }),
            "{err}"
        );
    }
}
