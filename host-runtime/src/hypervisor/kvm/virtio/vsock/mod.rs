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
//! virtio-vsock credit protocol.

pub mod muxer;
pub mod packet;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK, VirtioDevice};
use crate::hypervisor::kvm::error::{KvmVmError, Result};

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
    worker: Option<(EventFd, JoinHandle<()>)>,
}

impl VsockDevice {
    /// Binds `uds_path` now (so hosts can connect before the guest's driver is up; they wait in
    /// the listen backlog) for a guest with context ID `cid` (3 or more).
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self> {
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
        Ok(VsockDevice {
            cid,
            uds_path: uds_path.to_path_buf(),
            listener: Some(listener),
            worker: None,
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
        let config = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
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
        let handle = std::thread::Builder::new()
            .name("podvm-vsock".into())
            .spawn(move || muxer.run())
            .map_err(KvmVmError::Thread)?;
        self.worker = Some((kill, handle));
        Ok(())
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        if let Some((kill, handle)) = self.worker.take() {
            let _ = kill.write(1);
            let _ = handle.join();
        }
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
