//! The containerd task service (runtime v2 `Task` API) over one pod VM per shim.
//!
//! - `Create`: reads the configuration (the runtime's `ConfigPath`, see [`crate::config`]),
//!   mounts containerd's rootfs on the bundle, turns it into a read-only ext4 disk
//!   ([`crate::rootfs`]), starts the VM with that disk as `/dev/vda` and waits for its agent;
//! - `Start`: `CreateContainer` (the disk as a `Storage`, `OCI.Root.Path` its mount point) and
//!   `StartContainer`; for an exec, `ExecProcess`. Each process's stdout/stderr are copied from
//!   the agent to containerd's FIFOs, its stdin FIFO to the agent (closed at the FIFO's EOF); a
//!   waiter takes the exit status from `WaitProcess` and publishes `TaskExit`;
//! - `Exec`, `ResizePty`, `CloseIO`, `State`, `Wait`, `Kill` (`SignalProcess`), `Pids`,
//!   `Stats` (the container's cgroup in the guest, as cgroup v1 metrics), `Connect`;
//! - `Delete`: `RemoveContainer`, the VM stopped (its state directory goes with it), the disk
//!   image removed; `Shutdown` ends the shim once no container is left.
//!
//! The VMM's death (a crash, an OOM kill, someone killing QEMU) ends every process of the pod
//! with status 137 and a `TaskExit` each; the VM's helpers and state go at once.
//!
//! Update, Pause/Resume and Checkpoint answer UNIMPLEMENTED (the trait's defaults). The pid
//! reported for every process is the VMM's host pid (the guest's pids are not the host's).

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use podvm_host_runtime::agent_client::AgentClient;
use podvm_host_runtime::guest_image::GuestImage;
use podvm_host_runtime::hypervisor::Machine;
use podvm_host_runtime::launch::TeeMode;
use podvm_host_runtime::vm::{Vm, VmConfig};
use podvm_protocols::agent::ExecProcessRequest as AgentExec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, watch};

use crate::config::ShimConfig;
use crate::{confidential, metrics, rootfs, spec};

/// The rootfs disk as the guest sees it: the VM's first (and only) virtio-blk disk.
const ROOTFS_DISK: &str = "/dev/vda";
/// How much output one `ReadStdout`/`ReadStderr` asks for, and one `WriteStdin` carries.
const CHUNK: usize = 64 * 1024;
/// The status of a process whose VM died (as if SIGKILLed).
const VM_DIED_STATUS: u32 = 137;
/// How long the agent's connection may break before the VMM's exit is seen.
const DEAD_VM_DRAIN: Duration = Duration::from_secs(2);
/// How long `CloseIO` waits for the stdin copy to reach the FIFO's EOF by itself.
const STDIN_DRAIN: Duration = Duration::from_secs(5);
/// How long a process's exit waits for its output copies to finish.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// How a process ended.
#[derive(Debug, Clone)]
struct Exit {
    status: u32,
    at: Timestamp,
}

/// One process: a container's init (exec id "") or an exec.
struct Process {
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// An exec's agent request, until `Start` runs it.
    exec: Option<AgentExec>,
    status: Status,
    exit: watch::Receiver<Option<Exit>>,
    /// Whoever takes it reports the exit (the waiter, `Kill` before start, the VM watcher).
    exit_tx: Option<watch::Sender<Option<Exit>>>,
    /// The copy of containerd's stdin FIFO to the process (it closes the process's stdin at
    /// the FIFO's EOF).
    stdin_copy: Option<tokio::task::JoinHandle<()>>,
    /// A terminal size asked for before the process started (rows, columns): applied at start.
    pending_size: Option<(u32, u32)>,
}

impl Process {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Process {
        let (exit_tx, exit) = watch::channel(None);
        Process {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal,
            exec: None,
            status: Status::CREATED,
            exit,
            exit_tx: Some(exit_tx),
            stdin_copy: None,
            pending_size: None,
        }
    }

    fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }
}

/// Where a container's root filesystem is in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootSource {
    /// The VM's rootfs disk: the pod's first container.
    Disk,
    /// Copied in with `CopyFile`: a container that joined the running pod.
    Copied,
    /// Pulled, verified, decrypted and unpacked inside the guest (confidential pods).
    Pulled,
}

/// One container: its bundle and processes.
struct Container {
    bundle: PathBuf,
    /// The bundle's `config.json`, read once at Create.
    config_json: Vec<u8>,
    root: RootSource,
    processes: BTreeMap<String, Process>,
}

/// The pod: its VM and containers.
#[derive(Default)]
struct Pod {
    vm: Option<Vm>,
    vmm_pid: u32,
    /// The CRI sandbox this pod VM serves (containers of that sandbox join the VM).
    sandbox_id: Option<String>,
    /// A confidential pod (its containers' images are pulled in the guest).
    confidential: Option<confidential::ConfidentialPod>,
    /// Becomes true when the VMM process is gone.
    vm_dead: Option<watch::Receiver<bool>>,
    containers: BTreeMap<String, Container>,
}

impl Pod {
    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<&Process> {
        self.containers
            .get(id)
            .and_then(|c| c.processes.get(exec_id))
            .ok_or_else(|| not_found(id, exec_id))
    }

    fn process_mut(&mut self, id: &str, exec_id: &str) -> TtrpcResult<&mut Process> {
        self.containers
            .get_mut(id)
            .and_then(|c| c.processes.get_mut(exec_id))
            .ok_or_else(|| not_found(id, exec_id))
    }

    fn agent(&self) -> TtrpcResult<AgentClient> {
        self.vm
            .as_ref()
            .map(|vm| vm.agent().clone())
            .ok_or_else(|| {
                err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "podvm: the pod's VM is not running (it died or was stopped)",
                )
            })
    }
}

/// The shim's task service.
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    pod: Arc<Mutex<Pod>>,
}

fn err(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Error {
    let message = message.into();
    log::warn!("{message}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ttrpc::Error {
    err(ttrpc::Code::INTERNAL, format!("{what}: {e:#}"))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        err(ttrpc::Code::NOT_FOUND, format!("task {id} not found"))
    } else {
        err(
            ttrpc::Code::NOT_FOUND,
            format!("exec {exec_id} of task {id} not found"),
        )
    }
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// The agent's name of a process: a container's init process carries the container's id.
fn agent_exec_id(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_string()
    } else {
        exec_id.to_string()
    }
}

/// The `ConfigPath` of containerd's runtime options (`runtimeoptions.v1.Options`, field 2), which
/// the CRI plugin (and `ctr run --runtime-config-path`) pass to every non-runc runtime.
fn config_path_from_options(options: Option<&Any>) -> Option<PathBuf> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        match (tag >> 3, tag & 7) {
            (2, 2) => {
                return input
                    .read_string()
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from);
            }
            (_, 2) => {
                input.read_bytes().ok()?;
            }
            (_, 0) => {
                input.read_raw_varint64().ok()?;
            }
            _ => return None,
        }
    }
    None
}

/// Waits until process `pid` has exited (a pidfd becomes readable then; the process need not be
/// our child, and it is not reaped here).
async fn process_gone(pid: u32) -> std::io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        // ESRCH: it is already gone.
        return if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd stays open and unchanged for as long as the AsyncFd owns it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)?;
    let _ = fd.readable().await?;
    Ok(())
}

async fn publish(
    publisher: &RemotePublisher,
    namespace: &str,
    topic: &str,
    event: Box<dyn MessageDyn>,
) {
    let ctx = ttrpc::context::with_timeout(0);
    if let Err(e) = publisher.publish(ctx, topic, namespace, event).await {
        log::warn!("cannot publish {topic}: {e}");
    }
}

/// Opens where containerd wants a process's output: a FIFO (opened read-write, as runc's shim
/// does, so the open never waits for a reader and a client that goes away does not break the
/// stream), or a `file://` log URI (appended to).
fn open_output(target: &str) -> std::io::Result<std::fs::File> {
    if let Some(path) = target.strip_prefix("file://") {
        return std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
    }
    if target.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "only FIFOs and file:// log URIs are supported",
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
}

/// Copies one output stream of a process from the agent to containerd's FIFO.
async fn copy_output(agent: AgentClient, id: String, exec: String, stderr: bool, fifo: String) {
    if fifo.is_empty() {
        return;
    }
    let mut out = match open_output(&fifo) {
        Ok(file) => tokio::fs::File::from_std(file),
        Err(e) => return log::warn!("cannot open {fifo}: {e}"),
    };
    loop {
        match agent.read_stream(&id, &exec, stderr, CHUNK as u32).await {
            Ok(Some(data)) => {
                if let Err(e) = out.write_all(&data).await {
                    log::warn!("writing to {fifo}: {e}");
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::info!("output of {id}/{exec} ended: {e}");
                break;
            }
        }
    }
    let _ = out.flush().await;
}

/// Copies containerd's stdin FIFO to a process; the FIFO's EOF closes the process's stdin.
async fn copy_stdin(agent: AgentClient, id: String, exec: String, fifo: String) {
    if fifo.is_empty() {
        return;
    }
    // Opening for reading blocks until a writer (containerd's client) has it open.
    let opened = tokio::task::spawn_blocking({
        let fifo = fifo.clone();
        move || std::fs::File::open(fifo)
    })
    .await;
    let mut input = match opened {
        Ok(Ok(file)) => tokio::fs::File::from_std(file),
        Ok(Err(e)) => return log::warn!("cannot open {fifo}: {e}"),
        Err(e) => return log::warn!("cannot open {fifo}: {e}"),
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                log::warn!("reading {fifo}: {e}");
                break;
            }
        };
        let mut sent = 0;
        while sent < n {
            match agent.write_stdin(&id, &exec, &buf[sent..n]).await {
                Ok(taken) => sent += taken.max(1),
                Err(e) => {
                    log::info!("stdin of {id}/{exec} ended: {e}");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(&id, &exec).await {
        log::info!("closing stdin of {id}/{exec}: {e}");
    }
}

/// What a process's waiter needs.
struct Waiter {
    pod: Arc<Mutex<Pod>>,
    publisher: Arc<RemotePublisher>,
    namespace: String,
    agent: AgentClient,
    vm_dead: watch::Receiver<bool>,
    id: String,
    exec_id: String,
    pid: u32,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl Waiter {
    /// Starts the process's stdio copies and waits for its exit, then reports it. Returns the
    /// stdin copy.
    fn spawn(
        self,
        stdin: String,
        stdout: String,
        stderr: String,
        terminal: bool,
    ) -> tokio::task::JoinHandle<()> {
        let exec = agent_exec_id(&self.id, &self.exec_id);
        let mut outputs = vec![tokio::spawn(copy_output(
            self.agent.clone(),
            self.id.clone(),
            exec.clone(),
            false,
            stdout,
        ))];
        // A terminal has one output stream.
        if !terminal {
            outputs.push(tokio::spawn(copy_output(
                self.agent.clone(),
                self.id.clone(),
                exec.clone(),
                true,
                stderr,
            )));
        }
        let stdin_copy = tokio::spawn(copy_stdin(
            self.agent.clone(),
            self.id.clone(),
            exec.clone(),
            stdin,
        ));
        tokio::spawn(async move {
            let mut vm_dead = self.vm_dead.clone();
            let status = tokio::select! {
                r = self.agent.wait_process(&self.id, &exec) => match r {
                    Ok(status) => status as u32,
                    Err(e) => {
                        // The agent's connection may break before the VMM's exit is seen.
                        let mut watch = self.vm_dead.clone();
                        let dead = tokio::time::timeout(DEAD_VM_DRAIN, async move {
                            watch.wait_for(|dead| *dead).await.is_ok()
                        })
                        .await
                        .unwrap_or(false);
                        if dead {
                            VM_DIED_STATUS
                        } else {
                            log::warn!("waiting for {}/{exec}: {e}", self.id);
                            255
                        }
                    }
                },
                // (A closed channel means nobody watches: wait for the agent alone.)
                _ = async {
                    if vm_dead.wait_for(|dead| *dead).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => VM_DIED_STATUS,
            };
            // The output usually reaches containerd before the exit does; but the exit is not
            // held back by a client that does not read (containerd's clients wait for their
            // FIFOs' EOF themselves before they delete the task).
            for output in outputs {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, output).await;
            }
            let exit = Exit { status, at: now() };
            if let Ok(p) = self.pod.lock().await.process_mut(&self.id, &self.exec_id) {
                p.status = Status::STOPPED;
            }
            let _ = self.exit_tx.send(Some(exit.clone()));
            publish(
                &self.publisher,
                &self.namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(exit_event(&self.id, &self.exec_id, self.pid, &exit)),
            )
            .await;
        });
        stdin_copy
    }
}

fn exit_event(id: &str, exec_id: &str, pid: u32, exit: &Exit) -> TaskExit {
    TaskExit {
        container_id: id.to_string(),
        id: agent_exec_id(id, exec_id),
        pid,
        exit_status: exit.status,
        exited_at: Some(exit.at.clone()).into(),
        ..Default::default()
    }
}

/// Mounts a joining container's rootfs on its bundle and copies it into the pod VM.
async fn join_pod(agent: &AgentClient, req: &CreateTaskRequest) -> anyhow::Result<rootfs::Copied> {
    let bundle = Path::new(&req.bundle);
    let mounted = rootfs::mount(bundle, &req.rootfs).await?;
    let copied = rootfs::copy_into_guest(
        agent,
        &bundle.join("rootfs"),
        &rootfs::guest_copied_rootfs(&req.id),
    )
    .await;
    if mounted {
        rootfs::unmount(bundle);
    }
    copied
}

impl TaskService {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            namespace,
            publisher: Arc::new(publisher),
            exit,
            pod: Arc::new(Mutex::new(Pod::default())),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event).await
    }

    /// Reads the configuration and boots the pod VM: with the container's rootfs as a disk
    /// (no TEE), or confidential (the image is pulled inside the guest).
    async fn start_vm(
        &self,
        req: &CreateTaskRequest,
        annotations: &BTreeMap<String, String>,
    ) -> anyhow::Result<(Vm, Option<confidential::ConfidentialPod>)> {
        let config_path = config_path_from_options(req.options.as_ref());
        let shim = ShimConfig::load(config_path.as_deref())?;
        let bundle = Path::new(&req.bundle);
        let resources = shim.pod_resources(annotations)?;
        let image = GuestImage::new(&shim.vm.guest_dir);
        let mut config = VmConfig::with_guest_image(&image);
        config.vcpus = resources.vcpus;
        config.memory_mib = resources.memory_mib;
        config.boot_timeout = shim.boot_timeout();
        config.shutdown_timeout = shim.stop_timeout();
        let backend = podvm_host_runtime::hypervisor::from_environment(shim.vm.hypervisor)?;
        match shim.tee_mode() {
            TeeMode::None => {}
            TeeMode::SnpEmulated => {
                let (vm, pod) =
                    confidential::start(&shim, config, annotations, backend.as_ref()).await?;
                confidential::pull(&vm, &pod, &req.id, annotations).await?;
                return Ok((vm, Some(pod)));
            }
            mode => anyhow::bail!(
                "tee.mode = {:?}: the hardware launch is not wired into the shim yet (this release launches \"none\" and \"snp-emulated\" pods)",
                mode.as_str()
            ),
        }

        let mounted = rootfs::mount(bundle, &req.rootfs).await?;
        let disk = bundle.join(rootfs::IMAGE_FILE);
        let tree = bundle.join("rootfs");
        let built = {
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || rootfs::build_image(&tree, &disk)).await?
        };
        if mounted {
            // The guest has its own copy now; containerd unmounts again on delete (a no-op).
            rootfs::unmount(bundle);
        }
        built?;
        let mut plan = Vm::plan(&config, backend.as_ref())?;
        // No initdata in non-confidential mode: the first disk slot carries the rootfs, which
        // the guest mounts as a `Storage` (the agent reads /dev/vda as initdata only when
        // `podvm.initdata=` is on the command line, and it is not).
        plan.spec.initdata_disk = Some(disk);
        Ok((
            Vm::start_planned(&config, plan, backend.as_ref()).await?,
            None,
        ))
    }

    /// Watches the VMM: when it is gone, marks the VM dead; if nobody stopped it on purpose, the
    /// processes that never started end with 137 (running ones end through their waiters) and
    /// the VM's helpers and state are removed.
    fn watch_vm(&self, vmm_pid: u32, dead_tx: watch::Sender<bool>) {
        let (pod, publisher, namespace) = (
            self.pod.clone(),
            self.publisher.clone(),
            self.namespace.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = process_gone(vmm_pid).await {
                return log::warn!("cannot watch the VMM (pid {vmm_pid}): {e}");
            }
            let _ = dead_tx.send(true);
            let mut guard = pod.lock().await;
            let Some(vm) = guard.vm.take() else {
                return; // stopped on purpose
            };
            log::warn!("the pod's VM died (VMM pid {vmm_pid}): ending its processes");
            let at = now();
            let mut events = Vec::new();
            for (id, container) in guard.containers.iter_mut() {
                for (exec_id, p) in container.processes.iter_mut() {
                    if p.status == Status::CREATED
                        && let Some(exit_tx) = p.exit_tx.take()
                    {
                        let exit = Exit {
                            status: VM_DIED_STATUS,
                            at: at.clone(),
                        };
                        p.status = Status::STOPPED;
                        let _ = exit_tx.send(Some(exit.clone()));
                        events.push(exit_event(id, exec_id, vmm_pid, &exit));
                    }
                }
            }
            drop(guard);
            // Kills the helpers (vsock backend) and removes the state directory.
            let _ = tokio::task::spawn_blocking(move || drop(vm)).await;
            for event in events {
                publish(
                    &publisher,
                    &namespace,
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(event),
                )
                .await;
            }
        });
    }

    /// Starts a created process: its stdio, its waiter.
    fn start_process(
        &self,
        pod: &mut Pod,
        id: &str,
        exec_id: &str,
        agent: AgentClient,
    ) -> TtrpcResult<u32> {
        let (pid, vm_dead) = (
            pod.vmm_pid,
            pod.vm_dead.clone().expect("a pod with a VM is watched"),
        );
        let p = pod.process_mut(id, exec_id)?;
        p.status = Status::RUNNING;
        let exit_tx = p.exit_tx.take().ok_or_else(|| {
            err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("{id}/{exec_id} has already ended"),
            )
        })?;
        let stdin_copy = Waiter {
            pod: self.pod.clone(),
            publisher: self.publisher.clone(),
            namespace: self.namespace.clone(),
            agent,
            vm_dead,
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            exit_tx,
        }
        .spawn(
            p.stdin.clone(),
            p.stdout.clone(),
            p.stderr.clone(),
            p.terminal,
        );
        p.stdin_copy = Some(stdin_copy);
        Ok(pid)
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        if !req.checkpoint.is_empty() {
            return Err(err(
                ttrpc::Code::UNIMPLEMENTED,
                "podvm: restoring a checkpoint is not supported",
            ));
        }
        let config_json = std::fs::read(Path::new(&req.bundle).join("config.json"))
            .map_err(|e| internal("podvm: reading the bundle's config.json", e))?;
        let annotations = spec::annotations(&config_json)
            .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("podvm: {e:#}")))?;
        let sandbox_id = annotations.get(spec::CRI_SANDBOX_ID).cloned();
        let mut pod = self.pod.lock().await;
        let pid = if pod.containers.is_empty() && pod.vm.is_none() {
            let (vm, confidential) = self.start_vm(&req, &annotations).await.map_err(|e| {
                let _ = std::fs::remove_file(Path::new(&req.bundle).join(rootfs::IMAGE_FILE));
                internal(&format!("podvm: starting the VM for {}", req.id), e)
            })?;
            let pid = vm.pids().first().copied().unwrap_or(0);
            let (dead_tx, vm_dead) = watch::channel(false);
            pod.vm = Some(vm);
            pod.vmm_pid = pid;
            pod.vm_dead = Some(vm_dead);
            pod.sandbox_id = sandbox_id;
            let root = if confidential.is_some() {
                RootSource::Pulled
            } else {
                RootSource::Disk
            };
            pod.confidential = confidential;
            self.watch_vm(pid, dead_tx);
            pod.containers.insert(
                req.id.clone(),
                Container {
                    bundle: PathBuf::from(&req.bundle),
                    config_json: config_json.clone(),
                    root,
                    processes: BTreeMap::new(),
                },
            );
            pid
        } else {
            // A container of the same CRI sandbox joins the running pod VM.
            if sandbox_id.is_none() || sandbox_id != pod.sandbox_id {
                return Err(err(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!(
                        "podvm: this shim runs the pod VM of sandbox {:?}; {} belongs to {sandbox_id:?}",
                        pod.sandbox_id, req.id
                    ),
                ));
            }
            if pod.containers.contains_key(&req.id) {
                return Err(err(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!("task {} exists already", req.id),
                ));
            }
            let vm = pod.vm.as_ref().ok_or_else(|| {
                err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "podvm: the pod's VM is not running (it died or was stopped)",
                )
            })?;
            let root = if let Some(confidential) = &pod.confidential {
                // Confidential: never the host's copy; the guest pulls the image itself.
                confidential::pull(vm, confidential, &req.id, &annotations)
                    .await
                    .map_err(|e| internal(&format!("podvm: pulling the image of {}", req.id), e))?;
                RootSource::Pulled
            } else {
                let copied = join_pod(vm.agent(), &req).await.map_err(|e| {
                    internal(&format!("podvm: copying the rootfs of {}", req.id), e)
                })?;
                log::info!(
                    "{} joins the pod VM: {} entries, {} bytes copied in ({} special files skipped)",
                    req.id,
                    copied.entries,
                    copied.bytes,
                    copied.skipped
                );
                RootSource::Copied
            };
            pod.containers.insert(
                req.id.clone(),
                Container {
                    bundle: PathBuf::from(&req.bundle),
                    config_json: config_json.clone(),
                    root,
                    processes: BTreeMap::new(),
                },
            );
            pod.vmm_pid
        };
        pod.containers
            .get_mut(&req.id)
            .expect("inserted")
            .processes
            .insert(
                String::new(),
                Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            );
        drop(pod);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut pod = self.pod.lock().await;
        let agent = pod.agent()?;
        let p = pod.process(&req.id, &req.exec_id)?;
        if p.status != Status::CREATED {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("{} {} is not in the created state", req.id, req.exec_id),
            ));
        }
        if req.exec_id.is_empty() {
            let vm = pod.vm.as_ref().expect("agent() checked");
            let driver = match vm.spec().machine {
                Machine::Microvm => "mmioblk",
                Machine::Q35 => "blk",
            };
            let container = &pod.containers[&req.id];
            let root = match container.root {
                RootSource::Disk => spec::GuestRoot::Disk {
                    disk: ROOTFS_DISK,
                    driver,
                },
                RootSource::Copied => spec::GuestRoot::Copied,
                RootSource::Pulled => spec::GuestRoot::Pulled,
            };
            let request = spec::create_container_request(&req.id, &container.config_json, root)
                .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("podvm: {e:#}")))?;
            agent
                .create_container(&request)
                .await
                .map_err(|e| internal("podvm", e))?;
            agent
                .start_container(&req.id)
                .await
                .map_err(|e| internal("podvm", e))?;
        } else {
            let request = p.exec.clone().expect("an exec has its request");
            agent
                .exec_process(&request)
                .await
                .map_err(|e| internal("podvm", e))?;
        }
        let pending_size = pod.process(&req.id, &req.exec_id)?.pending_size;
        let pid = self.start_process(&mut pod, &req.id, &req.exec_id, agent.clone())?;
        drop(pod);
        if let Some((rows, columns)) = pending_size {
            let exec = agent_exec_id(&req.id, &req.exec_id);
            if let Err(e) = agent.tty_win_resize(&req.id, &exec, rows, columns).await {
                log::info!("resizing the terminal of {}/{exec}: {e}", req.id);
            }
        }
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let mut pod = self.pod.lock().await;
        pod.agent()?;
        if pod.process(&req.id, "")?.status != Status::RUNNING {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {} is not running: cannot exec in it", req.id),
            ));
        }
        let container = pod.containers.get_mut(&req.id).expect("checked");
        if req.exec_id.is_empty() || container.processes.contains_key(&req.exec_id) {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {:?} of task {} exists already", req.exec_id, req.id),
            ));
        }
        let spec_json = req.spec.as_ref().map(|a| a.value.as_slice()).unwrap_or(b"");
        let mut request = spec::exec_process_request(&req.id, &req.exec_id, spec_json)
            .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("podvm: {e:#}")))?;
        if let Some(process) = request.process.as_mut() {
            process.Terminal = req.terminal;
        }
        let mut process = Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        process.exec = Some(request);
        container.processes.insert(req.exec_id.clone(), process);
        drop(pod);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let agent = {
            let mut pod = self.pod.lock().await;
            let agent = pod.agent()?;
            let p = pod.process_mut(&req.id, &req.exec_id)?;
            if !p.terminal {
                return Err(err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("{} {} has no terminal", req.id, req.exec_id),
                ));
            }
            if p.status == Status::CREATED {
                // Not in the guest yet (containerd's clients resize before Start): the size
                // is applied when the process starts.
                p.pending_size = Some((req.height, req.width));
                return Ok(Empty::new());
            }
            agent
        };
        agent
            .tty_win_resize(
                &req.id,
                &agent_exec_id(&req.id, &req.exec_id),
                req.height,
                req.width,
            )
            .await
            .map_err(|e| internal("podvm", e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if !req.stdin {
            return Ok(Empty::new());
        }
        let (agent, stdin_copy) = {
            let mut pod = self.pod.lock().await;
            let agent = pod.agent()?;
            let p = pod.process_mut(&req.id, &req.exec_id)?;
            (agent, p.stdin_copy.take())
        };
        // A client closes its end of the stdin FIFO before CloseIO: what it wrote is still on
        // its way through the copy, which closes the process's stdin at the FIFO's EOF. Closing
        // it here first would cut that data off.
        if let Some(copy) = stdin_copy
            && tokio::time::timeout(STDIN_DRAIN, copy).await.is_ok()
        {
            return Ok(Empty::new());
        }
        {
            agent
                .close_stdin(&req.id, &agent_exec_id(&req.id, &req.exec_id))
                .await
                .map_err(|e| internal("podvm", e))?;
        }
        Ok(Empty::new())
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let pod = self.pod.lock().await;
        let p = pod.process(&req.id, &req.exec_id)?;
        let exit = p.exit();
        Ok(StateResponse {
            id: agent_exec_id(&req.id, &req.exec_id),
            bundle: pod.containers[&req.id].bundle.display().to_string(),
            pid: pod.vmm_pid,
            status: p.status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut exit = self
            .pod
            .lock()
            .await
            .process(&req.id, &req.exec_id)?
            .exit
            .clone();
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                err(
                    ttrpc::Code::NOT_FOUND,
                    format!("{} {} was deleted", req.id, req.exec_id),
                )
            })?
            .clone()
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let mut pod = self.pod.lock().await;
        let pid = pod.vmm_pid;
        let p = pod.process_mut(&req.id, &req.exec_id)?;
        match p.status {
            Status::CREATED => {
                // Nothing runs in the guest yet: the process ends here, as if killed.
                let exit = Exit {
                    status: 128 + req.signal,
                    at: now(),
                };
                p.status = Status::STOPPED;
                if let Some(exit_tx) = p.exit_tx.take() {
                    let _ = exit_tx.send(Some(exit.clone()));
                }
                let event = exit_event(&req.id, &req.exec_id, pid, &exit);
                drop(pod);
                self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
                    .await;
                Ok(Empty::new())
            }
            Status::RUNNING => {
                let agent = pod.agent()?;
                drop(pod);
                // `all`: every process of the container (the agent's empty exec id).
                let exec = if req.all && req.exec_id.is_empty() {
                    String::new()
                } else {
                    agent_exec_id(&req.id, &req.exec_id)
                };
                agent
                    .signal_process(&req.id, &exec, req.signal)
                    .await
                    .map_err(|e| internal("podvm", e))?;
                Ok(Empty::new())
            }
            _ => Err(err(
                ttrpc::Code::NOT_FOUND,
                format!("{} {}: process already finished", req.id, req.exec_id),
            )),
        }
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let mut pod = self.pod.lock().await;
        let pid = pod.vmm_pid;
        if !req.exec_id.is_empty() {
            let p = pod.process(&req.id, &req.exec_id)?;
            if p.status == Status::RUNNING {
                return Err(err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("exec {} of {} is still running", req.exec_id, req.id),
                ));
            }
            let exit = p.exit().unwrap_or(Exit {
                status: 0,
                at: now(),
            });
            pod.containers
                .get_mut(&req.id)
                .expect("checked")
                .processes
                .remove(&req.exec_id);
            return Ok(DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            });
        }
        let container = pod
            .containers
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        let init = &container.processes[""];
        if init.status == Status::RUNNING {
            // containerd kills first; if not, the VM stop ends it.
            log::warn!("deleting task {} while it runs", req.id);
        }
        let started = init.status != Status::CREATED;
        let exit = init.exit().unwrap_or(Exit {
            status: VM_DIED_STATUS,
            at: now(),
        });
        let last = pod.containers.is_empty();
        let agent = pod.agent().ok();
        let vm = if last { pod.vm.take() } else { None };
        drop(pod);
        if !last
            && started
            && let Some(agent) = agent
            && let Err(e) = agent.remove_container(&req.id).await
        {
            log::info!("RemoveContainer {}: {e}", req.id);
        }
        if let Some(vm) = vm {
            if started && let Err(e) = vm.agent().remove_container(&req.id).await {
                log::info!("RemoveContainer {}: {e}", req.id);
            }
            let report = vm.stop().await;
            log::info!(
                "VM of {} stopped (graceful: {}, {:.0} ms)",
                req.id,
                report.graceful,
                report.stop_ms
            );
        }
        let _ = std::fs::remove_file(container.bundle.join(rootfs::IMAGE_FILE));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.at.clone()).into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pod = self.pod.lock().await;
        pod.process(&req.id, "")?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: pod.vmm_pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let agent = {
            let pod = self.pod.lock().await;
            pod.process(&req.id, "")?;
            pod.agent()?
        };
        let stats = agent
            .stats_container(&req.id)
            .await
            .map_err(|e| internal("podvm", e))?;
        Ok(StatsResponse {
            stats: Some(metrics::to_any(&metrics::from_agent(&stats))).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pod.lock().await.vmm_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.pod.lock().await.containers.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_comes_from_runtimeoptions() {
        // runtimeoptions.v1.Options { type_url = "x" (1), config_path = "/etc/podvm/c.toml" (2) }
        let mut value = vec![0x0a, 1, b'x', 0x12, 17];
        value.extend_from_slice(b"/etc/podvm/c.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path_from_options(Some(&any)),
            Some(PathBuf::from("/etc/podvm/c.toml"))
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..any.clone()
        };
        assert_eq!(config_path_from_options(Some(&other)), None);
        assert_eq!(config_path_from_options(None), None);
    }

    #[tokio::test]
    async fn process_gone_sees_a_process_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        tokio::time::timeout(Duration::from_secs(10), process_gone(pid))
            .await
            .expect("the exit is seen")
            .unwrap();
        child.wait().unwrap();
    }
}
