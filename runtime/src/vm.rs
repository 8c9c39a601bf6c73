//! A pod's microVM: `moat-vmm` as a child process of the shim, its console forwarded to the
//! shim's log, and the agent client once the guest answers.
//!
//! The VMM is spawned by a keeper thread that lives exactly as long as the VMM: the VMM
//! gets `PR_SET_PDEATHSIG(SIGKILL)` bound to that thread, so a shim killed with SIGKILL takes
//! its VMs with it, and the keeper's `waitpid` reports the VMM's death (to fail the pod's
//! tasks) without racing any other reaper.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use moat_agent_protocol::{AgentClient, AGENT_VSOCK_PORT};

use crate::config::Config;
use crate::layout::PodDir;

/// The guest's vsock CID (any value above 2 works: each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;
/// The virtio-fs tag of the pod's share; the agent mounts it at [`GUEST_SHARE_DIR`].
pub const SHARE_TAG: &str = "pod";
/// Where the guest sees the pod's share.
pub const GUEST_SHARE_DIR: &str = "/run/moat/shares/pod";
/// The longest guest console line forwarded to the log; the rest of the line is dropped.
const MAX_CONSOLE_LINE: usize = 4096;

/// Errors starting a pod VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file the VM needs is missing.
    #[error("{what} {path} does not exist (set it in the moat config)")]
    Missing {
        /// Which setting.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
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

/// The pod's NIC: the TAP queue the VMM inherits and its `--net fd=N,...` argument.
pub struct VmNic {
    /// The TAP queue fd (the shim's copy is closed once the VMM runs).
    pub tap: OwnedFd,
    /// The VMM argument naming it.
    pub arg: String,
}

/// How the VMM ended: an exit code, or 128 + the signal that killed it.
pub type VmmStatus = i32;

/// The VMM's exit, shared between the keeper thread and everyone waiting for it.
#[derive(Default)]
struct ExitCell {
    status: Mutex<Option<VmmStatus>>,
    cond: Condvar,
}

/// The last console lines, kept for error messages.
#[derive(Default)]
struct ConsoleTail(Mutex<std::collections::VecDeque<String>>);

impl ConsoleTail {
    const LINES: usize = 30;
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == Self::LINES {
            q.pop_front();
        }
        q.push_back(line);
    }
    fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A running pod VM.
pub struct Vm {
    /// The agent inside.
    pub client: AgentClient,
    pid: i32,
    exit: Arc<ExitCell>,
}

impl Vm {
    /// Boots a VM for the pod in `dir` and waits until the agent answers. `on_exit` runs (on
    /// the keeper thread) when the VMM process ends, whoever ended it.
    pub fn start(
        cfg: &Config,
        dir: &PodDir,
        nic: Option<VmNic>,
        on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
    ) -> Result<Vm, VmError> {
        for (what, path) in [("vm.kernel", &cfg.vm.kernel), ("vm.initrd", &cfg.vm.initrd)] {
            if !path.is_file() {
                return Err(VmError::Missing {
                    what,
                    path: path.clone(),
                });
            }
        }
        let vmm = cfg.vmm_binary(std::env::current_exe().ok().as_deref());
        let mut cmd = Command::new(&vmm);
        cmd.arg("--kernel")
            .arg(&cfg.vm.kernel)
            .arg("--initrd")
            .arg(&cfg.vm.initrd)
            .args(["--vcpus", &cfg.vm.vcpus.to_string()])
            .args(["--memory-mib", &cfg.vm.memory_mib.to_string()])
            .arg(format!("--vsock={GUEST_CID},{}", dir.vsock().display()))
            .arg(format!("--share={SHARE_TAG}={}", dir.share().display()))
            .arg(format!(
                "--append=moat.share={SHARE_TAG} {}",
                cfg.vm.kernel_params
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The TAP queue stays open in the shim until the VMM is spawned (the `VmNic` lives
        // through this function); only the child's copy loses close-on-exec.
        let tap_fd = nic.as_ref().map(|n| n.tap.as_raw_fd());
        if let Some(n) = &nic {
            cmd.arg(&n.arg);
        }
        // SAFETY: prctl, setsid and fcntl are async-signal-safe; nothing else runs between
        // fork and exec. The VMM leaves the shim's session so a terminal's signals don't
        // reach it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setsid();
                if let Some(fd) = tap_fd {
                    crate::network::inheritable(fd)?;
                }
                Ok(())
            });
        }
        let exit = Arc::new(ExitCell::default());
        let tail = Arc::new(ConsoleTail::default());
        let forward = cfg.runtime.guest_console;
        let (tx, rx) = mpsc::channel();
        {
            let exit = exit.clone();
            let tail = tail.clone();
            let keeper_vmm = vmm.clone();
            std::thread::Builder::new()
                .name("vmm-keeper".into())
                .spawn(move || keeper(cmd, keeper_vmm, tx, exit, tail, forward, on_exit))
                .map_err(|source| VmError::Spawn {
                    vmm: vmm.clone(),
                    source,
                })?;
        }
        let spawned = rx.recv();
        drop(nic);
        let pid = match spawned {
            Ok(Ok(pid)) => pid,
            Ok(Err(source)) => return Err(VmError::Spawn { vmm, source }),
            Err(_) => {
                return Err(VmError::Spawn {
                    vmm,
                    source: std::io::Error::other("the VMM keeper thread died"),
                })
            }
        };
        if let Err(e) = std::fs::write(dir.vmm_pid(), pid.to_string()) {
            log::warn!("writing {}: {e}", dir.vmm_pid().display());
        }
        let deadline = Instant::now() + Duration::from_secs(cfg.vm.boot_timeout_secs);
        let kill = |exit: &ExitCell| {
            // SAFETY: plain kill(2) of our own child, still unreaped (the keeper waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_exit(exit, None);
        };
        loop {
            if let Some(status) = *exit.status.lock().unwrap_or_else(|p| p.into_inner()) {
                return Err(VmError::Exited {
                    status: describe(status),
                    console: tail.text(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match AgentClient::connect_hybrid_vsock(
                dir.vsock(),
                AGENT_VSOCK_PORT,
                left.min(Duration::from_secs(2)),
            ) {
                Ok(client) => {
                    return Ok(Vm {
                        client: client.with_call_timeout(Duration::from_secs(30)),
                        pid,
                        exit,
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    kill(&exit);
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

    /// The VMM's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How the VMM ended, if it has.
    pub fn exited(&self) -> Option<VmmStatus> {
        *self.exit.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the VMM: SIGTERM, then SIGKILL after `grace`; returns once it is reaped.
    pub fn stop(&self, grace: Duration) -> VmmStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        // SAFETY: kill(2) of our own unreaped child (the keeper reaps it, after which
        // `exited()` is set and we never signal again).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if let Some(s) = wait_exit(&self.exit, Some(grace)) {
            return s;
        }
        log::warn!(
            "moat-vmm {} ignored SIGTERM for {grace:?}; killing it",
            self.pid
        );
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        wait_exit(&self.exit, None).unwrap_or(128 + libc::SIGKILL)
    }
}

/// Waits for the VMM's exit, at most `timeout` (forever with `None`).
fn wait_exit(exit: &ExitCell, timeout: Option<Duration>) -> Option<VmmStatus> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut status = exit.status.lock().unwrap_or_else(|p| p.into_inner());
    while status.is_none() {
        match deadline {
            None => status = exit.cond.wait(status).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                status = exit
                    .cond
                    .wait_timeout(status, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
    *status
}

/// "exit status N" (with what moat-vmm's statuses 3 and 4 mean) or "killed by signal N".
pub fn describe(status: VmmStatus) -> String {
    match status {
        s if s > 128 => format!("killed by signal {}", s - 128),
        // moat-vmm's exit statuses (vmm/src/exit.rs).
        3 => "exit status 3: the guest panicked".into(),
        4 => "exit status 4: the guest crashed".into(),
        s => format!("exit status {s}"),
    }
}

/// The keeper thread: spawns the VMM, reports its pid, forwards its output, reaps it.
fn keeper(
    mut cmd: Command,
    vmm: PathBuf,
    tx: mpsc::Sender<std::io::Result<i32>>,
    exit: Arc<ExitCell>,
    tail: Arc<ConsoleTail>,
    forward: bool,
    on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
) {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let pid = child.id() as i32;
    let _ = tx.send(Ok(pid));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, "guest", tail.clone(), forward));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, "moat-vmm", tail.clone(), true));
    }
    let status = match child.wait() {
        Ok(s) => s
            .code()
            .or_else(|| s.signal().map(|n| 128 + n))
            .unwrap_or(255),
        Err(e) => {
            log::error!("waiting for {} (pid {pid}): {e}", vmm.display());
            255
        }
    };
    for p in pumps {
        let _ = p.join();
    }
    log::info!("moat-vmm (pid {pid}) ended: {}", describe(status));
    *exit.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    exit.cond.notify_all();
    on_exit(status);
}

/// Forwards lines of `r` to the log (prefixed by `who`) and into `tail`.
fn pump(
    r: impl Read + Send + 'static,
    who: &'static str,
    tail: Arc<ConsoleTail>,
    forward: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r
                .by_ref()
                .take(MAX_CONSOLE_LINE as u64)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if forward {
                log::info!("{who}: {line}");
            }
            tail.push(line);
        }
    })
}

/// The `moat-vmm` of a pod directory, from its pid file, if that process still runs and is
/// that pod's VMM (its command line names the pod's vsock socket).
pub fn leftover_vmm(dir: &PodDir) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.vmm_pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.vsock().to_string_lossy().into_owned();
    let text = String::from_utf8_lossy(&cmdline);
    text.contains(&needle).then_some(pid)
}

/// SIGKILLs a VMM that is not our child and waits (up to `timeout`) until it is gone.
pub fn kill_foreign(pid: i32, timeout: Duration) -> bool {
    // SAFETY: kill(2); the pid was just checked to be this pod's VMM.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            // A zombie (state Z) waits for its parent only.
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_statuses_are_described() {
        assert_eq!(describe(0), "exit status 0");
        assert_eq!(describe(4), "exit status 4: the guest crashed");
        assert_eq!(describe(3), "exit status 3: the guest panicked");
        assert_eq!(describe(128 + 9), "killed by signal 9");
    }
}
