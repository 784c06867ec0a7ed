//! The podvm agent API: ttrpc services spoken between the host runtime and the guest agent over
//! virtio-vsock (port [`AGENT_PORT`]). Message and field names follow Kata Containers' agent
//! protocol (`grpc.AgentService`, `grpc.Health`).

/// vsock port of the agent API (as in Kata Containers). The guest agent listens on it, and also
/// dials the host on it (CID 2) as soon as it is ready, so readiness never depends on the host
/// polling a booting guest.
pub const AGENT_PORT: u32 = 1024;

/// Host vsock port of the emulated SEV-SNP PSP (`--tee snp-emulated`). The guest sends 64 bytes of
/// REPORT_DATA; the host answers a big-endian u32 length and a JSON object, either
/// `{"evidence": <SNP evidence JSON>}` (the report signed for the launch's measurement and
/// HOST_DATA, with its certificate chain) or `{"error": "<one line>"}`.
pub const EMULATED_PSP_PORT: u32 = 1025;

/// Host vsock port of the egress relay: the guest sends `CONNECT <host>:<port>\n`; the host
/// answers `OK\n` and relays bytes to that TCP address, or `ERR <reason>\n` and closes. The host
/// relays only to the addresses it was told the pod may reach (its KBS and registries).
pub const EGRESS_PORT: u32 = 1026;

/// The longest egress request line, in bytes.
pub const EGRESS_MAX_LINE: usize = 300;

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
