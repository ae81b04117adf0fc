//! vmletd's configuration: a TOML file (default `/etc/vmlet/config.toml`; a missing
//! default file means all defaults) overridden by command-line flags.
//!
//! Every key, with its default and what it does: `packaging/config.toml`, which
//! `scripts/install.sh` installs as the default file (a unit test keeps it equal to
//! [`Config::default`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::images::{ImageLimits, RegistriesConfig};
use crate::network::pod::{NetworkMode, NetworkSettings};

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/vmlet/config.toml";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value makes no sense.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The configuration cannot be written as TOML.
    #[error("cannot print the configuration: {0}")]
    Print(#[from] toml::ser::Error),
}

/// VM sizing and devices of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// vCPUs of a pod without a CPU limit.
    pub vcpus: u32,
    /// MiB of a pod without a memory limit.
    pub mem_mib: u64,
    /// Smallest VM in MiB.
    pub min_mem_mib: u64,
    /// MiB added to a pod's own memory limit.
    pub overhead_mem_mib: u64,
    /// Spare image drives per pod.
    pub image_slots: u32,
    /// Size of the sparse scratch disk in MiB.
    pub scratch_mib: u64,
    /// Seconds a guest may take to boot.
    pub boot_timeout_secs: u64,
    /// Extra guest kernel command line.
    pub kernel_args: String,
    /// Guests that may boot at once (a boot storm otherwise starves every one of them).
    pub max_concurrent_boots: u32,
    /// Pre-booted VMs of the default size.
    pub warm_pool: u32,
    /// Freed guest memory goes back to the host.
    pub free_page_reporting: bool,
    /// Pods start from a snapshot of a booted guest of their shape.
    pub templates: bool,
    /// Which pods get a shared file system (virtio-fs) for hostPath and persistent
    /// volumes.
    pub shared_fs: SharedFs,
    /// The virtio-fs backend (vhost-user) run for each such pod.
    pub virtiofsd: PathBuf,
    /// Bytes a pod's console.log keeps from the start of the guest's serial output.
    pub console_log_head_bytes: u64,
    /// Bytes a pod's console.log keeps from the end of it.
    pub console_log_tail_bytes: u64,
}

/// Which pods get a shared file system (`vm.shared_fs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedFs {
    /// Pods annotated `io.vmlet.shared-fs: "true"`.
    #[default]
    Annotated,
    /// Every pod (and every warm VM).
    Always,
    /// None: hostPath and persistent volumes are refused.
    Never,
}

impl VmConfig {
    /// Whether a pod with these annotations gets a shared file system.
    pub fn shared_fs_for(&self, annotations: &std::collections::HashMap<String, String>) -> bool {
        match self.shared_fs {
            SharedFs::Always => true,
            SharedFs::Never => false,
            SharedFs::Annotated => annotations
                .get(crate::volumes::plan::SHARED_FS_ANNOTATION)
                .is_some_and(|v| v == "true"),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            mem_mib: 256,
            min_mem_mib: 128,
            overhead_mem_mib: 64,
            image_slots: 4,
            scratch_mib: 4096,
            boot_timeout_secs: 180,
            kernel_args: "quiet".to_owned(),
            max_concurrent_boots: 4,
            warm_pool: 1,
            free_page_reporting: true,
            templates: true,
            shared_fs: SharedFs::Annotated,
            virtiofsd: "/usr/lib/qemu/virtiofsd".into(),
            console_log_head_bytes: 1 << 20,
            console_log_tail_bytes: 1 << 20,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// CRI socket.
    pub socket: PathBuf,
    /// Permission bits of the CRI socket.
    pub socket_mode: u32,
    /// Persistent state.
    pub state_dir: PathBuf,
    /// Runtime sockets.
    pub runtime_dir: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// vmlet-vmm binary.
    pub vmm: PathBuf,
    /// Log filter.
    pub log_level: String,
    /// Pod networking.
    pub network: NetworkSettings,
    /// Pod VMs.
    pub vm: VmConfig,
    /// Registries.
    pub registries: RegistriesConfig,
    /// Image size limits.
    pub images: ImageLimits,
    /// Container volumes.
    pub volumes: VolumesConfig,
    /// The streaming server (exec, attach, port-forward).
    pub streaming: StreamingConfig,
    /// Containers' security contexts.
    pub security: SecurityConfig,
    /// How VMMs are jailed.
    pub jail: crate::sandbox::jail::JailConfig,
    /// The pods' host cgroups.
    pub cgroups: crate::sandbox::cgroup::CgroupsConfig,
    /// RuntimeClass handlers by name (`[runtimes.NAME]`).
    pub runtimes: std::collections::BTreeMap<String, RuntimeClassConfig>,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
}

/// `[metrics]`: where vmletd serves its figures for Prometheus (`GET /metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address (IP and port); none: no endpoint.
    pub address: Option<std::net::SocketAddr>,
}

/// `[runtimes.NAME]`: what a RuntimeClass handler changes of the default VM; a key
/// left out is the top-level one (`warm_pool`: 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeClassConfig {
    /// vCPUs of a pod without a CPU limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// MiB of a pod without a memory limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    /// Guest kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Guest kernel command line added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// Pre-booted VMs of this handler's default size.
    pub warm_pool: u32,
    /// Whether its pods start from templates (`vm.templates` when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates: Option<bool>,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Localhost seccomp profiles must lie below this directory.
    pub seccomp_profile_root: PathBuf,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            seccomp_profile_root: PathBuf::from(
                crate::runtime::security::DEFAULT_SECCOMP_PROFILE_ROOT,
            ),
        }
    }
}

impl SecurityConfig {
    /// The runtime's security settings.
    pub fn settings(&self) -> crate::runtime::security::SecuritySettings {
        crate::runtime::security::SecuritySettings {
            seccomp_profile_root: self.seccomp_profile_root.clone(),
        }
    }
}

/// `[streaming]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Listen address.
    pub address: std::net::IpAddr,
    /// Listen port (0: any free one).
    pub port: u16,
    /// PEM certificate chain for HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PKCS#8 PEM key for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// Most sessions per container or pod.
    pub max_sessions_per_target: usize,
    /// Most sessions on the node.
    pub max_sessions: usize,
    /// Most URLs not used yet.
    pub max_pending: usize,
}

/// Upper bound of each streaming cap: each session holds tasks and buffers.
const MAX_STREAMING_CAP: usize = 65536;

impl Default for StreamingConfig {
    fn default() -> Self {
        let d = vmlet_streaming::Config::default();
        StreamingConfig {
            address: d.addr.ip(),
            port: d.addr.port(),
            tls_cert: None,
            tls_key: None,
            max_sessions_per_target: d.max_sessions_per_target,
            max_sessions: d.max_sessions,
            max_pending: d.max_pending,
        }
    }
}

impl StreamingConfig {
    /// The streaming server's settings.
    pub fn server_config(&self) -> vmlet_streaming::Config {
        vmlet_streaming::Config {
            addr: std::net::SocketAddr::new(self.address, self.port),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(vmlet_streaming::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            max_sessions_per_target: self.max_sessions_per_target,
            max_sessions: self.max_sessions,
            max_pending: self.max_pending,
            ..vmlet_streaming::Config::default()
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("streaming.tls_cert and streaming.tls_key go together".to_owned());
        }
        for (key, v) in [
            ("max_sessions_per_target", self.max_sessions_per_target),
            ("max_sessions", self.max_sessions),
            ("max_pending", self.max_pending),
        ] {
            if v == 0 || v > MAX_STREAMING_CAP {
                return Err(format!(
                    "streaming.{key} must be 1..={MAX_STREAMING_CAP} (got {v})"
                ));
            }
        }
        Ok(())
    }
}

/// `[volumes]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumesConfig {
    /// Most bytes one copied volume (configMap, secret, token, ...) may hold.
    pub max_copy_bytes: u64,
}

impl Default for VolumesConfig {
    fn default() -> Self {
        VolumesConfig {
            max_copy_bytes: crate::volumes::plan::DEFAULT_MAX_COPY_BYTES,
        }
    }
}

impl VolumesConfig {
    /// The runtime's volume settings.
    pub fn settings(&self) -> crate::volumes::VolumeSettings {
        crate::volumes::VolumeSettings {
            max_copy_bytes: self.max_copy_bytes,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: "/run/vmlet/vmlet.sock".into(),
            socket_mode: 0o660,
            state_dir: "/var/lib/vmlet".into(),
            runtime_dir: "/run/vmlet".into(),
            kernel: "/usr/lib/vmlet/vmlinux".into(),
            initramfs: "/usr/lib/vmlet/initramfs.cpio".into(),
            vmm: "vmlet-vmm".into(),
            log_level: "info".into(),
            network: NetworkSettings::default(),
            vm: VmConfig::default(),
            registries: RegistriesConfig::default(),
            images: ImageLimits::default(),
            volumes: VolumesConfig::default(),
            streaming: StreamingConfig::default(),
            security: SecurityConfig::default(),
            jail: Default::default(),
            cgroups: Default::default(),
            runtimes: Default::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Command-line flags; each overrides its config key.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "vmletd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("VMLET_GIT_REVISION"), ")"),
    about = "vmlet's node daemon: a CRI runtime that runs every pod as a micro-VM"
)]
pub struct Args {
    /// Config file (TOML).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// CRI socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// State directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Runtime directory.
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Guest kernel.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// vmlet-vmm binary.
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// Default vCPUs of a pod.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Default memory of a pod (MiB).
    #[arg(long)]
    pub mem_mib: Option<u64>,
    /// Pre-booted VMs of the default size (0: none).
    #[arg(long)]
    pub warm_pool: Option<u32>,
    /// Log filter.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Pod networking: `cni` or `none`.
    #[arg(long, value_parser = parse_network_mode)]
    pub network: Option<NetworkMode>,
    /// CNI configuration directory.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// Registry host to speak plain HTTP to (repeatable), e.g. `127.0.0.1:5000`.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Print the effective configuration (the file with the flags applied, every key)
    /// as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
}

fn parse_network_mode(s: &str) -> Result<NetworkMode, String> {
    match s {
        "cni" => Ok(NetworkMode::Cni),
        "none" => Ok(NetworkMode::None),
        _ => Err(format!("unknown network mode {s:?} (cni or none)")),
    }
}

impl Config {
    /// The configuration as TOML, every key with its value (what `--print-config`
    /// prints; [`Self::from_toml`] reads it back to the same configuration).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Loads the file `args` names (a missing default file means defaults) and applies
    /// the flags.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let mut config = match std::fs::read_to_string(&args.config) {
            Ok(text) => Self::from_toml(&text, &args.config)?,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && args.config == Path::new(DEFAULT_CONFIG) =>
            {
                Self::default()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: args.config.clone(),
                    source,
                })
            }
        };
        config.apply(args);
        config.check()?;
        Ok(config)
    }

    fn apply(&mut self, args: &Args) {
        let set = |dst: &mut PathBuf, v: &Option<PathBuf>| {
            if let Some(v) = v {
                *dst = v.clone();
            }
        };
        set(&mut self.socket, &args.socket);
        set(&mut self.state_dir, &args.state_dir);
        set(&mut self.runtime_dir, &args.runtime_dir);
        set(&mut self.kernel, &args.kernel);
        set(&mut self.initramfs, &args.initramfs);
        set(&mut self.vmm, &args.vmm);
        set(&mut self.network.cni_conf_dir, &args.cni_conf_dir);
        if let Some(mode) = args.network {
            self.network.mode = mode;
        }
        if let Some(v) = args.vcpus {
            self.vm.vcpus = v;
        }
        if let Some(v) = args.mem_mib {
            self.vm.mem_mib = v;
        }
        if let Some(v) = args.warm_pool {
            self.vm.warm_pool = v;
        }
        if let Some(v) = &args.log_level {
            self.log_level = v.clone();
        }
        for host in &args.insecure_registries {
            self.registries
                .hosts
                .entry(host.clone())
                .or_default()
                .plain_http = true;
        }
    }

    /// Rejects values that cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.vm.vcpus == 0 || self.vm.vcpus > 254 {
            return bad(format!("vm.vcpus must be 1..=254 (got {})", self.vm.vcpus));
        }
        if self.vm.mem_mib < self.vm.min_mem_mib {
            return bad(format!(
                "vm.mem_mib ({}) is below vm.min_mem_mib ({})",
                self.vm.mem_mib, self.vm.min_mem_mib
            ));
        }
        if self.vm.image_slots == 0 || self.vm.image_slots > 16 {
            return bad(format!(
                "vm.image_slots must be 1..=16 (got {})",
                self.vm.image_slots
            ));
        }
        if self.vm.warm_pool > 64 {
            return bad(format!(
                "vm.warm_pool must be 0..=64 (got {})",
                self.vm.warm_pool
            ));
        }
        self.check_runtimes().map_err(ConfigError::Invalid)?;
        let limit = crate::volumes::plan::MAX_COPY_BYTES_LIMIT;
        if self.volumes.max_copy_bytes > limit {
            return bad(format!(
                "volumes.max_copy_bytes must be at most {limit} (got {})",
                self.volumes.max_copy_bytes
            ));
        }
        self.streaming.check().map_err(ConfigError::Invalid)?;
        self.images.check().map_err(ConfigError::Invalid)?;
        self.jail.check().map_err(ConfigError::Invalid)?;
        self.cgroups.check().map_err(ConfigError::Invalid)?;
        if self.vm.max_concurrent_boots == 0 {
            return bad("vm.max_concurrent_boots must be at least 1".to_owned());
        }
        // The kernel reads its command line as printable ASCII.
        check_kernel_args("vm.kernel_args", &self.vm.kernel_args).map_err(ConfigError::Invalid)?;
        if self.socket_mode > 0o777 {
            return bad(format!(
                "socket_mode {:o} is not a permission mode",
                self.socket_mode
            ));
        }
        for (key, p) in [
            ("state_dir", &self.state_dir),
            ("runtime_dir", &self.runtime_dir),
            ("network.netns_dir", &self.network.netns_dir),
        ] {
            if !p.is_absolute() {
                return bad(format!(
                    "{key} must be an absolute path (got {})",
                    p.display()
                ));
            }
        }
        Ok(())
    }
}

/// The kernel reads its command line as printable ASCII.
fn check_kernel_args(key: &str, args: &str) -> Result<(), String> {
    match args.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        Some(c) => Err(format!(
            "{key} may hold printable ASCII and spaces only (found {c:?})"
        )),
        None => Ok(()),
    }
}

impl Config {
    /// Most RuntimeClass handlers: each may keep its own warm pool and refill task.
    const MAX_RUNTIMES: usize = 32;

    fn check_runtimes(&self) -> Result<(), String> {
        if self.runtimes.len() > Self::MAX_RUNTIMES {
            return Err(format!(
                "at most {} [runtimes.NAME] handlers (got {})",
                Self::MAX_RUNTIMES,
                self.runtimes.len()
            ));
        }
        let mut warm = u64::from(self.vm.warm_pool);
        for (name, r) in &self.runtimes {
            if !vmlet_cri::runtime::is_handler_name(name) {
                return Err(format!(
                    "[runtimes.{name:?}]: a handler name is a DNS label (1 to 63 of a-z, 0-9 \
                     and '-', not starting or ending with '-')"
                ));
            }
            let key = |k: &str| format!("runtimes.{name}.{k}");
            if let Some(v) = r.vcpus {
                if v == 0 || v > 254 {
                    return Err(format!("{} must be 1..=254 (got {v})", key("vcpus")));
                }
            }
            if let Some(m) = r.mem_mib {
                if m < self.vm.min_mem_mib {
                    return Err(format!(
                        "{} ({m}) is below vm.min_mem_mib ({})",
                        key("mem_mib"),
                        self.vm.min_mem_mib
                    ));
                }
            }
            if let Some(a) = &r.kernel_args {
                check_kernel_args(&key("kernel_args"), a)?;
            }
            for (k, p) in [("kernel", &r.kernel), ("initramfs", &r.initramfs)] {
                if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                    return Err(format!("{} must be an absolute path", key(k)));
                }
            }
            warm += u64::from(r.warm_pool);
        }
        if warm > 64 {
            return Err(format!(
                "vm.warm_pool and the handlers' warm_pool add up to at most 64 (got {warm})"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn runtime_handlers_are_checked() {
        let c = Config::from_toml(
            "[runtimes.big]\nvcpus = 2\nmem_mib = 1024\nwarm_pool = 1\n[runtimes.small]\n",
            Path::new("t"),
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.runtimes["big"].vcpus, Some(2));
        assert_eq!(c.runtimes["small"], RuntimeClassConfig::default());
        for (toml, error) in [
            ("[runtimes.Big]\n", "a handler name is a DNS label"),
            (
                "[runtimes.a]\nvcpus = 0\n",
                "runtimes.a.vcpus must be 1..=254",
            ),
            (
                "[runtimes.a]\nmem_mib = 64\n",
                "runtimes.a.mem_mib (64) is below",
            ),
            (
                "[runtimes.a]\nkernel = \"vmlinux\"\n",
                "runtimes.a.kernel must be an absolute",
            ),
            (
                "[runtimes.a]\nkernel_args = \"a\\u0007\"\n",
                "runtimes.a.kernel_args may hold",
            ),
            (
                "[runtimes.a]\nwarm_pool = 64\n",
                "add up to at most 64 (got 65)",
            ),
        ] {
            let e = Config::from_toml(toml, Path::new("t"))
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.contains(error), "{toml}: {e}");
        }
        assert!(Config::from_toml("[runtimes.a]\nmemory = 1\n", Path::new("t")).is_err());
    }

    /// The installed default file documents every key with its default value.
    #[test]
    fn the_packaged_config_file_holds_the_defaults() {
        let text = include_str!("../../packaging/config.toml");
        let c = Config::from_toml(text, Path::new("packaging/config.toml")).unwrap();
        assert_eq!(c, Config::default());
        // Every key is there: printed, the defaults hold no key the file lacks.
        let file: toml::Table = toml::from_str(text).unwrap();
        let all: toml::Table = toml::from_str(&Config::default().to_toml().unwrap()).unwrap();
        fn keys(t: &toml::Table, at: &str, out: &mut Vec<String>) {
            for (k, v) in t {
                match v {
                    toml::Value::Table(sub) => keys(sub, &format!("{at}{k}."), out),
                    _ => out.push(format!("{at}{k}")),
                }
            }
        }
        let (mut in_file, mut in_defaults) = (Vec::new(), Vec::new());
        keys(&file, "", &mut in_file);
        keys(&all, "", &mut in_defaults);
        let missing: Vec<_> = in_defaults
            .iter()
            .filter(|k| !in_file.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "keys packaging/config.toml does not show: {missing:?}"
        );
    }

    #[test]
    fn the_version_names_the_git_revision() {
        use clap::CommandFactory;
        let v = Args::command().render_version();
        let rev = v
            .trim()
            .strip_prefix(concat!("vmletd ", env!("CARGO_PKG_VERSION"), " (git "))
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{v}"));
        // The tests run in the checkout that was built.
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        assert_eq!(rev, head.as_deref().unwrap_or("unknown"), "{v}");
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml(
            "state_dir = \"/srv/vmlet\"\n[vm]\nvcpus = 2\n[registries.hosts.\"127.0.0.1:5000\"]\nplain_http = true\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/srv/vmlet"));
        assert_eq!(c.vm.vcpus, 2);
        assert_eq!(c.vm.mem_mib, 256);
        assert_eq!(c.socket, Path::new("/run/vmlet/vmlet.sock"));
        assert!(c.registries.hosts["127.0.0.1:5000"].plain_http);
        assert_eq!(c.network.mode, NetworkMode::Cni);
        assert_eq!(c.network.netns_dir, Path::new("/run/netns"));
        let c = Config::from_toml(
            "[network]\nmode = \"none\"\ncni_bin_dirs = [\"/x\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.network.mode, NetworkMode::None);
        assert_eq!(c.network.cni_bin_dirs, [Path::new("/x")]);
        let e = Config::from_toml("[network]\nmode = \"host\"\n", Path::new("x.toml")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { path, source }
                if path == Path::new("x.toml") && source.message().contains("unknown variant `host`")),
            "{e:?}"
        );

        let mut c = Config::default();
        let args = Args::parse_from([
            "vmletd",
            "--mem-mib",
            "512",
            "--insecure-registry",
            "h:1",
            "--network",
            "none",
        ]);
        c.apply(&args);
        assert_eq!(c.network.mode, NetworkMode::None);
        assert_eq!(c.vm.mem_mib, 512);
        assert!(c.registries.hosts["h:1"].plain_http);
        assert!(c.check().is_ok());
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        for c in [
            Config::default(),
            Config::from_toml(
                "state_dir = \"/srv/vmlet\"\n[vm]\nvcpus = 2\n[network]\nmode = \"none\"\n\
                 [streaming]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n\
                 [registries.hosts.\"127.0.0.1:5000\"]\nplain_http = true\n",
                Path::new("x.toml"),
            )
            .unwrap(),
        ] {
            let text = c.to_toml().unwrap();
            assert_eq!(
                Config::from_toml(&text, Path::new("printed")).unwrap(),
                c,
                "{text}"
            );
            // Every section, with its keys.
            for key in ["socket = ", "[vm]", "warm_pool = ", "[jail]", "[cgroups]"] {
                assert!(text.contains(key), "{key} missing:\n{text}");
            }
        }
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let e = Config::from_toml("sockett = \"/x\"", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("c.toml"), "{e}");
        let mut c = Config::default();
        c.vm.vcpus = 0;
        let e = c.check().unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid(m) if m == "vm.vcpus must be 1..=254 (got 0)"),
            "{e:?}"
        );
        let mut c = Config::default();
        assert_eq!(c.vm.kernel_args, "quiet");
        c.vm.kernel_args = "quiet\ninit=/bin/sh".into();
        let e = c.check().unwrap_err();
        assert!(e.to_string().contains("vm.kernel_args"), "{e}");
        let missing = Args::parse_from(["vmletd", "--config", "/nonexistent/vmlet.toml"]);
        assert!(matches!(
            Config::load(&missing),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn metrics_section() {
        assert_eq!(Config::default().metrics.address, None);
        let c = Config::from_toml(
            "[metrics]\naddress = \"127.0.0.1:9464\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.metrics.address, Some("127.0.0.1:9464".parse().unwrap()));
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("[metrics]\naddress = \"127.0.0.1:9464\""),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text, Path::new("p")).unwrap(), c);
        for bad in [
            "address = \"localhost\"",
            "address = \"127.0.0.1\"",
            "port = 1",
        ] {
            let e = Config::from_toml(&format!("[metrics]\n{bad}\n"), Path::new("x.toml"));
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn streaming_section() {
        let c = Config::default();
        let s = c.streaming.server_config();
        assert_eq!(s.addr.to_string(), "127.0.0.1:0");
        assert!(s.tls.is_none());
        let c = Config::from_toml(
            "[streaming]\naddress = \"::1\"\nport = 10010\ntls_cert = \"/c\"\ntls_key = \"/k\"\nmax_sessions = 7\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(c.check().is_ok());
        let s = c.streaming.server_config();
        assert_eq!(s.addr.to_string(), "[::1]:10010");
        assert_eq!(s.tls.map(|t| t.key), Some(PathBuf::from("/k")));
        assert_eq!(s.max_sessions, 7);
        let mut c = Config::default();
        c.streaming.tls_cert = Some("/c".into());
        assert!(c.check().unwrap_err().to_string().contains("go together"));
        let mut c = Config::default();
        c.streaming.max_pending = 0;
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("streaming.max_pending must be 1..=65536 (got 0)"),
            "{e}"
        );
    }
}
