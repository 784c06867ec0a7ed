//! `CopyFile`: the host copies files into the guest below the shared directory
//! (`/run/podvm/shared/`): a container's root filesystem when it joins a running pod, and
//! (later) ConfigMap/Secret files. Kata's request shape: one call per directory or symlink, one
//! or more calls per regular file (`offset` + `data`, `file_size` the whole size).
//!
//! - The path must be absolute and canonical (no `.`, `..`, `//`) and below the shared
//!   directory (the policy says the same; checked here again).
//! - No existing component of the path may be a symlink: a symlink the host copied earlier can
//!   not redirect a later write outside the shared directory.
//! - A regular file is written to `<path>.podvm-part` and renamed over `<path>` when its last
//!   byte has arrived: a reader never sees half a file.
//! - `file_mode` carries the type (`S_IFDIR`, `S_IFLNK`, `S_IFREG`) and the permission bits;
//!   `dir_mode` is used for missing parent directories; `uid`/`gid` own what is created.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use podvm_protocols::agent::CopyFileRequest;

/// Where `CopyFile` may write.
pub const SHARED_DIR: &str = "/run/podvm/shared";
/// The suffix of a regular file still being copied.
const PART_SUFFIX: &str = ".podvm-part";

/// A refused or failed `CopyFile`.
#[derive(Debug, thiserror::Error)]
pub enum CopyFileError {
    #[error("path {0:?} is not an absolute canonical path below {1}")]
    OutsideShared(String, String),
    #[error("path {0:?}: {1} is a symlink; refusing to write through it")]
    ThroughSymlink(String, String),
    #[error("path {path:?}: offset {offset} + {len} bytes exceed file_size {size}")]
    BadRange {
        path: String,
        offset: i64,
        len: usize,
        size: i64,
    },
    #[error("path {0:?}: file_mode {1:o} is not a directory, symlink or regular file")]
    BadType(String, u32),
    #[error("path {0:?}: {1}")]
    Io(String, std::io::Error),
}

impl CopyFileError {
    /// The status code the agent answers with.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            CopyFileError::Io(..) => ttrpc::Code::INTERNAL,
            _ => ttrpc::Code::INVALID_ARGUMENT,
        }
    }
}

/// Copies one request's content below `shared` (the real agent: [`SHARED_DIR`]; `req.path` names
/// a path below [`SHARED_DIR`], which is mapped onto `shared`).
pub fn copy_file(shared: &Path, req: &CopyFileRequest) -> Result<(), CopyFileError> {
    let target = resolve(shared, &req.path)?;
    let io = |e: std::io::Error| CopyFileError::Io(req.path.clone(), e);
    let parent = target.parent().expect("below the shared directory");
    create_parents(shared, parent, req.dir_mode, req)?;
    let kind = req.file_mode & libc::S_IFMT;
    let perm = req.file_mode & 0o7777;
    match kind {
        libc::S_IFDIR => {
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(CopyFileError::ThroughSymlink(
                        req.path.clone(),
                        target.display().to_string(),
                    ));
                }
                Err(_) => std::fs::DirBuilder::new()
                    .mode(perm)
                    .create(&target)
                    .map_err(io)?,
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(perm)).map_err(io)?;
            chown(&target, req).map_err(io)?;
        }
        libc::S_IFLNK => {
            let link = String::from_utf8_lossy(&req.data).into_owned();
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(&link, &target).map_err(io)?;
            chown(&target, req).map_err(io)?;
        }
        libc::S_IFREG | 0 => {
            let end = req.offset.checked_add(req.data.len() as i64);
            if req.offset < 0 || end.is_none_or(|end| end > req.file_size) {
                return Err(CopyFileError::BadRange {
                    path: req.path.clone(),
                    offset: req.offset,
                    len: req.data.len(),
                    size: req.file_size,
                });
            }
            let mut part = target.clone().into_os_string();
            part.push(PART_SUFFIX);
            let part = PathBuf::from(part);
            if std::fs::symlink_metadata(&part).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(CopyFileError::ThroughSymlink(
                    req.path.clone(),
                    part.display().to_string(),
                ));
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(req.offset == 0)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&part)
                .map_err(io)?;
            use std::os::unix::fs::FileExt;
            file.write_all_at(&req.data, req.offset as u64)
                .map_err(io)?;
            if end == Some(req.file_size) {
                file.flush().map_err(io)?;
                drop(file);
                std::fs::set_permissions(&part, std::fs::Permissions::from_mode(perm))
                    .map_err(io)?;
                chown(&part, req).map_err(io)?;
                std::fs::rename(&part, &target).map_err(io)?;
            }
        }
        _ => return Err(CopyFileError::BadType(req.path.clone(), req.file_mode)),
    }
    Ok(())
}

/// `req.path` (below [`SHARED_DIR`]) → the same path below `shared`, refusing anything else.
fn resolve(shared: &Path, path: &str) -> Result<PathBuf, CopyFileError> {
    let outside = || CopyFileError::OutsideShared(path.to_string(), format!("{SHARED_DIR}/"));
    let relative = path
        .strip_prefix(SHARED_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .filter(|p| !p.is_empty() && !p.contains("//") && !p.ends_with('/'))
        .ok_or_else(outside)?;
    // (Path::components would quietly drop a "." in the middle.)
    if relative.split('/').any(|part| part == "." || part == "..") {
        return Err(outside());
    }
    let mut out = shared.to_path_buf();
    for c in Path::new(relative).components() {
        match c {
            Component::Normal(name) => out.push(name),
            _ => return Err(outside()),
        }
    }
    Ok(out)
}

/// Creates the missing directories from `shared` down to `dir`; refuses a symlink on the way.
fn create_parents(
    shared: &Path,
    dir: &Path,
    mode: u32,
    req: &CopyFileRequest,
) -> Result<(), CopyFileError> {
    let io = |e: std::io::Error| CopyFileError::Io(req.path.clone(), e);
    std::fs::create_dir_all(shared).map_err(io)?;
    let relative = dir
        .strip_prefix(shared)
        .expect("below the shared directory");
    let mut current = shared.to_path_buf();
    for c in relative.components() {
        current.push(c);
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CopyFileError::ThroughSymlink(
                    req.path.clone(),
                    current.display().to_string(),
                ));
            }
            Err(_) => {
                let mode = if mode == 0 { 0o755 } else { mode & 0o7777 };
                std::fs::DirBuilder::new()
                    .mode(mode)
                    .create(&current)
                    .map_err(io)?;
            }
        }
    }
    Ok(())
}

fn chown(path: &Path, req: &CopyFileRequest) -> std::io::Result<()> {
    let uid = u32::try_from(req.uid).ok().map(nix::unistd::Uid::from_raw);
    let gid = u32::try_from(req.gid).ok().map(nix::unistd::Gid::from_raw);
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        uid,
        gid,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, mode: u32, data: &[u8], offset: i64, size: i64) -> CopyFileRequest {
        CopyFileRequest {
            path: format!("{SHARED_DIR}/{path}"),
            file_mode: mode,
            dir_mode: 0o755,
            data: data.to_vec(),
            offset,
            file_size: size,
            uid: 0,
            gid: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_tree_arrives_file_by_file_and_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path();
        copy_file(
            shared,
            &req("c1/rootfs/bin", libc::S_IFDIR | 0o711, b"", 0, 0),
        )
        .unwrap();
        copy_file(
            shared,
            &req(
                "c1/rootfs/bin/tool",
                libc::S_IFREG | 0o755,
                b"hello ",
                0,
                11,
            ),
        )
        .unwrap();
        // Half a file is not visible under its name.
        assert!(!shared.join("c1/rootfs/bin/tool").exists());
        copy_file(
            shared,
            &req("c1/rootfs/bin/tool", libc::S_IFREG | 0o755, b"world", 6, 11),
        )
        .unwrap();
        let tool = shared.join("c1/rootfs/bin/tool");
        assert_eq!(std::fs::read(&tool).unwrap(), b"hello world");
        assert_eq!(
            std::fs::metadata(&tool).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert!(!shared.join("c1/rootfs/bin/tool.podvm-part").exists());
        copy_file(
            shared,
            &req("c1/rootfs/bin/sh", libc::S_IFLNK | 0o777, b"tool", 0, 4),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(shared.join("c1/rootfs/bin/sh")).unwrap(),
            Path::new("tool")
        );
        // An empty file, parents created on the way.
        copy_file(
            shared,
            &req("c1/rootfs/etc/empty", libc::S_IFREG | 0o644, b"", 0, 0),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(shared.join("c1/rootfs/etc/empty")).unwrap(),
            b""
        );
        assert_eq!(
            std::fs::metadata(shared.join("c1/rootfs/bin"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o711
        );
    }

    #[test]
    fn paths_outside_or_through_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let shared = dir.path();
        for bad in [
            "/etc/passwd".to_string(),
            format!("{SHARED_DIR}/../etc/passwd"),
            format!("{SHARED_DIR}/a//b"),
            format!("{SHARED_DIR}/a/./b"),
            format!("{SHARED_DIR}/"),
            format!("{SHARED_DIR}-x/a"),
        ] {
            let mut r = req("x", libc::S_IFREG | 0o644, b"x", 0, 1);
            r.path = bad.clone();
            let e = copy_file(shared, &r).unwrap_err();
            assert!(matches!(e, CopyFileError::OutsideShared(..)), "{bad}: {e}");
        }
        // A symlink copied earlier cannot redirect a later write.
        std::os::unix::fs::symlink(outside.path(), shared.join("escape")).unwrap();
        let e = copy_file(shared, &req("escape/f", libc::S_IFREG | 0o644, b"x", 0, 1)).unwrap_err();
        assert!(matches!(e, CopyFileError::ThroughSymlink(..)), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let e = copy_file(shared, &req("f", libc::S_IFREG | 0o644, b"xy", 0, 1)).unwrap_err();
        assert!(matches!(e, CopyFileError::BadRange { .. }), "{e}");
        let e = copy_file(shared, &req("dev", libc::S_IFCHR | 0o644, b"", 0, 0)).unwrap_err();
        assert!(matches!(e, CopyFileError::BadType(..)), "{e}");
    }
}
