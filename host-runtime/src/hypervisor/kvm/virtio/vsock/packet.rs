//! vsock packets as the muxer handles them: an owned copy of the header fields and payload
//! (virtio 1.2, 5.10.6), moved in and out of guest buffers with `virtio-vsock`'s `VsockPacket`.

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;

/// Operations.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type served.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// One packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub data: Vec<u8>,
}

impl Packet {
    /// A host → guest packet with no payload.
    pub fn control(
        op: u16,
        (src_cid, src_port): (u64, u32),
        (dst_cid, dst_port): (u64, u32),
    ) -> Packet {
        Packet {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
            data: Vec::new(),
        }
    }

    /// Copies a packet the guest put on the tx queue.
    pub fn from_guest<B: BitmapSlice>(p: &VsockPacket<'_, B>) -> Packet {
        let mut data = vec![0u8; p.len() as usize];
        if let Some(slice) = p.data_slice() {
            let n = slice.len().min(data.len());
            // A short copy leaves zeros; `len` is what the guest declared.
            let _ = slice.copy_to(&mut data[..n]);
        }
        Packet {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
            data,
        }
    }

    /// Writes this packet into a guest rx buffer; returns the bytes written (header + payload)
    /// and how many payload bytes fitted (the caller keeps the rest for the next buffer).
    pub fn write_to_guest<B: BitmapSlice>(&self, p: &mut VsockPacket<'_, B>) -> (u32, usize) {
        let room = p.data_slice().map_or(0, |s| s.len());
        let n = self.data.len().min(room);
        if n > 0
            && let Some(slice) = p.data_slice()
        {
            slice.copy_from(&self.data[..n]);
        }
        p.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt)
            .set_len(n as u32);
        ((virtio_vsock::packet::PKT_HEADER_SIZE + n) as u32, n)
    }
}
