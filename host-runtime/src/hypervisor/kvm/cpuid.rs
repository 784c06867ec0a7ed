//! The CPUID a vCPU sees: KVM's supported set (`KVM_GET_SUPPORTED_CPUID`) with the per-vCPU
//! topology filled in, the part a kernel uses to number CPUs (as Firecracker does):
//!
//! - leaf 0x1: `EBX[31:24]` = initial APIC id (the vCPU index), `EBX[23:16]` = logical
//!   processors per package (the vCPU count), `EDX[28]` (HTT) set when there is more than one;
//! - leaf 0xb (extended topology), if KVM reports it: every sub-leaf's `EDX` = x2APIC id (the
//!   vCPU index); sub-leaf 0 is the SMT level (1 thread per core), sub-leaf 1 the core level
//!   (`count` cores in one package), further sub-leaves invalid.
//!
//! Nothing else is filtered yet (hypervisor leaves, cache topology, features stay as KVM says).

use kvm_bindings::CpuId;

/// Leaf 0x1's HTT flag (`EDX` bit 28): more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb level types (`ECX[15:8]`).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Sets `cpuid`'s topology fields for vCPU `index` of `count` (see the module documentation).
pub fn set_topology(cpuid: &mut CpuId, index: u8, count: u8) {
    let count = count.max(1);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            0xb => {
                let (eax, ebx, ecx) = match entry.index {
                    // Shift to the next level's id, logical processors at this level, level type.
                    0 => (0, 1, (LEVEL_SMT << 8)),
                    1 => (bits_for(count), u32::from(count), (LEVEL_CORE << 8) | 1),
                    n => (0, 0, n & 0xff),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = ecx;
                entry.edx = u32::from(index);
            }
            _ => {}
        }
    }
}

/// The number of APIC-id bits that `count` ids need (0 for 1).
fn bits_for(count: u8) -> u32 {
    (u32::from(count)).next_power_of_two().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xdead,
            ebx: 0x00ff_0800,
            ecx: 0xdead,
            edx: 0x1000_0001,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_and_0xb_carry_the_vcpu_index() {
        let mut cpuid =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)])
                .unwrap();
        set_topology(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(
            e[0].ebx, 0x0203_0800,
            "APIC id 2, 3 logical processors, CLFLUSH kept"
        );
        assert_eq!(e[0].edx, 0x1000_0001, "HTT set");
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx, e[1].edx), (0, 1, 0x100, 2));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (2, 3, 0x201, 2));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (0, 0, 2, 2));
    }

    #[test]
    fn single_vcpu_clears_htt() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        set_topology(&mut cpuid, 0, 1);
        assert_eq!(cpuid.as_slice()[0].ebx, 0x0001_0800);
        assert_eq!(cpuid.as_slice()[0].edx, 0x0000_0001);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
