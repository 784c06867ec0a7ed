//! virtio-blk (virtio 1.2, section 5.2) backed by a host file: `IN` (read), `OUT` (write, refused
//! on a read-only disk), `FLUSH` (fsync) and `GET_ID`, one request queue, served on a thread of its
//! own (`podvm-block`), spawned idle when the device is created (before the monitor drops
//! privileges and confines its threads) and handed its work at activation. A read-only disk offers `VIRTIO_BLK_F_RO`; the initdata disk of a
//! confidential pod is one. The capacity is the file's size in 512-byte sectors (a trailing
//! partial sector is not exposed).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActiveQueue, DeviceThread, Interrupt, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VirtioDevice,
    read_config_bytes,
};
use crate::hypervisor::kvm::error::{KvmVmError, Result};
use crate::hypervisor::kvm::seccomp::ThreadFilter;

/// The device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// The device supports `FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status bytes.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// The sector size of the protocol.
pub const SECTOR_SIZE: u64 = 512;
/// The length of a `GET_ID` answer.
pub const ID_BYTES: usize = 20;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// The request header: type (le32), reserved (le32), sector (le64).
const HEADER_LEN: u32 = 16;
/// The largest data segment served (a bound on what one descriptor makes the thread allocate).
const MAX_SEGMENT: u32 = 1 << 20;

/// A virtio-blk device over a host file.
pub struct BlockDevice {
    path: PathBuf,
    file: Option<File>,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_BYTES],
    thread: DeviceThread<Worker>,
}

fn device_error(reason: String) -> KvmVmError {
    KvmVmError::Device {
        device: "virtio-blk",
        reason,
    }
}

impl BlockDevice {
    /// Opens `path` (read-only if `read_only`); its serial (`GET_ID`) is the file name, cut to 20
    /// bytes.
    pub fn new(path: &Path, read_only: bool) -> Result<Self> {
        Self::with_filter(path, read_only, None)
    }

    /// [`Self::new`], with the device thread confined by `filter` once it is activated.
    pub fn with_filter(path: &Path, read_only: bool, filter: Option<ThreadFilter>) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| {
                KvmVmError::Config(format!(
                    "cannot open the disk image {}: {e} (check the path and its permissions)",
                    path.display()
                ))
            })?;
        let len = file
            .metadata()
            .map_err(|e| device_error(format!("{}: {e}", path.display())))?
            .len();
        let mut id = [0u8; ID_BYTES];
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name[..n]);
        let thread = DeviceThread::spawn("podvm-block", filter, Worker::run)?;
        Ok(BlockDevice {
            path: path.to_path_buf(),
            file: Some(file),
            read_only,
            sectors: len / SECTOR_SIZE,
            id,
            thread,
        })
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | if self.read_only {
                VIRTIO_BLK_F_RO
            } else {
                VIRTIO_BLK_F_FLUSH
            }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config { le64 capacity; ... }: only the capacity is offered.
        read_config_bytes(&self.sectors.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| device_error("activated twice".into()))?;
        let queue = queues
            .into_iter()
            .next()
            .ok_or_else(|| device_error("no request queue".into()))?;
        let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_error(e.to_string()))?;
        let worker = Worker {
            file,
            read_only: self.read_only,
            sectors: self.sectors,
            id: self.id,
            memory,
            queue,
            interrupt,
            kill: kill.try_clone().map_err(|e| device_error(e.to_string()))?,
            path: self.path.clone(),
        };
        self.thread.start(worker, kill)
    }
}

struct Worker {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_BYTES],
    memory: GuestMemoryMmap,
    queue: ActiveQueue,
    interrupt: Interrupt,
    kill: EventFd,
    path: PathBuf,
}

impl Worker {
    fn run(mut self) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => return tracing::error!("virtio-blk: epoll: {e}"),
        };
        for (fd, token) in [
            (self.kill.as_raw_fd(), 0u64),
            (self.queue.notify.as_raw_fd(), 1),
        ] {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                return tracing::error!("virtio-blk: epoll_ctl: {e}");
            }
        }
        self.process();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return tracing::error!("virtio-blk: epoll_wait: {e}"),
            };
            for ev in &events[..n] {
                if ev.data() == 0 {
                    return;
                }
                let _ = self.queue.notify.read();
                self.process();
            }
        }
    }

    fn process(&mut self) {
        let mem = self.memory.clone();
        let mut used = false;
        while let Some(chain) = self.queue.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let len = self.serve(&mem, chain);
            if self.queue.queue.add_used(&mem, head, len).is_err() {
                tracing::warn!("virtio-blk: the used ring is not writable");
            }
            used = true;
        }
        if used && self.queue.queue.needs_notification(&mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Serves one request; returns the bytes written into guest memory (data + status).
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let descs: Vec<_> = chain.collect();
        let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
            return 0;
        };
        if descs.len() < 2 || first.is_write_only() || !last.is_write_only() || last.len() < 1 {
            tracing::warn!(
                "virtio-blk: malformed request chain of {} descriptors",
                descs.len()
            );
            return 0;
        }
        let status_addr = last.addr();
        let mut header = [0u8; HEADER_LEN as usize];
        if first.len() < HEADER_LEN || mem.read_slice(&mut header, first.addr()).is_err() {
            return write_status(mem, status_addr, VIRTIO_BLK_S_IOERR, 0);
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let data = &descs[1..descs.len() - 1];
        let (status, written) = match kind {
            VIRTIO_BLK_T_IN => self.read(mem, sector, data),
            VIRTIO_BLK_T_OUT if self.read_only => (VIRTIO_BLK_S_IOERR, 0),
            VIRTIO_BLK_T_OUT => self.write(mem, sector, data),
            VIRTIO_BLK_T_FLUSH if self.read_only => (VIRTIO_BLK_S_OK, 0),
            VIRTIO_BLK_T_FLUSH => match self.file.sync_all() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    tracing::warn!("virtio-blk: fsync {}: {e}", self.path.display());
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => match data.first() {
                Some(d) if d.is_write_only() => {
                    let n = (d.len() as usize).min(ID_BYTES);
                    match mem.write_slice(&self.id[..n], d.addr()) {
                        Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                    }
                }
                _ => (VIRTIO_BLK_S_IOERR, 0),
            },
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        write_status(mem, status_addr, status, written)
    }

    /// The byte offset of `sector` if the request's data segments, from there, lie inside the
    /// disk.
    fn range(&self, sector: u64, data: &[virtio_queue::desc::split::Descriptor]) -> Option<u64> {
        let len: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let end = sector.checked_mul(SECTOR_SIZE)?.checked_add(len)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(sector * SECTOR_SIZE)
    }

    fn read(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[virtio_queue::desc::split::Descriptor],
    ) -> (u8, u32) {
        let Some(mut offset) = self.range(sector, data) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let mut written = 0u32;
        for d in data {
            if !d.is_write_only() || d.len() > MAX_SEGMENT {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            let mut buf = vec![0u8; d.len() as usize];
            if self.file.read_exact_at(&mut buf, offset).is_err()
                || mem.write_slice(&buf, d.addr()).is_err()
            {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            offset += u64::from(d.len());
            written += d.len();
        }
        (VIRTIO_BLK_S_OK, written)
    }

    fn write(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[virtio_queue::desc::split::Descriptor],
    ) -> (u8, u32) {
        let Some(mut offset) = self.range(sector, data) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        for d in data {
            if d.is_write_only() || d.len() > MAX_SEGMENT {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let mut buf = vec![0u8; d.len() as usize];
            if mem.read_slice(&mut buf, d.addr()).is_err()
                || self.file.write_all_at(&buf, offset).is_err()
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            offset += u64::from(d.len());
        }
        (VIRTIO_BLK_S_OK, 0)
    }
}

fn write_status(mem: &GuestMemoryMmap, addr: GuestAddress, status: u8, written: u32) -> u32 {
    match mem.write_obj(status, addr) {
        Ok(()) => written + 1,
        Err(_) => written,
    }
}
