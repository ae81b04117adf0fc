//! Port I/O and MMIO buses: map an address range to the device that owns it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// Zero-length range.
    #[error("bus range at {0:#x} is empty")]
    Empty(u64),
}

type Device = Arc<Mutex<dyn BusDevice>>;

/// Address ranges to devices. Lookups happen on every vCPU I/O exit.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, Device)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: Device, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let overlaps = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Device)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatches a read; returns false if no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                // A poisoned lock means a device thread panicked; keep serving the guest.
                let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(1))), 0x100, 0x10)
            .unwrap();
        for (base, len) in [(0x108, 0x10), (0xf8, 0x10)] {
            let e = bus
                .insert(Arc::new(Mutex::new(Echo(0))), base, len)
                .unwrap_err();
            assert!(
                matches!(e, BusError::Overlap { base: b, len: l } if (b, l) == (base, len)),
                "{e:?}"
            );
        }
        let e = bus
            .insert(Arc::new(Mutex::new(Echo(0))), 0x0, 0)
            .unwrap_err();
        assert!(matches!(e, BusError::Empty(0)), "{e:?}");
        bus.insert(Arc::new(Mutex::new(Echo(7))), 0x110, 0x10)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x102, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.write(0x110, &[9]));
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 9);
        assert!(!bus.read(0x120, &mut b));
        assert!(!bus.read(0xff, &mut b));
    }
}
