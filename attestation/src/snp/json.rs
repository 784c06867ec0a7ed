//! The SNP evidence JSON exactly as CoCo's attestation-agent sends it and trustee parses it:
//! `{"attestation_report": <sev crate AttestationReport serde>, "cert_chain": [CertTableEntry]|null}`.
//! Byte arrays are JSON arrays of numbers; TCB versions are decoded objects; the signature is
//! `{"r": [72], "s": [72]}` little-endian.

use serde::{Deserialize, Serialize};

use super::report::{AttestationReport, FwVersion, Generation, TcbVersion};
use super::verify::{CertEntry, CertKind};
use crate::error::{Rejection, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SevSignature {
    pub r: Vec<u8>,
    pub s: Vec<u8>,
}

/// Field names and shapes of `sev::firmware::guest::AttestationReport` (serde feature).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SevAttestationReport {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: Vec<u8>,
    pub image_id: Vec<u8>,
    pub vmpl: u32,
    pub sig_algo: u32,
    pub current_tcb: TcbVersion,
    pub plat_info: u64,
    pub key_info: u32,
    pub report_data: Vec<u8>,
    pub measurement: Vec<u8>,
    pub host_data: Vec<u8>,
    pub id_key_digest: Vec<u8>,
    pub author_key_digest: Vec<u8>,
    pub report_id: Vec<u8>,
    pub report_id_ma: Vec<u8>,
    pub reported_tcb: TcbVersion,
    #[serde(default)]
    pub cpuid_fam_id: Option<u8>,
    #[serde(default)]
    pub cpuid_mod_id: Option<u8>,
    #[serde(default)]
    pub cpuid_step: Option<u8>,
    pub chip_id: Vec<u8>,
    pub committed_tcb: TcbVersion,
    #[serde(default)]
    pub current: FwVersion,
    #[serde(default)]
    pub committed: FwVersion,
    pub launch_tcb: TcbVersion,
    #[serde(default)]
    pub launch_mit_vector: Option<u64>,
    #[serde(default)]
    pub current_mit_vector: Option<u64>,
    pub signature: SevSignature,
}

/// `sev::firmware::host::CertType` serde form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum SevCertType {
    Empty,
    #[serde(rename = "ARK")]
    Ark,
    #[serde(rename = "ASK")]
    Ask,
    #[serde(rename = "VCEK")]
    Vcek,
    #[serde(rename = "VLEK")]
    Vlek,
    #[serde(rename = "CRL")]
    Crl,
    #[serde(rename = "OTHER")]
    Other(String),
}

/// `sev::firmware::host::CertTableEntry` serde form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SevCertTableEntry {
    pub cert_type: SevCertType,
    pub data: Vec<u8>,
}

/// The whole SNP evidence object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnpEvidenceJson {
    pub attestation_report: SevAttestationReport,
    #[serde(default)]
    pub cert_chain: Option<Vec<SevCertTableEntry>>,
}

fn fixed<const N: usize>(v: &[u8], field: &'static str) -> Result<[u8; N]> {
    v.try_into().map_err(|_| {
        Rejection::malformed(
            "SNP evidence JSON",
            format!("{field}: length expected {N}, got {}", v.len()),
        )
    })
}

impl SevAttestationReport {
    /// The sev-crate view of a binary report (TCBs decoded per generation).
    pub fn from_report(r: &AttestationReport) -> Self {
        let generation = r.generation_from_cpuid().unwrap_or(Generation::Milan);
        let tcb = |raw: u64| TcbVersion::decode(raw, generation);
        let v3 = r.version >= 3;
        let v5 = r.version >= 5;
        SevAttestationReport {
            version: r.version,
            guest_svn: r.guest_svn,
            policy: r.policy,
            family_id: r.family_id.to_vec(),
            image_id: r.image_id.to_vec(),
            vmpl: r.vmpl,
            sig_algo: r.sig_algo,
            current_tcb: tcb(r.current_tcb),
            plat_info: r.platform_info,
            key_info: r.key_info,
            report_data: r.report_data.to_vec(),
            measurement: r.measurement.to_vec(),
            host_data: r.host_data.to_vec(),
            id_key_digest: r.id_key_digest.to_vec(),
            author_key_digest: r.author_key_digest.to_vec(),
            report_id: r.report_id.to_vec(),
            report_id_ma: r.report_id_ma.to_vec(),
            reported_tcb: tcb(r.reported_tcb),
            cpuid_fam_id: v3.then_some(r.cpuid_fam_id),
            cpuid_mod_id: v3.then_some(r.cpuid_mod_id),
            cpuid_step: v3.then_some(r.cpuid_step),
            chip_id: r.chip_id.to_vec(),
            committed_tcb: tcb(r.committed_tcb),
            current: r.current,
            committed: r.committed,
            launch_tcb: tcb(r.launch_tcb),
            launch_mit_vector: v5.then_some(r.launch_mit_vector),
            current_mit_vector: v5.then_some(r.current_mit_vector),
            signature: SevSignature {
                r: r.signature_r.to_vec(),
                s: r.signature_s.to_vec(),
            },
        }
    }

    /// Back to the binary report (reserved fields zero, as the firmware writes them).
    pub fn to_report(&self) -> Result<AttestationReport> {
        if !AttestationReport::VERSIONS.contains(&self.version) {
            return Err(Rejection::Unsupported {
                what: "SNP report version",
                got: self.version.to_string(),
            });
        }
        let mut r = AttestationReport::zeroed(self.version);
        r.guest_svn = self.guest_svn;
        r.policy = self.policy;
        r.family_id = fixed(&self.family_id, "family_id")?;
        r.image_id = fixed(&self.image_id, "image_id")?;
        r.vmpl = self.vmpl;
        r.sig_algo = self.sig_algo;
        r.current_tcb = self.current_tcb.encode();
        r.platform_info = self.plat_info;
        r.key_info = self.key_info;
        r.report_data = fixed(&self.report_data, "report_data")?;
        r.measurement = fixed(&self.measurement, "measurement")?;
        r.host_data = fixed(&self.host_data, "host_data")?;
        r.id_key_digest = fixed(&self.id_key_digest, "id_key_digest")?;
        r.author_key_digest = fixed(&self.author_key_digest, "author_key_digest")?;
        r.report_id = fixed(&self.report_id, "report_id")?;
        r.report_id_ma = fixed(&self.report_id_ma, "report_id_ma")?;
        r.reported_tcb = self.reported_tcb.encode();
        r.cpuid_fam_id = self.cpuid_fam_id.unwrap_or(0);
        r.cpuid_mod_id = self.cpuid_mod_id.unwrap_or(0);
        r.cpuid_step = self.cpuid_step.unwrap_or(0);
        r.chip_id = fixed(&self.chip_id, "chip_id")?;
        r.committed_tcb = self.committed_tcb.encode();
        r.current = self.current;
        r.committed = self.committed;
        r.launch_tcb = self.launch_tcb.encode();
        r.launch_mit_vector = self.launch_mit_vector.unwrap_or(0);
        r.current_mit_vector = self.current_mit_vector.unwrap_or(0);
        r.signature_r = fixed(&self.signature.r, "signature.r")?;
        r.signature_s = fixed(&self.signature.s, "signature.s")?;
        Ok(r)
    }
}

impl From<&CertEntry> for SevCertTableEntry {
    fn from(e: &CertEntry) -> Self {
        let cert_type = match &e.kind {
            CertKind::Ark => SevCertType::Ark,
            CertKind::Ask => SevCertType::Ask,
            CertKind::Vcek => SevCertType::Vcek,
            CertKind::Vlek => SevCertType::Vlek,
            CertKind::Crl => SevCertType::Crl,
            CertKind::Other(u) if u.is_empty() => SevCertType::Empty,
            CertKind::Other(u) => SevCertType::Other(u.clone()),
        };
        SevCertTableEntry {
            cert_type,
            data: e.data.clone(),
        }
    }
}

impl From<&SevCertTableEntry> for CertEntry {
    fn from(e: &SevCertTableEntry) -> Self {
        let kind = match &e.cert_type {
            SevCertType::Ark => CertKind::Ark,
            SevCertType::Ask => CertKind::Ask,
            SevCertType::Vcek => CertKind::Vcek,
            SevCertType::Vlek => CertKind::Vlek,
            SevCertType::Crl => CertKind::Crl,
            SevCertType::Empty => CertKind::Other(String::new()),
            SevCertType::Other(u) => CertKind::Other(u.clone()),
        };
        CertEntry {
            kind,
            data: e.data.clone(),
        }
    }
}
