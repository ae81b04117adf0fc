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

/// Largest reply taken from a guest: what vmletd asks for is far smaller (output
/// reads of at most 1 MiB, termination logs of 12 KiB, the status and stats of a
/// pod's containers), and a hostile guest must not make vmletd buffer more.
pub const MAX_REPLY: usize = 4 << 20;

/// Largest request sent to a guest, as large as vmlet-init takes: a copied volume
/// of up to 8 MiB goes in one request.
pub const MAX_REQUEST: usize = 16 << 20;

/// A guest agent client on `channel`, with the message caps.
pub fn client(channel: Channel) -> GuestClient {
    AgentClient::new(channel)
        .max_decoding_message_size(MAX_REPLY)
        .max_encoding_message_size(MAX_REQUEST)
}

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
                let mut c = client(ch);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::fake::{FakeHypervisor, GuestState};

    /// A guest whose reply is larger than [`MAX_REPLY`] gets an error, not a buffer
    /// of that size; a reply below it is taken.
    #[tokio::test]
    async fn replies_over_the_cap_are_refused() {
        let hv = FakeHypervisor::default();
        let dir = tempfile::tempdir().unwrap();
        let mut guest = GuestState::default();
        guest
            .containers
            .insert("c".into(), pb::ProcessStatus::default());
        guest.output.insert("c".into(), vec![b'x'; MAX_REPLY + 1]);
        guest
            .output
            .insert("small".into(), vec![b'x'; MAX_REPLY - 1024]);
        guest
            .containers
            .insert("small".into(), pb::ProcessStatus::default());
        let vm = hv.start(&dir.path().join("ctl"), guest).await.unwrap();
        let read = |id: &str| {
            let mut c = vm.client.clone();
            let id = id.to_owned();
            async move {
                c.read_output(req(
                    pb::ReadOutputRequest {
                        container_id: id,
                        stream: pb::Stream::Stdout as i32,
                        ..Default::default()
                    },
                    CALL,
                ))
                .await
            }
        };
        let e = read("c").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
        assert_eq!(
            read("small").await.unwrap().into_inner().data.len(),
            MAX_REPLY - 1024
        );
    }
}
