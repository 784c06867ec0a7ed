//! One error type for every rejection: each variant renders as one precise line
//! (which check, which field, expected vs got).

use thiserror::Error;

/// Why evidence was not accepted (or could not be read).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The evidence bytes or JSON are malformed.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A structure has an unsupported version or type.
    #[error("unsupported {what}: {got}")]
    Unsupported { what: &'static str, got: String },
    /// The report/quote signature does not verify.
    #[error("{what} signature does not verify")]
    Signature { what: &'static str },
    /// A certificate's signature by its issuer does not verify.
    #[error("certificate signature {issuer} -> {subject} does not verify")]
    CertSignature { issuer: String, subject: String },
    /// A certificate cannot be parsed or has an unusable key.
    #[error("certificate {which}: {reason}")]
    Certificate { which: String, reason: String },
    /// No certificate for a role could be found in the evidence or the cache.
    #[error("missing certificate: {0}")]
    MissingCertificate(String),
    /// The chain ends in a root that is not a configured trust anchor.
    #[error("untrusted root: {0}")]
    UntrustedRoot(String),
    /// Emulated evidence presented to a verifier that does not allow it.
    #[error("emulated SNP root {0} is not accepted (allow_emulated = false)")]
    EmulatedNotAllowed(String),
    /// A certificate or collateral item is outside its validity window.
    #[error("{what} not valid at {at}: valid {not_before} .. {not_after}")]
    Expired {
        what: String,
        at: String,
        not_before: String,
        not_after: String,
    },
    /// A certificate was revoked by a CRL.
    #[error("{what} revoked by {crl} (serial {serial})")]
    Revoked {
        what: String,
        crl: String,
        serial: String,
    },
    /// A binding or policy field does not match.
    #[error("{field}: expected {expected}, got {got}")]
    Mismatch {
        field: String,
        expected: String,
        got: String,
    },
    /// A policy check failed (debug, TCB status, VMPL ...).
    #[error("policy {check}: {reason}")]
    Policy { check: &'static str, reason: String },
    /// Required collateral is missing.
    #[error("missing collateral: {0}")]
    MissingCollateral(String),
}

impl Rejection {
    pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Rejection::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
    pub(crate) fn mismatch(
        field: impl Into<String>,
        expected: impl ToString,
        got: impl ToString,
    ) -> Self {
        Rejection::Mismatch {
            field: field.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
    pub(crate) fn cert(which: impl Into<String>, reason: impl ToString) -> Self {
        Rejection::Certificate {
            which: which.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Rejection>;
