//! The vsock device thread: one epoll loop over the queues' notify eventfds, the hybrid socket's
//! listener and every connection's Unix stream.
//!
//! Per connection it keeps the virtio-vsock credit accounting (virtio 1.2, 5.10.6.3): it never
//! sends the guest more than the guest's `buf_alloc - (sent - fwd_cnt)`, and it advertises its own
//! receive buffer ([`CONN_BUF_ALLOC`]) and how much of the guest's data it has written to the host
//! stream (`fwd_cnt`). A stream that cannot take data makes the guest's bytes wait in the
//! connection (never more than the advertised buffer); a guest that exceeds its credit is reset.
//!
//! Connection teardown: host EOF → SHUTDOWN to the guest, then RST after the guest's answer or
//! [`CLOSE_TIMEOUT`]; guest SHUTDOWN with both directions → RST and the stream is closed; guest
//! SHUTDOWN of one direction shuts that direction of the stream.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::HOST_CID;
use super::packet::*;
use crate::hypervisor::kvm::error::{KvmVmError, Result};
use crate::hypervisor::kvm::virtio::{ActiveQueue, Interrupt};

/// The receive buffer advertised to the guest per connection.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// How long a connection the host closed waits for the guest's RST.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first host-side port given to host-initiated connections (as Firecracker does).
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// The longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// The most read from a stream at once for the guest.
const READ_CHUNK: usize = 64 * 1024;
/// The largest packet payload accepted from the guest.
const MAX_PKT_DATA: u32 = 64 * 1024;

const TOKEN_KILL: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_EVENT: u64 = 3;
const TOKEN_LISTENER: u64 = 4;
/// Streams: `TOKEN_STREAM | fd`.
const TOKEN_STREAM: u64 = 1 << 32;

/// What the device hands the thread at activation.
pub struct MuxerSetup {
    pub cid: u64,
    pub uds_path: PathBuf,
    pub listener: UnixListener,
    pub memory: GuestMemoryMmap,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Interrupt,
    pub kill: EventFd,
}

/// A connection's identity: (guest port, host port).
type ConnKey = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    AwaitingResponse,
    Established,
    /// SHUTDOWN sent to the guest after host EOF; RST follows at the deadline.
    Closing(Instant),
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// The guest's receive buffer and how much of what it was sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    sent: u32,
    /// Payload bytes of the guest written to the stream.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_told: u32,
    /// The guest's bytes the stream has not taken yet.
    to_stream: Vec<u8>,
    /// Bytes read from the stream that wait for a guest rx buffer.
    to_guest: Vec<u8>,
    /// The guest will receive no more (host EOF is `State::Closing`).
    guest_rcv_shut: bool,
    /// The guest will send no more: shut the stream's write side once `to_stream` is empty.
    guest_send_shut: bool,
    /// The epoll interest currently registered.
    interest: EventSet,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Conn {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            sent: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            to_stream: Vec::new(),
            to_guest: Vec::new(),
            guest_rcv_shut: false,
            guest_send_shut: false,
            interest: EventSet::empty(),
        }
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.sent.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wanted_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        let may_read = self.state == State::Established
            && !self.guest_rcv_shut
            && self.to_guest.is_empty()
            && self.peer_credit() > 0;
        if may_read {
            e |= EventSet::IN;
        }
        if !self.to_stream.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The device thread's state.
pub struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    memory: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    event: ActiveQueue,
    interrupt: Interrupt,
    /// Kept open: its fd is registered with `epoll` (TOKEN_KILL).
    _kill: EventFd,
    epoll: Epoll,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Packets without payload waiting for an rx buffer.
    control: VecDeque<Packet>,
    next_host_port: u32,
}

fn io_error(what: &str, e: std::io::Error) -> KvmVmError {
    KvmVmError::Device {
        device: "virtio-vsock",
        reason: format!("{what}: {e}"),
    }
}

impl Muxer {
    pub fn new(setup: MuxerSetup) -> Result<Muxer> {
        let mut queues = setup.queues.into_iter();
        let (Some(rx), Some(tx), Some(event)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(KvmVmError::Config("virtio-vsock needs 3 queues".into()));
        };
        let epoll = Epoll::new().map_err(|e| io_error("epoll", e))?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| io_error("epoll_ctl", e))
        };
        add(setup.kill.as_raw_fd(), TOKEN_KILL)?;
        add(rx.notify.as_raw_fd(), TOKEN_RX)?;
        add(tx.notify.as_raw_fd(), TOKEN_TX)?;
        add(event.notify.as_raw_fd(), TOKEN_EVENT)?;
        add(setup.listener.as_raw_fd(), TOKEN_LISTENER)?;
        Ok(Muxer {
            cid: setup.cid,
            uds_path: setup.uds_path,
            listener: setup.listener,
            memory: setup.memory,
            rx,
            tx,
            event,
            interrupt: setup.interrupt,
            _kill: setup.kill,
            epoll,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
        })
    }

    /// Serves the device until the kill eventfd is written.
    pub fn run(mut self) {
        // The driver may have queued packets before the thread started.
        self.process_tx();
        self.flush_rx();
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = if self
                .conns
                .values()
                .any(|c| matches!(c.state, State::Closing(_)))
            {
                100
            } else {
                -1
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-vsock: epoll_wait failed, device stops: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_KILL => return,
                    TOKEN_RX => drain(&self.rx.notify),
                    TOKEN_TX => {
                        drain(&self.tx.notify);
                        self.process_tx();
                    }
                    // The event queue only carries TRANSPORT_RESET, which this device never
                    // sends; the driver's buffers stay there.
                    TOKEN_EVENT => drain(&self.event.notify),
                    TOKEN_LISTENER => self.accept(),
                    token => self.stream_event(token as RawFd, ev.event_set()),
                }
            }
            self.expire_closing();
            self.flush_rx();
            self.update_interest();
        }
    }

    // --- guest → host ----------------------------------------------------------------------

    fn process_tx(&mut self) {
        let mem = self.memory.clone();
        let mut used = false;
        while let Some(mut chain) = self.tx.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let parsed = VsockPacket::from_tx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA)
                .map(|p| Packet::from_guest(&p));
            if self.tx.queue.add_used(&mem, head, 0).is_err() {
                tracing::warn!("virtio-vsock: the tx used ring is not writable");
            }
            used = true;
            match parsed {
                Ok(pkt) => self.handle_guest_packet(pkt),
                Err(e) => tracing::warn!("virtio-vsock: dropped a malformed tx packet: {e:?}"),
            }
        }
        if used && self.tx.queue.needs_notification(&mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    fn reply(&self, to: &Packet, op: u16) -> Packet {
        Packet::control(op, (HOST_CID, to.dst_port), (self.cid, to.src_port))
    }

    fn handle_guest_packet(&mut self, pkt: Packet) {
        if pkt.src_cid != self.cid || pkt.dst_cid != HOST_CID {
            tracing::debug!(
                "virtio-vsock: dropped a packet from CID {} to CID {}",
                pkt.src_cid,
                pkt.dst_cid
            );
            return;
        }
        if pkt.type_ != TYPE_STREAM {
            if pkt.op != OP_RST {
                self.control.push_back(self.reply(&pkt, OP_RST));
            }
            return;
        }
        let key = (pkt.src_port, pkt.dst_port);
        if pkt.op == OP_REQUEST {
            return self.guest_connect(pkt);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if pkt.op != OP_RST {
                self.control.push_back(self.reply(&pkt, OP_RST));
            }
            return;
        };
        conn.peer_buf_alloc = pkt.buf_alloc;
        conn.peer_fwd_cnt = pkt.fwd_cnt;
        match (pkt.op, conn.state) {
            (OP_RESPONSE, State::AwaitingResponse) => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", key.1);
                // A fresh socket's buffer always takes these few bytes; if not, the peer is gone.
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset(key);
                }
            }
            (OP_RW, State::Established | State::Closing(_)) => {
                let buffered = conn.to_stream.len() + pkt.data.len();
                if buffered > CONN_BUF_ALLOC as usize {
                    tracing::warn!("virtio-vsock: the guest exceeded its credit on {key:?}; reset");
                    return self.reset(key);
                }
                conn.to_stream.extend_from_slice(&pkt.data);
                self.write_stream(key);
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => {
                let update = self.credit_update(key);
                self.control.extend(update);
            }
            (OP_SHUTDOWN, _) => {
                let both =
                    pkt.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND;
                if both {
                    self.write_stream(key);
                    return self.reset(key);
                }
                if pkt.flags & SHUTDOWN_RCV != 0 {
                    conn.guest_rcv_shut = true;
                }
                if pkt.flags & SHUTDOWN_SEND != 0 {
                    conn.guest_send_shut = true;
                    self.write_stream(key);
                }
            }
            (OP_RST, _) => self.remove(key),
            (op, state) => {
                tracing::debug!("virtio-vsock: op {op} in state {state:?} on {key:?}; reset");
                self.reset(key);
            }
        }
    }

    /// A guest connection to host port `P`: connect to `<uds_path>_P`.
    fn guest_connect(&mut self, pkt: Packet) {
        let key = (pkt.src_port, pkt.dst_port);
        if self.conns.contains_key(&key) {
            self.control.push_back(self.reply(&pkt, OP_RST));
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", pkt.dst_port));
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "virtio-vsock: guest port {} → host port {}: {}: {e}",
                    pkt.src_port,
                    pkt.dst_port,
                    PathBuf::from(&path).display()
                );
                self.control.push_back(self.reply(&pkt, OP_RST));
                return;
            }
        };
        if let Err(e) = self.register(&stream, key) {
            tracing::warn!("virtio-vsock: {e}");
            self.control.push_back(self.reply(&pkt, OP_RST));
            return;
        }
        let mut conn = Conn::new(stream, State::Established);
        conn.peer_buf_alloc = pkt.buf_alloc;
        conn.peer_fwd_cnt = pkt.fwd_cnt;
        self.conns.insert(key, conn);
        let response = self.stamp(key, self.reply(&pkt, OP_RESPONSE));
        self.control.push_back(response);
    }

    /// Writes what the stream takes of the guest's buffered bytes.
    fn write_stream(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut written = 0;
        while written < conn.to_stream.len() {
            match conn.stream.write(&conn.to_stream[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // The host side is gone.
                    return self.host_closed(key);
                }
            }
        }
        conn.to_stream.drain(..written);
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(written as u32);
        if conn.to_stream.is_empty() && conn.guest_send_shut {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        // Tell the guest about freed buffer space before it runs dry.
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_told) >= CONN_BUF_ALLOC / 4 {
            let update = self.credit_update(key);
            self.control.extend(update);
        }
    }

    fn credit_update(&mut self, key: ConnKey) -> Option<Packet> {
        self.conns.get(&key)?;
        let pkt = Packet::control(OP_CREDIT_UPDATE, (HOST_CID, key.1), (self.cid, key.0));
        Some(self.stamp(key, pkt))
    }

    /// Adds this side's credit information to a packet of connection `key`.
    fn stamp(&mut self, key: ConnKey, mut pkt: Packet) -> Packet {
        if let Some(conn) = self.conns.get_mut(&key) {
            pkt.buf_alloc = CONN_BUF_ALLOC;
            pkt.fwd_cnt = conn.fwd_cnt;
            conn.fwd_cnt_told = conn.fwd_cnt;
        }
        pkt
    }

    // --- host → guest ----------------------------------------------------------------------

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let fd = stream.as_raw_fd();
                    let registered = stream.set_nonblocking(true).is_ok()
                        && self
                            .epoll
                            .ctl(
                                ControlOperation::Add,
                                fd,
                                EpollEvent::new(EventSet::IN, TOKEN_STREAM | fd as u64),
                            )
                            .is_ok();
                    if registered {
                        self.handshakes.insert(
                            fd,
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("virtio-vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    fn stream_event(&mut self, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            return self.handshake(fd);
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if events.contains(EventSet::OUT) {
            self.write_stream(key);
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.read_stream(key);
        }
    }

    /// Reads the `CONNECT <port>\n` line of a host connection, a byte at a time so that nothing
    /// after the newline is consumed before the guest accepts.
    fn handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => return self.drop_handshake(fd),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if hs.line.len() > MAX_CONNECT_LINE {
                        return self.drop_handshake(fd);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.drop_handshake(fd),
            }
        }
        let port = std::str::from_utf8(&hs.line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else {
            tracing::debug!("virtio-vsock: a host connection did not start with CONNECT <port>");
            return self.drop_handshake(fd);
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let host_port = self.allocate_host_port(port);
        let key = (port, host_port);
        self.by_fd.insert(fd, key);
        let mut conn = Conn::new(hs.stream, State::AwaitingResponse);
        // Registered with IN by `accept`; `update_interest` narrows it.
        conn.interest = EventSet::IN;
        self.conns.insert(key, conn);
        let request = Packet::control(OP_REQUEST, (HOST_CID, host_port), (self.cid, port));
        let request = self.stamp(key, request);
        self.control.push_back(request);
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if let Some(hs) = self.handshakes.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            drop(hs);
        }
    }

    fn allocate_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(guest_port, p)) {
                return p;
            }
        }
    }

    fn read_stream(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != State::Established || !conn.to_guest.is_empty() {
            return;
        }
        let want = (conn.peer_credit() as usize).min(READ_CHUNK);
        if want == 0 {
            return;
        }
        let mut buf = vec![0u8; want];
        match conn.stream.read(&mut buf) {
            Ok(0) => self.host_closed(key),
            Ok(n) => {
                buf.truncate(n);
                conn.to_guest = buf;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.host_closed(key),
        }
    }

    /// The host closed its stream: tell the guest, then reset at the deadline.
    fn host_closed(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state == State::AwaitingResponse {
            return self.reset(key);
        }
        if matches!(conn.state, State::Closing(_)) {
            return;
        }
        conn.state = State::Closing(Instant::now() + CLOSE_TIMEOUT);
        let mut pkt = Packet::control(OP_SHUTDOWN, (HOST_CID, key.1), (self.cid, key.0));
        pkt.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        let pkt = self.stamp(key, pkt);
        self.control.push_back(pkt);
    }

    fn expire_closing(&mut self) {
        let now = Instant::now();
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Closing(t) if t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.reset(key);
        }
    }

    /// Sends the guest an RST for `key` and forgets the connection.
    fn reset(&mut self, key: ConnKey) {
        if self.conns.contains_key(&key) {
            self.control.push_back(Packet::control(
                OP_RST,
                (HOST_CID, key.1),
                (self.cid, key.0),
            ));
        }
        self.remove(key);
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn register(&mut self, stream: &UnixStream, key: ConnKey) -> Result<()> {
        stream
            .set_nonblocking(true)
            .map_err(|e| io_error("stream", e))?;
        let fd = stream.as_raw_fd();
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::empty(), TOKEN_STREAM | fd as u64),
            )
            .map_err(|e| io_error("epoll_ctl", e))?;
        self.by_fd.insert(fd, key);
        Ok(())
    }

    fn update_interest(&mut self) {
        for conn in self.conns.values_mut() {
            let want = conn.wanted_interest();
            if want != conn.interest {
                let fd = conn.stream.as_raw_fd();
                let ok = self
                    .epoll
                    .ctl(
                        ControlOperation::Modify,
                        fd,
                        EpollEvent::new(want, TOKEN_STREAM | fd as u64),
                    )
                    .is_ok();
                if ok {
                    conn.interest = want;
                }
            }
        }
    }

    /// Moves waiting packets into the guest's rx buffers: control packets first, then data.
    fn flush_rx(&mut self) {
        let mem = self.memory.clone();
        let mut used = false;
        loop {
            let (pkt, data_of) = match self.control.pop_front() {
                Some(p) => (p, None),
                None => match self.next_data_packet() {
                    Some((key, p)) => (p, Some(key)),
                    None => break,
                },
            };
            let Some(mut chain) = self.rx.queue.pop_descriptor_chain(&mem) else {
                // No buffer: keep a control packet for later (data stays in its connection).
                if data_of.is_none() {
                    self.control.push_front(pkt);
                }
                break;
            };
            let head = chain.head_index();
            let (len, sent) = match VsockPacket::from_rx_virtq_chain(&mem, &mut chain, u32::MAX) {
                Ok(mut guest) => pkt.write_to_guest(&mut guest),
                Err(e) => {
                    tracing::warn!("virtio-vsock: unusable rx buffer from the guest: {e:?}");
                    (0, 0)
                }
            };
            if self.rx.queue.add_used(&mem, head, len).is_err() {
                tracing::warn!("virtio-vsock: the rx used ring is not writable");
            }
            used = true;
            if let Some(key) = data_of
                && let Some(conn) = self.conns.get_mut(&key)
            {
                conn.to_guest.drain(..sent);
                conn.sent = conn.sent.wrapping_add(sent as u32);
            }
        }
        if used && self.rx.queue.needs_notification(&mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// The next connection with bytes for the guest (and credit for some), as an RW packet
    /// holding all of them; `flush_rx` takes what fits.
    fn next_data_packet(&mut self) -> Option<(ConnKey, Packet)> {
        let key = *self
            .conns
            .iter()
            .find(|(_, c)| {
                !c.to_guest.is_empty()
                    && c.peer_credit() > 0
                    && matches!(c.state, State::Established | State::Closing(_))
            })?
            .0;
        let conn = self.conns.get(&key)?;
        let n = conn.to_guest.len().min(conn.peer_credit() as usize);
        let mut pkt = Packet::control(OP_RW, (HOST_CID, key.1), (self.cid, key.0));
        pkt.data = conn.to_guest[..n].to_vec();
        Some((key, self.stamp(key, pkt)))
    }
}

/// Resets an eventfd's counter.
fn drain(evt: &EventFd) {
    let _ = evt.read();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(state: State) -> Conn {
        let (a, _b) = UnixStream::pair().unwrap();
        Conn::new(a, state)
    }

    #[test]
    fn peer_credit_is_the_guests_buffer_minus_what_is_in_flight_and_wraps() {
        let mut c = conn(State::Established);
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest says how much"
        );
        c.peer_buf_alloc = 64 * 1024;
        c.sent = 10_000;
        c.peer_fwd_cnt = 4_000;
        assert_eq!(c.peer_credit(), 64 * 1024 - 6_000);
        // Counters are free-running u32s: the difference survives the wrap.
        c.sent = 5;
        c.peer_fwd_cnt = u32::MAX - 10;
        assert_eq!(c.peer_credit(), 64 * 1024 - 16);
        // A guest that shrank its buffer below what is in flight gets nothing more.
        c.peer_buf_alloc = 8;
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn a_stream_is_read_only_when_the_guest_can_take_the_bytes() {
        let mut c = conn(State::AwaitingResponse);
        c.peer_buf_alloc = 4096;
        assert_eq!(
            c.wanted_interest(),
            EventSet::empty(),
            "not before RESPONSE"
        );
        c.state = State::Established;
        assert_eq!(c.wanted_interest(), EventSet::IN);
        c.to_guest = vec![1];
        assert_eq!(
            c.wanted_interest(),
            EventSet::empty(),
            "one chunk waits already"
        );
        c.to_guest.clear();
        c.sent = 4096;
        assert_eq!(c.wanted_interest(), EventSet::empty(), "no credit");
        c.to_stream = vec![1, 2, 3];
        assert_eq!(c.wanted_interest(), EventSet::OUT, "the guest's bytes wait");
        c.sent = 0;
        c.guest_rcv_shut = true;
        assert_eq!(
            c.wanted_interest(),
            EventSet::OUT,
            "the guest will receive no more"
        );
    }
}
