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
