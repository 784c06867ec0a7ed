//! KBS protocol 0.4.0 (trustee-compatible): the guest's client and the pieces podvm's KBS
//! shares with it.
//!
//! * feature `kbs-protocol`: [`protocol`] (wire types from `kbs-types`, resource URIs, the
//!   report_data binding, init-data digests), [`jwe`] (JWE encrypt/decrypt, TEE keys) and the
//!   evidence sources ([`EvidenceSource`], [`AttesterSource`], [`EmulatedSnpAttester`],
//!   [`SampleEvidence`]).
//! * feature `kbs-client`: [`KbsClient`] (RCAR handshake, re-handshake on 401, retries with
//!   backoff, timeouts, HTTPS via rustls/ring).

pub mod jwe;
pub mod protocol;
mod source;

#[cfg(feature = "kbs-client")]
mod client;

#[cfg(feature = "kbs-client")]
pub use client::{KbsClient, KbsClientConfig};
pub use jwe::{FlattenedJwe, TeeKey, TeeKeyAlg};
pub use protocol::{ErrorBody, ResourceUri};
pub use source::{
    AttesterSource, EmulatedSnpAttester, EvidenceSource, SampleEvidence, WithLaunchHint,
};

/// KBS client / protocol errors: one line each, never containing secret material.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    #[error("invalid resource URI: {0}")]
    InvalidUri(String),
    #[error("KBS protocol: {0}")]
    Protocol(String),
    #[error("JWE: {0}")]
    Jwe(String),
    #[error("KBS client configuration: {0}")]
    Config(String),
    #[error("evidence: {0}")]
    Evidence(String),
    /// The KBS answered with an RFC 7807 error.
    #[error("KBS {step} failed: HTTP {status} {kind}: {detail}")]
    Rejected {
        step: &'static str,
        status: u16,
        kind: String,
        detail: String,
    },
    #[error("resource {0} not found on the KBS")]
    ResourceNotFound(String),
    #[error("KBS {step} at {url}: {detail} (after {attempts} attempts)")]
    Transport {
        step: &'static str,
        url: String,
        detail: String,
        attempts: u32,
    },
}

impl KbsError {
    /// The RFC 7807 kind (`AttestationError`, `PolicyDeny`, ...) of a KBS rejection.
    pub fn kind(&self) -> Option<&str> {
        match self {
            KbsError::Rejected { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The HTTP status of a KBS rejection.
    pub fn status(&self) -> Option<u16> {
        match self {
            KbsError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}
