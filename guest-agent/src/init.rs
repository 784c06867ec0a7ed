//! PID 1 duties: mount the API filesystems, make the console stdio, reap orphans, power off.

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

/// Mounts the API filesystems. A filesystem that is already mounted (EBUSY) is fine.
pub fn mount_api_filesystems() -> Result<()> {
    for m in API_MOUNTS {
        fs::create_dir_all(m.target).with_context(|| format!("create mount point {}", m.target))?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mount {} on {}", m.fstype, m.target)),
        }
    }
    Ok(())
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
