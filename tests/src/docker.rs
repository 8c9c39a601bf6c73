//! A private Docker Engine for tests: Debian 13's dockerd 26 and the containerd 1.7 it starts
//! and manages (`tests/scripts/fetch-trixie.sh` unpacks both into a prefix; runc is the
//! host's), on a fresh directory of its own: data root, exec root, pid file, socket, log and
//! `daemon.json`, which registers moat as runtime [`MOAT_RUNTIME`] (`runtimeType`
//! `io.containerd.moat.v2`; `docker run --runtime io.containerd.moat.v2` works as well). The
//! shim is found on the `PATH` dockerd and its containerd get; its configuration through
//! `$MOAT_CONFIG`.
//!
//! [`Dockerd::docker`] runs the CLI against it. On drop (or [`Dockerd::stop`]) dockerd gets
//! SIGTERM (it stops its containers and its containerd), then SIGKILL; what is mounted under
//! the directory is unmounted and the directory removed. dockerd's `docker0` bridge and its
//! iptables rules are the host's: run one at a time (the test host is fresh for each test).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::containerd::{reader, sys, CtrOutput};
use crate::process::{die_with_parent, KillOnDrop, WaitOutcome};

/// The runtime name `daemon.json` gives moat (`docker run --runtime moat`).
pub const MOAT_RUNTIME: &str = "moat";
/// Where harness directories go: `/run` is a plain tmpfs in the test host, which overlay2
/// needs (L1's `/tmp` is an overlayfs).
pub const DEFAULT_PARENT: &str = "/run/moat-docker";
/// How long a `docker` command may run unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dockerd may take to answer `docker version` (TCG: containerd starts too).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long dockerd gets after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(30);
/// Lines of dockerd's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// Why the harness or a `docker` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The trixie prefix is missing.
    #[error("{0}")]
    Prefix(String),
    /// dockerd did not come up.
    #[error("dockerd {why}; last lines of its log:\n{log_tail}")]
    Start {
        /// What happened.
        why: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A docker command timed out.
    #[error("`docker {args}` did not finish within {timeout:?} (killed); stdout:\n{stdout}\nstderr:\n{stderr}\nlast lines of dockerd's log:\n{log_tail}")]
    Timeout {
        /// Its arguments.
        args: String,
        /// Its limit.
        timeout: Duration,
        /// What it printed.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
        /// The end of dockerd's log.
        log_tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DockerError {
    let what = what.into();
    move |source| DockerError::Io { what, source }
}

/// How to start a [`Dockerd`].
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// Directories put in front of dockerd's `PATH` (after the trixie prefix): where the moat
    /// shim is.
    pub extra_path: Vec<PathBuf>,
    /// Environment variables for dockerd (its containerd and the shims inherit them).
    pub env: Vec<(OsString, OsString)>,
}

/// A running private dockerd.
#[derive(Debug)]
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    docker: PathBuf,
    log: PathBuf,
    path_env: OsString,
    child: Option<KillOnDrop>,
}

impl Dockerd {
    /// Starts dockerd (see the module doc) and waits until `docker version` answers.
    pub fn start(opts: DockerdOptions) -> Result<Dockerd, DockerError> {
        let prefix = crate::artifacts::trixie_prefix().map_err(DockerError::Prefix)?;
        let dir = PathBuf::from(DEFAULT_PARENT).join(format!(
            "d-{}-{}",
            std::process::id(),
            crate::unique_suffix()
        ));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut dirs = vec![prefix.join("usr/sbin"), prefix.join("usr/bin")];
        dirs.extend(opts.extra_path.iter().cloned());
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
        let path_env = std::env::join_paths(dirs).map_err(|e| DockerError::Io {
            what: "building dockerd's PATH".into(),
            source: std::io::Error::other(e),
        })?;
        let mut d = Dockerd {
            socket: dir.join("docker.sock"),
            docker: prefix.join("usr/bin/docker"),
            log: dir.join("dockerd.log"),
            dir,
            path_env,
            child: None,
        };
        d.spawn(&prefix, &opts)?;
        d.wait_ready()?;
        Ok(d)
    }

    /// Writes `daemon.json` and starts dockerd with it.
    fn spawn(&mut self, prefix: &Path, opts: &DockerdOptions) -> Result<(), DockerError> {
        let config = json!({
            "data-root": self.dir.join("data"),
            "exec-root": self.dir.join("exec"),
            "pidfile": self.dir.join("docker.pid"),
            "hosts": [format!("unix://{}", self.socket.display())],
            "storage-driver": "overlay2",
            "log-level": "info",
            "runtimes": {MOAT_RUNTIME: {"runtimeType": moat_runtime::RUNTIME_ID}},
        });
        let config_path = self.dir.join("daemon.json");
        std::fs::write(&config_path, config.to_string())
            .map_err(io_err(format!("writing {}", config_path.display())))?;
        let log = std::fs::File::create(&self.log)
            .map_err(io_err(format!("creating {}", self.log.display())))?;
        let log2 = log.try_clone().map_err(io_err("cloning the log fd"))?;
        let mut cmd = Command::new(prefix.join("usr/sbin/dockerd"));
        cmd.arg("--config-file")
            .arg(&config_path)
            .env("PATH", &self.path_env)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(io_err("starting dockerd"))?;
        self.child = Some(KillOnDrop::new(child));
        Ok(())
    }

    /// Polls `docker version` until it answers; kills dockerd after [`START_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), DockerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(self.start_error(format!("exited ({st})")));
            }
            if let Ok(o) = self.docker_with(&["version"], None, Duration::from_secs(20)) {
                if o.status.success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let why = format!("did not answer `docker version` in {START_TIMEOUT:?}");
                return Err(self.start_error(why));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_error(&mut self, why: String) -> DockerError {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
        DockerError::Start {
            why,
            log_tail: self.log_tail(),
        }
    }

    /// The harness's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of dockerd's log (its containerd logs there too).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// dockerd's whole log.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// `docker ARGS` with stdin `/dev/null`, [`DEFAULT_TIMEOUT`] at most (any exit status).
    pub fn docker(&self, args: &[&str]) -> Result<CtrOutput, DockerError> {
        self.docker_with(args, None, DEFAULT_TIMEOUT)
    }

    /// `docker ARGS` fed `stdin` (then EOF), killed after `timeout` (an error).
    pub fn docker_with(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CtrOutput, DockerError> {
        let shown = args.join(" ");
        let started = Instant::now();
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("starting `docker {shown}`")))?;
        let feeder = (child.stdin.take(), stdin.map(<[u8]>::to_vec));
        let feeder = match feeder {
            (Some(mut pipe), Some(data)) => Some(std::thread::spawn(move || {
                drop(pipe.write_all(&data));
            })),
            _ => None,
        };
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        let mut child = KillOnDrop::new(child);
        let outcome = child
            .wait_timeout(timeout)
            .map_err(io_err(format!("waiting for `docker {shown}`")))?;
        feeder.map(std::thread::JoinHandle::join);
        let (stdout, stderr) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        match outcome {
            WaitOutcome::Exited(status) => Ok(CtrOutput {
                status,
                stdout,
                stderr,
                elapsed: started.elapsed(),
            }),
            WaitOutcome::TimedOut => Err(DockerError::Timeout {
                args: shown,
                timeout,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                log_tail: self.log_tail(),
            }),
        }
    }

    /// The `Command` of `docker -H unix://<sock> ARGS`, stdio left to the caller.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("PATH", &self.path_env)
            .env("DOCKER_CONFIG", self.dir.join("cli"));
        cmd
    }

    /// `docker load -i ARCHIVE`.
    pub fn load(&self, archive: &Path) -> Result<(), String> {
        let path = archive.to_string_lossy();
        match self.docker(&["load", "-i", &path]) {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "docker load -i {path}: {}: {}{}",
                o.status,
                o.stdout_str(),
                o.stderr_str()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stops dockerd (SIGTERM, then SIGKILL after 30 s) and removes its directory;
    /// returns what could not be cleaned up.
    pub fn stop(mut self) -> Vec<String> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            match child.wait_timeout(TERM_GRACE) {
                Ok(WaitOutcome::Exited(_)) => {}
                Ok(WaitOutcome::TimedOut) => left.push("dockerd ignored SIGTERM (killed)".into()),
                Err(e) => left.push(format!("waiting for dockerd: {e}")),
            }
        }
        // dockerd's containerd and shims name the directory in their argv.
        let dir = self.dir.as_os_str().as_encoded_bytes();
        let procs = sys::list();
        let named: Vec<u32> = procs
            .iter()
            .filter(|p| p.2.iter().any(|a| a.windows(dir.len()).any(|w| w == dir)))
            .map(|p| p.0)
            .collect();
        for p in sys::kill_and_wait(&sys::descendants(&procs, &named), TERM_GRACE) {
            left.push(format!("process {p} (would not die)"));
        }
        if !named.is_empty() {
            left.push(format!("processes {named:?} (killed)"));
        }
        let mounted = sys::unmount_under(&self.dir);
        if !mounted.is_empty() {
            left.push(format!("mounts {mounted:?}"));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                left.push(format!("its directory ({e})"));
            }
        }
        left
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            for what in self.cleanup() {
                eprintln!(
                    "moat-tests docker harness ({}): left {what}",
                    self.dir.display()
                );
            }
        }
    }
}
