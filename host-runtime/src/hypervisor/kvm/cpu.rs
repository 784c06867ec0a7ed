//! 64-bit entry: the boot-time structures in low guest memory and the vCPU register state that
//! starts a vCPU directly in long mode at an entry point, as the Linux x86-64 64-bit boot
//! protocol expects (paging on with an identity map, flat 64-bit code and data segments,
//! `RSI` = the zero page). [`setup_long_mode`] is the one function both the test payloads and the
//! (later) Linux loader use.
//!
//! Low memory layout (every address is a named constant below):
//!
//! | guest physical | what |
//! |---|---|
//! | `0x0500..0x0518` | GDT: null, 64-bit code (selector 0x08), data (selector 0x10) |
//! | `0x7000..0x8000` | zero page (Linux `boot_params`; `RSI` points here) |
//! | `0x8000..0x8ff0` | initial stack, `RSP` = `0x8ff0` |
//! | `0x9000..0xa000` | PML4 |
//! | `0xa000..0xb000` | PDPT |
//! | `0xb000..0xf000` | 4 page directories, 2 MiB pages: identity map of 0..4 GiB |
//! | `0x10_0000..` | payload / kernel entry ([`PAYLOAD_START`]) |

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{KvmVmError, Result, ioctl};

/// The GDT's guest address.
pub const GDT_START: GuestAddress = GuestAddress(0x500);
/// The zero page (`boot_params`) a Linux kernel finds in `RSI`.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// The initial stack pointer (the stack grows down towards the zero page's end, 0x8000).
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// The top-level page table.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// The page-directory-pointer table.
pub const PDPT_START: GuestAddress = GuestAddress(0xa000);
/// The first of [`PD_COUNT`] consecutive page directories.
pub const PD_START: GuestAddress = GuestAddress(0xb000);
/// Page directories: each maps 1 GiB with 2 MiB pages, so the identity map covers 4 GiB.
pub const PD_COUNT: u64 = 4;
/// Where payloads and kernels are loaded and entered: 1 MiB, above the legacy area.
pub const PAYLOAD_START: GuestAddress = GuestAddress(0x10_0000);

/// GDT entries, flat (base 0, limit 4 GiB, 4 KiB granularity).
pub const GDT_NULL: u64 = 0;
/// Code: present, DPL 0, execute/read, accessed, L=1 (64-bit), D=0, G=1.
pub const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
/// Data: present, DPL 0, read/write, accessed, D/B=1, G=1.
pub const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;
/// The GDT as written to [`GDT_START`].
pub const GDT: [u64; 3] = [GDT_NULL, GDT_CODE64, GDT_DATA];
/// PVH entry (32-bit protected mode): code: present, DPL 0, execute/read, accessed, D=1 (32-bit),
/// G=1.
pub const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// PVH entry: a 32-bit TSS (busy), base 0, limit 0x67, as the PVH ABI requires for `TR`.
pub const GDT_TSS32: u64 = 0x0000_8b00_0000_0067;
/// The GDT written for a PVH entry: the same selectors as [`GDT`], 32-bit code, plus a TSS.
pub const GDT_32: [u64; 4] = [GDT_NULL, GDT_CODE32, GDT_DATA, GDT_TSS32];
/// The TSS selector of [`GDT_32`].
pub const TSS_SELECTOR: u16 = 0x18;
/// Selectors (index × 8, TI = 0, RPL = 0).
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

/// Control register and EFER bits.
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set; nothing else (interrupts off, DF = 0).
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PAGE_2M: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// Where a vCPU starts in 64-bit mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// The first instruction.
    pub rip: GuestAddress,
    /// The initial stack pointer.
    pub rsp: GuestAddress,
    /// `RSI`: the zero page for a Linux kernel; test payloads ignore it.
    pub rsi: GuestAddress,
}

impl BootEntry {
    /// The 64-bit boot protocol's entry at `rip` with this module's stack and zero page.
    pub fn at(rip: GuestAddress) -> Self {
        BootEntry {
            rip,
            rsp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
        }
    }
}

/// The identity map's tables, in order: `(address, 512 little-endian entries)`.
pub fn page_tables() -> Vec<(GuestAddress, Vec<u64>)> {
    let mut tables = Vec::new();
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_START.0 | PTE_PRESENT | PTE_WRITABLE;
    tables.push((PML4_START, pml4));
    let mut pdpt = vec![0u64; 512];
    for (i, entry) in pdpt.iter_mut().take(PD_COUNT as usize).enumerate() {
        *entry = (PD_START.0 + 0x1000 * i as u64) | PTE_PRESENT | PTE_WRITABLE;
    }
    tables.push((PDPT_START, pdpt));
    for pd_index in 0..PD_COUNT {
        let pd = (0..512u64)
            .map(|j| (pd_index * GIB + j * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE)
            .collect();
        tables.push((GuestAddress(PD_START.0 + 0x1000 * pd_index), pd));
    }
    tables
}

fn write_u64s(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: GuestAddress,
    words: &[u64],
) -> Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write_slice(&bytes, addr)
        .map_err(|e| KvmVmError::GuestMemoryWrite {
            what,
            addr: addr.0,
            reason: e.to_string(),
        })
}

/// Writes the GDT and the identity-mapping page tables into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<()> {
    write_u64s(mem, "GDT", GDT_START, &GDT)?;
    for (addr, table) in page_tables() {
        write_u64s(mem, "page table", addr, &table)?;
    }
    Ok(())
}

/// The KVM segment register a GDT entry describes when loaded with selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// `sregs` changed for long mode: flat segments from [`GDT`], paging through [`PML4_START`],
/// no IDT (limit 0: any exception escalates to a triple fault until the guest loads its own).
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT_CODE64, CODE_SELECTOR / 8);
    let data = segment_from_gdt(GDT_DATA, DATA_SELECTOR / 8);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_START.0;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// The general-purpose registers at `entry`.
pub fn long_mode_regs(entry: BootEntry) -> kvm_regs {
    kvm_regs {
        rip: entry.rip.0,
        rsp: entry.rsp.0,
        rbp: entry.rsp.0,
        rsi: entry.rsi.0,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// The x87/SSE state Linux expects at entry (FCW = 0x37f, MXCSR = 0x1f80: reset values).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the boot tables and puts `vcpu` in 64-bit mode at `entry`. The Linux loader calls this
/// with the kernel's 64-bit entry point and the zero page it filled in.
pub fn setup_long_mode(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: BootEntry) -> Result<()> {
    write_boot_tables(mem)?;
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs))
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&long_mode_regs(entry))
        .map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(ioctl("KVM_SET_FPU"))?;
    Ok(())
}

/// `sregs` changed for the PVH entry: flat 32-bit segments from [`GDT_32`], `CR0` = PE (and the
/// hard-wired ET), no paging, no PAE, `EFER` = 0, no IDT.
pub fn protected_mode_32_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT_CODE32, CODE_SELECTOR / 8);
    let data = segment_from_gdt(GDT_DATA, DATA_SELECTOR / 8);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT_TSS32, TSS_SELECTOR / 8);
    sregs.gdt.base = GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT_32) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// The general-purpose registers at a PVH entry: `EIP` = `entry`, `EBX` = `start_info`, flags
/// with interrupts off.
pub fn protected_mode_32_regs(entry: GuestAddress, start_info: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry.0,
        rbx: start_info.0,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Writes [`GDT_32`] and puts `vcpu` in 32-bit protected mode without paging at `entry` with
/// `EBX` = `start_info`: the PVH boot ABI's entry state.
pub fn setup_protected_mode_32(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: GuestAddress,
    start_info: GuestAddress,
) -> Result<()> {
    write_u64s(mem, "GDT", GDT_START, &GDT_32)?;
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&protected_mode_32_sregs(sregs))
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&protected_mode_32_regs(entry, start_info))
        .map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(ioctl("KVM_SET_FPU"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj::<u64>(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn gdt_bytes_are_flat_code64_and_data() {
        let mem = small_memory();
        write_boot_tables(&mem).unwrap();
        let mut bytes = [0u8; 24];
        mem.read_slice(&mut bytes, GDT_START).unwrap();
        assert_eq!(
            bytes,
            [
                0, 0, 0, 0, 0, 0, 0, 0, // null
                0xff, 0xff, 0, 0, 0, 0x9b, 0xaf, 0, // code: limit, base, access 9b, flags a
                0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0, // data: access 93, flags c
            ]
        );
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs = segment_from_gdt(GDT_CODE64, 1);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x08));
        assert_eq!((cs.type_, cs.present, cs.dpl, cs.s), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g), (1, 0, 1));
        let ds = segment_from_gdt(GDT_DATA, 2);
        assert_eq!((ds.base, ds.limit, ds.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!((ds.type_, ds.present, ds.l, ds.db, ds.g), (0x3, 1, 0, 1, 1));
    }

    #[test]
    fn page_tables_identity_map_four_gib_with_2m_pages() {
        let mem = small_memory();
        write_boot_tables(&mem).unwrap();
        assert_eq!(read_u64(&mem, 0x9000), 0xa003);
        assert_eq!(read_u64(&mem, 0x9008), 0, "only PML4[0] is present");
        assert_eq!(read_u64(&mem, 0xa000), 0xb003);
        assert_eq!(read_u64(&mem, 0xa008), 0xc003);
        assert_eq!(read_u64(&mem, 0xa010), 0xd003);
        assert_eq!(read_u64(&mem, 0xa018), 0xe003);
        assert_eq!(read_u64(&mem, 0xa020), 0);
        // PD 0: 0 → 0, 2 MiB → 2 MiB, last entry maps 1 GiB - 2 MiB.
        assert_eq!(read_u64(&mem, 0xb000), 0x83);
        assert_eq!(read_u64(&mem, 0xb008), 0x20_0083);
        assert_eq!(read_u64(&mem, 0xb000 + 511 * 8), 0x3fe0_0083);
        // PD 3, last entry: 4 GiB - 2 MiB.
        assert_eq!(read_u64(&mem, 0xe000 + 511 * 8), 0xffe0_0083);
        // Every 2 MiB page maps to itself.
        for (i, (addr, table)) in page_tables().into_iter().skip(2).enumerate() {
            assert_eq!(addr.0, 0xb000 + 0x1000 * i as u64);
            for (j, e) in table.iter().enumerate() {
                assert_eq!(e & !0xfff, (i as u64) * GIB + (j as u64) * PAGE_2M);
            }
        }
    }

    #[test]
    fn tables_do_not_overlap_each_other_or_the_payload() {
        let mut ranges: Vec<(u64, u64)> = vec![
            (GDT_START.0, GDT_START.0 + 24),
            (ZERO_PAGE_START.0, ZERO_PAGE_START.0 + 0x1000),
            (ZERO_PAGE_START.0 + 0x1000, BOOT_STACK_POINTER.0),
        ];
        ranges.extend(page_tables().iter().map(|(a, _)| (a.0, a.0 + 0x1000)));
        ranges.push((PAYLOAD_START.0, PAYLOAD_START.0 + 1));
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
    }

    #[test]
    fn protected_mode_32_registers() {
        let s = protected_mode_32_sregs(kvm_sregs::default());
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!(
            (s.cs.selector, s.cs.db, s.cs.l, s.cs.type_),
            (0x08, 1, 0, 0xb)
        );
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!((s.ds.selector, s.ss.selector, s.ds.db), (0x10, 0x10, 1));
        assert_eq!(
            (s.tr.selector, s.tr.type_, s.tr.limit, s.tr.base),
            (0x18, 0xb, 0x67, 0)
        );
        assert_eq!((s.tr.s, s.tr.present), (0, 1));
        let r = protected_mode_32_regs(GuestAddress(0x100_0000), GuestAddress(0x6000));
        assert_eq!((r.rip, r.rbx, r.rflags, r.rsi), (0x100_0000, 0x6000, 2, 0));
    }

    #[test]
    fn long_mode_registers() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 23));
        assert_eq!((s.cs.selector, s.ss.selector), (0x08, 0x10));
        let r = long_mode_regs(BootEntry::at(PAYLOAD_START));
        assert_eq!(
            (r.rip, r.rsp, r.rsi, r.rflags),
            (0x10_0000, 0x8ff0, 0x7000, 2)
        );
    }
}
