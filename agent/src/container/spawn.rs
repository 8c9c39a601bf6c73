//! Starting an init process from the multi-threaded agent, and driving its sync protocol.
//!
//! The agent spawns `/proc/self/exe __moat-init` with `std::process::Command` (fork + exec;
//! between them only `dup2` runs), hands it the [`InitConfig`], writes user-namespace id maps
//! when asked, learns the pid of the process that will exec the program and, for a terminal
//! process, receives the pty master the init process allocated inside the container
//! ([`super::console`]). It never waits on the child itself: the [`Reaper`] collects both
//! the short-lived first process and, after it is re-parented to the agent, the container
//! process.

use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxIdMapping;

use super::console::{self, ConsoleError};
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
    /// The terminal the init process sent is unacceptable.
    #[error("init process: {0}")]
    Console(#[from] ConsoleError),
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
    /// The master of its pty (a terminal process), until the caller takes it.
    pub terminal: Option<OwnedFd>,
    sync: UnixStream,
}

/// What [`drive_setup`] learned so far.
#[derive(Debug, Default)]
struct Setup {
    pid: Option<u32>,
    terminal: Option<OwnedFd>,
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

    let mut setup = Setup::default();
    let result = drive_setup(
        &mut ours,
        cfg,
        first,
        id_maps,
        reaper,
        &mut setup,
        SETUP_TIMEOUT,
    );
    match result {
        Ok(()) => Ok(Pending {
            pid: setup.pid.expect("Ready comes after Pid"),
            terminal: setup.terminal,
            sync: ours,
        }),
        Err(e) => {
            let _ = kill(Pid::from_raw(first as i32), Signal::SIGKILL);
            if let Some(p) = setup.pid {
                kill_and_forget(p, reaper);
            }
            Err(e)
        }
    }
}

/// SIGKILLs a watched process and stops watching it (its zombie is then reaped as an orphan).
fn kill_and_forget(pid: u32, reaper: &Reaper) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    reaper.forget(pid);
}

/// Runs the setup protocol up to `Ready`, within `timeout` in all (a silent or stuck init
/// process, one that never sends its terminal included). Anything out of order, a message
/// with fds other than one terminal, or a terminal that is not a pty master is an error.
fn drive_setup(
    sock: &mut UnixStream,
    cfg: &InitConfig,
    first: u32,
    id_maps: Option<&IdMaps>,
    reaper: &Reaper,
    setup: &mut Setup,
    timeout: Duration,
) -> Result<(), SpawnError> {
    sync::send(sock, cfg)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or(SpawnError::Timeout(timeout))?;
        let (msg, fds) = match sync::recv_with_fds::<InitMessage>(sock, Some(left)) {
            Err(SyncError::Timeout(_)) => return Err(SpawnError::Timeout(timeout)),
            Err(SyncError::Closed) => {
                return Err(SpawnError::Protocol(
                    "the init process exited during setup without a message".into(),
                ))
            }
            r => r?,
        };
        if msg == InitMessage::Terminal && cfg.terminal && setup.pid.is_some() {
            if setup.terminal.is_some() {
                return Err(SpawnError::Protocol("a second terminal".into()));
            }
            setup.terminal = Some(console::take_master(fds)?);
            continue;
        }
        if !fds.is_empty() {
            return Err(SpawnError::Protocol(format!(
                "{} file descriptor(s) with {msg:?}",
                fds.len()
            )));
        }
        match msg {
            InitMessage::MapUserNs => {
                let maps = id_maps.ok_or_else(|| {
                    SpawnError::Protocol("asked for id maps without a user namespace".into())
                })?;
                write_id_maps(first, maps)?;
                sync::send(sock, &AgentMessage::UserNsMapped)?;
            }
            InitMessage::Pid(p) if p > 0 && setup.pid.is_none() => {
                reaper.watch(p as u32);
                setup.pid = Some(p as u32);
            }
            InitMessage::Ready if cfg.terminal && setup.terminal.is_none() => {
                return Err(SpawnError::Protocol(
                    "Ready before the terminal was sent".into(),
                ))
            }
            InitMessage::Ready if setup.pid.is_some() => return Ok(()),
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
    /// Gives up on the process: SIGKILL, and the reaper forgets it.
    pub fn abort(self, reaper: &Reaper) {
        kill_and_forget(self.pid, reaper);
    }

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

#[cfg(test)]
mod tests {
    use std::os::unix::io::AsFd;
    use std::thread;

    use oci_spec::runtime::Process;

    use super::*;
    use crate::container::init::InitKind;
    use crate::pty;

    fn config(terminal: bool) -> InitConfig {
        InitConfig {
            kind: InitKind::Exec,
            process: Process::default(),
            namespaces: Vec::new(),
            cgroup_procs: None,
            seccomp: None,
            terminal,
        }
    }

    /// Runs `drive_setup` against a fake init process that reads the config, then runs
    /// `init` on its end of the socket.
    fn drive(
        terminal: bool,
        timeout: Duration,
        init: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> (Result<(), SpawnError>, Setup) {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let fake = thread::spawn(move || {
            let _: InitConfig = sync::recv(&mut theirs, Some(Duration::from_secs(10))).unwrap();
            init(&mut theirs);
        });
        let mut setup = Setup::default();
        let reaper = Reaper::new();
        let r = drive_setup(
            &mut ours,
            &config(terminal),
            1,
            None,
            &reaper,
            &mut setup,
            timeout,
        );
        fake.join().unwrap();
        (r, setup)
    }

    const LONG: Duration = Duration::from_secs(10);

    fn send_fd(sock: &mut UnixStream, msg: InitMessage, fd: &OwnedFd) {
        sync::send_with_fds(sock, &msg, &[fd.as_fd()]).unwrap();
    }

    fn dev_null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn a_terminal_process_hands_over_its_pty_master() {
        let (r, setup) = drive(true, LONG, |s| {
            sync::send(s, &InitMessage::Pid(4242)).unwrap();
            let p = pty::open_pty().unwrap();
            send_fd(s, InitMessage::Terminal, &p.master);
            sync::send(s, &InitMessage::Ready).unwrap();
        });
        r.unwrap();
        assert_eq!(setup.pid, Some(4242));
        pty::pty_number(setup.terminal.as_ref().unwrap()).unwrap();
    }

    /// The error of a setup in which the fake init process reports a pid, then runs `then`.
    fn refusal(terminal: bool, then: impl FnOnce(&mut UnixStream) + Send + 'static) -> String {
        let (r, setup) = drive(terminal, LONG, |s| {
            sync::send(s, &InitMessage::Pid(4242)).unwrap();
            then(s);
        });
        assert!(setup.terminal.is_none());
        r.unwrap_err().to_string()
    }

    #[test]
    fn bad_terminals_are_refused() {
        type FakeInit = fn(&mut UnixStream);
        let cases: [(bool, FakeInit, &str); 5] = [
            (
                true,
                |s| sync::send(s, &InitMessage::Ready).unwrap(),
                "Ready before the terminal",
            ),
            (
                true,
                |s| send_fd(s, InitMessage::Terminal, &dev_null()),
                "not a pty master",
            ),
            (
                true,
                |s| sync::send(s, &InitMessage::Terminal).unwrap(),
                "sent 0 file descriptors",
            ),
            // Not a terminal process: a pty master is refused, and so is an fd on any message.
            (
                false,
                |s| send_fd(s, InitMessage::Terminal, &pty::open_pty().unwrap().master),
                "file descriptor(s) with Terminal",
            ),
            (
                false,
                |s| send_fd(s, InitMessage::Ready, &dev_null()),
                "file descriptor(s) with Ready",
            ),
        ];
        for (terminal, then, want) in cases {
            let e = refusal(terminal, then);
            assert!(e.contains(want), "{e} (want {want:?})");
        }
    }

    #[test]
    fn an_init_process_that_never_sends_its_terminal_times_out() {
        let (r, setup) = drive(true, Duration::from_millis(300), |s| {
            sync::send(s, &InitMessage::Pid(4242)).unwrap();
            thread::sleep(Duration::from_millis(1000));
        });
        assert!(matches!(r, Err(SpawnError::Timeout(_))), "{r:?}");
        assert_eq!(setup.pid, Some(4242));
    }
}
