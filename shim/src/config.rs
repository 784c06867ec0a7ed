//! The shim's configuration: `/etc/podvm/configuration.toml` (`PODVM_SHIM_CONFIG` moves it), every
//! key optional, defaults when the file is absent. `deploy/configuration.toml` documents the keys.
//!
//! ```toml
//! [vm]
//! guest_dir = "/var/lib/podvm/guest"   # default: PODVM_GUEST_DIR, else /var/lib/podvm/guest
//! vcpus = 1
//! memory_mib = 512
//! boot_timeout_secs = 60
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration is read from unless `PODVM_SHIM_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/podvm/configuration.toml";

/// The `[vm]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    /// The guest image directory (`vmlinux`, `initramfs.cpio`, ...).
    pub guest_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How long the guest agent may take to become ready.
    pub boot_timeout_secs: u64,
}

impl Default for VmSection {
    fn default() -> Self {
        VmSection {
            guest_dir: podvm_host_runtime::paths::guest_dir(),
            vcpus: 1,
            memory_mib: 512,
            boot_timeout_secs: 60,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    pub vm: VmSection,
}

impl ShimConfig {
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.vm.boot_timeout_secs)
    }

    /// Parses a configuration file's text.
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Self> {
        let config: ShimConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", origin.display(), e.message()))?;
        if config.vm.boot_timeout_secs == 0 {
            anyhow::bail!("{}: vm.boot_timeout_secs must be > 0", origin.display());
        }
        Ok(config)
    }

    /// Reads `path`; an absent file means the defaults.
    pub fn load_from(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShimConfig::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Reads the configuration from `PODVM_SHIM_CONFIG` or [`DEFAULT_CONFIG_PATH`].
    pub fn load() -> anyhow::Result<Self> {
        let path = std::env::var_os("PODVM_SHIM_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        Self::load_from(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_file_means_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShimConfig::load_from(&dir.path().join("none.toml")).unwrap();
        assert_eq!(config, ShimConfig::default());
        assert_eq!(config.vm.vcpus, 1);
        assert_eq!(config.vm.memory_mib, 512);
        assert_eq!(config.boot_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn keys_override_the_defaults_one_by_one() {
        let config = ShimConfig::parse(
            "[vm]\nguest_dir = \"/tmp/g\"\nmemory_mib = 1024\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.vm.guest_dir, PathBuf::from("/tmp/g"));
        assert_eq!(config.vm.memory_mib, 1024);
        assert_eq!(config.vm.vcpus, 1);
    }

    #[test]
    fn the_template_parses() {
        let template = include_str!("../../deploy/configuration.toml");
        ShimConfig::parse(template, Path::new("deploy/configuration.toml")).unwrap();
    }

    #[test]
    fn unknown_keys_and_a_zero_timeout_are_refused() {
        let e = ShimConfig::parse("[vm]\nvcpu = 2\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("vcpu"), "{e}");
        let e =
            ShimConfig::parse("[vm]\nboot_timeout_secs = 0\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("boot_timeout_secs"), "{e}");
    }
}
