//! The control socket's protocol: newline-delimited JSON over a unix stream
//! socket, one request per line and one reply line each.
//!
//! Requests (`"version"` is optional; a client of this crate always sends it):
//! - `{"version":1,"cmd":"status"}` → `{"ok":true,"version":1,"state":"running"|"paused"|"stopped","vcpus":N,"mem_mib":M,"drives":[{"id","path","read_only","sectors"}]}`
//! - `{"cmd":"pause"}`, `{"cmd":"resume"}` → `{"ok":true}`
//! - `{"cmd":"swap_drive","id":"ID","path":"FILE"}` → `{"ok":true,"sectors":N}`
//! - `{"cmd":"shutdown","timeout_ms":N}` → `{"ok":true}`
//! - `{"cmd":"counters"}` → `{"ok":true,"exits":{"io_in":N,...},"block":{"ID":{...}},"net":{"net0":{...}},"vsock":{...}}`
//!   (see [`CountersReply`]; a VMM older than this request refuses it)
//! - `{"cmd":"snapshot","dir":"DIR"}` → `{"ok":true,"memory_bytes":N,"memory_file_bytes":N,"state_bytes":N,"took_ms":N}`:
//!   the vCPUs are paused and stay paused; the VM's state and memory are written to
//!   two new files in DIR (which must exist), for `--restore DIR`
//!
//! Errors: `{"ok":false,"error":"..."}`.
//!
//! **Versions.** A request that names a `version` other than [`PROTOCOL_VERSION`]
//! is refused with an error that names both; a request without one is read as the
//! current version (so the documented one-liners keep working by hand). The status
//! reply reports the VMM's version, and a client refuses a reply of another one.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The control protocol's version. Bump it with any change a peer of the other
/// version would misread.
pub const PROTOCOL_VERSION: u32 = 1;
/// The key that carries the version in requests and in the status reply.
pub const VERSION_KEY: &str = "version";
/// The key that says whether a request succeeded.
const OK_KEY: &str = "ok";
/// The key of the error message in a failed reply.
const ERROR_KEY: &str = "error";

/// Why a line could not be encoded or decoded, or what the peer refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(serde_json::Error),
    /// The line is JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// The peer speaks another protocol version.
    #[error("control protocol version {got} is not supported: this side speaks version {PROTOCOL_VERSION}")]
    Version {
        /// The version the peer named.
        got: String,
    },
    /// A request that does not parse (unknown command, missing or unknown field).
    #[error("bad request: {0}")]
    BadRequest(serde_json::Error),
    /// A reply that does not parse.
    #[error("bad reply: {0}")]
    BadReply(serde_json::Error),
    /// The VMM refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// A value could not be written as JSON.
    #[error("encoding: {0}")]
    Encode(serde_json::Error),
}

/// A request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Report state (and the protocol version).
    Status,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// Replace a drive's backing file; the guest gets a config-change interrupt
    /// and sees the new size.
    SwapDrive {
        /// Drive ID.
        id: String,
        /// New backing file.
        path: PathBuf,
    },
    /// Graceful shutdown: ask the guest to power off, stop it after the timeout.
    Shutdown {
        /// How long the guest gets before it is stopped (the VMM's default when
        /// absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Report what the VMM counted since it started.
    Counters,
    /// Pause the VM (it stays paused) and write its snapshot into `dir`, an
    /// existing directory without one (see [`SNAPSHOT_STATE_FILE`]).
    Snapshot {
        /// Where the snapshot files are created.
        dir: PathBuf,
    },
}

/// The snapshot file holding the vCPU, VM and device state (versioned, checksummed).
pub const SNAPSHOT_STATE_FILE: &str = "state";
/// The snapshot file holding guest memory, mapped copy-on-write by each restore.
pub const SNAPSHOT_MEMORY_FILE: &str = "memory";

/// The reply to [`Request::Snapshot`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SnapshotReply {
    /// Guest memory in bytes (the memory file's length).
    pub memory_bytes: u64,
    /// Bytes the memory file takes on disk (pages the guest never wrote are holes).
    pub memory_file_bytes: u64,
    /// The state file's length.
    pub state_bytes: u64,
    /// How long the snapshot took, pause included.
    pub took_ms: u64,
}

/// The vCPUs' requested run state.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Running the guest.
    Running,
    /// Paused.
    Paused,
    /// Stopping.
    Stopped,
}

/// One drive in the status reply.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct DriveStatus {
    /// Drive ID.
    pub id: String,
    /// Current backing file.
    pub path: PathBuf,
    /// Whether guest writes are refused.
    pub read_only: bool,
    /// Size in 512-byte sectors.
    pub sectors: u64,
}

/// The reply to [`Request::Status`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatusReply {
    /// The VMM's protocol version.
    pub version: u32,
    /// Run state.
    pub state: VmState,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Drives, sorted by ID.
    pub drives: Vec<DriveStatus>,
}

/// The reply to [`Request::SwapDrive`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SwapDriveReply {
    /// The new backing file's size in 512-byte sectors.
    pub sectors: u64,
}

/// The reply to [`Request::Counters`]: what the VMM counted since it started. Every
/// count only grows. Fields a VMM does not report read as zero (or empty).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct CountersReply {
    /// vCPU exits to the VMM by kind, over all vCPUs: `io_in`, `io_out`,
    /// `mmio_read`, `mmio_write` (device register accesses), `interrupted` (a
    /// signal, as for pause), `other`.
    pub exits: BTreeMap<String, u64>,
    /// Block devices by drive ID.
    pub block: BTreeMap<String, BlockCounters>,
    /// Network cards by name (`net0`, ... in the order they were given).
    pub net: BTreeMap<String, NetCounters>,
    /// The vsock device, if the VM has one.
    pub vsock: Option<VsockCounters>,
}

/// What one block device counted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct BlockCounters {
    /// Queue notifications (guest kicks).
    pub queue_notifications: u64,
    /// Bytes read for the guest.
    pub read_bytes: u64,
    /// Read requests that succeeded.
    pub read_ops: u64,
    /// Bytes written for the guest.
    pub write_bytes: u64,
    /// Write requests that succeeded.
    pub write_ops: u64,
    /// Flush requests that succeeded.
    pub flush_ops: u64,
}

/// What one network card counted (frames without their virtio-net header).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct NetCounters {
    /// Queue notifications (guest kicks) of both queues.
    pub queue_notifications: u64,
    /// Bytes handed to the guest.
    pub rx_bytes: u64,
    /// Frames handed to the guest.
    pub rx_packets: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Frames the guest sent that were dropped (malformed, or refused by the tap).
    pub tx_dropped: u64,
    /// Frames dropped on the way in (the guest's receive buffers were unusable).
    pub rx_dropped: u64,
}

/// What the vsock device counted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct VsockCounters {
    /// Queue notifications (guest kicks).
    pub queue_notifications: u64,
    /// Connections host clients opened to the guest.
    pub connections_from_host: u64,
    /// Connections the guest opened to host sockets.
    pub connections_from_guest: u64,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done, nothing to report (pause, resume, shutdown).
    Done,
    /// The status.
    Status(StatusReply),
    /// The drive was swapped.
    SwapDrive(SwapDriveReply),
    /// The counters.
    Counters(CountersReply),
    /// The snapshot was written.
    Snapshot(SnapshotReply),
}

fn parse_object(line: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    match serde_json::from_slice::<Value>(line).map_err(ProtocolError::NotJson)? {
        Value::Object(map) => Ok(map),
        _ => Err(ProtocolError::NotObject),
    }
}

fn to_object(value: impl Serialize) -> Result<Map<String, Value>, ProtocolError> {
    match serde_json::to_value(value).map_err(ProtocolError::Encode)? {
        Value::Object(map) => Ok(map),
        _ => Err(ProtocolError::NotObject),
    }
}

fn check_version(version: Option<&Value>) -> Result<(), ProtocolError> {
    match version {
        None => Ok(()),
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => Ok(()),
        Some(v) => Err(ProtocolError::Version { got: v.to_string() }),
    }
}

impl Request {
    /// The command name, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::SwapDrive { .. } => "swap_drive",
            Request::Shutdown { .. } => "shutdown",
            Request::Counters => "counters",
            Request::Snapshot { .. } => "snapshot",
        }
    }

    /// The request line (without the newline), with the protocol version.
    pub fn encode(&self) -> Result<String, ProtocolError> {
        let mut map = to_object(self)?;
        map.insert(VERSION_KEY.to_owned(), Value::from(PROTOCOL_VERSION));
        Ok(Value::Object(map).to_string())
    }

    /// Reads a request line; refuses another protocol version.
    pub fn decode(line: &[u8]) -> Result<Request, ProtocolError> {
        let mut map = parse_object(line)?;
        check_version(map.remove(VERSION_KEY).as_ref())?;
        let request =
            Request::deserialize(Value::Object(map.clone())).map_err(ProtocolError::BadRequest)?;
        // serde lets unknown fields through on the unit variants of a tagged enum:
        // a field the request does not write back is one it does not know.
        let known = to_object(&request)?;
        if let Some(field) = map
            .iter()
            .find(|(k, v)| !v.is_null() && !known.contains_key(*k))
            .map(|(k, _)| k)
        {
            return Err(ProtocolError::BadRequest(serde::de::Error::custom(
                format_args!("unknown field `{field}` in {}", request.name()),
            )));
        }
        Ok(request)
    }
}

impl Response {
    /// The reply line (without the newline).
    pub fn encode(&self) -> Result<String, ProtocolError> {
        let mut map = match self {
            Response::Done => Map::new(),
            Response::Status(s) => to_object(s)?,
            Response::SwapDrive(s) => to_object(s)?,
            Response::Counters(c) => to_object(c)?,
            Response::Snapshot(s) => to_object(s)?,
        };
        map.insert(OK_KEY.to_owned(), Value::Bool(true));
        Ok(Value::Object(map).to_string())
    }

    /// The reply line (without the newline) that refuses a request.
    pub fn encode_error(message: &str) -> String {
        let mut map = Map::new();
        map.insert(OK_KEY.to_owned(), Value::Bool(false));
        map.insert(ERROR_KEY.to_owned(), Value::from(message));
        Value::Object(map).to_string()
    }

    /// Reads the reply to `request`: a refusal is [`ProtocolError::Refused`], a
    /// status of another protocol version [`ProtocolError::Version`].
    pub fn decode(request: &Request, line: &[u8]) -> Result<Response, ProtocolError> {
        let mut map = parse_object(line)?;
        match map.remove(OK_KEY) {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                let error = match map.remove(ERROR_KEY) {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => "(no reason given)".to_owned(),
                };
                return Err(ProtocolError::Refused(error));
            }
            _ => {
                return Err(ProtocolError::BadReply(serde::de::Error::missing_field(
                    OK_KEY,
                )))
            }
        }
        fn body<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ProtocolError> {
            T::deserialize(Value::Object(map)).map_err(ProtocolError::BadReply)
        }
        Ok(match request {
            Request::Status => {
                check_version(Some(map.get(VERSION_KEY).unwrap_or(&Value::Null)))?;
                Response::Status(body(map)?)
            }
            Request::SwapDrive { .. } => Response::SwapDrive(body(map)?),
            Request::Counters => Response::Counters(body(map)?),
            Request::Snapshot { .. } => Response::Snapshot(body(map)?),
            Request::Pause | Request::Resume | Request::Shutdown { .. } => Response::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Status,
            Request::Pause,
            Request::Resume,
            Request::SwapDrive {
                id: "slot0".into(),
                path: "/img/a.erofs".into(),
            },
            Request::Shutdown { timeout_ms: None },
            Request::Shutdown {
                timeout_ms: Some(5000),
            },
            Request::Counters,
            Request::Snapshot {
                dir: "/var/lib/vmlet/templates/t1".into(),
            },
        ]
    }

    fn status() -> StatusReply {
        StatusReply {
            version: PROTOCOL_VERSION,
            state: VmState::Paused,
            vcpus: 2,
            mem_mib: 256,
            drives: vec![DriveStatus {
                id: "scratch".into(),
                path: "/p/scratch.ext4".into(),
                read_only: false,
                sectors: 2048,
            }],
        }
    }

    fn counters() -> CountersReply {
        CountersReply {
            exits: [("io_out".to_owned(), 7), ("mmio_write".to_owned(), 3)].into(),
            block: [(
                "scratch".to_owned(),
                BlockCounters {
                    queue_notifications: 4,
                    read_bytes: 4096,
                    read_ops: 1,
                    ..BlockCounters::default()
                },
            )]
            .into(),
            net: [(
                "net0".to_owned(),
                NetCounters {
                    tx_packets: 2,
                    tx_bytes: 84,
                    ..NetCounters::default()
                },
            )]
            .into(),
            vsock: Some(VsockCounters {
                connections_from_host: 5,
                ..VsockCounters::default()
            }),
        }
    }

    #[test]
    fn counters_of_a_newer_vmm_read_what_this_side_knows() {
        let line = br#"{"ok":true,"exits":{"io_in":1},"block":{"d":{"read_ops":2,"discard_ops":9}},"gpu":{}}"#;
        match Response::decode(&Request::Counters, line).unwrap() {
            Response::Counters(c) => {
                assert_eq!(c.exits["io_in"], 1);
                assert_eq!(c.block["d"].read_ops, 2);
                assert!(c.net.is_empty() && c.vsock.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_request_round_trips_with_its_version() {
        for r in requests() {
            let line = r.encode().unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v[VERSION_KEY], PROTOCOL_VERSION, "{line}");
            assert_eq!(v["cmd"], r.name(), "{line}");
            assert_eq!(Request::decode(line.as_bytes()).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn documented_lines_without_a_version_are_read() {
        let cases = [
            (r#"{"cmd":"status"}"#, Request::Status),
            (r#"{"cmd":"pause"}"#, Request::Pause),
            (r#"{"cmd":"resume"}"#, Request::Resume),
            (
                r#"{"cmd":"swap_drive","id":"rootfs","path":"new.img"}"#,
                Request::SwapDrive {
                    id: "rootfs".into(),
                    path: "new.img".into(),
                },
            ),
            (
                r#"{"cmd":"shutdown","timeout_ms":5000}"#,
                Request::Shutdown {
                    timeout_ms: Some(5000),
                },
            ),
            (r#"{"cmd":"counters"}"#, Request::Counters),
            (
                r#"{"cmd":"snapshot","dir":"/t"}"#,
                Request::Snapshot { dir: "/t".into() },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Request::decode(line.as_bytes()).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        for line in [
            r#"{"cmd":"explode"}"#,
            r#"{"cmd":"swap_drive","id":"a"}"#,
            r#"{"cmd":"status","bogus":1}"#,
        ] {
            assert!(
                matches!(
                    Request::decode(line.as_bytes()),
                    Err(ProtocolError::BadRequest(_))
                ),
                "{line}"
            );
        }
        assert!(matches!(
            Request::decode(b"status"),
            Err(ProtocolError::NotJson(_))
        ));
        assert!(matches!(
            Request::decode(b"[1]"),
            Err(ProtocolError::NotObject)
        ));
    }

    #[test]
    fn version_mismatch_is_refused() {
        for line in [
            r#"{"version":2,"cmd":"status"}"#,
            r#"{"version":"1","cmd":"status"}"#,
            r#"{"version":0,"cmd":"pause"}"#,
        ] {
            let e = Request::decode(line.as_bytes()).unwrap_err();
            assert!(matches!(e, ProtocolError::Version { .. }), "{line}: {e}");
            assert!(e.to_string().contains("is not supported"), "{e}");
        }
        let e = Request::decode(br#"{"version":2,"cmd":"status"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "control protocol version 2 is not supported: this side speaks version {PROTOCOL_VERSION}"
            )
        );
        // A status reply from a VMM of another version (or of none) is refused too.
        let mut other = status();
        other.version = PROTOCOL_VERSION + 1;
        let line = Response::Status(other).encode().unwrap();
        assert!(matches!(
            Response::decode(&Request::Status, line.as_bytes()),
            Err(ProtocolError::Version { .. })
        ));
        assert!(matches!(
            Response::decode(
                &Request::Status,
                br#"{"ok":true,"state":"running","vcpus":1,"mem_mib":128,"drives":[]}"#
            ),
            Err(ProtocolError::Version { .. })
        ));
    }

    #[test]
    fn every_response_round_trips() {
        let cases = [
            (Request::Status, Response::Status(status())),
            (
                Request::SwapDrive {
                    id: "a".into(),
                    path: "/b".into(),
                },
                Response::SwapDrive(SwapDriveReply { sectors: 8 }),
            ),
            (Request::Pause, Response::Done),
            (Request::Resume, Response::Done),
            (Request::Shutdown { timeout_ms: None }, Response::Done),
            (Request::Counters, Response::Counters(counters())),
            (
                Request::Counters,
                Response::Counters(CountersReply::default()),
            ),
            (
                Request::Snapshot { dir: "/t".into() },
                Response::Snapshot(SnapshotReply {
                    memory_bytes: 128 << 20,
                    memory_file_bytes: 30 << 20,
                    state_bytes: 70_000,
                    took_ms: 140,
                }),
            ),
        ];
        for (request, response) in cases {
            let line = response.encode().unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v[OK_KEY], true, "{line}");
            assert_eq!(
                Response::decode(&request, line.as_bytes()).unwrap(),
                response,
                "{line}"
            );
        }
        for state in [VmState::Running, VmState::Paused, VmState::Stopped] {
            let r = Response::Status(StatusReply { state, ..status() });
            let line = r.encode().unwrap();
            assert_eq!(
                Response::decode(&Request::Status, line.as_bytes()).unwrap(),
                r
            );
        }
    }

    #[test]
    fn wire_format_is_the_documented_one() {
        assert_eq!(Response::Done.encode().unwrap(), r#"{"ok":true}"#);
        assert_eq!(
            Response::SwapDrive(SwapDriveReply { sectors: 8 })
                .encode()
                .unwrap(),
            r#"{"ok":true,"sectors":8}"#
        );
        let v: Value = serde_json::from_str(&Response::Status(status()).encode().unwrap()).unwrap();
        assert_eq!(v["state"], "paused");
        assert_eq!(v["drives"][0]["sectors"], 2048);
        assert_eq!(v[VERSION_KEY], PROTOCOL_VERSION);
        let v: Value = serde_json::from_str(
            &Request::SwapDrive {
                id: "a".into(),
                path: "/b".into(),
            }
            .encode()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": PROTOCOL_VERSION, "cmd": "swap_drive", "id": "a", "path": "/b"})
        );
    }

    #[test]
    fn refusals_and_bad_replies() {
        let line = Response::encode_error("no drive with id \"x\"");
        assert_eq!(line, r#"{"error":"no drive with id \"x\"","ok":false}"#);
        match Response::decode(&Request::Pause, line.as_bytes()) {
            Err(ProtocolError::Refused(m)) => assert_eq!(m, "no drive with id \"x\""),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Response::decode(&Request::Pause, br#"{"state":"running"}"#),
            Err(ProtocolError::BadReply(_))
        ));
        let swap = Request::SwapDrive {
            id: "a".into(),
            path: "/b".into(),
        };
        assert!(matches!(
            Response::decode(&swap, br#"{"ok":true}"#),
            Err(ProtocolError::BadReply(_))
        ));
    }
}
