//! How `vmlet-vmm` says why it ended. Every non-zero exit ends with one line on
//! stderr, `vmlet-vmm: error: REASON (exit status N)` ([`ExitRecord::line`]); with
//! `--exit-record FILE` the VMM also writes that line (for status 0 too, without
//! `error: `) into FILE as its last act, so that a program that is not its parent (a
//! vmletd that re-adopted it after a restart) learns the status. The file is emptied
//! when the VMM starts; a VMM killed by a signal writes nothing.

/// What every line of [`ExitRecord::line`] starts with.
pub const PREFIX: &str = "vmlet-vmm: ";
/// After [`PREFIX`] in the line of a non-zero exit.
const ERROR: &str = "error: ";

/// Exit status of a panic: the VMM does not unwind; it writes its line and ends.
pub const PANIC_EXIT: i32 = 101;

/// How a VMM ended: its exit status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit status.
    pub code: i32,
    /// Why, in words (the flag, the device, the vCPU failure, the panic...).
    pub reason: String,
}

impl ExitRecord {
    /// The line: `vmlet-vmm: error: REASON (exit status N)`, or for status 0
    /// `vmlet-vmm: REASON (exit status 0)`.
    pub fn line(&self) -> String {
        let error = if self.code == 0 { "" } else { ERROR };
        format!("{PREFIX}{error}{} (exit status {})", self.reason, self.code)
    }

    /// Reads a line of [`ExitRecord::line`]'s form (surrounding whitespace is
    /// ignored); `None` for anything else, a cut-off line included.
    pub fn parse(line: &str) -> Option<ExitRecord> {
        let rest = line.trim().strip_prefix(PREFIX)?;
        let (rest, error) = match rest.strip_prefix(ERROR) {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (reason, status) = rest.strip_suffix(')')?.rsplit_once(" (exit status ")?;
        let code: i32 = status.parse().ok()?;
        if error == (code == 0) {
            return None;
        }
        Some(ExitRecord {
            code,
            reason: reason.to_owned(),
        })
    }
}

/// Whether `line` is the line of a failed `vmlet-vmm` (a non-zero exit).
pub fn is_failure_line(line: &str) -> bool {
    ExitRecord::parse(line).is_some_and(|r| r.code != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back() {
        let failed = ExitRecord {
            code: 1,
            reason: "vCPU 0: KVM_RUN failed: Bad address (os error 14); registers: rip=0x1 (x)"
                .into(),
        };
        let line = failed.line();
        assert_eq!(
            line,
            "vmlet-vmm: error: vCPU 0: KVM_RUN failed: Bad address (os error 14); \
             registers: rip=0x1 (x) (exit status 1)"
        );
        assert_eq!(ExitRecord::parse(&format!("{line}\n")), Some(failed));
        assert!(is_failure_line(&line));
        let clean = ExitRecord {
            code: 0,
            reason: "the guest powered off or reset".into(),
        };
        assert_eq!(
            clean.line(),
            "vmlet-vmm: the guest powered off or reset (exit status 0)"
        );
        assert_eq!(ExitRecord::parse(&clean.line()), Some(clean.clone()));
        assert!(!is_failure_line(&clean.line()));
    }

    #[test]
    fn other_lines_are_no_record() {
        for line in [
            "",
            "vmlet-vmm: error: cut off (exit sta",
            "vmlet-vmm: error: no status",
            "vmlet-vmm: error: zero is no error (exit status 0)",
            "vmlet-vmm: one is (exit status 1)",
            "vmlet-vmm: error: x (exit status one)",
            "2026-12-04T10:00:01Z ERROR vmlet_vmm: transient",
        ] {
            assert_eq!(ExitRecord::parse(line), None, "{line:?}");
        }
    }
}
