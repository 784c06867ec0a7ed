//! `podvm cleanup`: removes what a crashed node left behind under the state root — the state
//! directories whose owner process is dead ([`crate::state::stale_dirs`], the same rule the
//! launch-time sweep uses), the processes recorded in them that still run and name them
//! ([`crate::state::StaleDir::kill_children`]), and the mounts below them (lazily unmounted
//! before the directory is removed, so that removal never descends into a mounted filesystem).
//! State directories whose owner is alive are left alone.

use std::path::{Path, PathBuf};

use crate::state::{self, StaleDir};

/// One thing cleaned up (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Killed {
        dir: PathBuf,
        name: String,
        pid: i32,
    },
    Unmounted(PathBuf),
    Removed {
        dir: PathBuf,
        owner: i32,
    },
}

impl Action {
    /// One line for a person; `dry_run` says "would …".
    pub fn describe(&self, dry_run: bool) -> String {
        let (verb_done, verb_would) = match self {
            Action::Killed { .. } => ("killed", "would kill"),
            Action::Unmounted(_) => ("unmounted", "would unmount"),
            Action::Removed { .. } => ("removed", "would remove"),
        };
        let verb = if dry_run { verb_would } else { verb_done };
        match self {
            Action::Killed { dir, name, pid } => {
                format!("{verb} {name} (pid {pid}) of {}", dir.display())
            }
            Action::Unmounted(path) => format!("{verb} {}", path.display()),
            Action::Removed { dir, owner } => format!(
                "{verb} state directory {} (owner pid {owner} is dead)",
                dir.display()
            ),
        }
    }
}

/// Something that could not be cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(
        "cannot unmount {path}: {source}; unmount it by hand (umount -l) and run podvm cleanup again"
    )]
    Unmount { path: PathBuf, source: nix::Error },
    #[error(
        "cannot remove {path}: {source}; check what holds it (lsof +D, mount) and run podvm cleanup again"
    )]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct Report {
    pub actions: Vec<Action>,
    pub errors: Vec<CleanupError>,
}

/// Decodes the octal escapes of `/proc/self/mountinfo` (`\040` for a space, ...).
fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount points in `mountinfo` (the text of `/proc/self/mountinfo`) at or below `dir`,
/// deepest first.
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

fn current_mounts_below(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts_below(&info, &dir)
}

/// Cleans up one stale directory: kill its recorded processes, unmount what is mounted below it,
/// remove it.
fn clean_dir(dir: &StaleDir, dry_run: bool, report: &mut Report) {
    let children = if dry_run {
        dir.live_children()
    } else {
        dir.kill_children()
    };
    for child in children {
        report.actions.push(Action::Killed {
            dir: dir.path.clone(),
            name: child.name,
            pid: child.pid,
        });
    }
    let mut unmount_failed = false;
    for mount in current_mounts_below(&dir.path) {
        if !dry_run
            && let Err(source) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH)
        {
            unmount_failed = true;
            report.errors.push(CleanupError::Unmount {
                path: mount,
                source,
            });
            continue;
        }
        report.actions.push(Action::Unmounted(mount));
    }
    if unmount_failed {
        // Removing it now would descend into the mounted filesystem.
        return;
    }
    if !dry_run && let Err(source) = dir.remove() {
        report.errors.push(CleanupError::Remove {
            path: dir.path.clone(),
            source,
        });
        return;
    }
    report.actions.push(Action::Removed {
        dir: dir.path.clone(),
        owner: dir.owner,
    });
}

/// Cleans up the state directories under `root` whose owner is dead.
pub fn cleanup(root: &Path, dry_run: bool) -> Report {
    let mut report = Report::default();
    for dir in state::stale_dirs(root) {
        clean_dir(&dir, dry_run, &mut report);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::{Duration, Instant};

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn mountinfo_paths_are_unescaped_and_sorted_deepest_first() {
        let info = "\
22 1 0:21 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
40 22 0:30 / /run/podvm/a rw - tmpfs tmpfs rw
41 40 0:31 / /run/podvm/a/rootfs\\040dir rw - tmpfs tmpfs rw
42 22 0:32 / /run/podvm/ab rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_below(info, Path::new("/run/podvm/a")),
            vec![
                PathBuf::from("/run/podvm/a/rootfs dir"),
                PathBuf::from("/run/podvm/a")
            ]
        );
        assert!(mounts_below(info, Path::new("/run/podvm/b")).is_empty());
    }

    #[test]
    fn dead_owners_are_cleaned_up_and_live_ones_left_alone() {
        let root = tempfile::tempdir().unwrap();
        // A running VM's directory: owned by this (live) process.
        let live = state::StateDir::create(root.path(), "live").unwrap();
        fs::write(live.file("qemu.pid"), std::process::id().to_string()).unwrap();
        // A crashed runtime's directory with its VMM still running.
        let stale = root.path().join("stale");
        fs::create_dir(&stale).unwrap();
        let owner = dead_pid();
        fs::write(stale.join("owner.pid"), owner.to_string()).unwrap();
        let sleeper = stale.join("qemu-system-x86_64");
        std::os::unix::fs::symlink("/bin/sleep", &sleeper).unwrap();
        let mut orphan = std::process::Command::new(&sleeper)
            .arg("30")
            .spawn()
            .unwrap();
        fs::write(stale.join("qemu.pid"), orphan.id().to_string()).unwrap();
        // A recorded pid that names another process (this test): never killed.
        fs::write(stale.join("vsock.pid"), std::process::id().to_string()).unwrap();
        // Wait until the orphan's command line shows the directory.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fs::read(format!("/proc/{}/cmdline", orphan.id()))
            .map(|c| String::from_utf8_lossy(&c).contains("stale"))
            .unwrap_or(false)
        {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }

        // A dry run lists, touches nothing.
        let dry = cleanup(root.path(), true);
        assert!(dry.errors.is_empty());
        assert_eq!(
            dry.actions,
            vec![
                Action::Killed {
                    dir: stale.clone(),
                    name: "qemu".into(),
                    pid: orphan.id() as i32
                },
                Action::Removed {
                    dir: stale.clone(),
                    owner: owner as i32
                },
            ]
        );
        assert!(
            dry.actions[1]
                .describe(true)
                .starts_with("would remove state directory")
        );
        assert!(stale.exists());
        assert!(orphan.try_wait().unwrap().is_none());

        let done = cleanup(root.path(), false);
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(done.actions, dry.actions);
        assert!(!stale.exists());
        assert!(live.path().exists(), "a live owner's directory was removed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while orphan.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = orphan.kill();
                panic!("the orphan was not killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        // Nothing left to do.
        assert!(cleanup(root.path(), false).actions.is_empty());
        assert!(live.path().exists());
    }

    #[test]
    fn mounts_in_a_stale_directory_are_unmounted_before_removal() {
        let root = tempfile::tempdir().unwrap();
        let stale = root.path().join("stale");
        let mnt = stale.join("rootfs");
        fs::create_dir_all(&mnt).unwrap();
        fs::write(stale.join("owner.pid"), dead_pid().to_string()).unwrap();
        if let Err(e) = nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        ) {
            eprintln!("skipped: cannot mount a tmpfs here ({e})");
            return;
        }
        fs::write(mnt.join("inside"), "x").unwrap();
        let report = cleanup(root.path(), false);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mnt = mnt.canonicalize().unwrap_or(mnt);
        assert!(
            report.actions.contains(&Action::Unmounted(mnt.clone())),
            "{:?}",
            report.actions
        );
        assert!(!stale.exists());
        assert!(current_mounts_below(root.path()).is_empty());
    }
}
