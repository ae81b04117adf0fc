//! The launch configuration of one VM: what `vmlet-vmm --config FILE` reads as
//! JSON, and what its flags set. The flags that take `key=value` lists
//! (`--drive`, `--net`, `--vsock`, `--fs`) and `--serial` parse and print their values
//! here, so the VMM's parser and the clients' printer cannot disagree.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Smallest guest memory that boots our kernel and initramfs.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest memory we accept (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Longest drive ID (the virtio-blk serial holds 20 bytes).
pub const MAX_DRIVE_ID_LEN: usize = 20;
/// Largest head or tail of the serial console's log file (the tail is held in
/// memory).
pub const MAX_SERIAL_LOG_PART: u64 = 64 << 20;
/// Longest virtio-fs tag (the device configuration holds 36 bytes, virtio 1.2, 5.11.4).
pub const MAX_FS_TAG_LEN: usize = 36;
/// Most request queues of one virtio-fs device.
pub const MAX_FS_REQUEST_QUEUES: u16 = 16;
/// Default request queues of a virtio-fs device.
pub const DEFAULT_FS_REQUEST_QUEUES: u16 = 1;
/// Largest virtio-fs queue (the split-ring maximum).
pub const MAX_FS_QUEUE_SIZE: u16 = 32768;
/// Smallest virtio-fs queue we accept.
pub const MIN_FS_QUEUE_SIZE: u16 = 2;
/// Default virtio-fs queue size.
pub const DEFAULT_FS_QUEUE_SIZE: u16 = 1024;

/// A block device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Name used by the control socket (and returned as the virtio-blk serial).
    pub id: String,
    /// Backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

/// A network card on a tap device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Existing tap device name (in the VMM's network namespace).
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub mac: Option<String>,
    /// Offer the guest no checksum or segmentation offloads (every frame then
    /// crosses the card whole and checksummed, as on a tap without them).
    #[serde(default)]
    pub no_offloads: bool,
}

/// The vsock device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context ID (3 or more).
    pub cid: u64,
    /// Host unix socket for hybrid vsock.
    pub uds_path: PathBuf,
}

/// A virtio-fs device served by a vhost-user backend (e.g. virtiofsd).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`), 1 to 36 bytes.
    pub tag: String,
    /// The vhost-user backend's unix socket.
    pub socket: PathBuf,
    /// Request queues (besides the high-priority queue).
    #[serde(default = "default_fs_request_queues")]
    pub num_request_queues: u16,
    /// Size of every queue (a power of two).
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
}

fn default_fs_request_queues() -> u16 {
    DEFAULT_FS_REQUEST_QUEUES
}
fn default_fs_queue_size() -> u16 {
    DEFAULT_FS_QUEUE_SIZE
}

/// Where the serial console goes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    Off,
}

/// What a serial console log file keeps of a guest that writes without end: its
/// first `head_bytes` and its last `tail_bytes`, with a line between them saying
/// how many bytes were dropped.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SerialLogLimits {
    /// Bytes kept from the start.
    pub head_bytes: u64,
    /// Bytes kept from the end.
    pub tail_bytes: u64,
}

impl Default for SerialLogLimits {
    /// 1 MiB each.
    fn default() -> Self {
        SerialLogLimits {
            head_bytes: 1 << 20,
            tail_bytes: 1 << 20,
        }
    }
}

/// Everything needed to build a VM.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux` with a PVH entry point.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio).
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Extra kernel command line, appended to vmlet's defaults.
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    /// Block devices, in guest order (vda, vdb, ...).
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// Network cards.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices (vhost-user). Any of them puts guest RAM in shared memory.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// Offer a virtio-rng device.
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Offer a virtio-balloon device with free page reporting: memory the guest
    /// frees goes back to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Back guest RAM with transparent huge pages where the host allows.
    #[serde(default)]
    pub huge_pages: bool,
    /// Back guest RAM with a shared memfd even without virtio-fs devices (which
    /// need it, and get it regardless). Otherwise RAM is private anonymous memory.
    #[serde(default)]
    pub shared_memory: bool,
    /// Serial console destination.
    #[serde(default)]
    pub serial: SerialOutput,
    /// How much of the serial console a log file keeps.
    #[serde(default)]
    pub serial_log: SerialLogLimits,
    /// Control socket path.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Where the VMM writes its exit record as its last act (see [`crate::exit`]).
    #[serde(default)]
    pub exit_record: Option<PathBuf>,
    /// Install seccomp filters (only tests and debugging turn this off).
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Restore the VM from the snapshot in this directory (written by the control
    /// socket's `snapshot`) instead of booting the kernel: the kernel, initramfs and
    /// command line are then not used. The vCPUs, memory and devices must be those
    /// the snapshot was taken with (the backing files, taps and sockets may differ);
    /// guest memory maps the snapshot's memory file copy-on-write, so the files must
    /// stay unchanged while the VM runs.
    #[serde(default)]
    pub restore: Option<PathBuf>,
}

/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEM_MIB: u64 = 128;

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}
fn default_mem() -> u64 {
    DEFAULT_MEM_MIB
}
fn default_true() -> bool {
    true
}

/// What the host machine (the VMM's boot layout) allows; [`VmConfig::validate`]
/// checks a configuration against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most vCPUs.
    pub max_vcpus: u8,
    /// Most virtio devices (one interrupt line each).
    pub max_virtio_devices: usize,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {max}, got {got}")]
    Vcpus {
        /// Requested.
        got: u8,
        /// Allowed maximum.
        max: u8,
    },
    /// Memory size out of range.
    #[error("mem_mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {0}")]
    Memory(u64),
    /// Two drives share an ID.
    #[error("drive id {0:?} is used twice")]
    DuplicateDrive(String),
    /// A drive ID is empty or too long.
    #[error("drive id {0:?} must be 1 to {MAX_DRIVE_ID_LEN} characters")]
    DriveId(String),
    /// Bad MAC address.
    #[error("invalid MAC address {0:?} (expected aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    /// Bad vsock CID.
    #[error("vsock cid must be between 3 and 4294967294, got {0}")]
    Cid(u64),
    /// A virtio-fs tag is empty or too long.
    #[error("fs tag {0:?} must be 1 to {MAX_FS_TAG_LEN} bytes")]
    FsTag(String),
    /// Two virtio-fs devices share a tag.
    #[error("fs tag {0:?} is used twice")]
    DuplicateFsTag(String),
    /// Request queue count out of range.
    #[error(
        "fs {tag:?}: num_request_queues must be between 1 and {MAX_FS_REQUEST_QUEUES}, got {got}"
    )]
    FsRequestQueues {
        /// The device's tag.
        tag: String,
        /// Requested.
        got: u16,
    },
    /// Queue size out of range or not a power of two.
    #[error("fs {tag:?}: queue_size must be a power of two between {MIN_FS_QUEUE_SIZE} and {MAX_FS_QUEUE_SIZE}, got {got}")]
    FsQueueSize {
        /// The device's tag.
        tag: String,
        /// Requested.
        got: u16,
    },
    /// More devices than IRQ lines.
    #[error("too many devices: {0} virtio devices, at most {1}")]
    TooManyDevices(usize, usize),
    /// A serial log limit is too large.
    #[error("serial_log head_bytes and tail_bytes must be at most {MAX_SERIAL_LOG_PART}, got {0}")]
    SerialLog(u64),
    /// A restore asked for guest memory that other processes map.
    #[error("a VM restored from a snapshot cannot have virtio-fs devices or shared memory (its memory is a private mapping of the snapshot)")]
    RestoreSharedMemory,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(ConfigError::Mac(s.to_owned()));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(ConfigError::Mac(s.to_owned()));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| ConfigError::Mac(s.to_owned()))?;
    }
    Ok(mac)
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initramfs: None,
            cmdline: String::new(),
            vcpus: DEFAULT_VCPUS,
            mem_mib: DEFAULT_MEM_MIB,
            drives: Vec::new(),
            net: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            rng: true,
            free_page_reporting: false,
            huge_pages: false,
            shared_memory: false,
            serial: SerialOutput::Stdout,
            serial_log: SerialLogLimits::default(),
            control_socket: None,
            exit_record: None,
            seccomp: true,
            restore: None,
        }
    }

    /// Number of virtio devices this configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + self.fs.len()
            + usize::from(self.rng)
            + usize::from(self.free_page_reporting)
    }

    /// Whether guest RAM is a shared memfd (what vhost-user backends map) rather
    /// than private anonymous memory.
    pub fn uses_shared_memory(&self) -> bool {
        self.shared_memory || !self.fs.is_empty()
    }

    /// Checks everything that does not need the host, within `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > limits.max_vcpus {
            return Err(ConfigError::Vcpus {
                got: self.vcpus,
                max: limits.max_vcpus,
            });
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        let mut ids = std::collections::HashSet::new();
        for d in &self.drives {
            if d.id.is_empty() || d.id.len() > MAX_DRIVE_ID_LEN {
                return Err(ConfigError::DriveId(d.id.clone()));
            }
            if !ids.insert(&d.id) {
                return Err(ConfigError::DuplicateDrive(d.id.clone()));
            }
        }
        for n in &self.net {
            if let Some(mac) = &n.mac {
                parse_mac(mac)?;
            }
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid >= u64::from(u32::MAX) {
                return Err(ConfigError::Cid(v.cid));
            }
        }
        let mut tags = std::collections::HashSet::new();
        for f in &self.fs {
            f.validate()?;
            if !tags.insert(&f.tag) {
                return Err(ConfigError::DuplicateFsTag(f.tag.clone()));
            }
        }
        if self.virtio_device_count() > limits.max_virtio_devices {
            return Err(ConfigError::TooManyDevices(
                self.virtio_device_count(),
                limits.max_virtio_devices,
            ));
        }
        let log = self.serial_log;
        if log.head_bytes > MAX_SERIAL_LOG_PART || log.tail_bytes > MAX_SERIAL_LOG_PART {
            return Err(ConfigError::SerialLog(log.head_bytes.max(log.tail_bytes)));
        }
        if self.restore.is_some() && self.uses_shared_memory() {
            return Err(ConfigError::RestoreSharedMemory);
        }
        Ok(())
    }
}

impl FsConfig {
    /// A device with the default queues.
    pub fn new(tag: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        FsConfig {
            tag: tag.into(),
            socket: socket.into(),
            num_request_queues: DEFAULT_FS_REQUEST_QUEUES,
            queue_size: DEFAULT_FS_QUEUE_SIZE,
        }
    }

    /// Checks the tag and the queue sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG_LEN || self.tag.contains('\0') {
            return Err(ConfigError::FsTag(self.tag.clone()));
        }
        if !(1..=MAX_FS_REQUEST_QUEUES).contains(&self.num_request_queues) {
            return Err(ConfigError::FsRequestQueues {
                tag: self.tag.clone(),
                got: self.num_request_queues,
            });
        }
        if !(MIN_FS_QUEUE_SIZE..=MAX_FS_QUEUE_SIZE).contains(&self.queue_size)
            || !self.queue_size.is_power_of_two()
        {
            return Err(ConfigError::FsQueueSize {
                tag: self.tag.clone(),
                got: self.queue_size,
            });
        }
        Ok(())
    }
}

/// The names of `vmlet-vmm`'s flags (without the leading `--`). The VMM's parser
/// declares its flags with these, and [`crate::args`] prints them.
pub mod flag {
    /// JSON configuration file.
    pub const CONFIG: &str = "config";
    /// [`super::VmConfig::kernel`].
    pub const KERNEL: &str = "kernel";
    /// [`super::VmConfig::initramfs`].
    pub const INITRAMFS: &str = "initramfs";
    /// [`super::VmConfig::cmdline`].
    pub const CMDLINE: &str = "cmdline";
    /// [`super::VmConfig::vcpus`].
    pub const VCPUS: &str = "vcpus";
    /// [`super::VmConfig::mem_mib`].
    pub const MEM_MIB: &str = "mem-mib";
    /// One [`super::DriveConfig`] (repeatable).
    pub const DRIVE: &str = "drive";
    /// One [`super::NetConfig`] (repeatable).
    pub const NET: &str = "net";
    /// [`super::VsockConfig`].
    pub const VSOCK: &str = "vsock";
    /// One [`super::FsConfig`] (repeatable).
    pub const FS: &str = "fs";
    /// Sets [`super::VmConfig::shared_memory`].
    pub const SHARED_MEMORY: &str = "shared-memory";
    /// Clears [`super::VmConfig::rng`].
    pub const NO_RNG: &str = "no-rng";
    /// Sets [`super::VmConfig::free_page_reporting`].
    pub const FREE_PAGE_REPORTING: &str = "free-page-reporting";
    /// Sets [`super::VmConfig::huge_pages`].
    pub const HUGE_PAGES: &str = "huge-pages";
    /// [`super::SerialOutput`].
    pub const SERIAL: &str = "serial";
    /// [`super::SerialLogLimits`].
    pub const SERIAL_LOG: &str = "serial-log";
    /// [`super::VmConfig::control_socket`].
    pub const CONTROL_SOCKET: &str = "control-socket";
    /// [`super::VmConfig::exit_record`].
    pub const EXIT_RECORD: &str = "exit-record";
    /// Clears [`super::VmConfig::seccomp`].
    pub const NO_SECCOMP: &str = "no-seccomp";
    /// [`super::VmConfig::restore`].
    pub const RESTORE: &str = "restore";
}

/// A flag value that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    /// A key the flag does not know.
    #[error("unknown {flag} option {key:?} (use {known})")]
    UnknownKey {
        /// The flag.
        flag: &'static str,
        /// The key given.
        key: String,
        /// The keys it knows.
        known: &'static str,
    },
    /// A required key is missing.
    #[error("{flag} needs {key}=")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// A value of the wrong form.
    #[error("bad {flag} {key} {value:?}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
    },
}

fn key_values(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

impl SerialLogLimits {
    /// Parses a `--serial-log` value: `head=BYTES,tail=BYTES` (a key left out
    /// keeps its default).
    pub fn from_flag(s: &str) -> Result<Self, FlagError> {
        let mut limits = SerialLogLimits::default();
        for (k, v) in key_values(s) {
            let (key, slot) = match k {
                "head" => ("head", &mut limits.head_bytes),
                "tail" => ("tail", &mut limits.tail_bytes),
                _ => {
                    return Err(FlagError::UnknownKey {
                        flag: "serial-log",
                        key: k.to_owned(),
                        known: "head=,tail=",
                    })
                }
            };
            *slot = v.parse::<u64>().map_err(|_| FlagError::BadValue {
                flag: "serial-log",
                key,
                value: v.to_owned(),
            })?;
        }
        Ok(limits)
    }
}

impl DriveConfig {
    /// Parses a `--drive` value: `id=ID,path=FILE[,ro]`.
    pub fn from_flag(s: &str) -> Result<Self, FlagError> {
        let (mut id, mut path, mut read_only) = (None, None, false);
        for (k, v) in key_values(s) {
            match k {
                "id" => id = Some(v.to_owned()),
                "path" => path = Some(PathBuf::from(v)),
                "ro" | "read_only" => read_only = true,
                _ => {
                    return Err(FlagError::UnknownKey {
                        flag: "drive",
                        key: k.to_owned(),
                        known: "id=,path=,ro",
                    })
                }
            }
        }
        Ok(DriveConfig {
            id: id.ok_or(FlagError::Missing {
                flag: "drive",
                key: "id",
            })?,
            path: path.ok_or(FlagError::Missing {
                flag: "drive",
                key: "path",
            })?,
            read_only,
        })
    }
}

impl NetConfig {
    /// Parses a `--net` value: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,no-offloads]`.
    pub fn from_flag(s: &str) -> Result<Self, FlagError> {
        let (mut tap, mut mac, mut no_offloads) = (None, None, false);
        for (k, v) in key_values(s) {
            match k {
                "tap" => tap = Some(v.to_owned()),
                "mac" => mac = Some(v.to_owned()),
                "no-offloads" => no_offloads = true,
                _ => {
                    return Err(FlagError::UnknownKey {
                        flag: "net",
                        key: k.to_owned(),
                        known: "tap=,mac=,no-offloads",
                    })
                }
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or(FlagError::Missing {
                flag: "net",
                key: "tap",
            })?,
            mac,
            no_offloads,
        })
    }
}

impl VsockConfig {
    /// Parses a `--vsock` value: `cid=N,uds=PATH`.
    pub fn from_flag(s: &str) -> Result<Self, FlagError> {
        let (mut cid, mut uds) = (None, None);
        for (k, v) in key_values(s) {
            match k {
                "cid" => {
                    cid = Some(v.parse::<u64>().map_err(|_| FlagError::BadValue {
                        flag: "vsock",
                        key: "cid",
                        value: v.to_owned(),
                    })?)
                }
                "uds" | "uds_path" => uds = Some(PathBuf::from(v)),
                _ => {
                    return Err(FlagError::UnknownKey {
                        flag: "vsock",
                        key: k.to_owned(),
                        known: "cid=,uds=",
                    })
                }
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or(FlagError::Missing {
                flag: "vsock",
                key: "cid",
            })?,
            uds_path: uds.ok_or(FlagError::Missing {
                flag: "vsock",
                key: "uds",
            })?,
        })
    }
}

impl FsConfig {
    /// Parses a `--fs` value:
    /// `tag=TAG,socket=PATH[,num_request_queues=N][,queue_size=N]`.
    pub fn from_flag(s: &str) -> Result<Self, FlagError> {
        let number = |key: &'static str, v: &str| {
            v.parse::<u16>().map_err(|_| FlagError::BadValue {
                flag: "fs",
                key,
                value: v.to_owned(),
            })
        };
        let (mut tag, mut socket) = (None, None);
        let (mut queues, mut size) = (DEFAULT_FS_REQUEST_QUEUES, DEFAULT_FS_QUEUE_SIZE);
        for (k, v) in key_values(s) {
            match k {
                "tag" => tag = Some(v.to_owned()),
                "socket" => socket = Some(PathBuf::from(v)),
                "num_request_queues" => queues = number("num_request_queues", v)?,
                "queue_size" => size = number("queue_size", v)?,
                _ => {
                    return Err(FlagError::UnknownKey {
                        flag: "fs",
                        key: k.to_owned(),
                        known: "tag=,socket=,num_request_queues=,queue_size=",
                    })
                }
            }
        }
        Ok(FsConfig {
            tag: tag.ok_or(FlagError::Missing {
                flag: "fs",
                key: "tag",
            })?,
            socket: socket.ok_or(FlagError::Missing {
                flag: "fs",
                key: "socket",
            })?,
            num_request_queues: queues,
            queue_size: size,
        })
    }
}

impl SerialOutput {
    /// The `--serial` value that means [`SerialOutput::Stdout`].
    pub const STDOUT: &'static str = "stdout";
    /// The `--serial` value that means [`SerialOutput::Off`].
    pub const OFF: &'static str = "off";

    /// Parses a `--serial` value: `stdout`, `off`, or a file path.
    pub fn from_flag(s: &str) -> Self {
        match s {
            Self::STDOUT => SerialOutput::Stdout,
            Self::OFF => SerialOutput::Off,
            path => SerialOutput::File(path.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_vcpus: 32,
        max_virtio_devices: 19,
    };

    #[test]
    fn json_round_trip_with_defaults() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k","serial":"off"}"#).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.mem_mib, 128);
        assert!(c.rng && c.seccomp);
        assert_eq!(c.serial, SerialOutput::Off);
        let f: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","serial":{"file":"/x"}}"#).unwrap();
        assert_eq!(f.serial, SerialOutput::File("/x".into()));
        let e = serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown field `bogus`, expected one of"),
            "{e}"
        );
        let full = VmConfig {
            initramfs: Some("/i".into()),
            cmdline: "quiet".into(),
            drives: vec![DriveConfig {
                id: "a".into(),
                path: "/a".into(),
                read_only: true,
            }],
            net: vec![NetConfig {
                tap: "t".into(),
                mac: None,
                no_offloads: false,
            }],
            vsock: Some(VsockConfig {
                cid: 3,
                uds_path: "/v".into(),
            }),
            control_socket: Some("/c".into()),
            exit_record: Some("/e".into()),
            ..VmConfig::new("/k".into())
        };
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), full);
    }

    #[test]
    fn validation() {
        let mut c = VmConfig::new("/k".into());
        assert!(c.validate(&LIMITS).is_ok());
        c.vcpus = 0;
        assert!(matches!(
            c.validate(&LIMITS),
            Err(ConfigError::Vcpus { .. })
        ));
        c.vcpus = 33;
        assert!(matches!(
            c.validate(&LIMITS),
            Err(ConfigError::Vcpus { .. })
        ));
        c.vcpus = 2;
        c.mem_mib = 1;
        assert_eq!(c.validate(&LIMITS), Err(ConfigError::Memory(1)));
        c.mem_mib = 256;
        let d = DriveConfig {
            id: "a".into(),
            path: "/a".into(),
            read_only: false,
        };
        c.drives = vec![d.clone(), d];
        assert_eq!(
            c.validate(&LIMITS),
            Err(ConfigError::DuplicateDrive("a".into()))
        );
        c.drives = vec![DriveConfig {
            id: "x".repeat(21),
            path: "/a".into(),
            read_only: false,
        }];
        assert!(matches!(c.validate(&LIMITS), Err(ConfigError::DriveId(_))));
        c.drives.clear();
        c.net = vec![NetConfig {
            tap: "t".into(),
            mac: Some("zz:00:00:00:00:00".into()),
            no_offloads: false,
        }];
        assert!(matches!(c.validate(&LIMITS), Err(ConfigError::Mac(_))));
        c.net.clear();
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds_path: "/v".into(),
        });
        assert_eq!(c.validate(&LIMITS), Err(ConfigError::Cid(2)));
        c.vsock = None;
        c.net = (0..19)
            .map(|i| NetConfig {
                tap: format!("t{i}"),
                mac: None,
                no_offloads: false,
            })
            .collect();
        assert_eq!(
            c.validate(&LIMITS),
            Err(ConfigError::TooManyDevices(20, 19))
        );
    }

    #[test]
    fn fs_validation() {
        let mut c = VmConfig::new("/k".into());
        assert!(!c.uses_shared_memory());
        c.fs = vec![FsConfig::new("x".repeat(MAX_FS_TAG_LEN), "/s")];
        assert!(c.validate(&LIMITS).is_ok());
        assert!(c.uses_shared_memory());
        for bad in ["", "a\0b"] {
            c.fs[0].tag = bad.into();
            assert_eq!(c.validate(&LIMITS), Err(ConfigError::FsTag(bad.into())));
        }
        c.fs[0].tag = "x".repeat(MAX_FS_TAG_LEN + 1);
        assert!(matches!(c.validate(&LIMITS), Err(ConfigError::FsTag(_))));
        c.fs = vec![FsConfig::new("a", "/s"), FsConfig::new("a", "/t")];
        assert_eq!(
            c.validate(&LIMITS),
            Err(ConfigError::DuplicateFsTag("a".into()))
        );
        c.fs.pop();
        for q in [0, MAX_FS_REQUEST_QUEUES + 1] {
            c.fs[0].num_request_queues = q;
            assert!(matches!(
                c.validate(&LIMITS),
                Err(ConfigError::FsRequestQueues { got, .. }) if got == q
            ));
        }
        c.fs[0].num_request_queues = MAX_FS_REQUEST_QUEUES;
        for size in [0, 1, 1000, 65535] {
            c.fs[0].queue_size = size;
            assert!(matches!(
                c.validate(&LIMITS),
                Err(ConfigError::FsQueueSize { got, .. }) if got == size
            ));
        }
        for size in [MIN_FS_QUEUE_SIZE, 256, MAX_FS_QUEUE_SIZE] {
            c.fs[0].queue_size = size;
            assert!(c.validate(&LIMITS).is_ok());
        }
        let json: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","fs":[{"tag":"t","socket":"/s"}]}"#).unwrap();
        assert_eq!(json.fs, [FsConfig::new("t", "/s")]);
        assert_eq!(json.fs[0].queue_size, DEFAULT_FS_QUEUE_SIZE);
        assert_eq!(json.fs[0].num_request_queues, 1);
        let e = serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","fs":[{"tag":"t","socket":"/s","dax":1}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("unknown field `dax`"), "{e}");
        // Each fs device takes an interrupt line like any other virtio device.
        let mut c = VmConfig::new("/k".into());
        c.fs = (0..LIMITS.max_virtio_devices)
            .map(|i| FsConfig::new(format!("t{i}"), "/s"))
            .collect();
        assert_eq!(
            c.validate(&LIMITS),
            Err(ConfigError::TooManyDevices(20, 19))
        );
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:0a:0B:ff").unwrap(),
            [2, 0, 0, 10, 11, 255]
        );
        for bad in ["02:00:00:0a:0b", "002:00:00:0a:0b:0c", "02:00:00:0a:0b:zz"] {
            let e = parse_mac(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Mac(m) if m == bad),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn flag_values() {
        let d = DriveConfig::from_flag("id=root,path=/img,ro").unwrap();
        assert_eq!((d.id.as_str(), d.read_only), ("root", true));
        assert_eq!(
            DriveConfig::from_flag("path=/img"),
            Err(FlagError::Missing {
                flag: "drive",
                key: "id"
            })
        );
        let e = DriveConfig::from_flag("id=a,path=/b,bogus=1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown drive option \"bogus\" (use id=,path=,ro)"
        );
        let n = NetConfig::from_flag("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(
            NetConfig::from_flag("mac=02:00:00:00:00:01"),
            Err(FlagError::Missing {
                flag: "net",
                key: "tap"
            })
        );
        let v = VsockConfig::from_flag("cid=3,uds=/run/v.sock").unwrap();
        assert_eq!(v.cid, 3);
        assert_eq!(
            VsockConfig::from_flag("cid=x,uds=/a")
                .unwrap_err()
                .to_string(),
            "bad vsock cid \"x\""
        );
        let f = FsConfig::from_flag("tag=vol,socket=/run/fs.sock").unwrap();
        assert_eq!(f, FsConfig::new("vol", "/run/fs.sock"));
        let f = FsConfig::from_flag("tag=v,socket=/s,num_request_queues=2,queue_size=128").unwrap();
        assert_eq!((f.num_request_queues, f.queue_size), (2, 128));
        assert_eq!(
            FsConfig::from_flag("socket=/s"),
            Err(FlagError::Missing {
                flag: "fs",
                key: "tag"
            })
        );
        assert_eq!(
            FsConfig::from_flag("tag=v,socket=/s,queue_size=70000")
                .unwrap_err()
                .to_string(),
            "bad fs queue_size \"70000\""
        );
        assert!(matches!(
            FsConfig::from_flag("tag=v,socket=/s,cache=auto"),
            Err(FlagError::UnknownKey { .. })
        ));
        assert_eq!(SerialOutput::from_flag("off"), SerialOutput::Off);
        assert_eq!(SerialOutput::from_flag("stdout"), SerialOutput::Stdout);
        assert_eq!(
            SerialOutput::from_flag("/c.log"),
            SerialOutput::File("/c.log".into())
        );
    }
}
