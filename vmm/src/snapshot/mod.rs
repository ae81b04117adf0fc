//! Snapshots of a paused VM, and the files a restore reads them from.
//!
//! A snapshot is a directory with two files:
//! - `state`: the vCPUs, the VM (PIT, kvm-clock, interrupt controllers), every
//!   device (virtio-mmio transports with their queues, the serial console) and the
//!   memory layout. It starts with the line `vmlet-snapshot`, then a header line
//!   `{"format":N,"length":L,"sha256":"..."}`, then L bytes of JSON. A restore
//!   refuses another format version (the state's shape changes with it: take a new
//!   snapshot) and a body whose length or digest differs (truncated or corrupted).
//!   JSON rather than a compact binary form: the state is small next to guest memory,
//!   and an operator can read it.
//! - `memory`: guest RAM ([`memory`]), mapped copy-on-write by every restore.
//!
//! Snapshot files are trusted input, like the kernel: whoever can write them
//! controls the guest. The digest guards against accidents, not attacks; they live
//! under vmletd's private state directory. Guest memory has no digest (reading it
//! whole at each restore would undo the point of mapping it); its length is checked,
//! since a short file would fault the VMM.
//!
//! The snapshot is taken on the event-loop thread with the vCPUs parked, so that
//! neither the driver nor a device moves while it is read. A VM with virtio-fs is
//! never snapshotted: its backend holds the rings and maps guest memory itself.

pub mod memory;

use crate::devices::legacy::{SerialConsole, SerialSnapshot};
use crate::devices::virtio::mmio::{MmioTransport, TransportState};
use crate::vstate::vcpu::{VcpuError, Vcpus};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::{Vm, VmError, VmState};
use memory::{MemoryFileError, RegionState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmlet_vmm_api::control::{SnapshotReply, SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE};

/// The state file's format version. Bump it with any change to [`VmSnapshot`] or
/// the states it holds.
pub const FORMAT_VERSION: u32 = 1;
/// The state file's first line.
const MAGIC: &str = "vmlet-snapshot";
/// Largest state body read (255 vCPUs take a few MiB).
const MAX_STATE_BYTES: u64 = 64 << 20;
/// How long the vCPUs get to park and to report their state.
const VCPU_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM cannot be snapshotted as configured.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The vCPUs could not be paused or read.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The VM state could not be read.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The memory file.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// The state file could not be written or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The state file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is not one this VMM reads.
    #[error("{path} is not a usable snapshot: {reason}")]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state could not be written as JSON.
    #[error("encoding the snapshot state: {0}")]
    Encode(serde_json::Error),
}

/// A virtio device's transport, by the name a snapshot gives it.
pub type NamedTransport = (String, Arc<Mutex<MmioTransport>>);

/// What a snapshot reads.
pub struct SnapshotSources {
    /// The KVM VM.
    pub vm: Arc<Vm>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The virtio devices, in wiring order.
    pub devices: Vec<NamedTransport>,
    /// COM1.
    pub serial: Arc<Mutex<SerialConsole>>,
    /// Whether guest RAM is shared with other processes (virtio-fs).
    pub shared_memory: bool,
}

/// One virtio device in the snapshot, in the order the VM wires them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// What it is, as the configuration names it (`drive scratch`, `net0`,
    /// `vsock`, ...): a restore must configure the same list.
    pub name: String,
    /// Its transport and device state.
    pub transport: TransportState,
}

/// Everything but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The VMM that took it (for the operator; the format version decides).
    pub vmm_version: String,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Guest RAM regions in the memory file.
    pub memory: Vec<RegionState>,
    /// PIT, clock, interrupt controllers.
    pub vm: VmState,
    /// Each vCPU, by index.
    pub vcpu_states: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// The virtio devices.
    pub devices: Vec<DeviceSnapshot>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u32,
    length: u64,
    sha256: String,
}

/// The VMM's version, as `--version` prints it.
pub fn vmm_version() -> String {
    format!(
        "{} (git {})",
        env!("CARGO_PKG_VERSION"),
        env!("VMLET_GIT_REVISION")
    )
}

/// Writes `state` as a new state file at `path` (mode 0600); returns its length.
pub fn write_state(path: &Path, state: &VmSnapshot) -> Result<u64, SnapshotError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op| {
        move |source| SnapshotError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let body = serde_json::to_vec(state).map_err(SnapshotError::Encode)?;
    let header = Header {
        format: FORMAT_VERSION,
        length: body.len() as u64,
        sha256: hex::encode(Sha256::digest(&body)),
    };
    let header = serde_json::to_string(&header).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(body.len() + header.len() + MAGIC.len() + 2);
    out.extend_from_slice(MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(header.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&body);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    file.write_all(&out).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    Ok(out.len() as u64)
}

/// Reads and checks the state file at `path`.
pub fn read_state(path: &Path) -> Result<VmSnapshot, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| SnapshotError::Io {
        op: "open",
        path: path.to_owned(),
        source,
    })?;
    // Bounded: the header lines are short, the body at most MAX_STATE_BYTES.
    let mut reader = std::io::BufReader::new(file.take(MAX_STATE_BYTES + 4096));
    let mut line = Vec::new();
    let mut next_line = |what: &str| -> Result<String, SnapshotError> {
        line.clear();
        (&mut reader)
            .take(1024)
            .read_until(b'\n', &mut line)
            .map_err(|e| invalid(format!("reading its {what}: {e}")))?;
        if line.pop() != Some(b'\n') {
            return Err(invalid(format!("no {what} line (truncated?)")));
        }
        String::from_utf8(line.clone()).map_err(|_| invalid(format!("its {what} is not text")))
    };
    if next_line("first")? != MAGIC {
        return Err(invalid(format!("it does not start with {MAGIC:?}")));
    }
    let header: Header = serde_json::from_str(&next_line("header")?)
        .map_err(|e| invalid(format!("bad header: {e}")))?;
    if header.format != FORMAT_VERSION {
        return Err(invalid(format!(
            "it is in snapshot format {}, this VMM reads format {FORMAT_VERSION}: take a new snapshot with this VMM",
            header.format
        )));
    }
    if header.length > MAX_STATE_BYTES {
        return Err(invalid(format!(
            "its state of {} bytes is over the limit of {MAX_STATE_BYTES}",
            header.length
        )));
    }
    let mut body = Vec::new();
    reader
        .read_to_end(&mut body)
        .map_err(|e| invalid(format!("reading its state: {e}")))?;
    if body.len() as u64 != header.length {
        return Err(invalid(format!(
            "its state is {} bytes, the header says {} (truncated?)",
            body.len(),
            header.length
        )));
    }
    if hex::encode(Sha256::digest(&body)) != header.sha256 {
        return Err(invalid(
            "its state does not match the digest in its header (corrupted)".to_owned(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| invalid(format!("its state does not parse: {e}")))
}

/// Pauses the VM of `vcpus` (it stays paused; `vcpu_count` of them, `mem_mib` of
/// memory) and writes its snapshot into `dir`. Files it made are removed again if
/// it fails.
pub fn take(
    vcpus: &Vcpus,
    sources: &SnapshotSources,
    vcpu_count: u8,
    mem_mib: u64,
    dir: &Path,
) -> Result<SnapshotReply, SnapshotError> {
    let started = Instant::now();
    if sources.shared_memory {
        return Err(SnapshotError::Unsupported(
            "a VM with virtio-fs or shared memory cannot be snapshotted",
        ));
    }
    vcpus.pause(VCPU_TIMEOUT)?;
    let vcpu_states = vcpus.save_state(VCPU_TIMEOUT)?;
    let vm = sources.vm.save_state()?;
    let devices = sources
        .devices
        .iter()
        .map(|(name, transport)| DeviceSnapshot {
            name: name.clone(),
            transport: transport.lock().unwrap_or_else(|e| e.into_inner()).save(),
        })
        .collect();
    let serial = sources
        .serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .save();
    let state = VmSnapshot {
        vmm_version: vmm_version(),
        vcpus: vcpu_count,
        mem_mib,
        memory: memory::layout(&sources.mem),
        vm,
        vcpu_states,
        serial,
        devices,
    };
    let memory_path = dir.join(SNAPSHOT_MEMORY_FILE);
    let state_path = dir.join(SNAPSHOT_STATE_FILE);
    let written = (|| {
        memory::save(&sources.mem, &memory_path)?;
        let state_bytes = write_state(&state_path, &state)?;
        let memory_file_bytes =
            memory::allocated_bytes(&memory_path).map_err(|source| SnapshotError::Io {
                op: "measure",
                path: memory_path.clone(),
                source,
            })?;
        Ok::<_, SnapshotError>((state_bytes, memory_file_bytes))
    })();
    let (state_bytes, memory_file_bytes) = match written {
        Ok(w) => w,
        Err(e) => {
            // Only files this call created: create_new refused existing ones.
            if !matches!(
                &e,
                SnapshotError::Memory(MemoryFileError::Io { op: "create", .. })
            ) {
                let _ = std::fs::remove_file(&memory_path);
                if !matches!(&e, SnapshotError::Io { op: "create", .. }) {
                    let _ = std::fs::remove_file(&state_path);
                }
            }
            return Err(e);
        }
    };
    Ok(SnapshotReply {
        memory_bytes: mem_mib << 20,
        memory_file_bytes,
        state_bytes,
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests;
