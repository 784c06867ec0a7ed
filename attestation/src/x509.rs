//! Certificate and CRL helpers on top of `x509-cert`, `rsa`, `p256` and `p384`:
//! signature-by-issuer checks, validity windows, names. No crypto is implemented here.

use std::time::{Duration, SystemTime};

use der::asn1::{BitString, ObjectIdentifier};
use der::{Decode, Encode};
use sha2::{Digest, Sha256, Sha384};
use signature::Verifier as _;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;

use crate::error::{Rejection, Result};

pub const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
pub const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
pub const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub const OID_SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
pub const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
pub const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
pub const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");

const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----";

/// Parse one certificate from DER. The DER must be canonical (re-encoding gives the same
/// bytes), so that no leniently decoded byte can change a certificate that still verifies.
pub fn parse_der_cert(der: &[u8], which: &str) -> Result<Certificate> {
    let c = Certificate::from_der(der).map_err(|e| Rejection::cert(which, format!("DER: {e}")))?;
    let again = c
        .to_der()
        .map_err(|e| Rejection::cert(which, format!("re-encode: {e}")))?;
    if again != der {
        return Err(Rejection::cert(which, "DER is not canonical"));
    }
    Ok(c)
}

fn pem_block_to_der(block: &[u8], which: &str) -> Result<Vec<u8>> {
    let (label, der) =
        der::pem::decode_vec(block).map_err(|e| Rejection::cert(which, format!("PEM: {e}")))?;
    if label != "CERTIFICATE" {
        return Err(Rejection::cert(
            which,
            format!("PEM label {label:?}, expected CERTIFICATE"),
        ));
    }
    Ok(der)
}

/// Parse one certificate from DER or PEM.
pub fn parse_cert(bytes: &[u8], which: &str) -> Result<Certificate> {
    let trimmed = bytes.trim_ascii();
    if trimmed.starts_with(b"-----BEGIN") {
        parse_der_cert(&pem_block_to_der(trimmed, which)?, which)
    } else {
        parse_der_cert(bytes, which)
    }
}

/// Parse a PEM chain (one or more certificates). Trailing NULs are ignored (DCAP quotes end
/// the PCK chain with one); only newlines may separate the blocks; nothing may follow them.
pub fn parse_pem_chain(bytes: &[u8], which: &str) -> Result<Vec<Certificate>> {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let mut rest = &bytes[..end];
    let mut out = Vec::new();
    while !rest.is_empty() {
        if !rest.starts_with(PEM_BEGIN) {
            return Err(Rejection::cert(
                which,
                format!(
                    "PEM chain: expected BEGIN CERTIFICATE at block {}",
                    out.len() + 1
                ),
            ));
        }
        let stop = rest
            .windows(PEM_END.len())
            .position(|w| w == PEM_END)
            .ok_or_else(|| Rejection::cert(which, "PEM chain: missing END CERTIFICATE"))?
            + PEM_END.len();
        let mut next = stop;
        if rest.get(next) == Some(&b'\n') {
            next += 1;
        }
        out.push(parse_der_cert(
            &pem_block_to_der(&rest[..stop], which)?,
            which,
        )?);
        rest = &rest[next..];
    }
    if out.is_empty() {
        return Err(Rejection::cert(which, "PEM chain is empty"));
    }
    Ok(out)
}

/// DER encoding of a certificate.
pub fn to_der(cert: &Certificate) -> Result<Vec<u8>> {
    cert.to_der()
        .map_err(|e| Rejection::cert(common_name(cert), format!("encode: {e}")))
}

/// SHA-256 fingerprint of the DER.
pub fn fingerprint(cert: &Certificate) -> Result<[u8; 32]> {
    Ok(Sha256::digest(to_der(cert)?).into())
}

/// The subject common name (or the whole subject if there is none).
pub fn common_name(cert: &Certificate) -> String {
    name_cn(cert.tbs_certificate().subject())
}

/// Issuer common name.
pub fn issuer_cn(cert: &Certificate) -> String {
    name_cn(cert.tbs_certificate().issuer())
}

pub fn name_cn(name: &x509_cert::name::Name) -> String {
    match name.common_name() {
        Ok(Some(cn)) => cn.value().into_owned(),
        _ => name.to_string(),
    }
}

fn unix(d: Duration) -> String {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// RFC 3339 rendering of a SystemTime (for messages and claims).
pub fn rfc3339(t: SystemTime) -> String {
    unix(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// Check `not_before <= at <= not_after`.
pub fn check_validity(cert: &Certificate, at: SystemTime, what: &str) -> Result<()> {
    let v = cert.tbs_certificate().validity();
    let nb = v.not_before.to_unix_duration();
    let na = v.not_after.to_unix_duration();
    let now = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if now < nb || now > na {
        return Err(Rejection::Expired {
            what: what.to_string(),
            at: unix(now),
            not_before: unix(nb),
            not_after: unix(na),
        });
    }
    Ok(())
}

/// Verify `signature` over `message` made with `alg` by the key in `issuer_spki`.
pub fn verify_signature(
    message: &[u8],
    alg: &AlgorithmIdentifierOwned,
    signature: &BitString,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> std::result::Result<(), String> {
    let sig = signature
        .as_bytes()
        .ok_or("signature BIT STRING has unused bits")?;
    let key = issuer_spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key BIT STRING has unused bits")?;
    if alg.oid == OID_RSASSA_PSS {
        let params = alg
            .parameters
            .as_ref()
            .ok_or("RSASSA-PSS without parameters")?;
        let params: rsa::pkcs1::RsaPssParamsOwned = params
            .decode_as()
            .map_err(|e| format!("RSASSA-PSS parameters: {e}"))?;
        let pubkey = rsa_key(issuer_spki)?;
        let sig = rsa::pss::Signature::try_from(sig).map_err(|e| format!("RSA signature: {e}"))?;
        let salt = usize::from(params.salt_len);
        let mgf_hash = params.mask_gen.parameters.as_ref().map(|p| p.oid);
        if params.mask_gen.oid != OID_MGF1 || mgf_hash != Some(params.hash.oid) {
            return Err(format!(
                "RSASSA-PSS mask generation {} / {:?} does not match hash {}",
                params.mask_gen.oid, mgf_hash, params.hash.oid
            ));
        }
        if params.hash.oid == OID_SHA384 {
            rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(pubkey, salt)
                .verify(message, &sig)
                .map_err(|_| "bad signature".to_string())
        } else if params.hash.oid == OID_SHA256 {
            rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(pubkey, salt)
                .verify(message, &sig)
                .map_err(|_| "bad signature".to_string())
        } else {
            Err(format!("unsupported RSASSA-PSS hash {}", params.hash.oid))
        }
    } else if alg.oid == OID_ECDSA_SHA256 || alg.oid == OID_ECDSA_SHA384 {
        let curve = ec_curve(issuer_spki)?;
        match (curve, alg.oid == OID_ECDSA_SHA256) {
            (c, true) if c == OID_SECP256R1 => {
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(key)
                    .map_err(|e| format!("P-256 key: {e}"))?;
                let s = p256::ecdsa::Signature::from_der(sig)
                    .map_err(|e| format!("ECDSA signature: {e}"))?;
                vk.verify(message, &s)
                    .map_err(|_| "bad signature".to_string())
            }
            (c, false) if c == OID_SECP384R1 => {
                let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(key)
                    .map_err(|e| format!("P-384 key: {e}"))?;
                let s = p384::ecdsa::Signature::from_der(sig)
                    .map_err(|e| format!("ECDSA signature: {e}"))?;
                vk.verify(message, &s)
                    .map_err(|_| "bad signature".to_string())
            }
            (c, _) => Err(format!(
                "unsupported curve/hash combination {c} / {}",
                alg.oid
            )),
        }
    } else {
        Err(format!("unsupported signature algorithm {}", alg.oid))
    }
}

fn rsa_key(spki: &SubjectPublicKeyInfoOwned) -> std::result::Result<rsa::PublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    if spki.algorithm.oid != OID_RSA_ENCRYPTION && spki.algorithm.oid != OID_RSASSA_PSS {
        return Err(format!("issuer key is not RSA ({})", spki.algorithm.oid));
    }
    let bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or("RSA key BIT STRING has unused bits")?;
    rsa::PublicKey::from_pkcs1_der(bytes).map_err(|e| format!("RSA key: {e}"))
}

/// The named curve of an EC SubjectPublicKeyInfo.
pub fn ec_curve(spki: &SubjectPublicKeyInfoOwned) -> std::result::Result<ObjectIdentifier, String> {
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
        return Err(format!("key is not EC ({})", spki.algorithm.oid));
    }
    let params = spki
        .algorithm
        .parameters
        .as_ref()
        .ok_or("EC key without curve")?;
    params
        .decode_as::<ObjectIdentifier>()
        .map_err(|e| format!("EC curve: {e}"))
}

/// Verify that `child` is signed by `issuer` (names and signature).
pub fn verify_cert_signed_by(child: &Certificate, issuer: &Certificate) -> Result<()> {
    let fail = || Rejection::CertSignature {
        issuer: common_name(issuer),
        subject: common_name(child),
    };
    if child.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return Err(Rejection::mismatch(
            format!("issuer of {}", common_name(child)),
            name_cn(issuer.tbs_certificate().subject()),
            issuer_cn(child),
        ));
    }
    // The outer algorithm is not signed: it must equal the signed one (RFC 5280 4.1.1.2).
    if child.signature_algorithm() != child.tbs_certificate().signature() {
        return Err(fail());
    }
    let tbs = child
        .tbs_certificate()
        .to_der()
        .map_err(|e| Rejection::cert(common_name(child), e))?;
    verify_signature(
        &tbs,
        child.signature_algorithm(),
        child.signature(),
        issuer.tbs_certificate().subject_public_key_info(),
    )
    .map_err(|_| fail())
}

/// Verify a CRL's signature by `issuer` and its freshness at `at`.
pub fn verify_crl(
    crl: &CertificateList,
    issuer: &Certificate,
    at: SystemTime,
    what: &str,
) -> Result<()> {
    if crl.tbs_cert_list.issuer != *issuer.tbs_certificate().subject() {
        return Err(Rejection::mismatch(
            format!("{what} issuer"),
            common_name(issuer),
            name_cn(&crl.tbs_cert_list.issuer),
        ));
    }
    if crl.signature_algorithm != crl.tbs_cert_list.signature {
        return Err(Rejection::CertSignature {
            issuer: common_name(issuer),
            subject: what.to_string(),
        });
    }
    let tbs = crl
        .tbs_cert_list
        .to_der()
        .map_err(|e| Rejection::malformed("CRL", e))?;
    verify_signature(
        &tbs,
        &crl.signature_algorithm,
        &crl.signature,
        issuer.tbs_certificate().subject_public_key_info(),
    )
    .map_err(|_| Rejection::CertSignature {
        issuer: common_name(issuer),
        subject: what.to_string(),
    })?;
    let now = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let this = crl.tbs_cert_list.this_update.to_unix_duration();
    let next = crl.tbs_cert_list.next_update.map(|t| t.to_unix_duration());
    if now < this || next.is_some_and(|n| now > n) {
        return Err(Rejection::Expired {
            what: what.to_string(),
            at: unix(now),
            not_before: unix(this),
            not_after: next.map(unix).unwrap_or_else(|| "-".into()),
        });
    }
    Ok(())
}

/// Is `cert`'s serial listed in `crl`?
pub fn is_revoked(crl: &CertificateList, cert: &Certificate) -> bool {
    let serial = cert.tbs_certificate().serial_number();
    crl.tbs_cert_list
        .revoked_certificates
        .as_ref()
        .is_some_and(|list| {
            list.iter()
                .any(|r| r.serial_number.as_bytes() == serial.as_bytes())
        })
}

/// Parse a DER (or PEM) CRL.
pub fn parse_crl(bytes: &[u8], what: &str) -> Result<CertificateList> {
    let trimmed = bytes.trim_ascii_start();
    let der = if trimmed.starts_with(b"-----BEGIN") {
        let (label, der) = der::pem::decode_vec(trimmed)
            .map_err(|e| Rejection::cert(what, format!("CRL PEM: {e}")))?;
        if label != "X509 CRL" {
            return Err(Rejection::cert(
                what,
                format!("PEM label {label:?}, expected X509 CRL"),
            ));
        }
        der
    } else {
        bytes.to_vec()
    };
    let crl =
        CertificateList::from_der(&der).map_err(|e| Rejection::cert(what, format!("CRL: {e}")))?;
    if crl
        .to_der()
        .map_err(|e| Rejection::cert(what, format!("CRL re-encode: {e}")))?
        != der
    {
        return Err(Rejection::cert(what, "CRL DER is not canonical"));
    }
    Ok(crl)
}

/// The raw `extnValue` of an extension, if present.
pub fn extension_value<'a>(cert: &'a Certificate, oid: &ObjectIdentifier) -> Option<&'a [u8]> {
    cert.tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id == *oid)
        .map(|e| e.extn_value.as_bytes())
}
