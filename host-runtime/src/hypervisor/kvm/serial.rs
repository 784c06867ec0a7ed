//! COM1: a 16550A UART (vm-superio's `Serial`) on ports [`COM1_BASE`]`..+8`, its output going to
//! a caller-given writer. The writer is wrapped so the first byte's arrival time is recorded: the
//! first observable effect of guest code.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::error::{KvmVmError, Result};

/// COM1's first port.
pub const COM1_BASE: u16 = 0x3f8;
/// The UART's eight registers.
pub const COM1_PORTS: u16 = 8;

/// The serial output's destination.
pub type SerialOut = Box<dyn Write + Send>;

/// The UART's interrupt line: an eventfd, ready to be registered as an irqfd once the VM has an
/// interrupt controller. Without one it only counts.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A writer that remembers when it first received a byte.
pub struct FirstByteWriter {
    inner: SerialOut,
    first_byte: Arc<OnceLock<Instant>>,
}

impl FirstByteWriter {
    pub fn new(inner: SerialOut) -> Self {
        FirstByteWriter {
            inner,
            first_byte: Arc::new(OnceLock::new()),
        }
    }

    /// When the first byte arrived (shared; set once).
    pub fn first_byte(&self) -> Arc<OnceLock<Instant>> {
        Arc::clone(&self.first_byte)
    }
}

impl Write for FirstByteWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.first_byte.get_or_init(Instant::now);
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A serial output that keeps what the guest wrote, shared between the VM and whoever reads it
/// (tests, benchmarks): clone it, give one clone to [`super::KvmVmBuilder::serial`].
#[derive(Debug, Clone, Default)]
pub struct CapturedOutput(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedOutput {
    /// The bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The bytes written so far as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl Write for CapturedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("the captured output's lock is poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1 with its output writer.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, FirstByteWriter>,
}

impl SerialDevice {
    pub fn new(out: FirstByteWriter) -> Result<Self> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| KvmVmError::Device {
            device: "serial",
            reason: format!("eventfd: {e}"),
        })?;
        Ok(SerialDevice {
            uart: Serial::new(EventFdTrigger(irq), out),
        })
    }

    /// The UART's interrupt eventfd, to register as the irqfd of IRQ 4 when the VM has an
    /// in-kernel interrupt controller (a Linux 8250 driver waits for THRE interrupts).
    pub fn interrupt_eventfd(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// Whether `port` belongs to this UART.
    pub fn claims(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + COM1_PORTS).contains(&port)
    }

    pub fn write(&mut self, port: u16, value: u8) -> Result<()> {
        self.uart
            .write((port - COM1_BASE) as u8, value)
            .map_err(|e| KvmVmError::Device {
                device: "serial",
                reason: e.to_string(),
            })
    }

    pub fn read(&mut self, port: u16) -> u8 {
        self.uart.read((port - COM1_BASE) as u8)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An in-memory writer shared with the test.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn data_register_writes_reach_the_writer_and_stamp_the_first_byte() {
        let buf = Shared::default();
        let writer = FirstByteWriter::new(Box::new(buf.clone()));
        let first = writer.first_byte();
        let mut dev = SerialDevice::new(writer).unwrap();
        assert!(first.get().is_none());
        for b in b"ok\n" {
            dev.write(COM1_BASE, *b).unwrap();
        }
        assert_eq!(buf.0.lock().unwrap().as_slice(), b"ok\n");
        assert!(first.get().is_some());
        // LSR: transmitter empty (THRE|TEMT), so a polling driver never waits.
        assert_eq!(dev.read(COM1_BASE + 5) & 0x60, 0x60);
    }

    #[test]
    fn claims_only_com1() {
        assert!(SerialDevice::claims(0x3f8) && SerialDevice::claims(0x3ff));
        assert!(!SerialDevice::claims(0x3f7) && !SerialDevice::claims(0x400));
    }
}
