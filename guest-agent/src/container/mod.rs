//! Containers inside the guest: the registry behind the container calls of the agent API.
//!
//! - [`spec`]: the request's OCI spec + the pulled image's config → what runs;
//! - [`seccomp`]: an OCI seccomp profile → BPF (seccompiler);
//! - [`cgroup`]: the container's cgroup v2 and its limits;
//! - [`runner`]: the agent's side of a process (the helper it re-executes, stdio, status);
//! - [`helper`]: the helper (`podvm-agent __container-init`): namespaces, fork, exec;
//! - [`rootfs`]: the container's root (overlay of the image, mounts, `pivot_root`);
//! - [`stdio`]: bounded output buffers and stdin;
//! - [`tty`]: pseudo-terminals (`Process.Terminal`, `TtyWinResize`);
//! - [`stats`]: `StatsContainer` from the container's cgroup v2 files.
//!
//! Lifecycle (Kata's): `CreateContainer` builds the container and leaves its PID 1 waiting
//! before the user's command; `StartContainer` execs it; `ExecProcess` runs another process in
//! the container's namespaces; `WaitProcess` returns a status (`128 + n` for signal n);
//! `RemoveContainer` waits `timeout` seconds (0: for ever) for the processes to end, kills them,
//! and frees the cgroup and the state directory. An exec process is forgotten once it was waited
//! for and its output read to the end.
//!
//! State: `<state dir>/<container id>/` holds `rootfs/` and `scratch/`, both empty outside the
//! container's mount namespace.

pub mod cgroup;
pub mod helper;
pub mod rootfs;
pub mod runner;
pub mod seccomp;
pub mod spec;
pub mod stats;
pub mod stdio;
pub mod tty;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podvm_protocols::agent::{CreateContainerRequest, ExecProcessRequest};

use cgroup::{CGROUP_ROOT, Cgroup, CgroupError};
use helper::{ExecConfig, HelperConfig};
use runner::{Process, RunnerError};
use spec::SpecError;

pub use helper::main_if_helper;

/// Where the agent keeps per-container state.
pub const STATE_DIR: &str = "/run/podvm/containers";

/// How long `RemoveContainer` waits for processes after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Why a container call failed. The service prefixes the call and the container id.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid {what}: {why}")]
    InvalidId {
        what: &'static str,
        why: &'static str,
    },
    #[error("no such container")]
    NoSuchContainer,
    #[error("no such process {0:?}")]
    NoSuchProcess(String),
    #[error("a container with this id already exists")]
    ContainerExists,
    #[error("a process with exec id {0:?} already exists")]
    ProcessExists(String),
    #[error("the request has no {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no rootfs: pull the container's image first (PullImage) or set OCI.Root.Path")]
    NoRootfs,
    #[error("rootfs {}: not a directory", .0.display())]
    BadRootfs(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not supported by this agent")]
    Unsupported(&'static str),
    #[error("{0}")]
    State(&'static str),
    #[error("signal {0} is not a signal number")]
    BadSignal(u32),
    #[error("signal: {0}")]
    Signal(io::Error),
    #[error("EOF")]
    Eof,
    #[error(transparent)]
    Stdin(#[from] stdio::StdinError),
    #[error("the processes did not end within {} s of SIGKILL", KILL_GRACE.as_secs())]
    KillTimeout,
    #[error("the process has no terminal (it was not started with process.Terminal)")]
    NoTerminal,
    #[error("window size {rows}x{columns}: rows and columns must be at most 65535")]
    BadWindowSize { rows: u32, columns: u32 },
    #[error("set the terminal's window size: {0}")]
    Resize(io::Error),
    #[error(
        "the container has no cgroup: {} is not a cgroup2 mount, so there are no statistics",
        .0.display()
    )]
    NoCgroup(PathBuf),
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
}

impl ContainerError {
    /// The ttrpc status code of this error.
    pub fn code(&self) -> ttrpc::Code {
        use ContainerError::*;
        match self {
            InvalidId { .. } | Missing(_) | BadSignal(_) | BadRootfs(_) | BadWindowSize { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Spec(SpecError::Unsupported(_)) | Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            Spec(_) => ttrpc::Code::INVALID_ARGUMENT,
            NoSuchContainer | NoSuchProcess(_) => ttrpc::Code::NOT_FOUND,
            ContainerExists | ProcessExists(_) => ttrpc::Code::ALREADY_EXISTS,
            NoRootfs
            | State(_)
            | Stdin(stdio::StdinError::Closed | stdio::StdinError::Exited)
            | NoTerminal
            | NoCgroup(_) => ttrpc::Code::FAILED_PRECONDITION,
            Eof => ttrpc::Code::OUT_OF_RANGE,
            Runner(RunnerError::Timeout(_)) | KillTimeout => ttrpc::Code::DEADLINE_EXCEEDED,
            _ => ttrpc::Code::INTERNAL,
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { what, path, source }
}

/// Container and exec ids become path components: letters, digits, `_ . -`, not starting with
/// `.`, at most 128 bytes.
fn check_id(what: &'static str, id: &str) -> Result<(), ContainerError> {
    let why = if id.is_empty() {
        "empty"
    } else if id.len() > 128 {
        "longer than 128 bytes"
    } else if id.starts_with('.') {
        "starts with a dot"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "only letters, digits, '_', '.' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(ContainerError::InvalidId { what, why })
}

/// Where the runner keeps things and what it runs.
#[derive(Debug, Clone)]
pub struct ContainersConfig {
    /// Per-container state directories are created below it.
    pub state_dir: PathBuf,
    /// The agent executable, re-executed as the container helper.
    pub helper: PathBuf,
    /// The cgroup2 mount (no cgroups if it is not one).
    pub cgroup_root: PathBuf,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            state_dir: PathBuf::from(STATE_DIR),
            helper: PathBuf::from("/proc/self/exe"),
            cgroup_root: PathBuf::from(CGROUP_ROOT),
        }
    }
}

/// An image the puller unpacked for a container.
#[derive(Debug, Clone)]
struct PulledImage {
    rootfs: PathBuf,
    config: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Removed,
}

struct Container {
    bundle: PathBuf,
    init_exec_id: String,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    seccomp: Option<seccomp::SeccompProgram>,
    cgroup: Option<Cgroup>,
    /// Serialises start, exec and remove.
    phase: tokio::sync::Mutex<Phase>,
}

impl Container {
    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The init process for an empty or the init's exec id, else an exec process.
    fn process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        if exec_id.is_empty() || exec_id == self.init_exec_id {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::NoSuchProcess(exec_id.to_string()))
    }
}

enum Slot {
    /// CreateContainer is under way.
    Creating,
    Ready(Arc<Container>),
}

/// The containers of this pod.
pub struct Containers {
    config: ContainersConfig,
    images: Mutex<HashMap<String, PulledImage>>,
    containers: Mutex<HashMap<String, Slot>>,
    /// The pod's shared PID namespace (`sandbox_pidns`): the container whose init created it, and
    /// the namespace. Later `sandbox_pidns` containers join it; it ends with that init.
    sandbox_pidns: Mutex<Option<(String, std::fs::File)>>,
}

/// Frees a `Creating` slot unless the container was registered.
struct Reservation<'a> {
    containers: &'a Containers,
    id: String,
    done: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.containers.slots().remove(&self.id);
        }
    }
}

impl Containers {
    pub fn new(config: ContainersConfig) -> Self {
        Containers {
            config,
            images: Mutex::default(),
            containers: Mutex::default(),
            sandbox_pidns: Mutex::default(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn images(&self) -> std::sync::MutexGuard<'_, HashMap<String, PulledImage>> {
        self.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        match self.slots().get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            _ => Err(ContainerError::NoSuchContainer),
        }
    }

    /// Records the image the puller unpacked for `container_id`: its rootfs directory and its
    /// config JSON. `CreateContainer` of that id runs on it (whatever `OCI.Root.Path` says) and
    /// takes the command, environment, working directory and user the spec leaves empty from it.
    pub fn register_image(&self, container_id: &str, rootfs: PathBuf, config_json: Vec<u8>) {
        self.images().insert(
            container_id.to_string(),
            PulledImage {
                rootfs,
                config: config_json,
            },
        );
    }

    /// `CreateContainer`: builds the container; its init waits for `start`.
    pub async fn create(&self, req: &CreateContainerRequest) -> Result<(), ContainerError> {
        let id = req.container_id.as_str();
        check_id("container id", id)?;
        // `storages` are mounted by the service before this (crate::storage).
        if !req.devices.is_empty() {
            return Err(ContainerError::Unsupported(
                "CreateContainerRequest.devices",
            ));
        }
        if !req.shared_mounts.is_empty() {
            return Err(ContainerError::Unsupported(
                "CreateContainerRequest.shared_mounts",
            ));
        }
        let spec = req
            .OCI
            .as_ref()
            .ok_or(ContainerError::Missing("OCI spec"))?;
        {
            let mut slots = self.slots();
            if slots.contains_key(id) {
                return Err(ContainerError::ContainerExists);
            }
            slots.insert(id.to_string(), Slot::Creating);
        }
        let mut reservation = Reservation {
            containers: self,
            id: id.to_string(),
            done: false,
        };

        let image = self.images().get(id).cloned();
        let (rootfs, image_config) = match image {
            Some(image) => {
                let spec_root = spec.Root.as_ref().map(|r| r.Path.as_str()).unwrap_or("");
                if !spec_root.is_empty() && Path::new(spec_root) != image.rootfs {
                    tracing::debug!(
                        container = id,
                        "OCI.Root.Path replaced by the pulled image's rootfs"
                    );
                }
                (image.rootfs, Some(spec::parse_image_config(&image.config)?))
            }
            None => match spec.Root.as_ref().map(|r| r.Path.as_str()) {
                Some(path) if !path.is_empty() => (PathBuf::from(path), None),
                _ => return Err(ContainerError::NoRootfs),
            },
        };
        if !rootfs.is_absolute() || !rootfs.is_dir() {
            return Err(ContainerError::BadRootfs(rootfs));
        }
        let mut plan = spec::plan_container(spec, &rootfs, image_config.as_ref())?;

        let bundle = self.make_bundle(id)?;
        let cgroup = match Cgroup::create(&self.config.cgroup_root, id, &plan.resources) {
            Ok(c) => c,
            Err(e) => {
                remove_bundle(&bundle);
                return Err(e.into());
            }
        };
        plan.init.bundle = bundle.clone();
        plan.init.cgroup2 = cgroup::is_cgroup2(&self.config.cgroup_root);
        plan.init.cgroup_procs = cgroup.as_ref().map(Cgroup::procs_file);
        // One PID namespace for the pod's containers: join the first one's, if there is one.
        let shared_pidns = if req.sandbox_pidns {
            self.shared_pidns()
        } else {
            None
        };
        if shared_pidns.is_some() {
            plan.unshare.remove(nix::sched::CloneFlags::CLONE_NEWPID);
        }
        let spawned = runner::spawn(
            &self.config.helper,
            id,
            plan.unshare,
            shared_pidns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            HelperConfig::Init(Box::new(plan.init)),
        )
        .await;
        drop(shared_pidns);
        let init = match spawned {
            Ok(p) => p,
            Err(e) => {
                if let Some(c) = &cgroup {
                    let _ = c.remove().await;
                }
                remove_bundle(&bundle);
                return Err(e.into());
            }
        };
        tracing::info!(container = id, pid = init.pid(), "container created");
        if req.sandbox_pidns {
            let mut shared = self.sandbox_pidns.lock().unwrap_or_else(|e| e.into_inner());
            if shared.is_none() {
                match std::fs::File::open(format!("/proc/{}/ns/pid", init.pid())) {
                    Ok(ns) => *shared = Some((id.to_string(), ns)),
                    Err(e) => tracing::warn!(
                        container = id,
                        "cannot keep the pod's PID namespace ({e}); later containers get their own"
                    ),
                }
            }
        }
        let container = Arc::new(Container {
            bundle,
            init_exec_id: req.exec_id.clone(),
            init,
            execs: Mutex::default(),
            seccomp: plan.seccomp,
            cgroup,
            phase: tokio::sync::Mutex::new(Phase::Created),
        });
        self.slots().insert(id.to_string(), Slot::Ready(container));
        reservation.done = true;
        Ok(())
    }

    /// A handle on the pod's shared PID namespace, if a `sandbox_pidns` container made one.
    fn shared_pidns(&self) -> Option<std::fs::File> {
        let shared = self.sandbox_pidns.lock().unwrap_or_else(|e| e.into_inner());
        shared.as_ref().and_then(|(_, ns)| ns.try_clone().ok())
    }

    fn make_bundle(&self, id: &str) -> Result<PathBuf, ContainerError> {
        let state = &self.config.state_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state)
            .map_err(io_err("create the state directory", state))?;
        let bundle = state.join(id);
        if bundle.exists() {
            // Left over by an earlier container of this id (only empty directories go).
            remove_bundle(&bundle);
        }
        for dir in [
            bundle.clone(),
            bundle.join("rootfs"),
            bundle.join("scratch"),
        ] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
        }
        Ok(bundle)
    }

    /// `StartContainer`: execs the container's command.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let mut phase = container.phase.lock().await;
        match *phase {
            Phase::Created => {}
            Phase::Running => {
                return Err(ContainerError::State("the container was already started"));
            }
            Phase::Removed => return Err(ContainerError::NoSuchContainer),
        }
        *phase = Phase::Running;
        container.init.start().await?;
        tracing::info!(container = id, "container started");
        Ok(())
    }

    /// `ExecProcess`: another process in the running container.
    pub async fn exec(&self, req: &ExecProcessRequest) -> Result<(), ContainerError> {
        let id = req.container_id.as_str();
        check_id("exec id", &req.exec_id)?;
        let container = self.get(id)?;
        let process = req
            .process
            .as_ref()
            .ok_or(ContainerError::Missing("process"))?;
        let phase = container.phase.lock().await;
        if *phase != Phase::Running || container.init.exit_status().is_some() {
            return Err(ContainerError::State("the container is not running"));
        }
        if req.exec_id == container.init_exec_id || container.execs().contains_key(&req.exec_id) {
            return Err(ContainerError::ProcessExists(req.exec_id.clone()));
        }
        let config = ExecConfig {
            target_pid: container.init.pid(),
            cgroup_procs: container.cgroup.as_ref().map(Cgroup::procs_file),
            process: spec::plan_exec(process, container.seccomp.clone())?,
        };
        let spawned = runner::spawn(
            &self.config.helper,
            id,
            nix::sched::CloneFlags::empty(),
            None,
            HelperConfig::Exec(Box::new(config)),
        )
        .await?;
        tracing::info!(
            container = id,
            exec = req.exec_id,
            pid = spawned.pid(),
            "exec process started"
        );
        container.execs().insert(req.exec_id.clone(), spawned);
        drop(phase);
        Ok(())
    }

    /// `SignalProcess`: an empty exec id means the container's init (SIGKILL to it ends every
    /// process of the container: they share its PID namespace).
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), ContainerError> {
        let signal_no = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=libc::SIGRTMAX()).contains(s))
            .ok_or(ContainerError::BadSignal(signal))?;
        let process = self.get(id)?.process(exec_id)?;
        process.signal(signal_no).map_err(ContainerError::Signal)
    }

    /// `WaitProcess`: the exit status.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let container = self.get(id)?;
        let process = container.process(exec_id)?;
        let status = process.wait().await;
        self.forget_finished_exec(&container, exec_id);
        Ok(status)
    }

    /// Drops an exec process that has exited and whose output was read to the end.
    fn forget_finished_exec(&self, container: &Container, exec_id: &str) {
        if exec_id.is_empty() || exec_id == container.init_exec_id {
            return;
        }
        let mut execs = container.execs();
        if execs.get(exec_id).is_some_and(|p| p.is_finished()) {
            execs.remove(exec_id);
        }
    }

    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, ContainerError> {
        let process = self.get(id)?.process(exec_id)?;
        Ok(process.write_stdin(data).await?)
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.get(id)?.process(exec_id)?.close_stdin().await;
        Ok(())
    }

    /// `TtyWinResize`: the window size of the process's terminal.
    pub fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), ContainerError> {
        let process = self.get(id)?.process(exec_id)?;
        let master = process.terminal().ok_or(ContainerError::NoTerminal)?;
        let (Ok(r), Ok(c)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(ContainerError::BadWindowSize { rows, columns });
        };
        tty::set_window_size(master, r, c).map_err(ContainerError::Resize)
    }

    /// `StatsContainer`: the container's cgroup statistics.
    pub fn stats(&self, id: &str) -> Result<podvm_protocols::agent::CgroupStats, ContainerError> {
        let container = self.get(id)?;
        let cgroup = container
            .cgroup
            .as_ref()
            .ok_or_else(|| ContainerError::NoCgroup(self.config.cgroup_root.clone()))?;
        Ok(stats::read_cgroup(cgroup.dir())?)
    }

    /// `ReadStdout`: up to `len` bytes, waiting for some; [`ContainerError::Eof`] at the end.
    pub async fn read_stdout(
        &self,
        id: &str,
        exec_id: &str,
        len: usize,
    ) -> Result<Vec<u8>, ContainerError> {
        let process = self.get(id)?.process(exec_id)?;
        process
            .read_stdout(len)
            .await
            .map_err(|_| ContainerError::Eof)
    }

    /// `ReadStderr`: as [`Containers::read_stdout`]; at EOF at once for a process with a terminal
    /// (its stderr is the terminal, read by `ReadStdout`).
    pub async fn read_stderr(
        &self,
        id: &str,
        exec_id: &str,
        len: usize,
    ) -> Result<Vec<u8>, ContainerError> {
        let process = self.get(id)?.process(exec_id)?;
        process
            .read_stderr(len)
            .await
            .map_err(|_| ContainerError::Eof)
    }

    /// `RemoveContainer`: waits up to `timeout` seconds (0: for ever) for the container's init to
    /// end, then kills it (and so every process in its PID namespace), and frees the cgroup, the
    /// state directory and the registered image.
    pub async fn remove(&self, id: &str, timeout: u32) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        {
            // The namespace ends with its first init: later containers start a new one.
            let mut shared = self.sandbox_pidns.lock().unwrap_or_else(|e| e.into_inner());
            if shared.as_ref().is_some_and(|(owner, _)| owner == id) {
                *shared = None;
            }
        }
        let mut phase = container.phase.lock().await;
        if *phase == Phase::Removed {
            return Err(ContainerError::NoSuchContainer);
        }
        let init = &container.init;
        if !init.was_started().await {
            init.abandon().await;
        } else if init.exit_status().is_none() && timeout > 0 {
            let _ = tokio::time::timeout(Duration::from_secs(timeout.into()), init.wait()).await;
        } else if init.exit_status().is_none() {
            init.wait().await;
        }
        let _ = init.signal(libc::SIGKILL);
        let execs: Vec<Arc<Process>> = container.execs().values().cloned().collect();
        for process in execs.iter() {
            let _ = process.signal(libc::SIGKILL);
        }
        let all_ended = async {
            init.wait().await;
            for process in &execs {
                process.wait().await;
            }
        };
        tokio::time::timeout(KILL_GRACE, all_ended)
            .await
            .map_err(|_| ContainerError::KillTimeout)?;
        if let Some(cgroup) = &container.cgroup {
            cgroup.remove().await?;
        }
        remove_bundle(&container.bundle);
        *phase = Phase::Removed;
        drop(phase);
        self.slots().remove(id);
        self.images().remove(id);
        tracing::info!(container = id, "container removed");
        Ok(())
    }
}

/// Removes a state directory. Only empty directories are removed (never recursively): were a
/// mount of the container visible here by mistake, the image below it stays untouched.
fn remove_bundle(bundle: &Path) {
    for dir in [
        bundle.join("rootfs"),
        bundle.join("scratch"),
        bundle.to_path_buf(),
    ] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "state directory left behind")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_components() {
        assert!(check_id("container id", "c0ffee01-web_1.x").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_id("container id", bad).is_err(), "{bad:?}");
        }
    }
}
