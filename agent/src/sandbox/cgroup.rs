//! The host cgroup (v2) of each pod: its VMM and its virtiofsd, if it has one, under
//! the cgroup the kubelet names as the pod's parent, limited to what the pod may use:
//! `memory.max` (the guest's RAM plus [`VMM_OVERHEAD_MIB`]), `cpu.max` (the pod's CPU
//! limit), `pids.max`. The kubelet names the parent in the form of its cgroup driver:
//! a path (`/kubepods/burstable/pod<uid>`, cgroupfs) or a slice
//! (`kubepods-burstable-pod<uid>.slice`, systemd). vmlet writes the cgroup file
//! system itself either way (no transient systemd unit), naming the pod's cgroup as
//! the driver does (`vmlet-<id>`, or `vmlet-<id>.scope` inside the slice).

use std::path::{Component, Path, PathBuf};

/// Where the unified (v2) hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Memory the VMM itself needs besides the guest's RAM: its heap, bounce buffers,
/// thread stacks, mapped binary and libraries, and page cache of the kernel,
/// initramfs, the pod's disks and console (reclaimable, but charged). Measured: a
/// booted, idle pod with a 320 MiB guest had 62 MiB in its cgroup, 36 MiB of it
/// anonymous (the guest's touched pages and the VMM's heap), the rest page cache;
/// a guest that touches all its RAM leaves the VMM's own part well inside this.
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// Tasks a pod's cgroup may hold: the VMM's threads (one per vCPU, its event loop,
/// short-lived helpers) and virtiofsd's thread pool.
pub const PIDS_MAX: u64 = 512;

/// The cgroup period cpu.max is expressed in (µs).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Why a pod's cgroup could not be made, set or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The kubelet's cgroup_parent is not a cgroup name of either driver.
    #[error("cgroup_parent {0:?} is neither a cgroupfs path nor a systemd slice")]
    BadParent(String),
    /// A file or directory of the cgroup file system failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How cgroups are named: as the kubelet's cgroup driver names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Paths in the cgroup file system.
    Cgroupfs,
    /// systemd slices (`a-b.slice` lives in `a.slice/a-b.slice`).
    Systemd,
}

/// `[cgroups]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupsConfig {
    /// Put each pod's VMM (and virtiofsd) in a host cgroup with the pod's limits.
    pub enabled: bool,
    /// How the kubelet names cgroups: "systemd", "cgroupfs", or "auto" (systemd when
    /// the host runs it). Reported to the kubelet by RuntimeConfig.
    pub driver: String,
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        CgroupsConfig {
            enabled: true,
            driver: "auto".into(),
        }
    }
}

/// What the runtime uses: the driver, and the root of a usable v2 hierarchy (None:
/// pods get no host cgroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSettings {
    /// How `cgroup_parent` is read.
    pub driver: Driver,
    /// The v2 hierarchy, when cgroups are enabled and the host has one with the
    /// controllers pods need.
    pub root: Option<PathBuf>,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        CgroupSettings {
            driver: Driver::Cgroupfs,
            root: None,
        }
    }
}

impl CgroupsConfig {
    /// Rejects an unknown driver.
    pub fn check(&self) -> Result<(), String> {
        match self.driver.as_str() {
            "auto" | "systemd" | "cgroupfs" => Ok(()),
            other => Err(format!(
                "cgroups.driver must be \"auto\", \"systemd\" or \"cgroupfs\" (got {other:?})"
            )),
        }
    }

    /// The settings on this host.
    pub fn settings(&self) -> CgroupSettings {
        let driver = match self.driver.as_str() {
            "systemd" => Driver::Systemd,
            "cgroupfs" => Driver::Cgroupfs,
            _ if Path::new("/run/systemd/system").is_dir() => Driver::Systemd,
            _ => Driver::Cgroupfs,
        };
        let root = Path::new(CGROUP_ROOT);
        CgroupSettings {
            driver,
            root: (self.enabled && usable(root)).then(|| root.to_owned()),
        }
    }
}

/// The limits of a pod's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// memory.max in bytes.
    pub memory_max: u64,
    /// cpu.max quota in µs per [`CPU_PERIOD_US`] (None: no limit).
    pub cpu_quota_us: Option<u64>,
    /// pids.max.
    pub pids_max: u64,
}

impl Limits {
    /// The limits of a pod whose guest has `mem_mib` MiB and whose CPU limit (with
    /// overhead) is `cpu_millis` thousandths of a CPU, if it has one.
    pub fn of_pod(mem_mib: u64, cpu_millis: Option<u64>) -> Limits {
        Limits {
            memory_max: mem_mib
                .saturating_add(VMM_OVERHEAD_MIB)
                .saturating_mul(1 << 20),
            cpu_quota_us: cpu_millis
                .filter(|m| *m > 0)
                .map(|m| m.saturating_mul(CPU_PERIOD_US).div_ceil(1000).max(1000)),
            pids_max: PIDS_MAX,
        }
    }

    /// The cpu.max line.
    pub fn cpu_max(&self) -> String {
        match self.cpu_quota_us {
            Some(q) => format!("{q} {CPU_PERIOD_US}"),
            None => format!("max {CPU_PERIOD_US}"),
        }
    }
}

/// The parent's path below the cgroup root, as `driver` names it; "" is the driver's
/// default (`vmlet`, `vmlet.slice`).
pub fn parent_path(driver: Driver, parent: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadParent(parent.to_owned());
    match driver {
        Driver::Cgroupfs => {
            let p = if parent.is_empty() { "/vmlet" } else { parent };
            let mut out = PathBuf::new();
            for c in Path::new(p).components() {
                match c {
                    Component::RootDir => {}
                    Component::Normal(n) => out.push(n),
                    _ => return Err(bad()),
                }
            }
            Ok(out)
        }
        Driver::Systemd => {
            let p = if parent.is_empty() {
                "vmlet.slice"
            } else {
                parent
            };
            if p == "-.slice" {
                return Ok(PathBuf::new());
            }
            let name = p.strip_suffix(".slice").ok_or_else(bad)?;
            if name.is_empty() || name.contains('/') || name.split('-').any(str::is_empty) {
                return Err(bad());
            }
            // a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice.
            let mut out = PathBuf::new();
            let mut prefix = String::new();
            for part in name.split('-') {
                if !prefix.is_empty() {
                    prefix.push('-');
                }
                prefix.push_str(part);
                out.push(format!("{prefix}.slice"));
            }
            Ok(out)
        }
    }
}

/// The pod's own cgroup (below the root), in its parent.
pub fn pod_path(driver: Driver, parent: &str, pod_id: &str) -> Result<PathBuf, CgroupError> {
    let leaf = match driver {
        Driver::Cgroupfs => format!("vmlet-{pod_id}"),
        Driver::Systemd => format!("vmlet-{pod_id}.scope"),
    };
    if pod_id.is_empty() || pod_id.contains(['/', '.']) {
        return Err(CgroupError::BadParent(pod_id.to_owned()));
    }
    Ok(parent_path(driver, parent)?.join(leaf))
}

/// The controllers a pod's cgroup needs.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Whether `root` is a cgroup v2 hierarchy offering every controller a pod's cgroup
/// needs (a hybrid host's empty v2 tree, or a v1 host, is not).
pub fn usable(root: &Path) -> bool {
    let Ok(have) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return false;
    };
    let have: Vec<&str> = have.split_whitespace().collect();
    CONTROLLERS.iter().all(|c| have.contains(c))
}

/// Turns on the pod controllers for the children of `dir` (already on: nothing).
fn delegate(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&file).map_err(io("read", &file))?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !on.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::write(&file, missing.join(" ")).map_err(io("enable controllers in", &file))
}

/// A pod's cgroup on the host, made by [`create`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodCgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// The file listing the parent cgroups vmlet made (for this pod or another):
    /// those are removed with the last pod in them; the kubelet's never are.
    #[serde(default)]
    pub registry: PathBuf,
}

/// Serialises the changes of parent cgroups and of their registry: a parent is not
/// removed while a pod's cgroup is being made in it.
static PARENTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The parents the registry at `path` lists (a missing file lists none).
fn registered(path: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn register(path: &Path, dirs: &[PathBuf]) {
    if path.as_os_str().is_empty() {
        return;
    }
    let text: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(
            "cannot record vmlet's parent cgroups in {}: {e}",
            path.display()
        );
    }
}

impl PodCgroup {
    /// Its `cgroup.procs`, which a process writes to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

/// Makes the pod's cgroup `rel` below `root` (and any missing parent, recorded in
/// the registry file `registry`) with `limits`. On failure nothing made is left.
pub fn create(
    root: &Path,
    rel: &Path,
    limits: &Limits,
    registry: &Path,
) -> Result<PodCgroup, CgroupError> {
    let cg = PodCgroup {
        dir: root.join(rel),
        registry: registry.to_owned(),
    };
    let made = {
        let _parents = PARENTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut parents = registered(registry);
        let made = make(root, rel, &mut parents);
        register(registry, &parents);
        made
    };
    if let Err(e) = made.and_then(|()| set_limits(&cg.dir, limits)) {
        remove(&cg);
        return Err(e);
    }
    Ok(cg)
}

/// Makes the directories of `rel`, adding the parents it makes to `parents`.
fn make(root: &Path, rel: &Path, parents: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let mut dir = root.to_owned();
    let leaf = root.join(rel);
    for c in rel.components() {
        delegate(&dir)?;
        dir.push(c);
        match std::fs::create_dir(&dir) {
            Ok(()) if dir != leaf => parents.push(dir.clone()),
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", &dir)(e)),
        }
    }
    Ok(())
}

/// Writes `limits` into the cgroup `dir`.
pub fn set_limits(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    for (file, value) in [
        ("memory.max", limits.memory_max.to_string()),
        ("memory.swap.max", "0".to_owned()),
        // An OOM kill ends the whole pod (VMM and virtiofsd), not a random thread's
        // process.
        ("memory.oom.group", "1".to_owned()),
        ("cpu.max", limits.cpu_max()),
        ("pids.max", limits.pids_max.to_string()),
    ] {
        let path = dir.join(file);
        match std::fs::write(&path, value) {
            Ok(()) => {}
            // No swap accounting on this host: there is no swap to limit.
            Err(e) if file == "memory.swap.max" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("write", &path)(e)),
        }
    }
    Ok(())
}

/// Moves every process of `from` (with all its threads) into `to`.
pub fn move_processes(from: &PodCgroup, to: &PodCgroup) -> Result<(), CgroupError> {
    let procs = from.procs();
    let pids = std::fs::read_to_string(&procs).map_err(io("read", &procs))?;
    let dest = to.procs();
    for pid in pids.split_whitespace() {
        match std::fs::write(&dest, pid) {
            Ok(()) => {}
            // It exited meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(io("move a process into", &dest)(e)),
        }
    }
    Ok(())
}

/// Removes the pod's cgroup: whatever still runs in it is killed first (it is only
/// removed once its VMM is gone), then the parents vmlet made, while empty. Errors
/// are logged: the next removal of the pod tries again.
pub fn remove(cg: &PodCgroup) {
    if cg.dir.exists() {
        // cgroup.kill (Linux 5.14+): SIGKILL to every process in it.
        let _ = std::fs::write(cg.dir.join("cgroup.kill"), "1");
        let start = std::time::Instant::now();
        loop {
            match std::fs::remove_dir(&cg.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                // Busy: killed processes are still exiting.
                Err(e) if start.elapsed() < std::time::Duration::from_secs(5) => {
                    tracing::debug!("removing cgroup {}: {e}; retrying", cg.dir.display());
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!("cannot remove cgroup {}: {e}", cg.dir.display());
                    return;
                }
            }
        }
    }
    // Then the parents vmlet made, innermost first, while empty.
    let _parents = PARENTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut parents = registered(&cg.registry);
    let before = parents.len();
    for dir in cg.dir.ancestors().skip(1) {
        let Some(i) = parents.iter().position(|p| p == dir) else {
            break;
        };
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
        parents.remove(i);
    }
    if parents.len() != before {
        register(&cg.registry, &parents);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_kubelet_drivers_do() {
        let id = "abc123";
        assert_eq!(
            pod_path(Driver::Cgroupfs, "/kubepods/burstable/pod1234", id).unwrap(),
            Path::new("kubepods/burstable/pod1234/vmlet-abc123")
        );
        assert_eq!(
            pod_path(Driver::Systemd, "kubepods-burstable-pod1234.slice", id).unwrap(),
            Path::new(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/vmlet-abc123.scope"
            )
        );
        assert_eq!(
            pod_path(Driver::Cgroupfs, "", id).unwrap(),
            Path::new("vmlet/vmlet-abc123")
        );
        assert_eq!(
            pod_path(Driver::Systemd, "", id).unwrap(),
            Path::new("vmlet.slice/vmlet-abc123.scope")
        );
        assert_eq!(
            pod_path(Driver::Systemd, "-.slice", id).unwrap(),
            Path::new("vmlet-abc123.scope")
        );
        for bad in ["/kubepods/../etc", "..", "./kubepods"] {
            assert!(pod_path(Driver::Cgroupfs, bad, id).is_err(), "{bad}");
        }
        for bad in ["kubepods", "a--b.slice", "a/b.slice", "-a.slice", ".slice"] {
            assert!(pod_path(Driver::Systemd, bad, id).is_err(), "{bad}");
        }
        assert!(pod_path(Driver::Cgroupfs, "/k", "../x").is_err());
    }

    #[test]
    fn limits_follow_the_pod() {
        let l = Limits::of_pod(256, Some(1500));
        assert_eq!(l.memory_max, (256 + VMM_OVERHEAD_MIB) << 20);
        assert_eq!(l.cpu_max(), "150000 100000");
        assert_eq!(l.pids_max, PIDS_MAX);
        assert_eq!(Limits::of_pod(128, None).cpu_max(), "max 100000");
        assert_eq!(Limits::of_pod(128, Some(0)).cpu_max(), "max 100000");
        // The kernel's smallest quota is 1 ms.
        assert_eq!(Limits::of_pod(128, Some(1)).cpu_max(), "1000 100000");
        assert_eq!(Limits::of_pod(u64::MAX, None).memory_max, u64::MAX);
    }

    #[test]
    fn a_v1_or_hybrid_host_is_not_usable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!usable(dir.path()));
        std::fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        assert!(!usable(dir.path()));
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert!(usable(dir.path()));
    }
}
