//! The benchmark guest: a few bytes of freestanding 32-bit code in an ELF with a PVH entry note,
//! so that the built-in monitor ([`super::KvmVm`] with [`super::LinuxSpec`]) and QEMU
//! (`-M microvm -kernel guest.elf`) start it the same way: PVH, 32-bit protected mode, paging
//! off, loaded at [`LOAD_ADDR`] and entered there. It writes [`MESSAGE`] to COM1 and then either
//! spins (`jmp $`, [`BenchGuestEnd::Spin`]: the monitor stays alive so that its memory can be
//! read) or asks the i8042 for a reset ([`BenchGuestEnd::Reset`]: the built-in monitor then ends
//! cleanly; QEMU's microvm has no i8042, so there it halts).
//!
//! Integer instructions only (x87/SSE end in a KVM emulation error on nested PVM hosts); no
//! stack, no memory writes. Hand-assembled; the assembly is next to every byte (checked with
//! `objdump -D -b binary -m i386`).

use super::test_image;

/// Where the code is loaded (1 MiB, the ELF's `PT_LOAD` physical address) and entered (the PVH
/// note's entry point and `e_entry`).
pub const LOAD_ADDR: u32 = 0x10_0000;

/// The line the guest writes to COM1.
pub const MESSAGE: &[u8] = b"podvm bench guest: ready\n";

/// Offset of [`MESSAGE`] in the loaded code (after the code, padded with `int3`).
pub const MESSAGE_OFFSET: usize = 0x20;

const MESSAGE_ADDR: [u8; 4] = (LOAD_ADDR + MESSAGE_OFFSET as u32).to_le_bytes();

/// What the guest does after its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchGuestEnd {
    /// `jmp $` forever, without any exit to the monitor.
    Spin,
    /// i8042 reset (port 0x64 ← 0xfe), then `hlt` forever should the reset not stop it.
    Reset,
}

/// Writes [`MESSAGE`] to COM1 one byte at a time (32-bit code; `ESI` → the message).
#[rustfmt::skip]
const PRINT: [u8; 20] = [
    0xfc,                                    // 00: cld
    0xbe, MESSAGE_ADDR[0], MESSAGE_ADDR[1],  // 01: mov esi, LOAD_ADDR + 0x20 ; the message
          MESSAGE_ADDR[2], MESSAGE_ADDR[3],
    0xb9, MESSAGE.len() as u8, 0x00, 0x00,   // 06: mov ecx, 25               ; its length
          0x00,
    0x66, 0xba, 0xf8, 0x03,                  // 0b: mov dx, 0x3f8             ; COM1 data
    0xac,                                    // 0f: lodsb                     ; al = [esi++]
    0xee,                                    // 10: out dx, al
    0x49,                                    // 11: dec ecx
    0x75, 0xfb,                              // 12: jnz 0x0f
];

/// [`BenchGuestEnd::Spin`], at 0x14.
#[rustfmt::skip]
const SPIN: [u8; 2] = [
    0xeb, 0xfe, // 14: jmp 0x14
];

/// [`BenchGuestEnd::Reset`], at 0x14.
#[rustfmt::skip]
const RESET: [u8; 7] = [
    0xb0, 0xfe, // 14: mov al, 0xfe ; i8042: pulse reset
    0xe6, 0x64, // 16: out 0x64, al
    0xf4,       // 18: hlt
    0xeb, 0xfd, // 19: jmp 0x18
];

/// The loaded bytes: code, `int3` padding up to [`MESSAGE_OFFSET`], the message.
pub fn code(end: BenchGuestEnd) -> Vec<u8> {
    let tail: &[u8] = match end {
        BenchGuestEnd::Spin => &SPIN,
        BenchGuestEnd::Reset => &RESET,
    };
    let mut code = [&PRINT[..], tail].concat();
    code.resize(MESSAGE_OFFSET, 0xcc);
    code.extend_from_slice(MESSAGE);
    code
}

/// The guest as a static ELF64 with one `PT_LOAD` at [`LOAD_ADDR`] and a PVH note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`) whose entry is [`LOAD_ADDR`].
pub fn elf(end: BenchGuestEnd) -> Vec<u8> {
    test_image::elf64(u64::from(LOAD_ADDR), &code(end), Some(LOAD_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn message_pointer_length_and_port() {
        for end in [BenchGuestEnd::Spin, BenchGuestEnd::Reset] {
            let c = code(end);
            assert_eq!(c[0x01], 0xbe);
            let msg_addr = u32_at(&c, 0x02);
            assert_eq!(msg_addr, LOAD_ADDR + MESSAGE_OFFSET as u32);
            assert_eq!(&c[(msg_addr - LOAD_ADDR) as usize..], MESSAGE);
            assert_eq!(c[0x06], 0xb9);
            assert_eq!(u32_at(&c, 0x07) as usize, MESSAGE.len());
            assert_eq!(&c[0x0b..0x0f], &[0x66, 0xba, 0xf8, 0x03]);
            // The code ends before the message, the gap is int3.
            let code_len = PRINT.len()
                + match end {
                    BenchGuestEnd::Spin => SPIN.len(),
                    BenchGuestEnd::Reset => RESET.len(),
                };
            assert!(code_len <= MESSAGE_OFFSET);
            assert!(c[code_len..MESSAGE_OFFSET].iter().all(|&b| b == 0xcc));
        }
    }

    #[test]
    fn jumps_land_on_instruction_starts() {
        let c = code(BenchGuestEnd::Spin);
        // jnz at 0x12 → 0x14 + rel8 = the lodsb at 0x0f.
        assert_eq!(c[0x12], 0x75);
        assert_eq!(0x14 + c[0x13] as i8 as isize, 0x0f);
        assert_eq!(c[0x0f], 0xac);
        // jmp $ at 0x14.
        assert_eq!(&c[0x14..0x16], &[0xeb, 0xfe]);
        let r = code(BenchGuestEnd::Reset);
        assert_eq!(&r[0x14..0x18], &[0xb0, 0xfe, 0xe6, 0x64]);
        // jmp at 0x19 → 0x1b + rel8 = the hlt at 0x18.
        assert_eq!(0x1b + r[0x1a] as i8 as isize, 0x18);
        assert_eq!(r[0x18], 0xf4);
    }

    #[test]
    fn elf_loads_the_code_at_its_pvh_entry() {
        let e = elf(BenchGuestEnd::Spin);
        assert_eq!(&e[0..4], b"\x7fELF");
        assert_eq!(u64_at(&e, 24), u64::from(LOAD_ADDR), "e_entry");
        let phoff = u64_at(&e, 32) as usize;
        let phnum = u16::from_le_bytes([e[56], e[57]]) as usize;
        assert_eq!(phnum, 2);
        let (mut load, mut note_entry) = (None, None);
        for i in 0..phnum {
            let ph = phoff + i * 56;
            let (offset, paddr, filesz) = (
                u64_at(&e, ph + 8) as usize,
                u64_at(&e, ph + 24),
                u64_at(&e, ph + 32),
            );
            match u32_at(&e, ph) {
                1 => load = Some((paddr, &e[offset..offset + filesz as usize])),
                4 => {
                    let n = &e[offset..offset + filesz as usize];
                    assert_eq!(u32_at(n, 8), test_image::XEN_ELFNOTE_PHYS32_ENTRY);
                    assert_eq!(&n[12..16], b"Xen\0");
                    note_entry = Some(u32_at(n, 16));
                }
                other => panic!("unexpected program header type {other}"),
            }
        }
        let (paddr, bytes) = load.expect("a PT_LOAD");
        assert_eq!(paddr, u64::from(LOAD_ADDR));
        assert_eq!(bytes, code(BenchGuestEnd::Spin).as_slice());
        assert_eq!(
            note_entry,
            Some(LOAD_ADDR),
            "the PVH entry is the code's address"
        );
    }
}
