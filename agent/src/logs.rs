//! Container logs on the host in the CRI format kubelet reads:
//! `<RFC3339Nano> stdout|stderr F|P <line>`: `F` ends a line, `P` is a piece of a line
//! that continues in the next entry.
//!
//! One copier per container reads both streams from the guest by byte offset
//! (`ReadOutput`), appends entries to the log file, and then persists the offsets
//! with the file's length ([`LogRecord`]). The next read asks for the new offset,
//! which is what tells the guest it may drop the bytes. A daemon killed at any point
//! restarts from the persisted record: it cuts the file back to the recorded length
//! and reads again from the recorded offsets, so nothing is lost or written twice.
//!
//! The record is replaced (written and renamed) after every chunk, which is what a
//! `kill -9` of vmletd needs; `fsync`s, of the log and of the record, come at most every
//! [`SYNC_INTERVAL`] or [`SYNC_BYTES`] and when the copy ends (a host crash takes the
//! guests with it, so no later read depends on them). File work runs on the blocking
//! pool, never on a runtime worker. A write that fails (a full disk) is undone and
//! retried with backoff until it succeeds: the guest keeps the bytes meanwhile (the
//! container blocks once its buffer is full), the error shows in the container's
//! verbose status, and copying resumes without loss once there is room.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request};
use vmlet_proto::agent as pb;
use vmlet_proto::agent::agent_client::AgentClient;

use crate::store::{self, LogRecord, StoreError};

/// Longest a read waits in the guest for output.
const READ_POLL: Duration = Duration::from_secs(30);
/// Pause after a failed read before the next try.
const RETRY: Duration = Duration::from_millis(500);
/// First and longest pause after a reply with nothing in it: a guest answers a read
/// when it has output or its poll ends, so quick empty replies are a guest misbehaving.
pub(crate) const EMPTY_FIRST: Duration = Duration::from_millis(10);
pub(crate) const EMPTY_MAX: Duration = Duration::from_secs(1);
/// Bytes asked for per read.
const CHUNK: u32 = 256 << 10;
/// Longest time output is copied between two fsyncs.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Most log bytes copied between two fsyncs.
pub const SYNC_BYTES: u64 = 8 << 20;
/// First and longest pause before a failed write is tried again.
const WRITE_RETRY_MIN: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why log copying failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened or written.
    #[error("log file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The copy position could not be persisted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The last write error of a log copy that has not recovered yet (None: copying is
/// healthy), for the container's status.
pub type LogHealth = Arc<Mutex<Option<String>>>;

/// The CRI entries for `data` read from `stream` at time `ts`. Complete lines end with
/// `F`; a trailing piece without newline is `P`, unless the stream ended (`eof`).
pub fn entries(ts: &str, stream: &str, data: &[u8], eof: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    // Writing to a Vec cannot fail.
    let _ = write_entries(&mut out, ts, stream, data, eof);
    out
}

/// Bytes of entries gathered before they are written: each output line costs ~40 bytes
/// of entry, so a chunk of newlines would grow ~40-fold if built whole.
const ENTRY_BATCH: usize = 64 << 10;

/// Writes [`entries`] to `w` in batches of about [`ENTRY_BATCH`] bytes; returns how
/// many bytes it wrote.
fn write_entries<W: Write>(
    w: &mut W,
    ts: &str,
    stream: &str,
    data: &[u8],
    eof: bool,
) -> std::io::Result<u64> {
    let mut batch = Vec::with_capacity(ENTRY_BATCH.min(data.len() + 64));
    let mut written = 0u64;
    let mut rest = data;
    while !rest.is_empty() {
        let (line, tag, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], "F", &rest[i + 1..]),
            None => (rest, if eof { "F" } else { "P" }, &rest[rest.len()..]),
        };
        batch.extend_from_slice(ts.as_bytes());
        batch.push(b' ');
        batch.extend_from_slice(stream.as_bytes());
        batch.push(b' ');
        batch.extend_from_slice(tag.as_bytes());
        batch.push(b' ');
        batch.extend_from_slice(line);
        batch.push(b'\n');
        rest = next;
        if batch.len() >= ENTRY_BATCH {
            w.write_all(&batch)?;
            written += batch.len() as u64;
            batch.clear();
        }
    }
    w.write_all(&batch)?;
    Ok(written + batch.len() as u64)
}

/// Now in RFC 3339 with nanoseconds, UTC.
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A container's log file (or none: output is then read and dropped, so the
/// container never blocks on a full pipe).
#[derive(Debug)]
pub struct LogSink {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    len: u64,
    health: LogHealth,
}

fn open_append(path: &Path) -> Result<std::fs::File, LogError> {
    let err = |source| LogError::File {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)
}

impl LogSink {
    /// A sink without a file.
    pub fn none() -> Self {
        Self {
            path: None,
            file: None,
            len: 0,
            health: LogHealth::default(),
        }
    }

    /// Opens `path`, cutting it back to `len` bytes (the last persisted position).
    pub fn open(path: Option<PathBuf>, len: u64) -> Result<Self, LogError> {
        let Some(p) = path else {
            return Ok(Self::none());
        };
        let file = open_append(&p)?;
        let err = |source| LogError::File {
            path: p.clone(),
            source,
        };
        let actual = file.metadata().map_err(err)?.len();
        // Shorter than recorded: rotated away under us; append to what is there.
        let len = if actual > len {
            file.set_len(len).map_err(err)?;
            len
        } else {
            actual
        };
        Ok(Self {
            path: Some(p),
            file: Some(file),
            len,
            health: LogHealth::default(),
        })
    }

    /// Opens `path` as it is: its recorded position was lost, and what the file holds
    /// is the container's output all the same (never cut it).
    pub fn open_as_is(path: Option<PathBuf>) -> Result<Self, LogError> {
        let len = match &path {
            Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            None => 0,
        };
        Self::open(path, len)
    }

    /// Where the copier reports write errors.
    pub fn health(&self) -> LogHealth {
        self.health.clone()
    }

    /// Opens the log path again (kubelet renamed the old file to rotate it).
    pub fn reopen(&mut self) -> Result<(), LogError> {
        let Some(p) = &self.path else { return Ok(()) };
        let file = open_append(p)?;
        self.len = file
            .metadata()
            .map_err(|source| LogError::File {
                path: p.clone(),
                source,
            })?
            .len();
        self.file = Some(file);
        Ok(())
    }

    /// Appends `data` of `stream` as CRI entries, all or nothing: a write that fails
    /// part way is cut off again, so trying again later doubles nothing.
    pub fn write(&mut self, stream: &str, data: &[u8], eof: bool) -> Result<(), LogError> {
        let (Some(file), Some(path)) = (&mut self.file, &self.path) else {
            return Ok(());
        };
        match write_entries(file, &timestamp(), stream, data, eof) {
            Ok(n) => {
                self.len += n;
                Ok(())
            }
            Err(source) => {
                // Best effort: a file that cannot even be cut back is reported anyway.
                let _ = file.set_len(self.len);
                Err(LogError::File {
                    path: path.clone(),
                    source,
                })
            }
        }
    }

    /// Flushes what was written to the disk.
    pub fn sync(&self) -> Result<(), LogError> {
        let (Some(file), Some(path)) = (&self.file, &self.path) else {
            return Ok(());
        };
        file.sync_data().map_err(|source| LogError::File {
            path: path.clone(),
            source,
        })
    }

    /// Length of the file after the last write.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written to the current file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A shared handle: the copier writes through it, ReopenContainerLog reopens it.
pub type SharedSink = Arc<tokio::sync::Mutex<LogSink>>;

/// Output the copier read, as it goes into the log.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// From stderr (else stdout, or the terminal).
    pub stderr: bool,
    /// The bytes.
    pub data: Arc<[u8]>,
}

/// Where the copier also sends each chunk it reads, for attach sessions: the guest
/// has one reader per stream (the copier, whose acknowledgements drop the bytes), so
/// live output is fanned out here rather than read twice.
pub type OutputTap = tokio::sync::broadcast::Sender<Chunk>;

/// Chunks an attach session may fall behind by before it loses output (with 256 KiB
/// reads, up to 16 MiB).
const TAP_BACKLOG: usize = 64;

/// A new tap with nobody listening.
pub fn output_tap() -> OutputTap {
    tokio::sync::broadcast::Sender::new(TAP_BACKLOG)
}

/// Copies container `id`'s output into `sink` from `rec` on, persisting the position
/// at `record_path` after each write, and sends it to `tap`. Returns when both
/// streams ended (or the container is gone from the guest). With a terminal there
/// is only stdout.
pub async fn copy(
    client: AgentClient<Channel>,
    id: String,
    tty: bool,
    sink: SharedSink,
    tap: OutputTap,
    record_path: PathBuf,
    mut rec: LogRecord,
) -> Result<(), LogError> {
    let mut open = [true, !tty];
    if rec.done {
        return Ok(());
    }
    let mut out = Persist::new(sink, record_path, id.clone());
    let mut empty_pause = EMPTY_FIRST;
    let streams = [pb::Stream::Stdout, pb::Stream::Stderr];
    while open.iter().any(|&o| o) {
        let read = |i: usize, offset: u64| {
            let mut c = client.clone();
            let mut req = Request::new(pb::ReadOutputRequest {
                container_id: id.clone(),
                exec_id: String::new(),
                stream: streams[i] as i32,
                offset,
                max_bytes: CHUNK,
            });
            req.set_timeout(READ_POLL);
            async move { (i, c.read_output(req).await) }
        };
        let (want_out, want_err) = (open[0].then_some(rec.stdout), open[1].then_some(rec.stderr));
        let (i, result) = {
            let out_read = async {
                match want_out {
                    Some(off) => read(0, off).await,
                    None => std::future::pending().await,
                }
            };
            let err_read = async {
                match want_err {
                    Some(off) => read(1, off).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = out_read => r,
                r = err_read => r,
            }
        };
        let asked = if i == 0 { rec.stdout } else { rec.stderr };
        let resp = match result.map(|r| checked(r.into_inner(), asked, CHUNK)) {
            Ok(Ok(r)) => r,
            Ok(Err(why)) => {
                tracing::warn!(container = %id, "the guest's output reply is refused: {why}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(s) if crate::sandbox::guest::deadline_passed(&s) => continue,
            Err(s) if s.code() == Code::NotFound => {
                tracing::debug!(container = %id, "container gone from the guest: log copy ends");
                break;
            }
            Err(s) => {
                tracing::debug!(container = %id, "reading output: {s}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if resp.data.is_empty() && !resp.eof {
            tokio::time::sleep(empty_pause).await;
            empty_pause = (empty_pause * 2).min(EMPTY_MAX);
            continue;
        }
        empty_pause = EMPTY_FIRST;
        let name = if i == 0 { "stdout" } else { "stderr" };
        let next = resp.offset + resp.data.len() as u64;
        if i == 0 {
            rec.stdout = next;
        } else {
            rec.stderr = next;
        }
        if resp.eof {
            open[i] = false;
        }
        rec.done = !open.iter().any(|&o| o);
        if !resp.data.is_empty() && tap.receiver_count() > 0 {
            // Nobody attached any more: the error only says so.
            let _ = tap.send(Chunk {
                stderr: i == 1,
                data: resp.data.as_slice().into(),
            });
        }
        if !resp.data.is_empty() || resp.eof {
            out.store(name, resp.data, resp.eof, &mut rec).await;
        }
    }
    if !rec.done {
        rec.done = true;
        out.store("stdout", Vec::new(), false, &mut rec).await;
    }
    Ok(())
}

/// A guest's reply to a read at `asked` of at most `max` bytes, held to what was
/// asked: no more than `max` bytes, none from before `asked` (those are cut off: the
/// reader has them already). A reply from past `asked` is a gap the guest reports (it
/// dropped output) and is taken as it is.
pub(crate) fn checked(
    mut r: pb::ReadOutputResponse,
    asked: u64,
    max: u32,
) -> Result<pb::ReadOutputResponse, String> {
    if r.data.len() > max as usize {
        return Err(format!("{} bytes, {max} asked for", r.data.len()));
    }
    if r.offset < asked {
        let known = usize::try_from(asked - r.offset).unwrap_or(usize::MAX);
        r.data.drain(..known.min(r.data.len()));
        r.offset = asked;
    }
    Ok(r)
}

/// The file side of a copy: appends chunks and persists the position, off the async
/// workers, fsyncing in batches, retrying failed writes; see the module doc.
pub struct Persist {
    sink: SharedSink,
    record_path: PathBuf,
    id: String,
    health: Option<LogHealth>,
    synced_at: Instant,
    unsynced: u64,
}

impl Persist {
    /// Writes into `sink` and records positions at `record_path` for container `id`.
    pub fn new(sink: SharedSink, record_path: PathBuf, id: String) -> Self {
        Persist {
            sink,
            record_path,
            id,
            health: None,
            synced_at: Instant::now(),
            unsynced: 0,
        }
    }

    /// Appends `data` of `stream` (none when empty) and records `rec` (its offsets
    /// already past `data`) with the log's new length. Returns once both are done:
    /// failures are retried with growing pauses and reported on the sink's health.
    pub async fn store(
        &mut self,
        stream: &'static str,
        data: Vec<u8>,
        eof: bool,
        rec: &mut LogRecord,
    ) {
        let mut chunk = (!data.is_empty()).then_some(data);
        let mut pause = WRITE_RETRY_MIN;
        loop {
            let sink = self.sink.clone().lock_owned().await;
            let health = self.health.get_or_insert_with(|| sink.health()).clone();
            let pending = chunk.as_ref().map_or(0, |c| c.len() as u64);
            let sync = rec.done
                || self.unsynced + pending >= SYNC_BYTES
                || self.synced_at.elapsed() >= SYNC_INTERVAL;
            let path = self.record_path.clone();
            let mut r = rec.clone();
            let mut c = chunk.take();
            let task = tokio::task::spawn_blocking(move || {
                let mut sink = sink;
                let res = store_blocking(&mut sink, &path, &mut r, &mut c, stream, eof, sync);
                (res, r, c)
            });
            let res = match task.await {
                Ok((res, r, back)) => {
                    *rec = r;
                    chunk = back;
                    res
                }
                Err(e) => {
                    // Only a panic gets here (the task is never cancelled): a bug, and
                    // the chunk went with it.
                    tracing::error!(container = %self.id, "log copy task failed: {e}");
                    return;
                }
            };
            match res {
                Ok(()) => {
                    if sync {
                        self.synced_at = Instant::now();
                        self.unsynced = 0;
                    } else {
                        self.unsynced += pending;
                    }
                    if lock_health(&health).take().is_some() {
                        tracing::info!(container = %self.id, "log copy resumed");
                    }
                    return;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if lock_health(&health).replace(msg.clone()).is_none() {
                        tracing::warn!(container = %self.id, "log copy paused, retrying: {msg}");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WRITE_RETRY_MAX);
                }
            }
        }
    }
}

fn lock_health(h: &LogHealth) -> std::sync::MutexGuard<'_, Option<String>> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// One try of [`Persist::store`]: the chunk (taken once written, so that a retry does
/// not write it again), then the record, with fsyncs when `sync`.
fn store_blocking(
    sink: &mut LogSink,
    path: &Path,
    rec: &mut LogRecord,
    chunk: &mut Option<Vec<u8>>,
    stream: &str,
    eof: bool,
    sync: bool,
) -> Result<(), LogError> {
    if let Some(data) = chunk.as_deref() {
        sink.write(stream, data, eof)?;
        *chunk = None;
    }
    rec.log_len = sink.len();
    if sync {
        sink.sync()?;
    }
    store::replace_json(path, rec, sync)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_entries() {
        let e = entries("T", "stdout", b"one\ntwo\npar", false);
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "T stdout F one\nT stdout F two\nT stdout P par\n"
        );
        let e = entries("T", "stderr", b"end", true);
        assert_eq!(String::from_utf8(e).unwrap(), "T stderr F end\n");
        let e = entries("T", "stdout", b"\n", false);
        assert_eq!(String::from_utf8(e).unwrap(), "T stdout F \n");
        assert!(entries("T", "stdout", b"", true).is_empty());
    }

    #[test]
    fn entries_are_written_in_bounded_batches() {
        /// Records the largest single write.
        struct Largest(Vec<u8>, usize);
        impl Write for Largest {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1 = self.1.max(b.len());
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        // Newlines only: each byte becomes a whole entry.
        let data = vec![b'\n'; CHUNK as usize];
        let mut w = Largest(Vec::new(), 0);
        let n = write_entries(&mut w, "T", "stdout", &data, false).unwrap();
        assert_eq!(n, w.0.len() as u64);
        assert_eq!(w.0, entries("T", "stdout", &data, false));
        assert_eq!(w.0.len(), data.len() * "T stdout F \n".len());
        assert!(w.1 < 2 * ENTRY_BATCH, "a write of {} bytes", w.1);
    }

    #[test]
    fn guest_replies_are_held_to_what_was_asked() {
        let reply = |offset: u64, data: &[u8]| pb::ReadOutputResponse {
            offset,
            data: data.to_vec(),
            eof: false,
        };
        let r = checked(reply(10, b"abc"), 10, CHUNK).unwrap();
        assert_eq!((r.offset, r.data.as_slice()), (10, &b"abc"[..]));
        // Bytes from before the asked offset are in the log already.
        let r = checked(reply(8, b"abcde"), 10, CHUNK).unwrap();
        assert_eq!((r.offset, r.data.as_slice()), (10, &b"cde"[..]));
        let r = checked(reply(2, b"ab"), 10, CHUNK).unwrap();
        assert_eq!((r.offset, r.data.len()), (10, 0));
        // A gap the guest reports is kept.
        assert_eq!(checked(reply(20, b"x"), 10, CHUNK).unwrap().offset, 20);
        // More than asked for is refused.
        let big = vec![0u8; CHUNK as usize + 1];
        assert!(checked(reply(10, &big), 10, CHUNK).is_err());
    }

    #[test]
    fn timestamp_is_rfc3339_nano() {
        let t = timestamp();
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
        assert!(t.ends_with('Z') && t.len() == "2026-01-01T00:00:00.000000000Z".len());
    }

    #[test]
    fn sink_cuts_back_to_the_recorded_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/c.log");
        let mut s = LogSink::open(Some(p.clone()), 0).unwrap();
        s.write("stdout", b"a\n", false).unwrap();
        let len = s.len();
        s.write("stdout", b"b\n", false).unwrap();
        drop(s);
        let s = LogSink::open(Some(p.clone()), len).unwrap();
        assert_eq!(s.len(), len);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with(" stdout F a\n") && text.lines().count() == 1);
        // Rotation: the file was renamed; reopen starts a new one.
        std::fs::rename(&p, dir.path().join("old")).unwrap();
        let mut s = s;
        s.reopen().unwrap();
        assert!(s.is_empty());
        s.write("stderr", b"c\n", false).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("stderr F c"));
        let mut none = LogSink::open(None, 0).unwrap();
        none.write("stdout", b"x", false).unwrap();
    }

    /// A tmpfs of `kib` KiB mounted on `dir` while alive.
    struct Tiny(PathBuf);

    impl Tiny {
        fn mount(dir: &Path, kib: u64) -> Self {
            std::fs::create_dir_all(dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={kib}k").as_str()),
            )
            .expect("mount a tmpfs (needs root)");
            Tiny(dir.to_owned())
        }
    }

    impl Drop for Tiny {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Fills the file system of `path` up with a file there; returns how much it took.
    fn fill(path: &Path) -> usize {
        let mut f = std::fs::File::create(path).unwrap();
        let block = [b'x'; 4096];
        let mut n = 0;
        while f.write_all(&block).is_ok() {
            n += block.len();
        }
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_pauses_the_copy_which_resumes_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let _tiny = Tiny::mount(&logs, 256);
        let log = logs.join("c.log");
        let sink = LogSink::open(Some(log.clone()), 0).unwrap();
        let health = sink.health();
        let sink: SharedSink = Arc::new(tokio::sync::Mutex::new(sink));
        let record = dir.path().join("c.log.json");
        let mut out = Persist::new(sink.clone(), record.clone(), "c".into());

        // One chunk fits; then the disk is full.
        let first: Vec<u8> = b"first\n".to_vec();
        let mut rec = LogRecord {
            stdout: first.len() as u64,
            ..Default::default()
        };
        out.store("stdout", first, false, &mut rec).await;
        let filler = logs.join("filler");
        assert!(fill(&filler) > 0);
        let len_before = std::fs::metadata(&log).unwrap().len();

        let text: String = (0..4000).map(|i| format!("line {i}\n")).collect();
        rec.stdout += text.len() as u64;
        let task = tokio::spawn(async move {
            out.store("stdout", text.into_bytes(), false, &mut rec)
                .await;
            rec
        });
        let start = Instant::now();
        while lock_health(&health).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no error reported"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reported = lock_health(&health).clone().unwrap();
        assert!(reported.contains("No space left"), "{reported}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "the copy waits for room");
        // What failed part way was taken back.
        assert_eq!(std::fs::metadata(&log).unwrap().len(), len_before);

        std::fs::remove_file(&filler).unwrap();
        let rec = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the copy resumes once there is room")
            .unwrap();
        assert!(lock_health(&health).is_none(), "the error is cleared");
        let written = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = written
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap())
            .collect();
        let want: Vec<String> = std::iter::once("first".to_owned())
            .chain((0..4000).map(|i| format!("line {i}")))
            .collect();
        assert_eq!(lines, want, "every line once, in order");
        assert_eq!(rec.log_len, written.len() as u64);
        let on_disk: LogRecord = store::read_json(&record).unwrap();
        assert_eq!(on_disk, rec);
    }

    #[test]
    fn a_log_whose_position_is_lost_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(&p, "T stdout F kept\n").unwrap();
        let mut s = LogSink::open_as_is(Some(p.clone())).unwrap();
        assert_eq!(s.len(), 16);
        s.write("stdout", b"more\n", false).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("T stdout F kept\n") && text.ends_with(" stdout F more\n"));
    }
}
