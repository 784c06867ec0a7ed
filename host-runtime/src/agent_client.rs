//! The host's client of the agent API.

use std::time::Duration;

use podvm_protocols::agent::{DestroySandboxRequest, GuestDetailsRequest, GuestDetailsResponse};
use podvm_protocols::agent_ttrpc::AgentServiceClient;
use podvm_protocols::health::{CheckRequest, health_check_response::ServingStatus};
use podvm_protocols::health_ttrpc::HealthClient;
use tokio::io::{AsyncRead, AsyncWrite};
use ttrpc::r#async::Client;
use ttrpc::r#async::transport::Socket;
use ttrpc::context;

/// Default deadline of one agent call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent call {call} failed: {message}")]
    Call { call: &'static str, message: String },
    #[error("agent call {call} got no answer within {}s", timeout.as_secs_f32())]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("the agent reports it is not serving (status {0})")]
    NotServing(String),
}

/// A connection to one VM's agent.
#[derive(Clone)]
pub struct AgentClient {
    health: HealthClient,
    agent: AgentServiceClient,
    timeout: Duration,
}

fn one_line(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}

impl AgentClient {
    /// Speaks the agent API over `stream` (a guest-initiated vsock connection, or one made with
    /// `CONNECT`).
    pub fn new<S: AsyncRead + AsyncWrite + Send + Sync + 'static>(stream: S) -> Self {
        let client = Client::new(Socket::new(stream));
        AgentClient {
            health: HealthClient::new(client.clone()),
            agent: AgentServiceClient::new(client),
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Sets the deadline of each call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call<T>(
        &self,
        call: &'static str,
        f: impl Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, AgentError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(AgentError::Call {
                call,
                message: one_line(e),
            }),
            Err(_) => Err(AgentError::Timeout {
                call,
                timeout: self.timeout,
            }),
        }
    }

    fn ctx(&self) -> context::Context {
        context::with_timeout(self.timeout.as_nanos() as i64)
    }

    /// `Health.Check`: succeeds only if the agent says it is serving.
    pub async fn check(&self) -> Result<(), AgentError> {
        let reply = self
            .call(
                "Health.Check",
                self.health.check(self.ctx(), &CheckRequest::new()),
            )
            .await?;
        match reply.status.enum_value() {
            Ok(ServingStatus::SERVING) => Ok(()),
            other => Err(AgentError::NotServing(format!("{other:?}"))),
        }
    }

    /// `Health.Version`: the agent's version.
    pub async fn version(&self) -> Result<String, AgentError> {
        Ok(self
            .call(
                "Health.Version",
                self.health.version(self.ctx(), &CheckRequest::new()),
            )
            .await?
            .agent_version)
    }

    /// `AgentService.GetGuestDetails`.
    pub async fn guest_details(&self) -> Result<GuestDetailsResponse, AgentError> {
        self.call(
            "GetGuestDetails",
            self.agent
                .get_guest_details(self.ctx(), &GuestDetailsRequest::new()),
        )
        .await
    }

    /// `AgentService.DestroySandbox`: the agent answers, then powers the VM off.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.call(
            "DestroySandbox",
            self.agent
                .destroy_sandbox(self.ctx(), &DestroySandboxRequest::new()),
        )
        .await
        .map(drop)
    }
}
