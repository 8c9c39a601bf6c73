//! Booting a real guest kernel: the default guest image (moat's vmlinux + a busybox test
//! initramfs) and one-shot runs of it under `moat-vmm` — or, as a baseline for benchmarks,
//! under qemu's `microvm` machine on the same KVM. Used by the boot test, the soak and the
//! bench, which run where KVM works (inside the test host here).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cpio::Archive;
use crate::guards::{KillOnDrop, WaitOutcome};
use moat_vmm::metrics::monotonic_ns;

/// Line the test /init prints once it runs (after signalling the boot timer).
pub const INIT_MARKER: &str = "moat-test-init: reached /init";

/// The test /init: mount devtmpfs, write the boot-timer magic (123 at 0xd000_0000), print
/// the marker, run what the kernel command line asks after `--`, and stop the VM.
/// `vsock-echo` (image from [`GuestImage::with_vsock_echo`]) serves an AF_VSOCK echo on port
/// [`VSOCK_ECHO_PORT`] (an optional second argument caps its write size) and keeps the VM
/// up for an hour, until the host stops it. `script PATH ARGS...` runs a shell script a
/// test packed into the image (see [`test_initramfs_with`]), then stops the VM.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox devmem 0xd0000000 8 123
echo "moat-test-init: reached /init"
echo "moat-test-init: args: $*; cmdline: $(/bin/busybox cat /proc/cmdline)"
case "$1" in
  hello) echo "hello from a microVM: $(/bin/busybox uname -sr), $(/bin/busybox nproc) vCPU" ;;
  exit) echo "moat-test-init: exiting PID 1"; exit 1 ;;
  info) echo "cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)"
        echo "mem=$(/bin/busybox grep MemTotal /proc/meminfo)"
        echo "clocksource=$(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)" ;;
  rng) echo "rng_current=$(/bin/busybox cat /sys/class/misc/hw_random/rng_current)"
       echo "rng_bytes=$(/bin/busybox dd if=/dev/hwrng bs=64 count=1 2>/dev/null | /bin/busybox od -An -tx1 | /bin/busybox tr -d ' \n')" ;;
  blk) echo "vda_sha256=$(/bin/busybox sha256sum /dev/vda | /bin/busybox cut -d' ' -f1)"
       echo "vda_serial=$(/bin/busybox cat /sys/block/vda/serial)"
       echo "ro=$(/bin/busybox cat /sys/block/vda/ro),$(/bin/busybox cat /sys/block/vdb/ro)"
       echo "moat-blk-marker" | /bin/busybox dd of=/dev/vdb bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null
       echo "vdb_write=$?"
       echo "moat-blk-marker" | /bin/busybox dd of=/dev/vda bs=512 count=1 conv=sync,notrunc,fsync 2>&1
       echo "vda_write=$?" ;;
  virtiofs) /bin/busybox mkdir -p /mnt
       /bin/busybox mount -t virtiofs moatfs /mnt; echo "fs_mount=$?"
       echo "fs_hello=$(/bin/busybox cat /mnt/hello.txt)"
       echo "moat-from-guest" > /mnt/from-guest.txt; echo "fs_write=$?"
       echo "fs_link=$(/bin/busybox cat /mnt/link-to-secret 2>&1)"
       echo "fs_dotdot=$(/bin/busybox cat /mnt/../secret 2>&1)"
       echo "fs_ls=$(/bin/busybox ls -a /mnt/.. /mnt | /bin/busybox tr '\n' ' ')"
       /bin/busybox umount /mnt; echo "fs_umount=$?" ;;
  script) shift; /bin/busybox sh "$@" ;;
  vsock-echo) /bin/moat-vsock-echo 5000 $2 &
       /bin/busybox sleep 3600 ;;
esac
/bin/busybox reboot -f
"#;

/// The AF_VSOCK port the `vsock-echo` init case serves `moat-vsock-echo` on.
pub const VSOCK_ECHO_PORT: u32 = 5000;

/// Where `moat-vsock-echo` lands in the image from [`GuestImage::with_vsock_echo`].
pub const VSOCK_ECHO_GUEST_PATH: &str = "bin/moat-vsock-echo";

/// Errors preparing or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    /// The guest kernel is not built.
    #[error("guest kernel missing: {0} (run `guest-kernel/build.sh guest`)")]
    KernelMissing(String),
    /// Building the initramfs failed.
    #[error("initramfs: {0}")]
    Initramfs(String),
    /// Starting the VMM (or qemu) failed.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The program.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A kernel plus the test initramfs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The guest vmlinux.
    pub kernel: PathBuf,
    /// The test initramfs (cpio.gz).
    pub initrd: PathBuf,
}

impl GuestImage {
    /// The agent image: the guest kernel + the moat-agent initramfs (`agent/build-image.sh`).
    pub fn agent_image() -> Result<GuestImage, MicrovmError> {
        let kernel = crate::kernel_path("guest").map_err(MicrovmError::KernelMissing)?;
        let initrd = crate::agent_initramfs_path().map_err(MicrovmError::Initramfs)?;
        Ok(GuestImage { kernel, initrd })
    }

    /// The default image: `guest-kernel/build.sh --print-path guest` + the busybox initramfs.
    pub fn default_image() -> Result<GuestImage, MicrovmError> {
        let kernel = crate::kernel_path("guest").map_err(MicrovmError::KernelMissing)?;
        let initrd = test_initramfs(&crate::target_dir().join("moat-test-images"))?;
        Ok(GuestImage { kernel, initrd })
    }

    /// The default image plus the static `moat-vsock-echo` as `/bin/moat-vsock-echo` (boot
    /// it with `-- vsock-echo`). The tool comes from `$MOAT_VSOCK_ECHO_BIN` or
    /// `tests/scripts/build-guest-tools.sh --print-path`; build it with that script.
    pub fn with_vsock_echo() -> Result<GuestImage, MicrovmError> {
        let kernel = crate::kernel_path("guest").map_err(MicrovmError::KernelMissing)?;
        let tool = crate::vsock_echo_bin_path().map_err(MicrovmError::Initramfs)?;
        let bytes = std::fs::read(&tool)
            .map_err(|e| MicrovmError::Initramfs(format!("{}: {e}", tool.display())))?;
        let initrd = test_initramfs_with(
            &crate::target_dir().join("moat-test-images"),
            &[(VSOCK_ECHO_GUEST_PATH, bytes)],
        )?;
        Ok(GuestImage { kernel, initrd })
    }
}

/// The default image for a program named `prog`, or the exit code after reporting why not.
/// Programs call this before entering the test host (where the workspace is read-only).
pub fn default_image_for(prog: &str) -> Result<GuestImage, std::process::ExitCode> {
    GuestImage::default_image().map_err(|e| {
        eprintln!("{prog}: {e}");
        std::process::ExitCode::FAILURE
    })
}

/// Builds (once per content hash) the busybox test initramfs under `dir`.
pub fn test_initramfs(dir: &Path) -> Result<PathBuf, MicrovmError> {
    test_initramfs_with(dir, &[])
}

/// [`test_initramfs`] plus `extra_files`: (path inside the image under an existing top-level
/// directory such as `bin/`, contents) pairs, added as executable files. The cache name
/// hashes them too.
pub fn test_initramfs_with(
    dir: &Path,
    extra_files: &[(&str, Vec<u8>)],
) -> Result<PathBuf, MicrovmError> {
    let busybox =
        crate::initramfs::busybox_bytes().map_err(|e| MicrovmError::Initramfs(e.to_string()))?;
    let mut h = DefaultHasher::new();
    GUEST_INIT.hash(&mut h);
    busybox.hash(&mut h);
    extra_files.hash(&mut h);
    let path = dir.join(format!("guest-test-{:016x}.cpio.gz", h.finish()));
    if path.exists() {
        return Ok(path);
    }
    let mut a = Archive::new();
    let err = |e: crate::cpio::CpioError| MicrovmError::Initramfs(e.to_string());
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        a.dir(d, 0o755).map_err(err)?;
    }
    a.file("bin/busybox", 0o755, busybox).map_err(err)?;
    for (name, bytes) in extra_files {
        a.file(name, 0o755, bytes.clone()).map_err(err)?;
    }
    a.file("init", 0o755, GUEST_INIT.as_bytes().to_vec())
        .map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| MicrovmError::Initramfs(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    a.write_gzip_file(&tmp).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(|e| MicrovmError::Initramfs(e.to_string()))?;
    Ok(path)
}

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
pub fn boot_moat(vmm_bin: &Path, spec: &BootSpec) -> Result<BootRun, MicrovmError> {
    let scratch = std::env::temp_dir().join(format!(
        "moat-boot-{}-{}",
        std::process::id(),
        crate::unique_suffix()
    ));
    std::fs::create_dir_all(&scratch).map_err(|source| MicrovmError::Spawn {
        what: "scratch dir".into(),
        source,
    })?;
    let metrics = scratch.join("metrics.json");
    let mut cmd = vmm_command(vmm_bin, spec);
    cmd.arg("--metrics-file").arg(&metrics);
    let mut run = run_console(cmd, spec.timeout, false)?;
    run.metrics = std::fs::read(&metrics)
        .ok()
        .and_then(|m| serde_json::from_slice(&m).ok())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(run)
}

/// Boots `spec` under qemu's microvm machine with KVM (the benchmark baseline), using the
/// same kernel command line moat uses by default.
pub fn boot_qemu(spec: &BootSpec) -> Result<BootRun, MicrovmError> {
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
        ]);
    // qemu's microvm has no i8042, so the guest's reboot never ends it: stop at the marker.
    run_console(cmd, spec.timeout, true)
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
    pub fn start(vmm_bin: &Path, spec: &BootSpec, dir: &Path) -> Result<AgentVm, MicrovmError> {
        let uds = dir.join("vm.sock");
        let console = dir.join("console");
        let mut cmd = vmm_command(vmm_bin, spec);
        cmd.arg(format!("--vsock=3,{}", uds.display()))
            .arg(format!("--serial=file:{}", console.display()))
            .stdin(Stdio::null());
        if let Ok(log) = std::fs::File::create(dir.join("vmm.stderr")) {
            cmd.stderr(log);
        }
        let child = cmd.spawn().map_err(|source| MicrovmError::Spawn {
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
/// `stop_at_marker` the process is killed once the marker is seen (status stays `None`).
fn run_console(
    mut cmd: Command,
    timeout: Duration,
    stop_at_marker: bool,
) -> Result<BootRun, MicrovmError> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_monotonic_ns = monotonic_ns();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|source| MicrovmError::Spawn { what, source })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut child = KillOnDrop::new(child);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut serial = String::new();
        if let Some(out) = stdout {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.contains(INIT_MARKER) {
                    let _ = tx.send((start.elapsed(), vm_rss_kib(pid)));
                }
                serial.push_str(&line);
                serial.push('\n');
            }
        }
        serial
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let mut marker = None;
    if stop_at_marker {
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

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// min / median / max of a list (None when empty).
pub fn min_median_max(values: &mut [u64]) -> Option<(u64, u64, u64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some((
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    ))
}
