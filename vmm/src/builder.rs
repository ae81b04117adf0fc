//! Turns a [`VmConfig`] into a running VM: memory, kernel, devices, boot tables,
//! vCPUs and the event loop that serves device I/O.

use crate::arch::layout::*;
use crate::arch::{mptable, pvh, regs};
use crate::config::{parse_mac, SerialOutput, VmConfig};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::legacy::{SerialConsole, I8042};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::{Block, Disk, DiskError};
use crate::devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::devices::Trigger;
use crate::image::MappedImage;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, Vcpu, VcpuControl, VcpuError, Vcpus};
use crate::vstate::vm::{Vm, VmError};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The kernel command line vmlet always passes. `reboot=k` makes a guest reboot
/// or poweroff go through the i8042 reset, which ends the VMM.
/// (The guest kernel has neither PCI nor modules, so no `pci=off`/`nomodules`.)
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 tsc=reliable no_timer_check";

/// The event loop's subscriber type.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors building the VM. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// KVM refused.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {0}: {1}")]
    KernelOpen(PathBuf, std::io::Error),
    /// The kernel is not a loadable ELF.
    #[error("cannot load kernel {0}: {1}")]
    KernelLoad(PathBuf, linux_loader::loader::Error),
    /// The kernel lacks a PVH entry.
    #[error("kernel {0} has no PVH entry point (build it with CONFIG_PVH=y)")]
    NoPvh(PathBuf),
    /// The initramfs cannot be read or does not fit.
    #[error("cannot load initramfs {0}: {1}")]
    Initramfs(PathBuf, String),
    /// The command line is too long or malformed.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Boot structures could not be written.
    #[error("boot setup: {0}")]
    Boot(String),
    /// A drive file cannot be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A device could not be created.
    #[error("{0}: {1}")]
    Device(String, String),
    /// vCPU creation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The event loop could not be created.
    #[error("event loop: {0}")]
    EventLoop(event_manager::Error),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The serial output file cannot be opened.
    #[error("cannot open serial output {0}: {1}")]
    SerialOutput(PathBuf, std::io::Error),
}

/// Handles on the parts of a built VM that the control socket acts on.
pub struct VmParts {
    /// The vCPUs (pause/resume/stop).
    pub vcpus: Vcpus,
    /// Exit requests and the exit code.
    pub control: Arc<VcpuControl>,
    /// Drives by ID, for backing-file swaps.
    pub drives: HashMap<String, Arc<Mutex<Block>>>,
    /// The vsock host socket, used to ask the guest to power off.
    pub vsock_uds: Option<PathBuf>,
    /// Guest memory size.
    pub mem_mib: u64,
    /// vCPU count.
    pub vcpu_count: u8,
}

/// A built, running VM and its event loop.
pub struct Vmm {
    /// The event loop serving devices (and the control socket, once added).
    pub event_manager: EventManager<Subscriber>,
    /// The running parts.
    pub parts: Arc<VmParts>,
    // Kept alive for as long as the vCPUs run.
    _vm: Vm,
    _mem: GuestMemoryMmap,
}

fn eventfd() -> Result<Trigger, BuildError> {
    Trigger::new().map_err(BuildError::EventFd)
}

fn load_kernel(config: &VmConfig, mem: &GuestMemoryMmap) -> Result<(u64, u64), BuildError> {
    let open_err = |e| BuildError::KernelOpen(config.kernel.clone(), e);
    let file = File::open(&config.kernel).map_err(open_err)?;
    let mut image = MappedImage::new(file).map_err(open_err)?;
    let result = Elf::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BuildError::KernelLoad(config.kernel.clone(), e))?;
    tracing::debug!("kernel: {} bytes mapped", image.mapped_bytes());
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok((entry.0, result.kernel_end)),
        _ => Err(BuildError::NoPvh(config.kernel.clone())),
    }
}

fn load_initramfs(
    path: &PathBuf,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
) -> Result<pvh::Initrd, BuildError> {
    let err = |m: String| BuildError::Initramfs(path.clone(), m);
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut image = MappedImage::new(file).map_err(|e| err(e.to_string()))?;
    let size = image.len();
    let low_end = mem_size.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| err(format!("{size} bytes do not fit in guest memory")))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut image, size as usize)
        .map_err(|e| err(e.to_string()))?;
    Ok(pvh::Initrd { addr, size })
}

struct DeviceWiring<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    cmdline: &'a mut Cmdline,
    event_manager: &'a mut EventManager<Subscriber>,
    next_slot: u64,
}

impl DeviceWiring<'_> {
    /// Places a virtio device in the next MMIO window with the next IRQ, wires its
    /// irqfd and queue ioeventfds, announces it on the command line, and adds it
    /// to the event loop.
    fn add<D>(&mut self, name: &str, device: Arc<Mutex<D>>) -> Result<(), BuildError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let fail = |e: String| BuildError::Device(name.to_owned(), e);
        let slot = self.next_slot;
        self.next_slot += 1;
        let base = VIRTIO_MMIO_START + slot * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_IRQ_BASE + slot as u32;
        let irq = Arc::new(IrqTrigger::new().map_err(|e| fail(e.to_string()))?);
        self.vm
            .register_irqfd(irq.eventfd(), gsi)
            .map_err(|e| fail(format!("KVM_IRQFD: {e}")))?;
        {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            for (i, evt) in dev.queue_events().iter().enumerate() {
                self.vm
                    .register_ioevent(
                        evt,
                        &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                        i as u32,
                    )
                    .map_err(|e| fail(format!("KVM_IOEVENTFD: {e}")))?;
            }
        }
        let transport = MmioTransport::new(device.clone(), self.mem.clone(), irq);
        let transport: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport, base, VIRTIO_MMIO_SIZE)
            .map_err(|e| fail(e.to_string()))?;
        self.cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), gsi, None)
            .map_err(BuildError::Cmdline)?;
        self.event_manager.add_subscriber(device);
        Ok(())
    }
}

fn serial_output(config: &VmConfig) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match &config.serial {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::Off => Box::new(std::io::sink()),
        SerialOutput::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| BuildError::SerialOutput(path.clone(), e))?,
        ),
    })
}

/// Builds and starts the VM described by `config`. `vcpu_setup` runs on each
/// vCPU thread before the guest does (the VMM installs seccomp there).
pub fn build(
    config: &VmConfig,
    vcpu_setup: impl Fn() -> Result<(), String> + Clone + Send + 'static,
) -> Result<Vmm, BuildError> {
    crate::config::validate(config)?;
    let started = std::time::Instant::now();
    let mem_size = config.mem_mib << 20;
    let vm = Vm::new()?;
    let mem = memory::create(mem_size, config.huge_pages)?;
    vm.set_memory(&mem)?;

    let (entry, kernel_end) = load_kernel(config, &mem)?;
    let initrd = match &config.initramfs {
        Some(path) => Some(load_initramfs(path, &mem, mem_size, kernel_end)?),
        None => None,
    };

    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventLoop)?;
    let control = Arc::new(VcpuControl::new().map_err(BuildError::EventFd)?);
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    // Legacy devices: COM1 and the i8042 reset line.
    let serial_irq = eventfd()?;
    vm.fd()
        .register_irqfd(&serial_irq.0, SERIAL_IRQ)
        .map_err(|e| BuildError::Device("serial".into(), format!("KVM_IRQFD: {e}")))?;
    let serial = SerialConsole::new(serial_irq, serial_output(config)?);
    pio.insert(Arc::new(Mutex::new(serial)), 0x3f8, 8)
        .map_err(|e| BuildError::Device("serial".into(), e.to_string()))?;
    let reset = ResetLine {
        evt: eventfd()?.0,
        control: control.clone(),
    };
    let reset_evt = reset.evt.try_clone().map_err(BuildError::EventFd)?;
    pio.insert(Arc::new(Mutex::new(I8042::new(reset))), 0x60, 5)
        .map_err(|e| BuildError::Device("i8042".into(), e.to_string()))?;
    event_manager.add_subscriber(Arc::new(Mutex::new(ResetWatcher {
        evt: reset_evt,
        control: control.clone(),
    })));

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(BuildError::Cmdline)?;
    let mut drives = HashMap::new();
    {
        let mut wiring = DeviceWiring {
            vm: vm.fd(),
            mem: &mem,
            mmio: &mut mmio,
            cmdline: &mut cmdline,
            event_manager: &mut event_manager,
            next_slot: 0,
        };
        for d in &config.drives {
            let disk = Disk::open(&d.path, d.read_only)?;
            let blk = Block::new(d.id.clone(), disk)
                .map_err(|e| BuildError::Device(format!("drive {}", d.id), e.to_string()))?;
            let blk = Arc::new(Mutex::new(blk));
            wiring.add(&format!("drive {}", d.id), blk.clone())?;
            drives.insert(d.id.clone(), blk);
        }
        for n in &config.net {
            let mac = n.mac.as_deref().map(parse_mac).transpose()?;
            let net = Net::new(&n.tap, mac)
                .map_err(|e| BuildError::Device(format!("net {}", n.tap), e.to_string()))?;
            wiring.add(&format!("net {}", n.tap), Arc::new(Mutex::new(net)))?;
        }
        if let Some(v) = &config.vsock {
            let vsock = Vsock::new(v.cid, &v.uds_path)
                .map_err(|e| BuildError::Device("vsock".into(), e.to_string()))?;
            wiring.add("vsock", Arc::new(Mutex::new(vsock)))?;
        }
        if config.rng {
            let rng = Rng::new().map_err(|e| BuildError::Device("rng".into(), e.to_string()))?;
            wiring.add("rng", Arc::new(Mutex::new(rng)))?;
        }
        if config.free_page_reporting {
            let balloon =
                Balloon::new().map_err(|e| BuildError::Device("balloon".into(), e.to_string()))?;
            wiring.add("balloon", Arc::new(Mutex::new(balloon)))?;
        }
    }
    if !config.cmdline.is_empty() {
        cmdline
            .insert_str(&config.cmdline)
            .map_err(BuildError::Cmdline)?;
    }
    linux_loader::loader::load_cmdline(&mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BuildError::Boot(format!("writing the command line: {e}")))?;
    pvh::configure(&mem, mem_size, initrd).map_err(|e| BuildError::Boot(e.to_string()))?;
    mptable::setup(&mem, config.vcpus).map_err(|e| BuildError::Boot(e.to_string()))?;
    regs::write_boot_gdt(&mem).map_err(|e| BuildError::Boot(e.to_string()))?;

    install_kick_handler()?;
    let mut handles = Vec::with_capacity(config.vcpus as usize);
    for i in 0..config.vcpus {
        let vcpu = Vcpu::new(
            vm.fd(),
            vm.kvm(),
            i,
            config.vcpus,
            entry,
            pio.clone(),
            mmio.clone(),
            control.clone(),
        )?;
        handles.push(vcpu.start(vcpu_setup.clone())?);
    }
    let vcpus = Vcpus::new(handles, control.clone());
    tracing::info!(
        "VM built and {} vCPU(s) started in {:?}",
        config.vcpus,
        started.elapsed()
    );
    Ok(Vmm {
        event_manager,
        parts: Arc::new(VmParts {
            vcpus,
            control,
            drives,
            vsock_uds: config.vsock.as_ref().map(|v| v.uds_path.clone()),
            mem_mib: config.mem_mib,
            vcpu_count: config.vcpus,
        }),
        _vm: vm,
        _mem: mem,
    })
}

/// The i8042 reset line: records that the guest asked for a reset (so the triple
/// fault that may follow is not taken for a crash) and wakes the event loop.
struct ResetLine {
    evt: vmm_sys_util::eventfd::EventFd,
    control: Arc<VcpuControl>,
}

impl vm_superio::Trigger for ResetLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.control
            .reset_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.evt.write(1)
    }
}

/// Ends the VM when the guest resets the CPU through the i8042.
struct ResetWatcher {
    evt: vmm_sys_util::eventfd::EventFd,
    control: Arc<VcpuControl>,
}

impl MutEventSubscriber for ResetWatcher {
    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        let _ = self.evt.read();
        tracing::info!("guest reset through the i8042: stopping the VM");
        self.control
            .request_exit(crate::vstate::vcpu::ExitReason::GuestShutdown);
    }

    fn init(&mut self, ops: &mut event_manager::EventOps) {
        if let Err(e) = ops.add(event_manager::Events::new(
            &self.evt,
            vmm_sys_util::epoll::EventSet::IN,
        )) {
            tracing::error!("watching the reset line: {e}");
        }
    }
}
