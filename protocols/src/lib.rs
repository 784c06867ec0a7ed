//! The podvm agent API: ttrpc services spoken between the host runtime and the guest agent over
//! virtio-vsock (port [`AGENT_PORT`]). Message and field names follow Kata Containers' agent
//! protocol (`grpc.AgentService`, `grpc.Health`).

/// vsock port of the agent API (as in Kata Containers). The guest agent listens on it, and also
/// dials the host on it (CID 2) as soon as it is ready, so readiness never depends on the host
/// polling a booting guest.
pub const AGENT_PORT: u32 = 1024;

#[allow(warnings, clippy::all)] // generated code
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}

#[allow(warnings, clippy::all)] // generated code
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}

#[allow(warnings, clippy::all)] // generated code
pub mod oci {
    include!(concat!(env!("OUT_DIR"), "/oci.rs"));
}

#[allow(warnings, clippy::all)] // generated code
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

#[allow(warnings, clippy::all)] // generated code
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use protobuf;
pub use ttrpc;
