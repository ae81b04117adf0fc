//! The harness's fault injector, for proving that the suite fails when vmlet-vmm
//! crashes: with `VMLET_TEST_VMM_FAULT=segv-every-N` in a test's environment,
//! [`crate::vmm_binary`] names a wrapper script instead of vmlet-vmm itself. The
//! wrapper counts the starts of vmlet-vmm in that test process and `exec`s the real
//! binary (same pid, same arguments); on every Nth start it first leaves behind a
//! process that sends the VMM SIGSEGV two seconds later, as a crash in a third of boots
//! would look with N = 3. Nothing in the product reads the variable; it is never set in
//! a normal run.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The variable that turns the injector on.
pub const VMM_FAULT_ENV: &str = "VMLET_TEST_VMM_FAULT";

/// What the injector does: crash every `every`th start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Every how many starts one crashes.
    pub every: u32,
}

impl Fault {
    /// Parses `segv-every-N` (N ≥ 1).
    pub fn parse(spec: &str) -> Result<Fault, String> {
        spec.strip_prefix("segv-every-")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .map(|every| Fault { every })
            .ok_or_else(|| format!("{VMM_FAULT_ENV}={spec:?}: expected segv-every-N (N >= 1)"))
    }

    /// The wrapper script around `vmm`; its start counter lives in `dir`.
    pub fn script(&self, vmm: &Path, dir: &Path) -> String {
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        format!(
            r#"#!/bin/sh
# vmlet-vmm wrapper of the end-to-end harness's fault injector ({env}).
exec 9>>{lock}
flock 9
n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 ))
echo "$n" >{count}
exec 9>&-
if [ $((n % {every})) -eq 0 ]; then
    echo "vmlet-vmm fault injector: start $n of vmlet-vmm (pid $$) gets SIGSEGV in 2 s" >&2
    # Rust's runtime survives a first SIGSEGV sent by another process (it only
    # restores the default action); the second one kills, as a real fault does.
    vmm=$$
    (sleep 2; kill -SEGV "$vmm"; sleep 1; kill -0 "$vmm" && kill -SEGV "$vmm") \
        </dev/null >/dev/null 2>&1 &
fi
exec {vmm} "$@"
"#,
            env = VMM_FAULT_ENV,
            lock = q(&dir.join("starts.lock")),
            count = q(&dir.join("starts")),
            every = self.every,
            vmm = q(vmm),
        )
    }
}

/// `vmm`, or when [`VMM_FAULT_ENV`] is set the injector's wrapper around it (made once
/// per test process and binary, so that its count covers every start).
pub fn wrap(vmm: PathBuf) -> PathBuf {
    let Ok(spec) = std::env::var(VMM_FAULT_ENV) else {
        return vmm;
    };
    let fault = Fault::parse(&spec).unwrap_or_else(|e| panic!("{e}"));
    static WRAPPERS: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let mut wrappers = WRAPPERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    wrappers
        .entry(vmm.clone())
        .or_insert_with(|| {
            // Kept for the whole test process: VMMs exec it until the end.
            let dir = tempfile::Builder::new()
                .prefix("vmm-fault")
                .tempdir_in("/tmp")
                .expect("tempdir for the fault injector")
                .keep();
            let wrapper = dir.join("vmlet-vmm");
            std::fs::write(&wrapper, fault.script(&vmm, &dir)).expect("write the wrapper");
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the wrapper");
            wrapper
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::Command;

    #[test]
    fn specs_parse_or_name_the_variable() {
        assert_eq!(Fault::parse("segv-every-3"), Ok(Fault { every: 3 }));
        for bad in ["segv-every-0", "segv-every-", "every-3", ""] {
            let e = Fault::parse(bad).unwrap_err();
            assert!(e.starts_with("VMLET_TEST_VMM_FAULT="), "{e}");
        }
    }

    /// The wrapper runs the real program with its arguments and pid, and crashes every
    /// Nth start with SIGSEGV (a shell stands in for vmlet-vmm: it has no SIGSEGV
    /// handler, so the first signal kills it).
    #[test]
    fn every_third_start_dies_of_sigsegv() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake vmm");
        std::fs::write(&fake, "#!/bin/sh\necho \"args $*\"\nexec sleep 4\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let wrapper = dir.path().join("wrapper");
        std::fs::write(&wrapper, Fault { every: 3 }.script(&fake, dir.path())).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // One after the other: each has counted its start once its program runs.
        let starts: Vec<_> = (0..3)
            .map(|i| {
                let mut child = Command::new(&wrapper)
                    .args(["--n", &i.to_string()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert_eq!(line, format!("args --n {i}\n"));
                child
            })
            .collect();
        let outs: Vec<_> = starts
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        assert_eq!(outs[0].status.code(), Some(0));
        assert_eq!(outs[1].status.code(), Some(0));
        assert_eq!(outs[2].status.signal(), Some(libc::SIGSEGV));
        let err = String::from_utf8_lossy(&outs[2].stderr);
        assert!(
            err.contains("fault injector: start 3 of vmlet-vmm"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("starts")).unwrap(),
            "3\n"
        );
    }
}
