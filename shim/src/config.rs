//! The shim's configuration: `/etc/podvm/configuration.toml`, or the file containerd names in
//! the runtime's options (`ConfigPath`, one file per RuntimeClass handler), or
//! `PODVM_SHIM_CONFIG`. Every key is optional; an absent file means the defaults.
//! `deploy/configuration.toml` is the documented template.
//!
//! ```toml
//! [vm]
//! guest_dir = "/var/lib/podvm/guest"   # default: PODVM_GUEST_DIR, else /var/lib/podvm/guest
//! vcpus = 1
//! memory_mib = 512
//! hypervisor = "qemu"                   # qemu | builtin (podvm's own KVM monitor)
//! [tee]
//! mode = "none"                         # none | snp-emulated | snp | tdx
//! kbs_url = ""                          # required unless mode = "none"
//! image_key_uris = []
//! registry_credentials_uri = ""
//! insecure_registries = []
//! [timeouts]
//! boot_secs = 60
//! image_pull_secs = 600
//! stop_secs = 10
//! [annotations]
//! allowed = []                          # e.g. ["io.podvm.vcpus", "io.podvm.memory_mib"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podvm_host_runtime::hypervisor::HypervisorKind;
use podvm_host_runtime::launch::TeeMode;
use serde::Deserialize;

/// Where the configuration is read from unless containerd or `PODVM_SHIM_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/podvm/configuration.toml";

/// The per-pod overrides a configuration may allow (`[annotations] allowed`).
pub const ANNOTATION_VCPUS: &str = "io.podvm.vcpus";
pub const ANNOTATION_MEMORY_MIB: &str = "io.podvm.memory_mib";
const KNOWN_ANNOTATIONS: &[&str] = &[ANNOTATION_VCPUS, ANNOTATION_MEMORY_MIB];

/// The `[vm]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    /// The guest image directory (`vmlinux`, `initramfs.cpio`, ...).
    pub guest_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The backend that runs the pods' VMs: `qemu` or `builtin`.
    pub hypervisor: HypervisorKind,
}

impl Default for VmSection {
    fn default() -> Self {
        VmSection {
            guest_dir: podvm_host_runtime::paths::guest_dir(),
            vcpus: 1,
            memory_mib: 512,
            hypervisor: HypervisorKind::Qemu,
        }
    }
}

/// The `[tee]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeeSection {
    /// `none`, `snp-emulated`, `snp` or `tdx`.
    pub mode: String,
    /// The KBS the guest attests to (`http(s)://host:port`); required in the confidential modes.
    pub kbs_url: String,
    /// KBS resources holding the private keys of encrypted images (`kbs:///repo/type/tag`).
    pub image_key_uris: Vec<String>,
    /// KBS resource holding registry credentials (`auth.json`), if the registry needs them.
    pub registry_credentials_uri: String,
    /// Registries the guest may pull from over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
}

impl Default for TeeSection {
    fn default() -> Self {
        TeeSection {
            mode: "none".to_string(),
            kbs_url: String::new(),
            image_key_uris: Vec::new(),
            registry_credentials_uri: String::new(),
            insecure_registries: Vec::new(),
        }
    }
}

/// The `[timeouts]` table, seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsSection {
    /// How long the guest agent may take to become ready.
    pub boot_secs: u64,
    /// How long an in-guest image pull may take (confidential modes).
    pub image_pull_secs: u64,
    /// How long a guest may take to power off before it is killed.
    pub stop_secs: u64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            boot_secs: 60,
            image_pull_secs: 600,
            stop_secs: 10,
        }
    }
}

/// The `[annotations]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnotationsSection {
    /// The `io.podvm.*` pod annotations this configuration honours.
    pub allowed: Vec<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    pub vm: VmSection,
    pub tee: TeeSection,
    pub timeouts: TimeoutsSection,
    pub annotations: AnnotationsSection,
}

/// What a pod gets after its annotations were applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodResources {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl ShimConfig {
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.boot_secs)
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.stop_secs)
    }

    pub fn tee_mode(&self) -> TeeMode {
        self.tee.mode.parse().expect("validated when parsed")
    }

    /// Parses a configuration file's text.
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Self> {
        let config: ShimConfig = toml::from_str(text).map_err(|e| {
            // Where: the line, and its text (a wrong value's message does not name its key).
            let at = e.span().map(|span| {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                format!(" line {line_no} (`{line}`):")
            });
            anyhow::anyhow!(
                "{}:{} {}",
                origin.display(),
                at.unwrap_or_default(),
                e.message().trim()
            )
        })?;
        let o = origin.display();
        if config.timeouts.boot_secs == 0 || config.timeouts.image_pull_secs == 0 {
            anyhow::bail!("{o}: timeouts.boot_secs and timeouts.image_pull_secs must be > 0");
        }
        if !(1..=64).contains(&config.vm.vcpus) {
            anyhow::bail!("{o}: vm.vcpus must be 1-64, not {}", config.vm.vcpus);
        }
        if config.vm.memory_mib < 128 {
            anyhow::bail!(
                "{o}: vm.memory_mib must be at least 128, not {}",
                config.vm.memory_mib
            );
        }
        match config.tee.mode.parse::<TeeMode>() {
            Err(e) => anyhow::bail!("{o}: tee.mode: {e}"),
            Ok(TeeMode::None) => {}
            Ok(mode) => {
                if config.tee.kbs_url.is_empty() {
                    anyhow::bail!(
                        "{o}: tee.mode = {:?} needs tee.kbs_url (the KBS the guest attests to before it pulls its image)",
                        mode.as_str()
                    );
                }
                if !config.tee.kbs_url.starts_with("http://")
                    && !config.tee.kbs_url.starts_with("https://")
                {
                    anyhow::bail!(
                        "{o}: tee.kbs_url {:?} is not an http(s):// URL",
                        config.tee.kbs_url
                    );
                }
            }
        }
        for a in &config.annotations.allowed {
            if !KNOWN_ANNOTATIONS.contains(&a.as_str()) {
                anyhow::bail!(
                    "{o}: annotations.allowed: unknown annotation {a:?} (known: {})",
                    KNOWN_ANNOTATIONS.join(", ")
                );
            }
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

    /// Reads the configuration: the file containerd's runtime options name (`ConfigPath`), else
    /// `PODVM_SHIM_CONFIG`, else [`DEFAULT_CONFIG_PATH`]. A file containerd names must exist.
    pub fn load(config_path: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(path) = config_path {
            if !path.exists() {
                anyhow::bail!(
                    "{}: the runtime's ConfigPath does not exist (run `podvm install containerd` or fix containerd's runtime options)",
                    path.display()
                );
            }
            return Self::load_from(path);
        }
        let path = std::env::var_os("PODVM_SHIM_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        Self::load_from(&path)
    }

    /// The pod's vCPUs and memory: the configuration's, overridden by `io.podvm.*` annotations
    /// the configuration allows; any other `io.podvm.*` annotation is refused.
    pub fn pod_resources(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> anyhow::Result<PodResources> {
        let mut out = PodResources {
            vcpus: self.vm.vcpus,
            memory_mib: self.vm.memory_mib,
        };
        for (key, value) in annotations
            .iter()
            .filter(|(k, _)| k.starts_with("io.podvm."))
        {
            if !self.annotations.allowed.iter().any(|a| a == key) {
                anyhow::bail!(
                    "annotation {key} is not allowed by this runtime's configuration (add it to [annotations] allowed, or remove it from the pod)"
                );
            }
            let number: u32 = value
                .parse()
                .map_err(|_| anyhow::anyhow!("annotation {key}={value:?}: not a number"))?;
            match key.as_str() {
                ANNOTATION_VCPUS if (1..=64).contains(&number) => out.vcpus = number,
                ANNOTATION_MEMORY_MIB if number >= 128 => out.memory_mib = number,
                ANNOTATION_VCPUS => anyhow::bail!("annotation {key}={number}: must be 1-64"),
                _ => anyhow::bail!("annotation {key}={number}: must be at least 128"),
            }
        }
        Ok(out)
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
        assert_eq!(config.tee_mode(), TeeMode::None);
        assert_eq!(config.boot_timeout(), Duration::from_secs(60));
        assert_eq!(config.timeouts.image_pull_secs, 600);
    }

    #[test]
    fn a_config_path_from_containerd_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("configuration-snp.toml");
        let e = ShimConfig::load(Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("configuration-snp.toml"), "{e}");
        std::fs::write(
            &missing,
            "[tee]\nmode = \"snp-emulated\"\nkbs_url = \"http://127.0.0.1:8080\"\n",
        )
        .unwrap();
        let config = ShimConfig::load(Some(&missing)).unwrap();
        assert_eq!(config.tee_mode(), TeeMode::SnpEmulated);
    }

    #[test]
    fn keys_override_the_defaults_one_by_one() {
        let config = ShimConfig::parse(
            "[vm]\nguest_dir = \"/tmp/g\"\nmemory_mib = 1024\n[timeouts]\nboot_secs = 5\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.vm.guest_dir, PathBuf::from("/tmp/g"));
        assert_eq!(config.vm.memory_mib, 1024);
        assert_eq!(config.vm.vcpus, 1);
        assert_eq!(config.vm.hypervisor, HypervisorKind::Qemu);
        assert_eq!(config.boot_timeout(), Duration::from_secs(5));
        let builtin =
            ShimConfig::parse("[vm]\nhypervisor = \"builtin\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(builtin.vm.hypervisor, HypervisorKind::Builtin);
    }

    #[test]
    fn the_template_parses_to_the_defaults() {
        let template = include_str!("../../deploy/configuration.toml");
        let config = ShimConfig::parse(template, Path::new("deploy/configuration.toml")).unwrap();
        assert_eq!(config, ShimConfig::default());
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (text, key) in [
            ("[vm]\nvcpu = 2\n", "vcpu"),
            ("[timeouts]\nboot_secs = 0\n", "boot_secs"),
            ("[vm]\nvcpus = 65\n", "vm.vcpus"),
            ("[vm]\nmemory_mib = 64\n", "vm.memory_mib"),
            ("[vm]\nhypervisor = \"firecracker\"\n", "hypervisor"),
            ("[tee]\nmode = \"sev\"\n", "tee.mode"),
            ("[tee]\nmode = \"snp-emulated\"\n", "tee.kbs_url"),
            (
                "[tee]\nmode = \"snp-emulated\"\nkbs_url = \"kbs:8080\"\n",
                "tee.kbs_url",
            ),
            (
                "[annotations]\nallowed = [\"io.podvm.kernel\"]\n",
                "io.podvm.kernel",
            ),
        ] {
            let e = ShimConfig::parse(text, Path::new("c.toml")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
            assert!(e.to_string().starts_with("c.toml"), "{e}");
        }
    }

    #[test]
    fn annotations_override_only_where_allowed() {
        let pod = BTreeMap::from([
            (ANNOTATION_VCPUS.to_string(), "2".to_string()),
            ("io.kubernetes.cri.sandbox-id".to_string(), "x".to_string()),
        ]);
        let strict = ShimConfig::default();
        let e = strict.pod_resources(&pod).unwrap_err();
        assert!(
            e.to_string().contains("io.podvm.vcpus is not allowed"),
            "{e}"
        );
        let open = ShimConfig::parse(
            "[annotations]\nallowed = [\"io.podvm.vcpus\", \"io.podvm.memory_mib\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            open.pod_resources(&pod).unwrap(),
            PodResources {
                vcpus: 2,
                memory_mib: 512
            }
        );
        let bad = BTreeMap::from([(ANNOTATION_MEMORY_MIB.to_string(), "64".to_string())]);
        assert!(open.pod_resources(&bad).is_err());
        let nan = BTreeMap::from([(ANNOTATION_VCPUS.to_string(), "two".to_string())]);
        assert!(open.pod_resources(&nan).is_err());
    }
}
