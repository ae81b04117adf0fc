//! The CRI RuntimeService: pods (sandboxes) and containers, served over any
//! [`RuntimeBackend`]. One module per RPC family; each validates and translates, the
//! backend acts.

mod backend;
mod container_create;
mod container_status;
mod container_update;
mod events;
mod exec;
mod metrics;
mod sandbox_run;
mod sandbox_status;
mod security;
mod server;
mod stats;
mod status;
mod streaming;
mod validate;

pub use backend::{
    CgroupDriver, ContainerConfig, ContainerEvent, ContainerInfo, ContainerState, ContainerUsage,
    DnsConfig, EventKind, ExecOutput, Health, HostUsage, InterfaceUsage, MountConfig, PodConfig,
    PodInfo, PodMetadata, PodState, PodUsage, PortMapping, ProcessUser, Propagation,
    ResourcesConfig, RuntimeBackend, UserConfig,
};
pub use security::{
    CapabilitiesConfig, IdMap, PidNamespace, PodSecurity, SeccompProfile, SecurityConfig,
    UserNamespaceConfig, ALL_CAPABILITIES,
};
pub use server::RuntimeServer;
pub use status::{RUNTIME_API_VERSION, RUNTIME_NAME};
pub use streaming::{AttachSession, ExecSession, PortForwardSession, StreamUrls};
pub use validate::{grpc_timeout, is_handler_name};
