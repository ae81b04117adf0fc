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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request};
use vmlet_proto::agent as pb;
use vmlet_proto::agent::agent_client::AgentClient;

use crate::store::{self, LogRecord, StoreError};

/// Longest a read waits in the guest for output.
const READ_POLL: Duration = Duration::from_secs(30);
/// Pause after a failed read before the next try.
const RETRY: Duration = Duration::from_millis(500);
/// Bytes asked for per read.
const CHUNK: u32 = 256 << 10;

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

/// The CRI entries for `data` read from `stream` at time `ts`. Complete lines end with
/// `F`; a trailing piece without newline is `P`, unless the stream ended (`eof`).
pub fn entries(ts: &str, stream: &str, data: &[u8], eof: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut rest = data;
    while !rest.is_empty() {
        let (line, tag, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], "F", &rest[i + 1..]),
            None => (rest, if eof { "F" } else { "P" }, &rest[rest.len()..]),
        };
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
    out
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
        })
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

    /// Appends `data` of `stream` as CRI entries.
    pub fn write(&mut self, stream: &str, data: &[u8], eof: bool) -> Result<(), LogError> {
        let (Some(file), Some(path)) = (&mut self.file, &self.path) else {
            return Ok(());
        };
        let bytes = entries(&timestamp(), stream, data, eof);
        file.write_all(&bytes).map_err(|source| LogError::File {
            path: path.clone(),
            source,
        })?;
        self.len += bytes.len() as u64;
        Ok(())
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
        let resp = match result {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::DeadlineExceeded => continue,
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
        let name = if i == 0 { "stdout" } else { "stderr" };
        let mut guard = sink.lock().await;
        if !resp.data.is_empty() {
            guard.write(name, &resp.data, resp.eof)?;
            if tap.receiver_count() > 0 {
                // Nobody attached: the error only says so.
                let _ = tap.send(Chunk {
                    stderr: i == 1,
                    data: resp.data.as_slice().into(),
                });
            }
        }
        let next = resp.offset + resp.data.len() as u64;
        if i == 0 {
            rec.stdout = next;
        } else {
            rec.stderr = next;
        }
        if resp.eof {
            open[i] = false;
        }
        rec.log_len = guard.len();
        rec.done = !open.iter().any(|&o| o);
        drop(guard);
        if !resp.data.is_empty() || resp.eof {
            store::write_json(&record_path, &rec)?;
        }
    }
    if !rec.done {
        rec.done = true;
        store::write_json(&record_path, &rec)?;
    }
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
}
