//! The guest image: kernel, initramfs (the agent as `/init`) and the baseline marker initramfs,
//! built reproducibly into one directory with a manifest of their hashes.

pub mod cpio;
pub mod kernel;
pub mod validate;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The guest kernel configuration kept in this repository, built into the binary so that an
/// installed `podvm` builds the same kernel as the checkout it came from.
pub const KERNEL_CONFIG: &str = include_str!("../../../guest/kernel/config-6.12");
/// The Debian package whose source the configuration is for.
pub const KERNEL_SOURCE_PACKAGE: &str = "linux-source-6.12";

/// File names inside a guest image directory.
pub const VMLINUX: &str = "vmlinux";
pub const BZIMAGE: &str = "bzImage";
pub const INITRAMFS: &str = "initramfs.cpio";
pub const MARKER_INITRAMFS: &str = "marker-initramfs.cpio";
/// The synthetic firmware image that gives emulated SNP launches a real SNP measurement
/// structure (never executed; see [`podvm_measured_boot::emulated_firmware`]).
pub const FIRMWARE_SNP_EMULATED: &str = podvm_measured_boot::emulated_firmware::FILE_NAME;
pub const MANIFEST: &str = "manifest.json";

/// Why a guest image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    MissingTool(String),
    #[error("{what} failed: {detail}{}", log.as_ref().map(|l| format!(" (full log: {})", l.display())).unwrap_or_default())]
    BuildFailed {
        what: String,
        detail: String,
        log: Option<PathBuf>,
    },
    #[error("kernel config {path} is unusable: {problems}; fix it and rebuild")]
    BadKernelConfig { path: PathBuf, problems: String },
    #[error(
        "{what} {path} is not a statically linked x86-64 executable ({detail}); build it with scripts/build-agent"
    )]
    BadAgentBinary {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
}

/// A file of the image, with its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

impl FileDigest {
    fn of(dir: &Path, file: &str) -> Result<Self, ImageError> {
        let bytes = fs::read(dir.join(file)).map_err(|source| ImageError::Io {
            what: format!("read {file}"),
            source,
        })?;
        Ok(FileDigest {
            file: file.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        })
    }
}

/// `manifest.json` of a guest image directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestManifest {
    pub kernel_source_package: String,
    pub kernel_source_version: String,
    pub kernel_config_sha256: String,
    pub kernel_build_seconds: f64,
    pub vmlinux: FileDigest,
    pub bzimage: FileDigest,
    pub initramfs: FileDigest,
    pub marker_initramfs: FileDigest,
    /// Absent in manifests written before the emulated-SNP firmware existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_snp_emulated: Option<FileDigest>,
    pub agent_sha256: String,
}

/// A guest image directory (default `/var/lib/podvm/guest`).
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
}

impl GuestImage {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        GuestImage { dir: dir.into() }
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join(BZIMAGE)
    }
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join(INITRAMFS)
    }
    pub fn marker_initramfs(&self) -> PathBuf {
        self.dir.join(MARKER_INITRAMFS)
    }
    pub fn firmware_snp_emulated(&self) -> PathBuf {
        self.dir.join(FIRMWARE_SNP_EMULATED)
    }
    pub fn manifest(&self) -> Result<GuestManifest, ImageError> {
        let path = self.dir.join(MANIFEST);
        let bytes = fs::read(&path).map_err(|source| ImageError::Io {
            what: format!("read {}", path.display()),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
            what: format!("parse {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

/// What `podvm image build-guest` needs.
#[derive(Debug, Clone)]
pub struct BuildGuest {
    /// The statically linked agent (`podvm-agent`).
    pub agent: PathBuf,
    /// The statically linked marker init (`podvm-marker-init`).
    pub marker_init: PathBuf,
    /// A kernel configuration to use instead of the built-in one.
    pub kernel_config: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    pub jobs: usize,
}

/// The entries of an initramfs whose `/init` is `init`: nothing else than what PID 1 needs
/// before it mounts devtmpfs (the console node and the mount points).
pub fn initramfs_entries(init: Vec<u8>) -> Vec<cpio::Entry> {
    use cpio::Entry;
    vec![
        Entry::file("init", 0o755, init),
        Entry::dir("dev", 0o755),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::dir("proc", 0o555),
        Entry::dir("sys", 0o555),
        Entry::dir("run", 0o755),
        Entry::dir("tmp", 0o1777),
    ]
}

/// Builds an initramfs image (bytes) around `init`.
pub fn initramfs(init: Vec<u8>) -> Vec<u8> {
    let mut bytes = Vec::new();
    cpio::write_archive(&initramfs_entries(init), &mut bytes)
        .expect("writing to memory cannot fail");
    bytes
}

const PT_INTERP: u32 = 3;

/// Reads `path` and checks it is a static x86-64 ELF executable (no program interpreter).
fn read_static_executable(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let bad = |detail: &str| ImageError::BadAgentBinary {
        what,
        path: path.into(),
        detail: detail.into(),
    };
    let bytes = fs::read(path).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    if !bytes.starts_with(b"\x7fELF")
        || bytes.get(4) != Some(&2)
        || bytes.get(18..20) != Some(&[0x3e, 0])
    {
        return Err(bad("not an x86-64 ELF file"));
    }
    let headers =
        validate::program_headers(&bytes).ok_or_else(|| bad("truncated program headers"))?;
    if headers.iter().any(|ph| ph.kind == PT_INTERP) {
        return Err(bad("it is dynamically linked"));
    }
    Ok(bytes)
}

/// Writes `bytes` to `dir/name` atomically (temporary file, then rename).
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, dir.join(name)))
        .map_err(|source| ImageError::Io {
            what: format!("write {}/{name}", dir.display()),
            source,
        })
}

impl BuildGuest {
    /// Builds (or takes from the cache) the kernel, writes both initramfs images and the
    /// manifest into `out_dir`.
    pub fn run(&self) -> Result<GuestManifest, ImageError> {
        let agent = read_static_executable("agent", &self.agent)?;
        let marker = read_static_executable("marker init", &self.marker_init)?;
        let config = match &self.kernel_config {
            Some(path) => path.clone(),
            None => {
                // Stage the built-in config in the cache, where the kernel build reads it.
                let path = self.cache_dir.join("config").join(format!(
                    "config-{}",
                    &hex::encode(Sha256::digest(KERNEL_CONFIG))[..16]
                ));
                fs::create_dir_all(path.parent().unwrap()).map_err(|source| ImageError::Io {
                    what: format!("create {}", self.cache_dir.display()),
                    source,
                })?;
                fs::write(&path, KERNEL_CONFIG).map_err(|source| ImageError::Io {
                    what: format!("write {}", path.display()),
                    source,
                })?;
                path
            }
        };
        let kernel = kernel::KernelBuild {
            source_package: KERNEL_SOURCE_PACKAGE.to_string(),
            config,
            cache_dir: self.cache_dir.clone(),
            jobs: self.jobs,
        }
        .build()?;

        let out = &self.out_dir;
        fs::create_dir_all(out).map_err(|source| ImageError::Io {
            what: format!("create {}", out.display()),
            source,
        })?;
        for (from, name) in [(kernel.vmlinux(), VMLINUX), (kernel.bzimage(), BZIMAGE)] {
            let bytes = fs::read(&from).map_err(|source| ImageError::Io {
                what: format!("read {}", from.display()),
                source,
            })?;
            write_atomically(out, name, &bytes)?;
        }
        let agent_sha256 = hex::encode(Sha256::digest(&agent));
        write_atomically(out, INITRAMFS, &initramfs(agent))?;
        write_atomically(out, MARKER_INITRAMFS, &initramfs(marker))?;
        write_atomically(
            out,
            FIRMWARE_SNP_EMULATED,
            &podvm_measured_boot::emulated_firmware::emulated_firmware_bytes(),
        )?;
        let manifest = GuestManifest {
            kernel_source_package: kernel.source_package.clone(),
            kernel_source_version: kernel.source_version.clone(),
            kernel_config_sha256: kernel.config_sha256.clone(),
            kernel_build_seconds: kernel.build_seconds,
            vmlinux: FileDigest::of(out, VMLINUX)?,
            bzimage: FileDigest::of(out, BZIMAGE)?,
            initramfs: FileDigest::of(out, INITRAMFS)?,
            marker_initramfs: FileDigest::of(out, MARKER_INITRAMFS)?,
            firmware_snp_emulated: Some(FileDigest::of(out, FIRMWARE_SNP_EMULATED)?),
            agent_sha256,
        };
        write_atomically(
            out,
            MANIFEST,
            &serde_json::to_vec_pretty(&manifest).expect("serialise the manifest"),
        )?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_is_byte_reproducible_and_minimal() {
        let a = initramfs(b"agent".to_vec());
        let b = initramfs(b"agent".to_vec());
        assert_eq!(a, b);
        let entries = cpio::read_archive(&a).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["dev", "dev/console", "init", "proc", "run", "sys", "tmp"]
        );
        assert_ne!(initramfs(b"other".to_vec()), a);
    }

    #[test]
    fn manifests_without_the_emulated_firmware_still_parse() {
        let file = |name: &str| FileDigest {
            file: name.into(),
            size: 1,
            sha256: "00".repeat(32),
        };
        let mut m = GuestManifest {
            kernel_source_package: KERNEL_SOURCE_PACKAGE.into(),
            kernel_source_version: "6.12".into(),
            kernel_config_sha256: "11".repeat(32),
            kernel_build_seconds: 1.0,
            vmlinux: file(VMLINUX),
            bzimage: file(BZIMAGE),
            initramfs: file(INITRAMFS),
            marker_initramfs: file(MARKER_INITRAMFS),
            firmware_snp_emulated: None,
            agent_sha256: "22".repeat(32),
        };
        let old = serde_json::to_string(&m).unwrap();
        assert!(!old.contains("firmware_snp_emulated"));
        assert_eq!(serde_json::from_str::<GuestManifest>(&old).unwrap(), m);
        m.firmware_snp_emulated = Some(file(FIRMWARE_SNP_EMULATED));
        let new = serde_json::to_string(&m).unwrap();
        assert!(new.contains("firmware-snp-emulated.fd"));
        assert_eq!(serde_json::from_str::<GuestManifest>(&new).unwrap(), m);
    }

    #[test]
    fn a_dynamic_or_foreign_binary_is_refused_as_init() {
        let dir = tempfile::tempdir().unwrap();
        // This test binary is dynamically linked.
        let me = std::env::current_exe().unwrap();
        let err = read_static_executable("agent", &me)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dynamically linked") && err.contains("scripts/build-agent"),
            "{err}"
        );
        let script = dir.path().join("script");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(
            read_static_executable("agent", &script)
                .unwrap_err()
                .to_string()
                .contains("not an x86-64 ELF")
        );
        assert!(
            read_static_executable("agent", &dir.path().join("absent"))
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }
}
