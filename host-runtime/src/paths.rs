//! Where podvm keeps things on the host. Each location can be moved with an environment variable.

use std::path::PathBuf;

fn env_or(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Build cache (kernel sources and builds, the vsock backend, probe results): `PODVM_CACHE_DIR`,
/// default `/var/cache/podvm`.
pub fn cache_dir() -> PathBuf {
    env_or("PODVM_CACHE_DIR", "/var/cache/podvm")
}

/// The installed guest image: `PODVM_GUEST_DIR`, default `/var/lib/podvm/guest`.
pub fn guest_dir() -> PathBuf {
    env_or("PODVM_GUEST_DIR", "/var/lib/podvm/guest")
}

/// Per-VM state directories: `PODVM_STATE_DIR`, default `/run/podvm`.
pub fn state_root() -> PathBuf {
    env_or("PODVM_STATE_DIR", crate::state::DEFAULT_STATE_ROOT)
}

/// Console logs of VMs that failed, kept for diagnosis: `PODVM_LOG_DIR`, default `/var/log/podvm`.
pub fn log_dir() -> PathBuf {
    env_or("PODVM_LOG_DIR", "/var/log/podvm")
}

/// The emulated SEV-SNP PSP's keys and certificate chain (`--tee snp-emulated`):
/// `PODVM_EMULATED_PSP_DIR`, default `/var/lib/podvm/emulated-psp`. A KBS that should accept
/// emulated evidence trusts its `ark.pem`.
pub fn emulated_psp_dir() -> PathBuf {
    env_or("PODVM_EMULATED_PSP_DIR", "/var/lib/podvm/emulated-psp")
}

/// Finds an executable: the path in `var` if set, else `name` on `PATH`, else in `fallbacks`.
pub fn find_executable(var: &str, name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &PathBuf| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return is_exec(&path).then_some(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallbacks.iter().cloned())
        .find(is_exec)
}
