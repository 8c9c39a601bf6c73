//! vCPUs: boot-time register/CPUID/MSR/LAPIC setup and the KVM_RUN loop that dispatches
//! guest I/O to the buses and turns terminal exits into an `ExitReason`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch;
use crate::bus::Bus;
use crate::config::SeccompMode;
use crate::exit::{ExitReason, ExitSignal};
use crate::jail::seccomp::{self, ThreadKind};
use crate::metrics::{ExitKind, Metrics, VcpuExitCounters};

/// Holds the vCPU threads until the main thread says whether they may enter the guest (once
/// every thread's seccomp filter is in) or must end.
#[derive(Debug, Default)]
pub struct StartGate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    /// Lets the waiting threads go on (`go`) or end (`!go`).
    pub fn open(&self, go: bool) {
        *crate::util::lock(&self.state) = Some(go);
        self.opened.notify_all();
    }

    /// Waits until [`StartGate::open`]; whether to go on.
    pub fn wait(&self) -> bool {
        let state = crate::util::lock(&self.state);
        let state = self
            .opened
            .wait_while(state, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        state.unwrap_or(false)
    }
}

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The CPUID table could not be built.
    #[error("vCPU {id}: {source}")]
    Cpuid {
        /// vCPU index.
        id: u8,
        /// What went wrong.
        source: arch::CpuidError,
    },
    /// Boot MSRs could not be set.
    #[error("vCPU {id}: {source}")]
    Msr {
        /// vCPU index.
        id: u8,
        /// What went wrong.
        source: arch::MsrError,
    },
    /// Registers, FPU or LAPIC could not be set.
    #[error("vCPU {id}: {source}")]
    Regs {
        /// vCPU index.
        id: u8,
        /// What went wrong.
        source: arch::RegsError,
    },
    /// The vCPU thread could not be started.
    #[error("vCPU {id}: cannot spawn thread: {source}")]
    Spawn {
        /// vCPU index.
        id: u8,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where the boot vCPU starts (PVH entry point and the start_info address in %rbx).
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    /// PVH 32-bit entry point of the kernel.
    pub entry: GuestAddress,
    /// Guest address of `hvm_start_info`.
    pub start_info: GuestAddress,
}

/// The devices a vCPU dispatches its exits to.
#[derive(Clone)]
pub struct ExitContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where a stop is requested.
    pub exit: ExitSignal,
    /// Boot metrics (first KVM_RUN).
    pub metrics: Arc<Metrics>,
    /// Set when the VMM wants every vCPU to return.
    pub stop: Arc<AtomicBool>,
}

/// One configured vCPU, ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    exits: Arc<VcpuExitCounters>,
}

impl Vcpu {
    /// Creates vCPU `id` (`tsc_deadline`: KVM offers the TSC-deadline timer) and sets CPUID, MSRs, FPU, LAPIC and (for vCPU 0) the PVH boot state.
    pub fn new(
        vm: &VmFd,
        id: u8,
        num_cpus: u8,
        supported_cpuid: &CpuId,
        tsc_deadline: bool,
        mem: &GuestMemoryMmap,
        boot: BootEntry,
    ) -> Result<Vcpu, VcpuError> {
        let kvm = |what| move |source| VcpuError::Kvm { id, what, source };
        let regs = |source| VcpuError::Regs { id, source };
        let fd = vm.create_vcpu(id.into()).map_err(kvm("create vCPU"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let mut cpuid = supported_cpuid.clone();
        arch::filter_cpuid(&mut cpuid, id, num_cpus, tsc_khz)
            .map_err(|source| VcpuError::Cpuid { id, source })?;
        arch::set_tsc_deadline(&mut cpuid, tsc_deadline);
        fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
        arch::setup_msrs(&fd).map_err(|source| VcpuError::Msr { id, source })?;
        if id == 0 {
            arch::setup_pvh_regs(&fd, boot.entry, boot.start_info).map_err(regs)?;
            arch::setup_pvh_sregs(mem, &fd).map_err(regs)?;
        }
        arch::setup_fpu(&fd).map_err(regs)?;
        arch::setup_lapic(&fd).map_err(regs)?;
        Ok(Vcpu {
            id,
            fd,
            exits: Arc::default(),
        })
    }

    /// This vCPU's exit counters (shared with the metrics).
    pub fn exit_counters(&self) -> &Arc<VcpuExitCounters> {
        &self.exits
    }

    /// Starts the run loop on its own thread: the thread installs its seccomp filter, waits
    /// until `gate` opens (every other thread has its filter), then enters the guest.
    pub fn spawn(
        self,
        ctx: ExitContext,
        seccomp: SeccompMode,
        gate: Arc<StartGate>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let filtered = seccomp::install(ThreadKind::Vcpu, seccomp);
                if !gate.wait() {
                    return;
                }
                match filtered {
                    Ok(()) => self.run_loop(ctx),
                    Err(e) => ctx
                        .exit
                        .request(ExitReason::VmmError(format!("vCPU {id}: {e}"))),
                }
            })
            .map_err(|source| VcpuError::Spawn { id, source })
    }

    fn run_loop(mut self, ctx: ExitContext) {
        if self.id == 0 {
            ctx.metrics.mark_first_kvm_run();
        }
        while !ctx.stop.load(Ordering::Acquire) {
            if let Some(reason) = self.run_once(&ctx) {
                ctx.exit.request(reason);
                return;
            }
        }
    }

    /// Runs the guest until one exit; returns a reason when the VM must stop.
    fn run_once(&mut self, ctx: &ExitContext) -> Option<ExitReason> {
        let id = self.id;
        let exit = self.fd.run();
        if let Ok(e) = &exit {
            self.exits.record(exit_kind(e));
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.pio.read(port.into(), data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.pio.write(port.into(), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) => {
                return Some(ExitReason::GuestCrash(format!(
                    "vCPU {id} triple fault (KVM_EXIT_SHUTDOWN); {}",
                    self.state_at_crash()
                )))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN
                    | kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::GuestShutdown,
                    other => ExitReason::GuestCrash(format!("system event {other}")),
                })
            }
            Ok(VcpuExit::Hlt) => {
                return Some(ExitReason::GuestCrash(format!(
                    "vCPU {id} halted outside the in-kernel irqchip"
                )))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(ExitReason::GuestCrash(format!(
                    "vCPU {id} entry failed: hardware reason {reason:#x} on cpu {cpu}"
                )))
            }
            Ok(VcpuExit::InternalError) => {
                return Some(ExitReason::GuestCrash(format!(
                    "vCPU {id}: KVM internal error (emulation failure)"
                )))
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                return Some(ExitReason::GuestCrash(format!(
                    "vCPU {id}: unexpected exit {other:?}"
                )))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Some(ExitReason::VmmError(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
        None
    }

    /// The vCPU's state as KVM left it at a crash exit, for the log: RIP, RSP, RFLAGS, the
    /// control registers, EFER, CS and the pending exception if any. On AMD, KVM re-initialises
    /// the VMCB on a shutdown intercept, so what it returns is the reset state; the line says so
    /// rather than pass it off as the guest's.
    fn state_at_crash(&self) -> String {
        let (regs, sregs) = (self.fd.get_regs(), self.fd.get_sregs());
        if let (Ok(r), Ok(s)) = (&regs, &sregs) {
            if r.rip == 0xfff0 && s.cs.selector == 0xf000 {
                return "KVM reset the vCPU at the shutdown (AMD): its state at the fault is lost"
                    .to_owned();
            }
        }
        let regs = match regs {
            Ok(r) => format!("rip={:#x} rsp={:#x} rflags={:#x}", r.rip, r.rsp, r.rflags),
            Err(e) => format!("KVM_GET_REGS failed: {e}"),
        };
        let sregs =
            match sregs {
                Ok(s) => {
                    format!(
                "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} cs.base={:#x} \
                 idt.base={:#x} idt.limit={:#x}",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.idt.base,
                s.idt.limit
            )
                }
                Err(e) => format!("KVM_GET_SREGS failed: {e}"),
            };
        let events = match self.fd.get_vcpu_events() {
            Ok(ev) if ev.exception.injected != 0 || ev.exception.pending != 0 => format!(
                " exception vector {} (error code {:#x})",
                ev.exception.nr, ev.exception.error_code
            ),
            Ok(_) => String::new(),
            Err(e) => format!(" KVM_GET_VCPU_EVENTS failed: {e}"),
        };
        format!("{regs} {sregs}{events}")
    }
}

/// How the metrics count `exit`.
fn exit_kind(exit: &VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoIn(..) => ExitKind::IoIn,
        VcpuExit::IoOut(..) => ExitKind::IoOut,
        VcpuExit::MmioRead(..) => ExitKind::MmioRead,
        VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
        VcpuExit::Hlt => ExitKind::Hlt,
        VcpuExit::Shutdown => ExitKind::Shutdown,
        VcpuExit::SystemEvent(..) => ExitKind::SystemEvent,
        VcpuExit::FailEntry(..) => ExitKind::FailEntry,
        VcpuExit::InternalError => ExitKind::InternalError,
        _ => ExitKind::Other,
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for the signal that kicks vCPUs out of KVM_RUN.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Stops every vCPU thread: sets `stop`, then signals each thread until it leaves KVM_RUN.
/// Returns the number of threads that did not stop within `timeout`.
pub fn stop_vcpus(handles: Vec<JoinHandle<()>>, stop: &AtomicBool, timeout: Duration) -> usize {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + timeout;
    let mut stuck = 0;
    for handle in handles {
        // Repeat the kick: one sent just before the thread entered KVM_RUN would be lost.
        while !handle.is_finished() && Instant::now() < deadline {
            let _ = handle.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(2));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            stuck += 1;
        }
    }
    stuck
}
