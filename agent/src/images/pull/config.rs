//! Per-registry settings from the daemon config.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Settings for one registry host (`docker.io`, `registry.local:5000`), from the
/// daemon config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryHost {
    /// Speak plain HTTP instead of HTTPS (local and test registries).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub skip_tls_verify: bool,
    /// Hosts to try first, in order; the registry itself is tried last.
    pub mirrors: Vec<String>,
}

/// Per-registry settings, keyed by registry host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Settings by host.
    pub hosts: HashMap<String, RegistryHost>,
}

impl RegistriesConfig {
    pub(super) fn host(&self, host: &str) -> RegistryHost {
        self.hosts.get(host).cloned().unwrap_or_default()
    }
}
