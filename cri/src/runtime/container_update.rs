//! `UpdateContainerResources`: the new Linux limits of a container, checked as at
//! creation. As in containerd, a limit left at 0 keeps its current value (the backend
//! merges), and the Windows resources are ignored.

use tonic::Status;

use super::backend::ResourcesConfig;
use super::container_create;
use crate::proto;

/// The container ID and the backend's resources from an `UpdateContainerResources`
/// request. A request without Linux resources changes nothing.
pub fn request(
    req: &proto::UpdateContainerResourcesRequest,
) -> Result<(&str, ResourcesConfig), Status> {
    let id = super::validate::id(&req.container_id, "container_id")?;
    let resources = match &req.linux {
        Some(r) => container_create::resources(r, "linux")?,
        None => ResourcesConfig::default(),
    };
    Ok((id, resources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_translates() {
        let mut req = proto::UpdateContainerResourcesRequest {
            container_id: "c1".into(),
            linux: Some(proto::LinuxContainerResources {
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (id, r) = request(&req).unwrap();
        assert_eq!(id, "c1");
        assert_eq!(
            (
                r.cpu_quota,
                r.cpu_period,
                r.memory_limit_bytes,
                r.cpu_shares
            ),
            (50_000, 100_000, 64 << 20, 0)
        );
        if let Some(l) = req.linux.as_mut() {
            l.memory_limit_in_bytes = -1;
        }
        let e = request(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("linux.memory_limit_in_bytes"), "{e}");
        req.linux = None;
        assert_eq!(request(&req).unwrap().1, ResourcesConfig::default());
        req.container_id.clear();
        assert_eq!(
            request(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
