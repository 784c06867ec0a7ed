//! The containerd task service (runtime v2 `Task` API) over one pod VM per task.
//!
//! - `Create`: mounts containerd's rootfs on the bundle, turns it into a read-only ext4 disk
//!   ([`crate::rootfs`]), starts the VM with that disk as `/dev/vda` and waits for its agent;
//! - `Start`: `CreateContainer` (the disk as a `Storage`, `OCI.Root.Path` its mount point) and
//!   `StartContainer`; stdout/stderr are copied from the agent to containerd's FIFOs; a waiter
//!   takes the exit status from `WaitProcess` and publishes `TaskExit`;
//! - `State`, `Wait`, `Kill` (`SignalProcess`), `Pids`, `Connect`;
//! - `Delete`: `RemoveContainer`, the VM stopped (its state directory goes with it), the disk
//!   image removed; `Shutdown` ends the shim once no task is left.
//!
//! Exec, ResizePty, CloseIO, Stats, Update, Pause/Resume and Checkpoint answer UNIMPLEMENTED
//! (the trait's defaults), and so does a task with a terminal. The pid reported for the task is
//! the VMM's host pid (the guest's pids are not the host's).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use podvm_host_runtime::agent_client::AgentClient;
use podvm_host_runtime::guest_image::GuestImage;
use podvm_host_runtime::hypervisor::Machine;
use podvm_host_runtime::hypervisor::qemu::QemuBackend;
use podvm_host_runtime::vm::{Vm, VmConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, watch};

use crate::config::ShimConfig;
use crate::{rootfs, spec};

/// The rootfs disk as the guest sees it: the VM's first (and only) virtio-blk disk.
const ROOTFS_DISK: &str = "/dev/vda";
/// How much output one `ReadStdout`/`ReadStderr` asks for.
const READ_CHUNK: u32 = 64 * 1024;

/// How a task's process ended.
#[derive(Debug, Clone)]
struct Exit {
    status: u32,
    at: Timestamp,
}

/// One task: its VM and what containerd told about it.
struct TaskState {
    id: String,
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    vm: Option<Vm>,
    pid: u32,
    status: Status,
    exit: watch::Receiver<Option<Exit>>,
    exit_tx: Option<watch::Sender<Option<Exit>>>,
}

/// The shim's task service.
pub struct TaskService {
    namespace: String,
    /// The configuration, or why it could not be read.
    config: Result<ShimConfig, String>,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    task: Arc<Mutex<Option<TaskState>>>,
}

fn err(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Error {
    let message = message.into();
    log::warn!("{message}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ttrpc::Error {
    err(ttrpc::Code::INTERNAL, format!("{what}: {e:#}"))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl TaskService {
    pub fn new(
        namespace: String,
        config: Result<ShimConfig, String>,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            namespace,
            config,
            publisher: Arc::new(publisher),
            exit,
            task: Arc::new(Mutex::new(None)),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event).await
    }

    fn vm_config(&self) -> anyhow::Result<VmConfig> {
        let shim = self.config.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let image = GuestImage::new(&shim.vm.guest_dir);
        let mut config = VmConfig::with_guest_image(&image);
        config.vcpus = shim.vm.vcpus;
        config.memory_mib = shim.vm.memory_mib;
        config.boot_timeout = shim.boot_timeout();
        Ok(config)
    }

    /// Builds the rootfs disk and boots the VM with it.
    async fn start_vm(&self, req: &CreateTaskRequest) -> anyhow::Result<Vm> {
        let config = self.vm_config()?;
        let bundle = Path::new(&req.bundle);
        let mounted = rootfs::mount(bundle, &req.rootfs).await?;
        let image = bundle.join(rootfs::IMAGE_FILE);
        let tree = bundle.join("rootfs");
        let built = {
            let image = image.clone();
            tokio::task::spawn_blocking(move || rootfs::build_image(&tree, &image)).await?
        };
        if mounted {
            // The guest has its own copy now; containerd unmounts again on delete (a no-op).
            rootfs::unmount(bundle);
        }
        built?;
        let backend = QemuBackend::from_environment()?;
        let mut plan = Vm::plan(&config, &backend)?;
        // No initdata in non-confidential mode: the first disk slot carries the rootfs, which
        // the guest mounts as a `Storage` (the agent reads /dev/vda as initdata only when
        // `podvm.initdata=` is on the command line, and it is not).
        plan.spec.initdata_disk = Some(image);
        Ok(Vm::start_planned(&config, plan, &backend).await?)
    }
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

/// Copies one output stream of the container from the agent to containerd's FIFO.
async fn copy_stream(agent: AgentClient, id: String, stderr: bool, fifo: String) {
    if fifo.is_empty() {
        return;
    }
    // Opening a FIFO for writing blocks until its reader (containerd's client) is there.
    let opened = tokio::task::spawn_blocking({
        let fifo = fifo.clone();
        move || std::fs::OpenOptions::new().write(true).open(fifo)
    })
    .await;
    let mut out = match opened {
        Ok(Ok(file)) => tokio::fs::File::from_std(file),
        Ok(Err(e)) => return log::warn!("cannot open {fifo}: {e}"),
        Err(e) => return log::warn!("cannot open {fifo}: {e}"),
    };
    loop {
        match agent.read_stream(&id, &id, stderr, READ_CHUNK).await {
            Ok(Some(data)) => {
                if let Err(e) = out.write_all(&data).await {
                    log::warn!("writing to {fifo}: {e}");
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!("reading the container's output: {e}");
                break;
            }
        }
    }
    let _ = out.flush().await;
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        if req.terminal {
            return Err(err(
                ttrpc::Code::UNIMPLEMENTED,
                "podvm: a terminal (ctr run -t) is not supported yet",
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(err(
                ttrpc::Code::UNIMPLEMENTED,
                "podvm: restoring a checkpoint is not supported",
            ));
        }
        let mut task = self.task.lock().await;
        if task.is_some() {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                "podvm: this shim already runs a task (one task per VM)",
            ));
        }
        let vm = self.start_vm(&req).await.map_err(|e| {
            let _ = std::fs::remove_file(Path::new(&req.bundle).join(rootfs::IMAGE_FILE));
            internal(&format!("podvm: starting the VM for {}", req.id), e)
        })?;
        let pid = vm.pids().first().copied().unwrap_or(0);
        let (exit_tx, exit) = watch::channel(None);
        *task = Some(TaskState {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            vm: Some(vm),
            pid,
            status: Status::CREATED,
            exit,
            exit_tx: Some(exit_tx),
        });
        drop(task);
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
        if !req.exec_id.is_empty() {
            return Err(err(
                ttrpc::Code::UNIMPLEMENTED,
                "podvm: exec is not supported yet",
            ));
        }
        let mut guard = self.task.lock().await;
        let task = guard
            .as_mut()
            .filter(|t| t.id == req.id)
            .ok_or_else(|| err(ttrpc::Code::NOT_FOUND, format!("task {} not found", req.id)))?;
        if task.status != Status::CREATED {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {} is not in the created state", req.id),
            ));
        }
        let vm = task.vm.as_ref().expect("a created task has its VM");
        let driver = match vm.spec().machine {
            Machine::Microvm => "mmioblk",
            Machine::Q35 => "blk",
        };
        let config_json = std::fs::read(task.bundle.join("config.json"))
            .map_err(|e| internal("podvm: reading the bundle's config.json", e))?;
        let request = spec::create_container_request(&task.id, &config_json, ROOTFS_DISK, driver)
            .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("podvm: {e:#}")))?;
        let agent = vm.agent().clone();
        agent
            .create_container(&request)
            .await
            .map_err(|e| internal("podvm", e))?;
        agent
            .start_container(&task.id)
            .await
            .map_err(|e| internal("podvm", e))?;
        task.status = Status::RUNNING;
        let outputs = [
            tokio::spawn(copy_stream(
                agent.clone(),
                task.id.clone(),
                false,
                task.stdout.clone(),
            )),
            tokio::spawn(copy_stream(
                agent.clone(),
                task.id.clone(),
                true,
                task.stderr.clone(),
            )),
        ];
        let exit_tx = task.exit_tx.take().expect("started once");
        let (id, pid) = (task.id.clone(), task.pid);
        let (state, publisher, namespace) = (
            self.task.clone(),
            self.publisher.clone(),
            self.namespace.clone(),
        );
        drop(guard);
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        tokio::spawn(async move {
            let status = match agent.wait_process(&id, &id).await {
                Ok(status) => status as u32,
                Err(e) => {
                    log::warn!("waiting for {id}: {e}");
                    255
                }
            };
            // All output reaches containerd before the exit does.
            for output in outputs {
                let _ = output.await;
            }
            let exit = Exit { status, at: now() };
            if let Some(task) = state.lock().await.as_mut().filter(|t| t.id == id) {
                task.status = Status::STOPPED;
            }
            let _ = exit_tx.send(Some(exit.clone()));
            publish(
                &publisher,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id: id.clone(),
                    pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.at).into(),
                    ..Default::default()
                }),
            )
            .await;
        });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let guard = self.task.lock().await;
        let task = guard
            .as_ref()
            .filter(|t| t.id == req.id && req.exec_id.is_empty())
            .ok_or_else(|| err(ttrpc::Code::NOT_FOUND, format!("task {} not found", req.id)))?;
        let exit = task.exit.borrow().clone();
        Ok(StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.display().to_string(),
            pid: task.pid,
            status: task.status.into(),
            stdin: task.stdin.clone(),
            stdout: task.stdout.clone(),
            stderr: task.stderr.clone(),
            terminal: false,
            exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.at).into(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut exit = {
            let guard = self.task.lock().await;
            guard
                .as_ref()
                .filter(|t| t.id == req.id && req.exec_id.is_empty())
                .ok_or_else(|| err(ttrpc::Code::NOT_FOUND, format!("task {} not found", req.id)))?
                .exit
                .clone()
        };
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                err(
                    ttrpc::Code::NOT_FOUND,
                    format!("task {} was deleted", req.id),
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
        let agent = {
            let mut guard = self.task.lock().await;
            let task = guard
                .as_mut()
                .filter(|t| t.id == req.id && req.exec_id.is_empty())
                .ok_or_else(|| err(ttrpc::Code::NOT_FOUND, format!("task {} not found", req.id)))?;
            if task.status == Status::CREATED {
                // Nothing runs in the guest yet: the task ends here, as if killed by the signal.
                let exit = Exit {
                    status: 128 + req.signal,
                    at: now(),
                };
                task.status = Status::STOPPED;
                if let Some(exit_tx) = task.exit_tx.take() {
                    let _ = exit_tx.send(Some(exit.clone()));
                }
                let event = TaskExit {
                    container_id: task.id.clone(),
                    id: task.id.clone(),
                    pid: task.pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.at).into(),
                    ..Default::default()
                };
                drop(guard);
                self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
                    .await;
                return Ok(Empty::new());
            }
            if task.status != Status::RUNNING {
                return Err(err(
                    ttrpc::Code::NOT_FOUND,
                    format!("task {}: process already finished", req.id),
                ));
            }
            task.vm.as_ref().map(|vm| vm.agent().clone())
        };
        if let Some(agent) = agent {
            agent
                .signal_process(&req.id, &req.id, req.signal)
                .await
                .map_err(|e| internal("podvm", e))?;
        }
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return Err(err(
                ttrpc::Code::NOT_FOUND,
                format!("exec {} not found", req.exec_id),
            ));
        }
        let mut guard = self.task.lock().await;
        if guard.as_ref().is_none_or(|t| t.id != req.id) {
            return Err(err(
                ttrpc::Code::NOT_FOUND,
                format!("task {} not found", req.id),
            ));
        }
        let mut task = guard.take().expect("checked");
        drop(guard);
        if task.status == Status::RUNNING {
            // Deleting a running task: containerd kills first; if not, the VM stop ends it.
            log::warn!("deleting task {} while it runs", task.id);
        }
        if let Some(vm) = task.vm.take() {
            if task.status != Status::CREATED
                && let Err(e) = vm.agent().remove_container(&task.id).await
            {
                log::warn!("RemoveContainer {}: {e}", task.id);
            }
            let report = vm.stop().await;
            log::info!(
                "VM of {} stopped (graceful: {}, {:.0} ms)",
                task.id,
                report.graceful,
                report.stop_ms
            );
        }
        let _ = std::fs::remove_file(task.bundle.join(rootfs::IMAGE_FILE));
        let exit = task.exit.borrow().clone().unwrap_or(Exit {
            status: 137,
            at: now(),
        });
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: task.id.clone(),
                pid: task.pid,
                exit_status: exit.status,
                exited_at: Some(exit.at.clone()).into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse {
            pid: task.pid,
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let guard = self.task.lock().await;
        let task = guard
            .as_ref()
            .filter(|t| t.id == req.id)
            .ok_or_else(|| err(ttrpc::Code::NOT_FOUND, format!("task {} not found", req.id)))?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: task.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.task.lock().await.as_ref().map(|t| t.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.task.lock().await.is_none() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
