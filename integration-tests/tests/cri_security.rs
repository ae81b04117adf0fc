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
use vmlet_integration_tests::cri::{
    container_config, parse_log, pod_config, sandbox_security, v1, Vmletd,
};
use vmlet_test_support::{busybox_image_with_files, TestRegistry};

const WAIT: Duration = Duration::from_secs(120);

/// containerd's default capability set, as /proc/self/status shows it.
const DEFAULT_CAPS: &str = "00000000a80425fb";
/// Every capability up to CAP_CHECKPOINT_RESTORE.
const ALL_CAPS: &str = "000001ffffffffff";

const PASSWD: &[u8] =
    b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &[u8] =
    b"root:x:0:\nwww-data:x:33:\nstaff:x:50:www-data\nweb:x:1004:\nnogroup:x:65534:\n";

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
    pod_cfg.linux = sandbox_security(v1::LinuxSandboxSecurityContext {
        privileged: true,
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
        cfg.linux = sandbox_security(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        });
        let e = c.run_pod(cfg).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("namespace_options"), "{}", e.message());
    }
}

/// A pod's directory under the kubelet's root.
const KUBELET_POD: &str = "pods/6b1f0e2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

/// A container config with the mounts a kubelet gives every container: its pod's
/// `etc-hosts` and the container's termination log, laid out as the kubelet lays them
/// out under `kubelet/pods/<uid>/`.
fn with_kubelet_mounts(mut c: v1::ContainerConfig, kubelet: &Path) -> v1::ContainerConfig {
    let name = c.metadata.as_ref().unwrap().name.clone();
    let pod = kubelet.join(KUBELET_POD);
    let log_dir = pod.join("containers").join(&name);
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(
        pod.join("etc-hosts"),
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n10.88.0.9\tro-pod\n",
    )
    .unwrap();
    let log = log_dir.join("5e7a1c2d");
    std::fs::write(&log, "").unwrap();
    // As the kubelet leaves it: any user of the container may write it.
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mount = |host: &Path, container: &str| v1::Mount {
        host_path: host.display().to_string(),
        container_path: container.into(),
        ..Default::default()
    };
    c.mounts = vec![
        mount(&pod.join("etc-hosts"), "/etc/hosts"),
        mount(&log, "/dev/termination-log"),
    ];
    c
}

/// What standard CRI clients check beyond the security context: a read-only root that
/// still has its writable mounts, a user named from the image, network administration
/// inside the pod's own VM (with the capability for it, not without), a group without
/// a user refused, and the features Status reports.
#[test]
fn read_only_roots_user_names_and_network_administration() {
    let registry = TestRegistry::start().unwrap();
    let plain = image(&registry, "ro:plain", "");
    let kubelet = tempfile::tempdir().unwrap();
    let d = Vmletd::start_with(
        &["--insecure-registry", registry.addr()],
        "[network]\nmode = \"none\"\n",
    );
    let c = d.client();
    c.pull(&plain).expect("PullImage");

    let status = c.runtime_status();
    let handler = status.runtime_handlers[0].features.unwrap();
    assert!(handler.recursive_read_only_mounts, "{status:?}");
    assert!(handler.user_namespaces, "{status:?}");
    assert!(status.features.unwrap().supplemental_groups_policy);

    let mut pod_cfg = pod_config(&format!("ro-{}", "p".repeat(64)), &d.log_dir());
    pod_cfg.hostname.clear();
    pod_cfg.linux = sandbox_security(v1::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");

    // A read-only root as the restricted profile's containers ask for it, as `nobody`
    // from the image; its mounts and /dev/shm stay writable; no network administration
    // with the default capabilities.
    let script = "id -u; id -g; \
        touch /in-root 2>&1 | grep -o 'Read-only file system'; \
        grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1; \
        echo x > /dev/shm/x && echo shm-written; \
        grep -c ro-pod /etc/hosts; \
        echo from-a-read-only-root > /dev/termination-log && echo log-written; \
        brctl addbr br-ro 2>/dev/null && echo bridge || echo no-bridge";
    let (out, s) = run(
        &d,
        &pod,
        &pod_cfg,
        with_kubelet_mounts(
            with_security(
                container_config("ro", &plain, script),
                v1::LinuxContainerSecurityContext {
                    readonly_rootfs: true,
                    run_as_username: "nobody".into(),
                    ..Default::default()
                },
            ),
            kubelet.path(),
        ),
    );
    assert_eq!(s.exit_code, 0, "{out:?}");
    assert_eq!(
        out,
        [
            "65534",
            "65534",
            "Read-only file system",
            "ro",
            "shm-written",
            "1",
            "log-written",
            "no-bridge"
        ]
    );
    let u = s.user.unwrap().linux.unwrap();
    assert_eq!((u.uid, u.gid), (65534, 65534));
    // The termination log reached the host file the kubelet reads.
    let log = kubelet
        .path()
        .join(KUBELET_POD)
        .join("containers/ro/5e7a1c2d");
    assert_eq!(
        std::fs::read_to_string(log).unwrap(),
        "from-a-read-only-root\n"
    );

    // Bridges, veth pairs and VLANs in the pod's own VM: privileged, or with
    // NET_ADMIN alone.
    let admin = |n: &str| {
        format!(
            "brctl addbr br-{n} && echo bridge; \
             ip link add v-{n} type veth && echo veth; \
             ip link add link v-{n} name v-{n}.5 type vlan id 5 && echo vlan; \
             [ -e /proc/net/ip_tables_names ] && echo iptables"
        )
    };
    for (n, sc) in [
        (
            "priv",
            v1::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        ),
        (
            "netadmin",
            v1::LinuxContainerSecurityContext {
                capabilities: caps(&["NET_ADMIN"], &["ALL"], &[]),
                ..Default::default()
            },
        ),
    ] {
        let (out, _) = run(
            &d,
            &pod,
            &pod_cfg,
            with_security(container_config(n, &plain, &admin(n)), sc),
        );
        assert_eq!(out, ["bridge", "veth", "vlan", "iptables"], "{n}");
    }

    // A group without a user: refused as containerd refuses it, naming both fields.
    let e = c
        .create(
            &pod,
            with_security(
                container_config("group-only", &plain, "true"),
                v1::LinuxContainerSecurityContext {
                    run_as_group: Some(v1::Int64Value { value: 3000 }),
                    ..Default::default()
                },
            ),
            &pod_cfg,
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("run_as_group") && e.message().contains("run_as_user"),
        "{}",
        e.message()
    );
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
}

/// The namespace options a kubelet sends for a pod with `hostUsers: false` (and
/// repeats on its containers): its user namespace maps 65536 ids at `host_id`.
fn userns_options(host_id: u32) -> v1::NamespaceOption {
    let range = v1::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    };
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod as i32,
        pid: v1::NamespaceMode::Container as i32,
        ipc: v1::NamespaceMode::Pod as i32,
        userns_options: Some(v1::UserNamespace {
            mode: v1::NamespaceMode::Pod as i32,
            uids: vec![range],
            gids: vec![range],
        }),
        ..Default::default()
    }
}

/// A pod with its own user namespace (`hostUsers: false`), as the kubelet sends it:
/// its container is root inside and the mapped uid in the guest's initial namespace,
/// sees its image's, its emptyDir's and its secret's files with their owners, and so
/// does an exec; mappings the kernel would refuse are refused with nothing left
/// behind.
#[test]
fn user_namespaced_pods() {
    let registry = TestRegistry::start().unwrap();
    let plain = image(&registry, "userns:plain", "");
    // Not on a tmpfs (the emulated machine's /tmp is one), so that the emptyDir is on
    // the pod's disk, whose file system can be idmapped.
    let kubelet = tempfile::Builder::new()
        .prefix("kubelet-")
        .tempdir_in("/var/lib")
        .unwrap();
    let cache = kubelet
        .path()
        .join(KUBELET_POD)
        .join("volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&cache).unwrap();
    // A secret only its owner (root) may read: copied into the guest, it must stay
    // root's inside the user namespace.
    let creds = kubelet
        .path()
        .join(KUBELET_POD)
        .join("volumes/kubernetes.io~secret/creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("password"), "s3cret").unwrap();
    std::fs::set_permissions(
        creds.join("password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    let d = Vmletd::start_with(
        &["--insecure-registry", registry.addr()],
        "[network]\nmode = \"none\"\n",
    );
    let c = d.client();
    c.pull(&plain).expect("PullImage");

    let sandbox_linux = |ns: v1::NamespaceOption| {
        sandbox_security(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        })
    };
    let mut pod_cfg = pod_config("userns-web-7c9d8f6b5-q2w4e", &d.log_dir());
    pod_cfg.linux = sandbox_linux(userns_options(131_072));
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");

    let script = "id -u; id -g; awk '{print $1, $2, $3}' /proc/self/uid_map; \
        stat -c '%u %g' /etc/passwd /bin; \
        echo x > /cache/f && stat -c '%u %g' /cache /cache/f; \
        touch /in-root && stat -c '%u' /in-root; \
        cat /etc/creds/password; echo; stat -c '%u %a' /etc/creds/password; \
        echo ready; exec sleep 12345";
    let mut cfg = with_security(
        container_config("userns", &plain, script),
        v1::LinuxContainerSecurityContext {
            namespace_options: Some(userns_options(131_072)),
            ..Default::default()
        },
    );
    cfg.mounts = vec![
        v1::Mount {
            host_path: cache.display().to_string(),
            container_path: "/cache".into(),
            ..Default::default()
        },
        v1::Mount {
            host_path: creds.display().to_string(),
            container_path: "/etc/creds".into(),
            readonly: true,
            ..Default::default()
        },
    ];
    let id = c.create(&pod, cfg, &pod_cfg).expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    let start = std::time::Instant::now();
    while !stdout(&d, "userns").contains(&"ready".to_string()) {
        assert!(
            start.elapsed() < WAIT,
            "never ready: {:?}",
            stdout(&d, "userns")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        stdout(&d, "userns"),
        [
            "0",
            "0",
            "0 131072 65536",
            "0 0",
            "0 0",
            "0 0",
            "0 0",
            "0",
            "s3cret",
            "0 400",
            "ready"
        ]
    );
    let u = c.status(&id).unwrap().user.unwrap().linux.unwrap();
    assert_eq!((u.uid, u.gid), (0, 0));
    // From the guest's initial namespace: the mapped ids.
    let outside = d.in_guest(
        &pod,
        "for p in /proc/[0-9]*; do \
           [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = 'sleep 12345 ' ] && \
           awk '/^Uid|^Gid/ {print $2}' $p/status; \
         done; true",
    );
    assert_eq!(outside, "131072\n131072");
    // An exec joins the container's user namespace.
    let r = c
        .exec(
            &id,
            &["sh", "-c", "id -u; awk '{print $2}' /proc/self/uid_map"],
            60,
        )
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "0\n131072\n");
    c.stop(&id, 0).unwrap();
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();

    // Overlapping ranges, an empty one, and a mode the kubelet never sends.
    let mut overlapping = userns_options(65536);
    if let Some(u) = overlapping.userns_options.as_mut() {
        u.uids.push(v1::IdMapping {
            host_id: 100_000,
            container_id: 70_000,
            length: 10,
        });
    }
    let mut empty = userns_options(65536);
    if let Some(u) = empty.userns_options.as_mut() {
        u.gids[0].length = 0;
    }
    let mut container_mode = userns_options(65536);
    if let Some(u) = container_mode.userns_options.as_mut() {
        u.mode = v1::NamespaceMode::Container as i32;
    }
    for (ns, why) in [
        (overlapping, "overlaps"),
        (empty, "empty range"),
        (container_mode, "only POD"),
    ] {
        let mut cfg = pod_config("userns-bad", &d.log_dir());
        cfg.linux = sandbox_linux(ns);
        let e = c.run_pod(cfg).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}: {e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
    assert!(c.list_pods(None).is_empty());
}
