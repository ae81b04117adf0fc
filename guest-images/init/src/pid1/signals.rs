//! Termination signals sent to PID 1.
//!
//! The kernel delivers to PID 1 only the signals it handles. vmlet-init treats `SIGTERM`,
//! `SIGINT` and `SIGPWR` as a request to power off. They are blocked in every thread
//! ([`block`], called before any thread starts) and taken synchronously by one thread
//! ([`start_handler`]). Children get an empty signal mask back: std resets it on spawn.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use crate::console;

/// The signals that power the guest off.
pub const POWER_OFF_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR];

/// Blocks [`POWER_OFF_SIGNALS`] in the calling thread (threads it starts inherit the
/// mask). Returns the set to hand to [`start_handler`], or `None` (logged) on failure.
pub fn block() -> Option<SigSet> {
    let mut set = SigSet::empty();
    for signal in POWER_OFF_SIGNALS {
        set.add(signal);
    }
    match nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        Ok(()) => Some(set),
        Err(e) => {
            console::error(format_args!("cannot block termination signals: {e}"));
            None
        }
    }
}

/// Starts the thread that waits for the blocked `set` and powers off when one arrives.
pub fn start_handler(set: SigSet) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(signal) => {
                    console::info(format_args!("received {signal}"));
                    super::power_off();
                }
                Err(e) => {
                    console::error(format_args!("sigwait: {e}"));
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        console::error(format_args!("cannot start the signal thread: {e}"));
    }
}
