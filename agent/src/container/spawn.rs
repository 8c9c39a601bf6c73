//! Starting an init process from the multi-threaded agent, and driving its sync protocol.
//!
//! The agent spawns `/proc/self/exe __moat-init` with `std::process::Command` (fork + exec;
//! between them only `dup2` runs), hands it the [`InitConfig`], writes user-namespace id maps
//! when asked, and learns the pid of the process that will exec the program. It never waits
//! on the child itself: the [`Reaper`] collects both the short-lived first process and, after
//! it is re-parented to the agent, the container process.

use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxIdMapping;

use super::init::{InitConfig, INIT_ARG};
use super::sync::{self, AgentMessage, InitMessage, SyncError, INIT_SYNC_FD};
use crate::reaper::Reaper;

/// How long an init process may take to set up (mounts, namespaces) before it is killed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The init process could not be started.
    #[error("starting the init process: {0}")]
    Exec(io::Error),
    /// The sync protocol failed.
    #[error("init process: {0}")]
    Sync(#[from] SyncError),
    /// The init process reported a failed step.
    #[error("{0}")]
    Init(String),
    /// The init process said something out of order.
    #[error("init process protocol error: {0}")]
    Protocol(String),
    /// Writing user namespace id maps failed.
    #[error("writing {file}: {source}")]
    IdMap {
        /// Which file.
        file: String,
        /// The error.
        source: io::Error,
    },
    /// Setup did not finish in time.
    #[error("init process did not finish setup within {0:?}")]
    Timeout(Duration),
}

/// The fds that become the process's stdin, stdout and stderr.
#[derive(Debug)]
pub struct ChildFds {
    /// fd 0.
    pub stdin: OwnedFd,
    /// fd 1.
    pub stdout: OwnedFd,
    /// fd 2.
    pub stderr: OwnedFd,
}

/// User namespace id maps the agent writes for a new user namespace.
#[derive(Debug, Clone, Default)]
pub struct IdMaps {
    /// uid_map lines.
    pub uid: Vec<LinuxIdMapping>,
    /// gid_map lines.
    pub gid: Vec<LinuxIdMapping>,
}

/// A process whose setup is done, waiting for [`Pending::start`].
#[derive(Debug)]
pub struct Pending {
    /// Its pid in the agent's PID namespace (watched by the reaper).
    pub pid: u32,
    sync: UnixStream,
}

/// Spawns an init process for `cfg` and runs it up to `Ready`. On failure every process it
/// made is killed; nothing is left but (briefly) zombies for the reaper.
pub fn spawn(
    cfg: &InitConfig,
    fds: ChildFds,
    id_maps: Option<&IdMaps>,
    reaper: &Reaper,
) -> Result<Pending, SpawnError> {
    let (mut ours, theirs) = UnixStream::pair().map_err(SpawnError::Exec)?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::from(fds.stdin))
        .stdout(Stdio::from(fds.stdout))
        .stderr(Stdio::from(fds.stderr));
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_fd == INIT_SYNC_FD {
                if libc::fcntl(theirs_fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, INIT_SYNC_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The first process's status is of no interest: the reaper drops it as an orphan.
    let child = cmd.spawn().map_err(SpawnError::Exec)?;
    let first = child.id();
    drop(child);
    drop(theirs);

    let mut pid = None;
    let result = drive_setup(&mut ours, cfg, first, id_maps, reaper, &mut pid);
    match result {
        Ok(()) => Ok(Pending {
            pid: pid.expect("Ready comes after Pid"),
            sync: ours,
        }),
        Err(e) => {
            let _ = kill(Pid::from_raw(first as i32), Signal::SIGKILL);
            if let Some(p) = pid {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
                reaper.forget(p);
            }
            Err(e)
        }
    }
}

fn drive_setup(
    sock: &mut UnixStream,
    cfg: &InitConfig,
    first: u32,
    id_maps: Option<&IdMaps>,
    reaper: &Reaper,
    pid: &mut Option<u32>,
) -> Result<(), SpawnError> {
    sync::send(sock, cfg)?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or(SpawnError::Timeout(SETUP_TIMEOUT))?;
        let msg = match sync::recv::<InitMessage>(sock, Some(left)) {
            Err(SyncError::Timeout(_)) => return Err(SpawnError::Timeout(SETUP_TIMEOUT)),
            Err(SyncError::Closed) => {
                return Err(SpawnError::Protocol(
                    "the init process exited during setup without a message".into(),
                ))
            }
            r => r?,
        };
        match msg {
            InitMessage::MapUserNs => {
                let maps = id_maps.ok_or_else(|| {
                    SpawnError::Protocol("asked for id maps without a user namespace".into())
                })?;
                write_id_maps(first, maps)?;
                sync::send(sock, &AgentMessage::UserNsMapped)?;
            }
            InitMessage::Pid(p) if p > 0 && pid.is_none() => {
                reaper.watch(p as u32);
                *pid = Some(p as u32);
            }
            InitMessage::Ready if pid.is_some() => return Ok(()),
            InitMessage::Error(e) => return Err(SpawnError::Init(e)),
            other => return Err(SpawnError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}

/// Writes `/proc/PID/{uid_map,gid_map}` for a process that created a user namespace (the
/// agent has CAP_SETGID, so `setgroups` stays allowed).
pub fn write_id_maps(pid: u32, maps: &IdMaps) -> Result<(), SpawnError> {
    let text = |m: &[LinuxIdMapping]| {
        m.iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let write = |name: &str, data: String| {
        let file = format!("/proc/{pid}/{name}");
        std::fs::write(&file, data).map_err(|source| SpawnError::IdMap { file, source })
    };
    write("uid_map", text(&maps.uid))?;
    write("gid_map", text(&maps.gid))
}

impl Pending {
    /// Tells the process to exec its program and waits (up to `timeout`) for the outcome:
    /// end-of-file on the sync socket means `execve` succeeded.
    pub fn start(mut self, timeout: Duration) -> Result<(), SpawnError> {
        sync::send(&mut self.sync, &AgentMessage::Start)?;
        match sync::recv::<InitMessage>(&mut self.sync, Some(timeout)) {
            Err(SyncError::Closed) => Ok(()),
            Ok(InitMessage::Error(e)) => Err(SpawnError::Init(e)),
            Ok(other) => Err(SpawnError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(e.into()),
        }
    }
}
