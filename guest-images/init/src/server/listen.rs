//! Listening on a vsock port without giving up: PID 1 may start before its device is ready.

use std::time::Duration;

use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

use crate::console;

/// Longest wait between two attempts to listen on vsock.
const MAX_LISTEN_RETRY: Duration = Duration::from_secs(30);

/// Binds and listens, retrying with backoff: vsock may be missing for a while (no
/// device yet) and PID 1 must not give up.
pub async fn listen_retrying(port: u32) -> VsockListener {
    let mut delay = Duration::from_millis(10);
    let mut reported = false;
    loop {
        match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)) {
            Ok(l) => return l,
            Err(e) => {
                if !reported {
                    console::error(format_args!(
                        "cannot listen on vsock port {port}: {e} (retrying)"
                    ));
                    reported = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_LISTEN_RETRY);
            }
        }
    }
}
