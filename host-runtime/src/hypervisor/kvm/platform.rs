//! The guest's platform, in one place: where the interrupt controllers and the virtio-mmio
//! devices sit in the 32-bit MMIO hole and which interrupt line each device uses. The MP table
//! ([`super::mptable`]) and the kernel command line (`virtio_mmio.device=`) are both derived from
//! these constants, so they cannot disagree.
//!
//! | what | where |
//! |---|---|
//! | virtio-mmio device `i` | [`VIRTIO_MMIO_BASE`] `+ i ×` [`VIRTIO_MMIO_SIZE`], IRQ [`VIRTIO_MMIO_IRQ_BASE`] `+ i` |
//! | IOAPIC | [`IOAPIC_ADDR`] (`0xfec0_0000`), 24 pins, IRQ `n` → pin `n` |
//! | local APIC | [`LAPIC_ADDR`] (`0xfee0_0000`) |
//!
//! IRQs: 0 PIT, 1 i8042, 4 COM1 (ISA legacy); [`VIRTIO_MMIO_IRQ_BASE`]`..=`[`VIRTIO_MMIO_IRQ_LAST`]
//! (5–23) are the virtio-mmio devices', as in Firecracker. This monitor emulates no RTC (IRQ 8),
//! PS/2 mouse (12) or IDE (14, 15), so those lines are free for devices.

use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

use super::error::{KvmVmError, Result};
use super::memory::{MMIO_HOLE_END, MMIO_HOLE_START};

/// The IOAPIC's MMIO registers (its conventional PC address).
pub const IOAPIC_ADDR: GuestAddress = GuestAddress(0xfec0_0000);
/// The IOAPIC's input pins (the 82093AA has 24).
pub const IOAPIC_PINS: u8 = 24;
/// The local APICs' MMIO registers.
pub const LAPIC_ADDR: GuestAddress = GuestAddress(0xfee0_0000);
/// COM1's interrupt line.
pub const COM1_IRQ: u8 = 4;

/// The first virtio-mmio device's registers: 3.25 GiB, inside the MMIO hole, below the IOAPIC.
pub const VIRTIO_MMIO_BASE: GuestAddress = GuestAddress(0xd000_0000);
/// Each virtio-mmio device's register window (4 KiB; the transport uses 0x100 + config space).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The first virtio-mmio device's IRQ (IOAPIC pin).
pub const VIRTIO_MMIO_IRQ_BASE: u8 = 5;
/// The last IRQ a virtio-mmio device can get (the IOAPIC's last pin).
pub const VIRTIO_MMIO_IRQ_LAST: u8 = IOAPIC_PINS - 1;
/// How many virtio-mmio devices fit: one per IRQ in 5..=23.
pub const VIRTIO_MMIO_MAX_DEVICES: usize =
    (VIRTIO_MMIO_IRQ_LAST - VIRTIO_MMIO_IRQ_BASE + 1) as usize;

const _: () = assert!(VIRTIO_MMIO_BASE.0 >= MMIO_HOLE_START.0);
const _: () = assert!(
    VIRTIO_MMIO_BASE.0 + VIRTIO_MMIO_MAX_DEVICES as u64 * VIRTIO_MMIO_SIZE <= IOAPIC_ADDR.0
);
const _: () = assert!(IOAPIC_ADDR.0 < MMIO_HOLE_END.0 && LAPIC_ADDR.0 < MMIO_HOLE_END.0);

/// Where virtio-mmio device `index` sits and which IRQ it raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// The register window's guest-physical address.
    pub addr: GuestAddress,
    /// The register window's size in bytes.
    pub size: u64,
    /// The IRQ (IOAPIC pin, also the ISA IRQ number in the MP table).
    pub irq: u8,
}

impl VirtioMmioSlot {
    /// The slot of device `index` (0-based); an error past [`VIRTIO_MMIO_MAX_DEVICES`].
    pub fn new(index: usize) -> Result<Self> {
        if index >= VIRTIO_MMIO_MAX_DEVICES {
            return Err(KvmVmError::Config(format!(
                "virtio-mmio device {index} does not exist: at most {VIRTIO_MMIO_MAX_DEVICES} \
                 devices (IRQs {VIRTIO_MMIO_IRQ_BASE}..={VIRTIO_MMIO_IRQ_LAST})"
            )));
        }
        Ok(VirtioMmioSlot {
            addr: GuestAddress(VIRTIO_MMIO_BASE.0 + index as u64 * VIRTIO_MMIO_SIZE),
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_MMIO_IRQ_BASE + index as u8,
        })
    }

    /// The kernel parameter announcing this device (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), e.g.
    /// `virtio_mmio.device=4K@0xd0000000:5`; formatted by linux-loader's `Cmdline`.
    pub fn cmdline_arg(&self) -> Result<String> {
        let mut cmdline = Cmdline::new(256).map_err(cmdline_error)?;
        cmdline
            .add_virtio_mmio_device(self.size, self.addr, u32::from(self.irq), None)
            .map_err(cmdline_error)?;
        let arg = cmdline.as_cstring().map_err(cmdline_error)?;
        arg.into_string()
            .map_err(|e| KvmVmError::Config(format!("virtio-mmio parameter: {e}")))
    }
}

/// The `virtio_mmio.device=` parameters for the first `count` devices, space-separated (empty
/// for 0), ready to append to a kernel command line.
pub fn virtio_mmio_cmdline(count: usize) -> Result<String> {
    let args = (0..count)
        .map(|i| VirtioMmioSlot::new(i)?.cmdline_arg())
        .collect::<Result<Vec<_>>>()?;
    Ok(args.join(" "))
}

fn cmdline_error(e: linux_loader::cmdline::Error) -> KvmVmError {
    KvmVmError::Config(format!("cannot format a virtio-mmio kernel parameter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_4k_apart_with_consecutive_irqs() {
        let first = VirtioMmioSlot::new(0).unwrap();
        assert_eq!(
            first,
            VirtioMmioSlot {
                addr: GuestAddress(0xd000_0000),
                size: 0x1000,
                irq: 5
            }
        );
        let last = VirtioMmioSlot::new(VIRTIO_MMIO_MAX_DEVICES - 1).unwrap();
        assert_eq!((last.addr.0, last.irq), (0xd001_2000, 23));
        assert_eq!(VIRTIO_MMIO_MAX_DEVICES, 19);
    }

    #[test]
    fn too_many_devices_is_an_error_naming_the_limit() {
        let err = VirtioMmioSlot::new(19).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid VM configuration: virtio-mmio device 19 does not exist: at most 19 devices \
             (IRQs 5..=23)"
        );
    }

    #[test]
    fn cmdline_parameters() {
        assert_eq!(
            VirtioMmioSlot::new(0).unwrap().cmdline_arg().unwrap(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(virtio_mmio_cmdline(0).unwrap(), "");
        assert_eq!(
            virtio_mmio_cmdline(2).unwrap(),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
