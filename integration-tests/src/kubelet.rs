//! Requests shaped like a kubelet's: the pod directory it lays out on the host
//! (etc-hosts, termination logs, atomic-writer volumes, emptyDirs), the mounts it gives
//! each container, the restricted Pod Security Standard's security contexts, and a
//! Deployment pod's generated name with no hostname.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cri::{container_config, sandbox_security, v1};

/// A kubelet pod directory at `root/pods/<uid>`.
pub struct KubeletPod {
    /// `root/pods/<uid>`.
    pub dir: PathBuf,
}

impl KubeletPod {
    /// Lays out pod `uid`'s directory under `root` with containers "app" and
    /// "sidecar": etc-hosts, termination logs, a configMap, a secret, the projected
    /// service-account token, emptyDirs "shared" (on disk, with a subPath bound for
    /// the sidecar) and "mem" (medium Memory: a tmpfs).
    pub fn new(root: &Path, uid: &str) -> KubeletPod {
        let dir = root.join("pods").join(uid);
        std::fs::create_dir_all(&dir).unwrap();
        let pod = KubeletPod { dir };
        std::fs::write(
            pod.dir.join("etc-hosts"),
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n10.88.0.7\tweb-5d8f7c6b9-x2x4q\n",
        )
        .unwrap();
        for c in ["app", "sidecar"] {
            let d = pod.dir.join("containers").join(c);
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join("3f2a9c1b");
            std::fs::write(&f, "").unwrap();
            // As the kubelet leaves it: any user of the container may write it.
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        pod.atomic(
            "kubernetes.io~configmap/config",
            "..2026_12_05_10_00_00.1",
            &[("a", "1"), ("b", "1")],
            0o644,
        );
        pod.atomic(
            "kubernetes.io~secret/creds",
            "..2026_12_05_10_00_00.1",
            &[("password", "s3cret")],
            0o644,
        );
        pod.atomic(
            "kubernetes.io~projected/kube-api-access-7xk2p",
            "..2026_12_05_10_00_00.1",
            &[
                ("token", "eyJhbGciOiJSUzI1NiJ9.e30.sig"),
                ("namespace", "default"),
                ("ca.crt", "-----BEGIN CERTIFICATE-----\n"),
            ],
            0o644,
        );
        for e in ["shared", "mem"] {
            std::fs::create_dir_all(pod.volume(&format!("kubernetes.io~empty-dir/{e}"))).unwrap();
        }
        // The sidecar's subPath "sub" of the emptyDir: the kubelet makes the directory
        // in the volume and binds it under volume-subpaths/<volume>/<container>/<n>.
        let sub = pod.volume("kubernetes.io~empty-dir/shared/sub");
        std::fs::create_dir_all(&sub).unwrap();
        let bound = pod.subpath("sidecar");
        std::fs::create_dir_all(&bound).unwrap();
        let st = std::process::Command::new("mount")
            .arg("--bind")
            .arg(&sub)
            .arg(&bound)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "bind {} at {}",
            sub.display(),
            bound.display()
        );
        // medium: Memory — the kubelet backs it with a tmpfs.
        let mem = pod.volume("kubernetes.io~empty-dir/mem");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&mem)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs on {}", mem.display());
        pod
    }

    /// Volume `rel` (`<plugin>/<name>`) of the pod.
    pub fn volume(&self, rel: &str) -> PathBuf {
        self.dir.join("volumes").join(rel)
    }

    /// The kubelet's bind of the emptyDir's subPath for `container`.
    pub fn subpath(&self, container: &str) -> PathBuf {
        self.dir
            .join("volume-subpaths/shared")
            .join(container)
            .join("7")
    }

    /// Writes version `ts` of an atomic-writer volume the kubelet's way: the new
    /// timestamped directory, then `..data` swapped by rename, then the old directory
    /// removed; the key symlinks point through `..data`.
    pub fn atomic(&self, rel: &str, ts: &str, keys: &[(&str, &str)], mode: u32) {
        let v = self.volume(rel);
        std::fs::create_dir_all(v.join(ts)).unwrap();
        for (k, val) in keys {
            let f = v.join(ts).join(k);
            std::fs::write(&f, val).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let old = std::fs::read_link(v.join("..data")).ok();
        std::os::unix::fs::symlink(ts, v.join("..data_tmp")).unwrap();
        std::fs::rename(v.join("..data_tmp"), v.join("..data")).unwrap();
        for (k, _) in keys {
            let link = v.join(k);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{k}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(v.join(old)).unwrap();
        }
    }

    /// The host file the kubelet keeps as `container`'s termination log.
    pub fn termination_log(&self, container: &str) -> PathBuf {
        self.dir.join("containers").join(container).join("3f2a9c1b")
    }
}

impl Drop for KubeletPod {
    fn drop(&mut self) {
        let mem = self.volume("kubernetes.io~empty-dir/mem");
        let _ = std::process::Command::new("umount").arg(&mem).status();
        let _ = std::process::Command::new("umount")
            .arg(self.subpath("sidecar"))
            .status();
    }
}

/// A host mount as a kubelet sends it.
pub fn mount(host: PathBuf, container: &str, readonly: bool) -> v1::Mount {
    v1::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// The mounts a kubelet gives container `name` of a Deployment with a configMap, a
/// secret, the service-account token and two emptyDirs; the sidecar also mounts the
/// subPath "sub" of the shared emptyDir.
pub fn kubelet_mounts(pod: &KubeletPod, name: &str) -> Vec<v1::Mount> {
    let mut mounts = vec![
        mount(
            pod.volume("kubernetes.io~configmap/config"),
            "/etc/config",
            true,
        ),
        mount(pod.volume("kubernetes.io~secret/creds"), "/etc/creds", true),
        mount(
            pod.volume("kubernetes.io~projected/kube-api-access-7xk2p"),
            "/var/run/secrets/kubernetes.io/serviceaccount",
            true,
        ),
        mount(
            pod.volume("kubernetes.io~empty-dir/shared"),
            "/shared",
            false,
        ),
        mount(pod.volume("kubernetes.io~empty-dir/mem"), "/mem", false),
        mount(pod.dir.join("etc-hosts"), "/etc/hosts", false),
        mount(pod.termination_log(name), "/dev/termination-log", false),
    ];
    if name == "sidecar" {
        mounts.push(mount(pod.subpath(name), "/sub", false));
    }
    mounts
}

/// A container of the restricted Pod Security Standard, as a kubelet sends it.
pub fn kubelet_container(
    pod: &KubeletPod,
    name: &str,
    image: &str,
    script: &str,
) -> v1::ContainerConfig {
    let mut c = container_config(name, image, script);
    c.mounts = kubelet_mounts(pod, name);
    c.annotations = [
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            "/dev/termination-log".to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".to_string(),
            "File".to_string(),
        ),
    ]
    .into();
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            run_as_user: Some(v1::Int64Value { value: 1000 }),
            run_as_group: Some(v1::Int64Value { value: 3000 }),
            supplemental_groups: vec![2000],
            no_new_privs: true,
            capabilities: Some(v1::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// A pod config as a kubelet sends it for a Deployment's pod: its generated name
/// (`name` plus a ReplicaSet hash and a suffix: longer than a hostname may be), the
/// UID, no hostname, the log directory `<log_root>/<namespace>_<name>_<uid>`, the
/// kubelet's labels and the restricted profile's sandbox context.
pub fn kubelet_pod_config(name: &str, uid: &str, log_root: &Path) -> v1::PodSandboxConfig {
    let name = format!("{name}-payments-frontend-deployment-production-eu-5f7c9d8b6c-x2x4q");
    let log_directory = log_root.join(format!("default_{name}_{uid}"));
    std::fs::create_dir_all(&log_directory).unwrap();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: String::new(),
        log_directory: log_directory.display().to_string(),
        labels: [
            ("io.kubernetes.pod.name".to_string(), name),
            ("io.kubernetes.pod.namespace".to_string(), "default".into()),
            ("io.kubernetes.pod.uid".to_string(), uid.into()),
        ]
        .into(),
        linux: sandbox_security(v1::LinuxSandboxSecurityContext {
            run_as_user: Some(v1::Int64Value { value: 1000 }),
            run_as_group: Some(v1::Int64Value { value: 3000 }),
            supplemental_groups: vec![2000],
            seccomp: Some(v1::SecurityProfile {
                profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
