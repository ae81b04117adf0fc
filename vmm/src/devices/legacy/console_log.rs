//! The serial console's log file, bounded: a guest may write without end, the
//! file keeps its first `head` bytes and its last `tail` bytes. Until the tail
//! overflows, output goes to the file as it comes; from then on the tail lives in
//! a ring in memory and is rewritten behind the head, after a fixed-width line
//! saying how many bytes were dropped, at most once per [`REWRITE_INTERVAL`] (so a
//! flooding guest costs the host at most one tail's worth of writes a second); the
//! event loop calls [`SharedLog::sync_due`] so the last writes of a guest that went
//! quiet reach the file within about that interval too. The file never exceeds `head` + [`MARKER_LEN`] + `tail` bytes past what it held when
//! opened. Offsets are explicit (`pwrite`), so the file must not be in append mode.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest time between two rewrites of the tail.
pub const REWRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Length of the dropped-bytes line (its count is padded to a fixed width, so
/// every rewrite covers exactly the same bytes).
pub const MARKER_LEN: usize = 63;

fn marker_line(dropped: u64) -> String {
    format!("\n[vmlet: {dropped:020} bytes of console output dropped]\n")
}

/// A console log file kept to its first and last bytes.
pub struct CappedLog {
    file: File,
    /// Where the log starts: what the file held when opened stays.
    start: u64,
    head: u64,
    head_written: u64,
    tail: usize,
    ring: VecDeque<u8>,
    dropped: u64,
    /// The ring changed since the file last showed it.
    dirty: bool,
    last_rewrite: Option<Instant>,
}

impl CappedLog {
    /// Logs to `file` (opened for writing, not appending) after what it holds,
    /// keeping the first `head` and the last `tail` bytes.
    pub fn new(file: File, head: u64, tail: usize) -> std::io::Result<Self> {
        let start = file.metadata()?.len();
        Ok(CappedLog {
            file,
            start,
            head,
            head_written: 0,
            tail,
            ring: VecDeque::new(),
            dropped: 0,
            dirty: false,
            last_rewrite: None,
        })
    }

    /// Bytes dropped between head and tail so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn tail_offset(&self) -> u64 {
        self.start + self.head_written
    }

    /// Takes `buf` as written at `now`.
    pub fn write_at(&mut self, mut buf: &[u8], now: Instant) -> std::io::Result<()> {
        let room = usize::try_from(self.head - self.head_written).unwrap_or(usize::MAX);
        if room > 0 {
            let n = room.min(buf.len());
            self.file.write_all_at(&buf[..n], self.tail_offset())?;
            self.head_written += n as u64;
            buf = &buf[n..];
        }
        if buf.is_empty() {
            return Ok(());
        }
        if self.dropped == 0 && self.ring.len() + buf.len() <= self.tail {
            let at = self.tail_offset() + self.ring.len() as u64;
            self.ring.extend(buf);
            return self.file.write_all_at(buf, at);
        }
        // Only the last `tail` bytes of a long write can survive it.
        if buf.len() > self.tail {
            let skip = buf.len() - self.tail;
            self.dropped += skip as u64;
            buf = &buf[skip..];
        }
        self.ring.extend(buf);
        let over = self.ring.len().saturating_sub(self.tail);
        self.ring.drain(..over);
        self.dropped += over as u64;
        self.dirty = true;
        if self
            .last_rewrite
            .is_none_or(|t| now.duration_since(t) >= REWRITE_INTERVAL)
        {
            self.rewrite(now)?;
        }
        Ok(())
    }

    /// Writes the marker and the ring behind the head.
    fn rewrite(&mut self, now: Instant) -> std::io::Result<()> {
        self.last_rewrite = Some(now);
        self.dirty = false;
        let mut out = Vec::with_capacity(MARKER_LEN + self.ring.len());
        out.extend_from_slice(marker_line(self.dropped).as_bytes());
        let (a, b) = self.ring.as_slices();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        self.file.write_all_at(&out, self.tail_offset())
    }

    /// Rewrites the tail if it changed and the interval since the last rewrite
    /// has passed.
    pub fn sync_due(&mut self, now: Instant) -> std::io::Result<()> {
        if self.dirty
            && self
                .last_rewrite
                .is_none_or(|t| now.duration_since(t) >= REWRITE_INTERVAL)
        {
            self.rewrite(now)?;
        }
        Ok(())
    }

    /// Brings the file up to date (the last writes may wait for the next
    /// rewrite).
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.rewrite(Instant::now())?;
        }
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_at(buf, Instant::now())?;
        Ok(buf.len())
    }

    /// Nothing: the serial device flushes after every byte, and the rewrite pace
    /// is this writer's own.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`CappedLog`] shared by the serial device (writing, on a vCPU thread) and
/// the event loop (bringing the file up to date when the guest went quiet).
#[derive(Clone)]
pub struct SharedLog(Arc<Mutex<CappedLog>>);

impl SharedLog {
    /// Shares `log`.
    pub fn new(log: CappedLog) -> Self {
        SharedLog(Arc::new(Mutex::new(log)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CappedLog> {
        // A writer that panicked left the log consistent: every step is complete.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`CappedLog::sync_due`]; an error is logged at debug level only (the
    /// guest's output must never stop the VMM).
    pub fn sync_due(&self) {
        if let Err(e) = self.lock().sync_due(Instant::now()) {
            tracing::debug!("console log: {e}");
        }
    }
}

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CappedLog {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::debug!("console log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: u64 = 100;
    const TAIL: usize = 50;

    fn log(prefix: &[u8]) -> (tempfile::NamedTempFile, CappedLog) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(prefix).unwrap();
        let file = f.reopen().unwrap();
        let log = CappedLog::new(file, HEAD, TAIL).unwrap();
        (f, log)
    }

    fn contents(f: &tempfile::NamedTempFile) -> Vec<u8> {
        std::fs::read(f.path()).unwrap()
    }

    /// Byte `i` of the stream the tests write: its position, in a repeating pattern.
    fn stream(range: std::ops::Range<usize>) -> Vec<u8> {
        range.map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn short_output_is_written_as_it_comes() {
        let (f, mut log) = log(b"old\n");
        let now = Instant::now();
        log.write_at(&stream(0..120), now).unwrap();
        log.write_at(&stream(120..150), now).unwrap();
        let mut want = b"old\n".to_vec();
        want.extend(stream(0..150));
        assert_eq!(contents(&f), want);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn overflow_keeps_first_and_last_bytes_with_a_marker() {
        let (f, mut log) = log(b"");
        let t0 = Instant::now();
        // Byte by byte, as the serial device writes.
        for i in 0..1000 {
            log.write_at(&stream(i..i + 1), t0).unwrap();
        }
        log.sync().unwrap();
        let got = contents(&f);
        let mut want = stream(0..100);
        want.extend(marker_line(850).as_bytes());
        want.extend(stream(950..1000));
        assert_eq!(got, want);
        assert_eq!(got.len(), HEAD as usize + MARKER_LEN + TAIL);
        assert!(String::from_utf8_lossy(&got)
            .contains("[vmlet: 00000000000000000850 bytes of console output dropped]"));
    }

    #[test]
    fn size_never_exceeds_head_marker_and_tail() {
        let (f, mut log) = log(b"prefix");
        let t0 = Instant::now();
        let mut at = 0;
        for (step, len) in [1usize, 7, 49, 50, 51, 200, 3, 1000, 1]
            .iter()
            .cycle()
            .take(200)
            .enumerate()
        {
            log.write_at(
                &stream(at..at + len),
                t0 + Duration::from_millis(300 * step as u64),
            )
            .unwrap();
            at += len;
            assert!(contents(&f).len() <= 6 + HEAD as usize + MARKER_LEN + TAIL);
        }
        log.sync().unwrap();
        let got = contents(&f);
        assert_eq!(&got[6..106], &stream(0..100)[..]);
        assert_eq!(&got[got.len() - TAIL..], &stream(at - TAIL..at)[..]);
        assert_eq!(log.dropped(), (at - 100 - TAIL) as u64);
    }

    #[test]
    fn rewrites_at_most_once_per_interval_and_on_drop() {
        let (f, mut log) = log(b"");
        let t0 = Instant::now();
        log.write_at(&stream(0..200), t0).unwrap();
        let first = contents(&f);
        assert_eq!(&first[first.len() - TAIL..], &stream(150..200)[..]);
        // Within the interval the file does not change.
        log.write_at(&stream(200..210), t0 + REWRITE_INTERVAL / 2)
            .unwrap();
        assert_eq!(contents(&f), first);
        // After it, it does.
        log.write_at(&stream(210..220), t0 + REWRITE_INTERVAL)
            .unwrap();
        let second = contents(&f);
        assert_eq!(&second[second.len() - TAIL..], &stream(170..220)[..]);
        // What is left at the end reaches the file when the log goes.
        log.write_at(&stream(220..230), t0 + REWRITE_INTERVAL)
            .unwrap();
        drop(log);
        let last = contents(&f);
        assert_eq!(&last[last.len() - TAIL..], &stream(180..230)[..]);
        assert!(String::from_utf8_lossy(&last).contains("00000000000000000080 bytes"));
    }

    #[test]
    fn the_event_loop_brings_a_quiet_guests_last_bytes_to_the_file() {
        let (f, log) = log(b"");
        let shared = SharedLog::new(log);
        let mut writer = shared.clone();
        let t0 = Instant::now();
        shared.lock().write_at(&stream(0..200), t0).unwrap();
        // The guest's last bytes come right after a rewrite, then nothing.
        writer.write_all(&stream(200..205)).unwrap();
        let before = contents(&f);
        assert_eq!(&before[before.len() - 5..], &stream(195..200)[..]);
        shared.lock().sync_due(t0 + REWRITE_INTERVAL / 2).unwrap();
        assert_eq!(contents(&f), before);
        shared.lock().sync_due(t0 + REWRITE_INTERVAL).unwrap();
        let after = contents(&f);
        assert_eq!(&after[after.len() - TAIL..], &stream(155..205)[..]);
    }

    #[test]
    fn marker_width_is_fixed() {
        assert_eq!(marker_line(0).len(), MARKER_LEN);
        assert_eq!(marker_line(u64::MAX).len(), MARKER_LEN);
    }
}
