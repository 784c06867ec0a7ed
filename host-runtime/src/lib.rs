//! podvm's host runtime: guest images, the hypervisor backends, the host side of the agent
//! channel and the lifecycle of a pod VM.
//!
//! The chain for one VM: [`vm::VmConfig`] (validated) → [`state::StateDir`] →
//! [`hypervisor::Hypervisor::launch`] (QEMU + vhost-device-vsock) → the agent dials in over
//! [`vsock::HybridVsock`] → [`agent_client::AgentClient`] → [`vm::Vm::stop`].

pub mod accel;
pub mod agent_client;
pub mod bench;
pub mod cleanup;
pub mod guest_image;
pub mod guest_services;
pub mod hypervisor;
pub mod install;
pub mod launch;
pub mod paths;
pub mod pod;
pub mod process;
pub mod sample_image;
pub mod state;
pub mod testbed;
pub mod vm;
pub mod vsock;

use std::time::Duration;

/// Why a VM could not be started or used. Each is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    InvalidConfig(String),
    #[error(transparent)]
    BootFile(#[from] guest_image::validate::BootFileError),
    #[error("{what} ({name}) was not found: {hint}")]
    MissingBinary {
        what: &'static str,
        name: &'static str,
        hint: &'static str,
    },
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} exited ({status}) before the agent was ready: {detail}")]
    ProcessExited {
        what: &'static str,
        status: String,
        detail: String,
    },
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
    #[error("the agent did not become ready within {}s; {console}", timeout.as_secs())]
    AgentTimeout { timeout: Duration, console: String },
    #[error(transparent)]
    Agent(#[from] agent_client::AgentError),
}
