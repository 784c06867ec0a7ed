//! Intel TDX ECDSA quotes, versions 4 and 5 (Intel TDX DCAP Quote Generation Library and
//! Quote Verification Library API, "Quote Format"). All offsets are named; `parse` then
//! `to_bytes` is the identity.

use crate::error::{Rejection, Result};

pub const HEADER_LEN: usize = 0x30;
pub const HDR_OFF_VERSION: usize = 0x00;
pub const HDR_OFF_ATT_KEY_TYPE: usize = 0x02;
pub const HDR_OFF_TEE_TYPE: usize = 0x04;
pub const HDR_OFF_QE_SVN: usize = 0x08;
pub const HDR_OFF_PCE_SVN: usize = 0x0A;
pub const HDR_OFF_QE_VENDOR_ID: usize = 0x0C;
pub const HDR_OFF_USER_DATA: usize = 0x1C;

/// v5 body descriptor: `u16 body_type, u32 body_size` at the end of the header.
pub const V5_DESCRIPTOR_LEN: usize = 6;
pub const BODY_TYPE_TD10: u16 = 2;
pub const BODY_TYPE_TD15: u16 = 3;
pub const TD10_BODY_LEN: usize = 584;
pub const TD15_BODY_LEN: usize = 648;

pub const BODY_OFF_TEE_TCB_SVN: usize = 0x000;
pub const BODY_OFF_MRSEAM: usize = 0x010;
pub const BODY_OFF_MRSIGNERSEAM: usize = 0x040;
pub const BODY_OFF_SEAM_ATTRIBUTES: usize = 0x070;
pub const BODY_OFF_TD_ATTRIBUTES: usize = 0x078;
pub const BODY_OFF_XFAM: usize = 0x080;
pub const BODY_OFF_MRTD: usize = 0x088;
pub const BODY_OFF_MRCONFIGID: usize = 0x0B8;
pub const BODY_OFF_MROWNER: usize = 0x0E8;
pub const BODY_OFF_MROWNERCONFIG: usize = 0x118;
pub const BODY_OFF_RTMR0: usize = 0x148;
pub const BODY_OFF_REPORT_DATA: usize = 0x208;
pub const BODY_OFF_TEE_TCB_SVN2: usize = 0x248;
pub const BODY_OFF_MRSERVICETD: usize = 0x258;

/// Signature data: ECDSA signature, attestation key, certification data header.
pub const SIG_LEN: usize = 64;
pub const ATT_KEY_LEN: usize = 64;
pub const CERT_HDR_LEN: usize = 6;
/// Certification data type 6: QE report certification data; type 5: PCK chain (PEM).
pub const CERT_TYPE_QE_REPORT: u16 = 6;
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;

pub const QE_REPORT_LEN: usize = 384;
pub const QE_OFF_CPU_SVN: usize = 0;
pub const QE_OFF_MISC_SELECT: usize = 16;
pub const QE_OFF_ATTRIBUTES: usize = 48;
pub const QE_OFF_MR_ENCLAVE: usize = 64;
pub const QE_OFF_MR_SIGNER: usize = 128;
pub const QE_OFF_ISV_PROD_ID: usize = 256;
pub const QE_OFF_ISV_SVN: usize = 258;
pub const QE_OFF_REPORT_DATA: usize = 320;

/// TEE type of TDX in the header.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Attestation key type 2: ECDSA P-256.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// TD_ATTRIBUTES bit 0: DEBUG.
pub const TD_ATTRIBUTES_DEBUG: u64 = 1;

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(arr(b, off))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr(b, off))
}

/// Quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteHeader {
    pub version: u16,
    pub att_key_type: u16,
    pub tee_type: u32,
    pub qe_svn: u16,
    pub pce_svn: u16,
    pub qe_vendor_id: [u8; 16],
    pub user_data: [u8; 20],
}

/// TD report body (TDX 1.0; TDX 1.5 adds the two trailing fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReportBody {
    pub tee_tcb_svn: [u8; 16],
    pub mrseam: [u8; 48],
    pub mrsignerseam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mrtd: [u8; 48],
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrownerconfig: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    /// TDX 1.5 (body type 3) only.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5 (body type 3) only.
    pub mrservicetd: Option<[u8; 48]>,
}

impl TdReportBody {
    fn parse(b: &[u8]) -> Self {
        let v15 = b.len() == TD15_BODY_LEN;
        TdReportBody {
            tee_tcb_svn: arr(b, BODY_OFF_TEE_TCB_SVN),
            mrseam: arr(b, BODY_OFF_MRSEAM),
            mrsignerseam: arr(b, BODY_OFF_MRSIGNERSEAM),
            seam_attributes: arr(b, BODY_OFF_SEAM_ATTRIBUTES),
            td_attributes: arr(b, BODY_OFF_TD_ATTRIBUTES),
            xfam: arr(b, BODY_OFF_XFAM),
            mrtd: arr(b, BODY_OFF_MRTD),
            mrconfigid: arr(b, BODY_OFF_MRCONFIGID),
            mrowner: arr(b, BODY_OFF_MROWNER),
            mrownerconfig: arr(b, BODY_OFF_MROWNERCONFIG),
            rtmr: [0, 1, 2, 3].map(|i| arr(b, BODY_OFF_RTMR0 + 48 * i)),
            report_data: arr(b, BODY_OFF_REPORT_DATA),
            tee_tcb_svn2: v15.then(|| arr(b, BODY_OFF_TEE_TCB_SVN2)),
            mrservicetd: v15.then(|| arr(b, BODY_OFF_MRSERVICETD)),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = if self.tee_tcb_svn2.is_some() {
            TD15_BODY_LEN
        } else {
            TD10_BODY_LEN
        };
        out.resize(start + len, 0);
        let b = &mut out[start..];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(BODY_OFF_TEE_TCB_SVN, &self.tee_tcb_svn);
        put(BODY_OFF_MRSEAM, &self.mrseam);
        put(BODY_OFF_MRSIGNERSEAM, &self.mrsignerseam);
        put(BODY_OFF_SEAM_ATTRIBUTES, &self.seam_attributes);
        put(BODY_OFF_TD_ATTRIBUTES, &self.td_attributes);
        put(BODY_OFF_XFAM, &self.xfam);
        put(BODY_OFF_MRTD, &self.mrtd);
        put(BODY_OFF_MRCONFIGID, &self.mrconfigid);
        put(BODY_OFF_MROWNER, &self.mrowner);
        put(BODY_OFF_MROWNERCONFIG, &self.mrownerconfig);
        for (i, r) in self.rtmr.iter().enumerate() {
            put(BODY_OFF_RTMR0 + 48 * i, r);
        }
        put(BODY_OFF_REPORT_DATA, &self.report_data);
        if let (Some(s2), Some(m)) = (&self.tee_tcb_svn2, &self.mrservicetd) {
            put(BODY_OFF_TEE_TCB_SVN2, s2);
            put(BODY_OFF_MRSERVICETD, m);
        }
    }
    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }
    pub fn xfam_u64(&self) -> u64 {
        u64::from_le_bytes(self.xfam)
    }
    pub fn debug(&self) -> bool {
        self.td_attributes_u64() & TD_ATTRIBUTES_DEBUG != 0
    }
}

/// SGX report body of the Quoting Enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QeReport {
    pub raw: [u8; QE_REPORT_LEN],
}

impl QeReport {
    pub fn cpu_svn(&self) -> [u8; 16] {
        arr(&self.raw, QE_OFF_CPU_SVN)
    }
    pub fn misc_select(&self) -> u32 {
        u32_at(&self.raw, QE_OFF_MISC_SELECT)
    }
    pub fn attributes(&self) -> [u8; 16] {
        arr(&self.raw, QE_OFF_ATTRIBUTES)
    }
    pub fn mr_enclave(&self) -> [u8; 32] {
        arr(&self.raw, QE_OFF_MR_ENCLAVE)
    }
    pub fn mr_signer(&self) -> [u8; 32] {
        arr(&self.raw, QE_OFF_MR_SIGNER)
    }
    pub fn isv_prod_id(&self) -> u16 {
        u16_at(&self.raw, QE_OFF_ISV_PROD_ID)
    }
    pub fn isv_svn(&self) -> u16 {
        u16_at(&self.raw, QE_OFF_ISV_SVN)
    }
    pub fn report_data(&self) -> [u8; 64] {
        arr(&self.raw, QE_OFF_REPORT_DATA)
    }
}

/// A parsed TDX quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub header: QuoteHeader,
    /// v5 body type (2 or 3); `None` for v4 (implicitly TD 1.0).
    pub body_type: Option<u16>,
    pub body: TdReportBody,
    /// ECDSA P-256 signature `r || s` (big-endian) over header ‖ [descriptor] ‖ body.
    pub signature: [u8; SIG_LEN],
    /// Attestation public key `x || y`.
    pub attestation_key: [u8; ATT_KEY_LEN],
    /// Outer certification data type (6).
    pub cert_data_type: u16,
    pub qe_report: QeReport,
    pub qe_report_signature: [u8; SIG_LEN],
    pub qe_auth_data: Vec<u8>,
    /// Inner certification data type (5 = PCK chain).
    pub pck_cert_type: u16,
    pub pck_chain: Vec<u8>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                Rejection::malformed(
                    "TDX quote",
                    format!(
                        "{what}: need {n} bytes at {:#x}, have {}",
                        self.pos,
                        self.b.len() - self.pos
                    ),
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16_at(self.take(2, what)?, 0))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32_at(self.take(4, what)?, 0))
    }
}

impl Quote {
    /// Parse a v4 or v5 quote. Never panics.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let mut c = Cursor { b, pos: 0 };
        let h = c.take(HEADER_LEN, "header")?;
        let header = QuoteHeader {
            version: u16_at(h, HDR_OFF_VERSION),
            att_key_type: u16_at(h, HDR_OFF_ATT_KEY_TYPE),
            tee_type: u32_at(h, HDR_OFF_TEE_TYPE),
            qe_svn: u16_at(h, HDR_OFF_QE_SVN),
            pce_svn: u16_at(h, HDR_OFF_PCE_SVN),
            qe_vendor_id: arr(h, HDR_OFF_QE_VENDOR_ID),
            user_data: arr(h, HDR_OFF_USER_DATA),
        };
        if header.tee_type != TEE_TYPE_TDX {
            return Err(Rejection::Unsupported {
                what: "quote TEE type",
                got: format!("{:#x}", header.tee_type),
            });
        }
        if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256 {
            return Err(Rejection::Unsupported {
                what: "quote attestation key type",
                got: header.att_key_type.to_string(),
            });
        }
        let (body_type, body_len) = match header.version {
            4 => (None, TD10_BODY_LEN),
            5 => {
                let t = c.u16("body type")?;
                let size = c.u32("body size")? as usize;
                let expected = match t {
                    BODY_TYPE_TD10 => TD10_BODY_LEN,
                    BODY_TYPE_TD15 => TD15_BODY_LEN,
                    _ => {
                        return Err(Rejection::Unsupported {
                            what: "quote v5 body type",
                            got: t.to_string(),
                        });
                    }
                };
                if size != expected {
                    return Err(Rejection::mismatch("quote v5 body size", expected, size));
                }
                (Some(t), expected)
            }
            v => {
                return Err(Rejection::Unsupported {
                    what: "quote version",
                    got: v.to_string(),
                });
            }
        };
        let body = TdReportBody::parse(c.take(body_len, "body")?);
        let sig_len = c.u32("signature data length")? as usize;
        if c.pos + sig_len != b.len() {
            return Err(Rejection::mismatch(
                "quote signature data length",
                b.len() - c.pos,
                sig_len,
            ));
        }
        let signature = arr(c.take(SIG_LEN, "signature")?, 0);
        let attestation_key = arr(c.take(ATT_KEY_LEN, "attestation key")?, 0);
        let cert_data_type = c.u16("certification data type")?;
        if cert_data_type != CERT_TYPE_QE_REPORT {
            return Err(Rejection::Unsupported {
                what: "quote certification data type",
                got: cert_data_type.to_string(),
            });
        }
        let cert_size = c.u32("certification data size")? as usize;
        if c.pos + cert_size != b.len() {
            return Err(Rejection::mismatch(
                "quote certification data size",
                b.len() - c.pos,
                cert_size,
            ));
        }
        let qe_report = QeReport {
            raw: arr(c.take(QE_REPORT_LEN, "QE report")?, 0),
        };
        let qe_report_signature = arr(c.take(SIG_LEN, "QE report signature")?, 0);
        let auth_len = c.u16("QE auth data length")? as usize;
        let qe_auth_data = c.take(auth_len, "QE auth data")?.to_vec();
        let pck_cert_type = c.u16("PCK certification data type")?;
        if pck_cert_type != CERT_TYPE_PCK_CHAIN {
            return Err(Rejection::Unsupported {
                what: "QE certification data type",
                got: pck_cert_type.to_string(),
            });
        }
        let pck_size = c.u32("PCK certification data size")? as usize;
        if c.pos + pck_size != b.len() {
            return Err(Rejection::mismatch(
                "PCK certification data size",
                b.len() - c.pos,
                pck_size,
            ));
        }
        let pck_chain = c.take(pck_size, "PCK chain")?.to_vec();
        Ok(Quote {
            header,
            body_type,
            body,
            signature,
            attestation_key,
            cert_data_type,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_cert_type,
            pck_chain,
        })
    }

    /// Bytes covered by the quote signature: header ‖ [v5 descriptor] ‖ body.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + V5_DESCRIPTOR_LEN + TD15_BODY_LEN);
        out.extend_from_slice(&self.header.version.to_le_bytes());
        out.extend_from_slice(&self.header.att_key_type.to_le_bytes());
        out.extend_from_slice(&self.header.tee_type.to_le_bytes());
        out.extend_from_slice(&self.header.qe_svn.to_le_bytes());
        out.extend_from_slice(&self.header.pce_svn.to_le_bytes());
        out.extend_from_slice(&self.header.qe_vendor_id);
        out.extend_from_slice(&self.header.user_data);
        if let Some(t) = self.body_type {
            let len = if t == BODY_TYPE_TD15 {
                TD15_BODY_LEN
            } else {
                TD10_BODY_LEN
            };
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
        }
        self.body.write(&mut out);
        out
    }

    /// Serialize to the exact wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_bytes();
        let inner = QE_REPORT_LEN
            + SIG_LEN
            + 2
            + self.qe_auth_data.len()
            + CERT_HDR_LEN
            + self.pck_chain.len();
        let sig_data = SIG_LEN + ATT_KEY_LEN + CERT_HDR_LEN + inner;
        out.extend_from_slice(&(sig_data as u32).to_le_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.attestation_key);
        out.extend_from_slice(&self.cert_data_type.to_le_bytes());
        out.extend_from_slice(&(inner as u32).to_le_bytes());
        out.extend_from_slice(&self.qe_report.raw);
        out.extend_from_slice(&self.qe_report_signature);
        out.extend_from_slice(&(self.qe_auth_data.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.qe_auth_data);
        out.extend_from_slice(&self.pck_cert_type.to_le_bytes());
        out.extend_from_slice(&(self.pck_chain.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.pck_chain);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_never_panics() {
        for n in [0, 10, HEADER_LEN, HEADER_LEN + 5, 700] {
            assert!(Quote::parse(&vec![0u8; n]).is_err());
        }
    }
}
