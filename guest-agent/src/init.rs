//! PID 1 duties: make the root pivotable, mount the API filesystems, make the console stdio,
//! reap orphans, power off.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// One filesystem PID 1 mounts before anything else runs.
struct ApiMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The API filesystems, in mount order (parents first).
#[rustfmt::skip]
const API_MOUNTS: &[ApiMount] = &[
    ApiMount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: None },
    ApiMount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: None },
    ApiMount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: Some("mode=0755") },
    ApiMount { source: "devpts", target: "/dev/pts", fstype: "devpts", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC), data: Some("mode=0620,ptmxmode=0666") },
    ApiMount { source: "tmpfs", target: "/dev/shm", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=1777") },
    ApiMount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=0755") },
    ApiMount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=1777") },
    ApiMount { source: "configfs", target: "/sys/kernel/config", fstype: "configfs", flags: NOSUID_NODEV_NOEXEC, data: None },
    ApiMount { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC, data: None },
];

/// Where the initramfs root is bind-mounted for a moment by [`stack_root`].
const STACKED_ROOT: &str = "/.podvm-root";

/// Puts a bind mount of the initramfs root on top of it and enters it (`switch_root`'s dance,
/// without a copy): `pivot_root(2)` refuses to move a root mount that has no parent, which the
/// initramfs (`rootfs`) is, so without this no container could pivot into its own root. Done
/// before anything else is mounted, so below the stacked root there is only what the initramfs
/// holds (no API filesystem, no `/run`). A root that is not ramfs or tmpfs is left alone.
fn stack_root() -> Result<()> {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    /// `statfs(2)` magic of ramfs (not in nix).
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let fs_type = statfs("/").context("statfs /")?.filesystem_type();
    if fs_type.0 as u64 != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(STACKED_ROOT).with_context(|| format!("create {STACKED_ROOT}"))?;
    mount(
        Some("/"),
        STACKED_ROOT,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mount / on {STACKED_ROOT}"))?;
    let moved = nix::unistd::chdir(STACKED_ROOT)
        .and_then(|()| mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>));
    if let Err(e) = moved {
        let _ = nix::unistd::chdir("/");
        let _ = nix::mount::umount(STACKED_ROOT);
        return Err(e).context("move the bind mount of / over /");
    }
    nix::unistd::chroot(".").context("chroot into the stacked root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    let _ = fs::remove_dir(STACKED_ROOT);
    Ok(())
}

/// Mounts the API filesystems. A filesystem that is already mounted (EBUSY) is fine.
pub fn mount_api_filesystems() -> Result<()> {
    // Not fatal: without it everything but containers works, and they say why they cannot.
    if let Err(e) = stack_root() {
        eprintln!("podvm-agent: warning: {e:#}; containers cannot pivot_root");
    }
    for m in API_MOUNTS {
        fs::create_dir_all(m.target).with_context(|| format!("create mount point {}", m.target))?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mount {} on {}", m.fstype, m.target)),
        }
    }
    Ok(())
}

/// Where TLS clients (reqwest's platform verifier, via rustls-native-certs) look for CA roots.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Writes Mozilla's root certificates, compiled into the agent (and so measured with the
/// initramfs), as the guest's CA bundle, unless the guest has one. The guest image has no CA
/// store of its own; without one every HTTPS client (KBS, registries) fails to start.
pub fn install_ca_bundle(path: &Path) -> Result<()> {
    use base64::Engine as _;
    if path.exists() {
        return Ok(());
    }
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    fs::write(path, pem).with_context(|| format!("write {}", path.display()))
}

/// Makes `/dev/console` the agent's stdin, stdout and stderr when the kernel did not (it does
/// when the initramfs has a `/dev/console` node).
pub fn attach_console() {
    if nix::unistd::isatty(std::io::stderr()).unwrap_or(false) {
        return;
    }
    if let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process; `console` stays open
            // for the duration of the call.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// Reaps every exited child without blocking; returns how many were reaped.
pub fn reap_zombies() -> usize {
    let mut reaped = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => {
                tracing::debug!(?status, "reaped a child");
                reaped += 1;
            }
        }
    }
}

/// Flushes the filesystems and powers the VM off. Only returns if the kernel refused.
pub fn power_off() -> Errno {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// `podvm.<key>=<value>` parameters of the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AgentParams {
    /// `podvm.log=error|warn|info|debug|trace` (default info).
    pub log_level: Option<String>,
}

impl AgentParams {
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut params = AgentParams::default();
        for word in cmdline.split_whitespace() {
            if let Some(level) = word.strip_prefix("podvm.log=") {
                params.log_level = Some(level.to_string());
            }
        }
        params
    }

    pub fn from_proc(root: &Path) -> Self {
        Self::from_cmdline(&fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_bundle_is_pem_that_rustls_reads_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/ssl/certs/ca-certificates.crt");
        install_ca_bundle(&path).unwrap();
        let pem = fs::read(&path).unwrap();
        use rustls::pki_types::pem::PemObject as _;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(certs.len() > 100);
        fs::write(&path, "mine").unwrap();
        install_ca_bundle(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"mine");
    }

    #[test]
    fn agent_params_come_from_the_kernel_cmdline() {
        let p = AgentParams::from_cmdline("console=ttyS0 podvm.log=debug quiet");
        assert_eq!(p.log_level.as_deref(), Some("debug"));
        assert_eq!(
            AgentParams::from_cmdline("console=ttyS0"),
            AgentParams::default()
        );
    }

    #[test]
    fn api_mounts_have_parents_first() {
        for (i, m) in API_MOUNTS.iter().enumerate() {
            for later in &API_MOUNTS[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} is mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }
}
