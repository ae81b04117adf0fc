//! Turns a [`VmConfig`] into a running VM: memory, kernel, devices, boot tables,
//! vCPUs and the event loop that serves device I/O.

use crate::arch::layout::*;
use crate::arch::{acpi, mptable, pvh, regs};
use crate::config::{
    parse_mac, DriveConfig, FsConfig, NetConfig, SerialOutput, VmConfig, VsockConfig,
};
use crate::counters;
use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::{CappedLog, SerialConsole, SerialSnapshot, SharedLog, I8042};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::{Block, Disk, DiskError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioTransport, RestoreError, NOTIFY_REG_OFFSET};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::devices::Trigger;
use crate::image::MappedImage;
use crate::seccomp::SeccompError;
use crate::snapshot::{self, NamedTransport, SnapshotError, SnapshotSources, VmSnapshot};
use crate::vstate::memory::{self, MemoryError, MemoryMode};
use crate::vstate::vcpu::{install_kick_handler, Vcpu, VcpuControl, VcpuError, VcpuWiring, Vcpus};
use crate::vstate::vcpu_state::msr_index_list;
use crate::vstate::vm::{Vm, VmError};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmlet_vmm_api::control::{SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE};

/// The kernel command line vmlet always passes. `reboot=k` makes a guest reboot
/// or poweroff go through the i8042 reset, which ends the VMM. `acpi=noirq`
/// leaves interrupt routing to the MP table (see [`crate::arch::acpi`]); `pci=off`
/// spares the probe of a PCI bus the VM does not have (the kernel has PCI only
/// for ACPI's sake). The kernel has no modules, so no `nomodules`.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 tsc=reliable no_timer_check acpi=noirq pci=off";

/// The event loop's subscriber type.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A device of the VM, as errors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceId {
    /// The COM1 serial console.
    Serial,
    /// The i8042 controller (the reset line).
    I8042,
    /// A virtio-blk drive, by ID.
    Drive(String),
    /// A virtio-net card, by tap.
    Net(String),
    /// The virtio-vsock device.
    Vsock,
    /// A virtio-fs device, by tag.
    Fs(String),
    /// The virtio-rng device.
    Rng,
    /// The virtio-balloon (free page reporting).
    Balloon,
    /// The VM generation ID's event device (ACPI).
    GenerationId,
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceId::Serial => f.write_str("serial"),
            DeviceId::I8042 => f.write_str("i8042"),
            DeviceId::Drive(id) => write!(f, "drive {id}"),
            DeviceId::Net(tap) => write!(f, "net {tap}"),
            DeviceId::Vsock => f.write_str("vsock"),
            DeviceId::Fs(tag) => write!(f, "fs {tag}"),
            DeviceId::Rng => f.write_str("rng"),
            DeviceId::Balloon => f.write_str("balloon"),
            DeviceId::GenerationId => f.write_str("VM generation ID"),
        }
    }
}

/// Why a device could not be created or wired into the VM.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The drive's backing file cannot be used.
    #[error(transparent)]
    Disk(DiskError),
    /// The tap cannot be used.
    #[error(transparent)]
    Net(NetError),
    /// The vsock device cannot be created.
    #[error(transparent)]
    Vsock(VsockError),
    /// The virtio-fs device cannot be set up with its backend.
    #[error(transparent)]
    Fs(FsError),
    /// The device could not be created (its eventfds, its entropy source).
    #[error("creating the device: {0}")]
    Create(std::io::Error),
    /// Its interrupt eventfd could not be created.
    #[error("interrupt eventfd: {0}")]
    Irq(std::io::Error),
    /// KVM refused its interrupt eventfd.
    #[error("KVM_IRQFD: {0}")]
    Irqfd(kvm_ioctls::Error),
    /// KVM refused a queue-notification eventfd.
    #[error("KVM_IOEVENTFD: {0}")]
    Ioeventfd(kvm_ioctls::Error),
    /// It does not fit on its bus.
    #[error(transparent)]
    Bus(BusError),
    /// It cannot be announced on the kernel command line.
    #[error("announcing it on the kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
}

/// Why the initramfs could not be loaded into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The file cannot be opened or measured.
    #[error("{0}")]
    Open(#[source] std::io::Error),
    /// It does not fit below the MMIO gap above the kernel.
    #[error("{size} bytes do not fit in guest memory")]
    TooLarge {
        /// Its size in bytes.
        size: u64,
    },
    /// Reading it into guest memory failed.
    #[error("{0}")]
    Read(#[source] vm_memory::GuestMemoryError),
}

/// Why the boot structures could not be written into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel command line.
    #[error("writing the command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    /// The PVH start info and memory map.
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// The ACPI tables or the VM generation ID.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// The boot GDT.
    #[error(transparent)]
    Gdt(#[from] regs::RegsError),
}

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
    #[error("cannot load initramfs {path}: {source}")]
    Initramfs {
        /// The initramfs file.
        path: PathBuf,
        /// Why.
        source: InitramfsError,
    },
    /// The command line is too long or malformed.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Boot structures could not be written.
    #[error("boot setup: {0}")]
    Boot(#[from] BootError),
    /// A device could not be attached.
    #[error("{device}: {source}")]
    Device {
        /// The device.
        device: DeviceId,
        /// Why.
        source: DeviceError,
    },
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
    /// The snapshot to restore cannot be read.
    #[error("cannot restore from {0}: {1}")]
    Snapshot(PathBuf, SnapshotError),
    /// The snapshot was taken of another VM shape or device list.
    #[error("cannot restore from {dir}: {reason}")]
    SnapshotMismatch {
        /// The snapshot.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A device refused its saved state.
    #[error("cannot restore {device}: {source}")]
    Restore {
        /// The device, as the snapshot names it.
        device: String,
        /// Why.
        source: RestoreError,
    },
    /// The VM refused its saved state.
    #[error("cannot restore the VM state: {0}")]
    RestoreVm(VmError),
    /// A restored VM's generation ID could not be renewed.
    #[error("cannot give the restored VM a new generation ID: {0}")]
    GenerationId(#[source] acpi::AcpiError),
    /// The guest could not be told of its new generation ID.
    #[error("cannot announce the restored VM's new generation ID: {0}")]
    GenerationEvent(#[source] std::io::Error),
}

/// The error of `device` failing with `source`.
fn device_error(device: DeviceId) -> impl Fn(DeviceError) -> BuildError {
    move |source| BuildError::Device {
        device: device.clone(),
        source,
    }
}

/// Handles on the parts of a built VM that the control socket acts on.
pub struct VmParts {
    /// The vCPUs (pause/resume/stop).
    pub vcpus: Vcpus,
    /// Exit requests and the exit code.
    pub control: Arc<VcpuControl>,
    /// Drives by ID, for backing-file swaps.
    pub drives: HashMap<String, Arc<Mutex<Block>>>,
    /// What the devices count, for the `counters` request.
    pub devices: counters::Devices,
    /// The vsock host socket, used to ask the guest to power off.
    pub vsock_uds: Option<PathBuf>,
    /// Guest memory size.
    pub mem_mib: u64,
    /// vCPU count.
    pub vcpu_count: u8,
    /// What a snapshot reads.
    pub snapshot: SnapshotSources,
}

/// A built, running VM and its event loop.
pub struct Vmm {
    /// The event loop serving devices (and the control socket, once added).
    pub event_manager: EventManager<Subscriber>,
    /// The running parts.
    pub parts: Arc<VmParts>,
    /// The serial console's log file, if it goes to one: the event loop brings it
    /// up to date ([`SharedLog::sync_due`]).
    pub console_log: Option<SharedLog>,
}

fn eventfd() -> Result<Trigger, BuildError> {
    Trigger::new().map_err(BuildError::EventFd)
}

/// The boot image reader for guest RAM in `mode`: mapped copy-on-write into
/// private RAM, copied into shared RAM (see [`crate::image`] for why).
fn boot_image(file: File, mode: MemoryMode) -> std::io::Result<MappedImage> {
    match mode {
        MemoryMode::Private => MappedImage::new(file),
        MemoryMode::Shared => MappedImage::copying(file),
    }
}

fn load_kernel(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    mode: MemoryMode,
) -> Result<(u64, u64), BuildError> {
    let open_err = |e| BuildError::KernelOpen(config.kernel.clone(), e);
    let file = File::open(&config.kernel).map_err(open_err)?;
    let mut image = boot_image(file, mode).map_err(open_err)?;
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
    mode: MemoryMode,
) -> Result<pvh::Initrd, BuildError> {
    let err = |source| BuildError::Initramfs {
        path: path.clone(),
        source,
    };
    let file = File::open(path).map_err(|e| err(InitramfsError::Open(e)))?;
    let mut image = boot_image(file, mode).map_err(|e| err(InitramfsError::Open(e)))?;
    let size = image.len();
    let low_end = mem_size.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| err(InitramfsError::TooLarge { size }))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut image, size as usize)
        .map_err(|e| err(InitramfsError::Read(e)))?;
    Ok(pvh::Initrd { addr, size })
}

struct DeviceWiring<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    cmdline: &'a mut Cmdline,
    event_manager: &'a mut EventManager<Subscriber>,
    next_slot: u64,
    /// The transports wired so far, named.
    devices: Vec<NamedTransport>,
}

impl DeviceWiring<'_> {
    /// Places a virtio device in the next MMIO window with the next IRQ, wires its
    /// irqfd and queue ioeventfds, announces it on the command line, and adds it
    /// to the event loop.
    fn add<D>(&mut self, name: String, device: Arc<Mutex<D>>) -> Result<(), DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let slot = self.next_slot;
        self.next_slot += 1;
        let base = VIRTIO_MMIO_START + slot * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_IRQ_BASE + slot as u32;
        let irq = Arc::new(IrqTrigger::new().map_err(DeviceError::Irq)?);
        self.vm
            .register_irqfd(irq.eventfd(), gsi)
            .map_err(DeviceError::Irqfd)?;
        {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            for (i, evt) in dev.queue_events().iter().enumerate() {
                self.vm
                    .register_ioevent(
                        evt,
                        &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                        i as u32,
                    )
                    .map_err(DeviceError::Ioeventfd)?;
            }
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device.clone(),
            self.mem.clone(),
            irq,
        )));
        let on_bus: Arc<Mutex<dyn BusDevice>> = transport.clone();
        self.mmio
            .insert(on_bus, base, VIRTIO_MMIO_SIZE)
            .map_err(DeviceError::Bus)?;
        self.devices.push((name, transport));
        self.cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), gsi, None)
            .map_err(DeviceError::Cmdline)?;
        self.event_manager.add_subscriber(device);
        Ok(())
    }
}

/// The drives by ID, for swaps, and what each counts.
type Drives = (
    HashMap<String, Arc<Mutex<Block>>>,
    Vec<(String, Arc<counters::Block>)>,
);

/// Attaches one virtio-blk device per drive, in order; returns them by ID, and
/// their counts.
fn attach_block_devices(
    wiring: &mut DeviceWiring<'_>,
    drives: &[DriveConfig],
) -> Result<Drives, BuildError> {
    let mut attached = HashMap::new();
    let mut counts = Vec::with_capacity(drives.len());
    for d in drives {
        let fail = device_error(DeviceId::Drive(d.id.clone()));
        let disk = Disk::open(&d.path, d.read_only)
            .map_err(DeviceError::Disk)
            .map_err(&fail)?;
        let blk = Block::new(d.id.clone(), disk)
            .map_err(DeviceError::Create)
            .map_err(&fail)?;
        counts.push((d.id.clone(), blk.counters()));
        let blk = Arc::new(Mutex::new(blk));
        wiring
            .add(format!("drive {}", d.id), blk.clone())
            .map_err(&fail)?;
        attached.insert(d.id.clone(), blk);
    }
    Ok((attached, counts))
}

/// Attaches one virtio-net device per card, in order; returns their counts, as
/// `net0`, `net1`, ...
fn attach_net_devices(
    wiring: &mut DeviceWiring<'_>,
    nets: &[NetConfig],
) -> Result<Vec<(String, Arc<counters::Net>)>, BuildError> {
    let mut counts = Vec::with_capacity(nets.len());
    for (i, n) in nets.iter().enumerate() {
        let fail = device_error(DeviceId::Net(n.tap.clone()));
        let mac = n.mac.as_deref().map(parse_mac).transpose()?;
        let net = Net::new(&n.tap, mac, !n.no_offloads)
            .map_err(DeviceError::Net)
            .map_err(&fail)?;
        counts.push((format!("net{i}"), net.counters()));
        wiring
            .add(format!("net{i}"), Arc::new(Mutex::new(net)))
            .map_err(&fail)?;
    }
    Ok(counts)
}

/// Attaches the virtio-vsock device, served on its hybrid-vsock unix socket;
/// returns its counts.
fn attach_vsock_device(
    wiring: &mut DeviceWiring<'_>,
    v: &VsockConfig,
) -> Result<Arc<counters::Vsock>, BuildError> {
    let fail = device_error(DeviceId::Vsock);
    let vsock = Vsock::new(v.cid, &v.uds_path)
        .map_err(DeviceError::Vsock)
        .map_err(&fail)?;
    let counts = vsock.counters();
    wiring
        .add("vsock".to_owned(), Arc::new(Mutex::new(vsock)))
        .map_err(&fail)?;
    Ok(counts)
}

/// Attaches one virtio-fs device per entry, each connected to its backend.
fn attach_fs_devices(wiring: &mut DeviceWiring<'_>, fs: &[FsConfig]) -> Result<(), BuildError> {
    for f in fs {
        let fail = device_error(DeviceId::Fs(f.tag.clone()));
        let mut dev = Fs::new(f, wiring.mem)
            .map_err(DeviceError::Fs)
            .map_err(&fail)?;
        // A subscriber apart from the device, whose lock a waiting vCPU holds.
        if let Some(watchdog) = dev.take_watchdog() {
            wiring
                .event_manager
                .add_subscriber(Arc::new(Mutex::new(watchdog)));
        }
        wiring
            .add(format!("fs {}", f.tag), Arc::new(Mutex::new(dev)))
            .map_err(&fail)?;
    }
    Ok(())
}

/// Attaches the virtio-rng device.
fn attach_rng_device(wiring: &mut DeviceWiring<'_>) -> Result<(), BuildError> {
    let fail = device_error(DeviceId::Rng);
    let rng = Rng::new().map_err(DeviceError::Create).map_err(&fail)?;
    wiring
        .add("rng".to_owned(), Arc::new(Mutex::new(rng)))
        .map_err(&fail)
}

/// Attaches the virtio-balloon that takes back the memory the guest frees.
fn attach_balloon_device(wiring: &mut DeviceWiring<'_>) -> Result<(), BuildError> {
    let fail = device_error(DeviceId::Balloon);
    let balloon = Balloon::new().map_err(DeviceError::Create).map_err(&fail)?;
    wiring
        .add("balloon".to_owned(), Arc::new(Mutex::new(balloon)))
        .map_err(&fail)
}

/// COM1 and the log file behind it, if any.
type Serial = (Arc<Mutex<SerialConsole>>, Option<SharedLog>);

/// Attaches COM1 (interrupt through an irqfd, output per `config.serial`, in the
/// `saved` state if restoring) to the port-I/O bus.
fn attach_serial_device(
    vm: &VmFd,
    pio: &mut Bus,
    config: &VmConfig,
    saved: Option<&SerialSnapshot>,
) -> Result<Serial, BuildError> {
    let fail = device_error(DeviceId::Serial);
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq.0, SERIAL_IRQ)
        .map_err(DeviceError::Irqfd)
        .map_err(&fail)?;
    let (out, log) = serial_output(config)?;
    let serial = match saved {
        Some(saved) => {
            SerialConsole::restored(saved, serial_irq, out).map_err(|e| BuildError::Restore {
                device: "serial".to_owned(),
                source: RestoreError::Device(e),
            })?
        }
        None => SerialConsole::new(serial_irq, out),
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(serial.clone(), 0x3f8, 8)
        .map_err(DeviceError::Bus)
        .map_err(&fail)?;
    Ok((serial, log))
}

/// Attaches the i8042, whose reset line ends the VM through the event loop.
fn attach_i8042_device(
    pio: &mut Bus,
    event_manager: &mut EventManager<Subscriber>,
    control: &Arc<VcpuControl>,
) -> Result<(), BuildError> {
    let reset = ResetLine {
        evt: eventfd()?.0,
        control: control.clone(),
    };
    let reset_evt = reset.evt.try_clone().map_err(BuildError::EventFd)?;
    pio.insert(Arc::new(Mutex::new(I8042::new(reset))), 0x60, 5)
        .map_err(DeviceError::Bus)
        .map_err(device_error(DeviceId::I8042))?;
    event_manager.add_subscriber(Arc::new(Mutex::new(ResetWatcher {
        evt: reset_evt,
        control: control.clone(),
    })));
    Ok(())
}

/// Wires the interrupt of the generic event device that tells the guest its
/// generation ID changed.
fn attach_generation_event(vm: &VmFd) -> Result<Trigger, BuildError> {
    let evt = eventfd()?;
    vm.register_irqfd(&evt.0, VMGENID_IRQ)
        .map_err(DeviceError::Irqfd)
        .map_err(device_error(DeviceId::GenerationId))?;
    Ok(evt)
}

/// Writes the command line, the PVH start info, the ACPI tables with a generation
/// ID, the MP table and the boot GDT.
fn write_boot_tables(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &Cmdline,
    initrd: Option<pvh::Initrd>,
) -> Result<(), BuildError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::Cmdline)?;
    let rsdp = acpi::setup(mem, config.vcpus).map_err(BootError::from)?;
    pvh::configure(mem, mem_size, initrd, rsdp).map_err(BootError::from)?;
    mptable::setup(mem, config.vcpus).map_err(BootError::from)?;
    regs::write_boot_gdt(mem).map_err(BootError::from)?;
    Ok(())
}

/// Where the VM starts: the kernel's entry point (the boot tables still to be
/// written), or a snapshot.
enum Start<'a> {
    Boot {
        entry: u64,
        initrd: Option<pvh::Initrd>,
    },
    Restore {
        dir: &'a PathBuf,
        saved: &'a VmSnapshot,
    },
}

/// Creates the vCPUs (at the kernel's entry point, or in their saved state with
/// the VM's, in which case the VM state follows them) and starts their threads.
fn start_vcpus(
    vm: &Vm,
    config: &VmConfig,
    start: Start<'_>,
    wiring: VcpuWiring,
    vcpu_setup: impl Fn() -> Result<(), SeccompError> + Clone + Send + 'static,
) -> Result<Vcpus, BuildError> {
    install_kick_handler()?;
    let mut vcpus = Vec::with_capacity(config.vcpus as usize);
    for i in 0..config.vcpus {
        vcpus.push(match &start {
            Start::Boot { entry, .. } => {
                Vcpu::new(vm.fd(), vm.kvm(), i, config.vcpus, *entry, wiring.clone())?
            }
            Start::Restore { saved, .. } => Vcpu::restore(
                vm.fd(),
                i,
                &saved.vcpu_states[usize::from(i)],
                wiring.clone(),
            )?,
        });
    }
    if let Start::Restore { saved, .. } = &start {
        vm.restore_state(&saved.vm).map_err(BuildError::RestoreVm)?;
    }
    let control = wiring.control.clone();
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        handles.push(vcpu.start(vcpu_setup.clone())?);
    }
    Ok(Vcpus::new(handles, control))
}

/// Reads the snapshot in `dir` and checks it is of this VM's shape.
fn read_snapshot(dir: &Path, config: &VmConfig) -> Result<VmSnapshot, BuildError> {
    let saved = snapshot::read_state(&dir.join(SNAPSHOT_STATE_FILE))
        .map_err(|e| BuildError::Snapshot(dir.to_owned(), e))?;
    let mismatch = |reason: String| BuildError::SnapshotMismatch {
        dir: dir.to_owned(),
        reason,
    };
    if saved.vcpus != config.vcpus || saved.vcpu_states.len() != usize::from(config.vcpus) {
        return Err(mismatch(format!(
            "it was taken with {} vCPUs ({} saved), this VM has {}",
            saved.vcpus,
            saved.vcpu_states.len(),
            config.vcpus
        )));
    }
    if saved.mem_mib != config.mem_mib {
        return Err(mismatch(format!(
            "it was taken with {} MiB of memory, this VM has {}",
            saved.mem_mib, config.mem_mib
        )));
    }
    Ok(saved)
}

/// Puts every device of `wired` in its state in `saved`; the lists must name
/// the same devices in the same order.
fn restore_devices(
    dir: &Path,
    wired: &[NamedTransport],
    saved: &VmSnapshot,
) -> Result<(), BuildError> {
    let names =
        |l: &mut dyn Iterator<Item = &String>| l.map(String::as_str).collect::<Vec<_>>().join(", ");
    let configured = names(&mut wired.iter().map(|(n, _)| n));
    let snapshotted = names(&mut saved.devices.iter().map(|d| &d.name));
    if configured != snapshotted {
        return Err(BuildError::SnapshotMismatch {
            dir: dir.to_owned(),
            reason: format!(
                "it holds the devices [{snapshotted}], this VM is configured with [{configured}]"
            ),
        });
    }
    for ((name, transport), device) in wired.iter().zip(&saved.devices) {
        transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&device.transport)
            .map_err(|source| BuildError::Restore {
                device: name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The serial device's output, and the log file behind it if there is one.
type SerialSink = (Box<dyn Write + Send>, Option<SharedLog>);

fn serial_output(config: &VmConfig) -> Result<SerialSink, BuildError> {
    Ok(match &config.serial {
        SerialOutput::Stdout => (Box::new(std::io::stdout()), None),
        SerialOutput::Off => (Box::new(std::io::sink()), None),
        SerialOutput::File(path) => {
            let err = |e| BuildError::SerialOutput(path.clone(), e);
            // Not in append mode: the capped log writes at explicit offsets.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)
                .map_err(err)?;
            let limits = config.serial_log;
            // validate() bounds the tail to MAX_SERIAL_LOG_PART, which fits a usize.
            let tail = usize::try_from(limits.tail_bytes).unwrap_or(usize::MAX);
            let log = SharedLog::new(CappedLog::new(file, limits.head_bytes, tail).map_err(err)?);
            (Box::new(log.clone()), Some(log))
        }
    })
}

/// Builds and starts the VM described by `config`. `vcpu_setup` runs on each
/// vCPU thread before the guest does (the VMM installs seccomp there).
pub fn build(
    config: &VmConfig,
    vcpu_setup: impl Fn() -> Result<(), SeccompError> + Clone + Send + 'static,
) -> Result<Vmm, BuildError> {
    crate::config::validate(config)?;
    let started = std::time::Instant::now();
    let mem_size = config.mem_mib << 20;
    let saved = match &config.restore {
        Some(dir) => Some((dir, read_snapshot(dir, config)?)),
        None => None,
    };
    let vm = Vm::new()?;
    let mode = if config.uses_shared_memory() {
        MemoryMode::Shared
    } else {
        MemoryMode::Private
    };
    let mem = match &saved {
        Some((dir, s)) => {
            snapshot::memory::restore(&dir.join(SNAPSHOT_MEMORY_FILE), &s.memory, mem_size)
                .map_err(|e| BuildError::Snapshot((*dir).clone(), e.into()))?
        }
        None => memory::create(mem_size, mode, config.huge_pages)?,
    };
    vm.set_memory(&mem)?;

    let start = match &saved {
        Some((dir, saved)) => Start::Restore { dir, saved },
        None => {
            let (entry, kernel_end) = load_kernel(config, &mem, mode)?;
            let initrd = match &config.initramfs {
                Some(path) => Some(load_initramfs(path, &mem, mem_size, kernel_end, mode)?),
                None => None,
            };
            Start::Boot { entry, initrd }
        }
    };

    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventLoop)?;
    let control = Arc::new(VcpuControl::new().map_err(BuildError::EventFd)?);
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let (serial, console_log) = attach_serial_device(
        vm.fd(),
        &mut pio,
        config,
        saved.as_ref().map(|(_, s)| &s.serial),
    )?;
    attach_i8042_device(&mut pio, &mut event_manager, &control)?;
    let generation_event = attach_generation_event(vm.fd())?;

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(BuildError::Cmdline)?;
    let mut wiring = DeviceWiring {
        vm: vm.fd(),
        mem: &mem,
        mmio: &mut mmio,
        cmdline: &mut cmdline,
        event_manager: &mut event_manager,
        next_slot: 0,
        devices: Vec::new(),
    };
    let (drives, block_counts) = attach_block_devices(&mut wiring, &config.drives)?;
    let mut devices = counters::Devices {
        block: block_counts,
        net: attach_net_devices(&mut wiring, &config.net)?,
        vsock: None,
    };
    if let Some(v) = &config.vsock {
        devices.vsock = Some(attach_vsock_device(&mut wiring, v)?);
    }
    attach_fs_devices(&mut wiring, &config.fs)?;
    if config.rng {
        attach_rng_device(&mut wiring)?;
    }
    if config.free_page_reporting {
        attach_balloon_device(&mut wiring)?;
    }
    let wired = std::mem::take(&mut wiring.devices);
    match &start {
        Start::Boot { initrd, .. } => {
            if !config.cmdline.is_empty() {
                cmdline
                    .insert_str(&config.cmdline)
                    .map_err(BuildError::Cmdline)?;
            }
            write_boot_tables(config, &mem, mem_size, &cmdline, *initrd)?;
        }
        Start::Restore { dir, saved } => {
            restore_devices(dir, &wired, saved)?;
            // A copy of the template must not look like it: a new ID before any
            // vCPU runs, announced (below) once the interrupt controller is back.
            acpi::renew_generation_id(&mem).map_err(BuildError::GenerationId)?;
        }
    }

    // Listed for a later snapshot of this VM (restored ones included).
    let msr_indices = msr_index_list(vm.kvm()).map_err(|e| VcpuError::State(0, e))?;
    let vcpu_wiring = VcpuWiring {
        pio: pio.clone(),
        mmio: mmio.clone(),
        control: control.clone(),
        msr_indices: Arc::new(msr_indices),
    };
    let restoring = matches!(start, Start::Restore { .. });
    let vcpus = start_vcpus(&vm, config, start, vcpu_wiring, vcpu_setup)?;
    if restoring {
        generation_event
            .0
            .write(1)
            .map_err(BuildError::GenerationEvent)?;
        for (_, transport) in &wired {
            transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .raise_pending_interrupt();
        }
    }
    tracing::info!(
        "VM {} and {} vCPU(s) started in {:?}",
        if config.restore.is_some() {
            "restored"
        } else {
            "built"
        },
        config.vcpus,
        started.elapsed()
    );
    Ok(Vmm {
        event_manager,
        parts: Arc::new(VmParts {
            vcpus,
            control,
            drives,
            devices,
            vsock_uds: config.vsock.as_ref().map(|v| v.uds_path.clone()),
            mem_mib: config.mem_mib,
            vcpu_count: config.vcpus,
            snapshot: SnapshotSources {
                vm: Arc::new(vm),
                mem,
                devices: wired,
                serial,
                shared_memory: mode == MemoryMode::Shared,
            },
        }),
        console_log,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_name_the_device() {
        let e = BuildError::Device {
            device: DeviceId::Drive("rootfs".into()),
            source: DeviceError::Disk(DiskError::Open(
                "/nonexistent".into(),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            )),
        };
        assert_eq!(
            e.to_string(),
            "drive rootfs: cannot open drive file /nonexistent: No such file or directory (os error 2)"
        );
        let e = device_error(DeviceId::Net("tap0".into()))(DeviceError::Irq(
            std::io::Error::from_raw_os_error(libc::EMFILE),
        ));
        assert!(
            e.to_string().starts_with("net tap0: interrupt eventfd: "),
            "{e}"
        );
        for (id, name) in [
            (DeviceId::Serial, "serial"),
            (DeviceId::I8042, "i8042"),
            (DeviceId::Vsock, "vsock"),
            (DeviceId::Fs("vol".into()), "fs vol"),
            (DeviceId::Rng, "rng"),
            (DeviceId::Balloon, "balloon"),
        ] {
            assert_eq!(id.to_string(), name);
        }
    }

    #[test]
    fn initramfs_and_boot_errors_keep_their_sources() {
        use std::error::Error as _;
        let e = BuildError::Initramfs {
            path: "/boot/initrd".into(),
            source: InitramfsError::TooLarge { size: 1 << 30 },
        };
        assert_eq!(
            e.to_string(),
            "cannot load initramfs /boot/initrd: 1073741824 bytes do not fit in guest memory"
        );
        let e = BuildError::Initramfs {
            path: "/nonexistent".into(),
            source: InitramfsError::Open(std::io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let io = e.source().and_then(|s| s.source());
        assert!(
            io.and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.raw_os_error() == Some(libc::ENOENT)),
            "{e}: {io:?}"
        );
        let e = BuildError::from(BootError::from(mptable::MptableError::TooManyCpus(255)));
        assert!(
            e.to_string().starts_with("boot setup: 255 vCPUs requested"),
            "{e}"
        );
        assert!(e
            .source()
            .and_then(|s| s.downcast_ref::<BootError>())
            .is_some_and(|b| matches!(b, BootError::Mptable(_))));
    }
}
