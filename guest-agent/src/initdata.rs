//! The pod's initdata in the guest: where it comes from, and the check the agent makes before it
//! serves anything: the initdata digest must equal what the TEE says the host bound at launch
//! (SEV-SNP HOST_DATA, TDX MRCONFIGID). If they differ the agent refuses to start.
//!
//! Delivery: the host attaches the initdata as a read-only virtio-blk disk
//! ([`podvm_policy::initdata::DEVICE_MAGIC`] format) and names it on the kernel command line,
//! `podvm.initdata=/dev/vdb`. The command line is part of the launch measurement, so the host
//! cannot point the agent elsewhere without changing the measurement; the disk's content is bound
//! by HOST_DATA / MRCONFIGID. No parameter means no initdata: the evidence field must then be all
//! zeroes, so a host that bound a digest cannot silently drop the policy.

use std::path::{Path, PathBuf};

use podvm_attestation::Evidence;
use podvm_attestation::attester::{self, Attester, AttesterError, AttesterPaths};
use podvm_policy::initdata::{self, InitData};

use crate::guest_info::{self, Tee};

/// The kernel command-line parameter that names the initdata device.
pub const CMDLINE_PARAM: &str = "podvm.initdata";

/// Why the agent refuses to start: one line each.
#[derive(Debug, thiserror::Error)]
pub enum InitDataCheckError {
    #[error("read the initdata device {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the initdata device {path} is unusable: {source}")]
    Parse {
        path: PathBuf,
        source: podvm_policy::InitDataError,
    },
    #[error(
        "initdata does not match the TEE evidence: {field} is {got}, the initdata ({algorithm}) gives {expected}; \
         the host passed other initdata than it bound at launch, refusing to start"
    )]
    Mismatch {
        field: &'static str,
        got: String,
        expected: String,
        algorithm: &'static str,
    },
    #[error(
        "the guest runs in a {tee} TEE but its evidence cannot be read to check the initdata: {source}"
    )]
    Evidence {
        tee: &'static str,
        source: AttesterError,
    },
    #[error("the {0} evidence cannot be parsed to check the initdata: {1}")]
    Malformed(&'static str, String),
}

/// How the initdata was found bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No TEE (a non-confidential pod): nothing binds the initdata; the agent says so.
    NoTee,
    /// The evidence field equals the initdata digest (or is zero and there is no initdata).
    Bound {
        field: &'static str,
        value_hex: String,
    },
}

/// The initdata device named on the kernel command line, if any.
pub fn device_from_cmdline(cmdline: &str) -> Option<PathBuf> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(CMDLINE_PARAM)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Reads the initdata named by `<root>/proc/cmdline` (the device path is taken below `root`).
pub fn load(root: &Path) -> Result<Option<InitData>, InitDataCheckError> {
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let Some(device) = device_from_cmdline(&cmdline) else {
        return Ok(None);
    };
    let path = root.join(device.strip_prefix("/").unwrap_or(&device));
    load_device(&path).map(Some)
}

/// Reads an initdata device (or an image file of one).
pub fn load_device(path: &Path) -> Result<InitData, InitDataCheckError> {
    use std::io::Read;
    let mut image = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take((initdata::MAX_INITDATA_LEN + initdata::DEVICE_OFF_PAYLOAD) as u64)
                .read_to_end(&mut image)
        })
        .map_err(|source| InitDataCheckError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    InitData::from_device_image(&image).map_err(|source| InitDataCheckError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Compares the initdata with the field of `evidence` the host binds it to.
pub fn check_evidence(
    initdata: Option<&InitData>,
    evidence: &Evidence,
) -> Result<Binding, InitDataCheckError> {
    let (field, got): (&'static str, Vec<u8>) = match evidence {
        Evidence::Snp { report, .. } => {
            let r = podvm_attestation::snp::AttestationReport::parse(report)
                .map_err(|e| InitDataCheckError::Malformed("SNP", e.to_string()))?;
            ("HOST_DATA", r.host_data.to_vec())
        }
        Evidence::Tdx { quote, .. } => {
            let q = podvm_attestation::tdx::Quote::parse(quote)
                .map_err(|e| InitDataCheckError::Malformed("TDX", e.to_string()))?;
            ("MRCONFIGID", q.body.mrconfigid.to_vec())
        }
    };
    match initdata::check_bound(initdata, &got) {
        Ok(()) => Ok(Binding::Bound {
            field,
            value_hex: hex::encode(&got),
        }),
        Err(expected) => Err(InitDataCheckError::Mismatch {
            field,
            got: hex::encode(&got),
            expected: hex::encode(expected),
            algorithm: initdata
                .map(|i| i.algorithm().as_str())
                .unwrap_or("no initdata: all zeroes"),
        }),
    }
}

/// The check the agent makes at start: in a TEE, fetch evidence and compare; with no TEE, say
/// that nothing binds the initdata. A TEE whose evidence cannot be read is an error (never a
/// silent fallback to "no TEE").
pub fn verify_at_start(
    initdata: Option<&InitData>,
    root: &Path,
    paths: &AttesterPaths,
) -> Result<Binding, InitDataCheckError> {
    let tee = guest_info::detect_tee(root);
    let attester: Box<dyn Attester> = match attester::attester(paths) {
        Ok(a) => a,
        Err(AttesterError::NoTee(_)) if tee == Tee::None => return Ok(Binding::NoTee),
        Err(source) => {
            return Err(InitDataCheckError::Evidence {
                tee: tee.as_str(),
                source,
            });
        }
    };
    verify_with_attester(initdata, attester.as_ref(), tee.as_str())
}

/// Fetches evidence from `attester` and compares its HOST_DATA / MRCONFIGID with the initdata.
pub fn verify_with_attester(
    initdata: Option<&InitData>,
    attester: &dyn Attester,
    tee_name: &'static str,
) -> Result<Binding, InitDataCheckError> {
    let evidence =
        attester
            .evidence(&[0u8; 64])
            .map_err(|source| InitDataCheckError::Evidence {
                tee: tee_name,
                source,
            })?;
    check_evidence(initdata, &evidence)
}
