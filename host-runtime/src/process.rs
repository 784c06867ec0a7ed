//! External processes the host runtime starts (QEMU, the vsock backend): each is owned by one
//! [`OwnedChild`], whose `Drop` kills and reaps it.
//!
//! A child also dies with the runtime when the runtime is killed outright (`SIGKILL`): it is
//! started with `PR_SET_PDEATHSIG = SIGKILL`. The death signal fires when the *thread* that
//! spawned the child exits, so spawn from a thread that lives as long as the child (the CLI runs
//! a current-thread runtime on its main thread). Each child gets a process group of its own, so a
//! terminal's Ctrl-C reaches the runtime, which then shuts the VM down in order.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct OwnedChild {
    name: &'static str,
    child: Child,
    exited: Option<ExitStatus>,
}

impl OwnedChild {
    /// Starts `command`; `name` names it in errors and logs.
    pub fn spawn(name: &'static str, mut command: Command) -> io::Result<Self> {
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, setpgid, _exit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(OwnedChild {
            name,
            child,
            exited: None,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Takes the child's piped stdout.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (it is reaped then).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits up to `deadline` for the process to exit by itself.
    pub fn wait_timeout(&mut self, deadline: Duration) -> io::Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if start.elapsed() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to the process (nothing if it has already exited).
    pub fn signal(&mut self, signal: Signal) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.child.id() as i32), signal).map_err(io::Error::from)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(name = self.name, "could not kill and reap: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[test]
    fn drop_kills_and_reaps() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = OwnedChild::spawn("sleep", cmd).unwrap();
        let pid = child.pid();
        assert!(alive(pid));
        drop(child);
        assert!(!alive(pid), "the child outlived its owner");
    }

    #[test]
    fn exit_status_is_reported() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let mut child = OwnedChild::spawn("sh", cmd).unwrap();
        let status = child
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn child_has_its_own_process_group() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = OwnedChild::spawn("sleep", cmd).unwrap();
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(child.pid() as i32))).unwrap();
        assert_eq!(pgid.as_raw() as u32, child.pid());
    }
}
