//! The port-I/O bus: COM1 ([`super::serial`]) and the i8042 controller's CPU-reset line
//! (vm-superio's `I8042Device`, ports 0x60/0x64; writing 0xfe to 0x64 asks for a reset, which
//! this monitor turns into a clean VM stop). Other ports read as 0xff and ignore writes, as an
//! empty ISA bus does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_superio::{I8042Device, Trigger};

use super::error::{KvmVmError, Result};
use super::serial::SerialDevice;

/// The i8042's data port.
pub const I8042_DATA: u16 = 0x60;
/// The i8042's command/status port.
pub const I8042_COMMAND: u16 = 0x64;
/// The command that pulses the CPU reset line.
pub const I8042_CMD_RESET_CPU: u8 = 0xfe;

/// What the vCPU loop does after an I/O exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoAction {
    Continue,
    /// The guest asked for a reset: stop the VM.
    Reset,
}

/// The i8042's reset line: a flag the bus checks after each write.
#[derive(Debug, Clone, Default)]
pub struct ResetLine(Arc<AtomicBool>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> std::result::Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The devices reachable with `in`/`out`.
pub struct PioBus {
    serial: SerialDevice,
    i8042: I8042Device<ResetLine>,
    reset: ResetLine,
}

impl PioBus {
    pub fn new(serial: SerialDevice) -> Self {
        let reset = ResetLine::default();
        PioBus {
            serial,
            i8042: I8042Device::new(reset.clone()),
            reset,
        }
    }

    /// An `out` of `data` (1, 2 or 4 bytes; each byte goes to consecutive ports).
    pub fn write(&mut self, port: u16, data: &[u8]) -> Result<IoAction> {
        for (i, byte) in data.iter().enumerate() {
            let port = port.wrapping_add(i as u16);
            if SerialDevice::claims(port) {
                self.serial.write(port, *byte)?;
            } else if port == I8042_DATA || port == I8042_COMMAND {
                self.i8042
                    .write((port - I8042_DATA) as u8, *byte)
                    .map_err(|e| KvmVmError::Device {
                        device: "i8042",
                        reason: e.to_string(),
                    })?;
            }
        }
        if self.reset.0.swap(false, Ordering::SeqCst) {
            return Ok(IoAction::Reset);
        }
        Ok(IoAction::Continue)
    }

    /// An `in` into `data`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let port = port.wrapping_add(i as u16);
            *byte = if SerialDevice::claims(port) {
                self.serial.read(port)
            } else if port == I8042_DATA || port == I8042_COMMAND {
                self.i8042.read((port - I8042_DATA) as u8)
            } else {
                0xff
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::serial::{COM1_BASE, FirstByteWriter};
    use super::*;

    fn bus() -> PioBus {
        let out = FirstByteWriter::new(Box::new(std::io::sink()));
        PioBus::new(SerialDevice::new(out).unwrap())
    }

    #[test]
    fn i8042_reset_command_stops_the_vm() {
        let mut bus = bus();
        assert_eq!(
            bus.write(I8042_COMMAND, &[0xaa]).unwrap(),
            IoAction::Continue
        );
        assert_eq!(
            bus.write(I8042_COMMAND, &[I8042_CMD_RESET_CPU]).unwrap(),
            IoAction::Reset
        );
        // the data port does not reset
        assert_eq!(
            bus.write(I8042_DATA, &[I8042_CMD_RESET_CPU]).unwrap(),
            IoAction::Continue
        );
    }

    #[test]
    fn unclaimed_ports_read_all_ones() {
        let mut bus = bus();
        let mut data = [0u8; 2];
        bus.read(0x80, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(bus.write(0x80, &[1]).unwrap(), IoAction::Continue);
        bus.read(I8042_COMMAND, &mut data[..1]);
        assert_eq!(data[0], 0, "i8042 status: nothing pending");
        bus.read(COM1_BASE + 5, &mut data[..1]);
        assert_eq!(data[0] & 0x60, 0x60);
    }
}
