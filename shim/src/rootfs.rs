//! The container's root filesystem for the guest (non-confidential mode): containerd has unpacked
//! the image on the host and hands the shim the rootfs mounts (usually one overlay); the shim
//! mounts them on `<bundle>/rootfs`, copies the tree into a read-only ext4 disk image with
//! `mkfs.ext4 -d` (e2fsprogs, on every Debian), unmounts, and attaches the image to the VM as a
//! virtio-blk disk. The agent mounts it (a `Storage` of driver `blk`/`mmioblk`) and runs the
//! container from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use containerd_shim::protos::api::Mount;

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
    fn a_missing_tree_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = build_image(&dir.path().join("nope"), &dir.path().join("x.img")).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }
}
