//! cgroup v2 for containers: `<root>/podvm/<container id>`, with `memory.max`, `memory.low`,
//! `memory.swap.max`, `pids.max`, `cpu.max`, `cpu.weight` and `cpuset.*` from
//! `linux.resources`. When `<root>` is not a cgroup2 mount (a cgroup v1 host, e.g. a test
//! machine) containers get no cgroup, with a debug log; limits asked for are then not enforced.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::spec::Resources;

/// Where the guest mounts cgroup2 (`init.rs`).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The parent of every container cgroup, below the root.
const PARENT: &str = "podvm";

/// Controllers enabled for the container cgroups, when the kernel has them.
const CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io"];

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup: {what} {}: {source}", path.display())]
pub struct CgroupError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError { what, path, source }
}

/// Whether `path` is a cgroup2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// A container's cgroup (a directory of the cgroup2 hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

/// Enables in `dir/cgroup.subtree_control` the controllers of [`CONTROLLERS`] that `dir` has.
fn enable_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let available_file = dir.join("cgroup.controllers");
    let available = fs::read_to_string(&available_file).map_err(err("read", &available_file))?;
    let control = dir.join("cgroup.subtree_control");
    let mut enabled = Vec::new();
    for c in CONTROLLERS {
        if available.split_whitespace().any(|a| a == *c) {
            match fs::write(&control, format!("+{c}")) {
                Ok(()) => enabled.push(c.to_string()),
                // e.g. cpu while a real-time process sits outside the root: the limits that need
                // it fail below, with their own message.
                Err(e) => tracing::debug!(controller = c, error = %e, "controller not enabled"),
            }
        }
    }
    Ok(enabled)
}

impl Cgroup {
    /// Creates the container's cgroup with its limits, or `None` if `root` is not cgroup2.
    pub fn create(
        root: &Path,
        id: &str,
        resources: &Resources,
    ) -> Result<Option<Cgroup>, CgroupError> {
        if !is_cgroup2(root) {
            tracing::debug!(
                root = %root.display(),
                limits = !resources.is_empty(),
                "not a cgroup2 mount: the container gets no cgroup"
            );
            return Ok(None);
        }
        enable_controllers(root)?;
        let parent = root.join(PARENT);
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err("create", &parent)(e)),
        }
        enable_controllers(&parent)?;
        let dir = parent.join(id);
        if dir.exists() {
            // Left over by an earlier container of this id.
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).map_err(err("create", &dir))?;
        let cgroup = Cgroup { dir };
        if let Err(e) = cgroup.apply(resources) {
            let _ = cgroup.kill_and_rmdir();
            return Err(e);
        }
        Ok(Some(cgroup))
    }

    fn write(&self, file: &str, value: String) -> Result<(), CgroupError> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(err("write", &path))
    }

    fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        if let Some(v) = r.cpuset_cpus.clone() {
            self.write("cpuset.cpus", v)?;
        }
        if let Some(v) = r.cpuset_mems.clone() {
            self.write("cpuset.mems", v)?;
        }
        if let Some(v) = r.memory_low {
            self.write("memory.low", v.to_string())?;
        }
        if let Some(v) = r.memory_max {
            self.write("memory.max", v.to_string())?;
        }
        if let Some(v) = r.memory_swap_max {
            self.write("memory.swap.max", v.to_string())?;
        }
        if let Some(v) = r.pids_max {
            self.write("pids.max", v.to_string())?;
        }
        if let Some((quota, period)) = r.cpu_max {
            self.write("cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(v) = r.cpu_weight {
            self.write("cpu.weight", v.to_string())?;
        }
        Ok(())
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`: writing a pid there moves the process in.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn kill_and_rmdir(&self) -> io::Result<()> {
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        }
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Kills what is left in the cgroup and removes it (the kernel frees a cgroup shortly after
    /// its last process is reaped, so this retries for a second).
    pub async fn remove(&self) -> Result<(), CgroupError> {
        let mut attempts = 0;
        loop {
            match self.kill_and_rmdir() {
                Ok(()) => return Ok(()),
                Err(e) if attempts >= 50 => return Err(err("remove", &self.dir)(e)),
                Err(_) => attempts += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
