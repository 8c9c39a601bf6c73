//! A pod's microVM: `moat-vmm` as a child process of the shim, started from a typed
//! [`moat_vmm_config::VmConfig`] written to `<pod>/vm.json` ([`spawn`]), its console
//! forwarded to the shim's log and its exit observed by a keeper thread ([`keeper`]), and the
//! agent client once the guest answers ([`agent`]: deadlines, caps and reconnection against a
//! hostile guest).
//!
//! The VMM gets `PR_SET_PDEATHSIG(SIGKILL)` bound to the keeper thread, which lives exactly
//! as long as the VMM: a shim killed with SIGKILL takes its VMs with it, and the keeper's
//! `waitpid` reports the VMM's death (to fail the pod's tasks) without racing any other
//! reaper. [`leftover`] finds and kills a VMM whose shim died anyway.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use moat_vmm_config::status::describe;

use crate::config::Config;
use crate::host::cgroup::{CgroupError, PodAccounting, PodCgroup, ProcsFiles};
use crate::pod::layout::PodDir;
use crate::util::lock;

pub mod agent;
pub mod console_log;
pub mod keeper;
pub mod leftover;
pub mod spawn;

pub use agent::{Agent, AgentAddress, Deadlines};
pub use leftover::{kill_foreign, leftover_vmm};

use console_log::RotatingLog;
use keeper::{ConsoleTail, ExitCell};

/// The guest's vsock CID (any value above 2 works: each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;
/// The virtio-fs tag of the pod's share; the agent mounts it at [`GUEST_SHARE_DIR`].
pub const SHARE_TAG: &str = "pod";
/// Where the guest sees the pod's share.
pub const GUEST_SHARE_DIR: &str = "/run/moat/shares/pod";

/// Errors starting a pod VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The VM configuration built from the moat config is refused by moat-vmm's validation.
    #[error("moat-vmm configuration (from the moat config's [vm]): {0}")]
    Config(#[from] moat_vmm_config::ConfigError),
    /// The VM configuration could not be written into the pod directory.
    #[error("writing {path}: {source}")]
    WriteConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pod's host cgroup could not be made ready for the VMM.
    #[error("the pod's host cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    /// The VMM could not be started.
    #[error("starting {vmm}: {source}")]
    Spawn {
        /// The binary.
        vmm: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM exited before the agent answered.
    #[error(
        "moat-vmm exited ({status}) before the agent answered; last console lines:\n{console}"
    )]
    Exited {
        /// How it ended.
        status: String,
        /// The tail of the guest console.
        console: String,
    },
    /// The agent did not answer in time.
    #[error("the agent did not answer within {secs} s: {why}; last console lines:\n{console}")]
    Timeout {
        /// The configured timeout.
        secs: u64,
        /// The client's last error.
        why: String,
        /// The tail of the guest console.
        console: String,
    },
}

/// The pod's NIC: the TAP queue the VMM inherits, and the guest's MAC and MTU.
pub struct VmNic {
    /// The TAP queue fd (the shim's copy is closed once the VMM runs).
    pub tap: OwnedFd,
    /// The guest NIC's MAC.
    pub mac: [u8; 6],
    /// The guest NIC's MTU.
    pub mtu: u32,
}

/// How the VMM ended: an exit code, or 128 + the signal that killed it
/// ([`moat_vmm_config::status`]).
pub type VmmStatus = i32;

/// What a pod VM was started with, and how long it took to come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// When the VMM was spawned.
    pub started: SystemTime,
    /// From spawning the VMM to the agent's first answer.
    pub boot: Duration,
    /// Whether the guest's debug console is on.
    pub debug_console: bool,
    /// The metrics file the VMM rewrites.
    pub metrics_file: PathBuf,
}

impl VmInfo {
    /// The VM about to be spawned with `vm_config` (its boot time still zero).
    fn spawning(cfg: &Config, dir: &PodDir, vm_config: &moat_vmm_config::VmConfig) -> VmInfo {
        VmInfo {
            vcpus: u32::from(vm_config.vcpus),
            memory_mib: vm_config.memory_mib,
            started: SystemTime::now(),
            boot: Duration::ZERO,
            debug_console: cfg.debug.console,
            metrics_file: dir.vmm_metrics(),
        }
    }
}

/// A running pod VM.
pub struct Vm {
    /// The agent inside (untrusted: see [`agent`]).
    pub client: Agent,
    /// Its size and boot.
    pub info: VmInfo,
    pid: i32,
    exit: Arc<ExitCell>,
    /// The pod's host cgroup the VMM runs in, removed once the VMM is gone.
    cgroup: Mutex<Option<PodCgroup>>,
}

impl Vm {
    /// Boots a VM for the pod in `dir` and waits until the agent answers; the VMM runs in the
    /// pod's host cgroup with its `oom_score_adj` (`accounting`). `on_exit` runs (on the
    /// keeper thread) when the VMM process ends, whoever ended it.
    pub fn start(
        cfg: &Config,
        dir: &PodDir,
        nic: Option<VmNic>,
        accounting: &PodAccounting,
        on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
    ) -> Result<Vm, VmError> {
        spawn::jail_dirs(dir)?;
        warn_debug(cfg);
        let vm_config = spawn::vm_config(cfg, dir, nic.as_ref());
        vm_config.validate()?;
        spawn::write_config(&vm_config, &dir.vm_config())?;
        let vmm = cfg.vmm_binary(std::env::current_exe().ok().as_deref());
        let (cgroup, procs) = spawn::pod_cgroup(dir, accounting)?;
        let release = |cgroup: Option<PodCgroup>| cgroup.map(PodCgroup::remove);
        // The TAP queue and the cgroup.procs files stay open in the shim until the VMM is
        // spawned; only the child's copy of the TAP loses close-on-exec.
        let child = spawn::ChildSetup {
            tap_fd: nic.as_ref().map(|n| n.tap.as_raw_fd()),
            cgroup_procs: procs.as_ref().map(ProcsFiles::fds).unwrap_or_default(),
            oom_score_adj: accounting.oom_score_adj,
        };
        let cmd = spawn::command(&vmm, &dir.vm_config(), &cfg.runtime.vmm_log_level, child);
        let mut info = VmInfo::spawning(cfg, dir, &vm_config);
        let clock = Instant::now();
        let started = keeper::start(cmd, &vmm, console_sink(cfg, dir), on_exit);
        drop((nic, procs));
        let (pid, exit, tail) = match started {
            Ok(s) => s,
            Err(e) => {
                let e = spawn::in_cgroup(e, cgroup.as_ref());
                release(cgroup);
                return Err(e);
            }
        };
        spawned(dir, accounting, pid);
        // On failure the VMM is gone (exited, or killed and reaped).
        let client = match wait_for_agent(cfg, dir, pid, &exit, &tail) {
            Ok(c) => c,
            Err(e) => {
                release(cgroup);
                return Err(e);
            }
        };
        info.boot = clock.elapsed();
        crate::plog!(Info, "moat-vmm {pid}: agent answered after {:?}", info.boot);
        Ok(Vm {
            client,
            info,
            pid,
            exit,
            cgroup: Mutex::new(cgroup),
        })
    }

    /// The VMM's process id: the pid containerd is told for every process of the pod (as
    /// Kata reports its hypervisor's), never one the guest chose.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the VMM (its jail's supervisor forwards it), unless it has exited.
    pub fn signal(&self, signal: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: kill(2) of our own child (the keeper reaps it, after which `exited()` is
            // set and we never signal again), as in `stop_vmm`.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// How the VMM ended, if it has.
    pub fn exited(&self) -> Option<VmmStatus> {
        self.exit.status()
    }

    /// Stops the VMM: SIGTERM, then SIGKILL after `grace`; returns once it is reaped and its
    /// host cgroup removed.
    pub fn stop(&self, grace: Duration) -> VmmStatus {
        let status = self.stop_vmm(grace);
        if let Some(cgroup) = lock(&self.cgroup).take() {
            cgroup.remove();
        }
        status
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the VMM is reaped.
    fn stop_vmm(&self, grace: Duration) -> VmmStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        // SAFETY: kill(2) of our own unreaped child (the keeper reaps it, after which
        // `exited()` is set and we never signal again).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if let Some(s) = self.exit.wait(Some(grace)) {
            return s;
        }
        crate::plog!(
            Warn,
            "moat-vmm {} ignored SIGTERM for {grace:?}; killing it",
            self.pid
        );
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.exit.wait(None).unwrap_or(128 + libc::SIGKILL)
    }
}

/// Where the guest console goes: the log (`guest_console`) and the pod's console file
/// (`console_log_kib`; a file that cannot be made is logged and left out).
fn console_sink(cfg: &Config, dir: &PodDir) -> keeper::ConsoleSink {
    let kib = cfg.runtime.console_log_kib;
    let file = (kib > 0)
        .then(|| RotatingLog::create(&dir.console_log(), kib << 10))
        .and_then(|r| {
            r.map_err(|e| crate::plog!(Warn, "{}: {e}", dir.console_log().display()))
                .ok()
        });
    keeper::ConsoleSink {
        forward: cfg.runtime.guest_console,
        file,
    }
}

/// After the spawn: checks the VMM's `oom_score_adj` and records its pid.
fn spawned(dir: &PodDir, accounting: &PodAccounting, pid: i32) {
    if let Some(adj) = &accounting.oom_score_adj {
        adj.check(pid);
    }
    if let Err(e) = std::fs::write(dir.vmm_pid(), pid.to_string()) {
        crate::plog!(Warn, "writing {}: {e}", dir.vmm_pid().display());
    }
}

/// Warns about every `[debug]` switch that is on.
fn warn_debug(cfg: &Config) {
    if cfg.debug.no_seccomp {
        crate::plog!(
            Warn,
            "[debug] no_seccomp: moat-vmm runs without its seccomp filters"
        );
    }
    if cfg.debug.no_jail {
        crate::plog!(
            Warn,
            "[debug] no_jail: moat-vmm runs in the host's namespaces and root"
        );
    }
    if cfg.debug.console {
        crate::plog!(
            Warn,
            "[debug] console: the pod's guest serves a root debug shell (moat exec)"
        );
    }
}

/// Connects to the agent over the VMM's hybrid vsock socket, retrying while the VMM lives and
/// the boot timeout has not passed; kills the VMM when it does.
fn wait_for_agent(
    cfg: &Config,
    dir: &PodDir,
    pid: i32,
    exit: &ExitCell,
    tail: &ConsoleTail,
) -> Result<Agent, VmError> {
    let deadline = Instant::now() + Duration::from_secs(cfg.vm.boot_timeout_secs);
    let address = AgentAddress::HybridVsock(dir.vsock());
    loop {
        if let Some(status) = exit.status() {
            return Err(VmError::Exited {
                status: describe(status),
                console: tail.text(),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match Agent::connect(
            address.clone(),
            left.min(Duration::from_secs(2)),
            Deadlines::DEFAULT,
        ) {
            Ok(agent) => return Ok(agent),
            Err(e) if Instant::now() >= deadline => {
                // SAFETY: plain kill(2) of our own child, still unreaped (the keeper waits).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                exit.wait(None);
                return Err(VmError::Timeout {
                    secs: cfg.vm.boot_timeout_secs,
                    why: e.to_string(),
                    console: tail.text(),
                });
            }
            // Not up yet (or still booting): try again while the VMM lives.
            Err(_) => continue,
        }
    }
}
