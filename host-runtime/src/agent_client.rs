//! The host's client of the agent API.

use std::time::Duration;

use podvm_protocols::agent::{
    CloseStdinRequest, CopyFileRequest, CreateContainerRequest, DestroySandboxRequest,
    ExecProcessRequest, GuestDetailsRequest, GuestDetailsResponse, PullImageRequest,
    PullImageResponse, ReadStreamRequest, RemoveContainerRequest, SignalProcessRequest,
    StartContainerRequest, StatsContainerRequest, StatsContainerResponse, TtyWinResizeRequest,
    WaitProcessRequest, WriteStreamRequest,
};
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

    /// `PullImage`: attest (first time), pull, verify, decrypt and unpack in the guest.
    pub async fn pull_image(
        &self,
        image: &str,
        container_id: &str,
        timeout: Duration,
    ) -> Result<PullImageResponse, AgentError> {
        let req = PullImageRequest {
            image: image.to_string(),
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let ctx = context::with_timeout(timeout.as_nanos() as i64);
        match tokio::time::timeout(timeout, self.agent.pull_image(ctx, &req)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(AgentError::Call {
                call: "PullImage",
                message: one_line(e),
            }),
            Err(_) => Err(AgentError::Timeout {
                call: "PullImage",
                timeout,
            }),
        }
    }

    pub async fn create_container(&self, req: &CreateContainerRequest) -> Result<(), AgentError> {
        self.call(
            "CreateContainer",
            self.agent.create_container(self.ctx(), req),
        )
        .await
        .map(drop)
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = StartContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.call(
            "StartContainer",
            self.agent.start_container(self.ctx(), &req),
        )
        .await
        .map(drop)
    }

    /// Reads up to `len` bytes of a process's stdout (`stderr = false`) or stderr. `Ok(None)`:
    /// the stream ended.
    pub async fn read_stream(
        &self,
        container_id: &str,
        exec_id: &str,
        stderr: bool,
        len: u32,
    ) -> Result<Option<Vec<u8>>, AgentError> {
        let req = ReadStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            len,
            ..Default::default()
        };
        // Output may take any time to come: no deadline on the call itself.
        let ctx = context::with_timeout(0);
        let reply = if stderr {
            self.agent.read_stderr(ctx, &req).await
        } else {
            self.agent.read_stdout(ctx, &req).await
        };
        match reply {
            Ok(r) if r.data.is_empty() => Ok(None),
            Ok(r) => Ok(Some(r.data)),
            Err(ttrpc::Error::RpcStatus(s)) if is_eof(s.message()) => Ok(None),
            Err(e) => Err(AgentError::Call {
                call: if stderr { "ReadStderr" } else { "ReadStdout" },
                message: one_line(e),
            }),
        }
    }

    /// Waits for a process and returns its exit status (128+n for a signal).
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32, AgentError> {
        let req = WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        match self
            .agent
            .wait_process(context::with_timeout(0), &req)
            .await
        {
            Ok(r) => Ok(r.status),
            Err(e) => Err(AgentError::Call {
                call: "WaitProcess",
                message: one_line(e),
            }),
        }
    }

    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), AgentError> {
        let req = SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            ..Default::default()
        };
        self.call("SignalProcess", self.agent.signal_process(self.ctx(), &req))
            .await
            .map(drop)
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = RemoveContainerRequest {
            container_id: container_id.to_string(),
            timeout: 5,
            ..Default::default()
        };
        self.call(
            "RemoveContainer",
            self.agent.remove_container(self.ctx(), &req),
        )
        .await
        .map(drop)
    }

    /// `ExecProcess`: starts another process in a running container.
    pub async fn exec_process(&self, req: &ExecProcessRequest) -> Result<(), AgentError> {
        self.call("ExecProcess", self.agent.exec_process(self.ctx(), req))
            .await
            .map(drop)
    }

    /// Writes to a process's stdin; returns how many bytes the agent took. Back-pressure: the
    /// call waits while the process does not read, so it has no deadline.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentError> {
        let req = WriteStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        match self.agent.write_stdin(context::with_timeout(0), &req).await {
            Ok(r) => Ok(r.len as usize),
            Err(e) => Err(AgentError::Call {
                call: "WriteStdin",
                message: one_line(e),
            }),
        }
    }

    /// Closes a process's stdin (the process reads EOF).
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = CloseStdinRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("CloseStdin", self.agent.close_stdin(self.ctx(), &req))
            .await
            .map(drop)
    }

    /// Resizes a process's terminal.
    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), AgentError> {
        let req = TtyWinResizeRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            row: rows,
            column: columns,
            ..Default::default()
        };
        self.call("TtyWinResize", self.agent.tty_win_resize(self.ctx(), &req))
            .await
            .map(drop)
    }

    /// A container's resource usage (its cgroup's counters).
    pub async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, AgentError> {
        let req = StatsContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.call(
            "StatsContainer",
            self.agent.stats_container(self.ctx(), &req),
        )
        .await
    }

    /// `CopyFile`: one directory, symlink, or chunk of a regular file into the guest's shared
    /// directory.
    pub async fn copy_file(&self, req: &CopyFileRequest) -> Result<(), AgentError> {
        self.call("CopyFile", self.agent.copy_file(self.ctx(), req))
            .await
            .map(drop)
    }
}

/// The agent reports the end of a stream as an error whose message says EOF.
fn is_eof(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("eof") || m.contains("end of stream") || m.contains("closed")
}
