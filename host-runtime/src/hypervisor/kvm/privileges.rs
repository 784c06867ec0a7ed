//! Dropping root after setup: once `/dev/kvm` is open, the VM and vCPU exist, guest memory is
//! mapped and the vsock socket is bound, the monitor needs no privilege at all.
//!
//! [`drop_to`] affects the **whole process** (glibc applies `setuid`/`setgid` to every thread), so
//! it runs before any thread is confined by seccomp (a confined thread that is asked to change
//! its ids by glibc's broadcast would be refused).

use nix::unistd::{Gid, Uid, getegid, geteuid, getgid, getuid, setgid, setgroups, setuid};

use super::error::{KvmVmError, Result};

fn failed(step: &'static str) -> impl FnOnce(nix::Error) -> KvmVmError {
    move |source| KvmVmError::Privileges { step, source }
}

/// Sets `no_new_privs` on the calling thread, clears the supplementary groups, then switches the
/// process to `gid` and `uid` (real, effective and saved), and checks that root cannot be
/// regained (`setuid(0)` and `setgid(0)` must fail). Needs CAP_SETUID and CAP_SETGID (root);
/// `uid` 0 is refused because it would drop nothing.
pub fn drop_to(uid: u32, gid: u32) -> Result<()> {
    if uid == 0 {
        return Err(KvmVmError::Config(
            "run_as uid 0 drops no privilege; give an unprivileged uid such as 65534".into(),
        ));
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag of the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(KvmVmError::Privileges {
            step: "prctl(PR_SET_NO_NEW_PRIVS)",
            source: nix::Error::last(),
        });
    }
    setgroups(&[]).map_err(failed("setgroups([])"))?;
    setgid(Gid::from_raw(gid)).map_err(failed("setgid"))?;
    setuid(Uid::from_raw(uid)).map_err(failed("setuid"))?;
    verify_dropped(uid, gid)
}

/// Checks that the ids are `uid`/`gid` and that neither root id can be taken back.
pub fn verify_dropped(uid: u32, gid: u32) -> Result<()> {
    let ids = (
        getuid().as_raw(),
        geteuid().as_raw(),
        getgid().as_raw(),
        getegid().as_raw(),
    );
    if ids != (uid, uid, gid, gid) {
        return Err(KvmVmError::Config(format!(
            "after dropping privileges the ids are uid {}/{} gid {}/{}, not {uid}/{gid}",
            ids.0, ids.1, ids.2, ids.3
        )));
    }
    if setuid(Uid::from_raw(0)).is_ok() || setgid(Gid::from_raw(0)).is_ok() {
        return Err(KvmVmError::Config(
            "root could be regained after dropping privileges (is the process running with SECBIT_NO_SETUID_FIXUP or file capabilities?)".into(),
        ));
    }
    Ok(())
}
