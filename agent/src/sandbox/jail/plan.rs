//! What a VMM's jail holds, as a list of steps that [`super::process`] runs in the
//! child between clone and exec. Built here, in vmletd, where it may allocate, look
//! at the host and be tested; the child only makes the system calls.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::super::error::SandboxError;
use super::super::vmm::VmmCommand;
use super::JailSpec;

/// Options of the jail root's tmpfs: small, since it only holds mount points and two
/// device nodes.
const ROOT_TMPFS: &str = "size=64k,nr_inodes=1024";

/// One step of building the jail, with the host paths it acts on (made absolute
/// below the jail root where they name something inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No mount event leaves the new mount namespace (or enters it).
    PrivateMounts,
    /// The jail root: a tmpfs, owned by the VMM's uid, mode 0700.
    MountRoot {
        /// Where.
        dir: CString,
        /// tmpfs options.
        options: CString,
    },
    /// A directory inside the jail (mode 0700, the VMM's uid).
    Dir(CString),
    /// An empty file to bind a file onto.
    MountPoint(CString),
    /// A host file or directory bound into the jail.
    Bind {
        /// Host path.
        src: CString,
        /// Path in the jail (below its root).
        dst: CString,
        /// The VMM may write it.
        writable: bool,
        /// The VMM may execute (or map as code) from it.
        exec: bool,
    },
    /// A character device node of the VMM's own (mode 0600).
    Device {
        /// Path in the jail (below its root).
        path: CString,
        /// Host device number.
        rdev: u64,
    },
    /// The jail root becomes `/`; the host's tree is detached.
    Pivot(CString),
    /// The jail root (not the binds in it) turns read-only.
    SealRoot,
}

impl Step {
    /// What the step does, for an error message.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::PrivateMounts => "make the mount namespace private".into(),
            Step::MountRoot { dir, .. } => format!("mount the jail root on {}", s(dir)),
            Step::Dir(p) => format!("create directory {}", s(p)),
            Step::MountPoint(p) => format!("create mount point {}", s(p)),
            Step::Bind { src, dst, .. } => format!("bind {} onto {}", s(src), s(dst)),
            Step::Device { path, .. } => format!("create device node {}", s(path)),
            Step::Pivot(p) => format!("pivot_root into {}", s(p)),
            Step::SealRoot => "make the jail root read-only".into(),
        }
    }
}

fn cstring(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::JailPath(p.to_owned()))
}

/// `path` (absolute, no `..`) inside `root`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, SandboxError> {
    let mut out = root.to_owned();
    let mut named = false;
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                out.push(n);
                named = true;
            }
            _ => return Err(SandboxError::JailPath(path.to_owned())),
        }
    }
    if !path.is_absolute() || !named {
        return Err(SandboxError::JailPath(path.to_owned()));
    }
    Ok(out)
}

/// Builds the steps, in order.
struct Builder<'a> {
    root: &'a Path,
    steps: Vec<Step>,
    dirs: std::collections::BTreeSet<PathBuf>,
    bound: std::collections::BTreeSet<PathBuf>,
}

impl Builder<'_> {
    /// Creates the directories leading to `path` in the jail (not `path` itself).
    fn parents(&mut self, path: &Path) -> Result<(), SandboxError> {
        let mut wanted = Vec::new();
        let mut p = path.parent();
        while let Some(dir) = p {
            if dir == self.root || !dir.starts_with(self.root) {
                break;
            }
            wanted.push(dir.to_owned());
            p = dir.parent();
        }
        for dir in wanted.into_iter().rev() {
            if self.dirs.insert(dir.clone()) {
                self.steps.push(Step::Dir(cstring(&dir)?));
            }
        }
        Ok(())
    }

    /// Binds host `src` at the same path in the jail (`at`, when it differs).
    fn bind(
        &mut self,
        src: &Path,
        at: &Path,
        writable: bool,
        exec: bool,
    ) -> Result<(), SandboxError> {
        let meta = std::fs::metadata(src).map_err(|source| SandboxError::Io {
            op: "find (for the jail)",
            path: src.to_owned(),
            source,
        })?;
        let dst = inside(self.root, at)?;
        if !self.bound.insert(dst.clone()) {
            return Ok(());
        }
        self.parents(&dst)?;
        if meta.is_dir() {
            if self.dirs.insert(dst.clone()) {
                self.steps.push(Step::Dir(cstring(&dst)?));
            }
        } else {
            self.steps.push(Step::MountPoint(cstring(&dst)?));
        }
        self.steps.push(Step::Bind {
            src: cstring(src)?,
            dst: cstring(&dst)?,
            writable,
            exec,
        });
        Ok(())
    }

    fn device(&mut self, host: &Path) -> Result<(), SandboxError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::metadata(host).map_err(|source| SandboxError::Io {
            op: "find (for the jail)",
            path: host.to_owned(),
            source,
        })?;
        if !meta.file_type().is_char_device() {
            return Err(SandboxError::JailPath(host.to_owned()));
        }
        let path = inside(self.root, host)?;
        self.parents(&path)?;
        self.steps.push(Step::Device {
            path: cstring(&path)?,
            rdev: meta.rdev(),
        });
        Ok(())
    }
}

/// The steps that build the jail of `cmd` as `spec` says: the root, the library
/// directories, the binary, kernel, initramfs, drives, console and exit record
/// (files), the socket directories, the device nodes; then the pivot.
/// `binary` is the VMM binary as found on the host (absolute).
pub fn build(cmd: &VmmCommand, spec: &JailSpec, binary: &Path) -> Result<Vec<Step>, SandboxError> {
    let mut b = Builder {
        root: &spec.root,
        steps: vec![
            Step::PrivateMounts,
            Step::MountRoot {
                dir: cstring(&spec.root)?,
                options: CString::new(format!(
                    "mode=0700,uid={},gid={},{ROOT_TMPFS}",
                    spec.uid, spec.gid
                ))
                .map_err(|_| SandboxError::JailPath(spec.root.clone()))?,
            },
        ],
        dirs: Default::default(),
        bound: Default::default(),
    };
    for dir in &spec.library_dirs {
        // A link (as /lib64 -> usr/lib64) is bound as what it points to.
        let Ok(real) = std::fs::canonicalize(dir) else {
            continue;
        };
        b.bind(&real, dir, false, true)?;
    }
    b.bind(binary, binary, false, true)?;
    b.bind(&cmd.kernel, &cmd.kernel, false, false)?;
    b.bind(&cmd.initramfs, &cmd.initramfs, false, false)?;
    for (_, path, read_only) in &cmd.drives {
        b.bind(path, path, !read_only, false)?;
    }
    b.bind(&cmd.console, &cmd.console, true, false)?;
    b.bind(&cmd.exit_record, &cmd.exit_record, true, false)?;
    // A template is every restored VM's: none may write it.
    if let Some(dir) = &cmd.restore {
        b.bind(dir, dir, false, false)?;
    }
    if let Some(dir) = &cmd.snapshot_dir {
        b.bind(dir, dir, true, false)?;
    }
    let mut socket_dirs: Vec<&Path> = [&cmd.vsock, &cmd.control]
        .into_iter()
        .chain(cmd.fs.iter().map(|(_, s)| s))
        .filter_map(|p| p.parent())
        .collect();
    socket_dirs.dedup();
    for dir in socket_dirs {
        b.bind(dir, dir, true, false)?;
    }
    b.device(Path::new("/dev/kvm"))?;
    if !cmd.nets.is_empty() {
        b.device(Path::new("/dev/net/tun"))?;
    }
    let root = cstring(&spec.root)?;
    b.steps.push(Step::Pivot(root));
    b.steps.push(Step::SealRoot);
    Ok(b.steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn paths_inside_the_jail() {
        let root = Path::new("/j");
        assert_eq!(
            inside(root, Path::new("/a/b")).unwrap(),
            Path::new("/j/a/b")
        );
        assert!(inside(root, Path::new("a/b")).is_err());
        assert!(inside(root, Path::new("/a/../etc")).is_err());
        assert!(inside(root, Path::new("/")).is_err());
    }

    #[test]
    fn the_jail_holds_what_the_vmm_opens_and_nothing_else() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        for f in [
            "vmm",
            "vmlinux",
            "initrd",
            "pod/scratch.ext4",
            "pod/empty.img",
            "pod/console.log",
            "pod/vmm-exit",
        ] {
            let p = h.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        std::fs::create_dir_all(h.join("run/pod")).unwrap();
        std::fs::create_dir_all(h.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink(h.join("usr/lib64"), h.join("lib64")).unwrap();
        let cmd = VmmCommand {
            binary: h.join("vmm"),
            kernel: h.join("vmlinux"),
            initramfs: h.join("initrd"),
            kernel_args: String::new(),
            free_page_reporting: false,
            vcpus: 1,
            mem_mib: 128,
            drives: vec![
                ("scratch".into(), h.join("pod/scratch.ext4"), false),
                ("slot0".into(), h.join("pod/empty.img"), true),
            ],
            vsock: h.join("run/pod/vsock"),
            control: h.join("run/pod/ctl"),
            console: h.join("pod/console.log"),
            console_limits: Default::default(),
            log: h.join("pod/vmm.log"),
            exit_record: h.join("pod/vmm-exit"),
            netns: None,
            nets: Vec::new(),
            fs: vec![("shared".into(), h.join("run/pod/fs.sock"))],
            jail: None,
            cgroup: None,
            restore: None,
            snapshot_dir: None,
        };
        let root = h.join("pod/jail");
        let spec = JailSpec {
            uid: 1234,
            gid: 1234,
            root: root.clone(),
            library_dirs: vec![h.join("lib64"), h.join("no/such/lib")],
            max_open_files: 1024,
            pid_namespace: true,
            max_file_bytes: 1 << 30,
        };
        let steps = build(&cmd, &spec, &cmd.binary).unwrap();
        let r = |p: &str| c(&format!("{}{}/{p}", root.display(), h.display()));
        let hp = |p: &str| c(&format!("{}/{p}", h.display()));
        assert_eq!(steps[0], Step::PrivateMounts);
        assert!(matches!(&steps[1], Step::MountRoot { options, .. }
            if options.to_str().unwrap().starts_with("mode=0700,uid=1234,gid=1234,")));
        let binds: Vec<(CString, CString, bool, bool)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind {
                    src,
                    dst,
                    writable,
                    exec,
                } => Some((src.clone(), dst.clone(), *writable, *exec)),
                _ => None,
            })
            .collect();
        assert_eq!(
            binds,
            vec![
                // The link is bound as its target, at the link's path; a missing
                // library directory is skipped.
                (hp("usr/lib64"), r("lib64"), false, true),
                (hp("vmm"), r("vmm"), false, true),
                (hp("vmlinux"), r("vmlinux"), false, false),
                (hp("initrd"), r("initrd"), false, false),
                (hp("pod/scratch.ext4"), r("pod/scratch.ext4"), true, false),
                (hp("pod/empty.img"), r("pod/empty.img"), false, false),
                (hp("pod/console.log"), r("pod/console.log"), true, false),
                (hp("pod/vmm-exit"), r("pod/vmm-exit"), true, false),
                (hp("run/pod"), r("run/pod"), true, false),
            ]
        );
        // Not the log (an inherited descriptor), nor the pod's other files.
        assert!(!steps.iter().any(|s| s.describe().contains("vmm.log")));
        // Every mount point's directory is made before it, once.
        let dirs: Vec<&CString> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir(d) => Some(d),
                _ => None,
            })
            .collect();
        let unique: std::collections::BTreeSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len());
        assert!(dirs.contains(&&r("pod")));
        let kvm = steps.iter().position(|s| matches!(s, Step::Device { path, .. } if path.to_str().unwrap().ends_with("/dev/kvm")));
        assert!(kvm.is_some());
        // No network card, no tun device.
        assert!(!steps.iter().any(|s| s.describe().contains("net/tun")));
        assert_eq!(steps[steps.len() - 2], Step::Pivot(cstring(&root).unwrap()));
        assert_eq!(steps[steps.len() - 1], Step::SealRoot);
    }
}
