//! vmletd's configuration: a TOML file (default `/etc/vmlet/config.toml`; a missing
//! default file means all defaults) overridden by command-line flags.
//!
//! Every key, with its default:
//!
//! ```toml
//! # CRI socket kubelet and crictl connect to, and its permission bits.
//! socket = "/run/vmlet/vmlet.sock"
//! socket_mode = 0o660
//! # Persistent state: images, pods, containers (survives daemon restarts).
//! state_dir = "/var/lib/vmlet"
//! # Sockets of the running VMs (gone at reboot, as the VMs are).
//! runtime_dir = "/run/vmlet"
//! # Guest kernel (uncompressed vmlinux with a PVH entry) and initramfs with vmlet-init.
//! kernel = "/usr/lib/vmlet/vmlinux"
//! initramfs = "/usr/lib/vmlet/initramfs.cpio"
//! # The vmlet-vmm binary ("vmlet-vmm" is looked up next to vmletd, then in PATH).
//! vmm = "vmlet-vmm"
//! # Log filter (tracing EnvFilter syntax; RUST_LOG wins when set).
//! log_level = "info"
//!
//! [network]
//! # "cni": every pod gets a network namespace wired by the node's CNI configuration
//! # and carried into its VM; "none": pods have loopback only (NetworkReady is false).
//! mode = "cni"
//! # The lexically first .conflist/.conf/.json here is the pod network.
//! cni_conf_dir = "/etc/cni/net.d"
//! # Where CNI plugins are looked up, in order.
//! cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
//! # Where pods' network namespaces are pinned (`ip netns` looks in /run/netns).
//! netns_dir = "/run/netns"
//!
//! [vm]
//! vcpus = 1                 # vCPUs of a pod that sets no CPU limit
//! mem_mib = 256             # MiB of a pod that sets no memory limit
//! min_mem_mib = 128         # smallest VM; smaller requests are refused
//! overhead_mem_mib = 64     # added to a pod's own memory limit (guest kernel + init)
//! image_slots = 4           # spare drives for container images (distinct images per pod)
//! scratch_mib = 4096        # sparse ext4 disk for the containers' writable layers
//! boot_timeout_secs = 180   # how long a guest may take until vmlet-init answers
//! max_concurrent_boots = 4  # guests booting at once; more RunPodSandbox calls queue
//! # VMs of the default size (vcpus, mem_mib) booted ahead of need, so that a pod of
//! # that size starts without waiting for a boot. Each costs an idle pod's memory.
//! warm_pool = 1
//! # The guest gives the memory it frees back to the host (virtio-balloon free page
//! # reporting), so an idle pod holds about what it uses.
//! free_page_reporting = true
//! # Which pods get a shared file system (virtio-fs, one virtiofsd each) through which
//! # hostPath, CSI and other persistent volumes reach their containers:
//! # "annotated" (pods annotated io.vmlet.shared-fs: "true"; they boot their own VM,
//! # not a warm one), "always" (every pod and warm VM) or "never".
//! shared_fs = "annotated"
//! virtiofsd = "/usr/lib/qemu/virtiofsd"
//! # Added to the guest kernel's command line. "quiet" keeps boot messages off the
//! # serial console (each byte written there is a VM exit); errors still show in
//! # the pod's console.log. Set "" to see the whole boot.
//! kernel_args = "quiet"
//! # What a pod's console.log keeps of a guest that writes to its serial console
//! # without end: the first and the last bytes, with a line saying how many were
//! # dropped between them.
//! console_log_head_bytes = 1048576
//! console_log_tail_bytes = 1048576
//!
//! [images]
//! # Caps on what a pulled image may make vmletd read and write; a larger image is
//! # refused (ResourceExhausted, naming the key to raise). The defaults fit real images.
//! max_manifest_bytes = 4194304       # a manifest or index
//! max_config_bytes = 8388608         # the image config blob
//! max_tar_header_bytes = 1048576     # a long name or PAX record of one layer entry
//! max_unpacked_bytes = 68719476736   # all layers of an image, uncompressed (64 GiB)
//! max_entries = 4000000              # tar entries in all layers of an image
//! max_inodes = 2000000               # files, directories, links and nodes they create
//!
//! [volumes]
//! # Most bytes one copied volume (configMap, secret, projected token, /etc/hosts,
//! # termination log) may hold; at most 8 MiB. Larger ones are refused.
//! max_copy_bytes = 4194304
//!
//! [streaming]
//! # Where the server for kubectl exec/attach/port-forward listens; CRI Exec, Attach
//! # and PortForward answer with URLs on it. Port 0 picks a free port.
//! address = "127.0.0.1"
//! port = 0
//! # Serve HTTPS with this PEM certificate chain and PKCS#8 PEM key (both or neither).
//! # tls_cert = "/etc/vmlet/streaming.crt"
//! # tls_key = "/etc/vmlet/streaming.key"
//! max_sessions_per_target = 32  # sessions per container (exec/attach) or pod (port-forward)
//! max_sessions = 1024           # sessions on the node
//! max_pending = 1024            # URLs handed out and not used yet
//!
//! [jail]
//! # Each VMM runs jailed: its own uid/gid from this range, a mount namespace holding
//! # only its files, new PID and IPC namespaces, no capabilities, no_new_privs. Turn
//! # off only on hosts that cannot (the VMM then runs as root).
//! enabled = true
//! first_uid = 1900000000
//! uid_count = 65536         # at most this many pods at once
//! max_open_files = 4096     # RLIMIT_NOFILE of a VMM
//! # A PID namespace per VMM, the VMM its init: from outside only SIGKILL and the
//! # signals it handles (SIGTERM, SIGINT) reach it.
//! pid_namespace = true
//! # Shared libraries vmlet-vmm loads, bound read-only into each jail ([] for a
//! # statically linked vmlet-vmm; missing ones are skipped).
//! library_dirs = ["/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
//!
//! [cgroups]
//! # Each pod's VMM (and virtiofsd) runs in a host cgroup (v2) below the kubelet's
//! # cgroup_parent, limited to the pod's memory (+ the VMM's overhead), CPU limit
//! # and a pids.max. Without a v2 hierarchy offering cpu, memory and pids at
//! # /sys/fs/cgroup (cgroup v1 or hybrid hosts), pods run without a host cgroup.
//! enabled = true
//! # How the kubelet names cgroups ("systemd", "cgroupfs", or "auto": systemd when
//! # the host runs it); reported to the kubelet by RuntimeConfig.
//! driver = "auto"
//!
//! [security]
//! # Localhost seccomp profiles (CRI SecurityProfile.localhost_ref, an absolute path
//! # the kubelet makes from its root directory) must lie below this directory.
//! seccomp_profile_root = "/var/lib/kubelet/seccomp"
//!
//! # Per-registry settings, as in the image manager's RegistriesConfig:
//! [registries.hosts."127.0.0.1:5000"]
//! plain_http = true
//! skip_tls_verify = false
//! mirrors = []
//! ```

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
        }
    }
}

/// Command-line flags; each overrides its config key.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "vmletd",
    version,
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
        if let Some(c) = self
            .vm
            .kernel_args
            .chars()
            .find(|c| !(c.is_ascii_graphic() || *c == ' '))
        {
            return bad(format!(
                "vm.kernel_args may hold printable ASCII and spaces only (found {c:?})"
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
