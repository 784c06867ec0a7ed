//! SEV-SNP verification: ARK → ASK → VCEK (ARK → ASVK → VLEK) with RSA-PSS/SHA-384,
//! VCEK extensions against REPORTED_TCB and CHIP_ID, ECDSA P-384 report signature, policy.

use std::time::SystemTime;

use der::Decode;
use der::asn1::{Ia5StringRef, ObjectIdentifier, OctetString};
use signature::Verifier as _;
use x509_cert::Certificate;

use super::report::{
    AttestationReport, Generation, SIG_ALGO_ECDSA_P384_SHA384, SIGNED_LEN, TcbVersion,
};
use crate::error::{Rejection, Result};
use crate::verifier::{Expectations, TrustAnchors, check_bytes};
use crate::x509::{
    check_validity, common_name, extension_value, fingerprint, verify_cert_signed_by,
};

pub const OID_STRUCT_VERSION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
pub const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
pub const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
pub const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
pub const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
pub const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
pub const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
pub const OID_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
pub const OID_CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");

/// SHA-256 fingerprints (of the DER) of AMD's published ARKs: Milan, Genoa, Turin.
pub const AMD_ARK_SHA256: [&str; 3] = [
    "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
];

/// Subject CN of podvm's emulated ARK.
pub const EMULATED_ARK_CN: &str = "ARK-podvm-Emulated";

/// Certificate table entry kinds (GHCB extended guest request GUIDs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    Ark,
    Ask,
    Vcek,
    Vlek,
    Crl,
    Other(String),
}

/// One entry of an SNP certificate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    pub kind: CertKind,
    pub data: Vec<u8>,
}

/// The key that signed the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VekType {
    Vcek,
    Vlek,
}

/// Values read from a VCEK/VLEK's AMD extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VekExtensions {
    pub product_name: Option<String>,
    pub bl_spl: u8,
    pub tee_spl: u8,
    pub snp_spl: u8,
    pub ucode_spl: u8,
    pub fmc_spl: Option<u8>,
    /// 64-byte hwID (VCEK only).
    pub hwid: Option<Vec<u8>>,
}

fn spl(cert: &Certificate, oid: &ObjectIdentifier, name: &str) -> Result<Option<u8>> {
    let Some(v) = extension_value(cert, oid) else {
        return Ok(None);
    };
    u8::from_der(v)
        .map(Some)
        .map_err(|e| Rejection::cert(common_name(cert), format!("extension {name} ({oid}): {e}")))
}

impl VekExtensions {
    pub fn read(cert: &Certificate) -> Result<Self> {
        let need = |v: Option<u8>, name: &str, oid: &ObjectIdentifier| {
            v.ok_or_else(|| {
                Rejection::cert(
                    common_name(cert),
                    format!("missing extension {name} ({oid})"),
                )
            })
        };
        let product_name =
            extension_value(cert, &OID_PRODUCT_NAME).map(|v| match Ia5StringRef::from_der(v) {
                Ok(s) => s.as_str().to_string(),
                Err(_) => String::from_utf8_lossy(v).into_owned(),
            });
        let hwid = extension_value(cert, &OID_HWID).map(|v| {
            if v.len() == 64 {
                v.to_vec()
            } else {
                OctetString::from_der(v)
                    .map(|o| o.as_bytes().to_vec())
                    .unwrap_or_else(|_| v.to_vec())
            }
        });
        Ok(VekExtensions {
            product_name,
            bl_spl: need(spl(cert, &OID_BL_SPL, "blSPL")?, "blSPL", &OID_BL_SPL)?,
            tee_spl: need(spl(cert, &OID_TEE_SPL, "teeSPL")?, "teeSPL", &OID_TEE_SPL)?,
            snp_spl: need(spl(cert, &OID_SNP_SPL, "snpSPL")?, "snpSPL", &OID_SNP_SPL)?,
            ucode_spl: need(
                spl(cert, &OID_UCODE_SPL, "ucodeSPL")?,
                "ucodeSPL",
                &OID_UCODE_SPL,
            )?,
            fmc_spl: spl(cert, &OID_FMC_SPL, "fmcSPL")?,
            hwid,
        })
    }
}

/// Result of a successful SNP verification.
#[derive(Debug, Clone)]
pub struct SnpVerified {
    pub report: AttestationReport,
    pub generation: Generation,
    pub reported_tcb: TcbVersion,
    pub vek_type: VekType,
    pub emulated: bool,
    pub root_cn: String,
}

fn is_self_signed(c: &Certificate) -> bool {
    c.tbs_certificate().subject() == c.tbs_certificate().issuer()
}

/// Verify an SNP report with certificates from the evidence's table and the anchors' cache.
pub fn verify_report(
    report_bytes: &[u8],
    table: &[CertEntry],
    anchors: &TrustAnchors,
    exp: &Expectations,
) -> Result<SnpVerified> {
    let report = AttestationReport::parse(report_bytes)?;
    // Bytes after the signature are not signed: they must be zero, so nothing unsigned rides along.
    if report.reserved_330.iter().any(|b| *b != 0) {
        return Err(Rejection::malformed(
            "SNP report",
            "reserved bytes after the signature are not zero",
        ));
    }
    if report.sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(Rejection::Unsupported {
            what: "SNP SIGNATURE_ALGO",
            got: report.sig_algo.to_string(),
        });
    }
    let vek_type = match report.signing_key() {
        0 => VekType::Vcek,
        1 => VekType::Vlek,
        k => {
            return Err(Rejection::Unsupported {
                what: "SNP KEY_INFO.SIGNING_KEY",
                got: k.to_string(),
            });
        }
    };
    let at = exp.at.unwrap_or_else(SystemTime::now);

    // Every certificate we may use: the evidence's table first, then the offline cache.
    let mut pool: Vec<(CertKind, Certificate)> = Vec::new();
    for e in table {
        if matches!(
            e.kind,
            CertKind::Ark | CertKind::Ask | CertKind::Vcek | CertKind::Vlek
        ) {
            let c = crate::x509::parse_cert(&e.data, &format!("cert_chain {:?}", e.kind))?;
            pool.push((e.kind.clone(), c));
        }
    }
    for c in &anchors.snp_certs {
        pool.push((CertKind::Other("cache".into()), c.clone()));
    }

    // Leaf: right CN; a VCEK must carry this chip's hwID unless CHIP_ID is masked.
    let leaf_cn = match vek_type {
        VekType::Vcek => "SEV-VCEK",
        VekType::Vlek => "SEV-VLEK",
    };
    let leaf = pool
        .iter()
        .filter(|(_, c)| common_name(c) == leaf_cn)
        .find(|(_, c)| match (vek_type, report.chip_id_masked()) {
            (VekType::Vcek, false) => VekExtensions::read(c)
                .ok()
                .and_then(|x| x.hwid)
                .is_some_and(|h| h == report.chip_id),
            _ => true,
        })
        .or_else(|| {
            pool.iter().find(|(k, c)| {
                matches!(k, CertKind::Vcek | CertKind::Vlek) && common_name(c) == leaf_cn
            })
        })
        .map(|(_, c)| c.clone())
        .ok_or_else(|| {
            Rejection::MissingCertificate(format!(
                "{leaf_cn} for CHIP_ID {}",
                hex::encode(&report.chip_id[..8])
            ))
        })?;

    // Intermediate (ASK / ASVK): names the leaf's issuer.
    let inter = pool
        .iter()
        .filter(|(_, c)| {
            !is_self_signed(c) && c.tbs_certificate().subject() == leaf.tbs_certificate().issuer()
        })
        .map(|(_, c)| c.clone())
        .next()
        .ok_or_else(|| {
            Rejection::MissingCertificate(format!(
                "issuer of {leaf_cn}: {}",
                crate::x509::issuer_cn(&leaf)
            ))
        })?;

    // Root: must be a configured trust anchor (AMD, or the emulated root when allowed).
    let wanted = inter.tbs_certificate().issuer();
    let amd_root = anchors
        .amd_roots
        .iter()
        .find(|r| r.tbs_certificate().subject() == wanted);
    let (root, emulated) = match amd_root {
        Some(r) => (r.clone(), false),
        None => {
            let name = crate::x509::name_cn(wanted);
            if name == EMULATED_ARK_CN {
                if !anchors.allow_emulated {
                    return Err(Rejection::EmulatedNotAllowed(name));
                }
                match &anchors.emulated_root {
                    Some(r) if r.tbs_certificate().subject() == wanted => (r.clone(), true),
                    _ => {
                        return Err(Rejection::UntrustedRoot(format!(
                            "{name} (no emulated root configured)"
                        )));
                    }
                }
            } else {
                return Err(Rejection::UntrustedRoot(format!(
                    "{name} is not a configured AMD root"
                )));
            }
        }
    };
    if !emulated {
        let fp = hex::encode(fingerprint(&root)?);
        if !AMD_ARK_SHA256.contains(&fp.as_str()) {
            return Err(Rejection::UntrustedRoot(format!(
                "{} fingerprint {fp} is not a published AMD ARK",
                common_name(&root)
            )));
        }
    }
    // An ARK sent in the evidence must be the anchor itself.
    for (k, c) in &pool {
        if *k == CertKind::Ark && crate::x509::to_der(c)? != crate::x509::to_der(&root)? {
            return Err(Rejection::UntrustedRoot(format!(
                "evidence ARK {} differs from the trust anchor",
                common_name(c)
            )));
        }
    }

    verify_cert_signed_by(&root, &root)?;
    verify_cert_signed_by(&inter, &root)?;
    verify_cert_signed_by(&leaf, &inter)?;
    check_validity(&root, at, &format!("ARK {}", common_name(&root)))?;
    check_validity(&inter, at, &format!("ASK {}", common_name(&inter)))?;
    check_validity(&leaf, at, leaf_cn)?;

    // VEK extensions against the report.
    let ext = VekExtensions::read(&leaf)?;
    let generation = ext
        .product_name
        .as_deref()
        .and_then(Generation::from_product_name)
        .or_else(|| report.generation_from_cpuid())
        .or_else(|| Generation::from_product_name(&common_name(&root)))
        .ok_or_else(|| Rejection::Unsupported {
            what: "SNP product generation",
            got: "unknown".into(),
        })?;
    let reported_tcb = TcbVersion::decode(report.reported_tcb, generation);
    let pairs = [
        ("bootloader", ext.bl_spl, reported_tcb.bootloader),
        ("tee", ext.tee_spl, reported_tcb.tee),
        ("snp", ext.snp_spl, reported_tcb.snp),
        ("microcode", ext.ucode_spl, reported_tcb.microcode),
    ];
    for (name, cert_v, rep_v) in pairs {
        if cert_v != rep_v {
            return Err(Rejection::mismatch(
                format!("REPORTED_TCB.{name} vs {leaf_cn} SPL"),
                cert_v,
                rep_v,
            ));
        }
    }
    if let (Some(f), Some(r)) = (ext.fmc_spl, reported_tcb.fmc)
        && f != r
    {
        return Err(Rejection::mismatch(
            format!("REPORTED_TCB.fmc vs {leaf_cn} SPL"),
            f,
            r,
        ));
    }
    if vek_type == VekType::Vcek && !report.chip_id_masked() {
        match &ext.hwid {
            Some(h) if h.as_slice() == report.chip_id.as_slice() => {}
            Some(h) => {
                return Err(Rejection::mismatch(
                    "CHIP_ID vs VCEK hwID",
                    hex::encode(h),
                    hex::encode(report.chip_id),
                ));
            }
            None => return Err(Rejection::cert(leaf_cn, "missing hwID extension")),
        }
    }

    // Report signature.
    let spki = leaf.tbs_certificate().subject_public_key_info();
    let curve = crate::x509::ec_curve(spki).map_err(|e| Rejection::cert(leaf_cn, e))?;
    if curve != crate::x509::OID_SECP384R1 {
        return Err(Rejection::cert(
            leaf_cn,
            format!("key curve expected secp384r1, got {curve}"),
        ));
    }
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| Rejection::cert(leaf_cn, "bad key bit string"))?;
    let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
        .map_err(|e| Rejection::cert(leaf_cn, e))?;
    let sig_be = report
        .signature_be()
        .ok_or(Rejection::Signature { what: "SNP report" })?;
    let sig = p384::ecdsa::Signature::from_slice(&sig_be)
        .map_err(|_| Rejection::Signature { what: "SNP report" })?;
    vk.verify(&report_bytes[..SIGNED_LEN], &sig)
        .map_err(|_| Rejection::Signature { what: "SNP report" })?;

    // Policy.
    if report.debug_allowed() && !exp.allow_debug {
        return Err(Rejection::Policy {
            check: "debug",
            reason: format!("guest POLICY {:#x} allows debugging", report.policy),
        });
    }
    if let Some(min) = &exp.min_snp_tcb
        && !reported_tcb.meets(min)
    {
        return Err(Rejection::mismatch(
            "REPORTED_TCB (minimum)",
            format!(">= {min}"),
            reported_tcb,
        ));
    }
    if let Some(vmpl) = exp.vmpl
        && report.vmpl != vmpl
    {
        return Err(Rejection::mismatch("VMPL", vmpl, report.vmpl));
    }
    check_bytes(
        "measurement",
        exp.measurement.as_deref(),
        &report.measurement,
    )?;
    check_bytes("host_data", exp.init_data.as_deref(), &report.host_data)?;
    check_bytes(
        "report_data",
        exp.report_data.as_deref(),
        &report.report_data,
    )?;

    Ok(SnpVerified {
        report,
        generation,
        reported_tcb,
        vek_type,
        emulated,
        root_cn: common_name(&root),
    })
}
