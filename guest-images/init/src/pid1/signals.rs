//! Termination signals sent to PID 1.
//!
//! The kernel delivers to PID 1 only the signals it handles. vmlet-init treats `SIGTERM`,
//! `SIGINT` and `SIGPWR` as a request to power off, handled by a task on the runtime.

use tokio::signal::unix::{signal, SignalKind};

use crate::console;

/// The signals that power the guest off.
pub const POWER_OFF_SIGNALS: [SignalKind; 3] = [
    SignalKind::terminate(),
    SignalKind::interrupt(),
    SignalKind::from_raw(libc::SIGPWR),
];

/// Powers off when one of [`POWER_OFF_SIGNALS`] arrives. Must run on the runtime.
pub async fn power_off_on_signal() {
    let mut streams = Vec::new();
    for kind in POWER_OFF_SIGNALS {
        match signal(kind) {
            Ok(s) => streams.push(s),
            Err(e) => console::error(format_args!(
                "cannot handle signal {}: {e}",
                kind.as_raw_value()
            )),
        }
    }
    if streams.is_empty() {
        return;
    }
    let waits = streams.iter_mut().map(|s| Box::pin(s.recv()));
    let _ = futures_select_all(waits).await;
    console::info("received a termination signal");
    super::power_off();
}

/// Waits for the first of `futures`.
async fn futures_select_all<F: std::future::Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
