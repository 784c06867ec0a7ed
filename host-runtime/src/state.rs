//! Per-VM state directories: `/run/podvm/<id>/` (0700) holds the VM's sockets, console log and
//! pid files, and nothing else. It is removed when the VM is stopped.
//!
//! A runtime that was killed outright cannot remove its directory; the next runtime that creates
//! one sweeps such leftovers (the owner pid in `owner.pid` is dead), killing any recorded child
//! that is still running and belongs to that directory.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The default root of the state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/podvm";

const OWNER_FILE: &str = "owner.pid";

/// A VM's state directory, removed on drop.
#[derive(Debug)]
pub struct StateDir {
    id: String,
    path: PathBuf,
}

impl StateDir {
    /// Creates `<root>/<id>` with mode 0700 and records this process as its owner. Sweeps the
    /// leftovers of dead owners first.
    pub fn create(root: &Path, id: &str) -> io::Result<Self> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid VM id {id:?}"),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)?;
        sweep_stale(root);
        let path = root.join(id);
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        // The umask may have narrowed the mode; make it exact.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
        fs::write(path.join(OWNER_FILE), std::process::id().to_string())?;
        Ok(StateDir {
            id: id.to_string(),
            path,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Records the pid of a child process (`<name>.pid`), so that a sweep can kill it.
    pub fn record_pid(&self, name: &str, pid: u32) -> io::Result<()> {
        fs::write(self.file(&format!("{name}.pid")), pid.to_string())
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` runs: it exists and is not a zombie (a crashed owner whose parent has not
/// reaped it yet is dead for our purposes).
fn is_alive(pid: i32) -> bool {
    if pid <= 0
        || matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
    {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name (which may contain spaces).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// A state directory whose owner process is dead (found by [`stale_dirs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleDir {
    pub id: String,
    pub path: PathBuf,
    /// The dead owner's pid.
    pub owner: i32,
}

/// A process recorded in a state directory (`<name>.pid`) that is running and whose command line
/// names that directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedChild {
    pub name: String,
    pub pid: i32,
}

impl StaleDir {
    /// The recorded processes of this directory that are still running (see
    /// [`RecordedChild`]: a recycled pid of an unrelated process is never listed).
    pub fn live_children(&self) -> Vec<RecordedChild> {
        live_recorded_children(&self.path)
    }

    /// Kills [`Self::live_children`] (SIGKILL); returns them.
    pub fn kill_children(&self) -> Vec<RecordedChild> {
        let children = self.live_children();
        for child in &children {
            let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
        }
        children
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.path)
    }
}

/// The state directories under `root` whose owner (`owner.pid`) is dead. A directory without an
/// owner file is not podvm's to judge and is never listed.
pub fn stale_dirs(root: &Path) -> Vec<StaleDir> {
    let mut stale = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return stale;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(owner) = read_pid(&dir.join(OWNER_FILE)) else {
            continue;
        };
        if is_alive(owner) {
            continue;
        }
        stale.push(StaleDir {
            id: entry.file_name().to_string_lossy().into_owned(),
            path: dir,
            owner,
        });
    }
    stale.sort_by(|a, b| a.id.cmp(&b.id));
    stale
}

/// Removes the state directories whose owner is dead. Returns the ids removed.
pub fn sweep_stale(root: &Path) -> Vec<String> {
    stale_dirs(root)
        .into_iter()
        .filter_map(|dir| {
            dir.kill_children();
            dir.remove().is_ok().then_some(dir.id)
        })
        .collect()
}

/// The processes recorded in `<dir>/*.pid` whose command line names `dir` (so a recycled pid of
/// an unrelated process is never touched).
fn live_recorded_children(dir: &Path) -> Vec<RecordedChild> {
    let mut children = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return children;
    };
    let needle = dir.to_string_lossy().into_owned();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == OWNER_FILE)
            || path.extension().is_none_or(|e| e != "pid")
        {
            continue;
        }
        let Some(pid) = read_pid(&path) else { continue };
        if pid > 0 && command_line(pid).contains(&needle) {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            children.push(RecordedChild { name, pid });
        }
    }
    children.sort_by(|a, b| a.name.cmp(&b.name));
    children
}

/// The command line of `pid` (empty if it is gone). A process caught in the middle of `execve`
/// briefly shows an empty command line, so an empty one is read again for up to 100 ms.
fn command_line(pid: i32) -> String {
    for _ in 0..20 {
        match fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(bytes) if !bytes.is_empty() => return String::from_utf8_lossy(&bytes).into_owned(),
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(_) => break,
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn state_dir_is_private_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "vm1").unwrap();
        let meta = fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(
            read_pid(&dir.file(OWNER_FILE)),
            Some(std::process::id() as i32)
        );
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn bad_ids_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for id in ["", "a/b", "..", ".x"] {
            assert!(
                StateDir::create(root.path(), id).is_err(),
                "{id:?} was accepted"
            );
        }
    }

    #[test]
    fn a_live_owner_is_not_swept_and_a_dead_one_is() {
        let root = tempfile::tempdir().unwrap();
        let live = StateDir::create(root.path(), "live").unwrap();
        // A dead owner: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let stale = root.path().join("stale");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join(OWNER_FILE), dead_pid.to_string()).unwrap();
        // A recorded child still running whose command line names the directory (its program
        // path lies inside it, as QEMU's arguments do).
        let sleeper = stale.join("sleeper");
        std::os::unix::fs::symlink("/bin/sleep", &sleeper).unwrap();
        let mut orphan = std::process::Command::new(&sleeper)
            .arg("30")
            .spawn()
            .unwrap();
        fs::write(stale.join("qemu.pid"), orphan.id().to_string()).unwrap();
        let cmdline = command_line(orphan.id() as i32);

        assert_eq!(sweep_stale(root.path()), vec!["stale".to_string()]);
        assert!(!stale.exists());
        assert!(live.path().exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(status) = orphan.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = orphan.kill();
                panic!("the orphan (cmdline {cmdline:?}) was not killed");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(!status.success(), "the orphan exited by itself");
    }
}
