//! `vmlet-init`: PID 1 of every vmlet pod VM. See the library crate for the pieces.

use vmlet_init::{console, pid1, server};

fn main() {
    // The boot-time benchmark stops its clock at this line: nothing may come before it.
    console::info("started");
    pid1::setup();
    // One thread: forking container processes is only safe without others.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        // A panic in a request handler ends only that connection's task; one that
        // reaches here means the agent is gone: power off, so the host sees the pod end.
        Ok(rt) => {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(server::run())))
                .is_err()
            {
                console::error("the agent panicked");
                pid1::power_off();
            }
        }
        Err(e) => console::error(format_args!("cannot start the runtime: {e}")),
    }
    // PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
