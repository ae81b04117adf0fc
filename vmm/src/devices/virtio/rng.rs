//! virtio-rng: fills guest buffers from the host's `getrandom(2)`.

use super::{
    device_type, drain_queue, take_queues, ActivateError, Chain, IrqTrigger, VirtioDevice,
    INT_VRING,
};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::Write;
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZES: &[u16] = &[256];
/// Most bytes handed out per request, so one greedy driver cannot stall the loop.
const MAX_REQUEST: usize = 64 * 1024;

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

/// The entropy device.
pub struct Rng {
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Rng {
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK)?],
            active: None,
        })
    }

    fn fill(chain: Chain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let Ok(mut writer) = chain.writer(mem) else {
            return 0;
        };
        let len = writer.available_bytes().min(MAX_REQUEST);
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            // SAFETY: `buf[filled..]` is valid writable memory of the given length.
            let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), len - filled, 0) };
            if n <= 0 {
                break;
            }
            filled += n as usize;
        }
        match writer.write_all(&buf[..filled]) {
            Ok(()) => filled as u32,
            Err(_) => writer.bytes_written() as u32,
        }
    }

    fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if drain_queue("virtio-rng", &mut a.queue, &a.mem, Self::fill) {
            a.irq.trigger(INT_VRING);
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        let [queue] = take_queues(queues)?;
        self.active = Some(Active { mem, queue, irq });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }
}

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.queue_evts[0].read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            tracing::error!("registering virtio-rng queue event: {e}");
        }
    }
}
