//! The MSRs a vCPU starts with, as Firecracker's `setup_msrs` sets them before a Linux entry:
//! the SYSENTER/SYSCALL MSRs and the kernel GS base zeroed (the kernel programs them), the TSC at
//! 0, and `IA32_MISC_ENABLE` = fast strings. `IA32_APICBASE` is left to KVM (its reset value:
//! enabled, BSP, at 0xfee00000).

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

use super::error::{KvmVmError, Result, ioctl};

/// `IA32_MISC_ENABLE.FAST_STRING` (bit 0): fast `rep movs`/`stos`.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;

/// `(index, name, value)` of every MSR set at boot, in the order they are written.
pub const BOOT_MSRS: [(u32, &str, u64); 10] = [
    (0x174, "IA32_SYSENTER_CS", 0),
    (0x175, "IA32_SYSENTER_ESP", 0),
    (0x176, "IA32_SYSENTER_EIP", 0),
    (0xc000_0081, "STAR", 0),
    (0xc000_0083, "CSTAR", 0),
    (0xc000_0102, "KERNEL_GS_BASE", 0),
    (0xc000_0084, "SYSCALL_MASK", 0),
    (0xc000_0082, "LSTAR", 0),
    (0x10, "IA32_TSC", 0),
    (0x1a0, "IA32_MISC_ENABLE", MISC_ENABLE_FAST_STRING),
];

/// Writes [`BOOT_MSRS`] to `vcpu` (one `KVM_SET_MSRS`); an MSR KVM refuses is named.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, _, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| KvmVmError::Config(format!("cannot build the boot MSR list: {e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    // KVM_SET_MSRS stops at the first MSR it refuses and returns how many it wrote.
    match BOOT_MSRS.get(written) {
        None => Ok(()),
        Some(&(index, name, value)) => Err(KvmVmError::Msr { index, name, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_are_unique_and_only_misc_enable_is_nonzero() {
        let mut indices: Vec<u32> = BOOT_MSRS.iter().map(|m| m.0).collect();
        indices.sort();
        indices.dedup();
        assert_eq!(indices.len(), BOOT_MSRS.len());
        let nonzero: Vec<_> = BOOT_MSRS.iter().filter(|m| m.2 != 0).collect();
        assert_eq!(nonzero, [&(0x1a0, "IA32_MISC_ENABLE", 1)]);
    }

    #[test]
    fn refused_msr_message() {
        let e = KvmVmError::Msr {
            index: 0x1a0,
            name: "IA32_MISC_ENABLE",
            value: 1,
        };
        assert_eq!(
            e.to_string(),
            "KVM refused to set MSR 0x1a0 (IA32_MISC_ENABLE) to 0x1"
        );
    }
}
