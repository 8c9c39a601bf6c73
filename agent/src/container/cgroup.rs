//! cgroup v2 directories for containers: creation with controllers enabled down the tree,
//! OCI resources ([`Cgroup::apply`]), statistics ([`Cgroup::stats`]), freeze, kill and
//! removal.
//!
//! Only the unified hierarchy is supported (the agent mounts it at [`CGROUP_ROOT`]). Every
//! function takes the directory it works on, so tests run against a plain directory whose
//! control files are regular files.

mod resources;
pub mod stats;

pub use stats::{CgroupStats, MemoryEvents};

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// Where the agent mounts the cgroup v2 hierarchy in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The most bytes read from one control file; the rest is ignored.
const MAX_READ: u64 = 1 << 20;
/// How deep [`Cgroup::remove`] descends into child cgroups.
const MAX_DEPTH: usize = 64;
/// How many rounds the SIGKILL fallback of [`Cgroup::kill_all`] makes.
const MAX_KILL_ROUNDS: usize = 100;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A relative cgroup path is absolute, empty or leaves its root.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file system operation on the cgroup tree failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done ("creating", "reading", "removing"...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing a control file failed (the kernel refused the value).
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A limit was requested but the control file for it does not exist.
    #[error("{controller} controller not enabled in {dir} (no {file})")]
    ControllerNotEnabled {
        /// The controller (`memory`, `cpu`, `hugetlb`...).
        controller: String,
        /// The missing control file.
        file: String,
        /// The cgroup directory.
        dir: PathBuf,
    },
    /// An OCI resource value is out of range or malformed.
    #[error("linux.resources.{field} = {value}: {reason}")]
    OutOfRange {
        /// The OCI field, e.g. `memory.swap`.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An OCI resource that cgroup v2 cannot enforce was requested.
    #[error("linux.resources.{field} is not supported on cgroup v2: {reason}")]
    Unsupported {
        /// The OCI field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A key of `linux.resources.unified` is not a control file of the cgroup.
    #[error("linux.resources.unified key {key:?}: {reason}")]
    UnifiedKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A freeze, thaw or removal did not finish in time.
    #[error("{what} {path}: not done after {timeout:?}")]
    Timeout {
        /// What was waited for ("freezing", "thawing", "emptying", "removing").
        what: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// How long it was waited for.
        timeout: Duration,
    },
    /// Sending a signal to a process of the cgroup failed.
    #[error("sending {signal} to pid {pid}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal number.
        signal: i32,
        /// The error.
        #[source]
        source: nix::Error,
    },
}

/// Whether `root` is a cgroup v2 (unified) mount (`statfs` magic `CGROUP2_SUPER_MAGIC`).
pub fn is_cgroup2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// One cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `root/relative` (each missing level) and, in every ancestor from `root` down
    /// to the new cgroup's parent, enables in `cgroup.subtree_control` every controller that
    /// ancestor's `cgroup.controllers` offers. Idempotent: existing directories and enabled
    /// controllers are left as they are. `relative` must be relative and stay under `root`.
    pub fn create(root: &Path, relative: &Path) -> Result<Cgroup, CgroupError> {
        let names = validate_relative(relative)?;
        let mut dir = root.to_path_buf();
        for name in names {
            enable_controllers(&dir)?;
            dir.push(name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(source) => return Err(io_err("creating", &dir, source)),
            }
        }
        Ok(Cgroup { path: dir })
    }

    /// The cgroup at the absolute directory `path`, which need not exist (yet, or any more).
    #[cfg(test)]
    pub fn open(path: impl Into<PathBuf>) -> Cgroup {
        Cgroup { path: path.into() }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies OCI `linux.resources` as runc and crun do on cgroup v2 (see
    /// `cgroup/resources.rs` for the mapping). `devices` is ignored: cgroup v2 has no device
    /// files (device access is an eBPF program). Fails before writing anything if a value is
    /// out of range or a needed control file is missing.
    pub fn apply(&self, res: &oci_spec::runtime::LinuxResources) -> Result<(), CgroupError> {
        let exists = |file: &str| self.path.join(file).is_file();
        let writes = resources::plan(res, &self.path, &exists)?;
        for w in &writes {
            write_file(&self.path.join(&w.file), &w.value)?;
        }
        Ok(())
    }

    /// The cgroup's statistics; missing files read as zeros (or empty).
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        stats::read_stats(&self.path)
    }

    /// The counters of `memory.events` (zeros without a memory controller).
    #[cfg(test)]
    pub fn memory_events(&self) -> Result<MemoryEvents, CgroupError> {
        Ok(MemoryEvents::parse(
            &read_optional(&self.path.join("memory.events"))?.unwrap_or_default(),
        ))
    }

    /// Freezes (`true`) or thaws the cgroup via `cgroup.freeze` and waits until
    /// `cgroup.events` reports `frozen 1` (or `frozen 0`).
    pub fn freeze(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let want = u64::from(frozen);
        write_file(
            &self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let events = self.path.join("cgroup.events");
        let what = if frozen { "freezing" } else { "thawing" };
        wait_until(&self.path, what, timeout, || {
            let text = read_bounded(&events)?;
            Ok(stats::flat_keyed(&text).get("frozen") == Some(&want))
        })
    }

    /// The processes of the cgroup (`cgroup.procs`; empty if it does not exist).
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let text = read_optional(&self.path.join("cgroup.procs"))?.unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|&p| p > 0)
            .collect())
    }

    /// Moves process `pid` into the cgroup (0: the calling process).
    #[cfg(test)]
    pub fn add_proc(&self, pid: i32) -> Result<(), CgroupError> {
        write_file(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Sends `sig` to every process of `cgroup.procs` (not to those of child cgroups).
    /// Processes that exited meanwhile are skipped.
    pub fn signal_all(&self, sig: i32) -> Result<(), CgroupError> {
        let signal = Signal::try_from(sig).map_err(|source| CgroupError::Signal {
            pid: 0,
            signal: sig,
            source,
        })?;
        for pid in self.procs()? {
            send(pid, signal)?;
        }
        Ok(())
    }

    /// Kills every process of the cgroup and its descendants: `cgroup.kill` where the kernel
    /// has it (5.14+), else SIGKILL to each process of `cgroup.procs` until no new one shows
    /// up. Returns once the signals are sent; [`Cgroup::remove`] waits for the exits.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.is_file() {
            return write_file(&kill_file, "1");
        }
        let mut signalled = BTreeSet::new();
        for _ in 0..MAX_KILL_ROUNDS {
            let fresh: Vec<i32> = self
                .procs()?
                .into_iter()
                .filter(|p| !signalled.contains(p))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for pid in fresh {
                send(pid, Signal::SIGKILL)?;
                signalled.insert(pid);
            }
        }
        warn!(path = %self.path.display(), "processes keep appearing after {MAX_KILL_ROUNDS} kill rounds");
        Ok(())
    }

    /// Kills every process ([`Cgroup::kill_all`]), waits until the cgroup (with its
    /// descendants) is empty, then removes child cgroups and the cgroup itself. A cgroup that
    /// does not exist is removed already.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        if let Err(e) = self.kill_all() {
            // Removed meanwhile (by whoever): that is what was asked.
            return if self.path.exists() { Err(e) } else { Ok(()) };
        }
        let events = self.path.join("cgroup.events");
        wait_until(&self.path, "emptying", timeout, || {
            // `populated` covers descendants; without cgroup.events, cgroup.procs must do.
            match read_optional(&events)? {
                Some(text) => Ok(stats::flat_keyed(&text).get("populated") != Some(&1)),
                None => Ok(self.procs()?.is_empty()),
            }
        })?;
        let deadline = Instant::now() + timeout;
        remove_tree(&self.path, deadline, timeout, 0)
    }
}

/// Checks a relative cgroup path and returns its names.
fn validate_relative(relative: &Path) -> Result<Vec<&std::ffi::OsStr>, CgroupError> {
    let invalid = |reason| CgroupError::InvalidPath {
        path: relative.to_path_buf(),
        reason,
    };
    let mut names = Vec::new();
    for c in relative.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("contains ..")),
            Component::RootDir | Component::Prefix(_) => return Err(invalid("is absolute")),
        }
    }
    if names.is_empty() {
        return Err(invalid("is empty"));
    }
    Ok(names)
}

/// Enables in `dir/cgroup.subtree_control` every controller of `dir/cgroup.controllers` not
/// enabled yet, one `+name` per write; returns those it enabled. Controllers the kernel
/// refuses with EINVAL or ENOENT are skipped (logged at debug).
fn enable_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let Some(available) = read_optional(&dir.join("cgroup.controllers"))? else {
        return Ok(Vec::new());
    };
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_optional(&control)?.unwrap_or_default();
    let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
    let mut done = Vec::new();
    for name in available.split_whitespace() {
        if enabled.contains(name) {
            continue;
        }
        let value = format!("+{name}");
        match write_file(&control, &value) {
            Ok(()) => done.push(name.to_string()),
            Err(CgroupError::Write { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
            {
                debug!(dir = %dir.display(), controller = name, "controller not enabled: {source}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Removes `dir`'s child cgroups (deepest first), then `dir`, retrying EBUSY until
/// `deadline`. A directory that is gone already counts as removed.
fn remove_tree(
    dir: &Path,
    deadline: Instant,
    timeout: Duration,
    depth: usize,
) -> Result<(), CgroupError> {
    if depth > MAX_DEPTH {
        return Err(io_err(
            "removing",
            dir,
            io::Error::other(format!("more than {MAX_DEPTH} levels of child cgroups")),
        ));
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_err("reading", dir, source)),
    };
    for entry in entries {
        let entry = entry.map_err(|source| io_err("reading", dir, source))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            remove_tree(&entry.path(), deadline, timeout, depth + 1)?;
        }
    }
    let mut pause = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::Timeout {
                    what: "removing",
                    path: dir.to_path_buf(),
                    timeout,
                })
            }
            Err(source) => return Err(io_err("removing", dir, source)),
        }
    }
}

/// Polls `done` (1 ms, doubling to 10 ms) until it says yes or `timeout` passes.
fn wait_until(
    path: &Path,
    what: &'static str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CgroupError::Timeout {
                what,
                path: path.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Sends `signal` to `pid`, never to the agent itself or PID 1; a process that is gone is
/// not an error.
fn send(pid: i32, signal: Signal) -> Result<(), CgroupError> {
    if pid <= 1 || u32::try_from(pid).ok() == Some(std::process::id()) {
        return Ok(());
    }
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(CgroupError::Signal {
            pid,
            signal: signal as i32,
            source,
        }),
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` to the existing control file `path` in one `write(2)` (as `echo >`:
/// `O_WRONLY|O_TRUNC`, never creating it).
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let werr = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(werr)?;
    let n = file.write(value.as_bytes()).map_err(werr)?;
    if n != value.len() {
        return Err(werr(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", value.len()),
        )));
    }
    Ok(())
}

/// Reads at most [`MAX_READ`] bytes of `path` (lossy UTF-8).
pub(crate) fn read_bounded(path: &Path) -> Result<String, CgroupError> {
    let file = File::open(path).map_err(|source| io_err("reading", path, source))?;
    let mut buf = Vec::new();
    file.take(MAX_READ)
        .read_to_end(&mut buf)
        .map_err(|source| io_err("reading", path, source))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// [`read_bounded`], with `None` for a file that does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match read_bounded(path) {
        Ok(text) => Ok(Some(text)),
        Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
