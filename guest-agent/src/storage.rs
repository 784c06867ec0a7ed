//! Storages a `CreateContainer` names (Kata's `Storage` message): block devices the host attached
//! to the VM, mounted read-only in the guest before the container is created.
//!
//! What is accepted (everything else is refused, with the reason):
//! - `driver` `blk` or `mmioblk` (a virtio-blk disk; PCI on q35, MMIO on microvm);
//! - `source` a whole virtio disk, `/dev/vd<letters>`;
//! - `fstype` `erofs` or `ext4`;
//! - `mount_point` a canonical path below [`STORAGE_ROOT`];
//! - `options` `ro` only: the filesystem is always mounted read-only, `nodev`, `nosuid`.
//!
//! The containerd shim uses it to hand the guest an image the host already unpacked (the
//! bundle's rootfs, made into a disk image): `OCI.Root.Path` then names the mount point.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use podvm_protocols::agent::Storage;

/// Where storages are mounted.
pub const STORAGE_ROOT: &str = "/run/podvm/storage/";

/// A storage that cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage {mount_point:?}: {why}")]
    Refused { mount_point: String, why: String },
    #[error("storage {mount_point:?}: mount {device} ({fstype}): {errno}")]
    Mount {
        mount_point: String,
        device: String,
        fstype: String,
        errno: nix::errno::Errno,
    },
    #[error("storage {mount_point:?}: {e}")]
    Io {
        mount_point: String,
        e: std::io::Error,
    },
}

/// Checks a storage against the rules of this module.
pub fn validate(storage: &Storage) -> Result<(), StorageError> {
    let refuse = |why: String| StorageError::Refused {
        mount_point: storage.mount_point.clone(),
        why,
    };
    if !matches!(storage.driver.as_str(), "blk" | "mmioblk") {
        return Err(refuse(format!(
            "driver {:?} is not supported (blk, mmioblk)",
            storage.driver
        )));
    }
    let disk = storage.source.strip_prefix("/dev/vd").unwrap_or("");
    if disk.is_empty() || !disk.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(refuse(format!(
            "source {:?} is not a virtio disk (/dev/vd<letters>)",
            storage.source
        )));
    }
    if !matches!(storage.fstype.as_str(), "erofs" | "ext4") {
        return Err(refuse(format!(
            "fstype {:?} is not supported (erofs, ext4)",
            storage.fstype
        )));
    }
    if let Some(option) = storage.options.iter().find(|o| o.as_str() != "ro") {
        return Err(refuse(format!(
            "option {option:?} is not supported (storages are read-only)"
        )));
    }
    let rest = storage.mount_point.strip_prefix(STORAGE_ROOT).unwrap_or("");
    if rest.is_empty()
        || rest
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(refuse(format!(
            "mount_point is not a canonical path below {STORAGE_ROOT}"
        )));
    }
    Ok(())
}

/// Validates every storage, then mounts each one that is not mounted yet.
pub fn mount_all(storages: &[Storage]) -> Result<(), StorageError> {
    for storage in storages {
        validate(storage)?;
    }
    for storage in storages {
        let target = Path::new(&storage.mount_point);
        if is_mount_point(target) {
            continue;
        }
        std::fs::create_dir_all(target).map_err(|e| StorageError::Io {
            mount_point: storage.mount_point.clone(),
            e,
        })?;
        mount(
            Some(storage.source.as_str()),
            target,
            Some(storage.fstype.as_str()),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|errno| StorageError::Mount {
            mount_point: storage.mount_point.clone(),
            device: storage.source.clone(),
            fstype: storage.fstype.clone(),
            errno,
        })?;
        tracing::info!(source = %storage.source, target = %storage.mount_point, fstype = %storage.fstype, "storage mounted");
    }
    Ok(())
}

/// `path` is the root of a mount (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> Storage {
        Storage {
            driver: "mmioblk".into(),
            source: "/dev/vda".into(),
            fstype: "ext4".into(),
            options: vec!["ro".into()],
            mount_point: "/run/podvm/storage/t1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_read_only_virtio_disk_below_the_storage_root() {
        validate(&storage()).unwrap();
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        type Change = fn(&mut Storage);
        let cases: [(&str, Change); 7] = [
            ("driver", |s| s.driver = "virtio-fs".into()),
            ("source", |s| s.source = "/dev/sda".into()),
            ("source", |s| s.source = "/dev/vda1".into()),
            ("fstype", |s| s.fstype = "xfs".into()),
            ("option", |s| s.options = vec!["rw".into()]),
            ("mount_point", |s| {
                s.mount_point = "/run/podvm/storage/../etc".into()
            }),
            ("mount_point", |s| s.mount_point = "/mnt/x".into()),
        ];
        for (what, change) in cases {
            let mut s = storage();
            change(&mut s);
            let e = validate(&s).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }
}
