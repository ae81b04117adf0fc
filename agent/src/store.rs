//! Persisted state of pods and containers, one JSON file per object, each replaced
//! atomically (temp file, fsync, rename, fsync of the directory) so a crash at any
//! point leaves the old or the new version, never a torn one.
//!
//! ```text
//! <state>/pods/<pod id>/pod.json                     PodRecord
//! <state>/pods/<pod id>/containers/<id>.json         ContainerRecord
//! <state>/pods/<pod id>/containers/<id>.log.json     LogRecord (log copy position)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vmlet_cri::runtime::{ContainerConfig, ContainerState, PodConfig};

use crate::network::pod::PodNetRecord;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File-system error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record file is not valid JSON of its type.
    #[error("corrupt state file {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and missing parents) for root's eyes only (0700), tightening it if it
/// existed: pod state holds disks, console output and records no other user may read.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))
}

/// Creates `path` empty for root alone (0600) unless it exists, and makes it 0600: a
/// file another component opens for appending keeps the mode it was created with.
pub fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", path))
}

/// Writes `value` as JSON to `path`, atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    replace_json(path, value, true)
}

/// Writes `value` as JSON to `path`, atomically (a process killed at any point leaves
/// the old or the new file); with `sync`, also durably (it survives a host crash).
pub fn replace_json<T: Serialize>(path: &Path, value: &T, sync: bool) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let data = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("create temp file in", dir))?;
    tmp.write_all(&data).map_err(io("write", tmp.path()))?;
    if sync {
        tmp.as_file().sync_all().map_err(io("fsync", path))?;
    }
    tmp.persist(path).map_err(|e| StoreError::Io {
        op: "rename into",
        path: path.to_owned(),
        source: e.error,
    })?;
    if sync {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(())
}

/// Reads a JSON record.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let data = std::fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&data).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })
}

/// Lifecycle of a pod's VM as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// Being set up: a daemon that finds this after a crash tears it down.
    Creating,
    /// A pre-booted VM of the warm pool, not a pod yet: torn down after a crash too.
    Warm,
    /// The VM runs.
    Ready,
    /// The VM is gone (stopped, or it died).
    Stopped,
}

/// One spare image drive of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Drive ID = guest virtio-blk serial.
    pub serial: String,
    /// Image attached, if any.
    pub image_id: Option<String>,
    /// Containers using it.
    pub users: u32,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// 64-hex ID.
    pub id: String,
    /// As requested.
    pub config: PodConfig,
    /// Phase.
    pub phase: PodPhase,
    /// Unix nanoseconds.
    pub created_at_ns: i64,
    /// VM size.
    pub vcpus: u32,
    /// VM memory.
    pub mem_mib: u64,
    /// The VMM's pid while it runs.
    pub vmm_pid: Option<u32>,
    /// Image drives.
    pub slots: Vec<SlotRecord>,
    /// Why the VM is gone, when it went by itself.
    pub vm_exit: Option<String>,
    /// Its network (none without pod networking).
    #[serde(default)]
    pub network: Option<PodNetRecord>,
    /// The pod has a shared file system (a virtiofsd serving `shared/`).
    #[serde(default)]
    pub shared_fs: bool,
    /// The identity its VMM's jail runs as (None: not jailed).
    #[serde(default)]
    pub jail: Option<JailRecord>,
    /// Its host cgroup (None: it has none).
    #[serde(default)]
    pub cgroup: Option<crate::sandbox::cgroup::PodCgroup>,
}

/// The identity a pod's VMM runs as, kept so that a restarted daemon never gives it
/// to another pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailRecord {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
}

/// What the guest needs again to exec in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Signal number StopContainer sends first.
    pub stop_signal: u32,
    /// Capability sets (None in records of older versions: the guest's default).
    #[serde(default)]
    pub capabilities: Option<crate::runtime::security::CapSets>,
    /// Compiled seccomp filter (empty: none).
    #[serde(default)]
    pub seccomp_filter: Vec<u8>,
    /// `no_new_privs`.
    #[serde(default)]
    pub no_new_privs: bool,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64-hex ID.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// As requested.
    pub config: ContainerConfig,
    /// Resolved image ID.
    pub image_id: String,
    /// Image drive serial.
    pub slot: String,
    /// Process settings.
    pub process: ProcessRecord,
    /// State.
    pub state: ContainerState,
    /// Unix nanoseconds.
    pub created_at_ns: i64,
    /// Started.
    pub started_at_ns: i64,
    /// Finished.
    pub finished_at_ns: i64,
    /// Exit code.
    pub exit_code: i32,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Full log path ("" = none).
    pub log_path: String,
    /// When the guest says the process ended, by the guest's clock (0: not known).
    #[serde(default)]
    pub guest_finished_at_ns: i64,
    /// When the guest's exit report reached vmletd (Unix ns, 0: not yet); with
    /// `finished_at_ns`, when it was recorded, this shows where an exit was late.
    #[serde(default)]
    pub exit_seen_at_ns: i64,
    /// How each mount reaches the guest.
    #[serde(default)]
    pub volumes: Vec<crate::volumes::Planned>,
}

/// Where a container's log copy stands: the next byte to read of each stream and the
/// log file's length after the last copied byte. On restart the file is cut back to
/// `log_len` and reading resumes at the offsets, so nothing is lost or doubled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// stdout offset.
    pub stdout: u64,
    /// stderr offset.
    pub stderr: u64,
    /// Log file length.
    pub log_len: u64,
    /// Both streams ended and everything is copied.
    pub done: bool,
}

/// Paths of one pod's state.
#[derive(Debug, Clone)]
pub struct PodPaths {
    /// `<state>/pods/<id>`.
    pub dir: PathBuf,
    /// `<runtime>/pods/<id>`: the VM's sockets.
    pub run_dir: PathBuf,
}

impl PodPaths {
    /// Paths of pod `id`.
    pub fn new(state_dir: &Path, runtime_dir: &Path, id: &str) -> Self {
        Self {
            dir: state_dir.join("pods").join(id),
            run_dir: runtime_dir.join("pods").join(id),
        }
    }
    /// The pod record.
    pub fn record(&self) -> PathBuf {
        self.dir.join("pod.json")
    }
    /// Directory of the container records.
    pub fn containers(&self) -> PathBuf {
        self.dir.join("containers")
    }
    /// A container record.
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(format!("{id}.json"))
    }
    /// A container's log position.
    pub fn log(&self, id: &str) -> PathBuf {
        self.containers().join(format!("{id}.log.json"))
    }
    /// Scratch disk.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch.ext4")
    }
    /// Placeholder backing file of empty image slots.
    pub fn placeholder(&self) -> PathBuf {
        self.dir.join("empty.img")
    }
    /// Serial console log.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The VMM's own stdout/stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// The VMM's exit record: its status and why, written as its last act.
    pub fn vmm_exit(&self) -> PathBuf {
        self.dir.join("vmm-exit")
    }
    /// Hybrid vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.run_dir.join("vsock")
    }
    /// VMM control socket.
    pub fn control(&self) -> PathBuf {
        self.run_dir.join("ctl")
    }
}

/// IDs of the pods recorded under `state_dir`.
pub fn pod_ids(state_dir: &Path) -> Result<Vec<String>, StoreError> {
    let dir = state_dir.join("pods");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", &dir)(e)),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Container records of a pod.
pub fn container_records(paths: &PodPaths) -> Result<Vec<ContainerRecord>, StoreError> {
    let dir = paths.containers();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") && !name.ends_with(".log.json") {
            out.push(read_json(&e.path())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        let rec = LogRecord {
            stdout: 5,
            stderr: 7,
            log_len: 99,
            done: false,
        };
        write_json(&p, &rec).unwrap();
        write_json(&p, &rec).unwrap();
        assert_eq!(read_json::<LogRecord>(&p).unwrap(), rec);
        // Only the file itself: no temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&p, b"{").unwrap();
        assert!(matches!(
            read_json::<LogRecord>(&p),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn lists_pods_and_containers() {
        let dir = tempfile::tempdir().unwrap();
        assert!(pod_ids(dir.path()).unwrap().is_empty());
        let paths = PodPaths::new(dir.path(), dir.path(), "p1");
        std::fs::create_dir_all(paths.containers()).unwrap();
        write_json(&paths.log("c1"), &LogRecord::default()).unwrap();
        assert_eq!(pod_ids(dir.path()).unwrap(), vec!["p1".to_string()]);
        assert!(container_records(&paths).unwrap().is_empty());
    }
}
