//! The vsock server: the [`agent`] and [`diag`] gRPC services on port
//! [`vmlet_proto::AGENT_PORT`], the power port, and [`portforward`].

pub mod agent;
pub mod diag;
pub mod listen;
pub mod portforward;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use vmlet_proto::agent::{agent_server::AgentServer, diagnostics_server::DiagnosticsServer};

use crate::console;
use crate::container::Manager;
use crate::pid1::{self, Reaper};

/// The vsock port whose every connection powers the guest off: how the VMM asks for a
/// graceful shutdown without speaking gRPC.
pub const POWER_PORT: u32 = 1023;

/// Largest message accepted (file writes, stdin chunks, echo payloads).
const MAX_MESSAGE: usize = 16 << 20;

async fn serve_power_port() {
    let listener = listen::listen_retrying(POWER_PORT).await;
    loop {
        match listener.accept().await {
            Ok(_) => {
                console::info("power-off requested on the power port");
                pid1::power_off();
            }
            Err(e) => {
                console::error(format_args!("power port accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs everything vmlet-init does after boot: reaping, signals, the power port and
/// the gRPC services. Never returns.
pub async fn run() {
    let reaper = Reaper::new();
    tokio::spawn(Arc::clone(&reaper).run());
    tokio::spawn(pid1::signals::power_off_on_signal());
    tokio::spawn(serve_power_port());
    tokio::spawn(portforward::serve());
    let manager = Manager::new(Arc::clone(&reaper))
        .map(Arc::new)
        .map_err(|e| {
            console::error(format_args!("containers are unavailable: {e}"));
            e.to_string()
        });
    let agent = AgentServer::new(agent::AgentService::new(manager))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let diag = DiagnosticsServer::new(diag::DiagnosticsService::new(reaper))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let port = vmlet_proto::AGENT_PORT;
    loop {
        let listener = listen::listen_retrying(port).await;
        // "ready" means the host can connect now.
        // The guest's uptime tells kernel boot time apart from the host's view.
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        let uptime = uptime.split_whitespace().next().unwrap_or("?");
        console::info(format_args!(
            "ready (vsock port {port}), {uptime} s after the kernel started"
        ));
        let served = tonic::transport::Server::builder()
            .add_service(agent.clone())
            .add_service(diag.clone())
            .serve_with_incoming(listener.incoming())
            .await;
        if let Err(e) = served {
            console::error(format_args!("gRPC server stopped: {e}; restarting"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
