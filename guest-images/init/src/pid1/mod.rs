//! What vmlet-init owes the guest as PID 1: file systems, loopback, hostname, zombie
//! reaping, termination signals and power off.
//!
//! [`setup`] never fails: each step that goes wrong is reported as one console line and
//! the next step runs anyway, so a guest with a missing feature still reaches the server.

pub mod cmdline;
pub mod mounts;
pub mod net;
pub mod reaper;
pub mod signals;

use nix::sys::reboot::{reboot, RebootMode};

use crate::console;

pub use reaper::{ExitStatus, Reaper};

/// Kernel command line parameter that sets the hostname.
pub const HOSTNAME_PARAM: &str = "vmlet.hostname";

/// Mounts the file systems, brings `lo` up and sets the hostname; logs what fails.
pub fn setup() {
    if let Err(e) = mounts::reroot() {
        console::error(format_args!("containers cannot pivot_root: {e}"));
    }
    for err in mounts::mount_all() {
        console::error(err);
    }
    mounts::dev_links();
    if let Err(e) = net::loopback_up() {
        console::error(format_args!("cannot bring lo up: {e}"));
    }
    set_hostname();
    // PID 1 must outlive every container's memory pressure.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        console::error(format_args!("cannot set init's oom_score_adj: {e}"));
    }
}

fn set_hostname() {
    let cmdline = match std::fs::read_to_string("/proc/cmdline") {
        Ok(c) => c,
        Err(e) => {
            console::error(format_args!("cannot read /proc/cmdline: {e}"));
            return;
        }
    };
    let Some(name) = cmdline::param(&cmdline, HOSTNAME_PARAM) else {
        return;
    };
    if !cmdline::valid_hostname(&name) {
        console::error(format_args!("ignoring invalid {HOSTNAME_PARAM}={name:?}"));
        return;
    }
    if let Err(e) = nix::unistd::sethostname(&name) {
        console::error(format_args!("cannot set hostname {name:?}: {e}"));
    }
}

/// Syncs the file systems and resets the machine. With the kernel's `reboot=k` the reset
/// goes through the i8042 controller, which makes the VMM exit: that is power off for a
/// guest whose ACPI has no sleep states. Returns only if the reboot system call failed.
pub fn power_off() -> nix::Error {
    console::info("powering off");
    nix::unistd::sync();
    match reboot(RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => {
            console::error(format_args!("reboot failed: {e}"));
            e
        }
    }
}
