//! COM1 (8250 UART at 0x3f8, IRQ 4) on vm-superio, writing guest output to any
//! `Write` sink: the VMM's stdout or a log file.

use crate::devices::bus::BusDevice;
use crate::devices::Trigger;
use serde::{Deserialize, Serialize};
use std::io::Write;
use vm_superio::serial::SerialState;
use vm_superio::Serial;

/// The UART's registers and unread input, as a snapshot keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// Bytes the guest has not read (at most the 64-byte FIFO).
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = s.registers;
        SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

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

    /// A console in a saved state (pending interrupts raised again).
    pub fn restored(
        saved: &SerialSnapshot,
        irq: Trigger,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, String> {
        let inner = Serial::from_state(
            &SerialState::from(saved),
            irq,
            vm_superio::serial::NoEvents,
            out,
        )
        .map_err(|e| format!("the saved serial console state: {e:?}"))?;
        Ok(SerialConsole { inner })
    }

    /// The state a snapshot keeps.
    pub fn save(&self) -> SerialSnapshot {
        self.inner.state().into()
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
