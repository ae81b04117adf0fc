//! `vmlet-init`: PID 1 of every vmlet pod VM. See the library crate for the pieces.

use std::sync::Arc;

use vmlet_init::console;
use vmlet_init::pid1::{self, ChildRegistry};
use vmlet_init::server::{self, GuestPlatform, Server};

fn main() {
    // The boot-time benchmark stops its clock at this line: nothing may come before it.
    console::info("started");

    // Signals first, so that every thread spawned below inherits the blocked mask.
    let signals = pid1::signals::block();
    pid1::setup();
    let children = Arc::new(ChildRegistry::new());
    pid1::start_reaper(Arc::clone(&children));
    if let Some(signals) = signals {
        pid1::signals::start_handler(signals);
    }

    server::serve_power_port(GuestPlatform);
    let listener = server::listen_retrying(server::VSOCK_PORT);
    // "ready" means the host can connect now.
    console::info(format_args!("ready (vsock port {})", server::VSOCK_PORT));
    let server = Arc::new(Server::new(GuestPlatform, children));
    server::serve_forever(server, listener)
}
