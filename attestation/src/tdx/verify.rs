//! TDX quote verification: PCK chain to the Intel root, CRLs, QE report signature and binding,
//! quote signature, TCB status from tcbInfo + QE identity at a (pinnable) time.

use std::time::SystemTime;

use der::asn1::{Any, ObjectIdentifier, OctetString};
use sha2::{Digest, Sha256};
use signature::Verifier as _;
use x509_cert::Certificate;

use super::collateral::{TcbStatus, check_fresh, hex_field};
use super::quote::{HEADER_LEN, Quote, TD10_BODY_LEN, TD15_BODY_LEN, V5_DESCRIPTOR_LEN};
use crate::error::{Rejection, Result};
use crate::verifier::{Expectations, TrustAnchors, check_bytes};
use crate::x509::{
    check_validity, common_name, extension_value, is_revoked, verify_cert_signed_by, verify_crl,
};

pub const OID_SGX_EXTENSIONS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1");
pub const OID_SGX_TCB: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2");
pub const OID_SGX_PCEID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.3");
pub const OID_SGX_FMSPC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.4");
/// Arc of the TCB component SVNs (`.2.1` .. `.2.16`), PCESVN (`.2.17`), CPUSVN (`.2.18`).
pub const SGX_TCB_ARC: &str = "1.2.840.113741.1.13.1.2";

/// SHA-256 fingerprint of the Intel SGX Root CA.
pub const INTEL_SGX_ROOT_SHA256: &str =
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// Platform values from the PCK certificate's SGX extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckInfo {
    pub fmspc: [u8; 6],
    pub pceid: [u8; 2],
    pub pcesvn: u16,
    pub sgx_tcb_comp_svn: [u8; 16],
    pub cpusvn: [u8; 16],
}

fn bad_pck(reason: impl ToString) -> Rejection {
    Rejection::cert("PCK SGX extensions", reason)
}

fn kv(any: &Any) -> Result<(ObjectIdentifier, Any)> {
    let items: Vec<Any> = any.decode_as().map_err(bad_pck)?;
    match items.as_slice() {
        [oid, value] => Ok((oid.decode_as().map_err(bad_pck)?, value.clone())),
        _ => Err(bad_pck("entry is not (OID, value)")),
    }
}

impl PckInfo {
    pub fn read(pck: &Certificate) -> Result<Self> {
        let ext = extension_value(pck, &OID_SGX_EXTENSIONS).ok_or_else(|| bad_pck("missing"))?;
        let entries: Vec<Any> = der::Decode::from_der(ext).map_err(bad_pck)?;
        let mut fmspc = None;
        let mut pceid = None;
        let mut tcb = None;
        for e in &entries {
            let (oid, value) = kv(e)?;
            if oid == OID_SGX_FMSPC {
                fmspc = Some(
                    value
                        .decode_as::<OctetString>()
                        .map_err(bad_pck)?
                        .as_bytes()
                        .to_vec(),
                );
            } else if oid == OID_SGX_PCEID {
                pceid = Some(
                    value
                        .decode_as::<OctetString>()
                        .map_err(bad_pck)?
                        .as_bytes()
                        .to_vec(),
                );
            } else if oid == OID_SGX_TCB {
                tcb = Some(value);
            }
        }
        let tcb = tcb.ok_or_else(|| bad_pck("missing TCB"))?;
        let mut comps = [0u8; 16];
        let mut pcesvn = None;
        let mut cpusvn = None;
        for e in tcb.decode_as::<Vec<Any>>().map_err(bad_pck)? {
            let (oid, value) = kv(&e)?;
            let s = oid.to_string();
            let Some(last) = s
                .strip_prefix(SGX_TCB_ARC)
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            match last {
                1..=16 => comps[last - 1] = value.decode_as::<u8>().map_err(bad_pck)?,
                17 => pcesvn = Some(value.decode_as::<u16>().map_err(bad_pck)?),
                18 => {
                    cpusvn = Some(
                        value
                            .decode_as::<OctetString>()
                            .map_err(bad_pck)?
                            .as_bytes()
                            .to_vec(),
                    )
                }
                _ => {}
            }
        }
        let fixed =
            |v: Option<Vec<u8>>, what: &str| v.ok_or_else(|| bad_pck(format!("missing {what}")));
        Ok(PckInfo {
            fmspc: fixed(fmspc, "FMSPC")?
                .try_into()
                .map_err(|_| bad_pck("FMSPC length"))?,
            pceid: fixed(pceid, "PCE-ID")?
                .try_into()
                .map_err(|_| bad_pck("PCE-ID length"))?,
            pcesvn: pcesvn.ok_or_else(|| bad_pck("missing PCESVN"))?,
            sgx_tcb_comp_svn: comps,
            cpusvn: fixed(cpusvn, "CPUSVN")?
                .try_into()
                .map_err(|_| bad_pck("CPUSVN length"))?,
        })
    }
}

/// Result of a successful TDX verification.
#[derive(Debug, Clone)]
pub struct TdxVerified {
    pub quote: Quote,
    pub pck: PckInfo,
    /// `None` when no collateral was supplied and the expectations allowed that.
    pub tcb_status: Option<TcbStatus>,
    pub advisory_ids: Vec<String>,
}

fn p256_key(xy: &[u8; 64]) -> Result<p256::ecdsa::VerifyingKey> {
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[1..].copy_from_slice(xy);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
        .map_err(|_| Rejection::malformed("TDX attestation key", "not a P-256 point"))
}

fn p256_verify(
    key: &p256::ecdsa::VerifyingKey,
    msg: &[u8],
    rs: &[u8; 64],
    what: &'static str,
) -> Result<()> {
    let sig = p256::ecdsa::Signature::from_slice(rs).map_err(|_| Rejection::Signature { what })?;
    key.verify(msg, &sig)
        .map_err(|_| Rejection::Signature { what })
}

/// Verify a TDX quote.
pub fn verify_quote(
    bytes: &[u8],
    anchors: &TrustAnchors,
    exp: &Expectations,
) -> Result<TdxVerified> {
    let quote = Quote::parse(bytes)?;
    let at = exp.at.unwrap_or_else(SystemTime::now);

    // PCK chain: PCK -> Platform/Processor CA -> Intel SGX Root CA (a configured anchor).
    let chain = crate::x509::parse_pem_chain(&quote.pck_chain, "quote PCK chain")?;
    let (pck, inter) = match chain.as_slice() {
        [pck, inter, ..] => (pck, inter),
        _ => {
            return Err(Rejection::MissingCertificate(
                "PCK chain needs the PCK and its CA".into(),
            ));
        }
    };
    let root = anchors
        .intel_roots
        .iter()
        .find(|r| r.tbs_certificate().subject() == inter.tbs_certificate().issuer())
        .ok_or_else(|| {
            Rejection::UntrustedRoot(format!(
                "{} is not a configured Intel root",
                crate::x509::issuer_cn(inter)
            ))
        })?;
    if let Some(embedded) = chain.get(2)
        && crate::x509::to_der(embedded)? != crate::x509::to_der(root)?
    {
        return Err(Rejection::UntrustedRoot(format!(
            "quote root {} differs from the trust anchor",
            common_name(embedded)
        )));
    }
    verify_cert_signed_by(inter, root)?;
    verify_cert_signed_by(pck, inter)?;
    check_validity(root, at, "Intel SGX Root CA")?;
    check_validity(inter, at, &common_name(inter))?;
    check_validity(pck, at, "PCK certificate")?;

    // CRLs.
    let coll = &anchors.tdx_collateral;
    let mut root_crl_seen = false;
    let mut pck_crl_seen = false;
    for crl in &coll.crls {
        if crl.tbs_cert_list.issuer == *root.tbs_certificate().subject() {
            verify_crl(crl, root, at, "Intel SGX Root CA CRL")?;
            root_crl_seen = true;
            if is_revoked(crl, inter) {
                return Err(Rejection::Revoked {
                    what: common_name(inter),
                    crl: "root CRL".into(),
                    serial: hex::encode(inter.tbs_certificate().serial_number().as_bytes()),
                });
            }
        } else if crl.tbs_cert_list.issuer == *inter.tbs_certificate().subject() {
            verify_crl(crl, inter, at, "PCK CRL")?;
            pck_crl_seen = true;
            if is_revoked(crl, pck) {
                return Err(Rejection::Revoked {
                    what: "PCK certificate".into(),
                    crl: "PCK CRL".into(),
                    serial: hex::encode(pck.tbs_certificate().serial_number().as_bytes()),
                });
            }
        }
    }
    if exp.require_tdx_collateral {
        if !root_crl_seen {
            return Err(Rejection::MissingCollateral("Intel SGX Root CA CRL".into()));
        }
        if !pck_crl_seen {
            return Err(Rejection::MissingCollateral(format!(
                "CRL of {}",
                common_name(inter)
            )));
        }
    }

    // QE report signed by the PCK key.
    let pck_spki = pck.tbs_certificate().subject_public_key_info();
    let pck_key_bytes = pck_spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| Rejection::cert("PCK", "bad key bit string"))?;
    let pck_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(pck_key_bytes)
        .map_err(|e| Rejection::cert("PCK", e))?;
    p256_verify(
        &pck_key,
        &quote.qe_report.raw,
        &quote.qe_report_signature,
        "QE report",
    )?;

    // QE report binds the attestation key.
    let mut h = Sha256::new();
    h.update(quote.attestation_key);
    h.update(&quote.qe_auth_data);
    let expect: [u8; 32] = h.finalize().into();
    let rd = quote.qe_report.report_data();
    if rd[..32] != expect || rd[32..].iter().any(|b| *b != 0) {
        return Err(Rejection::mismatch(
            "QE report_data (SHA-256(attestation key || QE auth data))",
            hex::encode(expect),
            hex::encode(&rd[..32]),
        ));
    }

    // Quote signature over header || [descriptor] || body.
    let signed_len = HEADER_LEN
        + match quote.body_type {
            None => TD10_BODY_LEN,
            Some(t) if t == super::quote::BODY_TYPE_TD15 => V5_DESCRIPTOR_LEN + TD15_BODY_LEN,
            Some(_) => V5_DESCRIPTOR_LEN + TD10_BODY_LEN,
        };
    let att_key = p256_key(&quote.attestation_key)?;
    p256_verify(
        &att_key,
        &bytes[..signed_len],
        &quote.signature,
        "TDX quote",
    )?;

    // TCB status from collateral.
    let pck_info = PckInfo::read(pck)?;
    let (tcb_status, advisory_ids) = tcb_status(&quote, &pck_info, anchors, exp, at)?;
    if let Some(st) = tcb_status
        && !exp.accepted_tdx_tcb_status.contains(&st)
    {
        return Err(Rejection::Policy {
            check: "TCB status",
            reason: format!("{} is not accepted", st.as_str()),
        });
    }

    // Policy and expectations.
    if quote.body.debug() && !exp.allow_debug {
        return Err(Rejection::Policy {
            check: "debug",
            reason: format!(
                "TD_ATTRIBUTES {:#x} has DEBUG set",
                quote.body.td_attributes_u64()
            ),
        });
    }
    check_bytes("mr_td", exp.measurement.as_deref(), &quote.body.mrtd)?;
    check_bytes(
        "mr_config_id",
        exp.init_data.as_deref(),
        &quote.body.mrconfigid,
    )?;
    check_bytes(
        "report_data",
        exp.report_data.as_deref(),
        &quote.body.report_data,
    )?;
    for (i, want) in exp.rtmr.iter().enumerate() {
        check_bytes(&format!("rtmr{i}"), want.as_deref(), &quote.body.rtmr[i])?;
    }
    Ok(TdxVerified {
        quote,
        pck: pck_info,
        tcb_status,
        advisory_ids,
    })
}

fn masked_eq(value: &[u8], mask: &[u8], expected: &[u8]) -> bool {
    value.len() == mask.len()
        && mask.len() == expected.len()
        && value
            .iter()
            .zip(mask)
            .zip(expected)
            .all(|((v, m), e)| v & m == e & m)
}

fn tcb_status(
    quote: &Quote,
    pck: &PckInfo,
    anchors: &TrustAnchors,
    exp: &Expectations,
    at: SystemTime,
) -> Result<(Option<TcbStatus>, Vec<String>)> {
    let coll = &anchors.tdx_collateral;
    let fmspc = hex::encode(pck.fmspc);
    let Some(info) = coll
        .tcb_infos
        .iter()
        .find(|t| t.fmspc.eq_ignore_ascii_case(&fmspc))
    else {
        if exp.require_tdx_collateral {
            let have: Vec<&str> = coll.tcb_infos.iter().map(|t| t.fmspc.as_str()).collect();
            return Err(if have.is_empty() {
                Rejection::MissingCollateral(format!("tcbInfo for FMSPC {fmspc}"))
            } else {
                Rejection::mismatch("tcbInfo fmspc", fmspc, have.join(","))
            });
        }
        return Ok((None, Vec::new()));
    };
    if info.id != "TDX" {
        return Err(Rejection::mismatch("tcbInfo id", "TDX", &info.id));
    }
    check_fresh(&info.issue_date, &info.next_update, at, "tcbInfo")?;
    if !info.pce_id.eq_ignore_ascii_case(&hex::encode(pck.pceid)) {
        return Err(Rejection::mismatch(
            "tcbInfo pceId",
            hex::encode(pck.pceid),
            &info.pce_id,
        ));
    }
    let body = &quote.body;
    if let Some(m) = &info.tdx_module {
        let signer = hex_field(&m.mrsigner, "tdxModule.mrsigner")?;
        if signer != body.mrsignerseam {
            return Err(Rejection::mismatch(
                "MRSIGNERSEAM",
                m.mrsigner.to_lowercase(),
                hex::encode(body.mrsignerseam),
            ));
        }
        let attrs = hex_field(&m.attributes, "tdxModule.attributes")?;
        let mask = hex_field(&m.attributes_mask, "tdxModule.attributesMask")?;
        if !masked_eq(&body.seam_attributes, &mask, &attrs) {
            return Err(Rejection::mismatch(
                "SEAMATTRIBUTES (masked)",
                m.attributes.to_lowercase(),
                hex::encode(body.seam_attributes),
            ));
        }
    }
    // Platform TCB level: first level whose SGX components, PCESVN and TDX components are all <=.
    let tee = &body.tee_tcb_svn;
    let tdx_start = if tee[1] > 0 { 2 } else { 0 };
    let level = info.tcb_levels.iter().find(|l| {
        let sgx_ok = l.tcb.sgxtcbcomponents.len() == 16
            && l.tcb
                .sgxtcbcomponents
                .iter()
                .zip(pck.sgx_tcb_comp_svn)
                .all(|(c, p)| p >= c.svn);
        let pce_ok = pck.pcesvn >= l.tcb.pcesvn;
        let tdx_ok = l
            .tcb
            .tdxtcbcomponents
            .as_ref()
            .is_some_and(|t| t.len() == 16 && (tdx_start..16).all(|i| tee[i] >= t[i].svn));
        sgx_ok && pce_ok && tdx_ok
    });
    let Some(level) = level else {
        return Err(Rejection::Policy {
            check: "TCB status",
            reason: format!(
                "no tcbInfo level matches TEE_TCB_SVN {} / PCESVN {}",
                hex::encode(tee),
                pck.pcesvn
            ),
        });
    };
    let mut status = TcbStatus::parse(&level.tcb_status)?;
    let mut advisories = level.advisory_ids.clone().unwrap_or_default();

    // TDX module identity (TDX 1.5: TEE_TCB_SVN[1] is the module major version).
    if tee[1] > 0
        && let Some(ids) = &info.tdx_module_identities
    {
        let id = format!("TDX_{:02X}", tee[1]);
        let ident = ids
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| Rejection::MissingCollateral(format!("tdxModuleIdentities {id}")))?;
        if hex_field(&ident.mrsigner, "tdxModuleIdentity.mrsigner")? != body.mrsignerseam {
            return Err(Rejection::mismatch(
                format!("MRSIGNERSEAM ({id})"),
                ident.mrsigner.to_lowercase(),
                hex::encode(body.mrsignerseam),
            ));
        }
        let lvl = ident
            .tcb_levels
            .iter()
            .find(|l| u16::from(tee[0]) >= l.tcb.isvsvn)
            .ok_or_else(|| Rejection::Policy {
                check: "TCB status",
                reason: format!("no {id} level for module SVN {}", tee[0]),
            })?;
        status = status.max(TcbStatus::parse(&lvl.tcb_status)?);
    }

    // QE identity.
    match coll.qe_identities.iter().find(|q| q.id == "TD_QE") {
        Some(qe) => {
            check_fresh(&qe.issue_date, &qe.next_update, at, "qeIdentity")?;
            let r = &quote.qe_report;
            if hex_field(&qe.mrsigner, "qeIdentity.mrsigner")? != r.mr_signer() {
                return Err(Rejection::mismatch(
                    "QE MRSIGNER",
                    qe.mrsigner.to_lowercase(),
                    hex::encode(r.mr_signer()),
                ));
            }
            if qe.isvprodid != r.isv_prod_id() {
                return Err(Rejection::mismatch(
                    "QE ISVPRODID",
                    qe.isvprodid,
                    r.isv_prod_id(),
                ));
            }
            let ms = hex_field(&qe.miscselect, "miscselect")?;
            let msm = hex_field(&qe.miscselect_mask, "miscselectMask")?;
            if !masked_eq(&r.misc_select().to_be_bytes(), &msm, &ms) {
                return Err(Rejection::mismatch(
                    "QE MISCSELECT (masked)",
                    &qe.miscselect,
                    format!("{:08X}", r.misc_select()),
                ));
            }
            let at_ = hex_field(&qe.attributes, "attributes")?;
            let atm = hex_field(&qe.attributes_mask, "attributesMask")?;
            if !masked_eq(&r.attributes(), &atm, &at_) {
                return Err(Rejection::mismatch(
                    "QE ATTRIBUTES (masked)",
                    &qe.attributes,
                    hex::encode_upper(r.attributes()),
                ));
            }
            let lvl = qe
                .tcb_levels
                .iter()
                .find(|l| r.isv_svn() >= l.tcb.isvsvn)
                .ok_or_else(|| Rejection::Policy {
                    check: "QE TCB status",
                    reason: format!("no qeIdentity level for ISVSVN {}", r.isv_svn()),
                })?;
            let qe_status = TcbStatus::parse(&lvl.tcb_status)?;
            if qe_status == TcbStatus::Revoked {
                advisories.push("QE identity revoked".into());
            }
            status = status.max(qe_status);
        }
        None if exp.require_tdx_collateral => {
            return Err(Rejection::MissingCollateral("qeIdentity (TD_QE)".into()));
        }
        None => {}
    }
    Ok((Some(status), advisories))
}
