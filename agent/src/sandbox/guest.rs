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

/// Whether `s` says a call's deadline passed: the guest's own answer
/// (`DEADLINE_EXCEEDED`), or the client's timer, which fires first when the answer
/// comes back late (a loaded node). tonic reports that as `CANCELLED`, its source
/// `TimeoutExpired`. A waiting poll goes on after either.
pub fn deadline_passed(s: &tonic::Status) -> bool {
    if s.code() == tonic::Code::DeadlineExceeded {
        return true;
    }
    let mut e = std::error::Error::source(s);
    while let Some(err) = e {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        e = err.source();
    }
    false
}

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

/// Bytes of entropy sent to a restored guest: twice the 256 bits that its kernel's
/// CRNG needs to count as seeded (the guest takes 32 to 512).
pub const RESTORE_ENTROPY: usize = 64;

/// What a guest restored from a snapshot was made into by [`restored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The boot ID it was given: its containers read it at
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Block devices whose cached pages it dropped.
    pub block_devices_flushed: u32,
    /// Neighbour (ARP/NDP) entries it deleted.
    pub neighbours_flushed: u32,
}

/// Makes a guest just restored from a template's snapshot an individual of its own
/// (`Restored`): its kernel's CRNG reseeded with fresh bytes of the host's
/// getrandom, its wall clock set to the host's, its block devices' and neighbour
/// tables' template state dropped, and a new random boot ID for its containers.
/// Call it as soon as the agent answers after the restore, before anything of the
/// pod runs in the guest; it may be retried.
pub async fn restored(
    client: &mut GuestClient,
    timeout: Duration,
) -> Result<Restored, SandboxError> {
    let mut entropy = vec![0u8; RESTORE_ENTROPY];
    getrandom::fill(&mut entropy).map_err(SandboxError::Random)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(SandboxError::Random)?;
    let boot_id = uuid_v4(id);
    // Read last, so that the guest's clock lags the host's by no more than the call.
    let realtime_ns = realtime_ns(std::time::SystemTime::now());
    if realtime_ns == 0 {
        tracing::warn!(
            "the host clock is outside what a guest can be given: \
             the restored guest keeps its own"
        );
    }
    let reply = client
        .restored(req(
            pb::RestoredRequest {
                entropy,
                realtime_ns,
                boot_id: boot_id.clone(),
            },
            timeout,
        ))
        .await
        .map_err(|status| SandboxError::Guest {
            call: "Restored",
            status: Box::new(status),
        })?
        .into_inner();
    tracing::debug!(
        boot_id,
        block_devices_flushed = reply.block_devices_flushed,
        neighbours_flushed = reply.neighbours_flushed,
        "restored guest renewed"
    );
    Ok(Restored {
        boot_id,
        block_devices_flushed: reply.block_devices_flushed,
        neighbours_flushed: reply.neighbours_flushed,
    })
}

/// `t` in nanoseconds since the Unix epoch; 0 (the guest keeps its clock) before the
/// epoch or past what an i64 holds (the year 2262).
fn realtime_ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// A random (version 4, RFC 9562) UUID from 16 random bytes, lowercase and hyphenated
/// as the kernel writes boot IDs.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    // 32 ASCII hex digits: the ranges are in bounds.
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_passes_on_either_side() {
        assert!(deadline_passed(&tonic::Status::deadline_exceeded("late")));
        // The client's timer, as tonic's channel reports it.
        let err: Box<dyn std::error::Error + Send + Sync> = Box::new(tonic::TimeoutExpired(()));
        let s = tonic::Status::from_error(err);
        assert_eq!(s.code(), tonic::Code::Cancelled);
        assert!(deadline_passed(&s), "{s:?}");
        assert!(!deadline_passed(&tonic::Status::cancelled("by the caller")));
        assert!(!deadline_passed(&tonic::Status::not_found(
            "no such process"
        )));
    }
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

    #[test]
    fn boot_ids_are_v4_uuids() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = uuid_v4(*b"0123456789abcdef");
        assert_eq!(id, "30313233-3435-4637-b839-616263646566");
    }

    #[test]
    fn realtime_is_nanoseconds_since_the_epoch() {
        use std::time::{SystemTime, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(realtime_ns(t), 1_700_000_000_000_000_123);
        assert_eq!(realtime_ns(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(realtime_ns(UNIX_EPOCH + Duration::from_secs(1 << 40)), 0);
        assert!(realtime_ns(SystemTime::now()) > 1_700_000_000_000_000_000);
    }

    /// The guest gets fresh entropy, the host's clock and a new v4 boot ID on each
    /// call; its refusal is the call's error.
    #[tokio::test]
    async fn restored_sends_fresh_entropy_time_and_boot_id() {
        let hv = FakeHypervisor::default();
        let dir = tempfile::tempdir().unwrap();
        let vm = hv
            .start(&dir.path().join("ctl"), GuestState::default())
            .await
            .unwrap();
        let fake = hv.all().pop().unwrap();
        let mut client = vm.client.clone();
        let before = realtime_ns(std::time::SystemTime::now());
        let first = restored(&mut client, CALL).await.unwrap();
        let second = restored(&mut client, CALL).await.unwrap();
        let after = realtime_ns(std::time::SystemTime::now());
        assert_eq!(first.block_devices_flushed, 3);
        assert_eq!(first.neighbours_flushed, 1);
        assert_ne!(first.boot_id, second.boot_id);
        let sent = fake.guest.lock().unwrap().restored.clone();
        assert_eq!(sent.len(), 2);
        for (r, got) in sent.iter().zip([&first, &second]) {
            assert_eq!(r.entropy.len(), RESTORE_ENTROPY);
            assert_eq!(r.boot_id, got.boot_id);
            let id = r.boot_id.as_bytes();
            assert_eq!(id.len(), 36);
            assert_eq!(id[14], b'4', "{}", r.boot_id);
            assert!(b"89ab".contains(&id[19]), "{}", r.boot_id);
            assert!((before..=after).contains(&r.realtime_ns));
        }
        assert_ne!(sent[0].entropy, sent[1].entropy);

        fake.guest
            .lock()
            .unwrap()
            .fail
            .insert("Restored", tonic::Code::Internal);
        match restored(&mut client, CALL).await.unwrap_err() {
            SandboxError::Guest { call, status } => {
                assert_eq!(call, "Restored");
                assert_eq!(status.code(), tonic::Code::Internal);
            }
            other => panic!("expected a guest error, got {other:?}"),
        }
    }
}
