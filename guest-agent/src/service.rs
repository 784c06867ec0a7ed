//! The agent API services: `grpc.Health` and `grpc.AgentService`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use podvm_protocols::agent::{
    AgentDetails, DestroySandboxRequest, GuestDetailsRequest, GuestDetailsResponse,
};
use podvm_protocols::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response::ServingStatus,
};
use podvm_protocols::protobuf::well_known_types::empty::Empty;
use podvm_protocols::{agent_ttrpc, health_ttrpc};
use tokio::sync::watch;
use ttrpc::r#async::{Service, TtrpcContext};

use crate::guest_info;

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
}

impl Agent {
    pub fn new(root: PathBuf, start_uptime_us: u64) -> Arc<Self> {
        let (shutdown, _) = watch::channel(Shutdown::No);
        Arc::new(Agent {
            root,
            start_uptime_us,
            ready_uptime_us: Default::default(),
            shutdown,
        })
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

#[async_trait]
impl health_ttrpc::Health for Agent {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
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
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        self.guest_details()
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!("the host asked to destroy the sandbox: powering off");
        self.shutdown.send_replace(Shutdown::Requested);
        Ok(Empty::new())
    }
}
