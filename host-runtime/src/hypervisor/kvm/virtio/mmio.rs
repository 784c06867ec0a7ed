//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the register block a driver
//! uses to discover a device, negotiate features, set up its virtqueues and notify it.
//!
//! The transport only holds register state. Queue notifications normally never reach it: the
//! monitor registers a KVM ioeventfd on `QueueNotify` with the queue index as data match, so the
//! write signals the queue's eventfd in the kernel; a notification that does reach it (another
//! width, or no ioeventfd) signals the same eventfd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::hypervisor::kvm::error::{KvmVmError, Result};
use crate::hypervisor::kvm::mmio::MmioDevice;

/// Where the first virtio-mmio device sits: inside the 32-bit MMIO hole, one 4 KiB window per
/// device, device `i` at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The size of one device's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The GSI (IOAPIC pin) of the first virtio-mmio device; device `i` uses `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// `"virt"` little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern transport.
pub const MMIO_VERSION: u32 = 2;
/// podvm's vendor ID in the `VendorID` register (`"PDVM"` is not a PCI vendor; MMIO has none).
pub const VENDOR_ID: u32 = 0x4d56_4450;

/// Register offsets.
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// One device's virtio-mmio register block.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    notify: Vec<Arc<EventFd>>,
    status: u32,
    interrupt_status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device`; `irqfd` raises its interrupt.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        irqfd: Arc<EventFd>,
    ) -> Result<Self> {
        if device.features() & VIRTIO_F_VERSION_1 == 0 {
            return Err(KvmVmError::Config(format!(
                "virtio device {} does not offer VIRTIO_F_VERSION_1, which virtio-mmio v2 needs",
                device.device_type()
            )));
        }
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| {
                KvmVmError::Config(format!("virtio queue of size {max}: {e:?}"))
            })?);
            notify.push(Arc::new(
                EventFd::new(libc::EFD_NONBLOCK).map_err(|e| KvmVmError::Device {
                    device: "virtio-mmio",
                    reason: format!("eventfd: {e}"),
                })?,
            ));
        }
        Ok(MmioTransport {
            device,
            memory,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            notify,
            status: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            irqfd,
            activated: false,
        })
    }

    /// The eventfd signalled when the driver notifies queue `index` (for KVM_IOEVENTFD).
    pub fn queue_notify_eventfd(&self, index: usize) -> Option<&EventFd> {
        self.notify.get(index).map(|e| e.as_ref())
    }

    /// How many queues the device has.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Whether the driver has set `DRIVER_OK` and the device runs.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.status & status::FEATURES_OK == 0 || self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size() as u32),
            reg::QUEUE_READY => queue.is_some_and(|q| q.ready()) as u32,
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            // No shared memory regions: length all-ones means "none".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    return; // features are fixed once accepted
                }
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | ((v as u64) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            reg::QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => {
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            // A reset before activation starts over; after activation the device keeps running
            // (the monitor does not support re-initialising a live device) and says so.
            if self.activated {
                self.status |= status::DEVICE_NEEDS_RESET;
            } else {
                self.status = 0;
                self.driver_features = 0;
                for q in &mut self.queues {
                    q.reset();
                }
            }
            return;
        }
        let mut v = v;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.device.features();
            if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                v &= !status::FEATURES_OK; // the driver reads it back and gives up
            }
        }
        self.status = v;
        if v & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut active = Vec::new();
        for (q, evt) in self.queues.iter().zip(&self.notify) {
            let notify = match evt.try_clone() {
                Ok(n) => n,
                Err(e) => return self.fail(format!("cannot clone a queue eventfd: {e}")),
            };
            if q.ready() && !q.is_valid(&self.memory) {
                return self.fail("the driver set up a queue outside guest memory".into());
            }
            // The device gets its own copy; the registers keep showing what the driver set.
            let queue = match Queue::try_from(q.state()) {
                Ok(queue) => queue,
                Err(e) => return self.fail(format!("invalid queue: {e:?}")),
            };
            active.push(ActiveQueue { queue, notify });
        }
        let interrupt = Interrupt::new(
            Arc::clone(&self.interrupt_status),
            Arc::clone(&self.irqfd),
        );
        match self.device.activate(self.memory.clone(), active, interrupt) {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn fail(&mut self, why: String) {
        tracing::warn!(device = self.device.device_type(), "virtio device not activated: {why}");
        self.status |= status::DEVICE_NEEDS_RESET;
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
        } else {
            data.fill(0); // registers are 32-bit; other widths are not defined
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            return; // no device here has writable configuration
        }
        if let Ok(b) = <[u8; 4]>::try_from(data)
            && offset.is_multiple_of(4)
        {
            self.write_u32(offset, u32::from_le_bytes(b));
        }
    }
}
