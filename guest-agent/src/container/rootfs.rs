//! The container's root filesystem, assembled by the container's PID 1 (in its new mount
//! namespace, before it runs anything of the image):
//!
//! 1. `/` becomes a slave (or the spec's `rootfsPropagation`), so nothing mounted here
//!    propagates back to the guest;
//! 2. a tmpfs on `<bundle>/scratch` holds the writable layer; `<bundle>/rootfs` is an overlay of
//!    the unpacked image (lower, never written) and that layer (upper). If overlayfs refuses
//!    (paths it cannot express, a lower filesystem it does not support), the image is
//!    bind-mounted instead and the container writes into it;
//! 3. the spec's mounts (or runc's default set), each destination resolved inside the rootfs
//!    (symlinks cannot lead out), device nodes in a tmpfs `/dev`;
//! 4. `pivot_root`, the old root detached;
//! 5. masked and read-only paths, sysctls, the read-only root, the hostname.
//!
//! Every mount lives in the container's mount namespace only: when its last process ends they
//! all go, and the guest's mount table never sees them.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, chown, pivot_root, sethostname};

use super::spec::{DeviceSpec, InitConfig, MountSpec};

/// How many symlinks [`resolve_in_root`] follows before giving up (as `filepath-securejoin`).
const MAX_SYMLINKS: usize = 255;

/// Resolves `path` as if `root` were `/`: `..` stops at the root and symlinks (absolute or
/// relative) are followed inside it. Components that do not exist are appended as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved))
}

/// `what: <strerror>` (no "(os error N)").
pub fn sys_msg(what: impl std::fmt::Display, e: Errno) -> String {
    format!("{what}: {}", e.desc())
}

fn io_msg(what: impl std::fmt::Display, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => sys_msg(what, Errno::from_raw(n)),
        None => format!("{what}: {e}"),
    }
}

type Setup<T = ()> = Result<T, String>;

/// A mount's options, split into flags, propagation and filesystem data.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

/// Parses OCI mount options (`mount(8)` names); what is not a flag is filesystem data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            other => {
                if let Some(p) = propagation(other) {
                    o.propagation = p;
                } else {
                    o.data.push(other.to_string());
                }
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

/// `private`, `rslave`, ... as flags.
pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Flags a bind remount may change (the rest belong to the filesystem).
const BIND_REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

fn mkdir_all(path: &Path) -> Setup {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| io_msg(format!("create directory {}", path.display()), &e))
}

fn touch(path: &Path) -> Setup {
    if let Some(parent) = path.parent() {
        mkdir_all(parent)?;
    }
    match fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(()),
        Err(e) => Err(io_msg(format!("create {}", path.display()), &e)),
    }
}

/// The flags the mount at `path` has now (to keep them across a bind remount).
fn current_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let mut flags = MsFlags::empty();
    if let Ok(s) = statvfs(path) {
        let f = s.flags();
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs_flag) {
                flags |= ms_flag;
            }
        }
    }
    flags
}

fn bind_remount(target: &Path, flags: MsFlags) -> Setup {
    let flags = (current_flags(target) | flags) & BIND_REMOUNT_FLAGS;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(|e| sys_msg(format!("remount {}", target.display()), e))
}

/// Step 2: `<bundle>/rootfs` from the image. Returns "overlay" or "bind".
fn mount_root(cfg: &InitConfig, target: &Path) -> Setup<&'static str> {
    let scratch = cfg.bundle.join("scratch");
    mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|e| sys_msg("mount the writable layer's tmpfs", e))?;
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    mkdir_all(&upper)?;
    mkdir_all(&work)?;
    // The image's root directory's mode and owner, for the merged root.
    if let Ok(meta) = fs::metadata(&cfg.image_rootfs) {
        use std::os::unix::fs::MetadataExt;
        let _ = fs::set_permissions(&upper, fs::Permissions::from_mode(meta.mode() & 0o7777));
        let _ = chown(
            &upper,
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
        );
    }
    let expressible = [cfg.image_rootfs.as_path(), &upper, &work].iter().all(|p| {
        !p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b',' | b':' | b'\\'))
    });
    if expressible {
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            cfg.image_rootfs.display(),
            upper.display(),
            work.display()
        );
        if mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .is_ok()
        {
            return Ok("overlay");
        }
    }
    mount(
        Some(cfg.image_rootfs.as_path()),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        sys_msg(
            format!("bind-mount the image rootfs {}", cfg.image_rootfs.display()),
            e,
        )
    })?;
    Ok("bind")
}

/// Step 3, one mount.
fn mount_one(root: &Path, m: &MountSpec, cgroup2: bool) -> Setup {
    let target = resolve_in_root(root, Path::new(&m.destination))
        .map_err(|e| io_msg(format!("resolve mount destination {:?}", m.destination), &e))?;
    let what = || format!("mount {} on {:?}", m.fstype, m.destination);
    let o = parse_options(&m.options);
    let data = o.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let is_bind = m.fstype == "bind" || o.flags.contains(MsFlags::MS_BIND);
    if is_bind {
        let source = Path::new(&m.source);
        if !source.is_absolute() {
            return Err(format!("{}: source {:?} is not absolute", what(), m.source));
        }
        let meta = fs::metadata(source)
            .map_err(|e| io_msg(format!("{}: source {:?}", what(), m.source), &e))?;
        if meta.is_dir() {
            mkdir_all(&target)?;
        } else {
            touch(&target)?;
        }
        mount(
            Some(source),
            &target,
            None::<&str>,
            o.flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(|e| sys_msg(what(), e))?;
        let extra = o.flags & BIND_REMOUNT_FLAGS;
        if !extra.is_empty() {
            bind_remount(&target, extra)?;
        }
    } else {
        let fstype = match m.fstype.as_str() {
            "cgroup" | "cgroup2" if !cgroup2 => {
                // A cgroup v1 machine (tests): no cgroup hierarchy in the container.
                return Ok(());
            }
            "cgroup" | "cgroup2" => "cgroup2",
            other => other,
        };
        mkdir_all(&target)?;
        let flags = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        let source = if m.source.is_empty() {
            fstype
        } else {
            m.source.as_str()
        };
        match mount(Some(source), &target, Some(fstype), flags, data) {
            Ok(()) => {}
            // sysfs cannot be mounted in some sandboxes: take the guest's, read-only.
            Err(Errno::EPERM) if fstype == "sysfs" => {
                mount(
                    Some("/sys"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| sys_msg(what(), e))?;
                bind_remount(&target, flags | MsFlags::MS_RDONLY)?;
            }
            Err(e) => return Err(sys_msg(what(), e)),
        }
    }
    if !o.propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            o.propagation,
            None::<&str>,
        )
        .map_err(|e| sys_msg(format!("set propagation of {:?}", m.destination), e))?;
    }
    Ok(())
}

/// The device nodes every container has (as runc).
fn default_devices() -> Vec<DeviceSpec> {
    [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ]
    .into_iter()
    .map(|(name, minor)| (format!("/dev/{name}"), 1, minor))
    .chain([("/dev/tty".to_string(), 5, 0)])
    .map(|(path, major, minor)| DeviceSpec {
        path,
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

fn create_device(root: &Path, d: &DeviceSpec) -> Setup {
    let target = resolve_in_root(root, Path::new(&d.path))
        .map_err(|e| io_msg(format!("resolve device {:?}", d.path), &e))?;
    if let Some(parent) = target.parent() {
        mkdir_all(parent)?;
    }
    let kind = if d.kind == 'b' {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    let _ = fs::remove_file(&target);
    match mknod(
        &target,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    ) {
        Ok(()) => {}
        // No CAP_MKNOD (a sandboxed test machine): bind the guest's node, as runc does.
        Err(Errno::EPERM) => {
            touch(&target)?;
            mount(
                Some(Path::new(&d.path)),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| sys_msg(format!("bind device {:?}", d.path), e))?;
            return Ok(());
        }
        Err(e) => return Err(sys_msg(format!("create device {:?}", d.path), e)),
    }
    // mknod applies the umask; the mode is the spec's.
    let _ = fs::set_permissions(&target, fs::Permissions::from_mode(d.mode));
    chown(
        &target,
        Some(Uid::from_raw(d.uid)),
        Some(Gid::from_raw(d.gid)),
    )
    .map_err(|e| sys_msg(format!("chown device {:?}", d.path), e))
}

fn create_dev_links(root: &Path) -> Setup {
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        match std::os::unix::fs::symlink(target, root.join(link)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_msg(format!("create /{link}"), &e)),
        }
    }
    Ok(())
}

/// Step 5: hides a path (a directory behind an empty read-only tmpfs, a file behind /dev/null).
fn mask(path: &str) -> Setup {
    let p = Path::new(path);
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_msg(format!("masked path {path:?}"), &e)),
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(|e| sys_msg(format!("mask {path:?}"), e))
}

fn make_readonly(path: &str) -> Setup {
    let p = Path::new(path);
    if !p.exists() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| sys_msg(format!("read-only path {path:?}"), e))?;
    bind_remount(p, MsFlags::MS_RDONLY)
}

/// Builds the container's root and enters it (steps 1–5). Returns how the image is mounted.
pub fn setup(cfg: &InitConfig) -> Setup<&'static str> {
    let propagation_flags = match cfg.rootfs_propagation.as_str() {
        "" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        // A shared root would carry the container's mounts back to the guest (and pivot_root
        // refuses it): the root itself stays a slave, the rest follows the spec below.
        p => propagation(p).unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC),
    };
    let first = if propagation_flags.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        propagation_flags
    };
    mount(None::<&str>, "/", None::<&str>, first, None::<&str>)
        .map_err(|e| sys_msg("make / a slave mount", e))?;

    let root = cfg.bundle.join("rootfs");
    let mode = mount_root(cfg, &root)?;

    let mut dev_tmpfs = false;
    for m in &cfg.mounts {
        mount_one(&root, m, cfg.cgroup2)?;
        if m.destination.trim_end_matches('/') == "/dev" && m.fstype == "tmpfs" {
            dev_tmpfs = true;
        }
    }
    if dev_tmpfs {
        for d in default_devices() {
            create_device(&root, &d)?;
        }
        create_dev_links(&root)?;
    }
    for d in &cfg.devices {
        create_device(&root, d)?;
    }

    // pivot_root(".", "."): the old root ends up on top of the new one, then is detached.
    std::env::set_current_dir(&root).map_err(|e| io_msg("enter the rootfs", &e))?;
    pivot_root(".", ".").map_err(|e| match e {
        // The root mount has no parent: the agent's root is the initramfs itself
        // (`init::mount_api_filesystems` stacks a bind mount on it at boot).
        Errno::EINVAL => sys_msg("pivot_root (is / the bare initramfs?)", e),
        _ => sys_msg("pivot_root", e),
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| sys_msg("detach the old root", e))?;
    std::env::set_current_dir("/").map_err(|e| io_msg("chdir to /", &e))?;
    if propagation_flags.contains(MsFlags::MS_SHARED) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            propagation_flags,
            None::<&str>,
        )
        .map_err(|e| sys_msg("set the root's propagation", e))?;
    }

    for path in &cfg.masked_paths {
        mask(path)?;
    }
    for path in &cfg.readonly_paths {
        make_readonly(path)?;
    }
    for (key, value) in &cfg.sysctl {
        let file = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&file, value).map_err(|e| io_msg(format!("sysctl {key}"), &e))?;
    }
    if cfg.readonly_root {
        bind_remount(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    if !cfg.hostname.is_empty() {
        sethostname(OsStr::new(&cfg.hostname)).map_err(|e| sys_msg("set the hostname", e))?;
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("usr/escape")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str| resolve_in_root(root, Path::new(p)).unwrap();
        assert_eq!(r("/lib/x"), root.join("usr/lib/x"));
        assert_eq!(r("/usr/escape/passwd"), root.join("etc/passwd"));
        assert_eq!(r("/../../proc"), root.join("proc"));
        assert_eq!(r("/new/dir"), root.join("new/dir"));
        assert_eq!(
            resolve_in_root(root, Path::new("/loop"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn mount_options_split_into_flags_propagation_and_data() {
        let o = parse_options(
            &[
                "nosuid",
                "rbind",
                "ro",
                "rw",
                "rprivate",
                "mode=755",
                "size=65536k",
            ]
            .map(String::from),
        );
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
    }
}
