//! A pod's shared file system on the host: one directory per pod, served into the
//! guest by one `virtiofsd` over vhost-user (the VMM's virtio-fs device), into which
//! each shared volume (hostPath, CSI and other persistent volumes) is bind-mounted
//! under its volume name, as Kata does. Nothing is copied: writes on either side are
//! seen on the other.
//!
//! virtiofsd runs with `sandbox=chroot`, in vmletd's mount namespace, so that volumes
//! bound into the directory after it started are visible to it at once.
//!
//! The directory holds bind mounts of host data: it is never removed recursively. Its
//! entries are unmounted first and then removed one by one, each only if empty, and
//! [`mounts_under`] lets a caller check that nothing is mounted below a directory before
//! it deletes that directory's tree.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The tag of the pod's shared file system in the guest.
pub const FS_TAG: &str = "vmlet-shared";
/// How long virtiofsd may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A shared-file-system failure.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A file system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// virtiofsd did not come up.
    #[error("virtiofsd: {0}")]
    Daemon(String),
}

fn io<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> ShareError {
    let what = what.into();
    move |e| ShareError::Io {
        what,
        source: e.into(),
    }
}

/// A pod's shared directory and the socket of its virtiofsd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The directory virtiofsd serves.
    pub dir: PathBuf,
    /// virtiofsd's vhost-user socket (the VMM connects to it).
    pub socket: PathBuf,
}

impl Share {
    /// The share of the pod whose state is in `pod_dir` and sockets in `run_dir`.
    pub fn new(pod_dir: &Path, run_dir: &Path) -> Share {
        Share {
            dir: pod_dir.join("shared"),
            socket: run_dir.join("fs.sock"),
        }
    }

    /// Makes the directory (mode 0700: only root may reach the host data bound in).
    pub fn prepare(&self) -> Result<(), ShareError> {
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io(format!("create {}", self.dir.display()))(e)),
        }
    }

    /// Starts virtiofsd on the directory in its own process group (so that it
    /// outlives vmletd, as the VM does) and waits for its socket. Returns its pid.
    pub async fn start_daemon(
        &self,
        binary: &Path,
        log: &Path,
        cgroup_procs: Option<&Path>,
    ) -> Result<u32, ShareError> {
        let _ = std::fs::remove_file(&self.socket);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(io(format!("open {}", log.display())))?;
        let err = out.try_clone().map_err(io("dup the log"))?;
        let mut cmd = tokio::process::Command::new(binary);
        if let Some(procs) = cgroup_procs {
            crate::sandbox::vmm::join_cgroup(&mut cmd, procs)
                .map_err(|e| ShareError::Daemon(format!("joining the pod's cgroup: {e}")))?;
        }
        cmd.arg(format!("--socket-path={}", self.socket.display()))
            .args(["-o", &format!("source={}", self.dir.display())])
            .args(["-o", "cache=auto", "-o", "sandbox=chroot"])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| ShareError::Daemon(format!("cannot start {}: {e}", binary.display())))?;
        let pid = child.id().unwrap_or(0);
        let start = tokio::time::Instant::now();
        while !self.socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ShareError::Daemon(format!(
                    "exited with {status} before serving (see {})",
                    log.display()
                )));
            }
            if start.elapsed() > START_TIMEOUT {
                let _ = child.start_kill();
                return Err(ShareError::Daemon(format!(
                    "no socket after {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reaped by whoever ends it; vmletd does not wait for it here.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    /// The pid of the virtiofsd serving this share's socket, if one runs.
    pub fn find_daemon(&self) -> Option<u32> {
        let want = format!("--socket-path={}", self.socket.display());
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|a| a == want.as_bytes())
                .then_some(pid)
        })
    }

    fn entry(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Binds host path `host` (and what is mounted below it) at entry `name`.
    pub fn bind(&self, name: &str, host: &Path) -> Result<(), ShareError> {
        let target = self.entry(name);
        if is_mount_point(&target) {
            return Ok(());
        }
        let md = std::fs::metadata(host).map_err(io(format!("stat {}", host.display())))?;
        let made = if md.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&target)
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map(drop)
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("create {}", target.display()))(e)),
        }
        let bound = mount(
            Some(host),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(io(format!(
            "bind {} at {}",
            host.display(),
            target.display()
        )))
        // A slave of the host's mounts: new host mounts below the path still reach the
        // share, and its unmount at teardown (recursive) cannot propagate back and
        // unmount the host's own submounts, as it would from a shared peer.
        .and_then(|()| {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(io(format!("make {} a slave mount", target.display())))
            .inspect_err(|_| {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
            })
        });
        if bound.is_err() {
            remove_placeholder(&target);
        }
        bound
    }

    /// Unbinds entry `name` and removes its (empty) mount point.
    pub fn unbind(&self, name: &str) {
        let target = self.entry(name);
        if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                tracing::warn!("unmounting {}: {e}", target.display());
                return;
            }
        }
        remove_placeholder(&target);
    }

    /// Ends virtiofsd, unbinds every entry and removes the directory. What cannot be
    /// unmounted is left, with a warning, and so is the directory then.
    pub async fn teardown(&self) {
        if let Some(pid) = self.find_daemon() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let start = tokio::time::Instant::now();
            while self.find_daemon().is_some() && start.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Some(name) = e.file_name().to_str() {
                    self.unbind(name);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.dir.display());
            }
        }
    }
}

/// Removes an unmounted mount point: an empty directory or an empty file, nothing else.
fn remove_placeholder(p: &Path) {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return;
    };
    let removed = if md.is_dir() {
        std::fs::remove_dir(p)
    } else if md.is_file() && md.len() == 0 {
        std::fs::remove_file(p)
    } else {
        Ok(())
    };
    if let Err(e) = removed {
        tracing::warn!("removing mount point {}: {e}", p.display());
    }
}

/// Decodes the octal escapes (`\040` for a space, ...) of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points at or below `dir` in vmletd's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn is_mount_point(p: &Path) -> bool {
    mounts_under(p).iter().any(|m| m == p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }

    #[test]
    fn binds_show_as_mounts_and_teardown_never_deletes_host_data() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("precious"), "data").unwrap();
        let host_file = d.path().join("file");
        std::fs::write(&host_file, "f").unwrap();
        let share = Share::new(&d.path().join("pod"), &d.path().join("run"));
        std::fs::create_dir_all(d.path().join("pod")).unwrap();
        share.prepare().unwrap();
        share.bind("share-a", &host).unwrap();
        share.bind("share-b", &host_file).unwrap();
        assert_eq!(mounts_under(&share.dir).len(), 2);
        assert_eq!(
            std::fs::read_to_string(share.dir.join("share-a/precious")).unwrap(),
            "data"
        );
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(share.teardown());
        assert!(mounts_under(&share.dir).is_empty());
        assert!(!share.dir.exists());
        assert_eq!(
            std::fs::read_to_string(host.join("precious")).unwrap(),
            "data"
        );
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "f");
    }
}
