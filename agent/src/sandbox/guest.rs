//! The connection to a pod's guest agent (vmlet-init) through the VMM's hybrid vsock.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Request;
use vmlet_proto::agent as pb;
use vmlet_proto::agent::agent_client::AgentClient;

use super::error::SandboxError;

/// A client of the guest agent.
pub type GuestClient = AgentClient<Channel>;

/// Deadline of one short call.
pub const CALL: Duration = Duration::from_secs(30);

/// A request with a deadline.
pub fn req<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Connects to the guest agent and waits until it answers `Health`, giving up at
/// `timeout` or as soon as `vmm_alive` says the VMM is gone.
pub async fn connect(
    vsock: &Path,
    timeout: Duration,
    vmm_alive: impl Fn() -> bool,
) -> Result<GuestClient, SandboxError> {
    let start = Instant::now();
    let mut last = String::from("no attempt");
    loop {
        if !vmm_alive() {
            return Err(SandboxError::VmmExited(last));
        }
        if start.elapsed() > timeout {
            return Err(SandboxError::GuestTimeout { timeout, last });
        }
        match vmlet_proto::hybrid::channel(vsock, vmlet_proto::AGENT_PORT, Duration::from_secs(5))
            .await
        {
            Ok(ch) => {
                let mut c = AgentClient::new(ch)
                    .max_decoding_message_size(32 << 20)
                    .max_encoding_message_size(32 << 20);
                match c
                    .health(req(pb::HealthRequest {}, Duration::from_secs(5)))
                    .await
                {
                    Ok(_) => return Ok(c),
                    Err(e) => last = format!("Health: {e}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
