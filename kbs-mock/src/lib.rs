//! podvm's Key Broker Service: KBS protocol 0.4.0 as trustee speaks it (RCAR handshake, JWE
//! resources, attestation token, admin API), on podvm-attestation's verifier and regorus.
//! See README.md for the API, flags and what is verified.

pub mod bench;
pub mod error;
pub mod jwt;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod store;

pub use error::ApiError;
pub use server::{Config, Kbs, Running, router, serve, spawn, tls_acceptor};
