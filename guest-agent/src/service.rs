//! The agent API services: `grpc.Health` and `grpc.AgentService`.
//!
//! Every handler first asks the [`PolicyGate`]; a request whose handler does not exist yet
//! answers UNIMPLEMENTED only after the policy allowed it, so the policy's behaviour can be tested
//! today. The container and process calls are served by [`Containers`]; their errors are one
//! line, `<Call> <container>[/<exec>]: <why>`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use podvm_policy::AgentPolicy;
use podvm_protocols::agent::{
    AgentDetails, CloseStdinRequest, CopyFileRequest, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, ExecProcessRequest, GuestDetailsRequest, GuestDetailsResponse,
    PullImageRequest, PullImageResponse, ReadStreamRequest, ReadStreamResponse,
    RemoveContainerRequest, SetPolicyRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, TtyWinResizeRequest, WaitProcessRequest,
    WaitProcessResponse, WriteStreamRequest, WriteStreamResponse,
};
use podvm_protocols::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response::ServingStatus,
};
use podvm_protocols::protobuf::well_known_types::empty::Empty;
use podvm_protocols::{agent_ttrpc, health_ttrpc};
use tokio::sync::watch;
use ttrpc::r#async::{Service, TtrpcContext};

use crate::container::{ContainerError, Containers, ContainersConfig};
use crate::guest_info;
use crate::policy_gate::PolicyGate;

/// Why the agent stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Still running.
    No,
    /// The host asked for it (`DestroySandbox`).
    Requested,
}

/// State shared by the services.
pub struct Agent {
    /// Root of the proc and sys filesystems (`/` in the guest; a fake tree in tests).
    root: PathBuf,
    start_uptime_us: u64,
    ready_uptime_us: std::sync::atomic::AtomicU64,
    shutdown: watch::Sender<Shutdown>,
    gate: PolicyGate,
    /// The pod's image pulls (set once at start, see [`Agent::with_images`]).
    images: std::sync::OnceLock<Arc<crate::pod_image::PodImages>>,
    /// The pod's containers.
    containers: Containers,
}

impl Agent {
    /// An agent enforcing the built-in default policy (no initdata).
    pub fn new(root: PathBuf, start_uptime_us: u64) -> Arc<Self> {
        Self::with_policy(root, start_uptime_us, AgentPolicy::default_policy())
    }

    /// An agent enforcing `policy` (the initdata's, once its digest was checked).
    pub fn with_policy(root: PathBuf, start_uptime_us: u64, policy: AgentPolicy) -> Arc<Self> {
        Self::with_containers(
            root,
            start_uptime_us,
            policy,
            Containers::new(ContainersConfig::default()),
        )
    }

    /// An agent enforcing `policy` whose containers are `containers` (tests choose where their
    /// state goes and which executable is the container helper).
    pub fn with_containers(
        root: PathBuf,
        start_uptime_us: u64,
        policy: AgentPolicy,
        containers: Containers,
    ) -> Arc<Self> {
        let (shutdown, _) = watch::channel(Shutdown::No);
        Arc::new(Agent {
            root,
            start_uptime_us,
            ready_uptime_us: Default::default(),
            shutdown,
            gate: PolicyGate::new(policy),
            images: std::sync::OnceLock::new(),
            containers,
        })
    }

    /// The pod's containers.
    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    /// Serves `PullImage` with `images` (the pod's KBS and registry settings).
    pub fn with_images(self: Arc<Self>, images: crate::pod_image::PodImages) -> Arc<Self> {
        let _ = self.images.set(Arc::new(images));
        self
    }

    /// Hands a pulled image to the container runner.
    fn register_pulled_image(&self, container_id: &str, pulled: crate::image::PulledImage) {
        // The container runner picks the rootfs up by container id.
        self.containers
            .register_image(container_id, pulled.rootfs, pulled.config);
    }

    /// `ReadStdout` / `ReadStderr`: up to `len` bytes of a process's stream.
    async fn read_stream(
        &self,
        req: ReadStreamRequest,
        stderr: bool,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.gate.check(&req)?;
        let (call, read) = if stderr {
            (
                "ReadStderr",
                self.containers
                    .read_stderr(&req.container_id, &req.exec_id, req.len as usize)
                    .await,
            )
        } else {
            (
                "ReadStdout",
                self.containers
                    .read_stdout(&req.container_id, &req.exec_id, req.len as usize)
                    .await,
            )
        };
        let data = read.map_err(|e| container_error(call, &req.container_id, &req.exec_id, e))?;
        Ok(ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    /// The policy gate (tests, the request log).
    pub fn gate(&self) -> &PolicyGate {
        &self.gate
    }

    /// Records that the agent is ready to serve (its listeners are up).
    pub fn mark_ready(&self, uptime_us: u64) {
        self.ready_uptime_us
            .store(uptime_us, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves when the host has asked the agent to stop.
    pub fn shutdown_requested(&self) -> watch::Receiver<Shutdown> {
        self.shutdown.subscribe()
    }

    /// The ttrpc services, ready to register with a server.
    pub fn services(self: &Arc<Self>) -> HashMap<String, Service> {
        let mut services = health_ttrpc::create_health(self.clone());
        services.extend(agent_ttrpc::create_agent_service(self.clone()));
        services
    }

    fn guest_details(&self) -> ttrpc::Result<GuestDetailsResponse> {
        let memory_total_bytes = guest_info::memory_total_bytes(&self.root)
            .map_err(|e| internal(format!("read guest memory size: {e}")))?;
        let online_vcpus = guest_info::online_vcpus(&self.root)
            .map_err(|e| internal(format!("read online vCPUs: {e}")))?;
        let (kernel_release, kernel_version) = guest_info::kernel_release_and_version();
        Ok(GuestDetailsResponse {
            agent_details: Some(AgentDetails {
                version: crate::AGENT_VERSION.to_string(),
                init_daemon: std::process::id() == 1,
                ..Default::default()
            })
            .into(),
            kernel_release,
            kernel_version,
            memory_total_bytes,
            online_vcpus,
            tee: guest_info::detect_tee(&self.root).as_str().to_string(),
            agent_start_uptime_us: self.start_uptime_us,
            agent_ready_uptime_us: self
                .ready_uptime_us
                .load(std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        })
    }
}

fn internal(message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, message))
}

/// The answer of a call the policy allowed but this agent cannot serve yet.
fn unimplemented<T>(call: &str, lands_with: &str) -> ttrpc::Result<T> {
    Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::UNIMPLEMENTED,
        format!(
            "{call} is allowed by the policy but not implemented by this agent yet ({lands_with})"
        ),
    )))
}

const LIFECYCLE: &str = "the container runner lands in a later podvm release";

/// `<Call> <container>[/<exec>]: <error>`, with the error's status code.
fn container_error(
    call: &str,
    container_id: &str,
    exec_id: &str,
    e: ContainerError,
) -> ttrpc::Error {
    let target = if exec_id.is_empty() {
        container_id.to_string()
    } else {
        format!("{container_id}/{exec_id}")
    };
    let message = format!("{call} {target}: {e}");
    if e.code() == ttrpc::Code::INTERNAL {
        tracing::warn!("{message}");
    } else {
        tracing::debug!("{message}");
    }
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), message))
}

#[async_trait]
impl health_ttrpc::Health for Agent {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        self.gate.check(&req)?;
        Ok(HealthCheckResponse {
            status: ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        self.gate.check(&req)?;
        Ok(VersionCheckResponse {
            grpc_version: format!("ttrpc {}", TTRPC_API_VERSION),
            agent_version: crate::AGENT_VERSION.to_string(),
            ..Default::default()
        })
    }
}

/// The version of the agent API (bumped when a message changes incompatibly).
pub const TTRPC_API_VERSION: &str = "0.1.0";

#[async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        self.gate.check(&req)?;
        self.guest_details()
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        tracing::info!("the host asked to destroy the sandbox: powering off");
        self.shutdown.send_replace(Shutdown::Requested);
        Ok(Empty::new())
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        unimplemented("CreateSandbox", LIFECYCLE)
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        crate::storage::mount_all(&req.storages).map_err(|e| {
            let message = format!("CreateContainer {}: {e}", req.container_id);
            ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, message))
        })?;
        self.containers
            .create(&req)
            .await
            .map_err(|e| container_error("CreateContainer", &req.container_id, "", e))?;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        self.containers
            .start(&req.container_id)
            .await
            .map_err(|e| container_error("StartContainer", &req.container_id, "", e))?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        self.containers
            .remove(&req.container_id, req.timeout)
            .await
            .map_err(|e| container_error("RemoveContainer", &req.container_id, "", e))?;
        // What the host copied in for this container (its root filesystem) goes with it.
        if !req.container_id.is_empty()
            && !req.container_id.contains('/')
            && !req.container_id.starts_with('.')
        {
            let copied = std::path::Path::new(crate::copy_file::SHARED_DIR).join(&req.container_id);
            if let Err(e) = std::fs::remove_dir_all(&copied)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(
                    "RemoveContainer {}: removing {}: {e}",
                    req.container_id,
                    copied.display()
                );
            }
        }
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        self.containers
            .exec(&req)
            .await
            .map_err(|e| container_error("ExecProcess", &req.container_id, &req.exec_id, e))?;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        self.containers
            .signal(&req.container_id, &req.exec_id, req.signal)
            .map_err(|e| container_error("SignalProcess", &req.container_id, &req.exec_id, e))?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.gate.check(&req)?;
        let status = self
            .containers
            .wait(&req.container_id, &req.exec_id)
            .await
            .map_err(|e| container_error("WaitProcess", &req.container_id, &req.exec_id, e))?;
        Ok(WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.gate.check(&req)?;
        let stats = self
            .containers
            .stats(&req.container_id)
            .map_err(|e| container_error("StatsContainer", &req.container_id, "", e))?;
        Ok(StatsContainerResponse {
            cgroup_stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        self.gate.check(&req)?;
        let len = self
            .containers
            .write_stdin(&req.container_id, &req.exec_id, &req.data)
            .await
            .map_err(|e| container_error("WriteStdin", &req.container_id, &req.exec_id, e))?;
        Ok(WriteStreamResponse {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.read_stream(req, false).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.read_stream(req, true).await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        self.containers
            .close_stdin(&req.container_id, &req.exec_id)
            .await
            .map_err(|e| container_error("CloseStdin", &req.container_id, &req.exec_id, e))?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        self.containers
            .resize_terminal(&req.container_id, &req.exec_id, req.row, req.column)
            .map_err(|e| container_error("TtyWinResize", &req.container_id, &req.exec_id, e))?;
        Ok(Empty::new())
    }

    async fn copy_file(&self, _ctx: &TtrpcContext, req: CopyFileRequest) -> ttrpc::Result<Empty> {
        self.gate.check(&req)?;
        let shared = std::path::Path::new(crate::copy_file::SHARED_DIR);
        tokio::task::spawn_blocking(move || crate::copy_file::copy_file(shared, &req))
            .await
            .map_err(|e| internal(format!("CopyFile: {e}")))?
            .map_err(|e| {
                ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), format!("CopyFile {e}")))
            })?;
        Ok(Empty::new())
    }

    async fn set_policy(&self, _ctx: &TtrpcContext, req: SetPolicyRequest) -> ttrpc::Result<Empty> {
        self.gate.set_policy(&req)?;
        Ok(Empty::new())
    }

    async fn pull_image(
        &self,
        _ctx: &TtrpcContext,
        req: PullImageRequest,
    ) -> ttrpc::Result<PullImageResponse> {
        self.gate.check(&req)?;
        let Some(images) = self.images.get() else {
            return unimplemented("PullImage", "this agent was started without an image store");
        };
        let attestation = images.ensure_attested().await.map_err(|e| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::PERMISSION_DENIED,
                format!("PullImage {}: attestation failed: {e}", req.image),
            ))
        })?;
        let started = std::time::Instant::now();
        let pulled = images
            .pull(&req.image, &req.container_id)
            .await
            .map_err(|e| {
                ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("PullImage {}: {e}", req.image),
                ))
            })?;
        tracing::info!(
            image = %req.image,
            digest = %pulled.manifest_digest.as_str(),
            ms = started.elapsed().as_millis() as u64,
            "image pulled, verified and unpacked"
        );
        let pull_us = started.elapsed().as_micros() as u64;
        let image_ref = crate::image::pinned_reference(&req.image, pulled.manifest_digest.as_str());
        self.register_pulled_image(&req.container_id, pulled);
        Ok(PullImageResponse {
            image_ref,
            attestation_us: attestation.as_micros() as u64,
            pull_us,
            ..Default::default()
        })
    }
}
