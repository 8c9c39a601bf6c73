//! The assembled microVM: builds memory, KVM VM, devices and vCPUs from a validated
//! configuration, runs the event loop until the guest stops, and tears everything down.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::{
    BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, SERIAL_IRQ, VIRTIO_IRQ_FIRST, VIRTIO_IRQ_LAST,
    VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_START,
};
use crate::bus::{Bus, BusError};
use crate::config::tap::NotATap;
use crate::config::SeccompMode;
use crate::config::{insert_kernel_args, NetDeviceConfig, SerialConfig, ValidConfig};
use crate::devices::boot_timer::BootTimer;
use crate::devices::i8042::{ResetTrigger, I8042, I8042_PORT, I8042_PORTS};
use crate::devices::serial::{open_sink, SerialDevice, StdinInput, COM1_PORT, COM1_PORTS};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{FsError, VirtioFs};
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{MacAddr, Net, Tap, TapError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{VsockConfig, VsockDevice, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::IrqTrigger;
use crate::exit::{ExitReason, ExitSignal};
use crate::jail::seccomp::{self, ThreadKind};
use crate::jail::JailError;
use crate::loader::{load_guest, LoadError};
use crate::memory::{create_guest_memory, host_ranges, MemoryError};
use crate::metrics::{Metrics, MetricsFile, MetricsFlusher};
use crate::util::lock;
use crate::vstate::vcpu::StartGate;
use crate::vstate::vcpu::{
    install_kick_handler, stop_vcpus, BootEntry, ExitContext, Vcpu, VcpuError,
};
use crate::vstate::vm::{create_vm, open_kvm, VmError};

/// How long teardown waits for vCPU threads to leave KVM_RUN.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors building or running a microVM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Guest memory could not be allocated.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM VM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Loading the guest failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A device could not be placed on a bus.
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    /// A host resource (event fd, serial output file, event loop) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A KVM VM-level call (irqfd, CPUID query) failed.
    #[error("{what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// A virtio-blk backing file could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The vsock device could not be set up (socket bind, CID).
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio-fs share could not be set up.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A virtio-net TAP backend could not be opened or configured.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The VMM could not confine itself (seccomp filters).
    #[error(transparent)]
    Jail(#[from] JailError),
    /// More virtio devices than free interrupt lines.
    #[error("too many virtio devices: no interrupt line left")]
    OutOfIrqs,
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the event loop when a stop is requested.
struct ExitWatcher {
    exit: ExitSignal,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event_fd(), EventSet::IN)) {
            tracing::error!("cannot watch the exit event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.event_fd().read();
        self.exit.take_stop_signal();
    }
}

/// Hands out virtio-mmio slots (4 KiB each from `VIRTIO_MMIO_START`) and IRQs, wires the
/// devices up in the VM, and collects the `virtio_mmio.device=` kernel parameters that tell
/// the guest about them.
struct VirtioSlots<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    event_manager: &'a mut EventManager<Subscriber>,
    next_addr: u64,
    next_irq: u32,
    kernel_args: Vec<String>,
}

impl<'a> VirtioSlots<'a> {
    fn new(
        vm: &'a VmFd,
        mem: &'a GuestMemoryMmap,
        mmio: &'a mut Bus,
        event_manager: &'a mut EventManager<Subscriber>,
    ) -> VirtioSlots<'a> {
        VirtioSlots {
            vm,
            mem,
            mmio,
            event_manager,
            next_addr: VIRTIO_MMIO_START,
            next_irq: VIRTIO_IRQ_FIRST,
            kernel_args: Vec::new(),
        }
    }

    /// Creates and attaches every virtio device `config` asks for, in a fixed order (disks,
    /// vsock, shares, rng, NICs), so the guest sees the same slots on every boot.
    fn attach_all(&mut self, config: &ValidConfig, metrics: &Metrics) -> Result<(), VmmError> {
        for disk in &config.block_devices {
            let block = Block::open(&disk.path, disk.read_only)?;
            metrics.add_blk(block.counters().clone());
            self.attach(block)?;
        }
        if let Some(v) = &config.vsock {
            let cfg = VsockConfig::new(v.guest_cid.into(), v.uds_path.clone());
            let vsock = VsockDevice::new(cfg)?;
            metrics.set_vsock(vsock.counters().clone());
            self.attach(vsock)?;
        }
        for share in &config.shared_dirs {
            let fs = VirtioFs::new(&share.tag, &share.path)?;
            metrics.add_fs(fs.counters().clone());
            self.attach(fs)?;
        }
        if config.rng {
            let rng = Rng::new().map_err(io_err("create virtio-rng"))?;
            metrics.set_rng(rng.counters().clone());
            self.attach(rng)?;
        }
        for dev in &config.net_devices {
            let net = open_net(dev)?;
            metrics.add_net(
                net.backend_name(),
                net.mac().to_string(),
                net.counters().clone(),
            );
            self.attach(net)?;
        }
        Ok(())
    }

    /// Wires `device` up: irqfd on its GSI, one ioeventfd per queue on QueueNotify (datamatch
    /// = queue index), the transport on the MMIO bus, the device in the event loop.
    fn attach<D: VirtioDevice + 'static>(&mut self, device: D) -> Result<(), VmmError> {
        let kvm_err = |what| move |source| VmmError::Kvm { what, source };
        if self.next_irq > VIRTIO_IRQ_LAST {
            return Err(VmmError::OutOfIrqs);
        }
        let (addr, irq) = (self.next_addr, self.next_irq);
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(io_err("create virtio irq"))?;
        self.vm
            .register_irqfd(&irqfd, irq)
            .map_err(kvm_err("register virtio irqfd"))?;
        let notify = kvm_ioctls::IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
        for (index, fd) in (0u32..).zip(device.queue_events()) {
            self.vm
                .register_ioevent(fd, &notify, index)
                .map_err(kvm_err("register virtio queue ioeventfd"))?;
        }
        let device = Arc::new(Mutex::new(device));
        let interrupt = Arc::new(VirtioInterrupt::new(irqfd));
        let transport = MmioTransport::new(device.clone(), self.mem.clone(), interrupt);
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), addr, VIRTIO_MMIO_SLOT_SIZE)?;
        self.event_manager.add_subscriber(device);
        self.kernel_args
            .push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
        self.next_addr += VIRTIO_MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(())
    }
}

/// The platform devices every VM has: COM1 and the i8042 reset line on the port-I/O bus, the
/// boot timer on the MMIO bus (which the virtio devices join later).
struct LegacyDevices {
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
}

impl LegacyDevices {
    /// Creates the devices: the serial console writes to its configured output and
    /// interrupts through an irqfd, the i8042 reset line stops the VM through `exit`, the
    /// boot timer records in `metrics`.
    fn new(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        serial: &SerialConfig,
        exit: &ExitSignal,
        metrics: &Arc<Metrics>,
    ) -> Result<LegacyDevices, VmmError> {
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create serial irq"))?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(|source| VmmError::Kvm {
                what: "register serial irqfd",
                source,
            })?;
        let sink =
            open_sink(&serial.output, serial.limit_bytes).map_err(io_err("open serial output"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(IrqTrigger(serial_irq), sink)));
        let i8042 = Arc::new(Mutex::new(I8042::new(ResetTrigger::new(
            exit.clone(),
            mem.clone(),
        ))));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT, COM1_PORTS)?;
        pio.insert(i8042, I8042_PORT, I8042_PORTS)?;
        let mut mmio = Bus::new();
        let timer = Arc::new(Mutex::new(BootTimer::new(metrics.clone())));
        mmio.insert(timer, BOOT_TIMER_ADDR, BOOT_TIMER_SIZE)?;
        Ok(LegacyDevices { pio, mmio, serial })
    }
}

/// Creates and configures the `num_cpus` vCPUs (CPUID filtered from what KVM supports, the
/// TSC-deadline timer where KVM has it); the boot vCPU starts at `boot`.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    boot: BootEntry,
) -> Result<Vec<Vcpu>, VmmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "get supported CPUID",
            source,
        })?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let vcpus = (0..num_cpus)
        .map(|id| Vcpu::new(vm, id, num_cpus, &supported, tsc_deadline, mem, boot))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vcpus)
}

/// Opens the TAP backend of a validated virtio-net device and builds the device.
fn open_net(dev: &NetDeviceConfig) -> Result<Net, VmmError> {
    let tap = match (&dev.tap, dev.fd) {
        // SAFETY: validation checked the fd is an open TAP queue and used once; nothing
        // else in the VMM owns it (the VMM's own fds were opened after it, at other numbers).
        (_, Some(fd)) => unsafe { Tap::from_raw_fd(fd)? },
        (Some(name), None) => Tap::open(name)?,
        (None, None) => {
            return Err(VmmError::Tap(TapError::NotATap(NotATap {
                fd: -1,
                why: "a net device needs tap=NAME or fd=N".into(),
            })))
        }
    };
    let mac = dev.mac.unwrap_or_else(MacAddr::random_local);
    tracing::info!("virtio-net on tap {} with guest MAC {mac}", tap.name());
    Net::new(Box::new(tap), mac, dev.mtu).map_err(io_err("create virtio-net"))
}

/// A built microVM, ready to run.
pub struct Vmm {
    // Field order matters for drop: vCPU fds and the VM go before guest memory.
    vcpus: Vec<Vcpu>,
    _vm: VmFd,
    ctx: ExitContext,
    serial: Arc<Mutex<SerialDevice>>,
    event_manager: EventManager<Subscriber>,
    metrics: Arc<Metrics>,
    seccomp: SeccompMode,
    #[cfg(feature = "attack-hooks")]
    cmdline: String,
    _guest_memory: GuestMemoryMmap,
}

impl Vmm {
    /// Builds the VM described by `config`; nothing runs until [`Vmm::run`].
    pub fn new(config: &ValidConfig, metrics: Arc<Metrics>) -> Result<Vmm, VmmError> {
        let kvm = open_kvm()?;
        metrics.phase_done("kvm_open");
        let mem = create_guest_memory(config.memory_bytes)?;
        metrics.set_guest_ranges(host_ranges(&mem));
        metrics.phase_done("guest_memory");
        let vm = create_vm(&kvm, &mem)?;
        metrics.phase_done("vm_create");
        let exit = ExitSignal::new().map_err(io_err("create exit event"))?;

        let LegacyDevices {
            pio,
            mut mmio,
            serial,
        } = LegacyDevices::new(&vm, &mem, &config.serial, &exit, &metrics)?;
        let mut event_manager = EventManager::<Subscriber>::new().map_err(VmmError::EventLoop)?;
        let mut slots = VirtioSlots::new(&vm, &mem, &mut mmio, &mut event_manager);
        slots.attach_all(config, &metrics)?;
        let device_args = slots.kernel_args;
        metrics.phase_done("devices");

        let cmdline = insert_kernel_args(&config.cmdline, &device_args);
        let initrd = config.initrd.as_ref().map(|(p, s)| (p.as_path(), *s));
        let boot = load_guest(&mem, &config.kernel, initrd, &cmdline, config.vcpus)?;
        metrics.phase_done("load_guest");
        let vcpus = create_vcpus(&kvm, &vm, &mem, config.vcpus, boot)?;
        vcpus
            .iter()
            .for_each(|v| metrics.add_vcpu(v.exit_counters().clone()));
        metrics.phase_done("vcpus");

        event_manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher { exit: exit.clone() })));
        if config.serial.stdin {
            event_manager.add_subscriber(Arc::new(Mutex::new(StdinInput::new(serial.clone()))));
        }
        let ctx = ExitContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit,
            metrics: metrics.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        Ok(Vmm {
            vcpus,
            _vm: vm,
            ctx,
            serial,
            event_manager,
            metrics,
            seccomp: config.seccomp,
            #[cfg(feature = "attack-hooks")]
            cmdline: config.cmdline.clone(),
            _guest_memory: mem,
        })
    }

    /// Has the event loop rewrite the metrics file `out` every `interval` while the VM runs,
    /// and whenever [`crate::metrics::FLUSH_SIGNAL`] asks for it. Call before [`Vmm::run`]
    /// (the timerfd is created and armed here, before the seccomp filters).
    pub fn flush_metrics_to(
        &mut self,
        out: Arc<MetricsFile>,
        interval: Duration,
    ) -> Result<(), VmmError> {
        let flusher = MetricsFlusher::new(self.metrics.clone(), out, interval)
            .map_err(io_err("set up the metrics flush"))?;
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(flusher)));
        Ok(())
    }

    /// Starts the vCPUs and serves events until the guest stops; then stops every vCPU.
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        install_kick_handler().map_err(io_err("install vCPU kick handler"))?;
        self.ctx
            .exit
            .install_stop_signals()
            .map_err(io_err("install stop signal handlers"))?;
        let handles = self.start_filtered()?;
        #[cfg(feature = "attack-hooks")]
        let mut attack = crate::attack::Attack::from_cmdline(&self.cmdline);
        let result = loop {
            if let Some(reason) = self.ctx.exit.reason() {
                break Ok(reason);
            }
            #[cfg(feature = "attack-hooks")]
            if let Some(a) = attack.as_mut() {
                a.poll(&self.metrics);
            }
            if let Err(e) = self.event_manager.run_with_timeout(500) {
                break Err(VmmError::EventLoop(e));
            }
        };
        let stuck = stop_vcpus(handles, &self.ctx.stop, VCPU_STOP_TIMEOUT);
        if stuck > 0 {
            tracing::warn!("{stuck} vCPU thread(s) did not stop in time");
        }
        lock(&self.serial).flush();
        result
    }

    /// Starts the vCPU threads and installs every thread's seccomp filter before any of them
    /// enters the guest: each vCPU installs its own, then waits at the [`StartGate`] that the
    /// main thread opens once its own filter is in.
    fn start_filtered(&mut self) -> Result<Vec<JoinHandle<()>>, VmmError> {
        if self.seccomp == SeccompMode::Off {
            tracing::warn!(
                "seccomp filters are off (debug configuration): the VMM is not confined"
            );
        } else {
            seccomp::install_sigsys_handler().map_err(JailError::from)?;
        }
        let gate = Arc::new(StartGate::default());
        let mut handles: Vec<JoinHandle<()>> = Vec::new();
        let mut failed = None;
        for vcpu in std::mem::take(&mut self.vcpus) {
            match vcpu.spawn(self.ctx.clone(), self.seccomp, gate.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failed = Some(VmmError::from(e));
                    break;
                }
            }
        }
        if failed.is_none() {
            failed = seccomp::install(ThreadKind::Vmm, self.seccomp)
                .err()
                .map(|e| JailError::from(e).into());
        }
        gate.open(failed.is_none());
        match failed {
            None => Ok(handles),
            Some(e) => {
                stop_vcpus(handles, &self.ctx.stop, VCPU_STOP_TIMEOUT);
                Err(e)
            }
        }
    }

    /// The boot metrics of this VM.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
