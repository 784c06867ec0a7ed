//! The evidence → claims gate: `Evidence` (CoCo JSON shapes), `Expectations`, `TrustAnchors`,
//! `Claims`, and the `Verifier` trait with one implementation per TEE.

use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

use crate::error::{Rejection, Result};
use crate::snp::json::{SevAttestationReport, SevCertTableEntry, SnpEvidenceJson};
use crate::snp::{CertEntry, TcbVersion};
use crate::tdx::{TcbStatus, TdxCollateral};
use crate::x509::{common_name, fingerprint};

/// Which TEE produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    Snp,
    Tdx,
}

impl std::str::FromStr for TeeKind {
    type Err = Rejection;
    /// The KBS protocol's `tee` names: `snp`, `tdx`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "snp" => Ok(TeeKind::Snp),
            "tdx" => Ok(TeeKind::Tdx),
            other => Err(Rejection::Unsupported {
                what: "TEE",
                got: other.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKind::Snp => "snp",
            TeeKind::Tdx => "tdx",
        })
    }
}

/// Attestation evidence, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// Raw 1184-byte report and the extended-request certificate table.
    Snp {
        report: Vec<u8>,
        cert_chain: Option<Vec<CertEntry>>,
    },
    /// Raw quote and the CC event log (CCEL), if any.
    Tdx {
        quote: Vec<u8>,
        cc_eventlog: Option<Vec<u8>>,
    },
}

/// TDX evidence JSON as CoCo's attester sends it (`quote`/`cc_eventlog` standard base64).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TdxEvidenceJson {
    #[serde(default)]
    pub cc_eventlog: Option<String>,
    pub quote: String,
}

impl Evidence {
    pub fn tee(&self) -> TeeKind {
        match self {
            Evidence::Snp { .. } => TeeKind::Snp,
            Evidence::Tdx { .. } => TeeKind::Tdx,
        }
    }

    /// Parse the CoCo JSON of the given TEE.
    pub fn from_json(tee: TeeKind, json: &[u8]) -> Result<Self> {
        match tee {
            TeeKind::Snp => {
                let e: SnpEvidenceJson = serde_json::from_slice(json)
                    .map_err(|e| Rejection::malformed("SNP evidence JSON", e))?;
                let report = e.attestation_report.to_report()?.to_bytes();
                let cert_chain = e
                    .cert_chain
                    .map(|c| c.iter().map(CertEntry::from).collect());
                Ok(Evidence::Snp { report, cert_chain })
            }
            TeeKind::Tdx => {
                let e: TdxEvidenceJson = serde_json::from_slice(json)
                    .map_err(|e| Rejection::malformed("TDX evidence JSON", e))?;
                let b64 = base64::engine::general_purpose::STANDARD;
                let quote = b64
                    .decode(e.quote.trim())
                    .map_err(|e| Rejection::malformed("TDX evidence quote base64", e))?;
                let cc_eventlog =
                    match e.cc_eventlog {
                        Some(s) => Some(b64.decode(s.trim()).map_err(|e| {
                            Rejection::malformed("TDX evidence cc_eventlog base64", e)
                        })?),
                        None => None,
                    };
                Ok(Evidence::Tdx { quote, cc_eventlog })
            }
        }
    }

    /// Detect the TEE from the JSON keys (`attestation_report` → SNP, `quote` → TDX).
    pub fn from_json_any(json: &[u8]) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| Rejection::malformed("evidence JSON", e))?;
        if v.get("attestation_report").is_some() {
            Self::from_json(TeeKind::Snp, json)
        } else if v.get("quote").is_some() {
            Self::from_json(TeeKind::Tdx, json)
        } else {
            Err(Rejection::malformed(
                "evidence JSON",
                "neither attestation_report (SNP) nor quote (TDX)",
            ))
        }
    }

    /// Evidence from a file's bytes: CoCo JSON (SNP or TDX shape, also wrapped in a KBS
    /// `tee-evidence`/`primary_evidence` object), a raw 1184-byte SNP report, or a raw TDX quote.
    pub fn from_any_bytes(bytes: &[u8]) -> Result<Self> {
        let t = bytes.trim_ascii_start();
        if t.starts_with(b"{") {
            let v: serde_json::Value =
                serde_json::from_slice(t).map_err(|e| Rejection::malformed("evidence JSON", e))?;
            let inner = v
                .get("tee-evidence")
                .map(|te| te.get("primary_evidence").unwrap_or(te))
                .or_else(|| v.get("primary_evidence"));
            return match inner {
                Some(i) => Self::from_json_any(i.to_string().as_bytes()),
                None => Self::from_json_any(t),
            };
        }
        if bytes.len() == crate::snp::report::REPORT_LEN {
            crate::snp::AttestationReport::parse(bytes)?;
            return Ok(Evidence::Snp {
                report: bytes.to_vec(),
                cert_chain: None,
            });
        }
        crate::tdx::Quote::parse(bytes)?;
        Ok(Evidence::Tdx {
            quote: bytes.to_vec(),
            cc_eventlog: None,
        })
    }

    /// The CoCo JSON for this evidence.
    pub fn to_json(&self) -> Result<String> {
        let v = match self {
            Evidence::Snp { report, cert_chain } => {
                let r = crate::snp::AttestationReport::parse(report)?;
                serde_json::to_string(&SnpEvidenceJson {
                    attestation_report: SevAttestationReport::from_report(&r),
                    cert_chain: cert_chain
                        .as_ref()
                        .map(|c| c.iter().map(SevCertTableEntry::from).collect()),
                })
            }
            Evidence::Tdx { quote, cc_eventlog } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                serde_json::to_string(&TdxEvidenceJson {
                    cc_eventlog: cc_eventlog.as_ref().map(|c| b64.encode(c)),
                    quote: b64.encode(quote),
                })
            }
        };
        v.map_err(|e| Rejection::malformed("evidence JSON", e))
    }
}

/// What the relying party expects; `None` fields are not checked.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// SNP MEASUREMENT (48 bytes) or TDX MRTD (48 bytes).
    pub measurement: Option<Vec<u8>>,
    /// REPORT_DATA (zero-padded to 64 bytes before comparison).
    pub report_data: Option<Vec<u8>>,
    /// SNP HOST_DATA (32) or TDX MRCONFIGID (48), zero-padded.
    pub init_data: Option<Vec<u8>>,
    /// TDX RTMR0..3.
    pub rtmr: [Option<Vec<u8>>; 4],
    /// Accept evidence from a debuggable guest.
    pub allow_debug: bool,
    /// SNP: minimum REPORTED_TCB (component-wise).
    pub min_snp_tcb: Option<TcbVersion>,
    /// SNP: required VMPL.
    pub vmpl: Option<u32>,
    /// TDX: TCB statuses accepted.
    pub accepted_tdx_tcb_status: Vec<TcbStatus>,
    /// TDX: reject when tcbInfo/qeIdentity/CRLs for the platform are missing.
    pub require_tdx_collateral: bool,
    /// Verification time (certificate and collateral validity); `None` = now.
    pub at: Option<SystemTime>,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations {
            measurement: None,
            report_data: None,
            init_data: None,
            rtmr: [None, None, None, None],
            allow_debug: false,
            min_snp_tcb: None,
            vmpl: None,
            accepted_tdx_tcb_status: vec![
                TcbStatus::UpToDate,
                TcbStatus::SWHardeningNeeded,
                TcbStatus::ConfigurationNeeded,
                TcbStatus::ConfigurationAndSWHardeningNeeded,
            ],
            require_tdx_collateral: true,
            at: None,
        }
    }
}

/// Compare an expected value (zero-padded to the field size) with the evidence field.
pub fn check_bytes(field: &str, expected: Option<&[u8]>, got: &[u8]) -> Result<()> {
    let Some(want) = expected else { return Ok(()) };
    if want.len() > got.len() {
        return Err(Rejection::mismatch(
            field,
            format!(
                "{} ({} bytes, field holds {})",
                hex::encode(want),
                want.len(),
                got.len()
            ),
            hex::encode(got),
        ));
    }
    let mut padded = want.to_vec();
    padded.resize(got.len(), 0);
    if padded != got {
        return Err(Rejection::mismatch(
            field,
            hex::encode(&padded),
            hex::encode(got),
        ));
    }
    Ok(())
}

/// Roots, cached certificates and collateral. Nothing here is fetched from the network.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    /// AMD ARKs (each must match a published fingerprint).
    pub amd_roots: Vec<Certificate>,
    /// Cached ASK/ASVK/VCEK/VLEK certificates.
    pub snp_certs: Vec<Certificate>,
    /// Intel SGX Root CA(s).
    pub intel_roots: Vec<Certificate>,
    /// podvm's emulated ARK, used only when `allow_emulated`.
    pub emulated_root: Option<Certificate>,
    pub allow_emulated: bool,
    /// TDX collateral (tcbInfo, QE identity, CRLs).
    pub tdx_collateral: TdxCollateral,
}

impl TrustAnchors {
    /// Add one certificate file's content (DER, PEM, or a PEM chain), classifying each
    /// certificate: published AMD ARK, Intel SGX Root CA, emulated ARK, or cached SNP cert.
    pub fn add_cert_bytes(&mut self, bytes: &[u8], name: &str) -> Result<()> {
        let certs = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            crate::x509::parse_pem_chain(bytes, name)?
        } else {
            vec![crate::x509::parse_cert(bytes, name)?]
        };
        for c in certs {
            let self_signed = c.tbs_certificate().subject() == c.tbs_certificate().issuer();
            let fp = hex::encode(fingerprint(&c)?);
            let cn = common_name(&c);
            if self_signed && crate::snp::verify::AMD_ARK_SHA256.contains(&fp.as_str()) {
                self.amd_roots.push(c);
            } else if self_signed && fp == crate::tdx::verify::INTEL_SGX_ROOT_SHA256 {
                self.intel_roots.push(c);
            } else if self_signed && cn == crate::snp::verify::EMULATED_ARK_CN {
                self.emulated_root = Some(c);
            } else if !self_signed {
                self.snp_certs.push(c);
            }
            // Any other self-signed certificate is not a trust anchor and is ignored.
        }
        Ok(())
    }

    /// Load every `*.pem`, `*.der`, `*.crt`, `*.cer` file of a directory (CRLs among them
    /// are added to the TDX collateral).
    pub fn add_cert_dir(&mut self, dir: &Path) -> Result<()> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Rejection::MissingCertificate(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| ["pem", "der", "crt", "cer"].contains(&x))
            })
            .collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p)
                .map_err(|e| Rejection::MissingCertificate(format!("{}: {e}", p.display())))?;
            let name = p.display().to_string();
            if let Err(e) = self.add_cert_bytes(&bytes, &name) {
                // A CRL next to the certificates is collateral; anything else is an error.
                match crate::x509::parse_crl(&bytes, &name) {
                    Ok(crl) => self.tdx_collateral.crls.push(crl),
                    Err(_) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Load TDX collateral from a directory.
    pub fn add_collateral_dir(&mut self, dir: &Path) -> Result<()> {
        let c = TdxCollateral::from_dir(dir)?;
        self.tdx_collateral.tcb_infos.extend(c.tcb_infos);
        self.tdx_collateral.qe_identities.extend(c.qe_identities);
        self.tdx_collateral.crls.extend(c.crls);
        Ok(())
    }
}

/// Verified claims, one shape for every TEE (serialises to the claims map).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Claims {
    pub tee: TeeKind,
    /// True only for evidence signed by podvm's emulated SNP root.
    pub emulated: bool,
    /// SNP MEASUREMENT or TDX MRTD (hex).
    pub measurement: String,
    /// SNP HOST_DATA or TDX MRCONFIGID (hex).
    pub init_data: String,
    pub report_data: String,
    pub debug: bool,
    /// TEE-specific fields (TCB, policy, RTMRs, ...).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// The claims map as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Decode a hex argument (optional `0x` prefix) for an expectation.
pub fn decode_hex(field: &'static str, s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .map_err(|e| Rejection::malformed(field, format!("hex: {e}")))
}

/// One verifier per TEE behind one trait.
pub trait Verifier {
    fn verify(
        &self,
        evidence: &Evidence,
        expectations: &Expectations,
        anchors: &TrustAnchors,
    ) -> Result<Claims>;
}

/// SEV-SNP verifier.
#[derive(Debug, Default, Clone, Copy)]
pub struct SnpVerifier;

/// TDX verifier.
#[derive(Debug, Default, Clone, Copy)]
pub struct TdxVerifier;

fn wrong_tee(want: TeeKind, got: TeeKind) -> Rejection {
    Rejection::mismatch("evidence TEE", want, got)
}

impl Verifier for SnpVerifier {
    fn verify(
        &self,
        evidence: &Evidence,
        exp: &Expectations,
        anchors: &TrustAnchors,
    ) -> Result<Claims> {
        let Evidence::Snp { report, cert_chain } = evidence else {
            return Err(wrong_tee(TeeKind::Snp, evidence.tee()));
        };
        let v =
            crate::snp::verify_report(report, cert_chain.as_deref().unwrap_or(&[]), anchors, exp)?;
        let r = &v.report;
        let mut d = serde_json::Map::new();
        let mut put = |k: &str, val: serde_json::Value| {
            d.insert(k.to_string(), val);
        };
        put("version", r.version.into());
        put(
            "generation",
            serde_json::to_value(v.generation).unwrap_or_default(),
        );
        put("guest_svn", r.guest_svn.into());
        put("policy", format!("{:#x}", r.policy).into());
        put("policy_debug", r.debug_allowed().into());
        put(
            "policy_migrate_ma",
            (r.policy & crate::snp::report::POLICY_MIGRATE_MA_BIT != 0).into(),
        );
        put(
            "policy_smt",
            (r.policy & crate::snp::report::POLICY_SMT_BIT != 0).into(),
        );
        put("vmpl", r.vmpl.into());
        put("platform_info", format!("{:#x}", r.platform_info).into());
        put(
            "signing_key",
            serde_json::to_value(v.vek_type).unwrap_or_default(),
        );
        put("family_id", hex::encode(r.family_id).into());
        put("image_id", hex::encode(r.image_id).into());
        put("id_key_digest", hex::encode(r.id_key_digest).into());
        put("author_key_digest", hex::encode(r.author_key_digest).into());
        put("report_id", hex::encode(r.report_id).into());
        put("chip_id", hex::encode(r.chip_id).into());
        put(
            "reported_tcb",
            serde_json::to_value(v.reported_tcb).unwrap_or_default(),
        );
        put(
            "committed_tcb",
            serde_json::to_value(TcbVersion::decode(r.committed_tcb, v.generation))
                .unwrap_or_default(),
        );
        put(
            "launch_tcb",
            serde_json::to_value(TcbVersion::decode(r.launch_tcb, v.generation))
                .unwrap_or_default(),
        );
        put(
            "current_tcb",
            serde_json::to_value(TcbVersion::decode(r.current_tcb, v.generation))
                .unwrap_or_default(),
        );
        put("root", v.root_cn.clone().into());
        Ok(Claims {
            tee: TeeKind::Snp,
            emulated: v.emulated,
            measurement: hex::encode(r.measurement),
            init_data: hex::encode(r.host_data),
            report_data: hex::encode(r.report_data),
            debug: r.debug_allowed(),
            details: d,
        })
    }
}

impl Verifier for TdxVerifier {
    fn verify(
        &self,
        evidence: &Evidence,
        exp: &Expectations,
        anchors: &TrustAnchors,
    ) -> Result<Claims> {
        let Evidence::Tdx { quote, .. } = evidence else {
            return Err(wrong_tee(TeeKind::Tdx, evidence.tee()));
        };
        let v = crate::tdx::verify_quote(quote, anchors, exp)?;
        let b = &v.quote.body;
        let mut d = serde_json::Map::new();
        let mut put = |k: &str, val: serde_json::Value| {
            d.insert(k.to_string(), val);
        };
        put("quote_version", v.quote.header.version.into());
        put(
            "body_type",
            v.quote
                .body_type
                .unwrap_or(crate::tdx::quote::BODY_TYPE_TD10)
                .into(),
        );
        put("mr_td", hex::encode(b.mrtd).into());
        put("mr_config_id", hex::encode(b.mrconfigid).into());
        put("mr_owner", hex::encode(b.mrowner).into());
        put("mr_owner_config", hex::encode(b.mrownerconfig).into());
        put("mr_seam", hex::encode(b.mrseam).into());
        put("mr_signer_seam", hex::encode(b.mrsignerseam).into());
        for (i, r) in b.rtmr.iter().enumerate() {
            put(&format!("rtmr{i}"), hex::encode(r).into());
        }
        put("tee_tcb_svn", hex::encode(b.tee_tcb_svn).into());
        put(
            "td_attributes",
            format!("{:#x}", b.td_attributes_u64()).into(),
        );
        put("xfam", format!("{:#x}", b.xfam_u64()).into());
        if let Some(m) = &b.mrservicetd {
            put("mr_service_td", hex::encode(m).into());
        }
        put("fmspc", hex::encode(v.pck.fmspc).into());
        put("pce_svn", v.pck.pcesvn.into());
        put(
            "tcb_status",
            v.tcb_status
                .map(|s| s.as_str())
                .unwrap_or("Unknown (no collateral)")
                .into(),
        );
        put("advisory_ids", v.advisory_ids.clone().into());
        put("collateral_signature_verified", false.into());
        Ok(Claims {
            tee: TeeKind::Tdx,
            emulated: false,
            measurement: hex::encode(b.mrtd),
            init_data: hex::encode(b.mrconfigid),
            report_data: hex::encode(b.report_data),
            debug: b.debug(),
            details: d,
        })
    }
}

/// Verify any evidence with the verifier for its TEE.
pub fn verify(
    evidence: &Evidence,
    expectations: &Expectations,
    anchors: &TrustAnchors,
) -> Result<Claims> {
    match evidence.tee() {
        TeeKind::Snp => SnpVerifier.verify(evidence, expectations, anchors),
        TeeKind::Tdx => TdxVerifier.verify(evidence, expectations, anchors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_bytes_pads_and_reports() {
        assert!(check_bytes("f", None, &[1, 2]).is_ok());
        assert!(check_bytes("f", Some(&[1]), &[1, 0]).is_ok());
        assert_eq!(
            check_bytes("host_data", Some(&[2]), &[1, 0])
                .expect_err("mismatch")
                .to_string(),
            "host_data: expected 0200, got 0100"
        );
        assert!(check_bytes("f", Some(&[1, 2, 3]), &[1, 2]).is_err());
    }

    #[test]
    fn tee_names_and_wrong_verifier() {
        assert_eq!("snp".parse::<TeeKind>().expect("snp"), TeeKind::Snp);
        assert_eq!("tdx".parse::<TeeKind>().expect("tdx"), TeeKind::Tdx);
        assert!("sample".parse::<TeeKind>().is_err());
        let ev = Evidence::Tdx {
            quote: vec![],
            cc_eventlog: None,
        };
        let e = SnpVerifier
            .verify(&ev, &Expectations::default(), &TrustAnchors::default())
            .expect_err("wrong tee");
        assert_eq!(e.to_string(), "evidence TEE: expected snp, got tdx");
    }

    #[test]
    fn from_any_bytes_unwraps_kbs_envelope() {
        let inner = Evidence::Tdx {
            quote: vec![1, 2, 3],
            cc_eventlog: None,
        }
        .to_json()
        .expect("json");
        let wrapped = format!(
            r#"{{"tee-evidence":{{"primary_evidence":{inner},"additional_evidence":""}}}}"#
        );
        assert_eq!(
            Evidence::from_any_bytes(wrapped.as_bytes()).expect("wrapped"),
            Evidence::Tdx {
                quote: vec![1, 2, 3],
                cc_eventlog: None
            }
        );
        assert!(Evidence::from_any_bytes(br#"{"nothing":1}"#).is_err());
    }
}
