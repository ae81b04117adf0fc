//! VM configuration: a JSON file, command-line flags, or both (flags win). The
//! types live in `vmlet-vmm-api`, shared with the programs that start the VMM;
//! this module adds what only the VMM knows: the limits of its boot layout.

use crate::arch::layout::{IOAPIC_PINS, MAX_VCPUS, VIRTIO_IRQ_BASE};

pub use vmlet_vmm_api::config::{
    parse_mac, ConfigError, DriveConfig, FsConfig, Limits, NetConfig, SerialLogLimits,
    SerialOutput, VmConfig, VsockConfig, MAX_MEM_MIB, MIN_MEM_MIB,
};

/// What this VMM can build: vCPUs the MP table describes, and one IOAPIC pin
/// per virtio device above the legacy ones.
pub const LIMITS: Limits = Limits {
    max_vcpus: MAX_VCPUS,
    max_virtio_devices: (IOAPIC_PINS - VIRTIO_IRQ_BASE) as usize,
};

/// Checks everything about `config` that does not need the host.
pub fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    config.validate(&LIMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_boot_layout() {
        let mut c = VmConfig::new("/k".into());
        c.vcpus = MAX_VCPUS;
        assert!(validate(&c).is_ok());
        c.vcpus = MAX_VCPUS + 1;
        assert!(matches!(validate(&c), Err(ConfigError::Vcpus { .. })));
        c.vcpus = 1;
        c.rng = false;
        c.drives = (0..LIMITS.max_virtio_devices)
            .map(|i| DriveConfig {
                id: format!("d{i}"),
                path: "/d".into(),
                read_only: true,
            })
            .collect();
        assert!(validate(&c).is_ok());
        c.rng = true;
        assert!(matches!(validate(&c), Err(ConfigError::TooManyDevices(..))));
    }
}
