//! The MMIO bus: guest-physical ranges with no memory behind them whose accesses KVM hands to
//! the monitor (`KVM_EXIT_MMIO`). Each range belongs to one device; an access outside every range
//! reads as all-ones and is otherwise ignored, like an unclaimed bus cycle.

use std::sync::{Arc, Mutex};

use super::error::{KvmVmError, Result};

/// A device on the MMIO bus. `offset` is relative to the device's base address.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus (vCPU threads) and whoever else needs it.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: SharedMmioDevice,
}

/// The devices in the MMIO hole, by address.
#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<Range>,
}

impl MmioBus {
    /// Places `device` at `base..base + len`; overlapping another device is a configuration error.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedMmioDevice) -> Result<()> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or_else(|| {
            KvmVmError::Config(format!("MMIO range {base:#x}+{len:#x} is empty or wraps"))
        })?;
        if let Some(r) = self
            .ranges
            .iter()
            .find(|r| base < r.base + r.len && r.base < end)
        {
            return Err(KvmVmError::Config(format!(
                "MMIO range {base:#x}..{end:#x} overlaps the device at {:#x}..{:#x}",
                r.base,
                r.base + r.len
            )));
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&Range, u64)> {
        self.ranges.iter().find_map(|r| {
            let offset = addr.checked_sub(r.base)?;
            (offset + len as u64 <= r.len).then_some((r, offset))
        })
    }

    /// A guest read of `data.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((r, offset)) => lock(&r.device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A guest write of `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((r, offset)) = self.find(addr, data.len()) {
            lock(&r.device).write(offset, data);
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking thread is still used (its
/// state is plain registers).
fn lock(device: &SharedMmioDevice) -> std::sync::MutexGuard<'_, dyn MmioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);

    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset_and_misses_read_all_ones() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::default();
        bus.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        let mut b = [0u8; 4];
        bus.read(0xd000_0010, &mut b);
        assert_eq!(b, [0x10; 4]);
        bus.write(0xd000_0050, &[1, 0, 0, 0]);
        assert_eq!(dev.lock().unwrap().0, vec![(0x50, vec![1, 0, 0, 0])]);
        bus.read(0xd000_1000, &mut b);
        assert_eq!(b, [0xff; 4]);
        // An access straddling the end is not the device's.
        bus.read(0xd000_0ffe, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x1000, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let err = bus
            .insert(0x1800, 0x1000, Arc::new(Mutex::new(Recorder::default())))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid VM configuration: MMIO range 0x1800..0x2800 overlaps the device at 0x1000..0x2000"
        );
    }
}
