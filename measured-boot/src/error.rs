//! The crate's one error type. Every message is one line that names the input and says what to do.

use std::path::PathBuf;

/// Errors from parsing launch inputs and computing measurements.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}; check that the file exists and is accessible")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The firmware image is too small or not a whole number of 4 KiB pages.
    #[error(
        "firmware {name}: {size} bytes is not a whole, non-empty number of 4096-byte pages (truncated?); pass the complete OVMF.fd image"
    )]
    FirmwareSize { name: String, size: usize },

    /// The firmware has no OVMF footer table at 32 bytes before its end.
    #[error(
        "firmware {name}: no OVMF footer table (GUID 96b582de-1fb2-45f7-baea-a366c55a082d) 32 bytes before the end of the file; pass a complete SEV/TDX-capable OVMF build (e.g. AmdSevX64 OVMF.fd)"
    )]
    NoFooterTable { name: String },

    /// The footer table or one of its entries is malformed.
    #[error(
        "firmware {name}: malformed OVMF footer table: {detail}; the image is corrupt or truncated"
    )]
    BadFooterTable { name: String, detail: String },

    /// A footer-table entry the chosen mode needs is missing.
    #[error(
        "firmware {name}: the OVMF footer table has no {entry} entry (GUID {guid}); use an OVMF build with SEV-ES/SNP support"
    )]
    MissingFooterEntry {
        name: String,
        entry: &'static str,
        guid: String,
    },

    /// The SEV metadata ("ASEV") block is malformed.
    #[error(
        "firmware {name}: malformed SEV metadata: {detail}; the image is corrupt or not an OVMF build"
    )]
    BadSevMetadata { name: String, detail: String },

    /// A kernel was given but the firmware cannot measure it.
    #[error(
        "firmware {name}: Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section; use an OVMF built with kernel-hashes support (OvmfPkg/AmdSev) or measure without a kernel"
    )]
    NoKernelHashesSection { name: String },

    /// A kernel was given in SEV/SEV-ES mode but the firmware has no SEV hash table.
    #[error(
        "firmware {name}: Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement (no SEV hash table entry); use an OVMF built with OvmfPkg/AmdSev or measure without a kernel"
    )]
    NoSevHashTable { name: String },

    /// The SNP_KERNEL_HASHES section cannot hold the hash table at the announced address.
    #[error(
        "firmware {name}: {detail}; the image's SEV hash table entry is inconsistent with its SEV metadata"
    )]
    BadHashTableLocation { name: String, detail: String },

    /// An unknown vCPU model name.
    #[error("unknown vCPU type '{name}'; use one of {known} or give an explicit --vcpu-sig")]
    UnknownVcpuType { name: String, known: String },

    /// An unknown VMM type.
    #[error("unknown VMM type '{name}'; use one of qemu, ec2, gce")]
    UnknownVmmType { name: String },

    /// An unknown measurement mode.
    #[error("unknown mode '{name}'; use one of snp, snp:ovmf-hash, sev, seves")]
    UnknownMode { name: String },

    /// A required launch parameter is missing.
    #[error("missing {what}; {hint}")]
    Missing {
        what: &'static str,
        hint: &'static str,
    },

    /// A launch parameter has an invalid value.
    #[error("invalid {what} '{value}': {hint}")]
    Invalid {
        what: &'static str,
        value: String,
        hint: String,
    },

    /// A TDVF (TDX firmware) descriptor is missing or malformed.
    #[error("firmware {name}: {detail}")]
    Tdvf { name: String, detail: String },

    /// A CC event log is malformed.
    #[error("event log {name}: {detail}")]
    EventLog { name: String, detail: String },

    /// A reference-value export cannot be read, written, signed or verified.
    #[error("reference values {name}: {detail}")]
    RefValues { name: String, detail: String },

    /// A key file cannot be used.
    #[error("key {name}: {detail}")]
    Key { name: String, detail: String },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
