//! The VMM's own log (stderr, the pod's `vmm.log`) bounded in size: past
//! [`MAX_LOG_BYTES`] one last line says so and later lines are dropped. The
//! warnings a guest can provoke are rate-limited at their source; this is the
//! backstop for a VMM that runs for months. (The jail's RLIMIT_FSIZE applies
//! too, with SIGXFSZ ignored, so a write past it fails instead of killing.)

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most bytes of log lines one VMM writes.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// A `tracing` writer that counts what passes through `counter` and stops at `cap`.
pub struct CappedWriter<W> {
    inner: W,
    counter: &'static AtomicU64,
    cap: u64,
}

static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// The writer for one log line: stderr, within [`MAX_LOG_BYTES`].
pub fn stderr() -> CappedWriter<std::io::Stderr> {
    CappedWriter::new(std::io::stderr(), &WRITTEN, MAX_LOG_BYTES)
}

impl<W: Write> CappedWriter<W> {
    /// Writes to `inner` while `counter` stays within `cap`.
    pub fn new(inner: W, counter: &'static AtomicU64, cap: u64) -> Self {
        CappedWriter {
            inner,
            counter,
            cap,
        }
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let before = self.counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if before + buf.len() as u64 <= self.cap {
            self.inner.write_all(buf)?;
        } else if before <= self.cap {
            // The first line that does not fit: say why the log ends here.
            self.inner
                .write_all(b"vmlet-vmm: log size limit reached; later lines are dropped\n")?;
            self.counter.store(u64::MAX / 2, Ordering::Relaxed);
        }
        // A dropped line still counts as written: logging must never fail the VMM.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stop_at_the_cap_with_one_notice() {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let mut out = Vec::new();
        for _ in 0..10 {
            CappedWriter::new(&mut out, &COUNT, 25)
                .write_all(b"0123456789\n")
                .unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0123456789\n0123456789\nvmlet-vmm: log size limit reached; later lines are dropped\n"
        );
    }
}
