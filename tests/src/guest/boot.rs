//! One-shot boots of a [`GuestImage`] under `moat-vmm`, or, as the benchmarks' baseline, under
//! qemu's `microvm` machine on the same KVM; and [`AgentVm`], the agent image left running
//! with its hybrid vsock socket for a client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use moat_vmm::metrics::monotonic_ns;

use super::{GuestError, GuestImage, INIT_MARKER};
use crate::process::{KillOnDrop, WaitOutcome};

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct BootSpec {
    /// Kernel and initramfs.
    pub image: GuestImage,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Arguments appended to the kernel command line (e.g. `-- exit` for the init).
    pub append: String,
    /// Kill the VM after this long.
    pub timeout: Duration,
    /// Extra `moat-vmm` arguments (e.g. `--block`, `--no-rng`).
    pub extra_args: Vec<String>,
}

impl BootSpec {
    /// 1 vCPU, 256 MiB, no extra arguments, 60 s timeout.
    pub fn new(image: GuestImage) -> BootSpec {
        BootSpec {
            image,
            vcpus: 1,
            memory_mib: 256,
            append: String::new(),
            timeout: Duration::from_secs(60),
            extra_args: Vec::new(),
        }
    }
}

/// The outcome of one boot.
#[derive(Debug, Default)]
pub struct BootRun {
    /// Exit status of the VMM (`None` when killed on timeout).
    pub status: Option<i32>,
    /// Whole serial console output.
    pub serial: String,
    /// VMM stderr.
    pub stderr: String,
    /// Metrics JSON written by moat-vmm (`Null` for qemu).
    pub metrics: serde_json::Value,
    /// Time from spawning the process to the /init marker on the console.
    pub to_marker: Option<Duration>,
    /// Resident set (VmRSS, KiB) of the whole process when the marker appeared.
    pub rss_kib_at_marker: Option<u64>,
    /// CLOCK_MONOTONIC right before the spawn, ns (to compare with the VMM's own clock).
    pub spawn_monotonic_ns: u64,
}

impl BootRun {
    /// True if the guest reached /init and the VMM exited 0.
    pub fn reached_init(&self) -> bool {
        self.status == Some(0) && self.serial.contains(INIT_MARKER)
    }

    /// Microseconds from spawn to moat's first KVM_RUN (moat only).
    pub fn spawn_to_first_run_us(&self) -> Option<u64> {
        let start = self.metrics["vmm_start_monotonic_ns"].as_u64()?;
        let first = self.metrics["first_kvm_run_us"].as_u64()?;
        Some(start.saturating_sub(self.spawn_monotonic_ns) / 1000 + first)
    }

    /// Microseconds from spawn to the boot-timer write (moat only).
    pub fn spawn_to_init_us(&self) -> Option<u64> {
        let start = self.metrics["vmm_start_monotonic_ns"].as_u64()?;
        let init = self.metrics["guest_init_us"].as_u64()?;
        Some(start.saturating_sub(self.spawn_monotonic_ns) / 1000 + init)
    }

    /// A one-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- serial ---\n{}\n--- stderr ---\n{}\n--- metrics ---\n{}",
            self.status, self.serial, self.stderr, self.metrics
        )
    }
}

/// The moat-vmm command line for `spec`: kernel, initramfs, vCPUs, memory, `--append` and
/// the extra arguments.
fn vmm_command(vmm_bin: &Path, spec: &BootSpec) -> Command {
    let mut cmd = Command::new(vmm_bin);
    cmd.arg("--kernel")
        .arg(&spec.image.kernel)
        .arg("--initrd")
        .arg(&spec.image.initrd)
        .args(["--vcpus", &spec.vcpus.to_string()])
        .args(["--memory-mib", &spec.memory_mib.to_string()])
        .args(&spec.extra_args);
    if !spec.append.is_empty() {
        cmd.arg(format!("--append={}", spec.append));
    }
    cmd
}

/// Boots `spec` under `moat-vmm` (binary `vmm_bin`), serial on stdout.
pub fn boot_moat(vmm_bin: &Path, spec: &BootSpec) -> Result<BootRun, GuestError> {
    let scratch = tempfile::Builder::new()
        .prefix("moat-boot-")
        .tempdir()
        .map_err(|source| GuestError::Spawn {
            what: "scratch dir".into(),
            source,
        })?;
    let metrics = scratch.path().join("metrics.json");
    let mut cmd = vmm_command(vmm_bin, spec);
    cmd.arg("--metrics-file").arg(&metrics);
    let mut run = run_console(cmd, spec.timeout, None)?;
    run.metrics = std::fs::read(&metrics)
        .ok()
        .and_then(|m| serde_json::from_slice(&m).ok())
        .unwrap_or_default();
    Ok(run)
}

/// Boots `spec` under qemu's microvm machine with KVM (the benchmark baseline), using the
/// same kernel command line moat uses by default; stops it at the /init marker.
pub fn boot_qemu(spec: &BootSpec) -> Result<BootRun, GuestError> {
    boot_qemu_until(spec, INIT_MARKER, &[])
}

/// [`boot_qemu`] that stops qemu when `marker` appears on the console (qemu's microvm has no
/// i8042, so the guest's reboot never ends it) or when it exits by itself (with `-no-reboot`,
/// a guest reset or triple fault ends qemu). qemu's `cpu_reset` log (the vCPU state at each
/// reset) goes to [`BootRun::stderr`]; `to_marker` times `marker`. `extra` are more qemu
/// arguments (devices: `spec.extra_args` are moat-vmm's).
pub fn boot_qemu_until(
    spec: &BootSpec,
    marker: &'static str,
    extra: &[String],
) -> Result<BootRun, GuestError> {
    let cmdline = format!(
        "console=ttyS0 reboot=k,c,panic_w panic=-1 pci=off tsc=reliable \
         no_timer_check noreplace-smp cryptomgr.notests rcupdate.rcu_expedited=1 \
         8250.nr_uarts=1 quiet {}",
        spec.append
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "kvm", "-cpu", "host", "-M", "microvm,acpi=off"])
        .args(["-smp", &spec.vcpus.to_string()])
        .args(["-m", &format!("{}M", spec.memory_mib)])
        .arg("-kernel")
        .arg(&spec.image.kernel)
        .arg("-initrd")
        .arg(&spec.image.initrd)
        .args(["-append", cmdline.trim()])
        .args([
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
            "-d",
            "cpu_reset",
        ])
        .args(extra);
    run_console(cmd, spec.timeout, Some(marker))
}

/// A moat-vmm process running the agent image with a hybrid vsock socket at `<dir>/vm.sock`,
/// console in `<dir>/console`, VMM stderr in `<dir>/vmm.stderr`; killed on drop.
pub struct AgentVm {
    /// The VMM process.
    pub child: std::process::Child,
    /// The hybrid vsock unix socket.
    pub uds: PathBuf,
    /// The guest console file.
    pub console: PathBuf,
}

impl AgentVm {
    /// Starts moat-vmm (`vmm_bin`) on `spec.image` with vsock CID 3 and `spec.extra_args`;
    /// `spec.append` goes on the kernel command line.
    pub fn start(vmm_bin: &Path, spec: &BootSpec, dir: &Path) -> Result<AgentVm, GuestError> {
        let uds = dir.join("vm.sock");
        let console = dir.join("console");
        let mut cmd = vmm_command(vmm_bin, spec);
        cmd.arg(format!("--vsock=3,{}", uds.display()))
            .arg(format!("--serial=file:{}", console.display()))
            .stdin(Stdio::null());
        if let Ok(log) = std::fs::File::create(dir.join("vmm.stderr")) {
            cmd.stderr(log);
        }
        let child = cmd.spawn().map_err(|source| GuestError::Spawn {
            what: vmm_bin.display().to_string(),
            source,
        })?;
        Ok(AgentVm {
            child,
            uds,
            console,
        })
    }

    /// Stops the VMM with SIGTERM and returns its exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().ok()?.code()
    }

    /// The guest console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for AgentVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with the guest console on its stdout, timing the /init marker; with
/// `stop_at` the process is killed once that marker is seen (status stays `None`), and that
/// marker is the one timed.
fn run_console(
    mut cmd: Command,
    timeout: Duration,
    stop_at: Option<&'static str>,
) -> Result<BootRun, GuestError> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_monotonic_ns = monotonic_ns();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|source| GuestError::Spawn { what, source })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut child = KillOnDrop::new(child);
    let (tx, rx) = mpsc::channel();
    let timed = stop_at.unwrap_or(INIT_MARKER);
    let reader = std::thread::spawn(move || read_serial(stdout, timed, start, pid, tx));
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let mut marker = None;
    if stop_at.is_some() {
        marker = rx.recv_timeout(timeout).ok();
        child.kill();
    }
    let status = match child.wait_timeout(timeout) {
        Ok(WaitOutcome::Exited(st)) => st.code(),
        _ => {
            child.kill();
            None
        }
    };
    let serial = reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if status.is_none() && marker.is_none() {
        stderr.push_str(&format!("\n[killed after {timeout:?} timeout]"));
    }
    let (to_marker, rss) = marker
        .or_else(|| rx.try_recv().ok())
        .map_or((None, None), |(t, r)| (Some(t), r));
    Ok(BootRun {
        status,
        serial,
        stderr,
        metrics: serde_json::Value::Null,
        to_marker,
        rss_kib_at_marker: rss,
        spawn_monotonic_ns,
    })
}

/// Reads the console (`stdout` of process `pid`, spawned at `start`) to its end; sends the
/// time and the process's RSS when `timed` appears (the sender drops when the console ends,
/// so a waiter for the marker wakes up when the process exits without it).
fn read_serial(
    stdout: Option<ChildStdout>,
    timed: &str,
    start: Instant,
    pid: u32,
    marker: mpsc::Sender<(Duration, Option<u64>)>,
) -> String {
    let mut serial = String::new();
    if let Some(out) = stdout {
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.contains(timed) {
                let _ = marker.send((start.elapsed(), vm_rss_kib(pid)));
            }
            serial.push_str(&line);
            serial.push('\n');
        }
    }
    serial
}

/// VmRSS of process `pid`, KiB.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
