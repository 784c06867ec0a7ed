//! The podvm guest agent: PID 1 of a pod VM.
//!
//! - [`init`]: PID 1 duties (mount the API filesystems, reap zombies, power off);
//! - [`guest_info`]: what the guest is (kernel, memory, vCPUs, TEE), read from /proc and /sys;
//! - [`policy_gate`]: every host request checked by the agent policy before it is handled;
//! - [`initdata`]: the pod's initdata, checked against the TEE evidence at start;
//! - [`service`]: the ttrpc services of the agent API (`grpc.Health`, `grpc.AgentService`);
//! - [`transport`]: how the host reaches the services (vsock, both directions; Unix socket for tests).

pub mod guest_info;
pub mod image;
pub mod init;
pub mod initdata;
pub mod policy_gate;
pub mod service;
pub mod transport;

/// The agent's version, reported by `Health.Version` and `GetGuestDetails`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
