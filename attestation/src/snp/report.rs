//! SEV-SNP `ATTESTATION_REPORT` (AMD SEV-SNP ABI, table "ATTESTATION_REPORT Structure"),
//! versions 2, 3 and 5. Every field lives at a named offset; reserved ranges are kept
//! verbatim so that `parse` followed by `to_bytes` is the identity.

use crate::error::{Rejection, Result};

/// Size of the report in bytes.
pub const REPORT_LEN: usize = 0x4A0;
/// The signature covers bytes `0..SIGNED_LEN`.
pub const SIGNED_LEN: usize = 0x2A0;

pub const OFF_VERSION: usize = 0x000;
pub const OFF_GUEST_SVN: usize = 0x004;
pub const OFF_POLICY: usize = 0x008;
pub const OFF_FAMILY_ID: usize = 0x010;
pub const OFF_IMAGE_ID: usize = 0x020;
pub const OFF_VMPL: usize = 0x030;
pub const OFF_SIG_ALGO: usize = 0x034;
pub const OFF_CURRENT_TCB: usize = 0x038;
pub const OFF_PLATFORM_INFO: usize = 0x040;
pub const OFF_KEY_INFO: usize = 0x048;
pub const OFF_RESERVED_04C: usize = 0x04C;
pub const OFF_REPORT_DATA: usize = 0x050;
pub const OFF_MEASUREMENT: usize = 0x090;
pub const OFF_HOST_DATA: usize = 0x0C0;
pub const OFF_ID_KEY_DIGEST: usize = 0x0E0;
pub const OFF_AUTHOR_KEY_DIGEST: usize = 0x110;
pub const OFF_REPORT_ID: usize = 0x140;
pub const OFF_REPORT_ID_MA: usize = 0x160;
pub const OFF_REPORTED_TCB: usize = 0x180;
pub const OFF_CPUID_FAM_ID: usize = 0x188;
pub const OFF_CPUID_MOD_ID: usize = 0x189;
pub const OFF_CPUID_STEP: usize = 0x18A;
pub const OFF_RESERVED_18B: usize = 0x18B;
pub const OFF_CHIP_ID: usize = 0x1A0;
pub const OFF_COMMITTED_TCB: usize = 0x1E0;
pub const OFF_CURRENT_BUILD: usize = 0x1E8;
pub const OFF_CURRENT_MINOR: usize = 0x1E9;
pub const OFF_CURRENT_MAJOR: usize = 0x1EA;
pub const OFF_RESERVED_1EB: usize = 0x1EB;
pub const OFF_COMMITTED_BUILD: usize = 0x1EC;
pub const OFF_COMMITTED_MINOR: usize = 0x1ED;
pub const OFF_COMMITTED_MAJOR: usize = 0x1EE;
pub const OFF_RESERVED_1EF: usize = 0x1EF;
pub const OFF_LAUNCH_TCB: usize = 0x1F0;
pub const OFF_LAUNCH_MIT_VECTOR: usize = 0x1F8;
pub const OFF_CURRENT_MIT_VECTOR: usize = 0x200;
pub const OFF_RESERVED_208: usize = 0x208;
pub const OFF_SIGNATURE_R: usize = 0x2A0;
pub const OFF_SIGNATURE_S: usize = 0x2E8;
pub const OFF_RESERVED_330: usize = 0x330;
/// Length of each little-endian signature component field.
pub const SIG_COMPONENT_LEN: usize = 72;
/// Length of a P-384 scalar.
pub const P384_SCALAR_LEN: usize = 48;

/// `POLICY` bit: debugging allowed.
pub const POLICY_DEBUG_BIT: u64 = 1 << 19;
/// `POLICY` bit: migration agent allowed.
pub const POLICY_MIGRATE_MA_BIT: u64 = 1 << 18;
/// `POLICY` bit: SMT allowed.
pub const POLICY_SMT_BIT: u64 = 1 << 16;
/// `KEY_INFO` bits 2..4: which key signed (0 = VCEK, 1 = VLEK).
pub const KEY_INFO_SIGNING_KEY_SHIFT: u32 = 2;
/// `KEY_INFO` bit 1: CHIP_ID masked.
pub const KEY_INFO_MASK_CHIP_KEY: u32 = 1 << 1;
/// Signature algorithm 1 = ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// AMD product generation: decides the layout of a TCB_VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Generation {
    Milan,
    Genoa,
    Turin,
}

impl Generation {
    /// From CPUID family/model (reports v3+).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Generation::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Generation::Genoa),
            (0x1A, 0x00..=0x11) => Some(Generation::Turin),
            _ => None,
        }
    }
    /// From a VCEK productName ("Milan-B0", "Genoa", ...) or an ARK/ASK common name.
    pub fn from_product_name(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase();
        if n.contains("milan") {
            Some(Generation::Milan)
        } else if n.contains("genoa") || n.contains("siena") || n.contains("bergamo") {
            Some(Generation::Genoa)
        } else if n.contains("turin") {
            Some(Generation::Turin)
        } else {
            None
        }
    }
}

/// A decoded TCB_VERSION. `fmc` exists only on Turin.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct TcbVersion {
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl TcbVersion {
    /// Decode the raw 8 bytes: Milan/Genoa `[bl, tee, 0, 0, 0, 0, snp, ucode]`,
    /// Turin `[fmc, bl, tee, snp, 0, 0, 0, ucode]`.
    pub fn decode(raw: u64, generation: Generation) -> Self {
        let b = raw.to_le_bytes();
        match generation {
            Generation::Milan | Generation::Genoa => TcbVersion {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
            Generation::Turin => TcbVersion {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }
    /// Encode back to the raw 8 bytes (layout chosen by the presence of `fmc`).
    pub fn encode(&self) -> u64 {
        let mut b = [0u8; 8];
        match self.fmc {
            None => {
                b[0] = self.bootloader;
                b[1] = self.tee;
                b[6] = self.snp;
                b[7] = self.microcode;
            }
            Some(fmc) => {
                b[0] = fmc;
                b[1] = self.bootloader;
                b[2] = self.tee;
                b[3] = self.snp;
                b[7] = self.microcode;
            }
        }
        u64::from_le_bytes(b)
    }
    /// Every component is >= the minimum's (component-wise, as AMD defines TCB ordering).
    pub fn meets(&self, min: &TcbVersion) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
            && self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
    }
}

impl std::fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Firmware version triple (`CURRENT_*`, `COMMITTED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FwVersion {
    pub major: u8,
    pub minor: u8,
    pub build: u8,
}

/// The ATTESTATION_REPORT with every field; raw TCB values are kept as the 64-bit integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationReport {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub sig_algo: u32,
    pub current_tcb: u64,
    pub platform_info: u64,
    pub key_info: u32,
    pub reserved_04c: [u8; 4],
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: u64,
    /// CPUID family/model/stepping (v3+; zero in v2).
    pub cpuid_fam_id: u8,
    pub cpuid_mod_id: u8,
    pub cpuid_step: u8,
    pub reserved_18b: [u8; OFF_CHIP_ID - OFF_RESERVED_18B],
    /// All zero when MASK_CHIP_ID is set — a valid value, not an error.
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    pub current: FwVersion,
    pub reserved_1eb: u8,
    pub committed: FwVersion,
    pub reserved_1ef: u8,
    pub launch_tcb: u64,
    /// v5+ (zero before).
    pub launch_mit_vector: u64,
    /// v5+ (zero before).
    pub current_mit_vector: u64,
    pub reserved_208: [u8; OFF_SIGNATURE_R - OFF_RESERVED_208],
    /// Little-endian R, zero-extended to 72 bytes.
    pub signature_r: [u8; SIG_COMPONENT_LEN],
    /// Little-endian S, zero-extended to 72 bytes.
    pub signature_s: [u8; SIG_COMPONENT_LEN],
    pub reserved_330: [u8; REPORT_LEN - OFF_RESERVED_330],
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr(b, off))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(arr(b, off))
}

impl AttestationReport {
    /// Supported report versions.
    pub const VERSIONS: [u32; 3] = [2, 3, 5];

    /// Parse a 1184-byte report (v2, v3, v5). Never panics.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() != REPORT_LEN {
            return Err(Rejection::malformed(
                "SNP report",
                format!("length expected {REPORT_LEN}, got {}", b.len()),
            ));
        }
        let version = u32_at(b, OFF_VERSION);
        if !Self::VERSIONS.contains(&version) {
            return Err(Rejection::Unsupported {
                what: "SNP report version",
                got: version.to_string(),
            });
        }
        Ok(Self::decode_fields(b))
    }

    /// Field extraction; `b` must be exactly `REPORT_LEN` bytes (checked by callers).
    fn decode_fields(b: &[u8]) -> Self {
        AttestationReport {
            version: u32_at(b, OFF_VERSION),
            guest_svn: u32_at(b, OFF_GUEST_SVN),
            policy: u64_at(b, OFF_POLICY),
            family_id: arr(b, OFF_FAMILY_ID),
            image_id: arr(b, OFF_IMAGE_ID),
            vmpl: u32_at(b, OFF_VMPL),
            sig_algo: u32_at(b, OFF_SIG_ALGO),
            current_tcb: u64_at(b, OFF_CURRENT_TCB),
            platform_info: u64_at(b, OFF_PLATFORM_INFO),
            key_info: u32_at(b, OFF_KEY_INFO),
            reserved_04c: arr(b, OFF_RESERVED_04C),
            report_data: arr(b, OFF_REPORT_DATA),
            measurement: arr(b, OFF_MEASUREMENT),
            host_data: arr(b, OFF_HOST_DATA),
            id_key_digest: arr(b, OFF_ID_KEY_DIGEST),
            author_key_digest: arr(b, OFF_AUTHOR_KEY_DIGEST),
            report_id: arr(b, OFF_REPORT_ID),
            report_id_ma: arr(b, OFF_REPORT_ID_MA),
            reported_tcb: u64_at(b, OFF_REPORTED_TCB),
            cpuid_fam_id: b[OFF_CPUID_FAM_ID],
            cpuid_mod_id: b[OFF_CPUID_MOD_ID],
            cpuid_step: b[OFF_CPUID_STEP],
            reserved_18b: arr(b, OFF_RESERVED_18B),
            chip_id: arr(b, OFF_CHIP_ID),
            committed_tcb: u64_at(b, OFF_COMMITTED_TCB),
            current: FwVersion {
                build: b[OFF_CURRENT_BUILD],
                minor: b[OFF_CURRENT_MINOR],
                major: b[OFF_CURRENT_MAJOR],
            },
            reserved_1eb: b[OFF_RESERVED_1EB],
            committed: FwVersion {
                build: b[OFF_COMMITTED_BUILD],
                minor: b[OFF_COMMITTED_MINOR],
                major: b[OFF_COMMITTED_MAJOR],
            },
            reserved_1ef: b[OFF_RESERVED_1EF],
            launch_tcb: u64_at(b, OFF_LAUNCH_TCB),
            launch_mit_vector: u64_at(b, OFF_LAUNCH_MIT_VECTOR),
            current_mit_vector: u64_at(b, OFF_CURRENT_MIT_VECTOR),
            reserved_208: arr(b, OFF_RESERVED_208),
            signature_r: arr(b, OFF_SIGNATURE_R),
            signature_s: arr(b, OFF_SIGNATURE_S),
            reserved_330: arr(b, OFF_RESERVED_330),
        }
    }

    /// Serialize to the exact 1184-byte wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(OFF_VERSION, &self.version.to_le_bytes());
        put(OFF_GUEST_SVN, &self.guest_svn.to_le_bytes());
        put(OFF_POLICY, &self.policy.to_le_bytes());
        put(OFF_FAMILY_ID, &self.family_id);
        put(OFF_IMAGE_ID, &self.image_id);
        put(OFF_VMPL, &self.vmpl.to_le_bytes());
        put(OFF_SIG_ALGO, &self.sig_algo.to_le_bytes());
        put(OFF_CURRENT_TCB, &self.current_tcb.to_le_bytes());
        put(OFF_PLATFORM_INFO, &self.platform_info.to_le_bytes());
        put(OFF_KEY_INFO, &self.key_info.to_le_bytes());
        put(OFF_RESERVED_04C, &self.reserved_04c);
        put(OFF_REPORT_DATA, &self.report_data);
        put(OFF_MEASUREMENT, &self.measurement);
        put(OFF_HOST_DATA, &self.host_data);
        put(OFF_ID_KEY_DIGEST, &self.id_key_digest);
        put(OFF_AUTHOR_KEY_DIGEST, &self.author_key_digest);
        put(OFF_REPORT_ID, &self.report_id);
        put(OFF_REPORT_ID_MA, &self.report_id_ma);
        put(OFF_REPORTED_TCB, &self.reported_tcb.to_le_bytes());
        put(
            OFF_CPUID_FAM_ID,
            &[self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step],
        );
        put(OFF_RESERVED_18B, &self.reserved_18b);
        put(OFF_CHIP_ID, &self.chip_id);
        put(OFF_COMMITTED_TCB, &self.committed_tcb.to_le_bytes());
        put(
            OFF_CURRENT_BUILD,
            &[
                self.current.build,
                self.current.minor,
                self.current.major,
                self.reserved_1eb,
            ],
        );
        put(
            OFF_COMMITTED_BUILD,
            &[
                self.committed.build,
                self.committed.minor,
                self.committed.major,
                self.reserved_1ef,
            ],
        );
        put(OFF_LAUNCH_TCB, &self.launch_tcb.to_le_bytes());
        put(OFF_LAUNCH_MIT_VECTOR, &self.launch_mit_vector.to_le_bytes());
        put(
            OFF_CURRENT_MIT_VECTOR,
            &self.current_mit_vector.to_le_bytes(),
        );
        put(OFF_RESERVED_208, &self.reserved_208);
        put(OFF_SIGNATURE_R, &self.signature_r);
        put(OFF_SIGNATURE_S, &self.signature_s);
        put(OFF_RESERVED_330, &self.reserved_330);
        b
    }

    /// A zeroed report of the given version (for the emulated PSP to fill in).
    pub fn zeroed(version: u32) -> Self {
        let mut r = Self::decode_fields(&[0u8; REPORT_LEN]);
        r.version = version;
        r
    }

    /// Generation from CPUID (v3+), if the report carries it.
    pub fn generation_from_cpuid(&self) -> Option<Generation> {
        if self.version >= 3 {
            Generation::from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)
        } else {
            None
        }
    }

    /// Debug allowed by the guest policy.
    pub fn debug_allowed(&self) -> bool {
        self.policy & POLICY_DEBUG_BIT != 0
    }

    /// 0 = VCEK, 1 = VLEK.
    pub fn signing_key(&self) -> u32 {
        (self.key_info >> KEY_INFO_SIGNING_KEY_SHIFT) & 0x7
    }

    /// CHIP_ID masked to zero (MASK_CHIP_ID policy).
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id.iter().all(|b| *b == 0)
    }

    /// Signature as big-endian `r || s` (96 bytes) or `None` if a component does not fit 48 bytes.
    pub fn signature_be(&self) -> Option<[u8; 2 * P384_SCALAR_LEN]> {
        let mut out = [0u8; 2 * P384_SCALAR_LEN];
        for (i, comp) in [&self.signature_r, &self.signature_s]
            .into_iter()
            .enumerate()
        {
            if comp[P384_SCALAR_LEN..].iter().any(|b| *b != 0) {
                return None;
            }
            let mut be: [u8; P384_SCALAR_LEN] = arr(comp, 0);
            be.reverse();
            out[i * P384_SCALAR_LEN..(i + 1) * P384_SCALAR_LEN].copy_from_slice(&be);
        }
        Some(out)
    }

    /// Store a big-endian `r || s` signature in the little-endian 72-byte fields.
    pub fn set_signature_be(&mut self, rs: &[u8; 2 * P384_SCALAR_LEN]) {
        for (i, comp) in [&mut self.signature_r, &mut self.signature_s]
            .into_iter()
            .enumerate()
        {
            *comp = [0u8; SIG_COMPONENT_LEN];
            let mut le: [u8; P384_SCALAR_LEN] = arr(rs, i * P384_SCALAR_LEN);
            le.reverse();
            comp[..P384_SCALAR_LEN].copy_from_slice(&le);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_layouts() {
        let raw = u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 0x73]);
        let m = TcbVersion::decode(raw, Generation::Milan);
        assert_eq!(
            (m.bootloader, m.tee, m.snp, m.microcode, m.fmc),
            (3, 0, 8, 0x73, None)
        );
        assert_eq!(m.encode(), raw);
        let raw_t = u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]);
        let t = TcbVersion::decode(raw_t, Generation::Turin);
        assert_eq!(
            (t.fmc, t.bootloader, t.tee, t.snp, t.microcode),
            (Some(1), 2, 3, 4, 9)
        );
        assert_eq!(t.encode(), raw_t);
    }

    #[test]
    fn rejects_bad_length_and_version() {
        assert!(matches!(
            AttestationReport::parse(&[0u8; 10]),
            Err(Rejection::Malformed { .. })
        ));
        let mut b = vec![0u8; REPORT_LEN];
        b[0] = 4;
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(Rejection::Unsupported { .. })
        ));
    }

    #[test]
    fn masked_chip_id_parses() {
        let r = AttestationReport::zeroed(3);
        assert!(r.chip_id_masked());
        let r2 = AttestationReport::parse(&r.to_bytes()).expect("zero chip id parses");
        assert_eq!(r, r2);
    }

    #[test]
    fn cpuid_generations() {
        assert_eq!(Generation::from_cpuid(0x19, 0x01), Some(Generation::Milan));
        assert_eq!(Generation::from_cpuid(0x19, 0x11), Some(Generation::Genoa));
        assert_eq!(Generation::from_cpuid(0x1A, 0x02), Some(Generation::Turin));
        assert_eq!(Generation::from_cpuid(0x17, 0x31), None);
    }
}
