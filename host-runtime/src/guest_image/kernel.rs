//! The guest kernel: built from Debian's kernel source package with the configuration kept in
//! this repository (`guest/kernel/config-*`), everything built in (no modules).
//!
//! Builds are cached outside the checkout, keyed by the source package version and the SHA-256 of
//! the configuration: `<cache>/kernel/linux-<version>-<config hash>/{vmlinux,bzImage,config,build.json}`.
//! A key that is present is never rebuilt; the result directory appears atomically (rename), so
//! an interrupted build leaves nothing that looks finished.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ImageError;

/// Options the guest needs, checked in the configuration after `olddefconfig`.
pub const REQUIRED_OPTIONS: &[&str] = &[
    "PVH",
    "VIRTIO_MMIO",
    "VIRTIO_PCI",
    "VSOCKETS",
    "VIRTIO_VSOCKETS",
    "VIRTIO_BLK",
    "VIRTIO_NET",
    "OVERLAY_FS",
    "TMPFS_XATTR", // overlay upper dirs on tmpfs need xattrs (opaque dirs, whiteouts)
    "EROFS_FS",
    "BLK_DEV_DM",
    "DM_VERITY",
    "NAMESPACES",
    "CGROUPS",
    "SECCOMP",
    "SECCOMP_FILTER",
    "DEVTMPFS",
    "BLK_DEV_INITRD",
    "CONFIGFS_FS",
    "SEV_GUEST",
    "INTEL_TDX_GUEST",
    "TDX_GUEST_DRIVER",
    "TSM_REPORTS",
    "SERIAL_8250_CONSOLE",
    "ACPI",
];

/// How to build the guest kernel.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// The Debian source package, e.g. `linux-source-6.12`; its tarball is
    /// `/usr/src/<package>.tar.xz`.
    pub source_package: String,
    /// The kernel configuration (a full `.config`).
    pub config: PathBuf,
    /// Root of the build cache.
    pub cache_dir: PathBuf,
    /// Parallel make jobs.
    pub jobs: usize,
}

/// A built kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelArtifacts {
    pub key: String,
    pub source_package: String,
    pub source_version: String,
    pub config_sha256: String,
    pub build_seconds: f64,
    #[serde(skip)]
    pub dir: PathBuf,
    /// Whether this call found the build in the cache.
    #[serde(skip)]
    pub cached: bool,
}

impl KernelArtifacts {
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ImageError {
    move |source| ImageError::Io { what, source }
}

impl KernelBuild {
    /// The installed version of the source package.
    fn source_version(&self) -> Result<String, ImageError> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", &self.source_package])
            .output()
            .map_err(io_err("run dpkg-query".into()))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || version.is_empty() {
            return Err(ImageError::MissingTool(format!(
                "the Debian package {} is not installed; run scripts/setup (or apt-get install {})",
                self.source_package, self.source_package
            )));
        }
        Ok(version)
    }

    fn tarball(&self) -> PathBuf {
        PathBuf::from(format!("/usr/src/{}.tar.xz", self.source_package))
    }

    /// Builds the kernel, or returns the cached build for the same source version and config.
    pub fn build(&self) -> Result<KernelArtifacts, ImageError> {
        let config = fs::read(&self.config).map_err(io_err(format!(
            "read the kernel config {}",
            self.config.display()
        )))?;
        let config_sha256 = hex::encode(Sha256::digest(&config));
        let version = self.source_version()?;
        let key = format!("linux-{version}-{}", &config_sha256[..16]);
        let out_dir = self.cache_dir.join("kernel").join(&key);
        if let Ok(meta) = fs::read(out_dir.join("build.json"))
            && let Ok(mut artifacts) = serde_json::from_slice::<KernelArtifacts>(&meta)
            && out_dir.join("vmlinux").is_file()
            && out_dir.join("bzImage").is_file()
        {
            artifacts.dir = out_dir;
            artifacts.cached = true;
            return Ok(artifacts);
        }

        let src = self.unpacked_source(&version)?;
        let obj = self.cache_dir.join("build").join(&key);
        fs::create_dir_all(&obj).map_err(io_err(format!("create {}", obj.display())))?;
        fs::write(obj.join(".config"), &config)
            .map_err(io_err(format!("write {}/.config", obj.display())))?;
        self.make(&src, &obj, &["olddefconfig"])?;
        let effective = fs::read_to_string(obj.join(".config"))
            .map_err(io_err("read the effective config".into()))?;
        check_options(&effective, &self.config)?;

        tracing::info!(%key, jobs = self.jobs, "building the guest kernel (minutes; cached afterwards)");
        let started = Instant::now();
        self.make(&src, &obj, &["vmlinux", "bzImage"])?;
        let build_seconds = started.elapsed().as_secs_f64();

        let staging = self.cache_dir.join("kernel").join(format!(".{key}.tmp"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io_err(format!("create {}", staging.display())))?;
        for (from, to) in [
            ("vmlinux", "vmlinux"),
            ("arch/x86/boot/bzImage", "bzImage"),
            (".config", "config"),
        ] {
            fs::copy(obj.join(from), staging.join(to))
                .map_err(io_err(format!("copy {from} out of {}", obj.display())))?;
        }
        let artifacts = KernelArtifacts {
            key,
            source_package: self.source_package.clone(),
            source_version: version,
            config_sha256,
            build_seconds,
            dir: out_dir.clone(),
            cached: false,
        };
        let meta = serde_json::to_vec_pretty(&artifacts).expect("serialise build.json");
        fs::write(staging.join("build.json"), meta).map_err(io_err("write build.json".into()))?;
        let _ = fs::remove_dir_all(&out_dir);
        fs::rename(&staging, &out_dir).map_err(io_err(format!(
            "move the kernel build into {}",
            out_dir.display()
        )))?;
        Ok(artifacts)
    }

    /// The unpacked source tree `<cache>/src/<package>-<version>`, unpacking it if needed.
    fn unpacked_source(&self, version: &str) -> Result<PathBuf, ImageError> {
        let src = self
            .cache_dir
            .join("src")
            .join(format!("{}-{version}", self.source_package));
        if src.join("Makefile").is_file() {
            return Ok(src);
        }
        let tarball = self.tarball();
        if !tarball.is_file() {
            return Err(ImageError::MissingTool(format!(
                "{} is missing; reinstall the Debian package {}",
                tarball.display(),
                self.source_package
            )));
        }
        let staging = self
            .cache_dir
            .join("src")
            .join(format!(".unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io_err(format!("create {}", staging.display())))?;
        run(
            Command::new("tar")
                .arg("-xJf")
                .arg(&tarball)
                .arg("-C")
                .arg(&staging),
            "unpack the kernel source",
            None,
        )?;
        let _ = fs::remove_dir_all(&src);
        fs::rename(staging.join(&self.source_package), &src).map_err(io_err(format!(
            "move the kernel source into {}",
            src.display()
        )))?;
        let _ = fs::remove_dir_all(&staging);
        Ok(src)
    }

    fn make(&self, src: &Path, obj: &Path, targets: &[&str]) -> Result<(), ImageError> {
        let log = obj.join("build.log");
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(src)
            .arg(format!("O={}", obj.display()))
            .arg(format!("-j{}", self.jobs))
            .args(targets);
        // Reproducible: no build time, user or host in the image.
        cmd.env("KBUILD_BUILD_TIMESTAMP", "Thu Jan  1 00:00:00 UTC 1970")
            .env("KBUILD_BUILD_USER", "podvm")
            .env("KBUILD_BUILD_HOST", "podvm")
            .env("KBUILD_BUILD_VERSION", "1");
        run(&mut cmd, &format!("make {}", targets.join(" ")), Some(&log))
    }
}

/// Runs `cmd`; output goes to `log` (or is captured); failure quotes the last lines.
fn run(cmd: &mut Command, what: &str, log: Option<&Path>) -> Result<(), ImageError> {
    let output = match log {
        Some(log) => {
            let file =
                fs::File::create(log).map_err(io_err(format!("create {}", log.display())))?;
            let err = file
                .try_clone()
                .map_err(io_err("dup the log file".into()))?;
            cmd.stdout(file).stderr(err);
            let status = cmd.status().map_err(io_err(format!("start {what}")))?;
            (status, fs::read_to_string(log).unwrap_or_default())
        }
        None => {
            let out = cmd.output().map_err(io_err(format!("start {what}")))?;
            (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    if output.0.success() {
        return Ok(());
    }
    let tail: Vec<&str> = output
        .1
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    Err(ImageError::BuildFailed {
        what: what.to_string(),
        detail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        log: log.map(Path::to_path_buf),
    })
}

/// Checks that every [`REQUIRED_OPTIONS`] is `=y` and that modules are off.
fn check_options(effective: &str, config_path: &Path) -> Result<(), ImageError> {
    let is_y = |opt: &str| effective.lines().any(|l| l == format!("CONFIG_{opt}=y"));
    let missing: Vec<&str> = REQUIRED_OPTIONS
        .iter()
        .copied()
        .filter(|o| !is_y(o))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("not built in: {}", missing.join(", ")));
    }
    if is_y("MODULES") {
        problems.push("CONFIG_MODULES=y (the guest has no modules)".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ImageError::BadKernelConfig {
            path: config_path.to_path_buf(),
            problems: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_config_has_every_required_option() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/kernel/config-6.12");
        let config = fs::read_to_string(&path).unwrap();
        check_options(&config, &path).unwrap();
    }

    #[test]
    fn missing_options_and_modules_are_named() {
        let config = "CONFIG_PVH=y\nCONFIG_MODULES=y\n";
        let err = check_options(config, Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DM_VERITY")
                && err.contains("TSM_REPORTS")
                && err.contains("CONFIG_MODULES=y"),
            "{err}"
        );
        assert!(!err.contains(" PVH,"), "{err}");
    }
}
