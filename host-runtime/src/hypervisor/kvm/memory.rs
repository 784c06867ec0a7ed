//! Guest physical memory laid out like a PC: RAM from 0 up to the 32-bit MMIO hole
//! ([`MMIO_HOLE_START`] = 3 GiB … [`MMIO_HOLE_END`] = 4 GiB), the rest from 4 GiB up. Each RAM
//! range is one anonymous mapping (`GuestMemoryMmap`) and one KVM memory slot.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{KvmVmError, Result};

/// Where the 32-bit MMIO hole (PCI, LAPIC, IOAPIC, firmware) starts: 3 GiB.
pub const MMIO_HOLE_START: GuestAddress = GuestAddress(0xC000_0000);
/// Where it ends and high RAM starts: 4 GiB.
pub const MMIO_HOLE_END: GuestAddress = GuestAddress(0x1_0000_0000);
/// The smallest VM this monitor builds: room for the boot structures and a payload at 1 MiB.
pub const MIN_MEMORY_MIB: u64 = 2;
/// The largest: 1 TiB (a sanity bound, not a KVM limit).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

const MIB: u64 = 1 << 20;

/// The guest-physical RAM ranges for `memory_mib` MiB: `(start, length in bytes)`, ascending.
pub fn ram_ranges(memory_mib: u64) -> Result<Vec<(GuestAddress, usize)>> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(KvmVmError::Config(format!(
            "memory must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB, got {memory_mib}"
        )));
    }
    let total = memory_mib * MIB;
    let below = total.min(MMIO_HOLE_START.raw_value());
    let above = total - below;
    let mut ranges = vec![(GuestAddress(0), to_usize(below)?)];
    if above > 0 {
        ranges.push((MMIO_HOLE_END, to_usize(above)?));
    }
    Ok(ranges)
}

fn to_usize(len: u64) -> Result<usize> {
    usize::try_from(len).map_err(|_| {
        KvmVmError::Config(format!("{len} bytes do not fit this host's address space"))
    })
}

/// Allocates the guest memory for `memory_mib` MiB (anonymous, `MAP_NORESERVE`: pages are
/// populated on first touch).
pub fn allocate(memory_mib: u64) -> Result<GuestMemoryMmap> {
    let ranges = ram_ranges(memory_mib)?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| KvmVmError::MemoryAllocation {
        mib: memory_mib,
        reason: e.to_string(),
    })
}

/// Where a firmware image of `len` bytes is mapped: ending at 4 GiB, inside the MMIO hole
/// (as QEMU maps the pflash/`-bios` image). `len` must be a non-zero multiple of 4 KiB and fit
/// in the hole.
pub fn firmware_range(len: usize) -> Result<(GuestAddress, usize)> {
    let hole = MMIO_HOLE_END.raw_value() - MMIO_HOLE_START.raw_value();
    if len == 0 || !len.is_multiple_of(4096) || len as u64 > hole {
        return Err(KvmVmError::Config(format!(
            "a firmware image must be a non-zero multiple of 4096 bytes of at most {hole:#x}, got {len}"
        )));
    }
    Ok((GuestAddress(MMIO_HOLE_END.raw_value() - len as u64), len))
}

/// RAM for `memory_mib` MiB plus a firmware region of `firmware_len` bytes ending at 4 GiB
/// (see [`firmware_range`]), ascending: one region (and one KVM slot) each.
pub fn ranges_with_firmware(
    memory_mib: u64,
    firmware_len: usize,
) -> Result<Vec<(GuestAddress, usize)>> {
    let mut ranges = ram_ranges(memory_mib)?;
    ranges.push(firmware_range(firmware_len)?);
    ranges.sort_by_key(|(start, _)| *start);
    Ok(ranges)
}

/// Allocates RAM plus a firmware region (see [`ranges_with_firmware`]), zero-filled.
pub fn allocate_with_firmware(memory_mib: u64, firmware_len: usize) -> Result<GuestMemoryMmap> {
    let ranges = ranges_with_firmware(memory_mib, firmware_len)?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| KvmVmError::MemoryAllocation {
        mib: memory_mib,
        reason: e.to_string(),
    })
}

/// The KVM memory slots describing `memory`: slot `i` is region `i`.
pub fn memory_slots(memory: &GuestMemoryMmap) -> Result<Vec<kvm_userspace_memory_region>> {
    memory
        .iter()
        .enumerate()
        .map(|(slot, region)| {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| KvmVmError::MemoryAllocation {
                    mib: region.len() / MIB,
                    reason: e.to_string(),
                })?;
            Ok(kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            })
        })
        .collect()
}

/// Registers every region of `memory` with the VM (KVM_SET_USER_MEMORY_REGION).
///
/// The caller must keep `memory` mapped for as long as `vm` exists: [`super::KvmVm`] owns both
/// and drops the VM file descriptor first.
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for slot in memory_slots(memory)? {
        // SAFETY: `userspace_addr`/`memory_size` describe a live anonymous mapping owned by
        // `memory` (vm-memory's `MmapRegion`), the slots do not overlap (one per region, regions
        // are disjoint), and the owner (`KvmVm`) keeps the mapping alive until after the VM fd
        // is closed, so KVM never sees an unmapped host range.
        unsafe { vm.set_user_memory_region(slot) }.map_err(|source| KvmVmError::Ioctl {
            what: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn small_vm_is_one_range_at_zero() {
        let r = ram_ranges(512).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), (512 * MIB) as usize)]);
    }

    #[test]
    fn exactly_three_gib_fills_the_low_range_only() {
        let r = ram_ranges(3 * 1024).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), (3 * GIB) as usize)]);
    }

    #[test]
    fn large_vm_splits_around_the_mmio_hole() {
        let r = ram_ranges(6 * 1024).unwrap();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (3 * GIB) as usize),
            ]
        );
        // Nothing is mapped inside the hole.
        let low_end = r[0].0.raw_value() + r[0].1 as u64;
        assert_eq!(low_end, MMIO_HOLE_START.raw_value());
        assert_eq!(r[1].0, MMIO_HOLE_END);
    }

    #[test]
    fn one_mib_over_the_hole_goes_above_four_gib() {
        let r = ram_ranges(3 * 1024 + 1).unwrap();
        assert_eq!(r[1], (GuestAddress(4 * GIB), MIB as usize));
    }

    #[test]
    fn rejects_absurd_sizes() {
        assert!(ram_ranges(0).is_err());
        assert!(ram_ranges(1).is_err());
        assert!(ram_ranges(MAX_MEMORY_MIB + 1).is_err());
    }

    #[test]
    fn firmware_region_ends_at_four_gib_inside_the_hole() {
        let (start, len) = firmware_range(2 * MIB as usize).unwrap();
        assert_eq!(start, GuestAddress(4 * GIB - 2 * MIB));
        assert_eq!(len, 2 * MIB as usize);
        assert!(start >= MMIO_HOLE_START);
        assert!(firmware_range(0).is_err());
        assert!(firmware_range(4095).is_err());
        assert!(firmware_range((GIB + 4096) as usize).is_err());
        let r = ranges_with_firmware(3 * 1024 + 1, 64 * 1024).unwrap();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB - 64 * 1024), 64 * 1024),
                (GuestAddress(4 * GIB), MIB as usize),
            ]
        );
        let mem = allocate_with_firmware(16, 64 * 1024).unwrap();
        let slots = memory_slots(&mem).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[1].guest_phys_addr, 4 * GIB - 64 * 1024);
    }

    #[test]
    fn slots_follow_the_regions() {
        // 4 GiB + 2 MiB of address space, reserved but never touched (MAP_NORESERVE).
        let mem = allocate(3 * 1024 + 2).unwrap();
        let slots = memory_slots(&mem).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!((slots[0].slot, slots[0].guest_phys_addr), (0, 0));
        assert_eq!(slots[0].memory_size, 3 * GIB);
        assert_eq!((slots[1].slot, slots[1].guest_phys_addr), (1, 4 * GIB));
        assert_eq!(slots[1].memory_size, 2 * MIB);
        assert!(slots.iter().all(|s| s.userspace_addr != 0 && s.flags == 0));
    }
}
