//! A private containerd for tests: [`Containerd::start`] writes a version-2 `config.toml`
//! under a fresh directory of its own (root, state, sockets, log, CNI config), runs
//! `containerd --config` as a child and waits until `ctr version` answers; `ctr` runs
//! against it with [`Containerd::ctr`]. On drop (or [`Containerd::stop`]) containerd and
//! every shim it started (found by its `-address`) are killed with their process trees,
//! what is mounted under the directory is unmounted and the directory removed.
//!
//! The config enables CRI (`restrict_oom_score_adj`, `sandbox_image` = an image the test
//! imports: there is no registry and containerd 1.6 would try to pull it), CNI from
//! `/usr/lib/cni` with a bridge + host-local conflist of the harness's own (CRI adds the
//! loopback network itself; libcni still caches results in `/var/lib/cni`, which the test
//! host's `/init` puts on a writable overlay), the overlayfs snapshotter and two runtimes:
//! `runc` (the default) and `moat` (`io.containerd.moat.v2`).
//!
//! Needs root, `containerd`, `ctr`, `runc` (Debian: `containerd runc
//! containernetworking-plugins`). Shim sockets (`/run/containerd/s`), runc state
//! (`/run/containerd/runc/<ns>`) and ctr's fifos (`/run/containerd/fifo`) are not under the
//! harness's directory: containerd 1.6 puts them there whatever the config says.
//!
//! Around it: [`CtrOutput`], [`CtrChild`] and [`LiveCtr`] (`ctr` commands, finished, running
//! or watched live), [`sys`] (its processes and mounts, from `/proc`), [`cri`] (a CRI client
//! on its socket), [`oci_image`] (the images tests import, built locally) and
//! [`moat_stack`] (the whole moat stack behind it, with its leak checks).

pub mod cri;
mod ctr;
pub mod moat_stack;
pub mod oci_image;
pub mod portforward;
pub mod sys;

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_runtime::RUNTIME_ID;

use crate::process::{die_with_parent, KillOnDrop};
pub(crate) use ctr::reader;
use ctr::{ctr_error, show};
pub use ctr::{CtrChild, CtrOutput, LiveCtr};

/// Where `ContainerdOptions::default()` puts harness directories: on `/run` (a plain tmpfs in
/// the test host), as the overlayfs snapshotter cannot work on an overlayfs such as L1's `/tmp`.
pub const DEFAULT_PARENT: &str = "/run/moat-containerd";
/// The namespace `ContainerdOptions::default()` uses: CRI's, so imported images serve pods too.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
/// How long `ctr` may run unless told otherwise.
pub const DEFAULT_CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// What to install when the tools are missing.
const INSTALL_HINT: &str = "install them with `apt-get install containerd runc \
     containernetworking-plugins` (or run tests/scripts/setup-host.sh)";
/// Lines of containerd's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// How long containerd gets after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Why the harness or a `ctr` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A binary containerd tests need is not on `PATH` (the `String`s: binary, `PATH`).
    #[error("`{0}` not found on PATH ({1}): the containerd test harness needs it; {INSTALL_HINT}")]
    Missing(String, String),
    /// Not running as root.
    #[error(
        "the containerd test harness must run as root (it runs containerd and runc); \
         run the test in the moat test host (moat_tests::on_kvm) or as root"
    )]
    NotRoot,
    /// A socket path would be longer than a unix socket address (107 bytes) allows.
    #[error("containerd socket path {0} is too long for a unix socket: use a shorter parent dir")]
    SocketPathTooLong(String),
    /// containerd exited, or did not answer `ctr version` in time (then it was killed).
    #[error("containerd on {socket} {why}; last lines of {log}:\n{log_tail}")]
    Start {
        /// The grpc socket.
        socket: String,
        /// What went wrong.
        why: String,
        /// containerd's log file.
        log: String,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A `ctr` command timed out (it was killed), or failed where it had to succeed.
    #[error(
        "`ctr {args}` {why}; its stdout:\n{stdout}\nits stderr:\n{stderr}\n\
         last lines of containerd's log:\n{log_tail}"
    )]
    Ctr {
        /// The command's arguments after `--namespace <ns>`.
        args: String,
        /// What went wrong (`timed out after ...`, `failed (exit status: 1)`).
        why: String,
        /// What it printed on stdout (lossy).
        stdout: String,
        /// What it printed on stderr (lossy).
        stderr: String,
        /// The last lines of containerd's log.
        log_tail: String,
    },
    /// [`Containerd::stop`] left something behind (the dir, what remained).
    #[error("stopping containerd in {0} left {1}")]
    Leftover(String, String),
    /// An I/O operation failed.
    #[error("containerd harness: {what}: {source}")]
    Io {
        /// What was being done (and where).
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerdError {
    let what = what.into();
    move |source| ContainerdError::Io { what, source }
}

/// How to start a [`Containerd`]; `ContainerdOptions::default()` gives the defaults, e.g.
/// `ContainerdOptions { moat_runtime_path: Some(shim), ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Where the harness creates its own (unique) directory, default [`DEFAULT_PARENT`]; a
    /// plain filesystem (tmpfs, disk), not an overlayfs, for the overlayfs snapshotter.
    pub parent_dir: PathBuf,
    /// The namespace [`Containerd::ctr`] and [`Containerd::import`] use ([`DEFAULT_NAMESPACE`]).
    pub namespace: String,
    /// Directories put in front of containerd's `PATH` (where it looks for shims).
    pub extra_path: Vec<PathBuf>,
    /// Environment variables for containerd (shims inherit containerd's environment).
    pub env: Vec<(OsString, OsString)>,
    /// CRI's `sandbox_image` (default [`oci_image::DEFAULT_BUSYBOX_IMAGE`]): import
    /// an image of exactly this name before creating pods (there is no registry to pull from);
    /// its command must keep running, as [`oci_image::build_pause_image`]'s does.
    pub sandbox_image: String,
    /// The `moat` runtime's `runtime_path`; `None`: containerd looks up
    /// `containerd-shim-moat-v2` on its `PATH`.
    pub moat_runtime_path: Option<PathBuf>,
    /// The `moat` runtime's `options = { ConfigPath = ... }` (CRI passes it to the shim).
    pub moat_config_path: Option<PathBuf>,
    /// TOML appended verbatim to config.toml (new tables only: TOML forbids reopening one).
    pub extra_toml: String,
    /// containerd's log level (default `info`; `debug`, `trace`...).
    pub log_level: String,
    /// How long [`Containerd::start`] waits for `ctr version` to answer (default 60 s).
    pub start_timeout: Duration,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        Self {
            parent_dir: PathBuf::from(DEFAULT_PARENT),
            namespace: DEFAULT_NAMESPACE.into(),
            extra_path: Vec::new(),
            env: Vec::new(),
            sandbox_image: oci_image::DEFAULT_BUSYBOX_IMAGE.into(),
            moat_runtime_path: None,
            moat_config_path: None,
            extra_toml: String::new(),
            log_level: "info".into(),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// A running private containerd; killed and cleaned up on drop.
///
/// containerd gets `PR_SET_PDEATHSIG` = SIGKILL: it dies with the *thread* that started it,
/// so start and drop it on the same (test) thread.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    /// The containerd binary and the options it was started with (for [`Self::restart`]).
    binary: PathBuf,
    opts: ContainerdOptions,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    namespace: String,
    path_env: OsString,
    ctr: PathBuf,
}

impl Containerd {
    /// Creates a fresh directory under the options' parent, writes the config there, starts
    /// containerd and waits until `ctr version` answers.
    pub fn start(opts: ContainerdOptions) -> Result<Self, ContainerdError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ContainerdError::NotRoot);
        }
        let path_env = path_env(&opts.extra_path)?;
        let find = |name: &str| {
            std::env::split_paths(&path_env)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    ContainerdError::Missing(name.into(), path_env.to_string_lossy().into())
                })
        };
        let containerd = find("containerd")?;
        let ctr = find("ctr")?;
        find("runc")?;
        find("containerd-shim-runc-v2")?;

        let parent = &opts.parent_dir;
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
        let dir = parent.join(format!(
            "c-{}-{}",
            std::process::id(),
            crate::unique_suffix()
        ));
        std::fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let socket = dir.join("containerd.sock");
        let mut me = Self {
            child: None,
            binary: containerd,
            opts: opts.clone(),
            log: dir.join("containerd.log"),
            dir,
            socket,
            namespace: opts.namespace.clone(),
            path_env,
            ctr,
        };
        // From here on, Drop cleans up whatever fails.
        let ttrpc = me.dir.join("containerd.sock.ttrpc");
        if ttrpc.as_os_str().len() > 107 {
            return Err(ContainerdError::SocketPathTooLong(
                ttrpc.display().to_string(),
            ));
        }
        me.write_files(&opts)?;
        me.spawn()?;
        me.wait_ready(opts.start_timeout)?;
        Ok(me)
    }

    /// Kills containerd alone with SIGKILL (as a crash or an upgrade does: its shims keep
    /// running) and starts it again on the same directories, socket and log (appended);
    /// waits until `ctr version` answers.
    pub fn restart(&mut self) -> Result<(), ContainerdError> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn()?;
        self.wait_ready(self.opts.start_timeout)
    }

    /// Writes `config.toml` and the CNI conflist.
    fn write_files(&self, opts: &ContainerdOptions) -> Result<(), ContainerdError> {
        let cni_conf = self.dir.join("cni/net.d");
        let ipam = self.dir.join("cni/ipam");
        for d in [&cni_conf, &ipam] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "moat-test",
            "plugins": [{
                "type": "bridge",
                "bridge": "moat-cni0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.88.77.0/24" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam,
                },
            }],
        });
        let conflist_path = cni_conf.join("10-moat-bridge.conflist");
        std::fs::write(&conflist_path, conflist.to_string())
            .map_err(io_err(format!("writing {}", conflist_path.display())))?;
        let config = self.config_toml(opts, &cni_conf);
        let path = self.dir.join("config.toml");
        std::fs::write(&path, config).map_err(io_err(format!("writing {}", path.display())))
    }

    /// The version-2 config.toml.
    fn config_toml(&self, opts: &ContainerdOptions, cni_conf: &Path) -> String {
        let q = |p: &Path| toml_str(&p.to_string_lossy());
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        let mut moat = format!("      runtime_type = {}\n", toml_str(RUNTIME_ID));
        if let Some(p) = &opts.moat_runtime_path {
            moat.push_str(&format!("      runtime_path = {}\n", q(p)));
        }
        if let Some(p) = &opts.moat_config_path {
            moat.push_str(&format!(
                "      [{cri}.containerd.runtimes.moat.options]\n        ConfigPath = {}\n",
                q(p)
            ));
        }
        format!(
            r#"version = 2
root = {root}
state = {state}
oom_score = 0

[grpc]
  address = {sock}
[ttrpc]
  address = {ttrpc}
[debug]
  address = ""
  level = {level}
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni_conf}
    max_conf_num = 1
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
    [{cri}.containerd.runtimes.moat]
{moat}
{extra}"#,
            root = q(&self.dir.join("root")),
            state = q(&self.dir.join("state")),
            sock = q(&self.socket),
            ttrpc = q(&self.dir.join("containerd.sock.ttrpc")),
            level = toml_str(&opts.log_level),
            opt = q(&self.dir.join("opt")),
            sandbox = toml_str(&opts.sandbox_image),
            cni_conf = q(cni_conf),
            extra = opts.extra_toml,
        )
    }

    /// Starts containerd with its output appended to the log.
    fn spawn(&mut self) -> Result<(), ContainerdError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(io_err(format!("opening {}", self.log.display())))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", &self.path_env)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `ctr version` until it answers; kills containerd on timeout.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ContainerdError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("none yet");
        let why = loop {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(st))) => {
                    self.child = None;
                    break format!("exited ({st}) before its socket answered");
                }
                Some(Err(e)) => {
                    self.kill_containerd();
                    break format!("cannot be waited for ({e}; killed)");
                }
                _ => {}
            }
            if self.socket.exists() {
                match self.ctr_with(&["version"], None, Duration::from_secs(10)) {
                    Ok(o) if o.status.success() => return Ok(()),
                    Ok(o) => last = o.stderr_str().trim().to_owned(),
                    Err(ContainerdError::Ctr { why, .. }) => last = why,
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                self.kill_containerd();
                let last = format!("last ctr error: {last}");
                break format!("did not answer `ctr version` in {timeout:?} (killed; {last})");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Err(ContainerdError::Start {
            socket: self.socket.display().to_string(),
            why,
            log: self.log.display().to_string(),
            log_tail: self.log_tail(),
        })
    }

    /// The grpc socket (`ctr --address`, crictl's `unix://` endpoint).
    pub fn address(&self) -> &Path {
        &self.socket
    }
    /// The harness directory (config.toml, root/, state/, the sockets, containerd.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The namespace `ctr` commands use.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// containerd's pid (`None` once it has been stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// containerd's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Runs `ctr --address <sock> --namespace <ns> <args>` with stdin from `/dev/null` and a
    /// [`DEFAULT_CTR_TIMEOUT`]; a non-zero exit is not an error (see [`Self::ctr_ok`]).
    pub fn ctr(&self, args: &[impl AsRef<OsStr>]) -> Result<CtrOutput, ContainerdError> {
        self.ctr_with(args, None, DEFAULT_CTR_TIMEOUT)
    }

    /// [`Self::ctr`], but a non-zero exit is an error too.
    pub fn ctr_ok(&self, args: &[impl AsRef<OsStr>]) -> Result<CtrOutput, ContainerdError> {
        let out = self.ctr(args)?;
        match out.status.success() {
            true => Ok(out),
            false => Err(ctr_error(
                show(args),
                format!("failed ({})", out.status),
                &out,
                &self.log,
            )),
        }
    }

    /// Runs `ctr ... <args>` feeding it `stdin` (then EOF; `/dev/null` if `None`), killing it
    /// after `timeout` (an error).
    ///
    /// ctr (1.6, 1.7) drops an EOF on stdin that it reads before the task is created (it
    /// sets its stdin closer after `NewTask`), and the task then never sees EOF: for a task
    /// that reads stdin to its end, feed more than the pipes on the way buffer (with runc
    /// ~200 KiB; the test feeds 1 MiB) or use
    /// [`Self::ctr_spawn`] and close stdin once the task runs.
    pub fn ctr_with(
        &self,
        args: &[impl AsRef<OsStr>],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CtrOutput, ContainerdError> {
        let mut child = self.ctr_spawn(args, stdin.is_some())?;
        let data = stdin.map(<[u8]>::to_vec).unwrap_or_default();
        let feeder = child.stdin.take().map(|mut pipe| {
            // A write error (ctr exited without reading it all) shows in its output.
            std::thread::spawn(move || drop(pipe.write_all(&data)))
        });
        let out = child.wait(timeout);
        feeder.map(JoinHandle::join);
        out
    }

    /// Starts `ctr ... <args>` with stdout and stderr captured and stdin a pipe
    /// ([`CtrChild::stdin`]) if `piped_stdin`, else `/dev/null`.
    pub fn ctr_spawn(
        &self,
        args: &[impl AsRef<OsStr>],
        piped_stdin: bool,
    ) -> Result<CtrChild, ContainerdError> {
        let args_shown = show(args);
        let mut child = self
            .ctr_command(args)
            .stdin(match piped_stdin {
                true => Stdio::piped(),
                false => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("starting `ctr {args_shown}`")))?;
        Ok(CtrChild {
            stdin: child.stdin.take(),
            stdout: reader(child.stdout.take()),
            stderr: reader(child.stderr.take()),
            child: KillOnDrop::new(child),
            start: Instant::now(),
            args: args_shown,
            log: self.log.clone(),
        })
    }

    /// Waits until `ctr task ls` lists task `id` with status `status` (`RUNNING`, `STOPPED`,
    /// `PAUSED`...); after `timeout` an error with the last listing.
    pub fn wait_task_status(
        &self,
        id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<(), ContainerdError> {
        let deadline = Instant::now() + timeout;
        loop {
            let ls = self.ctr_ok(&["task", "ls"])?;
            let listed = ls.stdout_str().lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&id) && f.last() == Some(&status)
            });
            if listed {
                return Ok(());
            }
            if Instant::now() > deadline {
                let why = format!("never listed task {id} as {status} in {timeout:?}");
                return Err(ctr_error("task ls".into(), why, &ls, &self.log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Imports an image archive (`ctr images import`, unpacked for the overlayfs
    /// snapshotter) into the harness's namespace.
    pub fn import(&self, tar: &Path) -> Result<CtrOutput, ContainerdError> {
        self.ctr_ok(&[OsStr::new("images"), OsStr::new("import"), tar.as_os_str()])
    }

    /// Stops containerd and cleans up like drop does, but reports what it could not clean:
    /// a process of the harness still alive, or a mount left under its directory.
    pub fn stop(mut self) -> Result<(), ContainerdError> {
        let left = self.cleanup();
        let dir = std::mem::take(&mut self.dir); // Drop: nothing left to do
        match left.is_empty() {
            true => Ok(()),
            false => Err(ContainerdError::Leftover(
                dir.display().to_string(),
                left.join("; "),
            )),
        }
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`]; reaps containerd.
    fn kill_containerd(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: `pid` is our own unreaped child, so it names containerd.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills containerd, its shims and their process trees, unmounts what is under the
    /// directory and removes it; returns what could not be cleaned (empty when all went).
    fn cleanup(&mut self) -> Vec<String> {
        let containerd_pid = self.child.as_ref().map(Child::id);
        // Shims are daemons re-parented away from containerd: find them by `-address`.
        let procs = sys::list();
        let mut roots = sys::with_address(&procs, &self.socket);
        roots.extend(containerd_pid);
        let mut victims = sys::descendants(&procs, &roots);
        victims.retain(|p| Some(*p) != containerd_pid);
        self.kill_containerd();
        let mut left = Vec::new();
        let alive = sys::kill_and_wait(&victims, Duration::from_secs(5));
        if !alive.is_empty() {
            left.push(format!("processes still running: {alive:?}"));
        }
        let mounts = sys::unmount_under(&self.dir);
        if !mounts.is_empty() {
            left.push(format!("mounts it could not unmount: {mounts:?}"));
            // Removing the tree would reach into what is still mounted there.
            return left;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                left.push(format!("its directory ({e})"))
            }
            _ => {}
        }
        left
    }

    /// The `Command` of `ctr --address <sock> --namespace <ns> <args>` with the harness's
    /// `PATH`, its stdio left to the caller (a pty for `ctr run -t`, a pipe read while ctr
    /// runs).
    pub fn ctr_command(&self, args: &[impl AsRef<OsStr>]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .env("PATH", &self.path_env);
        cmd
    }
}

/// The last [`LOG_TAIL_LINES`] lines of containerd's log.
fn log_tail(log: &Path) -> String {
    let log = std::fs::read(log).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            for what in self.cleanup() {
                eprintln!(
                    "moat-tests containerd harness ({}): left {what}",
                    self.dir.display()
                );
            }
        }
    }
}

/// containerd's `PATH`: `extra`, then ours, then the sbin/bin dirs if missing (runc lives
/// in /usr/sbin on Debian).
fn path_env(extra: &[PathBuf]) -> Result<OsString, ContainerdError> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    for d in "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".split(':') {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).map_err(|e| ContainerdError::Io {
        what: "building containerd's PATH".into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

/// A TOML basic string (JSON's string escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings() {
        assert_eq!(toml_str("/a b"), "\"/a b\"");
        assert_eq!(toml_str("a\"\\\n"), r#""a\"\\\n""#);
    }

    #[test]
    fn path_has_sbin() {
        let p = path_env(&[PathBuf::from("/opt/x")]).unwrap();
        let dirs: Vec<PathBuf> = std::env::split_paths(&p).collect();
        assert_eq!(dirs[0], Path::new("/opt/x"));
        assert!(dirs.iter().any(|d| d == Path::new("/usr/sbin")));
    }
}
