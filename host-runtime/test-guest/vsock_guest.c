/*
 * The vsock test guest: freestanding 64-bit code (no OS, no interrupts) that podvm's built-in KVM
 * monitor runs to prove its virtio-mmio vsock device end to end. host-runtime/build.rs compiles
 * it with the host's C compiler into a flat image loaded and entered at 1 MiB by the same 64-bit
 * boot path as a kernel (cpu::setup_long_mode: paging on, 0-4 GiB identity-mapped, so
 * guest-physical addresses are usable as pointers).
 *
 * C rather than Rust: it must use general-purpose registers only (-mgeneral-regs-only). Under
 * this project's CI host (/dev/kvm = nested PVM) any x87/SSE instruction in such a guest ends in
 * a KVM emulation error, and rustc for the host target cannot be told to avoid SSE without
 * breaking its float ABI.
 *
 * What it does, printing each step on COM1:
 *  1. finds a virtio-mmio (version 2) vsock device at VIRTIO_MMIO_BASE, negotiates
 *     VIRTIO_F_VERSION_1, sets up the rx/tx/event split virtqueues, reads its CID;
 *  2. connects to the host's port 1025, sends PING, prints the reply, shuts the connection down
 *     and waits for the host's RST;
 *  3. listens on port 1024: accepts the host's connection and echoes every payload back
 *     upper-cased until the host shuts down, then answers with RST;
 *  4. prints DONE and resets the machine through the i8042 (a clean stop for the monitor).
 * Anything unexpected prints "podvm test guest: error: ..." and executes ud2 with no IDT, i.e. a
 * triple fault, which the monitor reports as an error.
 *
 * Guest memory map (below 4 MiB): code/data at 1 MiB; stack below 0x2ffff0; the three virtqueues
 * at 0x300000, 0x301000, 0x302000; rx buffers at 0x310000 + i * 4 KiB; the tx buffer at 0x320000.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long usize;

/* Kept equal to virtio::mmio::VIRTIO_MMIO_BASE by a unit test that reads this file. */
#define VIRTIO_MMIO_BASE 0xd0000000UL
#define HOST_PORT 1025
#define GUEST_PORT 1024
#define GUEST_LOCAL_PORT 50000
#define HOST_CID 2

/* virtio-mmio registers (virtio 1.2, 4.2.2). */
#define MAGIC 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEVICE_FEATURES 0x010
#define DEVICE_FEATURES_SEL 0x014
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INTERRUPT_STATUS 0x060
#define INTERRUPT_ACK 0x064
#define STATUS 0x070
#define QUEUE_DESC_LOW 0x080
#define QUEUE_DESC_HIGH 0x084
#define QUEUE_DRIVER_LOW 0x090
#define QUEUE_DRIVER_HIGH 0x094
#define QUEUE_DEVICE_LOW 0x0a0
#define QUEUE_DEVICE_HIGH 0x0a4
#define CONFIG 0x100

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define VIRTIO_ID_VSOCK 19

#define QUEUE_SIZE 8
#define RXQ 0
#define TXQ 1
#define EVQ 2
#define RX_BUFFERS 0x310000UL
#define RX_BUFFER_COUNT 4
#define BUFFER_SIZE 4096
#define TX_BUFFER 0x320000UL
#define DESC_F_WRITE 2

/* The vsock packet header (virtio 1.2, 5.10.6): 44 bytes, little-endian. */
#define HDR_LEN 44
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define TYPE_STREAM 1
#define SHUTDOWN_BOTH 3
#define GUEST_BUF_ALLOC (64 * 1024)

static const usize queue_mem[3] = {0x300000UL, 0x301000UL, 0x302000UL};

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static void puts_n(const char *s, usize n) {
    for (usize i = 0; i < n; i++) outb(0x3f8, (u8)s[i]);
}
static void puts(const char *s) {
    while (*s) outb(0x3f8, (u8)*s++);
}
static void put_u64(u64 v) {
    char d[20];
    int i = 20;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_n(d + i, (usize)(20 - i));
}

static __attribute__((noreturn)) void fail(const char *what, u64 value) {
    puts("podvm test guest: error: ");
    puts(what);
    puts(" ");
    put_u64(value);
    puts("\n");
    for (;;) __asm__ volatile("ud2");
}

static __attribute__((noreturn)) void reset(void) {
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}

static u32 rd(usize off) { return *(volatile u32 *)(VIRTIO_MMIO_BASE + off); }
static void wr(usize off, u32 v) { *(volatile u32 *)(VIRTIO_MMIO_BASE + off) = v; }
#define PEEK(type, addr) (*(volatile type *)(usize)(addr))
#define POKE(type, addr, v) (*(volatile type *)(usize)(addr) = (type)(v))

/* A split virtqueue: descriptor table, then the available ring, then the used ring. */
struct queue {
    u32 index;
    u16 next_avail;
    u16 last_used;
};
static usize q_desc(const struct queue *q) { return queue_mem[q->index]; }
static usize q_avail(const struct queue *q) { return q_desc(q) + 16 * QUEUE_SIZE; }
static usize q_used(const struct queue *q) { return (q_avail(q) + 6 + 2 * QUEUE_SIZE + 3) & ~3UL; }

static void q_setup(struct queue *q, u32 index) {
    q->index = index;
    q->next_avail = 0;
    q->last_used = 0;
    wr(QUEUE_SEL, index);
    u32 max = rd(QUEUE_NUM_MAX);
    if (max < QUEUE_SIZE) fail("queue too small, max", max);
    wr(QUEUE_NUM, QUEUE_SIZE);
    wr(QUEUE_DESC_LOW, (u32)q_desc(q));
    wr(QUEUE_DESC_HIGH, 0);
    wr(QUEUE_DRIVER_LOW, (u32)q_avail(q));
    wr(QUEUE_DRIVER_HIGH, 0);
    wr(QUEUE_DEVICE_LOW, (u32)q_used(q));
    wr(QUEUE_DEVICE_HIGH, 0);
    wr(QUEUE_READY, 1);
}

/* Offers one buffer (descriptor `slot`) to the device and notifies it. */
static void q_offer(struct queue *q, u16 slot, usize addr, u32 len, int device_writes) {
    usize d = q_desc(q) + 16 * (usize)slot;
    POKE(u64, d, addr);
    POKE(u32, d + 8, len);
    POKE(u16, d + 12, device_writes ? DESC_F_WRITE : 0);
    POKE(u16, d + 14, 0);
    POKE(u16, q_avail(q) + 4 + 2 * (usize)(q->next_avail % QUEUE_SIZE), slot);
    barrier();
    q->next_avail++;
    POKE(u16, q_avail(q) + 2, q->next_avail);
    barrier();
    wr(QUEUE_NOTIFY, q->index);
}

/* Waits for the device to return a buffer; returns its descriptor id, *written = bytes written. */
static u16 q_take_used(struct queue *q, u32 *written) {
    while (PEEK(u16, q_used(q) + 2) == q->last_used) __asm__ volatile("pause");
    barrier();
    usize elem = q_used(q) + 4 + 8 * (usize)(q->last_used % QUEUE_SIZE);
    q->last_used++;
    /* Acknowledge the interrupt the device raised (nobody takes it: interrupts are off). */
    u32 isr = rd(INTERRUPT_STATUS);
    if (isr) wr(INTERRUPT_ACK, isr);
    *written = PEEK(u32, elem + 4);
    return (u16)PEEK(u32, elem);
}

struct header {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len, flags;
    u16 op;
};

static u64 cid;
static struct queue rxq, txq, evq;
static u32 fwd_cnt; /* payload bytes taken from the host on the current connection */

static void send(const struct header *h, u16 op, u32 flags, const u8 *payload, u32 n) {
    usize b = TX_BUFFER;
    POKE(u64, b, h->src_cid);
    POKE(u64, b + 8, h->dst_cid);
    POKE(u32, b + 16, h->src_port);
    POKE(u32, b + 20, h->dst_port);
    POKE(u32, b + 24, n);
    POKE(u16, b + 28, TYPE_STREAM);
    POKE(u16, b + 30, op);
    POKE(u32, b + 32, flags);
    POKE(u32, b + 36, GUEST_BUF_ALLOC);
    POKE(u32, b + 40, fwd_cnt);
    for (u32 i = 0; i < n; i++) POKE(u8, b + HDR_LEN + i, payload[i]);
    q_offer(&txq, 0, b, HDR_LEN + n, 0);
    u32 written;
    u16 id = q_take_used(&txq, &written);
    if (id != 0) fail("tx returned descriptor", id);
}

/* Waits for the next packet (answering credit requests); copies up to 256 payload bytes. */
static void recv(struct header *h, u8 *data, u32 *n) {
    for (;;) {
        u32 written;
        u16 id = q_take_used(&rxq, &written);
        if (id >= RX_BUFFER_COUNT || written < HDR_LEN) fail("bad rx completion, length", written);
        usize b = RX_BUFFERS + (usize)id * BUFFER_SIZE;
        h->src_cid = PEEK(u64, b);
        h->dst_cid = PEEK(u64, b + 8);
        h->src_port = PEEK(u32, b + 16);
        h->dst_port = PEEK(u32, b + 20);
        h->len = PEEK(u32, b + 24);
        h->op = PEEK(u16, b + 30);
        h->flags = PEEK(u32, b + 32);
        u32 len = h->len < 256 ? h->len : 256;
        for (u32 i = 0; i < len; i++) data[i] = PEEK(u8, b + HDR_LEN + i);
        *n = len;
        q_offer(&rxq, id, b, BUFFER_SIZE, 1);
        if (h->dst_cid != cid) fail("packet for another CID", h->dst_cid);
        if (h->op == OP_RW) fwd_cnt += h->len;
        if (h->op == OP_CREDIT_REQUEST) {
            struct header r = {cid, h->src_cid, h->dst_port, h->src_port, 0, 0, 0};
            send(&r, OP_CREDIT_UPDATE, 0, 0, 0);
            continue;
        }
        if (h->op == OP_CREDIT_UPDATE) continue;
        return;
    }
}

static void expect(u16 op, struct header *h, u8 *data, u32 *n) {
    recv(h, data, n);
    if (h->op != op) {
        puts("podvm test guest: expected op ");
        put_u64(op);
        fail("but got op", h->op);
    }
}

static void init_device(void) {
    if (rd(MAGIC) != 0x74726976) fail("no virtio-mmio device at 0xd0000000, magic", rd(MAGIC));
    if (rd(VERSION) != 2 || rd(DEVICE_ID) != VIRTIO_ID_VSOCK)
        fail("not a virtio 1.x vsock device, device id", rd(DEVICE_ID));
    wr(STATUS, 0);
    wr(STATUS, S_ACKNOWLEDGE);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(DEVICE_FEATURES_SEL, 1);
    if (!(rd(DEVICE_FEATURES) & 1)) fail("device lacks VIRTIO_F_VERSION_1, features[1]", rd(DEVICE_FEATURES));
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, 0);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 (bit 32) */
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(STATUS) & S_FEATURES_OK)) fail("device refused the features, status", rd(STATUS));
    q_setup(&rxq, RXQ);
    q_setup(&txq, TXQ);
    q_setup(&evq, EVQ);
    cid = (u64)rd(CONFIG) | ((u64)rd(CONFIG + 4) << 32);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    for (u16 i = 0; i < RX_BUFFER_COUNT; i++) q_offer(&rxq, i, RX_BUFFERS + (usize)i * BUFFER_SIZE, BUFFER_SIZE, 1);
}

static const u8 ping[] = "ping from the guest";

void __attribute__((noreturn, used)) guest_main(void) {
    struct header h;
    u8 data[256];
    u32 n;

    puts("podvm test guest: hello\n");
    init_device();
    puts("podvm test guest: vsock cid ");
    put_u64(cid);
    puts("\n");

    /* 1. Guest -> host. */
    struct header to_host = {cid, HOST_CID, GUEST_LOCAL_PORT, HOST_PORT, 0, 0, 0};
    fwd_cnt = 0;
    send(&to_host, OP_REQUEST, 0, 0, 0);
    expect(OP_RESPONSE, &h, data, &n);
    if (h.src_port != HOST_PORT || h.dst_port != GUEST_LOCAL_PORT) fail("response from the wrong port", h.src_port);
    send(&to_host, OP_RW, 0, ping, sizeof ping - 1);
    expect(OP_RW, &h, data, &n);
    puts("podvm test guest: host said: ");
    puts_n((const char *)data, n);
    puts("\n");
    send(&to_host, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0);
    expect(OP_RST, &h, data, &n);

    /* 2. Host -> guest. */
    puts("podvm test guest: listening on 1024\n");
    fwd_cnt = 0;
    struct header req;
    expect(OP_REQUEST, &req, data, &n);
    if (req.dst_port != GUEST_PORT) fail("connection request for port", req.dst_port);
    struct header to_peer = {cid, req.src_cid, GUEST_PORT, req.src_port, 0, 0, 0};
    send(&to_peer, OP_RESPONSE, 0, 0, 0);
    for (;;) {
        recv(&h, data, &n);
        if (h.op == OP_RW) {
            for (u32 i = 0; i < n; i++)
                if (data[i] >= 'a' && data[i] <= 'z') data[i] = (u8)(data[i] - 'a' + 'A');
            send(&to_peer, OP_RW, 0, data, n);
        } else if (h.op == OP_SHUTDOWN) {
            send(&to_peer, OP_RST, 0, 0, 0);
            break;
        } else {
            fail("unexpected op on the accepted connection", h.op);
        }
    }
    puts("podvm test guest: done\n");
    reset();
}

/* The entry: first bytes of the image (section .text.start, placed first by link.ld). */
__asm__(".section .text.start, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "    mov $0x2ffff0, %rsp\n"
        "    call guest_main\n"
        "1:  ud2\n"
        "    jmp 1b\n"
        ".previous\n");

/* The compiler may emit calls to these for struct/array copies; there is no libc. */
void *memset(void *d, int c, usize n) {
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, usize n) {
    u8 *p = d;
    const u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}
