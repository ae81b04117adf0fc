//! The virtio-mmio transport (virtio 1.2 spec, 4.2.2, "version 2" register
//! layout). Guest register accesses arrive from vCPU threads through the MMIO
//! bus; queue kicks bypass it through ioeventfds.

use super::{
    device_error, device_type, guest_warning, IrqTrigger, RateLimit, VirtioDevice, INT_CONFIG,
    VIRTIO_F_VERSION_1,
};
use crate::devices::bus::BusDevice;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x544c_4d56; // "VMLT"

/// Offset of `QueueNotify`, where ioeventfds are registered.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;

/// A queue as a snapshot keeps it (virtio-queue's `QueueState`, which has no
/// serde form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next available-ring index the device reads.
    pub next_avail: u16,
    /// Next used-ring index the device writes.
    pub next_used: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A transport and its device as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device's virtio type (checked on restore).
    pub device_type: u32,
    /// Device status register.
    pub status: u32,
    /// Selected queue.
    pub queue_select: u32,
    /// Device feature word selected.
    pub device_features_select: u32,
    /// Driver feature word selected.
    pub driver_features_select: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Whether the device was activated.
    pub activated: bool,
    /// Interrupt status not yet acknowledged.
    pub interrupt_status: u32,
    /// The queues as the driver configured them.
    pub queues: Vec<QueueSnapshot>,
    /// The activated device's own queues (where it is in each ring).
    pub device_queues: Vec<QueueSnapshot>,
    /// What the device keeps beyond its queues.
    pub device: serde_json::Value,
}

/// Why a transport's saved state cannot be taken back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot's device at this place is another kind.
    #[error("the snapshot holds a {saved} here, the configuration a {configured}")]
    DeviceType {
        /// What the snapshot holds.
        saved: &'static str,
        /// What the configuration asks for.
        configured: &'static str,
    },
    /// A saved queue is not one this device can have.
    #[error("queue {index}: {reason}")]
    Queue {
        /// The queue.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The device refused its saved state or its activation.
    #[error("{0}")]
    Device(String),
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device`, raising `irq`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Self {
        let queues = {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            dev.queue_max_sizes()
                .iter()
                .filter_map(|max| Queue::new(*max).ok())
                .collect()
        };
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
        }
    }

    fn lock_device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            self.lock_device().reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.irq.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // FEATURES_OK only sticks if the driver accepted what we require.
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0
            && self.status & STATUS_FEATURES_OK == 0
            && self.driver_features & VIRTIO_F_VERSION_1 == 0
        {
            static NO_VERSION_1: RateLimit = RateLimit::new();
            guest_warning(
                &NO_VERSION_1,
                &"virtio driver did not accept VIRTIO_F_VERSION_1",
            );
            value &= !STATUS_FEATURES_OK;
        }
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let features = self.driver_features;
            self.lock_device().set_acked_features(features);
        }
        let newly_ok = value & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = value;
        if newly_ok && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        let ready_and_valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        if self.status & needed != needed || !ready_and_valid {
            self.fail(&"the driver set DRIVER_OK with invalid queues or status");
            return;
        }
        // The device gets its own copies; ours stay readable through the registers.
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        let mem = self.mem.clone();
        let irq = self.irq.clone();
        let event_idx = self.driver_features
            & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0;
        let queues = queues
            .into_iter()
            .map(|mut q| {
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        let result = self.lock_device().activate(mem, queues, irq);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&format!("activation failed: {e}")),
        }
    }

    /// The transport's and its device's state, for a snapshot (vCPUs paused, on
    /// the event loop thread, so that neither the driver nor the device moves).
    pub fn save(&self) -> TransportState {
        let mut dev = self.lock_device();
        if self.activated {
            dev.quiesce();
        }
        let device_queues = if self.activated {
            dev.queue_states().into_iter().map(Into::into).collect()
        } else {
            Vec::new()
        };
        TransportState {
            device_type: dev.device_type(),
            status: self.status,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            activated: self.activated,
            interrupt_status: self.irq.status(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            device_queues,
            device: dev.save_extra(),
        }
    }

    /// Takes back a saved state into this new transport (its device made from the
    /// same configuration), activating the device where it was active, with its
    /// queues where they were. The driver then gets an interrupt: one it may have
    /// been owed when the snapshot was taken is not lost (a spurious one is
    /// harmless).
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let device_type = self.lock_device().device_type();
        if state.device_type != device_type {
            return Err(RestoreError::DeviceType {
                saved: device_type::name(state.device_type),
                configured: device_type::name(device_type),
            });
        }
        let queue = |index: usize, saved: &QueueSnapshot, max: u16| {
            if saved.max_size != max {
                return Err(RestoreError::Queue {
                    index,
                    reason: format!(
                        "saved with {} entries at most, this device offers {max}",
                        saved.max_size
                    ),
                });
            }
            Queue::try_from(QueueState::from(*saved)).map_err(|e| RestoreError::Queue {
                index,
                reason: e.to_string(),
            })
        };
        let maxes: Vec<u16> = self.lock_device().queue_max_sizes().to_vec();
        if state.queues.len() != maxes.len()
            || (state.activated && state.device_queues.len() != maxes.len())
        {
            return Err(RestoreError::Device(format!(
                "the snapshot holds {} queues, this device has {}",
                state.queues.len(),
                maxes.len()
            )));
        }
        let mut queues = Vec::with_capacity(maxes.len());
        for (i, (saved, max)) in state.queues.iter().zip(&maxes).enumerate() {
            queues.push(queue(i, saved, *max)?);
        }
        let mut device_queues = Vec::with_capacity(state.device_queues.len());
        for (i, (saved, max)) in state.device_queues.iter().zip(&maxes).enumerate() {
            let q = queue(i, saved, *max)?;
            if state.activated && !(q.ready() && q.is_valid(&self.mem)) {
                return Err(RestoreError::Queue {
                    index: i,
                    reason: "not a valid ready queue in guest memory".to_owned(),
                });
            }
            device_queues.push(q);
        }
        self.queues = queues;
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.status = state.status;
        let mem = self.mem.clone();
        let irq = self.irq.clone();
        let mut dev = self.lock_device();
        dev.restore_extra(&state.device)
            .map_err(RestoreError::Device)?;
        if state.status & STATUS_FEATURES_OK != 0 {
            dev.set_acked_features(state.driver_features);
        }
        if state.activated {
            dev.activate(mem, device_queues, irq.clone())
                .map_err(|e| RestoreError::Device(format!("activation failed: {e}")))?;
            dev.restored();
        }
        drop(dev);
        self.activated = state.activated;
        if state.activated || state.interrupt_status != 0 {
            irq.trigger(state.interrupt_status | super::INT_VRING);
        }
        Ok(())
    }

    /// Raises the interrupt line again if the driver has one pending. A restore
    /// raises its interrupt before the VM's interrupt controllers get their saved
    /// state, which overwrites it; this is called after them, or the guest would
    /// not look at its queues (a restored vsock would hold its transport reset).
    pub fn raise_pending_interrupt(&self) {
        self.irq.raise_pending();
    }

    /// The device cannot go on: logged (an error naming the device, at most once per
    /// interval), and the driver told through NEEDS_RESET.
    fn fail(&mut self, why: &dyn std::fmt::Display) {
        static FAILED: RateLimit = RateLimit::new();
        let name = device_type::name(self.lock_device().device_type());
        device_error(
            &FAILED,
            name,
            &format_args!("{why}; the device needs a reset"),
        );
        self.status |= STATUS_NEEDS_RESET;
        self.irq.trigger(INT_CONFIG);
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => self.lock_device().device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = self.lock_device().avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.irq.status(),
            0x70 => self.status,
            0xfc => self.lock_device().config_generation(),
            _ => {
                tracing::debug!("virtio-mmio read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Queue layout registers may only change while the driver sets up the device.
        let queue_setup = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x14 => self.device_features_select = v,
            0x20 => {
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let avail = self.lock_device().avail_features() | VIRTIO_F_VERSION_1;
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features =
                    (self.driver_features & !mask) | ((u64::from(v) << shift) & avail & mask);
            }
            0x24 => self.driver_features_select = v,
            0x30 => self.queue_select = v,
            0x38 if queue_setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 if queue_setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => self.notify(v),
            0x64 => self.irq.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if queue_setup => {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => tracing::debug!("virtio-mmio write of {v:#x} to register {offset:#x} ignored"),
        }
    }

    /// A kick that reached us instead of the ioeventfd (e.g. registration failed):
    /// forward it to the queue's eventfd so the device sees it all the same.
    fn notify(&mut self, queue: u32) {
        let dev = self.lock_device();
        if let Some(evt) = dev.queue_events().get(queue as usize) {
            if let Err(e) = evt.write(1) {
                tracing::error!("forwarding queue notification: {e}");
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.lock_device()
                .read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.lock_device()
                .write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset.is_multiple_of(4) && (self.status & STATUS_FAILED == 0 || offset == 0x70) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ActivateError, INT_VRING};
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        evts: Vec<EventFd>,
        acked: u64,
        active: bool,
        resets: u32,
        queues: Vec<Queue>,
        restored: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            1 << 5
        }
        fn set_acked_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data)
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            _irq: Arc<IrqTrigger>,
        ) -> Result<(), ActivateError> {
            assert_eq!(queues.len(), 1);
            self.active = true;
            self.queues = queues;
            Ok(())
        }
        fn reset(&mut self) {
            self.active = false;
            self.resets += 1;
        }
        fn queue_states(&self) -> Vec<QueueState> {
            self.queues.iter().map(|q| q.state()).collect()
        }
        fn save_extra(&self) -> serde_json::Value {
            serde_json::json!({"resets": self.resets})
        }
        fn restore_extra(&mut self, state: &serde_json::Value) -> Result<(), String> {
            self.resets = state["resets"].as_u64().ok_or("no resets")? as u32;
            Ok(())
        }
        fn restored(&mut self) {
            self.restored = true;
        }
    }

    fn setup() -> (Arc<Mutex<Dummy>>, MmioTransport) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy {
            evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            acked: 0,
            active: false,
            resets: 0,
            queues: Vec::new(),
            restored: false,
        }));
        let t = MmioTransport::new(dev.clone(), mem, Arc::new(IrqTrigger::new().unwrap()));
        (dev, t)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identity_registers() {
        let (_, mut t) = setup();
        assert_eq!(r(&mut t, 0), MAGIC_VALUE);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 42);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1); // VERSION_1 in the high word
        let mut b = [0u8; 2];
        t.read(0x100, &mut b);
        assert_eq!(b, [0xaa, 0xbb]);
        // Misaligned and odd-sized accesses are ignored, not fatal.
        let mut odd = [0xffu8; 2];
        t.read(0x2, &mut odd);
        assert_eq!(odd, [0, 0]);
        t.write(0x71, &[1, 2, 3]);
    }

    #[test]
    fn full_handshake_activates_and_reset_deactivates() {
        let (dev, mut t) = setup();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, (1 << 5) | (1 << 6)); // bit 6 not offered: dropped
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        assert_eq!(dev.lock().unwrap().acked, (1 << 5) | VIRTIO_F_VERSION_1);
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0x1000);
        w(&mut t, 0x90, 0x2000);
        w(&mut t, 0xa0, 0x3000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert!(dev.lock().unwrap().active);
        w(&mut t, 0x70, 0);
        assert!(!dev.lock().unwrap().active);
        assert_eq!(r(&mut t, 0x70), 0);
    }

    fn activate(t: &mut MmioTransport) {
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, 0x24, 1);
        w(t, 0x20, 1);
        w(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(t, 0x38, 16);
        w(t, 0x80, 0x1000);
        w(t, 0x90, 0x2000);
        w(t, 0xa0, 0x3000);
        w(t, 0x44, 1);
        w(t, 0x70, 0xf);
    }

    #[test]
    fn a_saved_transport_comes_back_active_where_its_device_was() {
        let (dev, mut t) = setup();
        activate(&mut t);
        dev.lock().unwrap().resets = 3;
        // The device moved on in its ring since activation.
        dev.lock().unwrap().queues[0].set_next_avail(5);
        dev.lock().unwrap().queues[0].set_next_used(4);
        let state = t.save();
        assert!(state.activated);
        assert_eq!(state.device_queues[0].next_avail, 5);
        assert_eq!(state.queues[0].next_avail, 0, "the transport's copy");
        // Through the snapshot's form and back.
        let state: TransportState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

        let (dev2, mut t2) = setup();
        t2.restore(&state).unwrap();
        let d = dev2.lock().unwrap();
        assert!(d.active && d.restored);
        assert_eq!(d.resets, 3);
        assert_eq!(d.acked, VIRTIO_F_VERSION_1);
        assert_eq!((d.queues[0].next_avail(), d.queues[0].next_used()), (5, 4));
        drop(d);
        assert_eq!(r(&mut t2, 0x70), 0xf);
        assert_eq!(r(&mut t2, 0x44), 1);
        assert_ne!(r(&mut t2, 0x60) & INT_VRING, 0, "the driver is woken");
        // Raised again once the VM's interrupt controllers are restored.
        let _ = t2.irq.eventfd().read();
        t2.raise_pending_interrupt();
        assert_eq!(t2.irq.eventfd().read().unwrap(), 1);
        // Driver reset works as on a booted device.
        w(&mut t2, 0x70, 0);
        assert!(!dev2.lock().unwrap().active);
    }

    #[test]
    fn a_saved_state_of_another_device_is_refused() {
        let (_, mut t) = setup();
        activate(&mut t);
        let mut state = t.save();
        state.device_type = 2;
        let (dev, mut t2) = setup();
        let e = t2.restore(&state).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the snapshot holds a virtio-blk here, the configuration a virtio device"
        );
        let mut state = t.save();
        state.device_queues[0].max_size = 256;
        assert!(t2
            .restore(&state)
            .unwrap_err()
            .to_string()
            .contains("queue 0"));
        let mut state = t.save();
        state.device_queues[0].desc_table = 0xffff_0000;
        assert!(t2.restore(&state).is_err(), "a ring outside guest memory");
        let mut state = t.save();
        state.device_queues.clear();
        assert!(t2.restore(&state).is_err());
        assert!(!dev.lock().unwrap().active);
    }

    #[test]
    fn driver_ok_with_bad_queue_fails_without_activating() {
        let (dev, mut t) = setup();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, 0x38, 7); // not a power of two
        w(&mut t, 0x80, 0xffff_0000); // outside guest memory
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert!(!dev.lock().unwrap().active);
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x60) & INT_CONFIG, 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (_, mut t) = setup();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn unhandled_kick_is_forwarded() {
        let (dev, mut t) = setup();
        w(&mut t, 0x50, 0);
        w(&mut t, 0x50, 5); // no such queue
        assert_eq!(dev.lock().unwrap().evts[0].read().unwrap(), 1);
    }
}
