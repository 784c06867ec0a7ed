//! The vsock test guest: freestanding 64-bit code (no OS, no interrupts) that the built-in KVM
//! monitor runs to prove its virtio-mmio vsock device end to end. Built by `host-runtime/build.rs`
//! into a flat binary loaded and entered at 1 MiB by the same 64-bit boot path as a kernel
//! (`cpu::setup_long_mode`: paging on, 0–4 GiB identity-mapped, so guest-physical addresses are
//! usable as pointers).
//!
//! What it does, printing each step on COM1:
//! 1. finds a virtio-mmio (version 2) vsock device at `VIRTIO_MMIO_BASE`, negotiates
//!    `VIRTIO_F_VERSION_1`, sets up the rx/tx/event split virtqueues and reads its CID;
//! 2. connects to the host's port `HOST_PORT` (1025), sends `PING`, prints the reply, shuts the
//!    connection down;
//! 3. listens on `GUEST_PORT` (1024): accepts the host's connection, echoes every payload back
//!    upper-cased until the host shuts down;
//! 4. prints `DONE` and resets the machine through the i8042 (a clean stop for the monitor).
//! Anything unexpected prints a `podvm test guest: error: …` line and executes `ud2` with no IDT,
//! i.e. a triple fault, which the monitor reports as an error.
//!
//! Guest memory map (all below 4 MiB): code/data at 1 MiB; stack below `STACK_TOP`; the three
//! virtqueues at 0x30_0000, 0x30_1000, 0x30_2000; rx buffers at 0x31_0000 + i × 4 KiB; the tx
//! buffer at 0x32_0000.

#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

core::arch::global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    mov rsp, 0x2ffff0",
    "    call {main}",
    "2:  ud2",
    "    jmp 2b",
    main = sym guest_main,
);

/// Where the monitor places the first virtio-mmio device (kept equal to the monitor's constant
/// by a unit test that reads this file).
const VIRTIO_MMIO_BASE: usize = 0xd000_0000;
const HOST_PORT: u32 = 1025;
const GUEST_PORT: u32 = 1024;
const GUEST_LOCAL_PORT: u32 = 50_000;
const HOST_CID: u64 = 2;

const HELLO: &str = "podvm test guest: hello\n";
const PING: &[u8] = b"ping from the guest";
const DONE: &str = "podvm test guest: done\n";

// virtio-mmio registers (virtio 1.2, 4.2.2).
const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;
const CONFIG: usize = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const VIRTIO_ID_VSOCK: u32 = 19;

const QUEUE_SIZE: u16 = 8;
const RX: u32 = 0;
const TX: u32 = 1;
const EVENT: u32 = 2;
const QUEUE_MEM: [usize; 3] = [0x30_0000, 0x30_1000, 0x30_2000];
const RX_BUFFERS: usize = 0x31_0000;
const RX_BUFFER_COUNT: u16 = 4;
const BUFFER_SIZE: u32 = 4096;
const TX_BUFFER: usize = 0x32_0000;

const DESC_F_WRITE: u16 = 2;

// The vsock packet header (virtio 1.2, 5.10.6), 44 bytes, little-endian.
const HDR_LEN: usize = 44;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const TYPE_STREAM: u16 = 1;
const SHUTDOWN_BOTH: u32 = 3;
const GUEST_BUF_ALLOC: u32 = 64 * 1024;

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to COM1 / the i8042; the monitor emulates both.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value) };
}

fn puts(s: &[u8]) {
    for &b in s {
        outb(0x3f8, b);
    }
}

fn put_u64(mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    puts(&digits[i..]);
}

fn fail(what: &str, value: u64) -> ! {
    puts(b"podvm test guest: error: ");
    puts(what.as_bytes());
    puts(b" ");
    put_u64(value);
    puts(b"\n");
    // SAFETY: deliberately undefined opcode; with no IDT this triple-faults.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

fn reset() -> ! {
    outb(0x64, 0xfe);
    loop {
        // SAFETY: waits for the reset the line above requested.
        unsafe { core::arch::asm!("hlt") };
    }
}

fn rd(off: usize) -> u32 {
    // SAFETY: a register of the identity-mapped virtio-mmio window.
    unsafe { read_volatile((VIRTIO_MMIO_BASE + off) as *const u32) }
}

fn wr(off: usize, v: u32) {
    // SAFETY: as in `rd`.
    unsafe { write_volatile((VIRTIO_MMIO_BASE + off) as *mut u32, v) }
}

fn peek<T: Copy>(addr: usize) -> T {
    // SAFETY: guest RAM below 4 MiB, identity-mapped and reserved for this program (map above).
    unsafe { read_volatile(addr as *const T) }
}

fn poke<T: Copy>(addr: usize, v: T) {
    // SAFETY: as in `peek`.
    unsafe { write_volatile(addr as *mut T, v) }
}

/// A split virtqueue at `QUEUE_MEM[index]`: descriptor table, then the available ring, then the
/// used ring (4-byte aligned).
struct Queue {
    index: u32,
    next_avail: u16,
    last_used: u16,
}

impl Queue {
    fn desc(&self) -> usize {
        QUEUE_MEM[self.index as usize]
    }
    fn avail(&self) -> usize {
        self.desc() + 16 * QUEUE_SIZE as usize
    }
    fn used(&self) -> usize {
        (self.avail() + 6 + 2 * QUEUE_SIZE as usize + 3) & !3
    }

    fn setup(index: u32) -> Queue {
        let q = Queue {
            index,
            next_avail: 0,
            last_used: 0,
        };
        wr(QUEUE_SEL, index);
        let max = rd(QUEUE_NUM_MAX);
        if max < QUEUE_SIZE as u32 {
            fail("queue too small, max", max as u64);
        }
        wr(QUEUE_NUM, QUEUE_SIZE as u32);
        wr(QUEUE_DESC_LOW, q.desc() as u32);
        wr(QUEUE_DESC_HIGH, 0);
        wr(QUEUE_DRIVER_LOW, q.avail() as u32);
        wr(QUEUE_DRIVER_HIGH, 0);
        wr(QUEUE_DEVICE_LOW, q.used() as u32);
        wr(QUEUE_DEVICE_HIGH, 0);
        wr(QUEUE_READY, 1);
        q
    }

    /// Offers one buffer (descriptor `slot`) to the device and notifies it.
    fn offer(&mut self, slot: u16, addr: usize, len: u32, device_writes: bool) {
        let d = self.desc() + 16 * slot as usize;
        poke::<u64>(d, addr as u64);
        poke::<u32>(d + 8, len);
        poke::<u16>(d + 12, if device_writes { DESC_F_WRITE } else { 0 });
        poke::<u16>(d + 14, 0);
        let ring = self.avail() + 4 + 2 * (self.next_avail % QUEUE_SIZE) as usize;
        poke::<u16>(ring, slot);
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        poke::<u16>(self.avail() + 2, self.next_avail);
        fence(Ordering::SeqCst);
        wr(QUEUE_NOTIFY, self.index);
    }

    /// Waits for the device to return a buffer: `(descriptor id, bytes written)`.
    fn take_used(&mut self) -> (u16, u32) {
        while peek::<u16>(self.used() + 2) == self.last_used {
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        let elem = self.used() + 4 + 8 * (self.last_used % QUEUE_SIZE) as usize;
        self.last_used = self.last_used.wrapping_add(1);
        // Acknowledge the interrupt the device raised (nobody takes it: interrupts are off).
        let isr = rd(INTERRUPT_STATUS);
        if isr != 0 {
            wr(INTERRUPT_ACK, isr);
        }
        (peek::<u32>(elem) as u16, peek::<u32>(elem + 4))
    }
}

#[derive(Clone, Copy)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
}

struct Vsock {
    cid: u64,
    rx: Queue,
    tx: Queue,
    /// Payload bytes this guest has taken from the host on the current connection.
    fwd_cnt: u32,
}

impl Vsock {
    fn send(&mut self, h: Header, payload: &[u8]) {
        let b = TX_BUFFER;
        poke::<u64>(b, h.src_cid);
        poke::<u64>(b + 8, h.dst_cid);
        poke::<u32>(b + 16, h.src_port);
        poke::<u32>(b + 20, h.dst_port);
        poke::<u32>(b + 24, payload.len() as u32);
        poke::<u16>(b + 28, TYPE_STREAM);
        poke::<u16>(b + 30, h.op);
        poke::<u32>(b + 32, h.flags);
        poke::<u32>(b + 36, GUEST_BUF_ALLOC);
        poke::<u32>(b + 40, self.fwd_cnt);
        for (i, &byte) in payload.iter().enumerate() {
            poke::<u8>(b + HDR_LEN + i, byte);
        }
        self.tx
            .offer(0, b, (HDR_LEN + payload.len()) as u32, false);
        let (id, _) = self.tx.take_used();
        if id != 0 {
            fail("tx returned descriptor", id as u64);
        }
    }

    /// Waits for the next packet; copies its payload into `data` and gives the buffer back.
    fn recv(&mut self, data: &mut [u8; 256]) -> (Header, usize) {
        loop {
            let (id, written) = self.rx.take_used();
            if id >= RX_BUFFER_COUNT || (written as usize) < HDR_LEN {
                fail("bad rx completion, length", written as u64);
            }
            let b = RX_BUFFERS + id as usize * BUFFER_SIZE as usize;
            let h = Header {
                src_cid: peek(b),
                dst_cid: peek(b + 8),
                src_port: peek(b + 16),
                dst_port: peek(b + 20),
                len: peek(b + 24),
                op: peek(b + 30),
                flags: peek(b + 32),
            };
            let n = (h.len as usize).min(data.len());
            for (i, slot) in data.iter_mut().enumerate().take(n) {
                *slot = peek(b + HDR_LEN + i);
            }
            self.rx.offer(id, b, BUFFER_SIZE, true);
            if h.dst_cid != self.cid {
                fail("packet for another CID", h.dst_cid);
            }
            if h.op == OP_RW {
                self.fwd_cnt = self.fwd_cnt.wrapping_add(h.len);
            }
            if h.op == OP_CREDIT_REQUEST {
                let reply = Header {
                    src_cid: self.cid,
                    dst_cid: h.src_cid,
                    src_port: h.dst_port,
                    dst_port: h.src_port,
                    len: 0,
                    op: OP_CREDIT_UPDATE,
                    flags: 0,
                };
                self.send(reply, &[]);
                continue;
            }
            if h.op == OP_CREDIT_UPDATE {
                continue;
            }
            return (h, n);
        }
    }

    fn expect(&mut self, op: u16, data: &mut [u8; 256]) -> (Header, usize) {
        let (h, n) = self.recv(data);
        if h.op != op {
            puts(b"podvm test guest: expected op ");
            put_u64(op as u64);
            fail("but got op", h.op as u64);
        }
        (h, n)
    }
}

fn init_device() -> Vsock {
    if rd(MAGIC) != 0x7472_6976 {
        fail("no virtio-mmio device at 0xd0000000, magic", rd(MAGIC) as u64);
    }
    if rd(VERSION) != 2 || rd(DEVICE_ID) != VIRTIO_ID_VSOCK {
        fail("not a virtio 1.x vsock device, device id", rd(DEVICE_ID) as u64);
    }
    wr(STATUS, 0);
    wr(STATUS, STATUS_ACKNOWLEDGE);
    wr(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(DEVICE_FEATURES_SEL, 1);
    if rd(DEVICE_FEATURES) & 1 == 0 {
        fail("device lacks VIRTIO_F_VERSION_1, features[1]", rd(DEVICE_FEATURES) as u64);
    }
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, 0);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 (bit 32)
    wr(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if rd(STATUS) & STATUS_FEATURES_OK == 0 {
        fail("device refused the features, status", rd(STATUS) as u64);
    }
    let mut rx = Queue::setup(RX);
    let tx = Queue::setup(TX);
    let _event = Queue::setup(EVENT);
    let cid = rd(CONFIG) as u64 | (rd(CONFIG + 4) as u64) << 32;
    wr(
        STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    for i in 0..RX_BUFFER_COUNT {
        rx.offer(i, RX_BUFFERS + i as usize * BUFFER_SIZE as usize, BUFFER_SIZE, true);
    }
    Vsock {
        cid,
        rx,
        tx,
        fwd_cnt: 0,
    }
}

extern "C" fn guest_main() -> ! {
    puts(HELLO.as_bytes());
    let mut v = init_device();
    puts(b"podvm test guest: vsock cid ");
    put_u64(v.cid);
    puts(b"\n");
    let mut data = [0u8; 256];

    // 1. Guest → host.
    let to_host = Header {
        src_cid: v.cid,
        dst_cid: HOST_CID,
        src_port: GUEST_LOCAL_PORT,
        dst_port: HOST_PORT,
        len: 0,
        op: OP_REQUEST,
        flags: 0,
    };
    v.fwd_cnt = 0;
    v.send(to_host, &[]);
    let (h, _) = v.expect(OP_RESPONSE, &mut data);
    if h.src_port != HOST_PORT || h.dst_port != GUEST_LOCAL_PORT {
        fail("response from the wrong port", h.src_port as u64);
    }
    v.send(Header { op: OP_RW, ..to_host }, PING);
    let (_, n) = v.expect(OP_RW, &mut data);
    puts(b"podvm test guest: host said: ");
    puts(&data[..n]);
    puts(b"\n");
    v.send(
        Header {
            op: OP_SHUTDOWN,
            flags: SHUTDOWN_BOTH,
            ..to_host
        },
        &[],
    );
    v.expect(OP_RST, &mut data);

    // 2. Host → guest.
    puts(b"podvm test guest: listening on 1024\n");
    v.fwd_cnt = 0;
    let (req, _) = v.expect(OP_REQUEST, &mut data);
    if req.dst_port != GUEST_PORT {
        fail("connection request for port", req.dst_port as u64);
    }
    let to_peer = Header {
        src_cid: v.cid,
        dst_cid: req.src_cid,
        src_port: GUEST_PORT,
        dst_port: req.src_port,
        len: 0,
        op: OP_RESPONSE,
        flags: 0,
    };
    v.send(to_peer, &[]);
    loop {
        let (h, n) = v.recv(&mut data);
        match h.op {
            OP_RW => {
                let mut upper = [0u8; 256];
                for i in 0..n {
                    upper[i] = data[i].to_ascii_uppercase();
                }
                v.send(Header { op: OP_RW, ..to_peer }, &upper[..n]);
            }
            OP_SHUTDOWN => {
                v.send(Header { op: OP_RST, ..to_peer }, &[]);
                break;
            }
            other => fail("unexpected op on the accepted connection", other as u64),
        }
    }
    puts(DONE.as_bytes());
    reset()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail("panic", 0)
}

// The compiler may call these for array initialisation and copies; there is no libc. `rep`
// string instructions, so that the bodies themselves do not compile into calls to themselves.

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract is memset's.
    unsafe {
        core::arch::asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8)
    };
    dst
}

/// # Safety
/// As C's `memcpy` (no overlap).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract is memcpy's.
    unsafe {
        core::arch::asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _)
    };
    dst
}

/// # Safety
/// As C's `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is safe when the destination starts below the source or after it.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag set, restored afterwards.
    unsafe {
        core::arch::asm!(
            "std", "rep movsb", "cld",
            inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _
        )
    };
    dst
}

/// # Safety
/// As C's `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees `n` readable bytes at both.
        let (x, y) = unsafe { (read_volatile(a.add(i)), read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// `core` is precompiled with unwinding tables that name this symbol; this program never unwinds
/// (`panic=abort`), so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
