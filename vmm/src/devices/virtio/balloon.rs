//! virtio-balloon, for free page reporting only (`VIRTIO_BALLOON_F_REPORTING`): the
//! guest hands over blocks of memory it has freed (2 MiB blocks with Linux's default
//! `page_reporting_order`), and the VMM drops them from the host, so that an idle
//! guest holds only the memory it uses. The guest reuses a reported block at will;
//! its next touch faults in a fresh page.
//!
//! Private guest RAM is dropped with `MADV_DONTNEED`. RAM in a shared memfd (see
//! `vstate::memory`) is not: `MADV_DONTNEED` only unmaps the VMM's view of shared
//! pages, which stay in the memfd (and in a vhost-user backend's mapping), so there
//! the range is punched out of the memfd itself (`FALLOC_FL_PUNCH_HOLE`), which
//! frees the pages and unmaps them from every process.
//!
//! The balloon itself is never inflated (`num_pages` stays 0): the inflate and deflate
//! queues, which the driver always sets up, are drained and otherwise ignored.

use super::{
    device_type, drain_queue, guest_warning, read_config_bytes, take_queues, ActivateError, Chain,
    IrqTrigger, RateLimit, VirtioDevice, INT_VRING,
};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// The device reports freed pages (virtio spec 5.5.3).
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// inflateq, deflateq, reporting_vq: with only REPORTING among the optional
/// features, the reporting queue is the third.
const QUEUE_SIZES: &[u16] = &[64, 64, 64];
const REPORTING: usize = 2;
const PAGE: u64 = 4096;

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 3],
    irq: Arc<IrqTrigger>,
}

/// The balloon device.
pub struct Balloon {
    queue_evts: Vec<EventFd>,
    /// `actual`, as the driver last wrote it (config offset 4).
    actual: u32,
    active: Option<Active>,
}

impl Balloon {
    /// A new, inactive device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Balloon {
            queue_evts: (0..QUEUE_SIZES.len())
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<_, _>>()?,
            actual: 0,
            active: None,
        })
    }

    fn process(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut reported = 0u64;
        let notify = if index == REPORTING {
            drain_queue(
                "virtio-balloon",
                &mut a.queues[index],
                &a.mem,
                |chain, mem| {
                    reported += release(chain, mem);
                    0
                },
            )
        } else {
            drain_queue("virtio-balloon", &mut a.queues[index], &a.mem, |_, _| 0)
        };
        if reported > 0 {
            tracing::debug!("balloon: the guest gave back {} KiB", reported >> 10);
        }
        if notify {
            a.irq.trigger(INT_VRING);
        }
    }
}

/// Drops every whole host page of each device-writable buffer in `chain` from the
/// host. A buffer outside guest RAM, or across the end of a RAM region, is skipped.
/// Returns the bytes dropped.
pub fn release(chain: Chain<'_>, mem: &GuestMemoryMmap) -> u64 {
    let mut dropped = 0;
    for desc in chain {
        if !desc.is_write_only() {
            continue;
        }
        // Whole pages inside the buffer only: its edges may share a page with memory
        // in use. A buffer that wraps around the address space is no guest RAM.
        let addr = desc.addr().0;
        let (Some(start), Some(end)) = (
            addr.checked_next_multiple_of(PAGE),
            addr.checked_add(u64::from(desc.len())),
        ) else {
            tracing::debug!("balloon: report at {addr:#x} wraps around");
            continue;
        };
        let end = end & !(PAGE - 1);
        if end <= start {
            continue;
        }
        let len = (end - start) as usize;
        let Ok(slice) = mem.get_slice(GuestAddress(start), len) else {
            tracing::debug!("balloon: report of {len} bytes at {start:#x} is not guest RAM");
            continue;
        };
        let file = mem.find_region(GuestAddress(start)).and_then(|region| {
            // Only shared RAM gives pages back by punching its file. RAM restored
            // from a snapshot maps the snapshot's memory file privately: that file
            // is every restored VM's, and dropping a page there returns it to the
            // file's copy, as for anonymous memory.
            if region.flags() & libc::MAP_SHARED == 0 {
                return None;
            }
            let fo = region.file_offset()?;
            let in_region = GuestAddress(start).checked_offset_from(region.start_addr())?;
            Some((fo.file().as_raw_fd(), fo.start().checked_add(in_region)?))
        });
        let r = match file {
            Some((fd, offset)) => punch_hole(fd, offset, len),
            None => {
                let guard = slice.ptr_guard_mut();
                // SAFETY: the range lies inside one private guest RAM mapping that
                // `mem` owns; MADV_DONTNEED only discards its contents, which the
                // guest has declared free.
                let r = unsafe { libc::madvise(guard.as_ptr().cast(), len, libc::MADV_DONTNEED) };
                if r == 0 {
                    Ok(())
                } else {
                    Err(("MADV_DONTNEED", std::io::Error::last_os_error()))
                }
            }
        };
        match r {
            Ok(()) => dropped += len as u64,
            Err((how, e)) => {
                static DROP_FAILED: RateLimit = RateLimit::new();
                guest_warning(
                    &DROP_FAILED,
                    &format_args!("balloon: {how} of {len} bytes at {start:#x}: {e}"),
                );
            }
        }
    }
    dropped
}

/// The `fallocate` mode that frees a range of a file without changing its size.
pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// Frees `len` bytes at `offset` of the guest RAM memfd `fd`.
fn punch_hole(fd: i32, offset: u64, len: usize) -> Result<(), (&'static str, std::io::Error)> {
    let err = |e| ("FALLOC_FL_PUNCH_HOLE", e);
    let offset = libc::off_t::try_from(offset).map_err(|_| err(std::io::Error::other("offset")))?;
    let len = libc::off_t::try_from(len).map_err(|_| err(std::io::Error::other("length")))?;
    // SAFETY: fallocate on the memfd that backs guest RAM; punching a hole zeroes a
    // range the guest has declared free and unmaps it from every mapping, which
    // stay valid (the next access faults in a zero page).
    if unsafe { libc::fallocate(fd, PUNCH_HOLE, offset, len) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // num_pages (always 0: never inflate), actual.
        let mut config = [0u8; 8];
        config[4..].copy_from_slice(&self.actual.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data.len() == 4 {
            self.actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
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
        let queues = take_queues(queues)?;
        self.active = Some(Active { mem, queues, irq });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.actual = 0;
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(|q| q.state()))
            .collect()
    }
    fn save_extra(&self) -> serde_json::Value {
        serde_json::json!({ "actual": self.actual })
    }
    fn restore_extra(&mut self, state: &serde_json::Value) -> Result<(), String> {
        self.actual = state
            .get("actual")
            .and_then(serde_json::Value::as_u64)
            .and_then(|a| u32::try_from(a).ok())
            .ok_or("no balloon size (actual) in the saved state")?;
        Ok(())
    }
}

impl MutEventSubscriber for Balloon {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        if !events.event_set().contains(EventSet::IN) || index >= self.queue_evts.len() {
            return;
        }
        let _ = self.queue_evts[index].read();
        Balloon::process(self, index);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("registering balloon queue {i} event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const FREE: u64 = 0x20_0000;

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Resident bytes of the memfd behind `mem` (shared mode).
    fn memfd_resident(mem: &GuestMemoryMmap) -> u64 {
        let region = mem.iter().next().unwrap();
        let file = region.file_offset().unwrap().file();
        // st_blocks counts the pages the memfd holds.
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills `st` for a descriptor `mem` owns.
        assert_eq!(unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) }, 0);
        // SAFETY: fstat succeeded, so `st` is initialised.
        (unsafe { st.assume_init() }).st_blocks as u64 * 512
    }

    #[test]
    fn reported_pages_are_dropped_and_the_rest_kept() {
        let private = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        check_release(&private);
        let shared = crate::vstate::memory::create(
            0x40_0000,
            crate::vstate::memory::MemoryMode::Shared,
            false,
        )
        .unwrap();
        check_release(&shared);
    }

    fn check_release(mem: &GuestMemoryMmap) {
        let shared = mem.iter().next().unwrap().file_offset().is_some();
        mem.write_slice(&[0xaa; 0x10_0000], GuestAddress(FREE))
            .unwrap();
        let q = MockSplitQueue::new(mem, 16);
        let chain = q
            .build_desc_chain(&[
                // Unaligned edges: only the whole pages inside go.
                desc(FREE + 100, 3 * PAGE as u32, true),
                // Read-only, outside RAM, empty: ignored.
                desc(FREE + 0x8_0000, PAGE as u32, false),
                desc(0x100_0000, PAGE as u32, true),
                desc(FREE + 0x9_0000, 0, true),
            ])
            .unwrap();
        let before = if shared { memfd_resident(mem) } else { 0 };
        assert_eq!(release(chain, mem), 2 * PAGE);
        if shared {
            // The memfd gave the pages back, not just the VMM's view of them.
            assert_eq!(before - memfd_resident(mem), 2 * PAGE);
        }
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(FREE)).unwrap();
        assert!(
            page.iter().all(|&b| b == 0xaa),
            "first, partly reported page kept"
        );
        for p in [FREE + PAGE, FREE + 2 * PAGE] {
            mem.read_slice(&mut page, GuestAddress(p)).unwrap();
            assert!(page.iter().all(|&b| b == 0), "page {p:#x} not dropped");
        }
        mem.read_slice(&mut page, GuestAddress(FREE + 0x8_0000))
            .unwrap();
        assert!(page.iter().all(|&b| b == 0xaa), "read-only buffer dropped");
    }

    /// A report whose buffer wraps around the address space (the virtio_balloon fuzz
    /// target's input) overflowed: a panic with overflow checks, a wrapped range
    /// without them.
    #[test]
    fn reports_that_wrap_around_are_skipped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[
                desc(0xffff_ffff_ffff_f000, 0x2000, true),
                desc(u64::MAX - 10, 0x10, true),
            ])
            .unwrap();
        assert_eq!(release(chain, &mem), 0);
    }

    #[test]
    fn config_holds_actual_and_never_asks_to_inflate() {
        let mut b = Balloon::new().unwrap();
        assert_eq!(b.device_type(), 5);
        assert_ne!(b.avail_features() & VIRTIO_BALLOON_F_REPORTING, 0);
        b.write_config(4, &7u32.to_le_bytes());
        let mut data = [0xffu8; 8];
        b.read_config(0, &mut data);
        assert_eq!(data, [0, 0, 0, 0, 7, 0, 0, 0]);
        b.reset();
        b.read_config(4, &mut data[..4]);
        assert_eq!(&data[..4], &[0, 0, 0, 0]);
    }
}
