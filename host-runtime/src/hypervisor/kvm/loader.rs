//! Loading Linux: a kernel image (bzImage, or ELF `vmlinux` with or without a PVH entry), an
//! optional initrd and the command line into guest memory, and the boot parameters the kernel
//! reads at entry. The image formats are parsed and loaded by rust-vmm's `linux-loader`
//! (`BzImage::load`, `Elf::load`, its `boot_params` / `hvm_start_info` definitions and boot
//! configurators); this module decides *where* things go and fills in the parameters.
//!
//! | guest physical | what |
//! |---|---|
//! | [`PVH_START_INFO`] `0x6000` | PVH: `hvm_start_info` (56 bytes, `EBX` points here) |
//! | [`PVH_MODLIST`] `0x6040` | PVH: the initrd's `hvm_modlist_entry` |
//! | [`PVH_MEMMAP`] `0x6100` | PVH: the memory map (`hvm_memmap_table_entry` × n) |
//! | `0x7000` | 64-bit boot: the zero page (`boot_params`, `RSI`; [`cpu::ZERO_PAGE_START`]) |
//! | [`CMDLINE_START`] `0x20000` | the command line, NUL-terminated, at most [`CMDLINE_MAX_SIZE`] bytes |
//! | `0x9fc00` | the MP table ([`super::mptable`]) |
//! | [`KERNEL_START`] `0x10_0000` | bzImage: the protected-mode kernel (entered at `+0x200`) |
//! | ELF: each `PT_LOAD` at its `p_paddr` (a vmlinux: 16 MiB) | |
//! | top of low RAM | the initrd, page-aligned, below the kernel's `initrd_addr_max` and 3 GiB |
//!
//! **bzImage** (boot protocol ≥ 2.12 with a 64-bit entry, `xloadflags` bit 0): a relocatable
//! kernel is loaded at 1 MiB (it moves itself to `max(align_up(load, kernel_alignment),
//! pref_address)` and needs `init_size` bytes from there, which this module checks fit in low
//! RAM); a non-relocatable one at its `pref_address`. The zero page starts as the image's setup
//! header with `type_of_loader = 0xff`, `cmd_line_ptr`, `ramdisk_image` / `ramdisk_size` and the
//! e820 map ([`super::e820`]); `cmdline_size` stays the kernel's (a limit the loader reads; the
//! command line is checked against it).
//!
//! **ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note** (a vmlinux built with `CONFIG_PVH`): PVH boot,
//! 32-bit protected mode without paging at the note's entry, `EBX` = `hvm_start_info` (magic
//! `0x336ec578`, version 1, command line, the initrd as module 0, the same memory map).
//! **ELF without the note**: the 64-bit boot protocol at `e_entry` with a zero page as above
//! (no setup header to copy: boot flag, `HdrS`, loader type, 16 MiB alignment).

use std::io::Cursor;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::cpu;
use super::e820::{self, E820Entry};
use super::error::{KvmVmError, Result};
use super::memory::MMIO_HOLE_START;

/// Where the command line is written.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// The room for the command line, NUL included (`0x20000..0x30000`); a bzImage's own
/// `cmdline_size` is usually smaller (2047 bytes on x86-64).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Where a relocatable bzImage's protected-mode kernel is loaded: 1 MiB.
pub const KERNEL_START: GuestAddress = cpu::PAYLOAD_START;
/// The 64-bit entry point's offset in the protected-mode kernel (boot protocol 2.12+).
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// PVH: `hvm_start_info`.
pub const PVH_START_INFO: GuestAddress = GuestAddress(0x6000);
/// PVH: the module list (one entry: the initrd).
pub const PVH_MODLIST: GuestAddress = GuestAddress(0x6040);
/// PVH: the memory map (up to 0x7000: room for 160 entries).
pub const PVH_MEMMAP: GuestAddress = GuestAddress(0x6100);
/// Where the setup header starts in a bzImage and in the zero page.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// `boot_flag` (at 0x1fe): the boot-sector signature.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` (at 0x202): "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: 0xff, "undefined / other loader".
pub const LOADER_TYPE_OTHER: u8 = 0xff;
/// The oldest boot protocol accepted: 2.12, the first with `xloadflags` (64-bit entry flag).
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at `+0x200`.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// The alignment put in an ELF kernel's (header-less) zero page, as Firecracker does.
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

const PAGE: u64 = 0x1000;
const MIB: u64 = 1 << 20;

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxSpec {
    /// A bzImage or an ELF vmlinux.
    pub kernel: Vec<u8>,
    /// The initial RAM disk, if any.
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line (printable ASCII, no NUL).
    pub cmdline: String,
}

impl LinuxSpec {
    /// Reads the kernel and initrd from files.
    pub fn from_files(
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: impl Into<String>,
    ) -> Result<Self> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| KvmVmError::ReadFile {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(LinuxSpec {
            kernel: read("kernel", kernel)?,
            initrd: initrd.map(|p| read("initrd", p)).transpose()?,
            cmdline: cmdline.into(),
        })
    }
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// The 64-bit boot protocol: long mode, `RSI` = the zero page.
    Long64 { zero_page: GuestAddress },
    /// PVH: 32-bit protected mode, paging off, `EBX` = `hvm_start_info`.
    Pvh32 { start_info: GuestAddress },
}

/// The kind of image that was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage, entered at its 64-bit entry with a zero page.
    BzImage,
    /// An ELF with a PVH entry note.
    ElfPvh,
    /// An ELF without one (entered at `e_entry` in 64-bit mode).
    Elf,
}

/// Where the kernel was put and how to enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    /// What the image was.
    pub format: KernelFormat,
    /// The first instruction.
    pub entry: GuestAddress,
    /// The CPU mode and boot-parameter register at [`LinuxBoot::entry`].
    pub mode: BootMode,
    /// Where the kernel image (bzImage: its protected-mode part) starts.
    pub kernel_load: GuestAddress,
    /// The end of the memory the kernel needs before it sets up its own allocator (bzImage: the
    /// decompression area, `init_size` bytes; ELF: the highest `p_paddr + p_memsz`).
    pub kernel_end: u64,
    /// The initrd's address and size.
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Loads `spec` into `memory` (whose regions are the VM's RAM, [`super::memory::allocate`]) and
/// writes the command line and the boot parameters. Errors name what does not fit or is wrong
/// and what to change.
pub fn load_linux(memory: &GuestMemoryMmap, spec: &LinuxSpec) -> Result<LinuxBoot> {
    let ram = e820::ram_of(memory);
    let map = e820::memory_map(&ram)?;
    let low_end = ram[0].0.0 + ram[0].1;
    let kernel = spec.kernel.as_slice();
    if kernel.starts_with(b"\x7fELF") {
        load_elf(memory, spec, &map, low_end)
    } else if kernel.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
        load_bzimage(memory, spec, &map, low_end)
    } else {
        Err(linux(
            "the kernel image is neither a bzImage (no \"HdrS\" at offset 0x202) nor an ELF \
             vmlinux (no ELF magic); pass arch/x86/boot/bzImage or vmlinux",
        ))
    }
}

/// The setup header of a bzImage, as at offset [`SETUP_HEADER_OFFSET`].
pub fn setup_header_of(kernel: &[u8]) -> Result<setup_header> {
    kernel
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>())
        .and_then(setup_header::from_slice)
        .copied()
        .ok_or_else(|| linux("the bzImage is too short to hold a setup header"))
}

fn load_bzimage(
    memory: &GuestMemoryMmap,
    spec: &LinuxSpec,
    map: &[E820Entry],
    low_end: u64,
) -> Result<LinuxBoot> {
    let hdr = setup_header_of(&spec.kernel)?;
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < MIN_BOOT_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(linux(format!(
            "the bzImage has no 64-bit entry point (boot protocol {}.{:02}, xloadflags {xloadflags:#x}); \
             use a 64-bit kernel with boot protocol 2.12 or newer",
            version >> 8,
            version & 0xff
        )));
    }
    let cmdline_size = hdr.cmdline_size as usize;
    check_cmdline(
        &spec.cmdline,
        cmdline_size.min(CMDLINE_MAX_SIZE - 1),
        "the kernel's cmdline_size",
    )?;

    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_size = (setup_sects + 1) * 512;
    let image_size = (spec.kernel.len() as u64)
        .checked_sub(setup_size)
        .filter(|&s| s > 0)
        .ok_or_else(|| {
            linux(format!(
                "the bzImage ends inside its {setup_size}-byte setup code"
            ))
        })?;

    // Where it is loaded and where it will decompress itself.
    let (relocatable, pref_address, alignment, init_size) = (
        hdr.relocatable_kernel != 0,
        hdr.pref_address,
        u64::from(hdr.kernel_alignment),
        u64::from(hdr.init_size),
    );
    let (load, run_start) = if relocatable {
        let aligned = Some(alignment)
            .filter(|a| a.is_power_of_two())
            .and_then(|a| align_up(KERNEL_START.0, a))
            .ok_or_else(|| linux(format!("bad kernel_alignment {alignment:#x}")))?;
        (KERNEL_START, aligned.max(pref_address))
    } else {
        if pref_address < KERNEL_START.0 {
            return Err(linux(format!(
                "the kernel is not relocatable and wants to run at {pref_address:#x}, below 1 MiB \
                 where the boot structures are; build it with CONFIG_RELOCATABLE"
            )));
        }
        (GuestAddress(pref_address), pref_address)
    };
    let image_end = load.0 + image_size;
    let run_end = run_start
        .checked_add(init_size)
        .map(|end| end.max(image_end))
        .ok_or_else(|| linux("the kernel's init_size overflows"))?;
    if run_end > low_end {
        return Err(linux(format!(
            "the kernel needs guest RAM up to {run_end:#x} (runs at {run_start:#x}, init_size \
             {init_size:#x}) but RAM below 3 GiB ends at {low_end:#x}; give the VM more memory"
        )));
    }

    let loaded = BzImage::load(memory, Some(load), &mut Cursor::new(&spec.kernel), None)
        .map_err(|e| linux(format!("linux-loader could not load the bzImage: {e}")))?;
    let Some(mut hdr) = loaded.setup_header else {
        return Err(linux(
            "linux-loader returned no setup header for the bzImage",
        ));
    };

    // initrd_addr_max is the highest address the initrd may occupy (inclusive).
    let initrd_top = (u64::from(hdr.initrd_addr_max) + 1).min(low_end);
    let initrd = place_initrd(memory, spec, run_end, initrd_top)?;
    write_cmdline(memory, &spec.cmdline)?;

    hdr.type_of_loader = LOADER_TYPE_OTHER;
    hdr.boot_flag = BOOT_FLAG_MAGIC;
    hdr.header = HDRS_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_START.0 as u32;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr.0 as u32;
        hdr.ramdisk_size = size as u32;
    }
    write_zero_page(memory, hdr, map)?;
    Ok(LinuxBoot {
        format: KernelFormat::BzImage,
        entry: GuestAddress(load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
        mode: BootMode::Long64 {
            zero_page: cpu::ZERO_PAGE_START,
        },
        kernel_load: load,
        kernel_end: run_end,
        initrd,
    })
}

fn load_elf(
    memory: &GuestMemoryMmap,
    spec: &LinuxSpec,
    map: &[E820Entry],
    low_end: u64,
) -> Result<LinuxBoot> {
    check_cmdline(
        &spec.cmdline,
        CMDLINE_MAX_SIZE - 1,
        "this monitor's command-line area",
    )?;
    let loaded = Elf::load(
        memory,
        None,
        &mut Cursor::new(&spec.kernel),
        Some(e820::HIGH_MEMORY_START),
    )
    .map_err(|e| {
        linux(format!(
            "linux-loader could not load the ELF kernel: {e} (its entry point and segments must \
             lie in guest RAM above 1 MiB; give the VM more memory if they do not fit)"
        ))
    })?;
    if loaded.kernel_end > low_end {
        return Err(linux(format!(
            "the ELF kernel's segments end at {:#x}, past the end of RAM below 3 GiB \
             ({low_end:#x}); give the VM more memory",
            loaded.kernel_end
        )));
    }
    let initrd = place_initrd(memory, spec, loaded.kernel_end, low_end)?;
    write_cmdline(memory, &spec.cmdline)?;

    if let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap {
        write_pvh_start_info(memory, initrd, map)?;
        return Ok(LinuxBoot {
            format: KernelFormat::ElfPvh,
            entry,
            mode: BootMode::Pvh32 {
                start_info: PVH_START_INFO,
            },
            kernel_load: loaded.kernel_load,
            kernel_end: loaded.kernel_end,
            initrd,
        });
    }

    let mut hdr = setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        type_of_loader: LOADER_TYPE_OTHER,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        cmd_line_ptr: CMDLINE_START.0 as u32,
        cmdline_size: (CMDLINE_MAX_SIZE - 1) as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr.0 as u32;
        hdr.ramdisk_size = size as u32;
    }
    write_zero_page(memory, hdr, map)?;
    Ok(LinuxBoot {
        format: KernelFormat::Elf,
        entry: loaded.kernel_load,
        mode: BootMode::Long64 {
            zero_page: cpu::ZERO_PAGE_START,
        },
        kernel_load: loaded.kernel_load,
        kernel_end: loaded.kernel_end,
        initrd,
    })
}

fn check_cmdline(cmdline: &str, max_len: usize, limit: &str) -> Result<()> {
    if let Some(bad) = cmdline.bytes().find(|b| !(b' '..=b'~').contains(b)) {
        return Err(linux(format!(
            "the command line contains byte {bad:#04x}; use printable ASCII separated by spaces"
        )));
    }
    if cmdline.len() > max_len {
        return Err(linux(format!(
            "the command line is {} bytes, longer than {limit} ({max_len} bytes); shorten it",
            cmdline.len()
        )));
    }
    Ok(())
}

fn write_cmdline(memory: &GuestMemoryMmap, cmdline: &str) -> Result<()> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    write(memory, "command line", CMDLINE_START, &bytes)
}

/// Puts the initrd page-aligned as high as possible below `top` (and below 3 GiB), above
/// `kernel_end`.
fn place_initrd(
    memory: &GuestMemoryMmap,
    spec: &LinuxSpec,
    kernel_end: u64,
    top: u64,
) -> Result<Option<(GuestAddress, u64)>> {
    let Some(initrd) = &spec.initrd else {
        return Ok(None);
    };
    let size = initrd.len() as u64;
    let top = top.min(MMIO_HOLE_START.0);
    let start = top.checked_sub(size).map(|s| s & !(PAGE - 1));
    match start {
        Some(start) if size > 0 && start >= kernel_end => {
            write(memory, "initrd", GuestAddress(start), initrd)?;
            Ok(Some((GuestAddress(start), size)))
        }
        _ if size == 0 => Err(linux(
            "the initrd is empty; pass a cpio archive or no initrd",
        )),
        _ => Err(linux(format!(
            "the initrd ({} MiB) does not fit between the kernel's end ({kernel_end:#x}) and \
             {top:#x}; give the VM more memory",
            size.div_ceil(MIB)
        ))),
    }
}

fn write_zero_page(memory: &GuestMemoryMmap, hdr: setup_header, map: &[E820Entry]) -> Result<()> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, cpu::ZERO_PAGE_START), memory)
        .map_err(|e| write_error("zero page", cpu::ZERO_PAGE_START, e))
}

fn write_pvh_start_info(
    memory: &GuestMemoryMmap,
    initrd: Option<(GuestAddress, u64)>,
    map: &[E820Entry],
) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { PVH_MODLIST.0 } else { 0 },
        cmdline_paddr: CMDLINE_START.0,
        memmap_paddr: PVH_MEMMAP.0,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, PVH_START_INFO);
    params.set_sections(&memmap, PVH_MEMMAP);
    if let Some((addr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], PVH_MODLIST);
    }
    PvhBootConfigurator::write_bootparams(&params, memory)
        .map_err(|e| write_error("hvm_start_info", PVH_START_INFO, e))
}

fn write(
    memory: &GuestMemoryMmap,
    what: &'static str,
    addr: GuestAddress,
    bytes: &[u8],
) -> Result<()> {
    memory
        .write_slice(bytes, addr)
        .map_err(|e| write_error(what, addr, e))
}

fn write_error(what: &'static str, addr: GuestAddress, e: impl std::fmt::Display) -> KvmVmError {
    KvmVmError::GuestMemoryWrite {
        what,
        addr: addr.0,
        reason: e.to_string(),
    }
}

fn align_up(value: u64, alignment: u64) -> Option<u64> {
    Some(value.checked_add(alignment - 1)? & !(alignment - 1))
}

fn linux(msg: impl Into<String>) -> KvmVmError {
    KvmVmError::Linux(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::kvm::e820::{E820_RAM, E820_RESERVED};
    use crate::hypervisor::kvm::memory;
    use crate::hypervisor::kvm::test_image::{self, BzImageHeader};

    const GIB: u64 = 1 << 30;
    const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

    fn initrd(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn bz_spec(h: &BzImageHeader, initrd_len: Option<usize>) -> LinuxSpec {
        LinuxSpec {
            kernel: test_image::bzimage(
                h,
                &test_image::bzimage_kernel(&test_image::PROBE_ZERO_PAGE),
            ),
            initrd: initrd_len.map(initrd),
            cmdline: CMDLINE.into(),
        }
    }

    fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(cpu::ZERO_PAGE_START).unwrap()
    }

    fn e820_of(p: &boot_params) -> Vec<(u64, u64, u32)> {
        p.e820_table[..p.e820_entries as usize]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect()
    }

    fn load_err(mib: u64, spec: &LinuxSpec) -> String {
        let mem = memory::allocate(mib).unwrap();
        load_linux(&mem, spec).unwrap_err().to_string()
    }

    #[test]
    fn bzimage_zero_page_kernel_initrd_and_cmdline() {
        let h = BzImageHeader::default();
        let spec = bz_spec(&h, Some(10_000));
        let mem = memory::allocate(128).unwrap();
        let boot = load_linux(&mem, &spec).unwrap();

        let initrd_at = ((128 << 20) - 10_000) & !0xfff;
        assert_eq!(
            boot,
            LinuxBoot {
                format: KernelFormat::BzImage,
                entry: GuestAddress(0x10_0200),
                mode: BootMode::Long64 {
                    zero_page: GuestAddress(0x7000)
                },
                kernel_load: GuestAddress(0x10_0000),
                // Runs at max(align_up(1 MiB, 2 MiB), pref_address 16 MiB) for init_size 4 MiB.
                kernel_end: 0x140_0000,
                initrd: Some((GuestAddress(initrd_at), 10_000)),
            }
        );

        // The protected-mode kernel (everything after the 5 setup sectors) at 1 MiB.
        let pm = &spec.kernel[5 * 512..];
        assert_eq!(read_bytes(&mem, 0x10_0000, pm.len()), pm);
        assert_eq!(
            read_bytes(&mem, 0x10_0200, test_image::PROBE_ZERO_PAGE.len()),
            test_image::PROBE_ZERO_PAGE
        );

        let p = zero_page(&mem);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.setup_sects }, 4);
        assert_eq!({ p.hdr.code32_start }, 0x10_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!(
            { p.hdr.cmdline_size },
            2047,
            "the kernel's limit, untouched"
        );
        assert_eq!({ p.hdr.ramdisk_image }, initrd_at as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 10_000);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.pref_address }, 0x100_0000);
        assert_eq!({ p.hdr.relocatable_kernel }, 1);
        assert_eq!({ p.hdr.init_size }, 0x40_0000);
        assert_eq!(
            e820_of(&p),
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x6_0400, E820_RESERVED),
                (0x10_0000, (128 << 20) - 0x10_0000, E820_RAM),
            ]
        );
        // Bytes the zero page's header shares with the image are the image's.
        let zp = read_bytes(&mem, 0x7000, 0x1000);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(&zp[0x1fe..0x200], &[0x55, 0xaa]);

        let mut cmdline = CMDLINE.as_bytes().to_vec();
        cmdline.push(0);
        assert_eq!(read_bytes(&mem, 0x2_0000, cmdline.len()), cmdline);
        assert_eq!(
            read_bytes(&mem, initrd_at, 10_000),
            spec.initrd.clone().unwrap()
        );
    }

    #[test]
    fn bzimage_in_a_3_5_gib_vm_reports_the_hole_and_keeps_the_initrd_below_its_limit() {
        // 3.5 GiB: RAM to 3 GiB, hole, 512 MiB at 4 GiB.
        let mem = memory::allocate(3 * 1024 + 512).unwrap();
        let spec = bz_spec(&BzImageHeader::default(), Some(4096));
        let boot = load_linux(&mem, &spec).unwrap();
        let p = zero_page(&mem);
        assert_eq!(
            e820_of(&p),
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x6_0400, E820_RESERVED),
                (0x10_0000, 3 * GIB - 0x10_0000, E820_RAM),
                (4 * GIB, 512 << 20, E820_RAM),
            ]
        );
        // initrd_addr_max 0x7fffffff: the initrd ends at 2 GiB.
        assert_eq!(boot.initrd, Some((GuestAddress(2 * GIB - 4096), 4096)));

        // A kernel that takes initrds anywhere below 4 GiB still gets one below 3 GiB.
        let mem = memory::allocate(3 * 1024 + 512).unwrap();
        let h = BzImageHeader {
            initrd_addr_max: 0xffff_ffff,
            ..Default::default()
        };
        let boot = load_linux(&mem, &bz_spec(&h, Some(4096))).unwrap();
        assert_eq!(boot.initrd, Some((GuestAddress(3 * GIB - 4096), 4096)));
    }

    #[test]
    fn non_relocatable_bzimage_is_loaded_at_its_preferred_address() {
        let h = BzImageHeader {
            relocatable_kernel: false,
            pref_address: 0x20_0000,
            ..Default::default()
        };
        let spec = bz_spec(&h, None);
        let mem = memory::allocate(64).unwrap();
        let boot = load_linux(&mem, &spec).unwrap();
        assert_eq!(boot.kernel_load, GuestAddress(0x20_0000));
        assert_eq!(boot.entry, GuestAddress(0x20_0200));
        assert_eq!(boot.kernel_end, 0x60_0000);
        assert_eq!(boot.initrd, None);
        assert_eq!(
            read_bytes(&mem, 0x20_0200, test_image::PROBE_ZERO_PAGE.len()),
            test_image::PROBE_ZERO_PAGE
        );
        let p = zero_page(&mem);
        assert_eq!(({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }), (0, 0));
        assert_eq!({ p.hdr.code32_start }, 0x20_0000);
    }

    #[test]
    fn bad_bzimages_are_refused_with_what_to_do() {
        let not_a_kernel = LinuxSpec {
            kernel: b"#!/bin/sh\necho hello\n".to_vec(),
            initrd: None,
            cmdline: String::new(),
        };
        assert_eq!(
            load_err(64, &not_a_kernel),
            "cannot boot this Linux kernel: the kernel image is neither a bzImage (no \"HdrS\" at \
             offset 0x202) nor an ELF vmlinux (no ELF magic); pass arch/x86/boot/bzImage or vmlinux"
        );

        let old = BzImageHeader {
            version: 0x020b,
            ..Default::default()
        };
        assert_eq!(
            load_err(64, &bz_spec(&old, None)),
            "cannot boot this Linux kernel: the bzImage has no 64-bit entry point (boot protocol \
             2.11, xloadflags 0x7f); use a 64-bit kernel with boot protocol 2.12 or newer"
        );
        let no_64 = BzImageHeader {
            xloadflags: 0,
            ..Default::default()
        };
        assert!(load_err(64, &bz_spec(&no_64, None)).contains("no 64-bit entry point"));

        let low = BzImageHeader {
            relocatable_kernel: false,
            pref_address: 0x8_0000,
            ..Default::default()
        };
        assert_eq!(
            load_err(64, &bz_spec(&low, None)),
            "cannot boot this Linux kernel: the kernel is not relocatable and wants to run at \
             0x80000, below 1 MiB where the boot structures are; build it with CONFIG_RELOCATABLE"
        );

        let mut truncated = bz_spec(&BzImageHeader::default(), None);
        truncated.kernel.truncate(5 * 512);
        assert_eq!(
            load_err(64, &truncated),
            "cannot boot this Linux kernel: the bzImage ends inside its 2560-byte setup code"
        );
    }

    #[test]
    fn command_line_is_checked_against_the_kernels_cmdline_size() {
        let h = BzImageHeader {
            cmdline_size: 16,
            ..Default::default()
        };
        let mut spec = bz_spec(&h, None);
        spec.cmdline = "x".repeat(16);
        let mem = memory::allocate(64).unwrap();
        load_linux(&mem, &spec).unwrap();
        assert_eq!(read_bytes(&mem, 0x2_0000, 17), b"xxxxxxxxxxxxxxxx\0");

        spec.cmdline = "x".repeat(17);
        assert_eq!(
            load_err(64, &spec),
            "cannot boot this Linux kernel: the command line is 17 bytes, longer than the \
             kernel's cmdline_size (16 bytes); shorten it"
        );
        spec.cmdline = "console=ttyS0\ninit=/x".into();
        assert_eq!(
            load_err(64, &spec),
            "cannot boot this Linux kernel: the command line contains byte 0x0a; use printable \
             ASCII separated by spaces"
        );
    }

    #[test]
    fn kernel_and_initrd_must_fit_in_ram() {
        // The kernel decompresses into 16..20 MiB.
        assert_eq!(
            load_err(16, &bz_spec(&BzImageHeader::default(), None)),
            "cannot boot this Linux kernel: the kernel needs guest RAM up to 0x1400000 (runs at \
             0x1000000, init_size 0x400000) but RAM below 3 GiB ends at 0x1000000; give the VM \
             more memory"
        );
        // 24 MiB of RAM leaves 4 MiB above the kernel: an 8 MiB initrd overlaps it.
        assert_eq!(
            load_err(24, &bz_spec(&BzImageHeader::default(), Some(8 << 20))),
            "cannot boot this Linux kernel: the initrd (8 MiB) does not fit between the kernel's \
             end (0x1400000) and 0x1800000; give the VM more memory"
        );
        assert!(
            load_err(24, &bz_spec(&BzImageHeader::default(), Some(0))).contains("initrd is empty")
        );
        // 4 MiB fits exactly.
        let mem = memory::allocate(24).unwrap();
        let boot = load_linux(&mem, &bz_spec(&BzImageHeader::default(), Some(4 << 20))).unwrap();
        assert_eq!(boot.initrd, Some((GuestAddress(0x140_0000), 4 << 20)));
    }

    #[test]
    fn elf_with_pvh_note_gets_hvm_start_info() {
        let code = test_image::PROBE_START_INFO;
        let spec = LinuxSpec {
            kernel: test_image::elf64(0x100_0000, &code, Some(0x100_0000)),
            initrd: Some(initrd(5000)),
            cmdline: CMDLINE.into(),
        };
        let mem = memory::allocate(64).unwrap();
        let boot = load_linux(&mem, &spec).unwrap();
        let initrd_at = ((64 << 20) - 5000) & !0xfff;
        assert_eq!(
            boot,
            LinuxBoot {
                format: KernelFormat::ElfPvh,
                entry: GuestAddress(0x100_0000),
                mode: BootMode::Pvh32 {
                    start_info: GuestAddress(0x6000)
                },
                kernel_load: GuestAddress(0x100_0000),
                kernel_end: 0x100_0000 + code.len() as u64,
                initrd: Some((GuestAddress(initrd_at), 5000)),
            }
        );
        assert_eq!(read_bytes(&mem, 0x100_0000, code.len()), code);

        let info: hvm_start_info = mem.read_obj(GuestAddress(0x6000)).unwrap();
        assert_eq!(
            info,
            hvm_start_info {
                magic: 0x336e_c578,
                version: 1,
                flags: 0,
                nr_modules: 1,
                modlist_paddr: 0x6040,
                cmdline_paddr: 0x2_0000,
                rsdp_paddr: 0,
                memmap_paddr: 0x6100,
                memmap_entries: 3,
                reserved: 0,
            }
        );
        assert_eq!(read_bytes(&mem, 0x6000, 4), [0x78, 0xc5, 0x6e, 0x33]);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(0x6040)).unwrap();
        assert_eq!((module.paddr, module.size), (initrd_at, 5000));
        let memmap: Vec<(u64, u64, u32)> = (0..3)
            .map(|i| {
                let e: hvm_memmap_table_entry =
                    mem.read_obj(GuestAddress(0x6100 + 24 * i)).unwrap();
                (e.addr, e.size, e.type_)
            })
            .collect();
        assert_eq!(
            memmap,
            [
                (0, 0x9_fc00, 1),
                (0x9_fc00, 0x6_0400, 2),
                (0x10_0000, (64 << 20) - 0x10_0000, 1),
            ]
        );
        assert_eq!(
            read_bytes(&mem, 0x2_0000, CMDLINE.len() + 1),
            [CMDLINE.as_bytes(), b"\0"].concat()
        );
        assert_eq!(read_bytes(&mem, initrd_at, 5000), initrd(5000));

        // Without an initrd: no module list.
        let mem = memory::allocate(64).unwrap();
        let no_initrd = LinuxSpec {
            initrd: None,
            ..spec
        };
        load_linux(&mem, &no_initrd).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(0x6000)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn elf_without_pvh_note_gets_a_zero_page_and_the_64_bit_entry() {
        let code = test_image::PROBE_ZERO_PAGE;
        let spec = LinuxSpec {
            kernel: test_image::elf64(0x20_0000, &code, None),
            initrd: Some(initrd(100)),
            cmdline: CMDLINE.into(),
        };
        let mem = memory::allocate(32).unwrap();
        let boot = load_linux(&mem, &spec).unwrap();
        assert_eq!(boot.format, KernelFormat::Elf);
        assert_eq!(boot.entry, GuestAddress(0x20_0000));
        assert_eq!(
            boot.mode,
            BootMode::Long64 {
                zero_page: GuestAddress(0x7000)
            }
        );
        let initrd_at = ((32 << 20) - 100) & !0xfff;
        let p = zero_page(&mem);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ p.hdr.ramdisk_image }, initrd_at as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 100);
        assert_eq!(e820_of(&p).len(), 3);
        assert_eq!(read_bytes(&mem, 0x20_0000, code.len()), code);
    }

    #[test]
    fn bad_elves_are_refused_with_what_to_do() {
        let low = LinuxSpec {
            kernel: test_image::elf64(0x8_0000, &[0xf4], None),
            initrd: None,
            cmdline: String::new(),
        };
        let err = load_err(16, &low);
        assert!(
            err.starts_with(
                "cannot boot this Linux kernel: linux-loader could not load the ELF kernel: "
            ) && err.contains("Invalid entry address")
                && err.ends_with("above 1 MiB; give the VM more memory if they do not fit)"),
            "{err}"
        );
        // A vmlinux at 16 MiB in a 16 MiB VM.
        let high = LinuxSpec {
            kernel: test_image::elf64(0x100_0000, &[0xf4], Some(0x100_0000)),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(load_err(16, &high).contains("Unable to read kernel image"));
        let mut broken = test_image::elf64(0x100_0000, &[0xf4], None);
        broken[54] = 32; // e_phentsize
        let broken = LinuxSpec {
            kernel: broken,
            initrd: None,
            cmdline: String::new(),
        };
        assert!(load_err(32, &broken).contains("Invalid program header size"));
    }

    #[test]
    fn from_files_names_a_missing_file() {
        let err = LinuxSpec::from_files(Path::new("/nonexistent/bzImage"), None, "").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read the kernel /nonexistent/bzImage: "),
            "{err}"
        );
    }
}
