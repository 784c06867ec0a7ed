//! podvm's agent policy, shared by the guest agent (which enforces it) and the host tools (which
//! generate it), so both test the same engine.
//!
//! - [`engine`]: [`AgentPolicy::evaluate`]`(message, request_json) -> `[`Decision`] on regorus;
//!   the built-in [`DEFAULT_POLICY`]; the JSON-lines request log.
//! - [`initdata`]: CoCo initdata 0.1.0: parse, digest, HOST_DATA / MRCONFIGID, annotation value.
//! - [`generate`]: a pod's policy and initdata from its Kubernetes manifest.

pub mod engine;
pub mod generate;
pub mod initdata;

pub use engine::{AgentPolicy, DEFAULT_POLICY, Decision, LogEntry, PolicyError, PolicyOrigin};
pub use generate::{GenerateError, GenerateOptions, Generated, generate};
pub use initdata::{Algorithm, InitData, InitDataError};
