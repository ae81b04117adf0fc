//! Boots one pod micro-VM with vmlet-vmm, with a busybox image built here from
//! Debian's busybox-static on a read-only drive and a scratch disk, runs a container
//! in it through vmlet-init's gRPC agent, prints the container's output, and powers
//! the guest off. Used by `scripts/demo.sh`.
//!
//! Usage: demo [COMMAND]   (a shell command for the container; environment as for the
//! integration tests)

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vmlet_integration_tests::agent::{req, CALL_TIMEOUT};
use vmlet_integration_tests::{drive, images, Guest, GuestConfig};
use vmlet_proto::agent as pb;

fn main() {
    let script = std::env::args().nth(1).unwrap_or_else(|| {
        "echo \"hello from a container in a vmlet micro-VM: kernel $(uname -r), \
         host name $(hostname), $(nproc) vCPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB\"; \
         echo \"I am $(id -un), PID $$, in $(cat /proc/self/cgroup)\""
            .to_owned()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let image = images::busybox_erofs(dir.path());
    let scratch = images::scratch_disk(&dir.path().join("scratch.ext4"), 64);
    let start = Instant::now();
    let mut guest = Guest::boot(GuestConfig {
        vcpus: 2,
        drives: vec![
            drive("busybox", &image, true),
            drive("scratch", &scratch, false),
        ],
        ..Default::default()
    });
    eprintln!("demo: guest ready after {:.1?}", start.elapsed());
    let agent = guest.agent();
    let mut c = agent.agent.clone();
    agent
        .call(
            CALL_TIMEOUT,
            c.configure_guest(req(
                pb::ConfigureGuestRequest {
                    hostname: "demo-pod".into(),
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("ConfigureGuest");
    let spec = images::container_spec("hello", "busybox", "scratch", &["/bin/sh", "-c", &script]);
    let created = Instant::now();
    agent.create(spec).expect("CreateContainer");
    agent.start("hello").expect("StartContainer");
    let out = agent.output("hello", "", Duration::from_secs(120));
    let status = agent
        .wait("hello", "", Duration::from_secs(120))
        .expect("WaitProcess");
    print!("{}", out.out());
    eprint!("{}", out.err());
    eprintln!(
        "demo: container exited {} ({}) {:.1?} after its create call",
        status.exit_code,
        status.reason,
        created.elapsed()
    );
    if let Err(e) = agent.shutdown() {
        eprintln!("demo: shutdown refused: {e}");
    }
    let vmm = guest.wait(Duration::from_secs(60));
    eprintln!("demo: vmlet-vmm exited {vmm}");
    std::process::exit(if status.exit_code == 0 && vmm.success() {
        0
    } else {
        1
    });
}
