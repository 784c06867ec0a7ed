//! AMD SEV-SNP: report format, evidence JSON, verification.

pub mod json;
pub mod report;
pub mod verify;

pub use report::{AttestationReport, FwVersion, Generation, TcbVersion};
pub use verify::{CertEntry, CertKind, SnpVerified, VekExtensions, VekType, verify_report};
