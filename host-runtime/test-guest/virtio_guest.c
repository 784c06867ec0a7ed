/*
 * The virtio test guest: freestanding 64-bit code (no OS, no interrupts) that podvm's built-in KVM
 * monitor runs to prove its virtio-mmio devices (vsock, block) end to end. host-runtime/build.rs compiles
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
 *  0. scans the virtio-mmio slots; for each virtio-blk disk: prints its size and whether it is
 *     read-only, reads sector 0 and prints its first line, writes a note to sector 1 and prints
 *     the status, reads past the end and prints the status, prints the disk's serial (GET_ID);
 *     without a vsock device it then prints DONE and resets;
 *  1. finds the virtio-mmio (version 2) vsock device, negotiates
 *     VIRTIO_F_VERSION_1, sets up the rx/tx/event split virtqueues, reads its CID;
 *  2. connects to the host's port 1025, sends PING, prints the reply, shuts the connection down
 *     and waits for the host's RST;
 *  3. listens on port 1024: accepts the host's connection and echoes every payload back
 *     upper-cased until the host shuts down, then answers with RST;
 *  4. prints DONE and resets the machine through the i8042 (a clean stop for the monitor).
 * Anything unexpected prints "podvm test guest: error: ..." and executes ud2 with no IDT, i.e. a
 * triple fault, which the monitor reports as an error.
 *
 * Guest memory map (below 4 MiB): code/data at 1 MiB; stack below 0x2ffff0; the three vsock
 * virtqueues at 0x300000, 0x301000, 0x302000, the disk's at 0x303000; rx buffers at
 * 0x310000 + i * 4 KiB; the tx buffer at 0x320000; a disk request's header, data and status at
 * 0x330000, 0x331000, 0x332000.
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
#define MAX_PAYLOAD (BUFFER_SIZE - HDR_LEN)
#define DESC_F_WRITE 2

/* virtio-blk (virtio 1.2, 5.2). */
#define VIRTIO_ID_BLOCK 2
#define BLK_F_RO (1u << 5)
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_GET_ID 8
#define BLK_QUEUE 0x303000UL
#define BLK_HEADER 0x330000UL
#define BLK_DATA 0x331000UL
#define BLK_STATUS 0x332000UL

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

/* The register window of the device being driven (slot i at VIRTIO_MMIO_BASE + i * 4 KiB). */
static usize dev = VIRTIO_MMIO_BASE;
static u32 rd(usize off) { return *(volatile u32 *)(dev + off); }
static void wr(usize off, u32 v) { *(volatile u32 *)(dev + off) = v; }
#define PEEK(type, addr) (*(volatile type *)(usize)(addr))
#define POKE(type, addr, v) (*(volatile type *)(usize)(addr) = (type)(v))

/* A split virtqueue: descriptor table, then the available ring, then the used ring. */
struct queue {
    usize mem;
    u32 index;
    u16 next_avail;
    u16 last_used;
};
static usize q_desc(const struct queue *q) { return q->mem; }
static usize q_avail(const struct queue *q) { return q_desc(q) + 16 * QUEUE_SIZE; }
static usize q_used(const struct queue *q) { return (q_avail(q) + 6 + 2 * QUEUE_SIZE + 3) & ~3UL; }

static void q_setup(struct queue *q, u32 index, usize mem) {
    q->mem = mem;
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

/* Offers a chain of `n` descriptors (slots 0..n-1) and notifies the device. */
static void q_offer_chain(struct queue *q, const usize *addr, const u32 *len, const int *device_writes, u16 n) {
    for (u16 i = 0; i < n; i++) {
        usize d = q_desc(q) + 16 * (usize)i;
        POKE(u64, d, addr[i]);
        POKE(u32, d + 8, len[i]);
        POKE(u16, d + 12, (device_writes[i] ? DESC_F_WRITE : 0) | (i + 1 < n ? 1 : 0)); /* NEXT */
        POKE(u16, d + 14, i + 1 < n ? i + 1 : 0);
    }
    POKE(u16, q_avail(q) + 4 + 2 * (usize)(q->next_avail % QUEUE_SIZE), 0);
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

/* Waits for the next packet (answering credit requests); copies its payload (at most one rx
 * buffer's worth, MAX_PAYLOAD bytes) into `data`. */
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
        if (h->len > MAX_PAYLOAD) fail("payload larger than the rx buffer", h->len);
        u32 len = h->len;
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

/* Resets the device and negotiates VIRTIO_F_VERSION_1 (plus the read-only bit if offered). */
static void negotiate(void) {
    wr(STATUS, 0);
    wr(STATUS, S_ACKNOWLEDGE);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(DEVICE_FEATURES_SEL, 1);
    if (!(rd(DEVICE_FEATURES) & 1)) fail("device lacks VIRTIO_F_VERSION_1, features[1]", rd(DEVICE_FEATURES));
    wr(DEVICE_FEATURES_SEL, 0);
    u32 low = rd(DEVICE_FEATURES) & BLK_F_RO;
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, low);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 (bit 32) */
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(STATUS) & S_FEATURES_OK)) fail("device refused the features, status", rd(STATUS));
}

static void init_vsock(void) {
    negotiate();
    q_setup(&rxq, RXQ, queue_mem[RXQ]);
    q_setup(&txq, TXQ, queue_mem[TXQ]);
    q_setup(&evq, EVQ, queue_mem[EVQ]);
    cid = (u64)rd(CONFIG) | ((u64)rd(CONFIG + 4) << 32);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    for (u16 i = 0; i < RX_BUFFER_COUNT; i++) q_offer(&rxq, i, RX_BUFFERS + (usize)i * BUFFER_SIZE, BUFFER_SIZE, 1);
}

/* One virtio-blk request: header, optional data, status; returns the status byte. */
static u8 blk_request(struct queue *q, u32 type, u64 sector, u32 data_len, int device_writes_data) {
    POKE(u32, BLK_HEADER, type);
    POKE(u32, BLK_HEADER + 4, 0);
    POKE(u64, BLK_HEADER + 8, sector);
    POKE(u8, BLK_STATUS, 0xff);
    usize addr[3] = {BLK_HEADER, BLK_DATA, BLK_STATUS};
    u32 len[3] = {16, data_len, 1};
    int w[3] = {0, device_writes_data, 1};
    if (data_len) {
        q_offer_chain(q, addr, len, w, 3);
    } else {
        usize a2[2] = {BLK_HEADER, BLK_STATUS};
        u32 l2[2] = {16, 1};
        int w2[2] = {0, 1};
        q_offer_chain(q, a2, l2, w2, 2);
    }
    u32 written;
    q_take_used(q, &written);
    return PEEK(u8, BLK_STATUS);
}

static const u8 disk_note[] = "written by the guest";

/* Reads sector 0 and prints its first line, writes `disk_note` to sector 1, reads the serial. */
static void test_disk(void) {
    negotiate();
    wr(DEVICE_FEATURES_SEL, 0);
    int ro = (rd(DEVICE_FEATURES) & BLK_F_RO) != 0;
    struct queue q;
    q_setup(&q, 0, BLK_QUEUE);
    u64 sectors = (u64)rd(CONFIG) | ((u64)rd(CONFIG + 4) << 32);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    puts("podvm test guest: disk of ");
    put_u64(sectors);
    puts(ro ? " sectors, read-only\n" : " sectors, read-write\n");
    u8 st = blk_request(&q, BLK_T_IN, 0, 512, 1);
    if (st != 0) fail("disk read failed, status", st);
    puts("podvm test guest: disk sector 0: ");
    usize i = 0;
    while (i < 64 && PEEK(u8, BLK_DATA + i) >= 0x20 && PEEK(u8, BLK_DATA + i) < 0x7f) i++;
    puts_n((const char *)BLK_DATA, i);
    puts("\n");
    for (i = 0; i < 512; i++) POKE(u8, BLK_DATA + i, i < sizeof disk_note - 1 ? disk_note[i] : 0);
    st = blk_request(&q, BLK_T_OUT, 1, 512, 0);
    puts("podvm test guest: disk write status ");
    put_u64(st);
    puts("\n");
    st = blk_request(&q, BLK_T_IN, sectors, 512, 1);
    puts("podvm test guest: read past the end status ");
    put_u64(st);
    puts("\n");
    for (i = 0; i < 20; i++) POKE(u8, BLK_DATA + i, 0);
    st = blk_request(&q, BLK_T_GET_ID, 0, 20, 1);
    if (st != 0) fail("disk GET_ID failed, status", st);
    puts("podvm test guest: disk id ");
    i = 0;
    while (i < 20 && PEEK(u8, BLK_DATA + i)) i++;
    puts_n((const char *)BLK_DATA, i);
    puts("\n");
}

static const u8 ping[] = "ping from the guest";

void __attribute__((noreturn, used)) guest_main(void) {
    struct header h;
    static u8 data[MAX_PAYLOAD];
    u32 n;

    puts("podvm test guest: hello\n");
    usize vsock_dev = 0;
    for (usize slot = 0; slot < 4; slot++) {
        dev = VIRTIO_MMIO_BASE + slot * 0x1000;
        if (rd(MAGIC) != 0x74726976) break;
        if (rd(VERSION) != 2) fail("not a virtio 1.x device, version", rd(VERSION));
        if (rd(DEVICE_ID) == VIRTIO_ID_BLOCK) test_disk();
        else if (rd(DEVICE_ID) == VIRTIO_ID_VSOCK) vsock_dev = dev;
        else fail("unknown virtio device id", rd(DEVICE_ID));
    }
    if (!vsock_dev) {
        puts("podvm test guest: done\n");
        reset();
    }
    dev = vsock_dev;
    init_vsock();
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
