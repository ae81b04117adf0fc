//! Legacy PC devices: the 8250 serial console (and its bounded log file) and the
//! i8042 reset line.

mod console_log;
mod i8042;
mod serial;

pub use console_log::{CappedLog, SharedLog};
pub use i8042::I8042;
pub use serial::{SerialConsole, SerialSnapshot};
