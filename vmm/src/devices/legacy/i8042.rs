//! The i8042 keyboard controller, reduced to what a guest booted with `reboot=k`
//! uses: writing 0xfe to port 0x64 pulses the CPU reset line, which ends the VM.

use crate::devices::bus::BusDevice;
use vm_superio::{I8042Device, Trigger};

/// i8042 at ports 0x60-0x64.
pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// A controller that signals `reset` when the guest resets the CPU.
    pub fn new(reset: T) -> Self {
        I8042 {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T>
where
    T::E: std::fmt::Display,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [b]) = (u8::try_from(offset), data) {
            *b = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(offset, *b) {
                tracing::error!("signalling guest reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Trigger;

    #[test]
    fn reset_command_signals() {
        let t = Trigger::new().unwrap();
        let evt = t.0.try_clone().unwrap();
        let mut dev = I8042::new(t);
        dev.write(0, &[0xfe]);
        // Nothing yet: the non-blocking read finds the counter at zero.
        let e = evt.read().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
