//! Intel PCS collateral: TDX TCB info (v3), TD_QE identity (v2), PCK / root CRLs.
//!
//! What is verified about the collateral itself: the CRL signatures (by the PCK Platform/Processor
//! CA and the Intel SGX Root CA from the anchors) and the freshness of every item at the pinned
//! time. The tcbInfo / qeIdentity ECDSA signatures are made by the Intel SGX TCB Signing
//! certificate, which PCS sends in an HTTP header; it is not part of this collateral format and is
//! NOT checked here: the collateral directory is trusted as supplied by the operator.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use x509_cert::crl::CertificateList;

use crate::error::{Rejection, Result};

/// Intel TCB status values, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    Revoked,
}

impl TcbStatus {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SWHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "Revoked" => TcbStatus::Revoked,
            other => {
                return Err(Rejection::Unsupported {
                    what: "TCB status",
                    got: other.to_string(),
                });
            }
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Svn {
    pub svn: u8,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TcbComponents {
    pub sgxtcbcomponents: Vec<Svn>,
    pub pcesvn: u16,
    #[serde(default)]
    pub tdxtcbcomponents: Option<Vec<Svn>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbLevel {
    pub tcb: TcbComponents,
    pub tcb_date: String,
    pub tcb_status: String,
    #[serde(default, rename = "advisoryIDs")]
    pub advisory_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModule {
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IsvSvn {
    pub isvsvn: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityTcbLevel {
    pub tcb: IsvSvn,
    pub tcb_date: String,
    pub tcb_status: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModuleIdentity {
    pub id: String,
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub tcb_levels: Vec<IdentityTcbLevel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbInfo {
    pub id: String,
    pub version: u32,
    pub issue_date: String,
    pub next_update: String,
    pub fmspc: String,
    pub pce_id: String,
    pub tcb_evaluation_data_number: u32,
    #[serde(default)]
    pub tdx_module: Option<TdxModule>,
    #[serde(default)]
    pub tdx_module_identities: Option<Vec<TdxModuleIdentity>>,
    pub tcb_levels: Vec<TcbLevel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbInfoResponse {
    pub tcb_info: TcbInfo,
    pub signature: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnclaveIdentity {
    pub id: String,
    pub version: u32,
    pub issue_date: String,
    pub next_update: String,
    pub tcb_evaluation_data_number: u32,
    pub miscselect: String,
    pub miscselect_mask: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub mrsigner: String,
    pub isvprodid: u16,
    pub tcb_levels: Vec<IdentityTcbLevel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QeIdentityResponse {
    pub enclave_identity: EnclaveIdentity,
    pub signature: String,
}

/// All TDX collateral known to a verifier (possibly for several FMSPCs).
#[derive(Debug, Clone, Default)]
pub struct TdxCollateral {
    pub tcb_infos: Vec<TcbInfo>,
    pub qe_identities: Vec<EnclaveIdentity>,
    /// CRLs (PCK Platform/Processor CA CRLs and the Intel SGX Root CA CRL).
    pub crls: Vec<CertificateList>,
}

impl TdxCollateral {
    /// Add one collateral file: a tcbInfo or enclaveIdentity JSON, or a DER/PEM CRL.
    pub fn add_bytes(&mut self, bytes: &[u8], name: &str) -> Result<()> {
        let t = bytes.trim_ascii_start();
        if t.starts_with(b"{") {
            let v: serde_json::Value = serde_json::from_slice(t)
                .map_err(|e| Rejection::malformed("collateral JSON", format!("{name}: {e}")))?;
            if v.get("tcbInfo").is_some() {
                let r: TcbInfoResponse = serde_json::from_value(v)
                    .map_err(|e| Rejection::malformed("tcbInfo", format!("{name}: {e}")))?;
                self.tcb_infos.push(r.tcb_info);
            } else if v.get("enclaveIdentity").is_some() {
                let r: QeIdentityResponse = serde_json::from_value(v)
                    .map_err(|e| Rejection::malformed("qeIdentity", format!("{name}: {e}")))?;
                self.qe_identities.push(r.enclave_identity);
            } else {
                return Err(Rejection::malformed(
                    "collateral JSON",
                    format!("{name}: neither tcbInfo nor enclaveIdentity"),
                ));
            }
        } else {
            self.crls.push(crate::x509::parse_crl(bytes, name)?);
        }
        Ok(())
    }

    /// Load every regular file of a directory (non-recursive).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut c = TdxCollateral::default();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Rejection::MissingCollateral(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.display().to_string();
            if [".md", ".pem", ".dat", ".txt"]
                .iter()
                .any(|ext| name.ends_with(ext))
            {
                continue;
            }
            let bytes = std::fs::read(&p)
                .map_err(|e| Rejection::MissingCollateral(format!("{name}: {e}")))?;
            // Files that are neither collateral JSON nor CRLs (e.g. notes) are skipped; a
            // missing item is reported precisely when a quote needs it.
            let _ = c.add_bytes(&bytes, &name);
        }
        Ok(c)
    }
}

/// Parse an RFC 3339 timestamp.
pub fn parse_time(s: &str, what: &str) -> Result<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Rejection::malformed("timestamp", format!("{what} {s:?}: {e}")))?;
    Ok(SystemTime::from(t))
}

/// Check `issue <= at <= next`.
pub fn check_fresh(issue: &str, next: &str, at: SystemTime, what: &str) -> Result<()> {
    let i = parse_time(issue, what)?;
    let n = parse_time(next, what)?;
    if at < i || at > n {
        return Err(Rejection::Expired {
            what: what.to_string(),
            at: crate::x509::rfc3339(at),
            not_before: issue.to_string(),
            not_after: next.to_string(),
        });
    }
    Ok(())
}

/// Decode a hex string from collateral JSON.
pub fn hex_field(s: &str, what: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|e| Rejection::malformed("collateral hex", format!("{what}: {e}")))
}
