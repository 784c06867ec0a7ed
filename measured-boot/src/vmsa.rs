//! The initial VMSA (VM save area, AMD APM vol. 2 table B-4) of each vCPU as QEMU, EC2 or GCE
//! set it up for an SEV-ES/SNP launch, plus the vCPU model signatures and VMM types.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ovmf::PAGE_SIZE;

// Offsets within the VMSA page (AMD APM vol. 2, table B-4; Linux `struct sev_es_save_area`).
const OFF_ES: usize = 0x000;
const OFF_CS: usize = 0x010;
const OFF_SS: usize = 0x020;
const OFF_DS: usize = 0x030;
const OFF_FS: usize = 0x040;
const OFF_GS: usize = 0x050;
const OFF_GDTR: usize = 0x060;
const OFF_LDTR: usize = 0x070;
const OFF_IDTR: usize = 0x080;
const OFF_TR: usize = 0x090;
const OFF_EFER: usize = 0x0d0;
const OFF_CR4: usize = 0x148;
const OFF_CR0: usize = 0x158;
const OFF_DR7: usize = 0x160;
const OFF_DR6: usize = 0x168;
const OFF_RFLAGS: usize = 0x170;
const OFF_RIP: usize = 0x178;
const OFF_G_PAT: usize = 0x268;
const OFF_RDX: usize = 0x310;
const OFF_SEV_FEATURES: usize = 0x3b0;
const OFF_XCR0: usize = 0x3e8;
const OFF_MXCSR: usize = 0x408;
const OFF_X87_FCW: usize = 0x410;

/// Reset EIP of the bootstrap processor.
pub const BSP_RESET_EIP: u32 = 0xffff_fff0;

/// Initial register values (architectural reset state as KVM sets it).
const EFER_SVME: u64 = 0x1000;
const CR4_MCE: u64 = 0x40;
const CR0_ET: u64 = 0x10;
const DR7_RESET: u64 = 0x400;
const DR6_RESET: u64 = 0xffff_0ff0;
const RFLAGS_RESET: u64 = 0x2;
const XCR0_X87: u64 = 0x1;
const PAT_RESET: u64 = 0x0007_0406_0007_0406;
const PAT_GCE: u64 = 0x0007_0106;
const MXCSR_RESET: u32 = 0x1f80;
const FCW_RESET: u16 = 0x37f;
/// RDX at reset on EC2 and GCE (a fixed family-6 signature, not the guest's vCPU model).
const RDX_FIXED_SIG: u64 = 0x600;

/// The hypervisor that creates the VMSAs; their reset states differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmType {
    Qemu,
    Ec2,
    Gce,
}

impl FromStr for VmmType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(VmmType::Qemu),
            "ec2" => Ok(VmmType::Ec2),
            "gce" => Ok(VmmType::Gce),
            _ => Err(Error::UnknownVmmType { name: s.into() }),
        }
    }
}

impl fmt::Display for VmmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmmType::Qemu => "qemu",
            VmmType::Ec2 => "ec2",
            VmmType::Gce => "gce",
        })
    }
}

/// CPUID Fn0000_0001_EAX signature from family, model and stepping (AMD pub. 25481).
pub const fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// QEMU CPU model names (`builtin_x86_defs` and their versions) and their signatures.
pub const VCPU_TYPES: &[(&str, u32)] = &[
    ("EPYC", cpu_signature(23, 1, 2)),
    ("EPYC-v1", cpu_signature(23, 1, 2)),
    ("EPYC-v2", cpu_signature(23, 1, 2)),
    ("EPYC-IBPB", cpu_signature(23, 1, 2)),
    ("EPYC-v3", cpu_signature(23, 1, 2)),
    ("EPYC-v4", cpu_signature(23, 1, 2)),
    ("EPYC-Rome", cpu_signature(23, 49, 0)),
    ("EPYC-Rome-v1", cpu_signature(23, 49, 0)),
    ("EPYC-Rome-v2", cpu_signature(23, 49, 0)),
    ("EPYC-Rome-v3", cpu_signature(23, 49, 0)),
    ("EPYC-Milan", cpu_signature(25, 1, 1)),
    ("EPYC-Milan-v1", cpu_signature(25, 1, 1)),
    ("EPYC-Milan-v2", cpu_signature(25, 1, 1)),
    ("EPYC-Genoa", cpu_signature(25, 17, 0)),
    ("EPYC-Genoa-v1", cpu_signature(25, 17, 0)),
    ("EPYC-Turin", cpu_signature(26, 0, 0)),
];

/// Signature of a named QEMU vCPU model.
pub fn vcpu_signature(name: &str) -> Result<u32> {
    VCPU_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::UnknownVcpuType {
            name: name.into(),
            known: VCPU_TYPES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A segment register in the VMSA: selector, attributes, limit, base (16 bytes).
#[derive(Debug, Clone, Copy)]
struct Segment {
    selector: u16,
    attrib: u16,
    limit: u32,
    base: u64,
}

impl Segment {
    const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Segment {
            selector,
            attrib,
            limit,
            base,
        }
    }

    fn write(&self, page: &mut [u8], at: usize) {
        page[at..at + 2].copy_from_slice(&self.selector.to_le_bytes());
        page[at + 2..at + 4].copy_from_slice(&self.attrib.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&self.limit.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&self.base.to_le_bytes());
    }
}

fn put64(page: &mut [u8], at: usize, v: u64) {
    page[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Builds the initial VMSA page of a vCPU starting at `eip`.
pub fn build_vmsa(
    eip: u32,
    sev_features: u64,
    vcpu_sig: u32,
    vmm: VmmType,
) -> Box<[u8; PAGE_SIZE]> {
    let (cs_attr, ss_attr, tr_attr, rdx, mxcsr, fcw, g_pat) = match vmm {
        VmmType::Qemu => (
            0x9b,
            0x93,
            0x8b,
            vcpu_sig as u64,
            MXCSR_RESET,
            FCW_RESET,
            PAT_RESET,
        ),
        VmmType::Ec2 => {
            let cs = if eip == BSP_RESET_EIP { 0x9a } else { 0x9b };
            (cs, 0x92, 0x83, RDX_FIXED_SIG, 0, 0, PAT_RESET)
        }
        VmmType::Gce => (0x9b, 0x93, 0x8b, RDX_FIXED_SIG, 0, 0, PAT_GCE),
    };
    let mut p = Box::new([0u8; PAGE_SIZE]);
    let data = Segment::new(0, 0x93, 0xffff, 0);
    data.write(&mut p[..], OFF_ES);
    Segment::new(0xf000, cs_attr, 0xffff, (eip & 0xffff_0000) as u64).write(&mut p[..], OFF_CS);
    Segment::new(0, ss_attr, 0xffff, 0).write(&mut p[..], OFF_SS);
    data.write(&mut p[..], OFF_DS);
    data.write(&mut p[..], OFF_FS);
    data.write(&mut p[..], OFF_GS);
    Segment::new(0, 0, 0xffff, 0).write(&mut p[..], OFF_GDTR);
    Segment::new(0, 0x82, 0xffff, 0).write(&mut p[..], OFF_LDTR);
    Segment::new(0, 0, 0xffff, 0).write(&mut p[..], OFF_IDTR);
    Segment::new(0, tr_attr, 0xffff, 0).write(&mut p[..], OFF_TR);
    put64(&mut p[..], OFF_EFER, EFER_SVME);
    put64(&mut p[..], OFF_CR4, CR4_MCE);
    put64(&mut p[..], OFF_CR0, CR0_ET);
    put64(&mut p[..], OFF_DR7, DR7_RESET);
    put64(&mut p[..], OFF_DR6, DR6_RESET);
    put64(&mut p[..], OFF_RFLAGS, RFLAGS_RESET);
    put64(&mut p[..], OFF_RIP, (eip & 0xffff) as u64);
    put64(&mut p[..], OFF_G_PAT, g_pat);
    put64(&mut p[..], OFF_RDX, rdx);
    put64(&mut p[..], OFF_SEV_FEATURES, sev_features);
    put64(&mut p[..], OFF_XCR0, XCR0_X87);
    p[OFF_MXCSR..OFF_MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
    p[OFF_X87_FCW..OFF_X87_FCW + 2].copy_from_slice(&fcw.to_le_bytes());
    p
}

/// A vCPU's register state at reset as a VMM sets it before an SEV-ES/SNP launch (the fields
/// from which KVM builds the initial VMSA at `SNP_LAUNCH_FINISH`): real mode, `CS` selector
/// `0xf000` with `CS.base` and `RIP` splitting the reset EIP, and `RDX` holding the CPUID
/// signature (QEMU's reset state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetState {
    pub cs_selector: u16,
    pub cs_base: u64,
    pub rip: u64,
    pub rdx: u64,
}

impl ResetState {
    /// The reset state QEMU gives a vCPU starting at `eip` with CPUID signature `vcpu_sig`
    /// (`CS.base = eip & 0xffff0000`, `IP = eip & 0xffff`, as `build_vmsa` lays it out).
    pub fn at_eip(eip: u32, vcpu_sig: u32) -> Self {
        ResetState {
            cs_selector: 0xf000,
            cs_base: (eip & 0xffff_0000) as u64,
            rip: (eip & 0xffff) as u64,
            rdx: vcpu_sig as u64,
        }
    }

    /// The reset EIP, if the state is one [`Self::at_eip`] can produce.
    pub fn eip(&self) -> Option<u32> {
        let valid = self.cs_selector == 0xf000
            && self.cs_base & 0xffff == 0
            && self.cs_base <= u32::MAX as u64
            && self.rip <= 0xffff
            && self.rdx <= u32::MAX as u64;
        valid.then_some((self.cs_base | self.rip) as u32)
    }
}

/// Builds the QEMU-style initial VMSA for a recorded reset state; `None` when the state is not
/// a real-mode reset state this builder can express (see [`ResetState::eip`]).
pub fn build_vmsa_for_state(state: &ResetState, sev_features: u64) -> Option<Box<[u8; PAGE_SIZE]>> {
    let eip = state.eip()?;
    Some(build_vmsa(
        eip,
        sev_features,
        state.rdx as u32,
        VmmType::Qemu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_cpuid_encoding() {
        // EPYC (Naples) family 17h model 1 stepping 2 = 0x00800f12
        assert_eq!(vcpu_signature("EPYC-v4").unwrap(), 0x0080_0f12);
        assert_eq!(vcpu_signature("EPYC-Milan").unwrap(), 0x00a0_0f11);
        assert_eq!(vcpu_signature("EPYC-Genoa").unwrap(), 0x00a1_0f10);
        assert_eq!(vcpu_signature("EPYC-Rome").unwrap(), 0x0083_0f10);
        assert_eq!(vcpu_signature("EPYC-Turin").unwrap(), 0x00b0_0f00);
        let e = vcpu_signature("EPYC-Zen9").unwrap_err().to_string();
        assert!(e.contains("EPYC-Zen9") && e.contains("--vcpu-sig"), "{e}");
    }

    #[test]
    fn reset_state_round_trips_to_the_same_vmsa() {
        let s = ResetState::at_eip(0x0080_b004, 0x00a0_0f11);
        assert_eq!((s.cs_base, s.rip), (0x0080_0000, 0xb004));
        assert_eq!(s.eip(), Some(0x0080_b004));
        assert_eq!(
            build_vmsa_for_state(&s, 1).unwrap(),
            build_vmsa(0x0080_b004, 1, 0x00a0_0f11, VmmType::Qemu)
        );
        let bad = ResetState { rip: 0x1_0000, ..s };
        assert!(build_vmsa_for_state(&bad, 1).is_none());
    }

    #[test]
    fn vmm_type_names() {
        assert_eq!("QEMU".parse::<VmmType>().unwrap(), VmmType::Qemu);
        assert_eq!("gce".parse::<VmmType>().unwrap(), VmmType::Gce);
        assert!("xen".parse::<VmmType>().is_err());
    }

    #[test]
    fn vmsa_fields_land_at_apm_offsets() {
        let p = build_vmsa(0x0080_b004, 0x21, 0x0080_0f12, VmmType::Qemu);
        assert_eq!(&p[OFF_CS..OFF_CS + 4], &[0x00, 0xf0, 0x9b, 0x00]);
        assert_eq!(
            u64::from_le_bytes(p[OFF_CS + 8..OFF_CS + 16].try_into().unwrap()),
            0x0080_0000
        );
        assert_eq!(
            u64::from_le_bytes(p[OFF_RIP..OFF_RIP + 8].try_into().unwrap()),
            0xb004
        );
        assert_eq!(
            u64::from_le_bytes(p[OFF_RDX..OFF_RDX + 8].try_into().unwrap()),
            0x0080_0f12
        );
        assert_eq!(
            u64::from_le_bytes(
                p[OFF_SEV_FEATURES..OFF_SEV_FEATURES + 8]
                    .try_into()
                    .unwrap()
            ),
            0x21
        );
        assert!(p[0x420..].iter().all(|&b| b == 0));
        let gce = build_vmsa(BSP_RESET_EIP, 1, 0x0080_0f12, VmmType::Gce);
        assert_eq!(
            u64::from_le_bytes(gce[OFF_RDX..OFF_RDX + 8].try_into().unwrap()),
            0x600
        );
        let ec2 = build_vmsa(BSP_RESET_EIP, 1, 0, VmmType::Ec2);
        assert_eq!(ec2[OFF_CS + 2], 0x9a);
    }
}
