//! `scripts/with-kvm.sh`'s rule for what counts as a failure of the emulated machine
//! itself (and so may be run again by `scripts/test.sh`): its `emulation_fault`, run on
//! console excerpts.

use std::path::Path;
use std::process::Command;

/// Runs `emulation_fault` on a console holding `console`; returns (whether it named a
/// fault, what it wrote to the fault file, its stderr).
fn classify(console: &str, timed_out: bool) -> (bool, String, String) {
    classify_beat(console, timed_out, None)
}

/// [`classify`] where the machine's last heartbeat line was seen `beat_age` ago
/// (`touch -d` syntax; watch_heartbeat touches CONSOLE.beat on each one); None: no
/// watcher ran.
fn classify_beat(console: &str, timed_out: bool, beat_age: Option<&str>) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (file, fault) = (dir.path().join("console"), dir.path().join("fault"));
    std::fs::write(&file, console).unwrap();
    std::fs::write(&fault, "").unwrap();
    if let Some(age) = beat_age {
        let beat = dir.path().join("console.beat");
        std::fs::write(&beat, "").unwrap();
        let touched = Command::new("touch").arg("-d").arg(age).arg(&beat).status();
        assert!(touched.unwrap().success());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/with-kvm.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && opt_fault_file=$2 && emulation_fault "$3" "$4""#)
        .arg("classify")
        .arg(&script)
        .arg(&fault)
        .arg(&file)
        .arg(if timed_out { "1" } else { "0" })
        .output()
        .unwrap();
    (
        out.status.success(),
        std::fs::read_to_string(&fault).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_machines_own_panic_and_foreign_lockups_are_emulation_faults() {
    let panic = "[  812.1] Kernel panic - not syncing: Fatal exception in interrupt\n";
    let (fault, cause, _) = classify(panic, false);
    assert!(fault);
    assert_eq!(
        cause,
        "the machine's kernel: [  812.1] Kernel panic - not syncing: Fatal exception in interrupt\n"
    );
    let lockup = "[ 90.2] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kworker/1:2:88]\n";
    let (fault, cause, _) = classify(lockup, false);
    assert!(fault);
    assert!(cause.contains("[kworker/1:2:88]"), "{cause}");
}

#[test]
fn a_lockup_in_a_vmlet_task_is_never_the_emulations_fault() {
    for task in [
        "vmlet-vmm:123",
        "vcpu0:124",
        "vcpu12:125",
        "vmletd:7",
        "tokio-runtime-w:8",
    ] {
        // Also when the machine's kernel panics after it (softlockup_panic).
        let console = format!(
            "[ 90.2] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [{task}]\n\
             [ 91.0] Kernel panic - not syncing: softlockup: hung tasks\n"
        );
        let (fault, cause, err) = classify(&console, false);
        assert!(!fault, "{task}: {cause}");
        assert_eq!(cause, "", "{task}");
        assert!(
            err.contains("soft lockup in one of vmlet's tasks") && err.contains(task),
            "{task}: {err}"
        );
    }
}

#[test]
fn a_quiet_machine_that_timed_out_is_lost_and_a_clean_console_is_no_fault() {
    let (fault, cause, _) = classify("with-kvm heartbeat 10.0\n", false);
    assert!(!fault);
    assert_eq!(cause, "");
    // The console file was just written, so it was not silent long enough.
    let (fault, cause, _) = classify("with-kvm heartbeat 10.0\n", true);
    assert!(!fault);
    assert_eq!(cause, "");
}

/// A machine whose kernel keeps printing (a soft lockup repeats) while its heartbeat
/// has stopped is lost: only heartbeat lines count.
#[test]
fn a_console_that_prints_without_a_heartbeat_is_a_lost_machine() {
    let console = "with-kvm heartbeat 10.0\n[ 900.1] kvm: something\n";
    let (fault, cause, _) = classify_beat(console, true, Some("200 seconds ago"));
    assert!(fault);
    assert!(cause.starts_with("lost machine: no heartbeat"), "{cause}");
}

/// A machine whose heartbeat stopped is lost even when the first task its kernel
/// named is ours: with two CPUs, one task of ours cannot stop the heartbeat.
#[test]
fn a_lost_machine_is_the_emulations_whatever_task_locked_up() {
    let console = "with-kvm heartbeat 10.0\n\
                   [ 92.7] watchdog: BUG: soft lockup - CPU#0 stuck for 49s! [vmlet-vmm:193]\n";
    let (fault, cause, _) = classify_beat(console, true, Some("200 seconds ago"));
    assert!(fault);
    assert!(
        cause.starts_with("lost machine: no heartbeat") && cause.contains("[vmlet-vmm:193]"),
        "{cause}"
    );
    // Where the machine still answered, the same lockup is ours.
    let (fault, cause, _) = classify_beat(console, false, Some("200 seconds ago"));
    assert!(!fault);
    assert_eq!(cause, "");
}

/// Runs `nested_triple_fault` on a run folder whose command printed `stdout`; returns
/// what it wrote to the fault file.
fn triple_fault_cause(stdout: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("fault");
    std::fs::write(dir.path().join("stdout"), stdout).unwrap();
    std::fs::write(dir.path().join("stderr"), "").unwrap();
    std::fs::write(&fault, "").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/with-kvm.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && opt_fault_file=$2 && nested_triple_fault "$3""#)
        .arg("classify")
        .arg(&script)
        .arg(&fault)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(&fault).unwrap()
}

#[test]
fn only_a_triple_fault_in_the_reset_state_is_the_emulations() {
    // The line vmlet-vmm ends with, as the harness prints it from vmm.log.
    let reset = "vmlet-vmm: error: vCPU 0: guest crash: KVM exit SHUTDOWN without a reset \
                 request (triple fault); registers: rip=0xfff0 rsp=0x0 rflags=0x2 cr0=0x10 \
                 cr2=0x0 cr3=0x0 cr4=0x0 efer=0x0 (exit status 1)";
    let cause = triple_fault_cause(&format!("--- vmm.log ---\n{reset}\nFAILED\n"));
    assert!(
        cause.starts_with("nested guest triple fault: ") && cause.contains("rip=0xfff0"),
        "{cause}"
    );
    // Any other crash, a triple fault with the guest's own state among them, is ours.
    for other in [
        "vmlet-vmm: error: vCPU 0: guest crash: KVM exit SHUTDOWN without a reset request \
         (triple fault); registers: rip=0xffffffff81000000 rsp=0x0 rflags=0x2 cr0=0x80050033 \
         cr2=0x0 cr3=0x0 cr4=0x0 efer=0x0 (exit status 1)",
        "vmlet-vmm: error: vCPU 0: guest crash: KVM exit HLT without a reset request (triple \
         fault); registers: rip=0xfff0 rsp=0x0 rflags=0x2 cr0=0x10 cr2=0x0 cr3=0x0 cr4=0x0 \
         efer=0x0 (exit status 1)",
        "vmlet-vmm: error: seccomp: the VMM made syscall getppid (110), which its filter \
         forbids (exit status 159)",
    ] {
        assert_eq!(triple_fault_cause(other), "", "{other}");
    }
}
