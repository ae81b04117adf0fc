//! Security contexts end to end, through vmletd as a kubelet drives it: each setting
//! is checked from inside the container (its /proc/self/status, what it may open,
//! call and see), and bad settings are refused with the CRI code a kubelet expects.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tonic::Code;
use vmlet_integration_tests::cri::{container_config, parse_log, pod_config, v1, Vmletd};
use vmlet_test_support::{busybox_image_with_files, TestRegistry};

const WAIT: Duration = Duration::from_secs(120);

/// containerd's default capability set, as /proc/self/status shows it.
const DEFAULT_CAPS: &str = "00000000a80425fb";
/// Every capability up to CAP_CHECKPOINT_RESTORE.
const ALL_CAPS: &str = "000001ffffffffff";

const PASSWD: &[u8] =
    b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n";
const GROUP: &[u8] = b"root:x:0:\nwww-data:x:33:\nstaff:x:50:www-data\nweb:x:1004:\n";

/// A registry with the busybox image, its own users and groups, pushed as `tag`
/// with image `User` `user`.
fn image(registry: &TestRegistry, tag: &str, user: &str) -> String {
    let img = busybox_image_with_files(
        json!({
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "User": user,
        }),
        &[("etc/passwd", PASSWD), ("etc/group", GROUP)],
    )
    .unwrap();
    registry.push(&img, tag).unwrap()
}

fn stdout(d: &Vmletd, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(d.log_dir().join(format!("{name}.log"))).unwrap_or_default();
    parse_log(&text)
        .into_iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.line)
        .collect()
}

fn with_security(
    mut c: v1::ContainerConfig,
    sc: v1::LinuxContainerSecurityContext,
) -> v1::ContainerConfig {
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    c
}

fn caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> Option<v1::Capability> {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Some(v1::Capability {
        add_capabilities: v(add),
        drop_capabilities: v(drop),
        add_ambient_capabilities: v(ambient),
    })
}

fn profile(t: v1::security_profile::ProfileType, r: &str) -> Option<v1::SecurityProfile> {
    Some(v1::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    })
}

/// Runs container `name` to its end; returns its stdout lines and status.
fn run(
    d: &Vmletd,
    pod: &str,
    pod_cfg: &v1::PodSandboxConfig,
    c: v1::ContainerConfig,
) -> (Vec<String>, v1::ContainerStatus) {
    let name = c.metadata.as_ref().unwrap().name.clone();
    let cl = d.client();
    let id = cl.create(pod, c, pod_cfg).expect("CreateContainer");
    cl.start(&id).expect("StartContainer");
    let s = cl.wait_exited(&id, WAIT);
    cl.wait_log_complete(&id, WAIT);
    (stdout(d, &name), s)
}

/// The capability lines of /proc/self/status: effective, bounding, ambient.
const SHOW_CAPS: &str = "grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status | cut -f2";

#[test]
fn security_contexts_are_enforced_in_the_guest() {
    use v1::security_profile::ProfileType;
    let registry = TestRegistry::start().unwrap();
    let plain = image(&registry, "sec:plain", "");
    let www = image(&registry, "sec:www", "www-data");
    let www_web = image(&registry, "sec:www-web", "www-data:1004");
    let profiles = tempfile::tempdir().unwrap();
    let deny_mkdir = profiles.path().join("deny-mkdir.json");
    std::fs::write(
        &deny_mkdir,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
    )
    .unwrap();
    std::fs::write(profiles.path().join("broken.json"), "{\"defaultAction\":").unwrap();
    let d = Vmletd::start_with(
        &["--insecure-registry", registry.addr()],
        &format!(
            "[network]\nmode = \"none\"\n[security]\nseccomp_profile_root = {:?}\n",
            profiles.path().display().to_string()
        ),
    );
    let c = d.client();
    for i in [&plain, &www, &www_web] {
        c.pull(i).expect("PullImage");
    }
    // A 100-character pod name and no hostname, as some CRI clients send it; the pod
    // is privileged so that one of its containers may be.
    let name = format!("sec-{}", "x".repeat(96));
    let mut pod_cfg = pod_config(&name, &d.log_dir());
    pod_cfg.hostname.clear();
    pod_cfg.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");

    // Default set; drop ALL; drop ALL + NET_ADMIN; a non-root user with an ambient
    // capability.
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        container_config("defcaps", &plain, SHOW_CAPS),
    );
    assert_eq!(out, [DEFAULT_CAPS, DEFAULT_CAPS, "0000000000000000"]);
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config(
                "dropall",
                &plain,
                &format!("{SHOW_CAPS}; mknod /tmp/vda b 254 0 || echo no-mknod"),
            ),
            v1::LinuxContainerSecurityContext {
                capabilities: caps(&[], &["ALL"], &[]),
                ..Default::default()
            },
        ),
    );
    assert_eq!(
        out,
        [
            "0000000000000000",
            "0000000000000000",
            "0000000000000000",
            "no-mknod"
        ]
    );
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config("netadmin", &plain, SHOW_CAPS),
            v1::LinuxContainerSecurityContext {
                capabilities: caps(&["NET_ADMIN"], &["ALL"], &[]),
                ..Default::default()
            },
        ),
    );
    assert_eq!(
        out,
        ["0000000000001000", "0000000000001000", "0000000000000000"]
    );
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config("ambient", &plain, SHOW_CAPS),
            v1::LinuxContainerSecurityContext {
                run_as_user: Some(v1::Int64Value { value: 1000 }),
                capabilities: caps(&["NET_BIND_SERVICE"], &["ALL"], &["NET_BIND_SERVICE"]),
                ..Default::default()
            },
        ),
    );
    assert_eq!(
        out,
        ["0000000000000400", "0000000000000400", "0000000000000400"]
    );

    // Devices: with CAP_MKNOD a node can be made but not opened; /dev/null can.
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        container_config(
            "devices",
            &plain,
            "mknod /tmp/vda b 254 0 && echo made; \
             head -c1 /tmp/vda >/dev/null 2>&1 || echo denied; \
             head -c1 /dev/null && echo null-ok",
        ),
    );
    assert_eq!(out, ["made", "denied", "null-ok"]);

    // Masked and read-only /proc paths (containerd's defaults: the request has none).
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        container_config(
            "paths",
            &plain,
            "wc -c < /proc/timer_list; \
             grep ' /proc/sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
        ),
    );
    assert_eq!(out, ["0", "ro"]);

    // Privileged: every capability, the guest's block devices, /sys writable.
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config(
                "priv",
                &plain,
                &format!(
                    "{SHOW_CAPS}; ls /dev | grep -c '^vd' ; \
                     grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1"
                ),
            ),
            v1::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        ),
    );
    assert_eq!(out[..2], [ALL_CAPS, ALL_CAPS]);
    assert_ne!(
        out[3], "0",
        "no block devices in a privileged container: {out:?}"
    );
    assert_eq!(out[4], "rw", "{out:?}");

    // seccomp: RuntimeDefault refuses a new user namespace, Unconfined allows it; a
    // Localhost profile's errno reaches the caller, with and without no_new_privs.
    let userns = "unshare -U true && echo userns-ok || echo userns-denied";
    for (n, p, want) in [
        (
            "sc-default",
            profile(ProfileType::RuntimeDefault, ""),
            "userns-denied",
        ),
        (
            "sc-unconfined",
            profile(ProfileType::Unconfined, ""),
            "userns-ok",
        ),
    ] {
        let (out, _) = run(
            &d,
            &pod,
            &pod_cfg,
            with_security(
                container_config(n, &plain, userns),
                v1::LinuxContainerSecurityContext {
                    seccomp: p,
                    ..Default::default()
                },
            ),
        );
        assert_eq!(out, [want], "{n}");
    }
    for (n, nnp) in [("sc-local", false), ("sc-local-nnp", true)] {
        let (out, _) = run(
            &d,
            &pod,
            &pod_cfg,
            with_security(
                container_config(
                    n,
                    &plain,
                    "mkdir /tmp/d 2>&1 | grep -o 'Function not implemented'; echo ran",
                ),
                v1::LinuxContainerSecurityContext {
                    seccomp: profile(ProfileType::Localhost, deny_mkdir.to_str().unwrap()),
                    no_new_privs: nnp,
                    ..Default::default()
                },
            ),
        );
        assert_eq!(out, ["Function not implemented", "ran"], "{n}");
    }

    // Users and groups from the image's /etc/passwd and /etc/group.
    let (out, s) = run(
        &d,
        &pod,
        &pod_cfg,
        container_config("www", &www, "id -u; id -g; id -G"),
    );
    assert_eq!(out, ["33", "33", "33 50"]);
    let u = s.user.unwrap().linux.unwrap();
    assert_eq!((u.uid, u.gid), (33, 33));
    assert!(u.supplemental_groups.contains(&50), "{u:?}");
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config("www-strict", &www, "id -G"),
            v1::LinuxContainerSecurityContext {
                supplemental_groups_policy: v1::SupplementalGroupsPolicy::Strict as i32,
                ..Default::default()
            },
        ),
    );
    assert_eq!(out, ["33"]);
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        container_config("www-web", &www_web, "id -u; id -g"),
    );
    assert_eq!(out, ["33", "1004"]);
    // A name the image's /etc/passwd lacks: the container cannot be created, clearly.
    let e = c
        .create(
            &pod,
            with_security(
                container_config("byname", &plain, "id -u"),
                v1::LinuxContainerSecurityContext {
                    run_as_username: "nobody-here".into(),
                    ..Default::default()
                },
            ),
            &pod_cfg,
        )
        .unwrap_err();
    assert!(e.message().contains("nobody-here"), "{e:?}");

    // PID namespaces: the container's own (it is PID 1), or the pod's, whose PID 1
    // is the pod's holder.
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        container_config("ownpid", &plain, "echo $$"),
    );
    assert_eq!(out, ["1"]);
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config("podpid", &plain, "echo $$; [ -d /proc/1 ] && echo has-1"),
            v1::LinuxContainerSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    );
    assert_ne!(out[0], "1", "{out:?}");
    assert_eq!(out[1], "has-1");
    // TARGET, as `kubectl debug --target` asks: the debug container sees the target
    // container's processes, its PID 1 first.
    let target = c
        .create(
            &pod,
            container_config("target", &plain, "exec sleep 1000"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&target).expect("StartContainer");
    let (out, _) = run(
        &d,
        &pod,
        &pod_cfg,
        with_security(
            container_config("debug", &plain, "grep -c sleep /proc/1/cmdline"),
            v1::LinuxContainerSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Target as i32,
                    target_id: target.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    );
    assert_eq!(out, ["1"]);
    c.stop(&target, 0).unwrap();

    // Refused, with nothing left behind.
    let before = c.list(None).len();
    let bad = |sc: v1::LinuxContainerSecurityContext| {
        c.create(
            &pod,
            with_security(container_config("bad", &plain, "true"), sc),
            &pod_cfg,
        )
        .unwrap_err()
    };
    let e = bad(v1::LinuxContainerSecurityContext {
        capabilities: caps(&["NET_ADMINZ"], &[], &[]),
        ..Default::default()
    });
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for p in [
        profiles.path().join("broken.json"),
        Path::new("/etc/passwd").to_owned(),
        profiles.path().join("missing.json"),
    ] {
        let e = bad(v1::LinuxContainerSecurityContext {
            seccomp: profile(ProfileType::Localhost, p.to_str().unwrap()),
            ..Default::default()
        });
        assert_eq!(e.code(), Code::InvalidArgument, "{p:?}: {e:?}");
    }
    let e = bad(v1::LinuxContainerSecurityContext {
        apparmor: profile(ProfileType::Localhost, "k8s-apparmor-example"),
        ..Default::default()
    });
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(c.list(None).len(), before);
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();

    // A privileged container needs a privileged pod; host PID and IPC cannot be had.
    let pod_cfg = pod_config("unpriv", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let e = c
        .create(
            &pod,
            with_security(
                container_config("priv", &plain, "true"),
                v1::LinuxContainerSecurityContext {
                    privileged: true,
                    ..Default::default()
                },
            ),
            &pod_cfg,
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
    for ns in [
        v1::NamespaceOption {
            pid: v1::NamespaceMode::Node as i32,
            ..Default::default()
        },
        v1::NamespaceOption {
            ipc: v1::NamespaceMode::Node as i32,
            ..Default::default()
        },
    ] {
        let mut cfg = pod_config("hostns", &d.log_dir());
        cfg.linux = Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = c.run_pod(cfg).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("namespace_options"), "{}", e.message());
    }
}
