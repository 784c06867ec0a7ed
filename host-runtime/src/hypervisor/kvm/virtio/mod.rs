//! virtio devices over the virtio-mmio transport (virtio 1.2, section 4.2), "modern" (version 2)
//! only. The transport ([`mmio::MmioTransport`]) holds the registers the driver programs from a
//! vCPU thread; when the driver sets `DRIVER_OK` it hands the configured queues, their notify
//! eventfds (KVM ioeventfds on the `QueueNotify` register, so a notification is no vCPU exit) and
//! an [`Interrupt`] (a KVM irqfd on the device's GSI) to the device, which serves them on a thread
//! of its own.
//!
//! Devices: [`vsock`] (the hybrid Unix-socket vsock of Firecracker and vhost-device-vsock) and
//! [`block`] (virtio-blk over a host file, read-only or read-write).

pub mod block;
pub mod mmio;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::error::Result;

/// `VIRTIO_F_VERSION_1`: the device is virtio 1.x (required by the modern MMIO transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device IDs (virtio 1.2, section 5).
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// Interrupt status bits (`InterruptStatus` register).
pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// The maximum size of each of its queues; the count is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits it offers (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads its configuration space at `offset`; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Starts serving the driver: `queues[i]` is queue `i` as the driver set it up.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<()>;
}

/// A queue handed to a device: its state and the eventfd the driver's notifications arrive on.
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

/// The device's interrupt line: the `InterruptStatus` bits the driver reads and the irqfd that
/// raises the GSI.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(status: Arc<AtomicU32>, irqfd: Arc<EventFd>) -> Self {
        Interrupt { status, irqfd }
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        // An eventfd write only fails when the counter would overflow, i.e. the interrupt is
        // already pending.
        let _ = self.irqfd.write(1);
    }
}

/// Reads `data.len()` bytes at `offset` of a device's configuration space `config`; bytes
/// beyond it read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o + i))
            .copied()
            .unwrap_or(0);
    }
}

/// A device's serving thread. It is spawned idle when the device is created — before the
/// monitor drops privileges and confines its threads, because a thread inherits the filter of
/// the thread that spawns it and a confined vCPU thread may not spawn any — and is handed its
/// work `W` at activation (DRIVER_OK, on a vCPU thread); it then installs its own filter and
/// runs. Dropping it ends the thread: an idle one when its channel closes, an active one through
/// the kill eventfd given to [`Self::start`].
pub struct DeviceThread<W: Send + 'static> {
    name: &'static str,
    start: Option<std::sync::mpsc::Sender<W>>,
    kill: Option<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<W: Send + 'static> DeviceThread<W> {
    /// Spawns the idle thread `name`; `run` serves the work once it arrives.
    pub fn spawn(
        name: &'static str,
        filter: Option<super::seccomp::ThreadFilter>,
        run: impl FnOnce(W) + Send + 'static,
    ) -> Result<Self> {
        let (start, started) = std::sync::mpsc::channel::<W>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Err: the device was dropped before the driver activated it.
                let Ok(work) = started.recv() else { return };
                if let Some(filter) = &filter
                    && let Err(e) = filter.apply()
                {
                    tracing::error!("{name}: {e}; the device stops");
                    return;
                }
                run(work);
            })
            .map_err(super::error::KvmVmError::Thread)?;
        Ok(DeviceThread {
            name,
            start: Some(start),
            kill: None,
            thread: Some(thread),
        })
    }

    /// Hands the thread its work; writing `kill` (kept here) ends it.
    pub fn start(&mut self, work: W, kill: EventFd) -> Result<()> {
        let device_error = |reason: &str| super::error::KvmVmError::Device {
            device: self.name,
            reason: reason.to_string(),
        };
        let start = self
            .start
            .take()
            .ok_or_else(|| device_error("activated twice"))?;
        start
            .send(work)
            .map_err(|_| device_error("the device thread is gone"))?;
        self.kill = Some(kill);
        Ok(())
    }
}

impl<W: Send + 'static> Drop for DeviceThread<W> {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.write(1);
        }
        drop(self.start.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
