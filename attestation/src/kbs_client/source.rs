//! Where the client's evidence comes from: a guest [`Attester`] (SNP/TDX hardware), the
//! emulated SNP PSP, or CoCo's `sample` TEE (no hardware; only the binding is checkable).

use serde_json::Value;

use super::KbsError;
use super::protocol::{Tee, b64_std};
use crate::attester::{Attester, AttesterError};
use crate::emulated::{EmulatedPsp, ReportRequest};
use crate::verifier::{Evidence, TeeKind};

/// A source of KBS `primary_evidence` for a report_data digest (48 bytes, SHA-384).
pub trait EvidenceSource: Send + Sync {
    /// The `tee` named in the KBS Request.
    fn tee(&self) -> Tee;
    /// The `primary_evidence` JSON binding `report_data` (SNP/TDX zero-pad it to 64 bytes).
    fn primary_evidence(&self, report_data: &[u8]) -> Result<Value, KbsError>;
}

fn tee_of(kind: TeeKind) -> Tee {
    match kind {
        TeeKind::Snp => Tee::Snp,
        TeeKind::Tdx => Tee::Tdx,
    }
}

fn evidence_json(ev: &Evidence) -> Result<Value, KbsError> {
    let s = ev
        .to_json()
        .map_err(|e| KbsError::Evidence(format!("encoding evidence: {e}")))?;
    serde_json::from_str(&s).map_err(|e| KbsError::Evidence(format!("evidence JSON: {e}")))
}

/// Evidence from any [`Attester`] (the guest's SNP/TDX attesters, [`EmulatedSnpAttester`]).
pub struct AttesterSource(pub Box<dyn Attester>);

impl AttesterSource {
    pub fn new(a: impl Attester + 'static) -> Self {
        AttesterSource(Box::new(a))
    }
}

impl EvidenceSource for AttesterSource {
    fn tee(&self) -> Tee {
        tee_of(self.0.tee())
    }
    fn primary_evidence(&self, report_data: &[u8]) -> Result<Value, KbsError> {
        let ev = self
            .0
            .evidence(report_data)
            .map_err(|e| KbsError::Evidence(e.to_string()))?;
        evidence_json(&ev)
    }
}

/// The emulated SNP PSP as an attester: every report uses `template` (measurement, HOST_DATA,
/// policy ...) with the caller's REPORT_DATA.
pub struct EmulatedSnpAttester {
    pub psp: EmulatedPsp,
    pub template: ReportRequest,
}

impl Attester for EmulatedSnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }
    fn evidence(&self, report_data: &[u8]) -> Result<Evidence, AttesterError> {
        if report_data.len() > 64 {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        let mut req = self.template.clone();
        req.report_data = [0; 64];
        req.report_data[..report_data.len()].copy_from_slice(report_data);
        self.psp
            .evidence(&req)
            .map_err(|e| AttesterError::Device(e.to_string()))
    }
}

/// Adds what the guest sees of its own launch ([`super::protocol::LAUNCH_HINT_KEY`]: kernel
/// command line, vCPU count) to another source's SNP/TDX evidence, so that podvm's KBS can name
/// the input that differs when the measurement does not match. Not bound to REPORT_DATA: it is
/// believed only when re-measuring reproduces the signed measurement.
pub struct WithLaunchHint {
    pub inner: Box<dyn EvidenceSource>,
    /// `{"cmdline": "...", "vcpus": N}`.
    pub hint: Value,
}

impl EvidenceSource for WithLaunchHint {
    fn tee(&self) -> Tee {
        self.inner.tee()
    }
    fn primary_evidence(&self, report_data: &[u8]) -> Result<Value, KbsError> {
        let mut evidence = self.inner.primary_evidence(report_data)?;
        if let Value::Object(map) = &mut evidence {
            map.insert(
                super::protocol::LAUNCH_HINT_KEY.to_string(),
                self.hint.clone(),
            );
        }
        Ok(evidence)
    }
}

/// CoCo's `sample` TEE evidence: `{"svn": "<svn>", "report_data": "<base64 of the digest>"}`.
/// Unsigned: a KBS accepts it only when explicitly configured to.
#[derive(Debug, Clone)]
pub struct SampleEvidence {
    pub svn: String,
}

impl Default for SampleEvidence {
    fn default() -> Self {
        SampleEvidence { svn: "1".into() }
    }
}

impl EvidenceSource for SampleEvidence {
    fn tee(&self) -> Tee {
        Tee::Sample
    }
    fn primary_evidence(&self, report_data: &[u8]) -> Result<Value, KbsError> {
        Ok(serde_json::json!({"svn": self.svn, "report_data": b64_std(report_data)}))
    }
}
