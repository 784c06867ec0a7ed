//! The container's root filesystem for the guest (non-confidential mode): containerd has unpacked
//! the image on the host and hands the shim the rootfs mounts (usually one overlay); the shim
//! mounts them on `<bundle>/rootfs`, copies the tree into a read-only ext4 disk image with
//! `mkfs.ext4 -d` (e2fsprogs, on every Debian), unmounts, and attaches the image to the VM as a
//! virtio-blk disk. The agent mounts it (a `Storage` of driver `blk`/`mmioblk`) and runs the
//! container from it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use containerd_shim::protos::api::Mount;
use podvm_host_runtime::agent_client::AgentClient;
use podvm_protocols::agent::CopyFileRequest;

/// The disk image's name in the bundle.
pub const IMAGE_FILE: &str = "podvm-rootfs.img";
/// ext4 overhead on top of the files' sizes: metadata, inode tables, a margin for small files.
const MIN_EXTRA_BYTES: u64 = 16 << 20;

/// Mounts containerd's rootfs mounts on `<bundle>/rootfs` (nothing to do without mounts: the
/// bundle's rootfs is then already populated). Returns whether it mounted anything.
pub async fn mount(bundle: &Path, mounts: &[Mount]) -> anyhow::Result<bool> {
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    for m in mounts {
        containerd_shim::asynchronous::util::mount_rootfs(m, &target)
            .await
            .with_context(|| format!("mount {} ({}) on {}", m.source, m.type_, target.display()))?;
    }
    Ok(!mounts.is_empty())
}

/// Detaches whatever is mounted on `<bundle>/rootfs`.
pub fn unmount(bundle: &Path) {
    let target = bundle.join("rootfs");
    while nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// Total size of the regular files and symlinks below `dir` (not following symlinks).
fn tree_bytes(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            entries += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                // Rounded up to 4 KiB blocks.
                bytes += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok((bytes, entries))
}

/// Builds a read-only ext4 image of `tree` at `image`.
pub fn build_image(tree: &Path, image: &Path) -> anyhow::Result<PathBuf> {
    let (bytes, entries) =
        tree_bytes(tree).with_context(|| format!("cannot read the rootfs {}", tree.display()))?;
    // Files, one 256-byte inode and a directory entry per entry, then 25 % and a fixed margin.
    let size = ((bytes + entries * 512) * 5 / 4 + MIN_EXTRA_BYTES).div_ceil(1 << 20) << 20;
    let _ = std::fs::remove_file(image);
    let file = std::fs::File::create(image)
        .with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(size)?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-L",
            "rootfs",
        ])
        .arg("-N")
        .arg((entries + 1024).to_string())
        .arg("-d")
        .arg(tree)
        .arg(image)
        .output()
        .context("cannot run mkfs.ext4 (install e2fsprogs)")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(image);
        bail!(
            "mkfs.ext4 -d {} failed ({}): {}",
            tree.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(image.to_path_buf())
}

/// Where a container that joins a running pod gets its copied root filesystem in the guest.
pub fn guest_copied_rootfs(container_id: &str) -> String {
    format!("/run/podvm/shared/{container_id}/rootfs")
}

/// How much one `CopyFile` carries.
const COPY_CHUNK: usize = 1 << 20;

/// What [`copy_into_guest`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes, FIFOs and sockets: not copied (the guest's /dev is its own).
    pub skipped: u64,
}

/// The entries of `tree`, parents before children, not following symlinks.
fn walk(tree: &Path) -> std::io::Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut pending = vec![tree.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            }
            out.push((entry.path(), meta));
        }
    }
    // Parents first: a directory's path is a prefix of its children's.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Copies `tree` into the guest at `dest` (below the agent's shared directory) with `CopyFile`:
/// directories, symlinks and regular files with their modes and owners. A container that joins
/// a running pod VM gets its root filesystem this way (the VM's disks are fixed at boot).
pub async fn copy_into_guest(
    agent: &AgentClient,
    tree: &Path,
    dest: &str,
) -> anyhow::Result<Copied> {
    let entries = {
        let tree = tree.to_path_buf();
        tokio::task::spawn_blocking(move || walk(&tree)).await?
    }
    .with_context(|| format!("cannot read the rootfs {}", tree.display()))?;
    let mut copied = Copied::default();
    let base = |meta: &std::fs::Metadata, path: String| CopyFileRequest {
        path,
        file_mode: meta.mode(),
        dir_mode: 0o755,
        uid: meta.uid() as i32,
        gid: meta.gid() as i32,
        ..Default::default()
    };
    agent
        .copy_file(&CopyFileRequest {
            file_mode: libc::S_IFDIR | 0o755,
            ..base(&std::fs::metadata(tree)?, dest.to_string())
        })
        .await?;
    for (path, meta) in entries {
        let relative = path.strip_prefix(tree).expect("below the tree");
        let Some(relative) = relative.to_str() else {
            log::warn!("skipping {}: not UTF-8", path.display());
            copied.skipped += 1;
            continue;
        };
        let guest = format!("{dest}/{relative}");
        let kind = meta.file_type();
        if kind.is_dir() {
            agent.copy_file(&base(&meta, guest)).await?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path)?;
            agent
                .copy_file(&CopyFileRequest {
                    data: target.as_os_str().as_encoded_bytes().to_vec(),
                    ..base(&meta, guest)
                })
                .await?;
        } else if kind.is_file() {
            let data = tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            let size = data.len() as i64;
            let mut offset = 0usize;
            loop {
                let end = (offset + COPY_CHUNK).min(data.len());
                agent
                    .copy_file(&CopyFileRequest {
                        file_size: size,
                        offset: offset as i64,
                        data: data[offset..end].to_vec(),
                        ..base(&meta, guest.clone())
                    })
                    .await?;
                offset = end;
                if offset >= data.len() {
                    break;
                }
            }
            copied.bytes += size as u64;
        } else {
            copied.skipped += 1;
            continue;
        }
        copied.entries += 1;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_becomes_an_ext4_image_with_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("rootfs");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/hello"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("hello", tree.join("bin/sh")).unwrap();
        let image = build_image(&tree, &dir.path().join(IMAGE_FILE)).unwrap();
        let len = std::fs::metadata(&image).unwrap().len();
        assert!(
            len >= MIN_EXTRA_BYTES && len.is_multiple_of(1 << 20),
            "{len}"
        );
        // The ext4 superblock magic (0xEF53) at byte 1024 + 0x38.
        let data = std::fs::read(&image).unwrap();
        assert_eq!(&data[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        // debugfs lists the files when it exists (e2fsprogs ships it with mkfs.ext4).
        if let Ok(out) = Command::new("debugfs")
            .args(["-R", "ls -l /bin"])
            .arg(&image)
            .output()
        {
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(
                listing.contains("hello") && listing.contains("sh"),
                "{listing}"
            );
        }
    }

    #[test]
    fn a_walk_lists_parents_before_children_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        std::fs::create_dir_all(tree.join("b/c")).unwrap();
        std::fs::write(tree.join("b/c/f"), b"x").unwrap();
        std::fs::write(tree.join("a"), b"y").unwrap();
        std::os::unix::fs::symlink("/", tree.join("b/root")).unwrap();
        let names: Vec<_> = walk(tree)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.strip_prefix(tree).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a", "b", "b/c", "b/c/f", "b/root"]);
    }

    #[test]
    fn a_missing_tree_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = build_image(&dir.path().join("nope"), &dir.path().join("x.img")).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }
}
