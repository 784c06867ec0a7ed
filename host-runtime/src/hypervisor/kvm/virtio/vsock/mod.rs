//! virtio-vsock (virtio 1.2, section 5.10) with the **hybrid Unix-socket** host side of
//! Firecracker and vhost-device-vsock, so the rest of podvm talks to a guest the same way
//! whichever backend runs it:
//!
//! - host → guest: connect to the socket at `uds_path`, write `CONNECT <port>\n`; once the guest
//!   accepts, the monitor answers `OK <host port>\n` and the stream carries the connection. If
//!   nothing listens on the guest port, the stream is closed without an answer.
//! - guest → host: a guest connection to CID 2 port `P` is connected to the socket at
//!   `<uds_path>_<P>` (refused with a vsock RST if nothing listens there).
//!
//! The device thread ([`muxer`]) multiplexes every connection over the rx/tx queues with the
//! virtio-vsock credit protocol. It is spawned when the device is created (by the builder's
//! thread, before anything is confined, since a seccomp filter is inherited by the threads a
//! confined thread spawns) and waits there until the driver activates the device; with a
//! [`ThreadFilter`] it then confines itself before it touches any guest data or socket.

pub mod muxer;
pub mod packet;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActiveQueue, DeviceThread, Interrupt, VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK, VirtioDevice,
    read_config_bytes,
};
use crate::hypervisor::kvm::error::{KvmVmError, Result};
use crate::hypervisor::kvm::seccomp::ThreadFilter;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Queue size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// A virtio-vsock device whose host side is the hybrid socket at `uds_path`.
pub struct VsockDevice {
    cid: u64,
    uds_path: PathBuf,
    listener: Option<UnixListener>,
    thread: DeviceThread<muxer::Muxer>,
}

impl VsockDevice {
    /// Binds `uds_path` now (so hosts can connect before the guest's driver is up; they wait in
    /// the listen backlog) for a guest with context ID `cid` (3 or more), and spawns the (idle)
    /// device thread.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self> {
        Self::with_filter(cid, uds_path, None)
    }

    /// [`Self::new`], with the device thread confined by `filter` once it is activated.
    pub fn with_filter(cid: u64, uds_path: &Path, filter: Option<ThreadFilter>) -> Result<Self> {
        if cid < 3 || cid > u32::MAX as u64 {
            return Err(KvmVmError::Config(format!(
                "vsock guest CID {cid} is reserved or too large; use 3..=4294967295"
            )));
        }
        let listener = UnixListener::bind(uds_path).map_err(|e| {
            KvmVmError::Config(format!(
                "cannot listen on the vsock socket {}: {e} (remove a stale socket or pick another path)",
                uds_path.display()
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| device_error(format!("listener: {e}")))?;
        let thread = DeviceThread::spawn("podvm-vsock", filter, muxer::Muxer::run)?;
        Ok(VsockDevice {
            cid,
            uds_path: uds_path.to_path_buf(),
            listener: Some(listener),
            thread,
        })
    }
}

fn device_error(reason: String) -> KvmVmError {
    KvmVmError::Device {
        device: "virtio-vsock",
        reason,
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<()> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| device_error("activated twice".into()))?;
        let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_error(e.to_string()))?;
        let muxer = muxer::Muxer::new(muxer::MuxerSetup {
            cid: self.cid,
            uds_path: self.uds_path.clone(),
            listener,
            memory,
            queues,
            interrupt,
            kill: kill.try_clone().map_err(|e| device_error(e.to_string()))?,
        })?;
        self.thread.start(muxer, kill)
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        // The thread ends when `self.thread` drops (after this); the socket goes now.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
