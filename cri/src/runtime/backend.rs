//! What the RuntimeService needs from the daemon: a pod (sandbox) and container
//! controller. The CRI layer validates and translates requests into these plain types;
//! the daemon acts on them and knows nothing of protobuf.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::security::{PodSecurity, SecurityConfig};

pub use crate::image::BackendError;

/// Who a pod is: unique per (name, namespace, uid, attempt).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodMetadata {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Attempt number.
    pub attempt: u32,
}

/// DNS settings of a pod (its resolv.conf).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// A port of the pod published on the node (given to the CNI `portmap` plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
    /// Node address to publish on ("" = all).
    pub host_ip: String,
}

/// A pod to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodConfig {
    /// Identity.
    pub metadata: PodMetadata,
    /// Hostname: the one asked for, or one made from the pod name
    /// (`sandbox_run::pod_config`); empty only in records of older versions.
    pub hostname: String,
    /// Directory on the host for the containers' logs ("" = no logs).
    pub log_directory: String,
    /// DNS.
    pub dns: DnsConfig,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// vCPUs asked for by the pod's resources and overhead (None: the default).
    pub vcpus: Option<u32>,
    /// Memory in MiB asked for by the pod's resources and overhead (None: the default).
    pub memory_mib: Option<u64>,
    /// Ports published on the node.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Namespaced sysctls for the pod (`linux.sysctls`).
    #[serde(default)]
    pub sysctls: HashMap<String, String>,
    /// The pod's security context.
    #[serde(default)]
    pub security: PodSecurity,
    /// The host cgroup the kubelet puts the pod in (`linux.cgroup_parent`: a path for
    /// the cgroupfs driver, a slice for systemd's; "" for none).
    #[serde(default)]
    pub cgroup_parent: String,
    /// The pod's CPU limit with its overhead, in thousandths of a CPU (None: none).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// The RuntimeClass handler that runs the pod ("" is the default one).
    #[serde(default)]
    pub runtime_handler: String,
}

/// State of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Its VM runs and takes containers.
    Ready,
    /// Stopped, failed or being set up.
    NotReady,
}

/// A pod as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// 64-hex ID.
    pub id: String,
    /// What it was made from.
    pub config: PodConfig,
    /// State.
    pub state: PodState,
    /// Unix time in nanoseconds.
    pub created_at_ns: i64,
    /// Details for verbose status, as JSON (VM size, VMM pid, paths).
    pub verbose_json: String,
    /// The pod's IP addresses, the primary one first (empty without pod networking).
    pub ips: Vec<String>,
}

/// Numeric identity a container's process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConfig {
    /// `run_as_user`.
    pub uid: Option<i64>,
    /// `run_as_group`.
    pub gid: Option<i64>,
    /// `run_as_username`.
    pub username: String,
    /// Supplementary groups.
    pub supplemental_groups: Vec<i64>,
}

/// Linux resources of a container, as in the CRI request (0 = unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesConfig {
    /// CFS period (µs).
    pub cpu_period: i64,
    /// CFS quota (µs).
    pub cpu_quota: i64,
    /// CPU shares.
    pub cpu_shares: i64,
    /// Memory limit (bytes).
    pub memory_limit_bytes: i64,
    /// OOM score adjustment.
    pub oom_score_adj: i64,
}

/// A container to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Name, unique in the pod per attempt.
    pub name: String,
    /// Attempt.
    pub attempt: u32,
    /// The image as requested (reference, ID or prefix).
    pub image: String,
    /// Overrides the image's Entrypoint.
    pub command: Vec<String>,
    /// Overrides the image's Cmd.
    pub args: Vec<String>,
    /// Overrides the image's WorkingDir.
    pub working_dir: String,
    /// Added to (and overriding) the image's Env.
    pub envs: Vec<(String, String)>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Log file relative to the pod's log directory ("" = none).
    pub log_path: String,
    /// Allocate a terminal.
    pub tty: bool,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin when the first attach session that streamed it ends.
    #[serde(default)]
    pub stdin_once: bool,
    /// Identity.
    pub user: UserConfig,
    /// Read-only root file system.
    pub readonly_rootfs: bool,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// Resources.
    pub resources: ResourcesConfig,
    /// Volumes, in order.
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// The security context beyond user, read-only root and no_new_privs.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// How mounts below a volume propagate (CRI `MountPropagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// No propagation (`rprivate`).
    #[default]
    Private,
    /// Mounts made below the source later appear in the container (`rslave`).
    HostToContainer,
    /// Both ways (`rshared`).
    Bidirectional,
}

/// One volume of a container, as requested (CRI `Mount`), checked for form: an
/// absolute container path without "..", not "/", "/proc" or "/sys" or below them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    /// Where it appears in the container.
    pub container_path: String,
    /// The host file or directory ("" for an image volume).
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// Read-only submounts too.
    pub recursive_read_only: bool,
    /// SELinux relabelling was asked for (no SELinux in the guest: reported only).
    pub selinux_relabel: bool,
    /// Propagation.
    pub propagation: Propagation,
    /// An image mounted read-only as the volume ("" for a host path).
    pub image: String,
}

/// State of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (or never ran and never will).
    Exited,
    /// Cannot be told (its VM is unreachable).
    Unknown,
}

/// A container as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// 64-hex ID.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// What it was made from.
    pub config: ContainerConfig,
    /// The resolved image ID (`sha256:...`).
    pub image_id: String,
    /// State.
    pub state: ContainerState,
    /// Unix times in nanoseconds (0: not yet).
    pub created_at_ns: i64,
    /// Started.
    pub started_at_ns: i64,
    /// Finished.
    pub finished_at_ns: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// Why it is in its state ("Completed", "Error", "OOMKilled", ...).
    pub reason: String,
    /// Details.
    pub message: String,
    /// Full path of the log file ("" = none).
    pub log_path: String,
    /// Details for verbose status, as JSON (slot, exit timeline); empty for none.
    pub verbose_json: String,
    /// The identity its process runs with, once known.
    pub user: Option<ProcessUser>,
}

/// The uid, gid and supplemental groups a container's process got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplemental groups.
    pub supplemental_groups: Vec<u32>,
}

/// Resource use of one container, as its pod's guest measured it. Counters are
/// cumulative since the container was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// When the figures were read (Unix nanoseconds).
    pub timestamp_ns: i64,
    /// CPU time on all CPUs (nanoseconds).
    pub cpu_usage_ns: u64,
    /// Memory in use, page cache included (bytes).
    pub memory_usage_bytes: u64,
    /// Memory in use less inactive file pages (bytes): what kubelet evicts by.
    pub memory_working_set_bytes: u64,
    /// Tasks (processes and threads).
    pub pids: u64,
    /// Bytes used by the writable layer.
    pub writable_layer_bytes: u64,
    /// Inodes used by the writable layer.
    pub writable_layer_inodes: u64,
}

/// Resource use of a pod: of its VM's guest as a whole (the VM is the pod), and of
/// its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// When the figures were read (Unix nanoseconds).
    pub timestamp_ns: i64,
    /// CPU time of the guest on all its CPUs (nanoseconds).
    pub cpu_usage_ns: u64,
    /// The guest's memory in use: its total less what is available (bytes).
    pub memory_usage_bytes: u64,
    /// The guest's available memory (bytes).
    pub memory_available_bytes: u64,
    /// The containers measured, by ID.
    pub containers: HashMap<String, ContainerUsage>,
    /// The node directory whose file system holds the writable layers.
    pub writable_layer_mountpoint: String,
    /// The pod's cost on the host (its host cgroup: VMM, guest RAM, helpers), where
    /// it has one.
    pub host: Option<HostUsage>,
    /// The pod's network interfaces, counted on the host (the guest could forge its
    /// own counts), the default one first; none for a pod without a network.
    pub network: Vec<InterfaceUsage>,
}

/// Traffic of one of a pod's network interfaces, cumulative, as the pod sees it
/// (received: what reached the pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    /// The interface's name in the pod (`eth0`).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
}

/// What a pod costs the host, from its host cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostUsage {
    /// CPU time of all its processes (nanoseconds).
    pub cpu_usage_ns: u64,
    /// Memory charged to it (bytes).
    pub memory_usage_bytes: u64,
    /// Memory less the inactive page cache (bytes).
    pub working_set_bytes: u64,
    /// Anonymous memory (bytes).
    pub rss_bytes: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// Headroom below its memory limit (bytes), when it has one.
    pub available_bytes: Option<u64>,
}

/// Output of an ExecSync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// stdout, capped.
    pub stdout: Vec<u8>,
    /// stderr, capped.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// Kind of a container event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Created,
    /// Started.
    Started,
    /// Stopped (exited).
    Stopped,
    /// Removed.
    Deleted,
}

/// A container lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// The container.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When (Unix nanoseconds).
    pub at_ns: i64,
}

/// Readiness of the runtime and of pod networking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Pods can be run.
    pub runtime_ready: bool,
    /// Why not (CamelCase) and details.
    pub runtime_reason: String,
    /// Details.
    pub runtime_message: String,
    /// Pods get networking.
    pub network_ready: bool,
    /// Why not (CamelCase).
    pub network_reason: String,
    /// Details.
    pub network_message: String,
    /// The backend's own state for verbose `Status` (JSON object; empty for none).
    pub verbose_json: String,
    /// The cgroup driver the backend reads `cgroup_parent` as (`RuntimeConfig`).
    pub cgroup_driver: CgroupDriver,
    /// The RuntimeClass handlers pods may name, the default ("") first; none listed
    /// means the default alone.
    pub runtime_handlers: Vec<String>,
}

/// How pods' `cgroup_parent` is read, as the kubelet's cgroup driver names cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupDriver {
    /// systemd slices (the kubelet's default).
    #[default]
    Systemd,
    /// cgroup file system paths.
    Cgroupfs,
}

/// The daemon's pods and containers, as the RuntimeService sees them. Every call is
/// safe under concurrency. Unknown IDs are [`ErrorKind::NotFound`](crate::image::ErrorKind).
pub trait RuntimeBackend: Send + Sync + 'static {
    /// Readiness.
    fn health(&self) -> Health;

    /// Records the pod CIDR kubelet hands out.
    fn set_pod_cidr(&self, cidr: &str) -> Result<(), BackendError>;

    /// Starts a pod's VM; returns its ID. No deadline: [`RuntimeBackend::run_pod_until`].
    fn run_pod(
        &self,
        config: PodConfig,
    ) -> impl Future<Output = Result<String, BackendError>> + Send {
        self.run_pod_until(config, None)
    }

    /// Starts a pod's VM before `deadline` (the caller's gRPC deadline, if it set one);
    /// returns its ID. A step that cannot finish by then is not started, and the call
    /// fails with [`ErrorKind::DeadlineExceeded`](crate::image::ErrorKind) naming what
    /// was tried. The work runs on whether or not the caller still waits: a pod that
    /// fails leaves nothing, one that starts is listed.
    fn run_pod_until(
        &self,
        config: PodConfig,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<String, BackendError>> + Send;

    /// Stops a pod's containers and VM (idempotent).
    fn stop_pod(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Removes a pod and everything it made (idempotent: an unknown pod is fine).
    fn remove_pod(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// One pod.
    fn pod(&self, id: &str) -> Result<PodInfo, BackendError>;

    /// All pods.
    fn pods(&self) -> Vec<PodInfo>;

    /// Creates a container in a ready pod; returns its ID.
    fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
    ) -> impl Future<Output = Result<String, BackendError>> + Send;

    /// Starts a created container.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stops a container: its stop signal, then SIGKILL after `timeout`.
    fn stop_container(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Removes a container, killing it first if it runs (idempotent).
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// One container.
    fn container(&self, id: &str) -> Result<ContainerInfo, BackendError>;

    /// All containers.
    fn containers(&self) -> Vec<ContainerInfo>;

    /// Runs `cmd` in a running container to completion, within `timeout` if given.
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<ExecOutput, BackendError>> + Send;

    /// Changes the limits of a created or running container: the fields of
    /// `resources` that are set (not 0), as containerd merges them; the others keep
    /// their values.
    fn update_container_resources(
        &self,
        id: &str,
        resources: ResourcesConfig,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Resource use of a ready pod and of its containers in `container_ids` (all of
    /// them when empty), measured now by its guest.
    fn pod_usage(
        &self,
        pod_id: &str,
        container_ids: Vec<String>,
    ) -> impl Future<Output = Result<PodUsage, BackendError>> + Send;

    /// Reopens a running container's log file (after kubelet rotated it).
    fn reopen_log(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Container lifecycle events from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent>;
}
