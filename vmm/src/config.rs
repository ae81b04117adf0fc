//! VM configuration: a JSON file, command-line flags, or both (flags win).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Smallest guest memory that boots our kernel and initramfs.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest memory we accept (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// A block device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Existing tap device name (in the VMM's network namespace).
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
}

/// The vsock device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context ID (3 or more).
    pub cid: u64,
    /// Host unix socket for hybrid vsock.
    pub uds_path: PathBuf,
}

/// Where the serial console goes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Default)]
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

/// Everything needed to build a VM.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
    /// Serial console destination.
    #[serde(default)]
    pub serial: SerialOutput,
    /// Control socket path.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Install seccomp filters (only tests and debugging turn this off).
    #[serde(default = "default_true")]
    pub seccomp: bool,
}

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u64 {
    128
}
fn default_true() -> bool {
    true
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
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
    #[error("drive id {0:?} must be 1 to 20 characters")]
    DriveId(String),
    /// Bad MAC address.
    #[error("invalid MAC address {0:?} (expected aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    /// Bad vsock CID.
    #[error("vsock cid must be between 3 and 4294967294, got {0}")]
    Cid(u64),
    /// More devices than IRQ lines.
    #[error("too many devices: {0} virtio devices, at most {1}")]
    TooManyDevices(usize, usize),
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
            vcpus: default_vcpus(),
            mem_mib: default_mem(),
            drives: Vec::new(),
            net: Vec::new(),
            vsock: None,
            rng: true,
            free_page_reporting: false,
            huge_pages: false,
            serial: SerialOutput::Stdout,
            control_socket: None,
            seccomp: true,
        }
    }

    /// Number of virtio devices this configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
            + usize::from(self.free_page_reporting)
    }

    /// Checks everything that does not need the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max = crate::arch::layout::MAX_VCPUS;
        if self.vcpus == 0 || self.vcpus > max {
            return Err(ConfigError::Vcpus {
                got: self.vcpus,
                max,
            });
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        let mut ids = std::collections::HashSet::new();
        for d in &self.drives {
            if d.id.is_empty() || d.id.len() > 20 {
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
        let irqs = crate::arch::layout::IOAPIC_PINS - crate::arch::layout::VIRTIO_IRQ_BASE;
        if self.virtio_device_count() > irqs as usize {
            return Err(ConfigError::TooManyDevices(
                self.virtio_device_count(),
                irqs as usize,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_with_defaults() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k","serial":"off"}"#).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.mem_mib, 128);
        assert!(c.rng);
        assert_eq!(c.serial, SerialOutput::Off);
        let f: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","serial":{"file":"/x"}}"#).unwrap();
        assert_eq!(f.serial, SerialOutput::File("/x".into()));
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).is_err());
    }

    #[test]
    fn validation() {
        let mut c = VmConfig::new("/k".into());
        assert!(c.validate().is_ok());
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus { .. })));
        c.vcpus = 2;
        c.mem_mib = 1;
        assert_eq!(c.validate(), Err(ConfigError::Memory(1)));
        c.mem_mib = 256;
        let d = DriveConfig {
            id: "a".into(),
            path: "/a".into(),
            read_only: false,
        };
        c.drives = vec![d.clone(), d];
        assert_eq!(c.validate(), Err(ConfigError::DuplicateDrive("a".into())));
        c.drives.clear();
        c.net = vec![NetConfig {
            tap: "t".into(),
            mac: Some("zz:00:00:00:00:00".into()),
        }];
        assert!(matches!(c.validate(), Err(ConfigError::Mac(_))));
        c.net.clear();
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds_path: "/v".into(),
        });
        assert_eq!(c.validate(), Err(ConfigError::Cid(2)));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:0a:0B:ff").unwrap(),
            [2, 0, 0, 10, 11, 255]
        );
        assert!(parse_mac("02:00:00:0a:0b").is_err());
        assert!(parse_mac("002:00:00:0a:0b:0c").is_err());
    }
}
