//! cgroup v2 for containers: one cgroup per container under `/sys/fs/cgroup/containers`,
//! with the cpu, memory and pids controllers. vmlet-init itself stays in the root cgroup,
//! out of every container's limits.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;

use super::spec::Resources;

/// Where cgroup2 is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The parent of all container cgroups.
pub const CONTAINERS: &str = "/sys/fs/cgroup/containers";
/// Controllers enabled for containers.
const CONTROLLERS: &str = "+cpu +memory +pids";

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {what}: {source}")]
pub struct CgroupError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// Why it failed.
    pub source: io::Error,
}

impl CgroupError {
    /// Whether the kernel refused a limit's value (out of range, or memory.max below
    /// what the cgroup cannot give back), rather than failing to do its job.
    pub fn is_refused_limit(&self) -> bool {
        matches!(
            self.what,
            "cpu.weight" | "cpu.max" | "memory.max" | "pids.max"
        ) && matches!(
            self.source.raw_os_error(),
            Some(libc::EINVAL | libc::EBUSY | libc::ERANGE)
        )
    }
}

fn write(path: PathBuf, what: &'static str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(&path, value).map_err(|source| CgroupError { path, what, source })
}

/// Enables the controllers for container cgroups. Called once at start.
pub fn init_hierarchy() -> Result<(), CgroupError> {
    write(
        Path::new(ROOT).join("cgroup.subtree_control"),
        "enable controllers",
        CONTROLLERS,
    )?;
    match std::fs::create_dir(CONTAINERS) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(CgroupError {
                path: CONTAINERS.into(),
                what: "create",
                source,
            })
        }
    }
    write(
        Path::new(CONTAINERS).join("cgroup.subtree_control"),
        "enable controllers",
        CONTROLLERS,
    )
}

/// Resource use read from a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// cpu.stat usage_usec.
    pub cpu_usec: u64,
    /// cpu.stat user_usec.
    pub cpu_user_usec: u64,
    /// cpu.stat system_usec.
    pub cpu_system_usec: u64,
    /// memory.current.
    pub memory: u64,
    /// memory.current minus memory.stat inactive_file.
    pub working_set: u64,
    /// memory.events oom_kill.
    pub oom_kills: u64,
    /// pids.current.
    pub pids: u64,
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup of container `id` and sets its limits.
    pub fn create(id: &str, resources: &Resources) -> Result<Cgroup, CgroupError> {
        let path = Path::new(CONTAINERS).join(id);
        std::fs::create_dir(&path).map_err(|source| CgroupError {
            path: path.clone(),
            what: "create",
            source,
        })?;
        let cg = Cgroup { path };
        if let Err(e) = cg.set_limits(resources) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Sets the limits `r` sets and leaves the others as they are: at creation, and
    /// when the host updates a container's resources.
    pub fn set_limits(&self, r: &Resources) -> Result<(), CgroupError> {
        if let Some(w) = r.cpu_weight {
            self.write("cpu.weight", &w.to_string())?;
        }
        if let Some((quota, period)) = r.cpu_max {
            self.write("cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(m) = r.memory_max {
            self.write("memory.max", &m.to_string())?;
            // An OOM kill takes the whole container, as Kubernetes expects.
            self.write("memory.oom.group", "1")?;
        }
        if let Some(p) = r.pids_max {
            self.write("pids.max", &p.to_string())?;
        }
        Ok(())
    }

    fn write(&self, file: &'static str, value: &str) -> Result<(), CgroupError> {
        write(self.path.join(file), file, value)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: Pid) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Kills every process in the cgroup (`cgroup.kill`).
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.write("cgroup.kill", "1")
    }

    /// Whether any process is left in it.
    pub fn populated(&self) -> bool {
        keyed(&self.read("cgroup.events"), "populated").unwrap_or(0) != 0
    }

    /// The resource use now.
    pub fn usage(&self) -> Usage {
        let cpu = self.read("cpu.stat");
        let memory = parse_u64(&self.read("memory.current"));
        let inactive = keyed(&self.read("memory.stat"), "inactive_file").unwrap_or(0);
        Usage {
            cpu_usec: keyed(&cpu, "usage_usec").unwrap_or(0),
            cpu_user_usec: keyed(&cpu, "user_usec").unwrap_or(0),
            cpu_system_usec: keyed(&cpu, "system_usec").unwrap_or(0),
            memory,
            working_set: memory.saturating_sub(inactive),
            oom_kills: keyed(&self.read("memory.events"), "oom_kill").unwrap_or(0),
            pids: parse_u64(&self.read("pids.current")),
        }
    }

    /// Kills what is left and removes the cgroup, waiting briefly for the processes to go.
    /// Best effort: a cgroup that cannot be removed stays behind, reported once.
    pub fn remove(&self) {
        for attempt in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 99 => {
                    let _ = self.kill();
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    crate::console::error(format_args!(
                        "cannot remove cgroup {}: {e}",
                        self.path.display()
                    ));
                    return;
                }
            }
        }
    }
}

fn parse_u64(s: &str) -> u64 {
    s.trim().parse().unwrap_or(0)
}

/// The value of `key` in a flat-keyed cgroup file ("key value" lines).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let text = "usage_usec 120\nuser_usec 100\nsystem_usec 20\n";
        assert_eq!(keyed(text, "user_usec"), Some(100));
        assert_eq!(keyed(text, "nr_periods"), None);
        assert_eq!(keyed("populated 1\nfrozen 0\n", "populated"), Some(1));
    }

    #[test]
    fn refused_limits_are_told_apart() {
        let err = |what, errno| CgroupError {
            path: PathBuf::from("/x"),
            what,
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(err("memory.max", libc::EBUSY).is_refused_limit());
        assert!(err("cpu.max", libc::EINVAL).is_refused_limit());
        assert!(!err("memory.max", libc::ENOENT).is_refused_limit());
        assert!(!err("create", libc::EINVAL).is_refused_limit());
    }
}
