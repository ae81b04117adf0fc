//! Boots one micro-VM with vmlet-vmm, runs a command in the guest over vsock,
//! prints its output, and powers the guest off. Used by `scripts/demo.sh`.
//!
//! Usage: demo [COMMAND]   (environment as for the integration tests)

use std::time::{Duration, Instant};
use vmlet_integration_tests::{Guest, GuestConfig};

fn main() {
    let script = std::env::args().nth(1).unwrap_or_else(|| {
        "echo \"hello from a vmlet micro-VM: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) vCPUs, \
         $(awk '/MemTotal/ {print $2/1024}' /proc/meminfo) MiB\"; cat /proc/cmdline"
            .to_owned()
    });
    let start = Instant::now();
    let mut guest = Guest::boot(GuestConfig {
        vcpus: 2,
        ..Default::default()
    });
    eprintln!("demo: guest ready after {:.1?}", start.elapsed());
    let (status, out, err) = guest.run(&script);
    print!("{out}");
    eprint!("{err}");
    if let Err(e) = guest.agent().shutdown() {
        eprintln!("demo: shutdown refused: {e}");
    }
    let vmm = guest.wait(Duration::from_secs(60));
    eprintln!("demo: guest command exited {status}; vmlet-vmm exited {vmm}");
    std::process::exit(if status == 0 && vmm.success() { 0 } else { 1 });
}
