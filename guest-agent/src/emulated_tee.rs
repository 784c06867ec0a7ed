//! The guest side of the emulated SEV-SNP TEE (`podvm.tee=snp-emulated`): reports come from the
//! host's emulated PSP over vsock ([`EMULATED_PSP_PORT`]) in the real SNP formats (report, VCEK
//! chain), so initdata checks, the KBS and its verifier run exactly as with hardware. The host
//! fixes MEASUREMENT and HOST_DATA at launch; the guest chooses REPORT_DATA.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use podvm_attestation::attester::{Attester, AttesterError};
use podvm_attestation::{Evidence, TeeKind};
use podvm_protocols::EMULATED_PSP_PORT;

/// The longest answer accepted from the emulated PSP (a report and its certificate chain).
const MAX_ANSWER: u32 = 1 << 20;
/// How long one report request may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Where the emulated PSP is reached.
#[derive(Debug, Clone)]
pub enum PspEndpoint {
    /// The host (CID 2) over vsock: the guest.
    Vsock { cid: u32, port: u32 },
    /// A Unix socket: tests on the host.
    Unix(PathBuf),
}

impl Default for PspEndpoint {
    fn default() -> Self {
        PspEndpoint::Vsock {
            cid: vsock::VMADDR_CID_HOST,
            port: EMULATED_PSP_PORT,
        }
    }
}

/// SEV-SNP evidence from the host's emulated PSP.
#[derive(Debug, Clone, Default)]
pub struct EmulatedSnpAttester {
    pub endpoint: PspEndpoint,
}

fn device(e: impl std::fmt::Display) -> AttesterError {
    AttesterError::Device(format!("emulated SNP PSP: {e}"))
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl EmulatedSnpAttester {
    fn connect(&self) -> Result<Box<dyn Stream>, AttesterError> {
        match &self.endpoint {
            PspEndpoint::Vsock { cid, port } => {
                let s = vsock::VsockStream::connect_with_cid_port(*cid, *port)
                    .map_err(|e| device(format!("connect to vsock {cid}:{port}: {e}")))?;
                s.set_read_timeout(Some(TIMEOUT)).map_err(device)?;
                Ok(Box::new(s))
            }
            PspEndpoint::Unix(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)
                    .map_err(|e| device(format!("connect to {}: {e}", path.display())))?;
                s.set_read_timeout(Some(TIMEOUT)).map_err(device)?;
                Ok(Box::new(s))
            }
        }
    }
}

impl Attester for EmulatedSnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Evidence, AttesterError> {
        if report_data.len() > 64 {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        let mut padded = [0u8; 64];
        padded[..report_data.len()].copy_from_slice(report_data);
        let mut stream = self.connect()?;
        stream.write_all(&padded).map_err(device)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(device)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_ANSWER {
            return Err(device(format!(
                "answer of {len} bytes is over the {MAX_ANSWER}-byte limit"
            )));
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body).map_err(device)?;
        parse_answer(&body)
    }
}

/// `{"evidence": <SNP evidence JSON>}` or `{"error": "<reason>"}`.
pub fn parse_answer(body: &[u8]) -> Result<Evidence, AttesterError> {
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| device(format!("answer is not JSON: {e}")))?;
    if let Some(reason) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(device(format!("the host refused: {reason}")));
    }
    let evidence = answer
        .get("evidence")
        .ok_or_else(|| device("answer has neither `evidence` nor `error`"))?;
    let json = serde_json::to_vec(evidence).map_err(device)?;
    Evidence::from_json(TeeKind::Snp, &json).map_err(|e| device(format!("evidence: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_garbage_are_clear_errors() {
        let e = parse_answer(br#"{"error":"no launch"}"#).unwrap_err();
        assert!(e.to_string().contains("the host refused: no launch"), "{e}");
        let e = parse_answer(b"nope").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e = parse_answer(b"{}").unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
    }
}
