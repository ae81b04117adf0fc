//! Named, persistent network namespaces: each pod's namespace is bind-mounted at
//! `<dir>/<name>` (as `ip netns` does under /run/netns) so that it outlives the
//! threads and processes that made it, survives a vmletd restart, and can be found
//! again by name.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// A namespace operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is not a plain file name.
    #[error("invalid network namespace name {0:?}")]
    BadName(String),
    /// A file system step failed.
    #[error("network namespace {path}: {what}: {source}")]
    Io {
        /// The namespace's path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The helper thread died.
    #[error("network namespace {0}: the thread that made it panicked")]
    Thread(PathBuf),
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    let path = path.to_owned();
    move |source| NetnsError::Io { path, what, source }
}

/// Sets the loopback interface (always index 1) of the calling thread's namespace up.
async fn loopback_up() -> io::Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let result = handle
        .link()
        .change(rtnetlink::LinkUnspec::new_with_index(1).up().build())
        .execute()
        .await
        .map_err(io::Error::other);
    task.abort();
    result
}

/// A pod's network namespace, pinned by a bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    path: PathBuf,
}

impl Netns {
    /// Creates namespace `name` under `dir` (created if missing). An existing one of that
    /// name is returned as it is, so a retried call is harmless.
    pub fn create(dir: &Path, name: &str) -> Result<Netns, NetnsError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(NetnsError::BadName(name.to_owned()));
        }
        let path = dir.join(name);
        std::fs::create_dir_all(dir).map_err(io_err(dir, "create the directory"))?;
        let ns = Netns { path: path.clone() };
        if ns.is_pinned() {
            return Ok(ns);
        }
        std::fs::File::create(&path).map_err(io_err(&path, "create the mount point"))?;
        // unshare(CLONE_NEWNET) moves only the calling thread: do it on a thread of our
        // own, pin the new namespace by bind-mounting its /proc entry, and let the thread
        // end.
        let target = path.clone();
        let pinned = std::thread::spawn(move || -> Result<(), NetnsError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err(&target, "unshare")(e.into()))?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(
                Some(own.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io_err(&target, "bind-mount")(e.into()))
        })
        .join()
        .map_err(|_| NetnsError::Thread(path.clone()))?;
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let lo_up = ns.run(|| -> io::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(loopback_up())
        });
        match lo_up {
            Ok(Ok(())) => Ok(ns),
            Ok(Err(source)) => {
                let _ = ns.remove();
                Err(NetnsError::Io {
                    path,
                    what: "bring lo up",
                    source,
                })
            }
            Err(e) => {
                let _ = ns.remove();
                Err(e)
            }
        }
    }

    /// Whatever is at `path`, pinned or not, e.g. to remove a mount point left by a
    /// creation that did not finish.
    pub fn at(path: &Path) -> Netns {
        Netns {
            path: path.to_owned(),
        }
    }

    /// The namespace at `path`, if it is pinned there.
    pub fn open(path: &Path) -> Option<Netns> {
        let ns = Netns {
            path: path.to_owned(),
        };
        ns.is_pinned().then_some(ns)
    }

    /// Its path (what CNI plugins get as `CNI_NETNS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a namespace is mounted at the path (not just an empty file).
    fn is_pinned(&self) -> bool {
        nix::sys::statfs::statfs(&self.path)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let file: OwnedFd = std::fs::File::open(&self.path)
            .map_err(io_err(&self.path, "open"))?
            .into();
        let path = self.path.clone();
        std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err(&path, "enter")(e.into()))?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Thread(self.path.clone()))?
    }

    /// Unpins and deletes the namespace. Removing one that is gone is fine.
    pub fn remove(&self) -> Result<(), NetnsError> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(io_err(&self.path, "unmount")(e.into())),
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.path, "delete")(e)),
        }
    }
}
