//! The end-to-end harness itself: a vmlet-vmm crash fails the test that saw it, also
//! when vmletd hides it (a warm VM that dies while it boots is replaced by another).

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use vmlet_integration_tests::cri::{pod_config, v1, Vmletd};
use vmlet_integration_tests::fault::VMM_FAULT_ENV;
use vmlet_integration_tests::say;

/// Two pods take a VM each from the warm pool, which refills without a failure after
/// each, and both are still ready a while later.
#[test]
fn pods_from_the_warm_pool_stay_ready() {
    let d = Vmletd::start(&["--warm-pool", "1"]);
    let c = d.client();
    let mut pods = Vec::new();
    for name in ["first", "second"] {
        c.wait_warm_pool_full();
        let pod = c
            .run_pod(pod_config(name, &d.log_dir()))
            .expect("RunPodSandbox");
        pods.push(pod);
    }
    c.wait_warm_pool_full();
    // Longer than the fault injector's delay (see `a_vmm_crash_in_one_boot_of_three_fails_the_test`).
    std::thread::sleep(Duration::from_secs(5));
    for pod in &pods {
        let state = c.pod_status(pod).unwrap().status.unwrap().state;
        assert_eq!(state, v1::PodSandboxState::SandboxReady as i32, "pod {pod}");
        c.remove_pod(pod).expect("RemovePodSandbox");
    }
}

/// With the fault injector crashing every third start of vmlet-vmm (SIGSEGV two seconds
/// after it starts), `pods_from_the_warm_pool_stay_ready` fails and names the crash: in
/// the emulated machine the third start is the warm VM the pool boots after the second
/// pod, and vmletd retries that boot without a word to the test; the harness finds the
/// crash in vmletd's log and fails the test.
#[test]
fn a_vmm_crash_in_one_boot_of_three_fails_the_test() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pods_from_the_warm_pool_stay_ready",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(VMM_FAULT_ENV, "segv-every-3")
        .output()
        .expect("run the test with the fault injector");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    say(&format!(
        "--- the run with {VMM_FAULT_ENV}=segv-every-3:\n{text}--- end of that run"
    ));
    assert!(!out.status.success(), "the run with a crashed VMM passed");
    assert!(
        text.contains("test result: FAILED. 0 passed; 1 failed"),
        "the test did not fail"
    );
    assert!(
        text.contains("killed by signal 11 (SIGSEGV)"),
        "the failure does not name the crash"
    );
    // The harness's check is what failed it: the test's own assertions all held.
    assert!(
        text.contains("1 VMM(s) exited with a failure the test did not expect"),
        "the harness did not report the crash"
    );
}
