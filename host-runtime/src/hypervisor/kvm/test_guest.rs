//! Freestanding x86-64 test payloads, position-independent, entered in 64-bit mode at
//! [`super::cpu::PAYLOAD_START`] by the same [`super::cpu::setup_long_mode`] a kernel goes
//! through. Hand-assembled; each instruction's assembly is next to its bytes (checked with
//! `objdump -D -b binary -m i386:x86-64`).

/// What [`HELLO`] writes to COM1.
pub const HELLO_MESSAGE: &[u8] = b"podvm test guest: hello\n";

/// Offset of the message inside [`HELLO`] (right after the code).
pub const HELLO_MESSAGE_OFFSET: usize = 29;

/// Writes [`HELLO_MESSAGE`] to COM1 (port 0x3f8) one byte at a time, then asks the i8042 to
/// reset the CPU (port 0x64 ← 0xfe). Should the reset not stop it, it halts forever.
#[rustfmt::skip]
pub const HELLO: [u8; HELLO_MESSAGE_OFFSET + HELLO_MESSAGE.len()] = {
    let code: [u8; HELLO_MESSAGE_OFFSET] = [
        0x48, 0x8d, 0x35, 0x16, 0x00, 0x00, 0x00, // 00: lea rsi, [rip + 0x16]  ; → message at 29
        0xb9, 0x18, 0x00, 0x00, 0x00,             // 07: mov ecx, 24            ; message length
        0x66, 0xba, 0xf8, 0x03,                   // 0c: mov dx, 0x3f8          ; COM1 data
        0xac,                                     // 10: lodsb                  ; al = [rsi++]
        0xee,                                     // 11: out dx, al
        0xff, 0xc9,                               // 12: dec ecx
        0x75, 0xfa,                               // 14: jnz 0x10
        0xb0, 0xfe,                               // 16: mov al, 0xfe           ; i8042: pulse reset
        0xe6, 0x64,                               // 18: out 0x64, al
        0xf4,                                     // 1a: hlt
        0xeb, 0xfd,                               // 1b: jmp 0x1a
    ];
    let mut out = [0u8; HELLO_MESSAGE_OFFSET + HELLO_MESSAGE.len()];
    let mut i = 0;
    while i < code.len() {
        out[i] = code[i];
        i += 1;
    }
    let mut j = 0;
    while j < HELLO_MESSAGE.len() {
        out[HELLO_MESSAGE_OFFSET + j] = HELLO_MESSAGE[j];
        j += 1;
    }
    out
};

/// Executes an undefined instruction with no IDT: #UD cannot be delivered → #GP → #DF → triple
/// fault (KVM_EXIT_SHUTDOWN). RIP stays at the `ud2`.
#[rustfmt::skip]
pub const TRIPLE_FAULT: [u8; 3] = [
    0x90,       // 00: nop
    0x0f, 0x0b, // 01: ud2
];

/// Offset of the faulting `ud2` in [`TRIPLE_FAULT`].
pub const TRIPLE_FAULT_UD2_OFFSET: u64 = 1;

/// Halts with interrupts off: with no interrupt controller nothing can wake it (KVM_EXIT_HLT).
#[rustfmt::skip]
pub const HALT: [u8; 1] = [
    0xf4, // 00: hlt
];

/// Spins forever without touching any device (for the deadline / stop tests).
#[rustfmt::skip]
pub const SPIN: [u8; 2] = [
    0xeb, 0xfe, // 00: jmp 0x00
];

/// The virtio test guest (`host-runtime/test-guest/virtio_guest.c`, built by `build.rs`): a flat
/// image loaded and entered at [`super::cpu::PAYLOAD_START`]; needs at least 4 MiB of guest
/// memory. It prints [`VSOCK_GUEST_HELLO`] and scans the virtio-mmio slots. For each virtio-blk
/// disk it prints `disk of N sectors, read-only|read-write`, sector 0's first line, the status of
/// writing `written by the guest` to sector 1, the status of a read past the end and the disk's
/// serial. Then, with a vsock device, it connects to host port [`VSOCK_GUEST_HOST_PORT`], sends
/// [`VSOCK_GUEST_PING`] and prints the answer, listens on [`VSOCK_GUEST_LISTEN_PORT`] and echoes
/// what it receives upper-cased until the host closes. Last it prints [`VSOCK_GUEST_DONE`] and
/// resets. On anything unexpected it prints `podvm test guest: error: …` and triple-faults.
pub const VIRTIO_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/virtio-test-guest.bin"));
/// What the virtio test guest prints first.
pub const VSOCK_GUEST_HELLO: &str = "podvm test guest: hello\n";
/// What it prints last, before the reset.
pub const VSOCK_GUEST_DONE: &str = "podvm test guest: done\n";
/// The host port it connects to (a host listener at `<uds_path>_1025`).
pub const VSOCK_GUEST_HOST_PORT: u32 = 1025;
/// What it sends there.
pub const VSOCK_GUEST_PING: &[u8] = b"ping from the guest";
/// The port it then listens on (host: `CONNECT 1024`).
pub const VSOCK_GUEST_LISTEN_PORT: u32 = 1024;

#[cfg(test)]
#[allow(clippy::items_after_test_module)]
mod tests {
    use super::*;

    #[test]
    fn hello_lea_points_at_the_message() {
        let disp = i32::from_le_bytes(HELLO[3..7].try_into().unwrap());
        // rip-relative: relative to the next instruction (offset 7).
        assert_eq!(7 + disp as usize, HELLO_MESSAGE_OFFSET);
        assert_eq!(&HELLO[HELLO_MESSAGE_OFFSET..], HELLO_MESSAGE);
    }

    #[test]
    fn hello_length_and_port_match() {
        let len = u32::from_le_bytes(HELLO[8..12].try_into().unwrap());
        assert_eq!(len as usize, HELLO_MESSAGE.len());
        assert_eq!(u16::from_le_bytes([HELLO[14], HELLO[15]]), 0x3f8);
    }

    #[test]
    fn hello_jumps_land_on_instruction_starts() {
        // jnz at 0x14 (2 bytes) → 0x16 + rel8 must be the lodsb at 0x10.
        assert_eq!(0x16 + (HELLO[0x15] as i8) as isize, 0x10);
        assert_eq!(HELLO[0x10], 0xac);
        // jmp at 0x1b → 0x1d + rel8 must be the hlt at 0x1a.
        assert_eq!(0x1d + (HELLO[0x1c] as i8) as isize, 0x1a);
        assert_eq!(HELLO[0x1a], 0xf4);
        // the reset: mov al, 0xfe; out 0x64, al
        assert_eq!(&HELLO[0x16..0x1a], &[0xb0, 0xfe, 0xe6, 0x64]);
    }

    #[test]
    fn triple_fault_has_ud2() {
        let at = TRIPLE_FAULT_UD2_OFFSET as usize;
        assert_eq!(&TRIPLE_FAULT[at..at + 2], &[0x0f, 0x0b]);
    }
}
