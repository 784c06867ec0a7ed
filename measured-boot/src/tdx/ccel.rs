//! CC event log (TCG crypto-agile format, as in the ACPI CCEL table's log area) and RTMR replay.
//!
//! The first record is a SHA-1 format `TCG_PCR_EVENT` carrying the "Spec ID Event03" that lists the
//! digest algorithms; the rest are `TCG_PCR_EVENT2` records: u32 MR index, u32 event type, u32 digest
//! count, (u16 algorithm, digest)*, u32 event size, event data. The log ends at a record whose MR
//! index or type is 0xffffffff (erased flash / padding) or at the end of the buffer.

use sha2::{Digest, Sha384};

use crate::error::{Error, Result};
use crate::ovmf::le32;

/// EV_NO_ACTION: informational, never extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512.
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// Size of the SHA-1 format header: pcr, type, 20-byte digest, event size.
const PCR_EVENT_HEADER_SIZE: usize = 32;
/// Offset of the algorithm count in the Spec ID event.
const SPEC_ID_OFF_NUM_ALGS: usize = 24;
const END_MARKER: u32 = 0xffff_ffff;

/// One event digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigest {
    pub alg: u16,
    pub digest: Vec<u8>,
}

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcEvent {
    /// CC MR index: 0 = MRTD, 1..=4 = RTMR0..3.
    pub mr_index: u32,
    pub event_type: u32,
    pub digests: Vec<EventDigest>,
    pub data: Vec<u8>,
}

impl CcEvent {
    /// The SHA-384 digest, if present.
    pub fn sha384(&self) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|d| d.alg == TPM_ALG_SHA384)
            .map(|d| d.digest.as_slice())
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// (algorithm, digest size) from the Spec ID event.
    pub algorithms: Vec<(u16, u16)>,
    pub events: Vec<CcEvent>,
    /// Bytes of log before the end marker.
    pub length: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    name: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(Error::EventLog {
                name: self.name.into(),
                detail: format!(
                    "truncated at offset {}: need {n} more bytes; pass the whole log area",
                    self.at
                ),
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(le32(self.take(4)?))
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl EventLog {
    /// Parses a log; `name` appears in errors.
    pub fn parse(name: &str, b: &[u8]) -> Result<Self> {
        let bad = |detail: String| Error::EventLog {
            name: name.into(),
            detail,
        };
        let mut c = Cursor { b, at: 0, name };
        let hdr = c.take(PCR_EVENT_HEADER_SIZE)?;
        let event_type = le32(&hdr[4..]);
        let size = le32(&hdr[28..]) as usize;
        let spec = c.take(size)?;
        if event_type != EV_NO_ACTION
            || spec.len() < SPEC_ID_OFF_NUM_ALGS + 4
            || &spec[..16] != SPEC_ID_SIGNATURE
        {
            return Err(bad(
                "first record is not a \"Spec ID Event03\" EV_NO_ACTION event; this is not a crypto-agile TCG/CC event log".into(),
            ));
        }
        let n = le32(&spec[SPEC_ID_OFF_NUM_ALGS..]) as usize;
        let algs_end = SPEC_ID_OFF_NUM_ALGS + 4 + n.saturating_mul(4);
        if algs_end > spec.len() {
            return Err(bad(format!(
                "Spec ID event lists {n} algorithms but is {} bytes",
                spec.len()
            )));
        }
        let algorithms: Vec<(u16, u16)> = spec[SPEC_ID_OFF_NUM_ALGS + 4..algs_end]
            .chunks_exact(4)
            .map(|a| {
                (
                    u16::from_le_bytes([a[0], a[1]]),
                    u16::from_le_bytes([a[2], a[3]]),
                )
            })
            .collect();
        let mut events = Vec::new();
        while c.at + 8 <= b.len() {
            let start = c.at;
            let mr_index = le32(&b[start..]);
            let ev_type = le32(&b[start + 4..]);
            if mr_index == END_MARKER || ev_type == END_MARKER {
                break;
            }
            c.take(8)?;
            let count = c.u32()?;
            let mut digests = Vec::new();
            for _ in 0..count {
                let alg = c.u16()?;
                let size = algorithms
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .map(|(_, s)| *s as usize)
                    .ok_or_else(|| {
                        bad(format!(
                            "event at offset {start} uses digest algorithm {alg:#06x} that the Spec ID event does not list"
                        ))
                    })?;
                digests.push(EventDigest {
                    alg,
                    digest: c.take(size)?.to_vec(),
                });
            }
            let size = c.u32()? as usize;
            let data = c.take(size)?.to_vec();
            events.push(CcEvent {
                mr_index,
                event_type: ev_type,
                digests,
                data,
            });
        }
        Ok(EventLog {
            algorithms,
            events,
            length: c.at,
        })
    }

    /// Replays the SHA-384 digests into RTMR0..3 (MR index 1..=4), skipping EV_NO_ACTION.
    pub fn replay_rtmrs(&self, name: &str) -> Result<[[u8; 48]; 4]> {
        let mut rtmr = [[0u8; 48]; 4];
        for (i, e) in self.events.iter().enumerate() {
            if e.event_type == EV_NO_ACTION || e.mr_index == 0 {
                continue;
            }
            let slot = rtmr
                .get_mut(e.mr_index as usize - 1)
                .ok_or_else(|| Error::EventLog {
                    name: name.into(),
                    detail: format!("event {i} has MR index {}, expected 0..=4", e.mr_index),
                })?;
            let d = e.sha384().ok_or_else(|| Error::EventLog {
                name: name.into(),
                detail: format!("event {i} has no SHA-384 digest; RTMRs are SHA-384"),
            })?;
            *slot = extend(slot, d);
        }
        Ok(rtmr)
    }
}

/// RTMR extend: SHA-384(old || digest).
pub fn extend(rtmr: &[u8; 48], digest: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(rtmr);
    h.update(digest);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn replays_trustee_ccel_vector() {
        let data = std::fs::read(testdata::CCEL_OVMF).unwrap();
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(testdata::CCEL_EXPECTED).unwrap()).unwrap();
        let log = EventLog::parse("CCEL_data_ovmf", &data).unwrap();
        assert_eq!(log.algorithms, vec![(TPM_ALG_SHA384, 48)]);
        assert_eq!(
            log.events.len(),
            expected["observed_here"]["cc_events"].as_u64().unwrap() as usize
        );
        assert_eq!(
            log.length as u64,
            expected["observed_here"]["log_end_offset"]
                .as_u64()
                .unwrap()
        );
        let rtmrs = log.replay_rtmrs("CCEL_data_ovmf").unwrap();
        for (i, r) in rtmrs.iter().enumerate() {
            let want = expected["expected"][format!("rtmr{i}")].as_str().unwrap();
            assert_eq!(hex::encode(r), want, "rtmr{i}");
        }
    }

    #[test]
    fn truncated_log_fails_with_offset() {
        let data = std::fs::read(testdata::CCEL_OVMF).unwrap();
        let e = EventLog::parse("cut", &data[..500])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut") && e.contains("truncated"), "{e}");
        let e = EventLog::parse("zeros", &[0u8; 64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Spec ID"), "{e}");
    }
}
