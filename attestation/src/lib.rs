//! podvm attestation: SEV-SNP reports and TDX quotes parsed and verified offline, CoCo
//! evidence JSON, an emulated SNP "PSP" for machines without TEE hardware, and guest attesters.
//!
//! Entry points: [`verify`] / [`Verifier`], [`Evidence`], [`Expectations`], [`TrustAnchors`],
//! [`emulated::EmulatedPsp`], [`attester::detect`].

pub mod attester;
pub mod emulated;
pub mod error;
#[cfg(feature = "kbs-protocol")]
pub mod kbs_client;
pub mod snp;
pub mod tdx;
pub mod verifier;
pub mod x509;

pub use error::{Rejection, Result};
pub use verifier::{
    Claims, Evidence, Expectations, SnpVerifier, TdxVerifier, TeeKind, TrustAnchors, Verifier,
    verify,
};
