//! `Version`, `Status`, `RuntimeConfig`, `UpdateRuntimeConfig`.

use std::collections::HashMap;

use super::backend::{CgroupDriver, Health};
use crate::proto;

/// Runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "vmlet";
/// CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";

/// The `Version` answer.
pub fn version() -> proto::VersionResponse {
    proto::VersionResponse {
        // The kubelet API version of the request/response format (always 0.1.0).
        version: "0.1.0".into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: RUNTIME_API_VERSION.into(),
    }
}

/// The `Status` answer from the backend's health.
pub fn status(mut h: Health, verbose: bool) -> proto::StatusResponse {
    let handlers = match std::mem::take(&mut h.runtime_handlers) {
        v if v.is_empty() => vec![String::new()],
        v => v,
    };
    let cond = |t: &str, ok: bool, reason: String, message: String| proto::RuntimeCondition {
        r#type: t.into(),
        status: ok,
        reason,
        message,
    };
    let mut info = HashMap::new();
    if verbose {
        info.insert(
            "config".to_string(),
            format!(
                "{{\"runtimeName\":\"{RUNTIME_NAME}\",\"version\":\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
        );
        if !h.verbose_json.is_empty() {
            info.insert("runtime".to_string(), h.verbose_json.clone());
        }
    }
    proto::StatusResponse {
        status: Some(proto::RuntimeStatus {
            conditions: vec![
                cond(
                    "RuntimeReady",
                    h.runtime_ready,
                    h.runtime_reason,
                    h.runtime_message,
                ),
                cond(
                    "NetworkReady",
                    h.network_ready,
                    h.network_reason,
                    h.network_message,
                ),
            ],
        }),
        info,
        // What the guest really does (each covered by an end-to-end test): `rro`
        // mounts through mount_setattr(2), user namespaces (pods with
        // `hostUsers: false`) and the Strict supplemental-groups policy.
        // Every handler runs the same guest agent, so they share the features.
        runtime_handlers: handlers
            .into_iter()
            .map(|name| proto::RuntimeHandler {
                name,
                features: Some(proto::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: true,
                    user_namespaces: true,
                }),
            })
            .collect(),
        features: Some(proto::RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    }
}

/// The `RuntimeConfig` answer: the cgroup driver the backend reads pods'
/// `cgroup_parent` as (containers' own cgroups live in the guest).
pub fn runtime_config(driver: CgroupDriver) -> proto::RuntimeConfigResponse {
    let driver = match driver {
        CgroupDriver::Systemd => proto::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => proto::CgroupDriver::Cgroupfs,
    };
    proto::RuntimeConfigResponse {
        linux: Some(proto::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_carry_reasons() {
        let s = status(
            Health {
                runtime_ready: true,
                network_ready: false,
                network_reason: "NoNetworkPlugin".into(),
                ..Default::default()
            },
            false,
        );
        let c = s.status.unwrap().conditions;
        assert_eq!(c[0].r#type, "RuntimeReady");
        assert!(c[0].status);
        assert_eq!(c[1].reason, "NoNetworkPlugin");
        assert_eq!(version().runtime_name, "vmlet");
        let handler = s.runtime_handlers[0].features.unwrap();
        assert!(handler.recursive_read_only_mounts && handler.user_namespaces);
        assert_eq!(s.runtime_handlers[0].name, "");
        let named = status(
            Health {
                runtime_handlers: vec![String::new(), "big".into()],
                ..Default::default()
            },
            false,
        );
        let names: Vec<_> = named
            .runtime_handlers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["", "big"]);
        assert!(s.features.unwrap().supplemental_groups_policy);
        let h = Health {
            verbose_json: "{\"warmPool\":{}}".into(),
            ..Default::default()
        };
        assert!(status(h.clone(), false).info.is_empty());
        assert_eq!(status(h, true).info["runtime"], "{\"warmPool\":{}}");
    }
}
