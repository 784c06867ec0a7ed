//! Synthetic kernel images for tests: a minimal bzImage (a setup header and a protected-mode
//! "kernel") and a minimal static ELF64 with or without the PVH note. Only the fields the boot
//! protocols and linux-loader read are set; everything is little-endian at spelled-out offsets.
//! The probe payloads ([`PROBE_ZERO_PAGE`], [`PROBE_START_INFO`]) let a real-KVM test see that the
//! vCPU reached the entry point with the right boot-parameter register.

/// Setup-header fields of [`bzimage`] (file offsets as in the Linux boot protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageHeader {
    /// 0x1f1: 512-byte setup sectors after the boot sector.
    pub setup_sects: u8,
    /// 0x206: boot protocol version.
    pub version: u16,
    /// 0x22c: highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// 0x230: physical alignment the kernel needs.
    pub kernel_alignment: u32,
    /// 0x234.
    pub relocatable_kernel: bool,
    /// 0x236: bit 0 = 64-bit entry at +0x200.
    pub xloadflags: u16,
    /// 0x238: maximum command-line length without the NUL.
    pub cmdline_size: u32,
    /// 0x258: preferred (non-relocatable: required) load address.
    pub pref_address: u64,
    /// 0x260: memory the kernel needs from its run address while decompressing.
    pub init_size: u32,
}

impl Default for BzImageHeader {
    /// Shaped like a current x86-64 kernel's (2.15, relocatable, 2 MiB alignment, 16 MiB
    /// preferred address) with a small `init_size`.
    fn default() -> Self {
        BzImageHeader {
            setup_sects: 4,
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: true,
            xloadflags: 0x7f,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x40_0000,
        }
    }
}

/// A bzImage: `(setup_sects + 1) × 512` bytes of setup (boot sector and setup header) followed
/// by `kernel`, the protected-mode part (loaded at 1 MiB; its 64-bit entry is at offset 0x200).
pub fn bzimage(h: &BzImageHeader, kernel: &[u8]) -> Vec<u8> {
    let setup_len = (usize::from(h.setup_sects) + 1) * 512;
    let mut b = vec![0u8; setup_len];
    b[0x1f1] = h.setup_sects;
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x200..0x202].copy_from_slice(&[0xeb, 0x66]); // jmp over the header (real-mode entry)
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&h.version.to_le_bytes());
    b[0x211] = 1; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&h.initrd_addr_max.to_le_bytes());
    b[0x230..0x234].copy_from_slice(&h.kernel_alignment.to_le_bytes());
    b[0x234] = u8::from(h.relocatable_kernel);
    b[0x235] = 21; // min_alignment: 2 MiB
    b[0x236..0x238].copy_from_slice(&h.xloadflags.to_le_bytes());
    b[0x238..0x23c].copy_from_slice(&h.cmdline_size.to_le_bytes());
    b[0x258..0x260].copy_from_slice(&h.pref_address.to_le_bytes());
    b[0x260..0x264].copy_from_slice(&h.init_size.to_le_bytes());
    b.extend_from_slice(kernel);
    b
}

/// A protected-mode kernel for [`bzimage`] with `entry_code` at its 64-bit entry (offset 0x200)
/// and `0xcc` (int3) before it.
pub fn bzimage_kernel(entry_code: &[u8]) -> Vec<u8> {
    let mut k = vec![0xcc; 0x200];
    k.extend_from_slice(entry_code);
    k
}

/// The PVH entry note's type (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A static ELF64 executable with one `PT_LOAD` segment holding `code` at physical (and
/// virtual) address `paddr`, `e_entry = paddr`, and, if `pvh_entry` is given, a `PT_NOTE`
/// segment with a `Xen` note of type 18 whose descriptor is that 32-bit entry point.
///
/// Layout: ELF header (64 bytes) · program headers (56 bytes each) · note · code.
pub fn elf64(paddr: u64, code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = if pvh_entry.is_some() { 2 } else { 1 };
    let note: Vec<u8> = match pvh_entry {
        Some(entry) => [
            4u32.to_le_bytes(),                     // n_namesz: "Xen\0"
            4u32.to_le_bytes(),                     // n_descsz
            XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes(), // n_type
            *b"Xen\0",                              // name
            entry.to_le_bytes(),                    // desc: the 32-bit entry
        ]
        .concat(),
        None => Vec::new(),
    };
    let note_off = EHDR + PHDR * phnum;
    let code_off = (note_off + note.len()).next_multiple_of(16);

    let mut b = vec![0u8; code_off];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // ELFDATA2LSB
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes()); // e_version
    b[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&(phnum as u16).to_le_bytes()); // e_phnum

    let phdr =
        |b: &mut Vec<u8>, at: usize, p_type: u32, flags: u32, off: usize, addr: u64, len: usize| {
            b[at..at + 4].copy_from_slice(&p_type.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&(off as u64).to_le_bytes()); // p_offset
            b[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes()); // p_vaddr
            b[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes()); // p_paddr
            b[at + 32..at + 40].copy_from_slice(&(len as u64).to_le_bytes()); // p_filesz
            b[at + 40..at + 48].copy_from_slice(&(len as u64).to_le_bytes()); // p_memsz
            b[at + 48..at + 56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        };
    phdr(&mut b, EHDR, 1, 5, code_off, paddr, code.len()); // PT_LOAD, R+X
    if pvh_entry.is_some() {
        phdr(&mut b, EHDR + PHDR, 4, 4, note_off, 0, note.len()); // PT_NOTE, R
        b[note_off..note_off + note.len()].copy_from_slice(&note);
    }
    b.extend_from_slice(code);
    b
}

/// 64-bit (or 32-bit: the same bytes decode identically) probe for the 64-bit boot protocol:
/// writes the 4 bytes at `[RSI + 0x202]` (the zero page's `header` field, `HdrS` when RSI points
/// at a valid zero page) to COM1, then resets through the i8042.
#[rustfmt::skip]
pub const PROBE_ZERO_PAGE: [u8; 28] = [
    0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
    0xee,                               // out dx, al
    0xc1, 0xe8, 0x08,                   // shr eax, 8
    0xee,                               // out dx, al
    0xc1, 0xe8, 0x08,                   // shr eax, 8
    0xee,                               // out dx, al
    0xc1, 0xe8, 0x08,                   // shr eax, 8
    0xee,                               // out dx, al
    0xb0, 0xfe,                         // mov al, 0xfe
    0xe6, 0x64,                         // out 0x64, al
    0xf4,                               // hlt
];

/// 32-bit probe for a PVH entry: writes the 4 bytes at `[EBX]` (`hvm_start_info.magic`,
/// `78 c5 6e 33`) to COM1, then resets through the i8042.
#[rustfmt::skip]
pub const PROBE_START_INFO: [u8; 24] = [
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8b, 0x03,             // mov eax, [ebx]
    0xee,                   // out dx, al
    0xc1, 0xe8, 0x08,       // shr eax, 8
    0xee,                   // out dx, al
    0xc1, 0xe8, 0x08,       // shr eax, 8
    0xee,                   // out dx, al
    0xc1, 0xe8, 0x08,       // shr eax, 8
    0xee,                   // out dx, al
    0xb0, 0xfe,             // mov al, 0xfe
    0xe6, 0x64,             // out 0x64, al
    0xf4,                   // hlt
];
