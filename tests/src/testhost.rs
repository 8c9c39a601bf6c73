//! The test host: an "L1" Linux booted in qemu TCG emulating an AMD EPYC
//! (nested SVM with nested paging), whose `/dev/kvm` runs moat's real VMs
//! where the machine's own KVM can't (PVM) or doesn't exist.
//!
//! L1 sees the host's files: its initramfs (busybox + `l1_init.sh`) mounts
//! the host's `/` read-only over virtio-9p at `/host`, fresh kernel
//! filesystems and tmpfs `/tmp`, `/var/tmp`, `/run` inside it, each
//! requested read-write directory over 9p at its own path, and a per-run
//! scratch share at `/run/moat-testhost`; then it runs the script chrooted
//! into `/host`, so every path is the same in L1 as on the host.
//!
//! Beside [`TestHost`] live what decides whether a test needs it ([`kvm`]), what runs a
//! test in it ([`on_kvm`]), and what boots it ([`initramfs`] with `l1_init.sh`, [`tsc`]).

pub mod initramfs;
pub mod kvm;
pub mod on_kvm;
pub mod retries;
pub mod tsc;
pub mod watchdog;

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::artifacts::find_on_path;
use crate::process::{die_with_parent, KillOnDrop};
use watchdog::Waited;

/// The qemu binary's name: in the prefix `tests/scripts/fetch-qemu.sh` makes (qemu 10, the
/// test host's), or on `PATH` when [`QEMU_ENV`] says `path`.
pub const QEMU: &str = "qemu-system-x86_64";
/// Overrides the test host's qemu: a path to a qemu binary, or `path` for the one on `PATH`
/// (Debian 12's 7.2, whose TCG crashes nested guests far more often: for A/B runs).
pub const QEMU_ENV: &str = "MOAT_TESTHOST_QEMU";
/// Overrides qemu's `-accel` value for L1 (default [`DEFAULT_ACCEL`]), e.g. `tcg,thread=single`
/// to compare TCG's threading modes; it must name TCG.
pub const ACCEL_ENV: &str = "MOAT_TESTHOST_ACCEL";
/// More L1 kernel command-line arguments, appended after the builder's (for experiments
/// with L1's timer and tick configuration).
pub const APPEND_ENV: &str = "MOAT_TESTHOST_APPEND";
/// More read-write host directories for every test-host run, `:`-separated (e.g. where an
/// experiment's wrapper writes its traces).
pub const RW_DIRS_ENV: &str = "MOAT_TESTHOST_RW_DIRS";
/// qemu's `-accel` value for L1 unless [`ACCEL_ENV`] says otherwise.
pub const DEFAULT_ACCEL: &str = "tcg";
/// Environment variable naming the L1 kernel, overriding `build.sh`.
pub const KERNEL_ENV: &str = "MOAT_TEST_HOST_KERNEL"; // read by crate::kernel_path
/// Where the scratch share (script, outputs) appears inside L1's chroot.
pub const SCRATCH_IN_L1: &str = "/run/moat-testhost";
/// Default wall-clock limit of one run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How many console lines errors quote.
const CONSOLE_TAIL_LINES: usize = 60;
/// 9p mount options of the read-only host root (page cache on: fast reads).
const ROOT_9P_OPTS: &str = "msize=512000,cache=loose";
/// 9p mount options of read-write host directories (`mmap`: shared
/// writable mappings work, writes reach the host directly).
const RW_9P_OPTS: &str = "msize=512000,cache=mmap";

/// Why a test-host run could not produce the script's exit status.
#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    /// qemu is not there (the reason says what was looked for, and how to get it).
    #[error("the test host's qemu (a nested-SVM qemu TCG guest runs the real-VM tests): {0}")]
    QemuMissing(String),
    /// The L1 kernel is not built (or the given path does not exist).
    #[error(
        "the moat test-host (L1) kernel is missing: {reason}\nbuild it with \
         `guest-kernel/build.sh test-host` (or point {KERNEL_ENV} at a vmlinux)"
    )]
    KernelMissing {
        /// What was tried and how it failed.
        reason: String,
    },
    /// The static busybox for the L1 initramfs is missing.
    #[error(
        "static busybox not found at {}: install it with `apt-get install busybox-static` \
         (or set MOAT_BUSYBOX)", path.display()
    )]
    BusyboxMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Building the initramfs failed.
    #[error("cannot build the test host initramfs: {0}")]
    Initramfs(String),
    /// The builder was given something unusable.
    #[error("invalid test host configuration: {0}")]
    Config(String),
    /// The run did not finish in time while L1 was alive (its heartbeat went on); qemu was
    /// killed.
    #[error(
        "the test host did not finish within {timeout:?} while L1 was alive (qemu killed); \
         last lines of the L1 console:\n{console_tail}\n{script_tail}"
    )]
    Timeout {
        /// The limit that passed.
        timeout: Duration,
        /// The last lines of the L1 console.
        console_tail: String,
        /// The last lines the script wrote to stdout and stderr.
        script_tail: String,
    },
    /// L1 froze (see [`watchdog`]); qemu was killed.
    #[error(
        "the test host froze ({why}; killed); last lines of the L1 console:\n{console_tail}\n\
         {script_tail}"
    )]
    Frozen {
        /// Which way it froze.
        why: watchdog::Freeze,
        /// The last lines of the L1 console.
        console_tail: String,
        /// The last lines the script wrote to stdout and stderr.
        script_tail: String,
    },
    /// qemu exited before the script's exit status was written (L1 failed to
    /// boot, panicked, or `/init` failed).
    #[error(
        "the test host exited ({qemu_status}) before the script wrote an exit status{}; \
         last lines of the L1 console:\n{console_tail}",
        if qemu_stderr.is_empty() { String::new() } else { format!("; qemu said:\n{qemu_stderr}") }
    )]
    NoStatus {
        /// qemu's own exit status.
        qemu_status: String,
        /// What qemu printed on stderr.
        qemu_stderr: String,
        /// The last lines of the L1 console.
        console_tail: String,
    },
    /// A host-side I/O operation failed.
    #[error("test host I/O error while {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl TestHostError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// What a script run in the test host produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The script's exit status (128+N if a signal N killed the shell).
    pub status: i32,
    /// The script's stdout, byte-exact.
    pub stdout: Vec<u8>,
    /// The script's stderr, byte-exact.
    pub stderr: Vec<u8>,
    /// The whole L1 serial console (kernel log and `/init` messages).
    pub console: String,
    /// L1's uptime when the script started (kernel boot + `/init` mounts).
    pub boot_time: Option<Duration>,
    /// Wall time of the whole run, from spawning qemu to its exit.
    pub elapsed: Duration,
}

impl RunOutput {
    /// True when the script exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The last ~60 lines of the L1 console.
    pub fn console_tail(&self) -> String {
        tail_lines(&self.console, CONSOLE_TAIL_LINES)
    }
}

/// Configures a [`TestHost`]; start with [`TestHost::builder`].
#[derive(Debug, Clone)]
pub struct TestHostBuilder {
    kernel: Option<PathBuf>,
    qemu: Option<PathBuf>,
    memory_mib: u64,
    vcpus: u32,
    timeout: Option<Duration>,
    rw_dirs: Vec<PathBuf>,
    env: Vec<(String, OsString)>,
    cwd: PathBuf,
    kernel_args: Vec<String>,
}

impl Default for TestHostBuilder {
    fn default() -> Self {
        Self {
            kernel: None,
            qemu: None,
            memory_mib: 3 * 1024,
            vcpus: 2,
            timeout: None,
            rw_dirs: Vec::new(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            kernel_args: Vec::new(),
        }
    }
}

impl TestHostBuilder {
    /// The L1 kernel (default: `$MOAT_TEST_HOST_KERNEL`, else what
    /// `guest-kernel/build.sh --print-path test-host` prints).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }
    /// The qemu binary (default: `qemu-system-x86_64` from `PATH`).
    pub fn qemu(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu = Some(path.into());
        self
    }
    /// L1 memory in MiB (default 3072).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }
    /// L1 vCPUs (default 2).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }
    /// Wall-clock limit of one [`TestHost::run`] (default 300 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Whether [`Self::timeout`] was called.
    pub fn has_timeout(&self) -> bool {
        self.timeout.is_some()
    }
    /// Mounts host directory `dir` read-write at the same path inside L1
    /// (everything else of the host is read-only there).
    pub fn rw_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rw_dirs.push(dir.into());
        self
    }
    /// Sets an environment variable for the script (overrides the defaults
    /// `PATH`, `HOME`, `RUST_BACKTRACE`, `MOAT_IN_TEST_HOST=1`).
    pub fn env(mut self, key: impl Into<String>, value: impl AsRef<OsStr>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_owned()));
        self
    }
    /// The script's working directory (default `/`; must exist on the host).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = dir.into();
        self
    }
    /// Appends a parameter to the L1 kernel command line.
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.kernel_args.push(arg.into());
        self
    }

    /// Checks the configuration and finds qemu, the kernel and the initramfs.
    pub fn build(self) -> Result<TestHost, TestHostError> {
        let (qemu, qemu_data) = match self.qemu {
            Some(q) => (q, None),
            None => default_qemu()?,
        };
        let kernel = match self.kernel {
            Some(k) if k.is_file() => k,
            Some(k) => {
                return Err(TestHostError::KernelMissing {
                    reason: format!("{} does not exist", k.display()),
                })
            }
            None => default_kernel()?,
        };
        let cache = crate::target_dir().join("moat-testhost");
        let initramfs = initramfs::l1_initramfs(&cache)
            .or_else(|_| initramfs::l1_initramfs(&std::env::temp_dir()))?;
        let rw_dirs = checked_rw_dirs(self.rw_dirs)?;
        if let Some((k, _)) = self.env.iter().find(|(k, _)| !valid_env_name(k)) {
            return Err(TestHostError::Config(format!("bad env var name {k:?}")));
        }
        if has_newline(&self.cwd) || !self.cwd.is_absolute() {
            return Err(TestHostError::Config(format!(
                "cwd {} must be absolute",
                self.cwd.display()
            )));
        }
        if self.vcpus == 0 || self.memory_mib < 256 {
            return Err(TestHostError::Config(
                "need >= 1 vCPU and >= 256 MiB".into(),
            ));
        }
        Ok(TestHost {
            accel: accel_from_env()?,
            qemu,
            qemu_data,
            kernel,
            initramfs,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            rw_dirs,
            env: self.env,
            cwd: self.cwd,
            kernel_args: self.kernel_args,
        })
    }
}

/// `dirs` and those in `$MOAT_TESTHOST_RW_DIRS`, canonical; each must be a directory other
/// than `/`, without newlines.
fn checked_rw_dirs(dirs: Vec<PathBuf>) -> Result<Vec<PathBuf>, TestHostError> {
    let mut rw_dirs = Vec::new();
    let from_env = std::env::var_os(RW_DIRS_ENV).unwrap_or_default();
    let env_dirs = std::env::split_paths(&from_env).filter(|d| !d.as_os_str().is_empty());
    for d in dirs.into_iter().chain(env_dirs) {
        let canon = d
            .canonicalize()
            .map_err(|e| TestHostError::Config(format!("rw dir {}: {e}", d.display())))?;
        if !canon.is_dir() || canon == Path::new("/") || has_newline(&canon) {
            return Err(TestHostError::Config(format!(
                "rw dir {} must be a directory other than / without newlines",
                d.display()
            )));
        }
        rw_dirs.push(canon);
    }
    Ok(rw_dirs)
}

/// A configured test host; each [`TestHost::run`] boots a fresh L1.
#[derive(Debug, Clone)]
pub struct TestHost {
    accel: String,
    qemu: PathBuf,
    /// qemu's firmware directory (`-L`), for a qemu from a prefix.
    qemu_data: Option<PathBuf>,
    kernel: PathBuf,
    initramfs: PathBuf,
    memory_mib: u64,
    vcpus: u32,
    timeout: Duration,
    rw_dirs: Vec<PathBuf>,
    env: Vec<(String, OsString)>,
    cwd: PathBuf,
    kernel_args: Vec<String>,
}

impl TestHost {
    /// A builder with the defaults (3 GiB, 2 vCPUs, 300 s, cwd `/`).
    pub fn builder() -> TestHostBuilder {
        TestHostBuilder::default()
    }

    /// The L1 kernel this host boots.
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// Boots L1, runs `script` with the host's `/bin/sh` chrooted into the
    /// host's (read-only) root, and returns its status and output.
    ///
    /// A non-zero exit status is not an error; errors mean L1 did not get
    /// to report one. qemu and the scratch directory are gone on return.
    pub fn run(&self, script: &str) -> Result<RunOutput, TestHostError> {
        let scratch = tempfile::Builder::new()
            .prefix("moat-testhost-")
            .tempdir()
            .map_err(|e| TestHostError::io("creating the scratch dir", e))?;
        let share = scratch.path().join("share");
        let console_path = scratch.path().join("console.log");
        let qemu_log = scratch.path().join("qemu.log");
        self.write_share(&share, script)?;

        let start = Instant::now();
        let mut qemu = self.spawn_qemu(&share, &console_path, &qemu_log)?;
        let outcome = watchdog::wait(&mut qemu, self.timeout, &share)
            .map_err(|e| TestHostError::io("waiting for qemu", e))?;
        let elapsed = start.elapsed();
        drop(qemu);

        let console = read_lossy(&console_path).replace('\r', "");
        let console_tail = || tail_lines(&console, CONSOLE_TAIL_LINES);
        let qemu_status = match outcome {
            Waited::TimedOut => {
                return Err(TestHostError::Timeout {
                    timeout: self.timeout,
                    console_tail: console_tail(),
                    script_tail: script_tail(&share),
                })
            }
            Waited::Frozen(why) => {
                return Err(TestHostError::Frozen {
                    why,
                    console_tail: console_tail(),
                    script_tail: script_tail(&share),
                })
            }
            Waited::Exited(st) => st,
        };
        let status = std::fs::read_to_string(share.join("status"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let Some(status) = status else {
            return Err(TestHostError::NoStatus {
                qemu_status: qemu_status.to_string(),
                qemu_stderr: read_lossy(&qemu_log).trim().to_owned(),
                console_tail: tail_lines(&console, CONSOLE_TAIL_LINES),
            });
        };
        let read = |name: &str| {
            std::fs::read(share.join(name))
                .map_err(|e| TestHostError::io(format!("reading the script's {name}"), e))
        };
        let boot_time = std::fs::read_to_string(share.join("started"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        Ok(RunOutput {
            status,
            stdout: read("stdout")?,
            stderr: read("stderr")?,
            console,
            boot_time,
            elapsed,
        })
    }

    /// Starts qemu on `share` with the console in `console` and its stderr in `qemu_log`; it
    /// dies with the thread that started it (e.g. when the test is killed).
    fn spawn_qemu(
        &self,
        share: &Path,
        console: &Path,
        qemu_log: &Path,
    ) -> Result<KillOnDrop, TestHostError> {
        let mut cmd = self.qemu_command(share, console);
        let stderr = std::fs::File::create(qemu_log)
            .map_err(|e| TestHostError::io("creating qemu.log", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| TestHostError::io(format!("starting {}", self.qemu.display()), e))?;
        Ok(KillOnDrop::new(child))
    }

    /// Fills the scratch share: config, mounts, wrapper and script.
    fn write_share(&self, share: &Path, script: &str) -> Result<(), TestHostError> {
        let w = |name: &str, data: &[u8]| {
            std::fs::write(share.join(name), data)
                .map_err(|e| TestHostError::io(format!("writing {name}"), e))
        };
        std::fs::create_dir(share).map_err(|e| TestHostError::io("creating the share", e))?;
        w(
            "config",
            format!("ROOT_OPTS='{ROOT_9P_OPTS}'\nRW_OPTS='{RW_9P_OPTS}'\n").as_bytes(),
        )?;
        let mut mounts = Vec::new();
        for (i, d) in self.rw_dirs.iter().enumerate() {
            mounts.extend_from_slice(format!("rw{i} ").as_bytes());
            mounts.extend_from_slice(d.as_os_str().as_bytes());
            mounts.push(b'\n');
        }
        w("mounts", &mounts)?;
        w("wrapper.sh", &self.wrapper())?;
        w("script.sh", script.as_bytes())
    }

    /// The shell code run in the chroot: environment, cwd, then the script.
    fn wrapper(&self) -> Vec<u8> {
        let mut env: Vec<(String, OsString)> = vec![
            (
                "PATH".into(),
                std::env::var_os("PATH").unwrap_or_else(|| {
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                }),
            ),
            (
                "HOME".into(),
                std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
            ),
            (
                "RUST_BACKTRACE".into(),
                std::env::var_os("RUST_BACKTRACE").unwrap_or_else(|| "0".into()),
            ),
            ("MOAT_IN_TEST_HOST".into(), "1".into()),
            ("MOAT_TESTHOST_SCRATCH".into(), SCRATCH_IN_L1.into()),
        ];
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let mut out = Vec::new();
        for (k, v) in &env {
            out.extend_from_slice(format!("export {k}=").as_bytes());
            out.extend_from_slice(&shell_quote(v.as_bytes()));
            out.push(b'\n');
        }
        out.extend_from_slice(b"cd ");
        out.extend_from_slice(&shell_quote(self.cwd.as_os_str().as_bytes()));
        out.extend_from_slice(b" || exit 125\n");
        out.extend_from_slice(format!("exec /bin/sh {SCRATCH_IN_L1}/script.sh\n").as_bytes());
        out
    }

    fn qemu_command(&self, share: &Path, console: &Path) -> Command {
        let mut append = String::from("console=ttyS0 reboot=t panic=-1 rdinit=/init");
        if let Some(khz) = tsc::host_tsc_khz() {
            let _ = write!(append, " tsc_early_khz={khz}");
        }
        let from_env = std::env::var(APPEND_ENV).unwrap_or_default();
        for a in self
            .kernel_args
            .iter()
            .map(String::as_str)
            .chain(from_env.split_whitespace())
        {
            append.push(' ');
            append.push_str(a);
        }
        let mut cmd = Command::new(&self.qemu);
        if let Some(data) = &self.qemu_data {
            cmd.arg("-L").arg(data);
        }
        cmd.args([
            "-accel",
            &self.accel,
            "-cpu",
            "EPYC",
            "-M",
            "microvm,acpi=off",
        ])
        .args(["-smp", &self.vcpus.to_string()])
        .args(["-m", &format!("{}M", self.memory_mib)])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initramfs)
        .args(["-append", &append])
        .arg("-serial")
        .arg(concat_os("file:", console.as_os_str()));
        let mut fs9p = |tag: &str, path: &Path, extra: &str| {
            let mut fsdev = OsString::from(format!("local,id={tag},path="));
            fsdev.push(qemu_escape(path.as_os_str()));
            fsdev.push(format!(",security_model=none{extra}"));
            cmd.arg("-fsdev")
                .arg(fsdev)
                .arg("-device")
                .arg(format!("virtio-9p-device,fsdev={tag},mount_tag={tag}"));
        };
        fs9p("hostroot", Path::new("/"), ",readonly=on,multidevs=remap");
        fs9p("moatrun", share, "");
        for (i, d) in self.rw_dirs.iter().enumerate() {
            fs9p(&format!("rw{i}"), d, ",multidevs=remap");
        }
        cmd
    }
}

/// The test host's qemu and its firmware directory (`-L`): [`QEMU_ENV`]'s, else the cached
/// qemu 10 prefix (`tests/scripts/fetch-qemu.sh`).
fn default_qemu() -> Result<(PathBuf, Option<PathBuf>), TestHostError> {
    match std::env::var_os(QEMU_ENV) {
        Some(v) if v == "path" => find_on_path(QEMU).map(|q| (q, None)).ok_or_else(|| {
            TestHostError::QemuMissing(format!(
                "{QEMU_ENV}=path but `{QEMU}` is not on PATH (apt-get install qemu-system-x86)"
            ))
        }),
        Some(v) => {
            let q = PathBuf::from(v);
            match q.is_file() {
                true => Ok((q, None)),
                false => Err(TestHostError::QemuMissing(format!(
                    "{QEMU_ENV}={} does not exist",
                    q.display()
                ))),
            }
        }
        None => {
            let prefix = crate::artifacts::qemu_prefix().map_err(TestHostError::QemuMissing)?;
            let q = prefix.join("usr/bin").join(QEMU);
            Ok((q, Some(prefix.join("usr/share/qemu"))))
        }
    }
}

/// qemu's `-accel` value for L1: `$MOAT_TESTHOST_ACCEL` ([`ACCEL_ENV`]) or [`DEFAULT_ACCEL`].
fn accel_from_env() -> Result<String, TestHostError> {
    match std::env::var(ACCEL_ENV) {
        Err(_) => Ok(DEFAULT_ACCEL.into()),
        Ok(a) if a == "tcg" || a.starts_with("tcg,") => Ok(a),
        Ok(a) => Err(TestHostError::Config(format!(
            "{ACCEL_ENV}={a:?}: the test host runs on qemu TCG (`tcg[,OPTIONS]`)"
        ))),
    }
}

/// Finds the default L1 kernel (see [`crate::kernel_path`]).
fn default_kernel() -> Result<PathBuf, TestHostError> {
    crate::kernel_path("test-host").map_err(|reason| TestHostError::KernelMissing { reason })
}

pub(crate) fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn has_newline(p: &Path) -> bool {
    p.as_os_str().as_bytes().contains(&b'\n')
}

/// Quotes bytes for POSIX sh: `'...'` with `'` written as `'\''`.
pub fn shell_quote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// Escapes a value for a qemu `-option key=value,...` list (`,` -> `,,`).
fn qemu_escape(s: &OsStr) -> OsString {
    let mut out = Vec::new();
    for &b in s.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsStr::from_bytes(&out).to_owned()
}

fn concat_os(a: &str, b: &OsStr) -> OsString {
    let mut s = OsString::from(a);
    s.push(b);
    s
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last lines of the script's stdout and stderr so far (for a run that never ended).
fn script_tail(share: &Path) -> String {
    let mut out = String::new();
    for name in ["stdout", "stderr"] {
        let text = read_lossy(&share.join(name));
        let _ = write!(
            out,
            "--- the script's {name} (last {CONSOLE_TAIL_LINES} lines) ---\n{}\n",
            tail_lines(&text, CONSOLE_TAIL_LINES)
        );
    }
    out
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(b"a b"), b"'a b'");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
        assert_eq!(qemu_escape(OsStr::new("/a,b")), OsStr::new("/a,,b"));
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("RUST_LOG"));
        assert!(valid_env_name("_x1"));
        assert!(!valid_env_name("1x"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
