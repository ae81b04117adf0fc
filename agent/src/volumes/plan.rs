//! Which way each CRI mount reaches a pod's guest, decided from its host path.
//!
//! The kubelet lays out what it owns under `<root>/pods/<uid>/`:
//! `etc-hosts`, `containers/<name>/<id>` (termination logs),
//! `volumes/kubernetes.io~<plugin>/<name>` and `volume-subpaths/...`. Small trees it
//! writes and updates itself (configMap, secret, projected, downwardAPI, etc-hosts,
//! subPaths) are **copied** into the guest and kept in sync; a termination log is
//! copied in and **copied back** when its container exits; an emptyDir is made
//! **in the guest** (a directory on the scratch disk, or a tmpfs when the kubelet
//! backs it with one), shared by the pod's containers with nothing to copy. Any other
//! host path (hostPath, CSI and other persistent volumes) has writers outside the pod
//! and needs a live shared file system.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmlet_cri::runtime::{MountConfig, Propagation};
use vmlet_proto::agent as pb;

use super::tree;

/// The guest directory holding the pod's volumes (see vmlet-init).
pub const GUEST_VOLUMES: &str = "/run/vmlet/volumes";
/// Default of `[volumes] max_copy_bytes`.
pub const DEFAULT_MAX_COPY_BYTES: u64 = 4 << 20;
/// Largest `[volumes] max_copy_bytes`: a copy travels in one guest message.
pub const MAX_COPY_BYTES_LIMIT: u64 = 8 << 20;
/// Most files, directories and symlinks in a copied volume (as vmlet-init allows).
pub const MAX_COPY_ENTRIES: usize = 16_384;
/// The kubelet reads at most this much of a termination log (its end).
pub const TERMINATION_LOG_MAX: u32 = 4096;
/// The pod annotation that asks for a shared file system (virtio-fs).
pub const SHARED_FS_ANNOTATION: &str = "io.vmlet.shared-fs";

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Volume settings (`[volumes]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSettings {
    /// Most bytes one copied volume may hold.
    pub max_copy_bytes: u64,
}

impl Default for VolumeSettings {
    fn default() -> Self {
        VolumeSettings {
            max_copy_bytes: DEFAULT_MAX_COPY_BYTES,
        }
    }
}

/// How a mount reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Class {
    /// Copied into the guest, and copied again whenever the host's copy changes.
    Copied,
    /// A container's termination log: copied in, copied back when it exits.
    TerminationLog,
    /// An emptyDir on the pod's scratch disk.
    ScratchDir,
    /// An emptyDir in guest memory (tmpfs) of at most this many bytes.
    MemoryDir(u64),
    /// Shared live through the pod's virtio-fs file system.
    Shared,
    /// An image, read-only, from one of the pod's image slots.
    Image,
}

/// One mount, planned: where it comes from, the guest volume that carries it, and
/// how the container mounts that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    /// Where it appears in the container.
    pub container_path: String,
    /// The host file or directory.
    pub host_path: String,
    /// The guest volume's name (shared by every mount of the same host path).
    pub volume: String,
    /// How it gets there.
    pub class: Class,
    /// Why, in words (verbose ContainerStatus).
    pub reason: String,
    /// Options of the guest's bind mount.
    pub options: Vec<String>,
    /// For an image volume: the image as requested.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// For an image volume: the image slot that holds it (once attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_slot: Option<String>,
    /// For a subPath of an emptyDir: the path inside the volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subpath: String,
}

impl Planned {
    /// The guest mount of this volume into the container.
    pub fn guest_mount(&self) -> pb::Mount {
        pb::Mount {
            destination: self.container_path.clone(),
            r#type: "bind".into(),
            source: format!("{GUEST_VOLUMES}/{}", self.volume),
            options: self.options.clone(),
            subpath: self.subpath.clone(),
        }
    }
}

/// Why a mount cannot reach the pod.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Bad or unusable input.
    #[error("mount of {host:?} at {container:?}: {why}")]
    Refused {
        /// Host path (or image).
        host: String,
        /// Container path.
        container: String,
        /// Why.
        why: String,
    },
    /// A mount that needs what vmlet does not offer yet.
    #[error("mount of {host:?} at {container:?}: {why}")]
    Unsupported {
        /// Host path (or image).
        host: String,
        /// Container path.
        container: String,
        /// Why.
        why: String,
    },
}

/// What the kubelet's layout says a host path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    EtcHosts,
    ContainerFile,
    EmptyDir,
    ApiData(&'static str),
    SubPath,
}

/// Entries looked at to find a subPath inside its emptyDir.
const MAX_SUBPATH_SEARCH: usize = 10_000;

/// For a kubelet subPath mount (`pods/<uid>/volume-subpaths/<volume>/<container>/<n>`,
/// the kubelet's bind mount of a path inside volume `<volume>`) of an emptyDir: the
/// emptyDir's directory and the path inside it. The bind shares the inode of its
/// source, so the source is found by device and inode in a bounded walk of the
/// emptyDir (the kubelet made the directory there before binding it).
fn empty_dir_subpath(host: &Path) -> Option<(PathBuf, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let parts: Vec<&std::ffi::OsStr> = host
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    let at = parts.iter().rposition(|p| *p == "volume-subpaths")?;
    let volume = parts.get(at + 1)?;
    if parts.len() != at + 4 || at < 2 || parts[at - 2] != "pods" {
        return None;
    }
    let mut pod_dir = PathBuf::from("/");
    pod_dir.extend(&parts[..at]);
    let dir = pod_dir.join("volumes/kubernetes.io~empty-dir").join(volume);
    let want = std::fs::metadata(host).ok()?;
    if !want.is_dir() || !std::fs::symlink_metadata(&dir).ok()?.is_dir() {
        return None;
    }
    let mut queue = std::collections::VecDeque::from([PathBuf::new()]);
    let mut seen = 0usize;
    while let Some(rel) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_SUBPATH_SEARCH {
                return None;
            }
            let Ok(md) = e.metadata() else { continue };
            // Directories only, never through a symlink: the walk stays in the volume.
            if !md.is_dir() {
                continue;
            }
            let sub = rel.join(e.file_name());
            if (md.dev(), md.ino()) == (want.dev(), want.ino()) {
                return Some((dir, sub));
            }
            queue.push_back(sub);
        }
    }
    None
}

/// The kubelet-owned kind of `host`, found by the `pods/<uid>/...` part of its path.
fn kubelet_owned(host: &Path) -> Option<Owned> {
    let parts: Vec<&str> = host
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let at = parts.iter().rposition(|p| *p == "pods")?;
    let rest = parts.get(at + 2..)?;
    match rest {
        ["etc-hosts"] => Some(Owned::EtcHosts),
        ["containers", _, _] => Some(Owned::ContainerFile),
        ["volumes", plugin, _] => match *plugin {
            "kubernetes.io~empty-dir" => Some(Owned::EmptyDir),
            "kubernetes.io~configmap" => Some(Owned::ApiData("configMap")),
            "kubernetes.io~secret" => Some(Owned::ApiData("secret")),
            "kubernetes.io~projected" => Some(Owned::ApiData("projected")),
            "kubernetes.io~downward-api" => Some(Owned::ApiData("downwardAPI")),
            _ => None,
        },
        ["volume-subpaths", ..] => Some(Owned::SubPath),
        _ => None,
    }
}

/// The guest volume name for a host path: stable across restarts, shared by every
/// container that mounts the same path.
fn volume_name(prefix: &str, host: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(host.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// What a pod offers its mounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodFacts<'a> {
    /// The container's termination message path ("" when unknown).
    pub termination_path: &'a str,
    /// The pod has a shared file system (virtio-fs).
    pub shared_fs: bool,
}

/// Plans one mount of a container.
pub fn plan(
    m: &MountConfig,
    facts: PodFacts<'_>,
    settings: &VolumeSettings,
) -> Result<Planned, PlanError> {
    let termination_path = facts.termination_path;
    let refuse = |why: String| PlanError::Refused {
        host: if m.host_path.is_empty() {
            m.image.clone()
        } else {
            m.host_path.clone()
        },
        container: m.container_path.clone(),
        why,
    };
    let unsupported = |why: String| PlanError::Unsupported {
        host: m.host_path.clone(),
        container: m.container_path.clone(),
        why,
    };
    let mut options = vec![
        "rbind".to_owned(),
        if m.readonly { "ro" } else { "rw" }.to_owned(),
    ];
    if m.recursive_read_only {
        options.push("rro".into());
    }
    options.push(
        match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => {
                return Err(refuse(
                    "Bidirectional propagation cannot cross the VM boundary: mounts made in \
                     a pod VM never reach the host"
                        .into(),
                ))
            }
        }
        .to_owned(),
    );
    if !m.image.is_empty() {
        if !m.readonly {
            return Err(refuse("an image volume is read-only: set readonly".into()));
        }
        return Ok(Planned {
            container_path: m.container_path.clone(),
            host_path: String::new(),
            // Named once the image is resolved (one volume per image in a pod).
            volume: String::new(),
            class: Class::Image,
            reason: "an image, read-only, from one of the pod's image slots".into(),
            options,
            image: m.image.clone(),
            image_slot: None,
            subpath: String::new(),
        });
    }
    let host = Path::new(&m.host_path);
    let md = std::fs::metadata(host).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => refuse("the host path does not exist".into()),
        _ => refuse(format!("cannot stat the host path: {e}")),
    })?;
    let ft = md.file_type();
    if !ft.is_file() && !ft.is_dir() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_block_device() || ft.is_char_device() {
            "a device node: host devices cannot be passed into a pod VM"
        } else if ft.is_socket() {
            "a unix socket: sockets cannot cross the VM boundary"
        } else if ft.is_fifo() {
            "a FIFO: pipes cannot cross the VM boundary"
        } else {
            "neither a file nor a directory"
        };
        return Err(refuse(format!("the host path is {what}")));
    }
    let owned = kubelet_owned(host);
    // A subPath of an emptyDir is the emptyDir's guest directory, not a copy: what
    // the pod's other containers write there is what this one sees.
    let sub = match owned {
        Some(Owned::SubPath) => empty_dir_subpath(host),
        _ => None,
    };
    let empty_dir = sub.is_some() || (owned == Some(Owned::EmptyDir) && ft.is_dir());
    let (class, reason) = match owned {
        _ if empty_dir => {
            let fs = nix::sys::statfs::statfs(host)
                .map_err(|e| refuse(format!("cannot statfs the host path: {e}")))?;
            if fs.filesystem_type().0 as i64 == TMPFS_MAGIC {
                let size = (fs.blocks() as u64).saturating_mul(fs.block_size() as u64);
                (
                    Class::MemoryDir(size),
                    "emptyDir with medium Memory: a tmpfs in the guest".to_owned(),
                )
            } else {
                (
                    Class::ScratchDir,
                    "emptyDir: a directory on the pod's scratch disk".to_owned(),
                )
            }
        }
        Some(Owned::ContainerFile) if ft.is_file() => (
            Class::TerminationLog,
            "termination log: copied in, copied back when the container exits".to_owned(),
        ),
        _ if ft.is_file() && m.container_path == termination_path && owned.is_some() => (
            Class::TerminationLog,
            "termination log: copied in, copied back when the container exits".to_owned(),
        ),
        Some(Owned::EtcHosts) | Some(Owned::SubPath) | Some(Owned::ApiData(_)) => {
            let what = match owned {
                Some(Owned::EtcHosts) => "the pod's hosts file",
                Some(Owned::SubPath) => "a subPath",
                Some(Owned::ApiData(kind)) => kind,
                _ => "a kubelet file",
            };
            (
                Class::Copied,
                format!("{what}, written by the kubelet: copied, and kept in sync"),
            )
        }
        _ if facts.shared_fs => (
            Class::Shared,
            "a host path the kubelet does not own (hostPath, CSI or other persistent \
             volume): shared live through virtio-fs"
                .to_owned(),
        ),
        _ => {
            return Err(unsupported(format!(
                "a host path outside the kubelet's pod directory (hostPath, CSI or other \
                 persistent volume) needs the pod's shared file system, and this pod was \
                 started without one: give the pod the annotation \
                 {SHARED_FS_ANNOTATION}=true, or set vm.shared_fs = \"always\""
            )))
        }
    };
    if matches!(class, Class::Copied | Class::TerminationLog) {
        let size = tree::measure(host, MAX_COPY_ENTRIES)
            .map_err(|e| refuse(format!("cannot read the host path: {e}")))?;
        if size.bytes > settings.max_copy_bytes {
            return Err(refuse(format!(
                "{} bytes to copy into the pod, more than [volumes] max_copy_bytes ({})",
                size.bytes, settings.max_copy_bytes
            )));
        }
    }
    let prefix = match class {
        Class::Copied => "copy",
        Class::TerminationLog => "tlog",
        Class::ScratchDir | Class::MemoryDir(_) => "empty",
        Class::Shared => "share",
        Class::Image => "image",
    };
    // The emptyDir's own path names the volume: one guest directory for every
    // mount of it, whole or by subPath.
    let (volume_path, subpath) = match sub {
        Some((dir, sub)) => (dir.display().to_string(), sub.display().to_string()),
        None => (m.host_path.clone(), String::new()),
    };
    let reason = if subpath.is_empty() {
        reason
    } else {
        format!("subPath {subpath:?} of an {reason}")
    };
    Ok(Planned {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        volume: volume_name(prefix, &volume_path),
        class,
        reason,
        options,
        image: String::new(),
        image_slot: None,
        subpath,
    })
}

/// The volume name of an image volume, from the resolved image ID.
pub fn image_volume_name(image_id: &str) -> String {
    volume_name("image", image_id)
}

/// Plans every mount of a container; two mounts at one container path are refused.
pub fn plan_all(
    mounts: &[MountConfig],
    facts: PodFacts<'_>,
    settings: &VolumeSettings,
) -> Result<Vec<Planned>, PlanError> {
    let mut planned: Vec<Planned> = Vec::with_capacity(mounts.len());
    for m in mounts {
        if planned.iter().any(|p| p.container_path == m.container_path) {
            let host = if m.host_path.is_empty() {
                m.image.clone()
            } else {
                m.host_path.clone()
            };
            return Err(PlanError::Refused {
                host,
                container: m.container_path.clone(),
                why: "another mount has the same container path".into(),
            });
        }
        planned.push(plan(m, facts, settings)?);
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &Path, ctr: &str) -> MountConfig {
        MountConfig {
            container_path: ctr.into(),
            host_path: host.display().to_string(),
            ..Default::default()
        }
    }

    /// A kubelet-like pod directory under a temporary root.
    fn pod_dir() -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let pod = root
            .path()
            .join("pods/1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        for d in [
            "volumes/kubernetes.io~configmap/cfg",
            "volumes/kubernetes.io~empty-dir/cache",
            "containers/app",
            "volume-subpaths/cfg/app/0",
        ] {
            std::fs::create_dir_all(pod.join(d)).unwrap();
        }
        std::fs::write(pod.join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(pod.join("containers/app/5f3a"), "").unwrap();
        std::fs::write(pod.join("volumes/kubernetes.io~configmap/cfg/k"), "v").unwrap();
        (root, pod)
    }

    #[test]
    fn an_empty_dir_subpath_is_the_empty_dirs_guest_directory() {
        // The kubelet's bind of the subPath (root: the unit tests run as root).
        let (_root, pod) = pod_dir();
        let inside = pod.join("volumes/kubernetes.io~empty-dir/cache/a/b");
        std::fs::create_dir_all(&inside).unwrap();
        let bound = pod.join("volume-subpaths/cache/app/3");
        std::fs::create_dir_all(&bound).unwrap();
        nix::mount::mount(
            Some(&inside),
            &bound,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount (the unit tests need root)");
        let planned = plan(
            &mount(&bound, "/data"),
            PodFacts::default(),
            &VolumeSettings::default(),
        );
        let whole = plan(
            &mount(&pod.join("volumes/kubernetes.io~empty-dir/cache"), "/cache"),
            PodFacts::default(),
            &VolumeSettings::default(),
        );
        let _ = nix::mount::umount(&bound);
        let (planned, whole) = (planned.unwrap(), whole.unwrap());
        assert_eq!(planned.class, Class::ScratchDir, "{planned:?}");
        assert_eq!(planned.subpath, "a/b");
        assert_eq!(planned.volume, whole.volume);
        assert_eq!(planned.guest_mount().subpath, "a/b");
        assert!(whole.subpath.is_empty() && whole.guest_mount().subpath.is_empty());
        // A subPath of a configMap is still a copy of what the kubelet bound.
        let cfg = plan(
            &mount(&pod.join("volume-subpaths/cfg/app/0"), "/etc/k"),
            PodFacts::default(),
            &VolumeSettings::default(),
        )
        .unwrap();
        assert_eq!((cfg.class, cfg.subpath.as_str()), (Class::Copied, ""));
    }

    #[test]
    fn kubelet_paths_are_classified() {
        let (_root, pod) = pod_dir();
        let s = VolumeSettings::default();
        let p = |rel: &str, ctr: &str| {
            plan(&mount(&pod.join(rel), ctr), PodFacts::default(), &s).unwrap()
        };
        assert_eq!(p("etc-hosts", "/etc/hosts").class, Class::Copied);
        assert_eq!(
            p("volumes/kubernetes.io~configmap/cfg", "/cfg").class,
            Class::Copied
        );
        assert_eq!(
            p("containers/app/5f3a", "/dev/termination-log").class,
            Class::TerminationLog
        );
        // /tmp here is a disk or a tmpfs: either way an emptyDir stays in the guest.
        assert!(matches!(
            p("volumes/kubernetes.io~empty-dir/cache", "/cache").class,
            Class::ScratchDir | Class::MemoryDir(_)
        ));
        assert_eq!(p("volume-subpaths/cfg/app/0", "/x").class, Class::Copied);
    }

    #[test]
    fn the_same_host_path_is_one_volume() {
        let (_root, pod) = pod_dir();
        let s = VolumeSettings::default();
        let a = plan(
            &mount(&pod.join("etc-hosts"), "/etc/hosts"),
            PodFacts::default(),
            &s,
        )
        .unwrap();
        let b = plan(
            &mount(&pod.join("etc-hosts"), "/other"),
            PodFacts::default(),
            &s,
        )
        .unwrap();
        assert_eq!(a.volume, b.volume);
        assert!(a.volume.starts_with("copy-") && a.volume.len() <= 64);
        let g = a.guest_mount();
        assert_eq!(g.source, format!("{GUEST_VOLUMES}/{}", a.volume));
        assert_eq!(g.options, ["rbind", "rw", "rprivate"]);
    }

    #[test]
    fn options_follow_the_request() {
        let (_root, pod) = pod_dir();
        let mut m = mount(&pod.join("volumes/kubernetes.io~configmap/cfg"), "/cfg");
        m.readonly = true;
        m.recursive_read_only = true;
        m.propagation = Propagation::HostToContainer;
        let p = plan(&m, PodFacts::default(), &VolumeSettings::default()).unwrap();
        assert_eq!(p.options, ["rbind", "ro", "rro", "rslave"]);
    }

    #[test]
    fn bad_mounts_are_refused_with_the_mount_named() {
        let (root, pod) = pod_dir();
        let s = VolumeSettings::default();
        let err = |m: MountConfig| plan(&m, PodFacts::default(), &s).unwrap_err();
        let e = err(mount(&pod.join("missing"), "/m"));
        assert!(e.to_string().contains("does not exist") && e.to_string().contains("/m"));
        let e = err(mount(Path::new("/dev/null"), "/n"));
        assert!(e.to_string().contains("device node"), "{e}");
        let sock = root.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(err(mount(&sock, "/s")).to_string().contains("socket"));
        let mut m = mount(&pod.join("etc-hosts"), "/etc/hosts");
        m.propagation = Propagation::Bidirectional;
        assert!(err(m).to_string().contains("Bidirectional"));
        // Not the kubelet's: needs a shared file system.
        assert!(matches!(
            err(mount(root.path(), "/h")),
            PlanError::Unsupported { .. }
        ));
        let small = VolumeSettings { max_copy_bytes: 4 };
        let e = plan(
            &mount(&pod.join("etc-hosts"), "/etc/hosts"),
            PodFacts::default(),
            &small,
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_copy_bytes"), "{e}");
        let twice = [
            mount(&pod.join("etc-hosts"), "/a"),
            mount(&pod.join("etc-hosts"), "/a"),
        ];
        assert!(plan_all(&twice, PodFacts::default(), &s).is_err());
        // With a shared file system, a host path of its own is shared.
        let shared = PodFacts {
            shared_fs: true,
            ..Default::default()
        };
        let p = plan(&mount(root.path(), "/h"), shared, &s).unwrap();
        assert_eq!((p.class, &p.volume[..6]), (Class::Shared, "share-"));
    }
}
