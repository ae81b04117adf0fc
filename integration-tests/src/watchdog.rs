//! A deadline for the whole test, below the machine's limit.
//!
//! Each wait in a test has its own limit, but a test that stalls in several waits can
//! add them up past the machine's limit and end as a bare timeout with no place. With
//! `VMLET_E2E_DEADLINE` set (seconds from the first guest or vmletd the test starts;
//! `scripts/test.sh` sets it below the machine's limit), a test still running then
//! prints the step it waits in and the tails of the logs of its live guests and
//! vmletd, and ends with status 101.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// What the test waits for now.
    step: String,
    /// Live guests and daemons: label and the log files or directories to show.
    watched: BTreeMap<u64, (String, Vec<PathBuf>)>,
    next: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    step: String::new(),
    watched: BTreeMap::new(),
    next: 0,
});
static ARMED: OnceLock<()> = OnceLock::new();

/// Starts the watchdog once per test process, when `VMLET_E2E_DEADLINE` asks for it.
fn arm() {
    ARMED.get_or_init(|| {
        let Some(secs) = std::env::var("VMLET_E2E_DEADLINE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            expire(secs);
        });
    });
}

fn expire(secs: u64) -> ! {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = format!(
        "=== test deadline: still running after {secs} s (the machine's limit is near); \
         waiting in: {}\n",
        if state.step.is_empty() {
            "(no step named)"
        } else {
            &state.step
        }
    );
    for (label, paths) in state.watched.values() {
        for path in paths {
            for file in log_files(path) {
                report.push_str(&format!(
                    "--- {label}: {}, last 40 lines ---\n{}\n",
                    file.display(),
                    crate::tail(&file, 40)
                ));
            }
        }
    }
    crate::say(&report);
    std::process::exit(101);
}

/// `path` itself, or the `*.log` files in it and in its subdirectories.
fn log_files(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "log") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Names the step the test waits in now, for the report at the deadline.
pub fn step(what: impl Into<String>) {
    STATE.lock().unwrap_or_else(|e| e.into_inner()).step = what.into();
}

/// Shows `paths` (files, or directories of `*.log` files) at the deadline while the
/// returned guard lives.
pub fn watch(label: impl Into<String>, paths: Vec<PathBuf>) -> Watched {
    arm();
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let id = state.next;
    state.next += 1;
    state.watched.insert(id, (label.into(), paths));
    Watched(id)
}

/// Keeps logs in the deadline's report; dropping it takes them out.
pub struct Watched(u64);

impl Drop for Watched {
    fn drop(&mut self) {
        STATE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watched
            .remove(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_shows_its_logs_in_every_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pod-a")).unwrap();
        std::fs::write(dir.path().join("pod-a/vmm.log"), "x").unwrap();
        std::fs::write(dir.path().join("pod-a/pod.json"), "{}").unwrap();
        std::fs::write(dir.path().join("vmletd.log"), "y").unwrap();
        let files = log_files(dir.path());
        assert_eq!(
            files,
            vec![
                dir.path().join("pod-a/vmm.log"),
                dir.path().join("vmletd.log")
            ]
        );
        assert_eq!(
            log_files(&dir.path().join("x.log")),
            vec![dir.path().join("x.log")]
        );
    }

    /// Runs itself again as the child that passes its deadline.
    #[test]
    fn a_test_past_its_deadline_ends_with_its_step_and_logs() {
        if let Some(log) = std::env::var_os("VMLET_WATCHDOG_CHILD") {
            let _w = watch("guest", vec![PathBuf::from(log)]);
            step("reading stdout of server");
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, "first\nlast line of the guest\n").unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "watchdog::tests::a_test_past_its_deadline_ends_with_its_step_and_logs",
                "--nocapture",
            ])
            .env("VMLET_WATCHDOG_CHILD", &log)
            .env("VMLET_E2E_DEADLINE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(101), "{err}");
        assert!(
            err.contains("=== test deadline: still running after 1 s")
                && err.contains("waiting in: reading stdout of server")
                && err.contains("last line of the guest"),
            "{err}"
        );
    }

    #[test]
    fn a_dropped_guard_takes_its_logs_out() {
        let w = watch("guest", vec![PathBuf::from("/nonexistent.log")]);
        let id = w.0;
        assert!(STATE.lock().unwrap().watched.contains_key(&id));
        drop(w);
        assert!(!STATE.lock().unwrap().watched.contains_key(&id));
    }
}
