//! What a pod costs the host: the CPU and memory figures of its host cgroup (its VMM,
//! the guest's RAM as the VMM touched it, and virtiofsd), read from the cgroup v2
//! files. The guest measures itself and its containers from inside; these figures are
//! the node's view, the one the kubelet accounts a pod cgroup by.

use std::path::{Path, PathBuf};

/// A pod cgroup's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time of every process in it (`cpu.stat` usage_usec, in nanoseconds).
    pub cpu_usage_ns: u64,
    /// Memory charged to it (`memory.current`).
    pub memory_bytes: u64,
    /// Memory less the inactive page cache the kernel can drop first (the kubelet's
    /// and cAdvisor's working set).
    pub working_set_bytes: u64,
    /// Anonymous memory (`memory.stat` anon): the guest's touched RAM and the VMM's
    /// heap.
    pub anon_bytes: u64,
    /// Page faults and major page faults (`memory.stat` pgfault, pgmajfault).
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// What is left below `memory.max`, when it has one.
    pub available_bytes: Option<u64>,
}

/// Why the usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A file of the cgroup could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file did not hold what cgroup v2 writes.
    #[error("{path} has no {key} value")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The value looked for.
        key: &'static str,
    },
}

/// The cgroup files read, each well under a page: 64 KiB bounds a read.
const MAX_FILE: u64 = 64 << 10;

fn read(dir: &Path, file: &str) -> Result<String, StatsError> {
    use std::io::Read;
    let path = dir.join(file);
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .map_err(|source| StatsError::Read {
            path: path.clone(),
            source,
        })?;
    Ok(text)
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Reads the usage of the cgroup `dir`.
pub fn usage(dir: &Path) -> Result<CgroupUsage, StatsError> {
    let missing = |file: &str, key: &'static str| StatsError::Missing {
        path: dir.join(file),
        key,
    };
    let cpu = read(dir, "cpu.stat")?;
    let cpu_usage_us =
        keyed(&cpu, "usage_usec").ok_or_else(|| missing("cpu.stat", "usage_usec"))?;
    let memory_bytes: u64 = read(dir, "memory.current")?
        .trim()
        .parse()
        .map_err(|_| missing("memory.current", "a byte count"))?;
    let stat = read(dir, "memory.stat")?;
    let field = |key: &'static str| keyed(&stat, key).ok_or_else(|| missing("memory.stat", key));
    let inactive_file = field("inactive_file")?;
    let working_set_bytes = memory_bytes.saturating_sub(inactive_file);
    let max = read(dir, "memory.max")?;
    // "max" (no limit) has no headroom to report.
    let available_bytes = max
        .trim()
        .parse::<u64>()
        .ok()
        .map(|m| m.saturating_sub(working_set_bytes));
    Ok(CgroupUsage {
        cpu_usage_ns: cpu_usage_us.saturating_mul(1000),
        memory_bytes,
        working_set_bytes,
        anon_bytes: field("anon")?,
        page_faults: field("pgfault")?,
        major_page_faults: field("pgmajfault")?,
        available_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    /// A directory laid out as cgroup v2 writes a pod's cgroup.
    fn fake_cgroup(max: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(d.path(), "memory.current", "104857600\n");
        write(
            d.path(),
            "memory.stat",
            "anon 73400320\nfile 31457280\nactive_file 10485760\ninactive_file 20971520\n\
             pgfault 1234\npgmajfault 5\n",
        );
        write(d.path(), "memory.max", max);
        d
    }

    #[test]
    fn reads_cpu_memory_and_headroom() {
        let d = fake_cgroup("201326592\n");
        let u = usage(d.path()).unwrap();
        assert_eq!(
            u,
            CgroupUsage {
                cpu_usage_ns: 2_500_000,
                memory_bytes: 100 << 20,
                working_set_bytes: 80 << 20,
                anon_bytes: 70 << 20,
                page_faults: 1234,
                major_page_faults: 5,
                available_bytes: Some(112 << 20),
            }
        );
    }

    #[test]
    fn no_limit_has_no_headroom() {
        let d = fake_cgroup("max\n");
        assert_eq!(usage(d.path()).unwrap().available_bytes, None);
    }

    #[test]
    fn missing_files_and_values_are_errors() {
        let d = fake_cgroup("max\n");
        write(d.path(), "memory.stat", "anon 1\n");
        let e = usage(d.path()).unwrap_err().to_string();
        assert!(e.contains("memory.stat has no inactive_file"), "{e}");
        std::fs::remove_file(d.path().join("cpu.stat")).unwrap();
        let e = usage(d.path()).unwrap_err().to_string();
        assert!(e.contains("cpu.stat"), "{e}");
    }
}
