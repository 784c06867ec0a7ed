//! The guest's memory map, as the kernel sees it in the zero page's `e820_table` or PVH's
//! `hvm_start_info` memmap (both use the same types: 1 = RAM, 2 = reserved).
//!
//! Built from the RAM ranges of [`super::memory`]: RAM below the EBDA (`0..0x9fc00`), the legacy
//! area `0x9fc00..0x10_0000` reserved (EBDA — the MP table lives there — VGA, option and BIOS
//! ROMs; Firecracker reports the same), RAM from 1 MiB to the end of low RAM (at most 3 GiB), and
//! RAM from 4 GiB for the rest. The 32-bit MMIO hole (3–4 GiB) is left out of the map (a gap, as
//! on Firecracker), which is where the virtio-mmio devices and the IOAPIC sit.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{KvmVmError, Result};

/// `E820_TYPE_RAM` / `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const E820_RAM: u32 = 1;
/// `E820_TYPE_RESERVED` / `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const E820_RESERVED: u32 = 2;
/// Where the Extended BIOS Data Area starts; low RAM ends here (639 KiB).
pub const EBDA_START: GuestAddress = GuestAddress(0x9_fc00);
/// Where the legacy area ends and RAM resumes.
pub const HIGH_MEMORY_START: GuestAddress = GuestAddress(0x10_0000);
/// The zero page holds at most this many entries (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES: usize = 128;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for guest RAM made of `ranges` (`(start, length)`, ascending, as
/// [`super::memory::ram_ranges`] returns them). The first range must start at 0 and reach past
/// 1 MiB.
pub fn memory_map(ranges: &[(GuestAddress, u64)]) -> Result<Vec<E820Entry>> {
    let Some((&(low_start, low_len), high)) = ranges.split_first() else {
        return Err(KvmVmError::Config("the VM has no RAM".into()));
    };
    if low_start.0 != 0 || low_len <= HIGH_MEMORY_START.0 {
        return Err(KvmVmError::Config(format!(
            "Linux needs RAM from 0 past 1 MiB; the first RAM range is {:#x}+{low_len:#x}",
            low_start.0
        )));
    }
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START.0,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START.0,
            size: HIGH_MEMORY_START.0 - EBDA_START.0,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIGH_MEMORY_START.0,
            size: low_len - HIGH_MEMORY_START.0,
            kind: E820_RAM,
        },
    ];
    map.extend(high.iter().map(|&(start, len)| E820Entry {
        addr: start.0,
        size: len,
        kind: E820_RAM,
    }));
    if map.len() > E820_MAX_ENTRIES {
        return Err(KvmVmError::Config(format!(
            "{} memory-map entries do not fit the zero page's {E820_MAX_ENTRIES}",
            map.len()
        )));
    }
    Ok(map)
}

/// The RAM ranges of `memory`, in the form [`memory_map`] takes.
pub fn ram_of(memory: &GuestMemoryMmap) -> Vec<(GuestAddress, u64)> {
    memory
        .iter()
        .map(|region| (region.start_addr(), region.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::kvm::memory::ram_ranges;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn map_for(mib: u64) -> Vec<E820Entry> {
        let ranges: Vec<_> = ram_ranges(mib)
            .unwrap()
            .into_iter()
            .map(|(a, l)| (a, l as u64))
            .collect();
        memory_map(&ranges).unwrap()
    }

    fn e(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn small_vm() {
        assert_eq!(
            map_for(128),
            vec![
                e(0, 0x9fc00, E820_RAM),
                e(0x9fc00, 0x60400, E820_RESERVED),
                e(0x10_0000, 127 * MIB, E820_RAM),
            ]
        );
    }

    #[test]
    fn three_and_a_half_gib_vm_skips_the_mmio_hole() {
        assert_eq!(
            map_for(3 * 1024 + 512),
            vec![
                e(0, 0x9fc00, E820_RAM),
                e(0x9fc00, 0x60400, E820_RESERVED),
                e(0x10_0000, 3 * GIB - MIB, E820_RAM),
                e(4 * GIB, 512 * MIB, E820_RAM),
            ]
        );
        // Nothing in the map touches 3..4 GiB.
        assert!(
            map_for(3 * 1024 + 512)
                .iter()
                .all(|x| x.addr + x.size <= 3 * GIB || x.addr >= 4 * GIB)
        );
    }

    #[test]
    fn ram_below_one_mib_only_is_refused() {
        let err = memory_map(&[(GuestAddress(0), MIB)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid VM configuration: Linux needs RAM from 0 past 1 MiB; the first RAM range \
             is 0x0+0x100000"
        );
        assert!(memory_map(&[]).is_err());
    }
}
