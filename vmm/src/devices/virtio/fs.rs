//! virtio-fs as a vhost-user frontend: the file system itself is served by a
//! separate backend process (virtiofsd) on a unix socket; the VMM only sets the
//! device up and relays notifications.
//!
//! * When the VM is built the frontend connects, negotiates features and protocol
//!   features, claims ownership and sends the guest memory table (one fd per RAM
//!   region, so guest RAM must be a shared memfd).
//! * When the driver sets DRIVER_OK each vring is handed over: size, addresses (as
//!   VMM virtual addresses, which the backend translates through the memory
//!   table), base index, kick and call eventfds, then enabled.
//! * Guest kicks reach the backend without the VMM: the kick eventfd of a queue is
//!   the ioeventfd KVM signals on its QueueNotify write.
//! * The backend's call eventfds are watched on the event loop, which sets the
//!   used-ring bit in the interrupt status and raises the irqfd (virtio-mmio's
//!   driver ignores an interrupt whose status bit is clear, so the call fd cannot
//!   be the irqfd itself).
//! * A driver reset stops every vring (`GET_VRING_BASE`). A backend that goes away
//!   is logged and the device stops; the VM goes on without it.
//! * Activation and reset run on the vCPU thread that wrote the status register,
//!   which waits for the backend's replies. A [`Watchdog`] on the event loop bounds
//!   that wait by [`REQUEST_TIMEOUT`]: past it, it shuts the socket down, which
//!   fails the request (a socket timeout would not do: the vhost crate retries a
//!   timed-out read). After a failed request the connection is not used again (it
//!   may be out of step).
//!
//! Queues: one high-priority queue, then `num_request_queues` request queues. No
//! DAX window.

use super::{device_type, ActivateError, IrqTrigger, VirtioDevice, INT_VRING, VIRTIO_F_VERSION_1};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmlet_vmm_api::config::FsConfig;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Size of the configuration space tag (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
/// Size of the whole configuration space: tag, then `num_request_queues` (le32).
pub const CONFIG_LEN: usize = TAG_LEN + 4;

/// Transport features the device may pass on from the backend; anything else (a
/// packed ring, an IOMMU) this VMM does not implement.
const PASSED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
/// Protocol features we use when the backend offers them: MQ to learn how many
/// queues it serves, REPLY_ACK so that every request is acknowledged (a memory
/// table or vring the backend cannot take fails the request that sent it, instead
/// of leaving a device that never answers).
const WANTED_PROTOCOL: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// Longest wait for the backend's answers to one activation or reset.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Event-loop data of the backend socket (call eventfds use their queue index).
const SOCKET_EVENT: u32 = u32::MAX;

/// Why the device could not be set up with its backend.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The backend socket cannot be reached.
    #[error("connecting to vhost-user backend {path}: {source}")]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        source: vhost::Error,
    },
    /// A vhost-user request failed.
    #[error("vhost-user {request}: {source}")]
    Request {
        /// The request.
        request: &'static str,
        /// Why.
        source: vhost::Error,
    },
    /// The backend lacks something virtio-fs needs.
    #[error("vhost-user backend: {0}")]
    Backend(String),
    /// Guest RAM is not shared memory.
    #[error("guest memory is not shared (a memfd), which vhost-user needs")]
    PrivateMemory,
    /// A vring address is outside guest RAM.
    #[error("queue {0}: a ring lies outside guest memory")]
    RingAddress(usize),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The request watchdog's timer or socket could not be set up.
    #[error("request watchdog: {0}")]
    Watchdog(std::io::Error),
    /// An earlier activation or reset failed: the connection may be out of step.
    #[error("an earlier activation or reset failed; the device is out of service")]
    Broken,
}

/// The name of a failed request, for [`FsError::Request`].
fn req(request: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |source| FsError::Request { request, source }
}

/// The configuration space of a device with `tag` and `request_queues`.
pub fn config_space(tag: &str, request_queues: u16) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    let n = tag.len().min(TAG_LEN);
    config[..n].copy_from_slice(&tag.as_bytes()[..n]);
    config[TAG_LEN..].copy_from_slice(&u32::from(request_queues).to_le_bytes());
    config
}

/// What the vCPU doing requests and the [`Watchdog`] share.
#[derive(Default)]
struct WatchState {
    /// Number of the request sequence in flight (0: none).
    inflight: AtomicU64,
    /// Numbers handed out so far.
    started: AtomicU64,
}

/// Shuts down the backend socket of a device whose backend takes longer than
/// [`REQUEST_TIMEOUT`] over one activation or reset, which ends the vCPU's wait.
/// A subscriber of its own: the device's lock is held by the waiting vCPU.
pub struct Watchdog {
    tag: String,
    state: Arc<WatchState>,
    /// Written by the vCPU when a sequence starts.
    arm: EventFd,
    timer: TimerFd,
    /// The sequence the timer runs for.
    armed: u64,
    /// A duplicate of the backend socket.
    socket: OwnedFd,
    timeout: std::time::Duration,
}

const WATCH_ARM: u32 = 0;
const WATCH_TIMER: u32 = 1;

impl Watchdog {
    fn process_arm(&mut self) {
        let _ = self.arm.read();
        self.armed = self.state.inflight.load(Ordering::SeqCst);
        if self.armed == 0 {
            return;
        }
        if let Err(e) = self.timer.reset(self.timeout, None) {
            tracing::error!("virtio-fs {}: arming the request timer: {e}", self.tag);
        }
    }

    fn process_timer(&mut self) {
        let _ = self.timer.wait();
        if self.armed == 0 || self.state.inflight.load(Ordering::SeqCst) != self.armed {
            return;
        }
        tracing::error!(
            "virtio-fs {}: the vhost-user backend did not answer within {:?}; disconnecting it",
            self.tag,
            self.timeout
        );
        // SAFETY: shutdown on a socket this watchdog owns (a duplicate of the
        // frontend's); it only ends the connection.
        if unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
            tracing::error!(
                "virtio-fs {}: shutting the socket down: {}",
                self.tag,
                std::io::Error::last_os_error()
            );
        }
    }
}

impl MutEventSubscriber for Watchdog {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            WATCH_ARM => self.process_arm(),
            WATCH_TIMER => self.process_timer(),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (self.arm.as_raw_fd(), WATCH_ARM),
            (self.timer.as_raw_fd(), WATCH_TIMER),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                tracing::error!("virtio-fs {}: watching the request timer: {e}", self.tag);
            }
        }
    }
}

struct Active {
    irq: Arc<IrqTrigger>,
    queues: usize,
}

/// A virtio-fs device backed by a vhost-user backend.
pub struct Fs {
    tag: String,
    frontend: Frontend,
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    /// Kick eventfds (KVM's ioeventfds), one per queue.
    kick_evts: Vec<EventFd>,
    /// Call eventfds the backend signals, one per queue.
    call_evts: Vec<EventFd>,
    /// Features the backend offers (including `VHOST_USER_F_PROTOCOL_FEATURES`).
    backend_features: u64,
    acked_features: u64,
    protocol: bool,
    /// Set once the backend closed its socket: the device then does nothing more.
    gone: bool,
    /// Set once an activation or reset failed: no more requests are sent.
    broken: bool,
    watch: Arc<WatchState>,
    /// Starts the watchdog's timer.
    watch_arm: EventFd,
    /// The watchdog, until the VMM takes it for its event loop.
    watchdog: Option<Watchdog>,
    active: Option<Active>,
}

impl Fs {
    /// Connects to the backend of `config` and hands it `mem` (which must be
    /// shared memory).
    pub fn new(config: &FsConfig, mem: &GuestMemoryMmap) -> Result<Self, FsError> {
        let queues = 1 + usize::from(config.num_request_queues);
        let mut frontend = Frontend::connect(&config.socket, queues as u64).map_err(|source| {
            FsError::Connect {
                path: config.socket.clone(),
                source,
            }
        })?;
        frontend.set_owner().map_err(req("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(req("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Backend("no VIRTIO_F_VERSION_1".into()));
        }
        let protocol = backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            // Virtio features are set only once the driver has acked them (a backend
            // may refuse a set without VIRTIO_F_VERSION_1).
            let offered = frontend
                .get_protocol_features()
                .map_err(req("GET_PROTOCOL_FEATURES"))?;
            let wanted = offered & WANTED_PROTOCOL;
            frontend
                .set_protocol_features(wanted)
                .map_err(req("SET_PROTOCOL_FEATURES"))?;
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if wanted.contains(VhostUserProtocolFeatures::MQ) {
                let max = frontend.get_queue_num().map_err(req("GET_QUEUE_NUM"))?;
                if max < queues as u64 {
                    return Err(FsError::Backend(format!(
                        "serves {max} queues, {queues} configured"
                    )));
                }
            }
        }
        let regions = mem
            .iter()
            .map(|r| {
                r.file_offset().ok_or(FsError::PrivateMemory)?;
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(req("SET_MEM_TABLE"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        frontend
            .set_mem_table(&regions)
            .map_err(req("SET_MEM_TABLE"))?;
        let new_evts = || {
            (0..queues)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(FsError::EventFd)
        };
        let watch = Arc::new(WatchState::default());
        let watch_arm = EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?;
        let watchdog = Watchdog {
            tag: config.tag.clone(),
            state: watch.clone(),
            arm: watch_arm.try_clone().map_err(FsError::EventFd)?,
            timer: TimerFd::new()
                .map_err(|e| FsError::Watchdog(std::io::Error::from_raw_os_error(e.errno())))?,
            armed: 0,
            // SAFETY: the frontend's socket is open for as long as `frontend`
            // lives, which is past this borrow; the duplicate is owned.
            socket: unsafe { BorrowedFd::borrow_raw(frontend.as_raw_fd()) }
                .try_clone_to_owned()
                .map_err(FsError::Watchdog)?,
            timeout: REQUEST_TIMEOUT,
        };
        tracing::debug!(
            "virtio-fs {}: backend {} offers features {backend_features:#x}",
            config.tag,
            config.socket.display()
        );
        Ok(Fs {
            tag: config.tag.clone(),
            frontend,
            config: config_space(&config.tag, config.num_request_queues),
            queue_sizes: vec![config.queue_size; queues],
            kick_evts: new_evts()?,
            call_evts: new_evts()?,
            backend_features,
            acked_features: 0,
            protocol,
            gone: false,
            broken: false,
            watch,
            watch_arm,
            watchdog: Some(watchdog),
            active: None,
        })
    }

    /// The subscriber that bounds the vCPU's waits on the backend; the VMM adds
    /// it to its event loop (once: later calls return `None`).
    pub fn take_watchdog(&mut self) -> Option<Watchdog> {
        self.watchdog.take()
    }

    /// Runs `requests` with the watchdog armed.
    fn watched<T>(&mut self, requests: impl FnOnce(&mut Self) -> T) -> T {
        let n = self.watch.started.fetch_add(1, Ordering::SeqCst) + 1;
        self.watch.inflight.store(n, Ordering::SeqCst);
        if let Err(e) = self.watch_arm.write(1) {
            tracing::error!("virtio-fs {}: arming the request timer: {e}", self.tag);
        }
        let result = requests(self);
        self.watch.inflight.store(0, Ordering::SeqCst);
        result
    }

    /// Hands every vring to the backend and starts it.
    fn start_vrings(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) -> Result<(), FsError> {
        let mut features = self.acked_features;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(req("SET_FEATURES"))?;
        for (i, q) in queues.iter().enumerate() {
            let host = |addr: u64| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| FsError::RingAddress(i))
            };
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(req("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &ring)
                .map_err(req("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, q.next_avail())
                .map_err(req("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.call_evts[i])
                .map_err(req("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kick_evts[i])
                .map_err(req("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(req("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the first `queues` vrings in the backend.
    fn stop_vrings(&mut self, queues: usize) -> Result<(), FsError> {
        for i in 0..queues {
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, false)
                    .map_err(req("SET_VRING_ENABLE"))?;
            }
            // The backend stops the ring when asked for its base.
            self.frontend
                .get_vring_base(i)
                .map_err(req("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    /// The backend signalled the call eventfd of queue `index`: a used ring changed.
    fn on_call(&mut self, index: usize) {
        let Some(evt) = self.call_evts.get(index) else {
            return;
        };
        // Reading resets the counter; a nonblocking read of an empty one fails.
        if evt.read().is_err() {
            return;
        }
        if let Some(a) = &self.active {
            a.irq.trigger(INT_VRING);
        }
    }

    /// The connection to the backend closed (the backend exited, or the watchdog
    /// ended it): nothing more reaches it.
    fn backend_gone(&mut self, ops: &mut EventOps) {
        if self.gone {
            return;
        }
        self.gone = true;
        self.active = None;
        tracing::error!(
            "virtio-fs {}: the connection to the vhost-user backend is closed; the device stops, the VM goes on",
            self.tag
        );
        let fd = self.frontend.as_raw_fd();
        // Level-triggered hang-ups repeat until the fd leaves the loop.
        if let Err(e) = ops.remove(Events::with_data_raw(fd, SOCKET_EVENT, EventSet::empty())) {
            tracing::debug!("virtio-fs {}: unwatching the socket: {e}", self.tag);
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        self.backend_features & PASSED_FEATURES
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.kick_evts
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        if self.gone {
            return Err(ActivateError::Backend(
                "the vhost-user backend is gone".into(),
            ));
        }
        if self.broken {
            return Err(ActivateError::Backend(FsError::Broken.to_string()));
        }
        if let Err(e) = self.watched(|fs| fs.start_vrings(&mem, &queues)) {
            self.broken = true;
            return Err(ActivateError::Backend(e.to_string()));
        }
        self.active = Some(Active {
            irq,
            queues: queues.len(),
        });
        Ok(())
    }
    fn reset(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        if self.gone || self.broken {
            return;
        }
        if let Err(e) = self.watched(|fs| fs.stop_vrings(active.queues)) {
            self.broken = true;
            tracing::error!(
                "virtio-fs {}: stopping the vrings: {e}; the device is out of service",
                self.tag
            );
        }
        // Calls the backend made before it stopped must not leak into the next
        // activation's interrupt status.
        for evt in &self.call_evts {
            let _ = evt.read();
        }
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        // The backend holds the rings: a VM with virtio-fs is never snapshotted.
        Vec::new()
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == SOCKET_EVENT {
            self.backend_gone(ops);
            return;
        }
        self.on_call(events.data() as usize);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.call_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("virtio-fs {}: watching call eventfd {i}: {e}", self.tag);
            }
        }
        // Only the peer's hang-up: replies on the socket are read by the requests.
        let fd = self.frontend.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            fd,
            SOCKET_EVENT,
            EventSet::READ_HANG_UP,
        )) {
            tracing::error!("virtio-fs {}: watching the backend socket: {e}", self.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_tag_and_queue_count() {
        let c = config_space("vol0", 2);
        assert_eq!(&c[..4], b"vol0");
        assert!(c[4..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&c[TAG_LEN..], &[2, 0, 0, 0]);
        // A tag of the full length has no NUL terminator (the spec allows it).
        let full = "t".repeat(TAG_LEN);
        let c = config_space(&full, 1);
        assert_eq!(&c[..TAG_LEN], full.as_bytes());
        // Reads are bounded.
        let mut d = [0xffu8; 8];
        super::super::read_config_bytes(&c, CONFIG_LEN as u64 - 2, &mut d);
        assert_eq!(d, [0, 0, 0, 0, 0, 0, 0, 0]);
    }

    fn shared_mem() -> GuestMemoryMmap {
        crate::vstate::memory::create(32 << 20, crate::vstate::memory::MemoryMode::Shared, false)
            .unwrap()
    }

    #[test]
    fn a_missing_or_vanishing_backend_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fs.sock");
        let config = FsConfig::new("vol", &socket);
        let e = Fs::new(&config, &shared_mem()).err().unwrap();
        assert!(
            matches!(&e, FsError::Connect { path, .. } if *path == socket),
            "{e}"
        );
        // A backend that accepts and hangs up fails the first request.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let t = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let e = Fs::new(&config, &shared_mem()).err().unwrap();
        t.join().unwrap();
        assert!(matches!(e, FsError::Request { .. }), "{e}");
    }

    mod fake {
        //! A vhost-user backend that records what the frontend asks of it.
        use std::fs::File;
        use std::sync::{Arc, Mutex};
        use vhost::vhost_user::message::*;
        use vhost::vhost_user::{Backend, GpuBackend, VhostUserBackendReqHandlerMut};
        use vhost::VhostUserMemoryRegionBase;

        type Result<T> = std::result::Result<T, vhost::vhost_user::Error>;

        /// What the test sees of the fake.
        #[derive(Default)]
        pub struct Seen {
            pub log: Vec<String>,
            pub kicks: Vec<File>,
            pub calls: Vec<File>,
        }

        pub struct Fake {
            pub features: u64,
            pub queues: u64,
            pub seen: Arc<Mutex<Seen>>,
            /// Never answers SET_FEATURES (the first request of an activation)
            /// until this channel's sender goes.
            pub stall: Option<std::sync::mpsc::Receiver<()>>,
        }

        impl Fake {
            fn log(&self, line: String) -> Result<()> {
                self.seen.lock().unwrap().log.push(line);
                Ok(())
            }
        }

        fn no<T>() -> Result<T> {
            Err(vhost::vhost_user::Error::InvalidOperation(
                "not in the fake",
            ))
        }

        impl VhostUserBackendReqHandlerMut for Fake {
            fn set_owner(&mut self) -> Result<()> {
                self.log("SET_OWNER".into())
            }
            fn reset_owner(&mut self) -> Result<()> {
                no()
            }
            fn reset_device(&mut self) -> Result<()> {
                no()
            }
            fn get_features(&mut self) -> Result<u64> {
                Ok(self.features)
            }
            fn set_features(&mut self, features: u64) -> Result<()> {
                if let Some(stall) = &self.stall {
                    let _ = stall.recv();
                }
                self.log(format!("SET_FEATURES {features:#x}"))
            }
            fn set_mem_table(
                &mut self,
                ctx: &[VhostUserMemoryRegion],
                files: Vec<File>,
                _: Option<bool>,
            ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
                for (r, f) in ctx.iter().zip(&files) {
                    let size = f.metadata().unwrap().len();
                    let (gpa, len, off) = (r.guest_phys_addr, r.memory_size, r.mmap_offset);
                    self.log(format!(
                        "REGION gpa={gpa:#x} size={len:#x} offset={off:#x} file={size:#x}"
                    ))?;
                }
                Ok(None)
            }
            fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
                self.log(format!("SET_VRING_NUM {index} {num}"))
            }
            fn set_vring_addr(
                &mut self,
                index: u32,
                _: VhostUserVringAddrFlags,
                desc: u64,
                used: u64,
                avail: u64,
                _: u64,
            ) -> Result<()> {
                self.log(format!(
                    "SET_VRING_ADDR {index} {desc:#x} {used:#x} {avail:#x}"
                ))
            }
            fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
                self.log(format!("SET_VRING_BASE {index} {base}"))
            }
            fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
                self.log(format!("GET_VRING_BASE {index}"))?;
                Ok(VhostUserVringState::new(index, 0))
            }
            fn set_vring_kick(&mut self, _: u8, fd: Option<File>) -> Result<()> {
                self.seen.lock().unwrap().kicks.extend(fd);
                Ok(())
            }
            fn set_vring_call(&mut self, _: u8, fd: Option<File>) -> Result<()> {
                self.seen.lock().unwrap().calls.extend(fd);
                Ok(())
            }
            fn set_vring_err(&mut self, _: u8, _: Option<File>) -> Result<()> {
                no()
            }
            fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
                Ok(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG)
            }
            fn set_protocol_features(&mut self, features: u64) -> Result<()> {
                self.log(format!("SET_PROTOCOL_FEATURES {features:#x}"))
            }
            fn get_queue_num(&mut self) -> Result<u64> {
                Ok(self.queues)
            }
            fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
                self.log(format!("SET_VRING_ENABLE {index} {enable}"))
            }
            fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
                no()
            }
            fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<()> {
                no()
            }
            fn set_backend_req_fd(&mut self, _: Backend) {}
            fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<()> {
                no()
            }
            fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File> {
                no()
            }
            fn get_inflight_fd(
                &mut self,
                _: &VhostUserInflight,
            ) -> Result<(VhostUserInflight, File)> {
                no()
            }
            fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> Result<()> {
                no()
            }
            fn get_max_mem_slots(&mut self) -> Result<u64> {
                no()
            }
            fn add_mem_region(
                &mut self,
                _: &VhostUserSingleMemoryRegion,
                _: File,
                _: Option<bool>,
            ) -> Result<Option<VhostUserMemoryRegionBase>> {
                no()
            }
            fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> Result<()> {
                no()
            }
            fn set_device_state_fd(
                &mut self,
                _: VhostTransferStateDirection,
                _: VhostTransferStatePhase,
                _: File,
            ) -> Result<Option<File>> {
                no()
            }
            fn check_device_state(&mut self) -> Result<()> {
                no()
            }
            fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
                no()
            }
            fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> Result<()> {
                no()
            }
        }
    }

    /// Serves `fake` on a socket in `dir` from a thread; returns the socket.
    fn serve(dir: &std::path::Path, fake: fake::Fake) -> std::path::PathBuf {
        let socket = dir.join("fs.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut handler = vhost::vhost_user::BackendReqHandler::from_stream(
                stream,
                Arc::new(std::sync::Mutex::new(fake)),
            );
            while handler.handle_request().is_ok() {}
        });
        socket
    }

    /// A ready queue of 16 entries at `base` in guest memory.
    fn queue(base: u64) -> Queue {
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        let (lo, hi) = split(base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(base + 0x1000);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(base + 0x2000);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    #[test]
    fn the_backend_gets_memory_features_and_vrings_and_stops_them_on_reset() {
        use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(fake::Seen::default()));
        let packed = 1u64 << 34;
        let event_idx = 1u64 << VIRTIO_RING_F_EVENT_IDX;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let socket = serve(
            dir.path(),
            fake::Fake {
                features: VIRTIO_F_VERSION_1 | event_idx | packed | protocol,
                queues: 2,
                seen: seen.clone(),
                stall: None,
            },
        );
        let mem = shared_mem();
        let config = FsConfig {
            queue_size: 256,
            ..FsConfig::new("vol", &socket)
        };
        let mut fs = Fs::new(&config, &mem).unwrap();
        assert_eq!(
            seen.lock().unwrap().log,
            [
                "SET_OWNER".to_owned(),
                format!("SET_PROTOCOL_FEATURES {:#x}", WANTED_PROTOCOL.bits()),
                "REGION gpa=0x0 size=0x2000000 offset=0x0 file=0x2000000".to_owned(),
            ]
        );
        // Neither a packed ring nor the vhost-user bit reach the driver.
        assert_eq!(fs.avail_features(), VIRTIO_F_VERSION_1 | event_idx);
        assert_eq!(fs.queue_max_sizes(), [256, 256]);
        let mut c = [0u8; 4];
        fs.read_config(TAG_LEN as u64, &mut c);
        assert_eq!(c, [1, 0, 0, 0]);

        seen.lock().unwrap().log.clear();
        fs.set_acked_features(VIRTIO_F_VERSION_1 | event_idx | packed);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        fs.activate(
            mem.clone(),
            vec![queue(0x10000), queue(0x20000)],
            irq.clone(),
        )
        .unwrap();
        let host = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap() as u64;
        let mut want = vec![format!(
            "SET_FEATURES {:#x}",
            VIRTIO_F_VERSION_1 | event_idx | protocol
        )];
        for (i, base) in [(0, 0x10000), (1, 0x20000)] {
            want.push(format!("SET_VRING_NUM {i} 16"));
            want.push(format!(
                "SET_VRING_ADDR {i} {:#x} {:#x} {:#x}",
                host(base),
                host(base + 0x2000),
                host(base + 0x1000)
            ));
            want.push(format!("SET_VRING_BASE {i} 0"));
            want.push(format!("SET_VRING_ENABLE {i} true"));
        }
        {
            let mut s = seen.lock().unwrap();
            assert_eq!(s.log, want);
            assert_eq!((s.kicks.len(), s.calls.len()), (2, 2));
            // A guest kick (KVM's ioeventfd) is the backend's kick fd...
            fs.queue_events()[1].write(1).unwrap();
            let mut n = [0u8; 8];
            std::io::Read::read_exact(&mut s.kicks[1], &mut n).unwrap();
            assert_eq!(u64::from_ne_bytes(n), 1);
            // ...and the backend's call raises the device's interrupt.
            std::io::Write::write_all(&mut s.calls[0], &1u64.to_ne_bytes()).unwrap();
            s.log.clear();
        }
        fs.on_call(0);
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        fs.on_call(5); // no such queue: ignored

        fs.reset();
        assert_eq!(
            seen.lock().unwrap().log,
            [
                "SET_VRING_ENABLE 0 false",
                "GET_VRING_BASE 0",
                "SET_VRING_ENABLE 1 false",
                "GET_VRING_BASE 1"
            ]
        );
        // A second reset without activation asks nothing.
        seen.lock().unwrap().log.clear();
        fs.reset();
        assert!(seen.lock().unwrap().log.is_empty());
    }

    #[test]
    fn after_a_failed_activation_the_device_stays_out_of_service() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(fake::Seen::default()));
        let socket = serve(
            dir.path(),
            fake::Fake {
                features: VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
                queues: 2,
                seen: seen.clone(),
                stall: None,
            },
        );
        let mem = shared_mem();
        let mut fs = Fs::new(&FsConfig::new("vol", &socket), &mem).unwrap();
        fs.set_acked_features(VIRTIO_F_VERSION_1);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        // A ring outside guest memory fails the activation before any vring request.
        let e = fs
            .activate(
                mem.clone(),
                vec![queue(0x10000), queue(0x1_0000_0000)],
                irq.clone(),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("queue 1: a ring lies outside"),
            "{e}"
        );
        seen.lock().unwrap().log.clear();
        let e = fs
            .activate(mem.clone(), vec![queue(0x10000), queue(0x20000)], irq)
            .unwrap_err();
        assert!(e.to_string().contains("out of service"), "{e}");
        fs.reset();
        assert!(seen.lock().unwrap().log.is_empty());
    }

    #[test]
    fn a_backend_that_does_not_answer_is_disconnected_by_the_watchdog() {
        use event_manager::{EventManager, SubscriberOps};
        let dir = tempfile::tempdir().unwrap();
        let (release, stall) = std::sync::mpsc::channel::<()>();
        let socket = serve(
            dir.path(),
            fake::Fake {
                features: VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
                queues: 2,
                seen: Default::default(),
                stall: Some(stall),
            },
        );
        let mem = shared_mem();
        let mut fs = Fs::new(&FsConfig::new("vol", &socket), &mem).unwrap();
        let mut watchdog = fs.take_watchdog().unwrap();
        assert!(fs.take_watchdog().is_none());
        watchdog.timeout = std::time::Duration::from_millis(300);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let event_loop = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut em =
                    EventManager::<Arc<std::sync::Mutex<dyn MutEventSubscriber + Send>>>::new()
                        .unwrap();
                em.add_subscriber(Arc::new(std::sync::Mutex::new(watchdog)));
                while !stop.load(Ordering::SeqCst) {
                    em.run_with_timeout(50).unwrap();
                }
            })
        };
        fs.set_acked_features(VIRTIO_F_VERSION_1);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let start = std::time::Instant::now();
        let e = fs
            .activate(
                mem.clone(),
                vec![queue(0x10000), queue(0x20000)],
                irq.clone(),
            )
            .unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(e.to_string().contains("SET_FEATURES"), "{e}");
        // The connection is not used again.
        let e = fs
            .activate(mem.clone(), vec![queue(0x10000), queue(0x20000)], irq)
            .unwrap_err();
        assert!(e.to_string().contains("out of service"), "{e}");
        stop.store(true, Ordering::SeqCst);
        event_loop.join().unwrap();
        drop(release);
    }

    #[test]
    fn more_queues_than_the_backend_serves_or_private_memory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = |queues| fake::Fake {
            features: VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            queues,
            seen: Default::default(),
            stall: None,
        };
        let socket = serve(dir.path(), fake(2));
        let config = FsConfig {
            num_request_queues: 2,
            ..FsConfig::new("vol", &socket)
        };
        let e = Fs::new(&config, &shared_mem()).err().unwrap();
        assert_eq!(
            e.to_string(),
            "vhost-user backend: serves 2 queues, 3 configured"
        );
        let dir = tempfile::tempdir().unwrap();
        let socket = serve(dir.path(), fake(2));
        let private = crate::vstate::memory::create(
            32 << 20,
            crate::vstate::memory::MemoryMode::Private,
            false,
        )
        .unwrap();
        let e = Fs::new(&FsConfig::new("vol", &socket), &private)
            .err()
            .unwrap();
        assert!(matches!(e, FsError::PrivateMemory), "{e}");
    }
}
