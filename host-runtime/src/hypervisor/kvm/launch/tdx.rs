//! The TDX launch of a TDVF image, as QEMU and KVM (Linux 6.16 uAPI) do it:
//!
//! 1. the firmware image is copied to its GPA (ending at 4 GiB) and every TDVF section with
//!    data is copied to its memory address; every guest memory region gets a guest_memfd and is
//!    marked private;
//! 2. `KVM_TDX_INIT_VM` (attributes, XFAM, MRCONFIGID, MROWNER, MROWNERCONFIG, CPUID);
//! 3. `KVM_TDX_INIT_VCPU` per vCPU (RCX = the TD HOB address);
//! 4. `KVM_TDX_INIT_MEM_REGION` per TDVF section that is added at build time (not PermMem, not
//!    PAGE.AUG), in descriptor order, with `KVM_TDX_MEASURE_MEMORY_REGION` for sections with the
//!    EXTENDMR attribute; the bytes read from guest memory;
//! 5. `KVM_TDX_FINALIZE_VM`.
//!
//! The `#[repr(C)]` structures below follow `arch/x86/include/uapi/asm/kvm.h` of Linux 6.16
//! (TDX merged in 6.16; kvm-bindings 0.14 has `KVM_X86_TDX_VM` but no TDX structures).

use kvm_bindings::{kvm_cpuid_entry2, kvm_cpuid2};
use podvm_measured_boot::Firmware;
use podvm_measured_boot::ovmf::FIRMWARE_END_GPA;
use podvm_measured_boot::tdx::tdvf::{TdvfDescriptor, TdvfSectionType};
use vm_memory::GuestMemoryMmap;

use super::{LaunchError, LaunchOps, PAGE_SIZE, Sequencer, make_private, read_guest, write_guest};

/// `enum kvm_tdx_cmd_id`.
pub const KVM_TDX_CAPABILITIES: u32 = 0;
pub const KVM_TDX_INIT_VM: u32 = 1;
pub const KVM_TDX_INIT_VCPU: u32 = 2;
pub const KVM_TDX_INIT_MEM_REGION: u32 = 3;
pub const KVM_TDX_FINALIZE_VM: u32 = 4;
pub const KVM_TDX_GET_CPUID: u32 = 5;
/// `kvm_tdx_cmd.flags` of `KVM_TDX_INIT_MEM_REGION`: extend the pages into MRTD.
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1;

/// `struct kvm_tdx_cmd`: the argument of `KVM_MEMORY_ENCRYPT_OP` on a TDX VM or vCPU.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmTdxCmd {
    /// `enum kvm_tdx_cmd_id`.
    pub id: u32,
    /// Sub-command flags (`KVM_TDX_MEASURE_MEMORY_REGION`).
    pub flags: u32,
    /// An immediate or a user pointer, per sub-command.
    pub data: u64,
    /// SEAMCALL status, filled by the kernel on failure.
    pub hw_error: u64,
}

/// The fixed part of `struct kvm_tdx_init_vm` (256 bytes of TD_PARAMS fields, then the
/// `struct kvm_cpuid2` header); the CPUID entries follow it in memory.
#[repr(C)]
#[derive(Debug, Default)]
pub struct KvmTdxInitVm {
    pub attributes: u64,
    pub xfam: u64,
    pub mrconfigid: [u64; 6],
    pub mrowner: [u64; 6],
    pub mrownerconfig: [u64; 6],
    pub reserved: [u64; 12],
    pub cpuid: kvm_cpuid2,
}

/// `struct kvm_tdx_init_mem_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmTdxInitMemRegion {
    pub source_addr: u64,
    pub gpa: u64,
    pub nr_pages: u64,
}

/// Arguments of `KVM_TDX_INIT_VM`.
#[derive(Debug, Clone, PartialEq)]
pub struct TdxInitVm {
    /// TD attributes (e.g. bit 28 SEPT_VE_DISABLE).
    pub attributes: u64,
    /// Extended features allowed (XFAM).
    pub xfam: u64,
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrownerconfig: [u8; 48],
    /// The configurable CPUID leaves (from `KVM_TDX_CAPABILITIES`).
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

impl Default for TdxInitVm {
    fn default() -> Self {
        TdxInitVm {
            attributes: 0,
            xfam: 0,
            mrconfigid: [0; 48],
            mrowner: [0; 48],
            mrownerconfig: [0; 48],
            cpuid: Vec::new(),
        }
    }
}

fn digest_words(d: &[u8; 48]) -> [u64; 6] {
    let mut w = [0u64; 6];
    for (i, c) in d.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        w[i] = u64::from_le_bytes(b);
    }
    w
}

impl TdxInitVm {
    /// The `struct kvm_tdx_init_vm` followed by its CPUID entries, as 8-byte words (so the
    /// buffer is suitably aligned for the kernel).
    pub fn to_uapi(&self) -> Vec<u64> {
        let head = std::mem::size_of::<KvmTdxInitVm>();
        let entry = std::mem::size_of::<kvm_cpuid_entry2>();
        let len = head + entry * self.cpuid.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        let fixed = KvmTdxInitVm {
            attributes: self.attributes,
            xfam: self.xfam,
            mrconfigid: digest_words(&self.mrconfigid),
            mrowner: digest_words(&self.mrowner),
            mrownerconfig: digest_words(&self.mrownerconfig),
            reserved: [0; 12],
            cpuid: kvm_cpuid2 {
                nent: self.cpuid.len() as u32,
                ..Default::default()
            },
        };
        let base = words.as_mut_ptr().cast::<u8>();
        // SAFETY: `words` holds `len` bytes or more, 8-byte aligned (the alignment of both
        // structures); the header is written at offset 0 and entry `i` at `head + i * entry`,
        // all inside the buffer, with unaligned-safe writes of plain-old-data values.
        unsafe {
            base.cast::<KvmTdxInitVm>().write_unaligned(fixed);
            for (i, e) in self.cpuid.iter().enumerate() {
                base.add(head + i * entry)
                    .cast::<kvm_cpuid_entry2>()
                    .write_unaligned(*e);
            }
        }
        words
    }
}

/// Everything a TDX launch needs (for [`super::ConfidentialLaunch::Tdx`]).
#[derive(Debug, Clone)]
pub struct TdxLaunch {
    /// The TDVF image.
    pub firmware: Firmware,
    pub init_vm: TdxInitVm,
    pub vcpus: u32,
}

/// What [`launch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxLaunchReport {
    /// `KVM_TDX_INIT_MEM_REGION` calls issued.
    pub regions: usize,
    /// Pages they added.
    pub pages: usize,
    /// Of those, pages extended into MRTD.
    pub measured_pages: usize,
    /// Launch operations issued in all.
    pub steps: usize,
}

/// Runs the TDX launch of `firmware` (a TDVF image) into `memory` through `ops`.
///
/// `memory` must hold the firmware region and the RAM the TDVF's TempMem / TD HOB sections lie
/// in. The TD HOB itself is not built yet (its section is added unmeasured, zero-filled).
pub fn launch(
    firmware: &Firmware,
    init_vm: &TdxInitVm,
    vcpus: u32,
    memory: &GuestMemoryMmap,
    ops: &mut dyn LaunchOps,
) -> Result<TdxLaunchReport, LaunchError> {
    if vcpus == 0 {
        return Err(LaunchError::Invalid("a TD needs at least one vCPU".into()));
    }
    if firmware.gpa() + firmware.data().len() as u64 != FIRMWARE_END_GPA {
        return Err(LaunchError::Invalid(format!(
            "firmware {} does not end at 4 GiB",
            firmware.name()
        )));
    }
    let desc =
        TdvfDescriptor::from_firmware(firmware).map_err(|e| LaunchError::Invalid(e.to_string()))?;
    let image = firmware.data();
    for (i, s) in desc.sections.iter().enumerate() {
        if let TdvfSectionType::Unknown(t) = s.section_type {
            return Err(LaunchError::Invalid(format!(
                "TDVF section {i} has unknown type {t}"
            )));
        }
        if s.memory_address % PAGE_SIZE as u64 != 0 || s.memory_data_size % PAGE_SIZE as u64 != 0 {
            return Err(LaunchError::Invalid(format!(
                "TDVF section {i} at {:#x}+{:#x} is not page aligned",
                s.memory_address, s.memory_data_size
            )));
        }
        if s.raw_data_size as u64 > s.memory_data_size {
            return Err(LaunchError::Invalid(format!(
                "TDVF section {i} has {:#x} data bytes for {:#x} bytes of memory",
                s.raw_data_size, s.memory_data_size
            )));
        }
    }

    // 1. Load: the whole image at its GPA, then each section's data at its address.
    write_guest(memory, firmware.gpa(), image)?;
    for (i, s) in desc.sections.iter().enumerate() {
        if s.raw_data_size == 0 {
            continue;
        }
        let from = s.data_offset as usize;
        let data = from
            .checked_add(s.raw_data_size as usize)
            .and_then(|end| image.get(from..end))
            .ok_or_else(|| {
                LaunchError::Invalid(format!(
                    "TDVF section {i} data {from:#x}+{:#x} lies outside the {}-byte image",
                    s.raw_data_size,
                    image.len()
                ))
            })?;
        write_guest(memory, s.memory_address, data)?;
    }
    let hob = desc
        .sections
        .iter()
        .find(|s| s.section_type == TdvfSectionType::TdHob)
        .map(|s| s.memory_address)
        .unwrap_or(0);

    let mut seq = Sequencer::new(ops);
    make_private(&mut seq, memory)?;
    // 2. INIT_VM, 3. INIT_VCPU.
    seq.issue("KVM_TDX_INIT_VM", None, |o| o.tdx_init_vm(init_vm))?;
    for v in 0..vcpus {
        seq.issue("KVM_TDX_INIT_VCPU", None, |o| o.tdx_init_vcpu(v, hob))?;
    }
    // 4. INIT_MEM_REGION per added section, in descriptor order.
    let mut report = TdxLaunchReport {
        regions: 0,
        pages: 0,
        measured_pages: 0,
        steps: 0,
    };
    for s in desc.sections.iter().filter(|s| s.is_added()) {
        let len = usize::try_from(s.memory_data_size)
            .map_err(|_| LaunchError::Invalid("TDVF section larger than memory".into()))?;
        if len == 0 {
            continue;
        }
        let gpa = s.memory_address;
        let bytes = read_guest(memory, gpa, len)?;
        let measure = s.is_extended();
        seq.issue("KVM_TDX_INIT_MEM_REGION", Some(gpa), |o| {
            o.tdx_init_mem_region(gpa, &bytes, measure)
        })?;
        report.regions += 1;
        report.pages += len / PAGE_SIZE;
        if measure {
            report.measured_pages += len / PAGE_SIZE;
        }
    }
    // 5. FINALIZE.
    seq.issue("KVM_TDX_FINALIZE_VM", None, |o| o.tdx_finalize_vm())?;
    report.steps = seq.steps();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets of `arch/x86/include/uapi/asm/kvm.h` (Linux 6.16).
    #[test]
    fn tdx_uapi_layouts() {
        assert_eq!(size_of::<KvmTdxCmd>(), 24);
        assert_eq!(offset_of!(KvmTdxCmd, id), 0);
        assert_eq!(offset_of!(KvmTdxCmd, flags), 4);
        assert_eq!(offset_of!(KvmTdxCmd, data), 8);
        assert_eq!(offset_of!(KvmTdxCmd, hw_error), 16);

        // "The total space for TD_PARAMS before the CPUIDs is 256 bytes".
        assert_eq!(size_of::<KvmTdxInitVm>(), 264);
        assert_eq!(offset_of!(KvmTdxInitVm, attributes), 0);
        assert_eq!(offset_of!(KvmTdxInitVm, xfam), 8);
        assert_eq!(offset_of!(KvmTdxInitVm, mrconfigid), 16);
        assert_eq!(offset_of!(KvmTdxInitVm, mrowner), 64);
        assert_eq!(offset_of!(KvmTdxInitVm, mrownerconfig), 112);
        assert_eq!(offset_of!(KvmTdxInitVm, reserved), 160);
        assert_eq!(offset_of!(KvmTdxInitVm, cpuid), 256);
        assert_eq!(std::mem::align_of::<KvmTdxInitVm>(), 8);

        assert_eq!(size_of::<KvmTdxInitMemRegion>(), 24);
        assert_eq!(offset_of!(KvmTdxInitMemRegion, source_addr), 0);
        assert_eq!(offset_of!(KvmTdxInitMemRegion, gpa), 8);
        assert_eq!(offset_of!(KvmTdxInitMemRegion, nr_pages), 16);

        assert_eq!(size_of::<kvm_cpuid_entry2>(), 40);
        assert_eq!(
            (
                KVM_TDX_INIT_VM,
                KVM_TDX_INIT_MEM_REGION,
                KVM_TDX_FINALIZE_VM
            ),
            (1, 3, 4)
        );
    }

    #[test]
    fn init_vm_serialises_digests_and_cpuid_in_place() {
        let mut init = TdxInitVm {
            attributes: 1 << 28,
            xfam: 0x0006_02e7,
            ..Default::default()
        };
        init.mrconfigid[0] = 0xaa;
        init.mrowner[47] = 0xbb;
        init.cpuid = vec![kvm_cpuid_entry2 {
            function: 0x7,
            eax: 0x1234,
            ..Default::default()
        }];
        let words = init.to_uapi();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes.len(), 264 + 40);
        assert_eq!(&bytes[0..8], &(1u64 << 28).to_le_bytes());
        assert_eq!(&bytes[8..16], &0x0006_02e7u64.to_le_bytes());
        assert_eq!(bytes[16], 0xaa);
        assert_eq!(bytes[64 + 47], 0xbb);
        assert_eq!(&bytes[256..260], &1u32.to_le_bytes());
        assert_eq!(&bytes[264..268], &7u32.to_le_bytes());
        // kvm_cpuid_entry2: function, index, flags, eax at 12.
        assert_eq!(&bytes[264 + 12..264 + 16], &0x1234u32.to_le_bytes());
    }
}
