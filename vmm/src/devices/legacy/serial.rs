//! COM1 (8250 UART at 0x3f8, IRQ 4) on vm-superio, writing guest output to any
//! `Write` sink: the VMM's stdout or a log file.

use crate::devices::bus::BusDevice;
use crate::devices::Trigger;
use std::io::Write;
use vm_superio::Serial;

/// The guest's serial console.
pub struct SerialConsole {
    inner: Serial<Trigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A console that raises `irq` and writes output to `out`.
    pub fn new(irq: Trigger, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            inner: Serial::new(irq, out),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [b]) = (u8::try_from(offset), data) {
            *b = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [b]) = (u8::try_from(offset), data) {
            // Output errors (a closed stdout) must not stop the guest.
            if let Err(e) = self.inner.write(offset, *b) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}
