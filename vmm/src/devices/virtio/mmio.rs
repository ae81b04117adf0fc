//! The virtio-mmio transport (virtio 1.2 spec, 4.2.2, "version 2" register
//! layout). Guest register accesses arrive from vCPU threads through the MMIO
//! bus; queue kicks bypass it through ioeventfds.

use super::{
    device_error, device_type, guest_warning, IrqTrigger, RateLimit, VirtioDevice, INT_CONFIG,
    VIRTIO_F_VERSION_1,
};
use crate::devices::bus::BusDevice;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
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
    use super::super::ActivateError;
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        evts: Vec<EventFd>,
        acked: u64,
        active: bool,
        resets: u32,
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
            Ok(())
        }
        fn reset(&mut self) {
            self.active = false;
            self.resets += 1;
        }
    }

    fn setup() -> (Arc<Mutex<Dummy>>, MmioTransport) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy {
            evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            acked: 0,
            active: false,
            resets: 0,
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
