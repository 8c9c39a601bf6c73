//! A session's process: `busybox sh` (no argv) or `busybox sh -c '<argv quoted>'`, with
//! pipes or a pty, in a new session and process group, its environment made from scratch.
//!
//! Debian's static busybox runs its applets without any on `PATH` (its shell prefers
//! applets, re-executing `/proc/self/exe`), so no applet links are made; `PATH` still lists
//! the guest's usual directories for anything else there.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::io::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use moat_agent_protocol::console::ConsoleRequest;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::Signal;

use super::SessionError;
use crate::pty;

/// `PATH` of a session.
pub(super) const SESSION_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A spawned session process and the agent's ends of its stdio.
#[derive(Debug)]
pub(super) struct SessionProcess {
    /// Its pid, also its process group and session id.
    pub pid: u32,
    /// Where its stdin goes (a pipe's write end, or the pty master), non-blocking.
    pub stdin: File,
    /// Its stdout (a pipe's read end, or the pty master), non-blocking.
    pub stdout: File,
    /// Its stderr (a pipe's read end), none on a pty.
    pub stderr: Option<File>,
    /// The pty master, for resizes.
    pub master: Option<OwnedFd>,
}

/// The busybox arguments for `argv`: `sh`, or `sh -c '<argv quoted and joined>'`.
pub(super) fn busybox_args(argv: &[String]) -> Vec<String> {
    if argv.is_empty() {
        return vec!["sh".into()];
    }
    let script = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    vec!["sh".into(), "-c".into(), script]
}

/// Spawns the session's process for `req` from `busybox`.
pub(super) fn spawn(busybox: &Path, req: &ConsoleRequest) -> Result<SessionProcess, SessionError> {
    match std::fs::metadata(busybox) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(SessionError::NoDebugTools {
                path: busybox.into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SessionError::NoDebugTools {
                path: busybox.into(),
            })
        }
        Err(source) => {
            return Err(SessionError::Spawn {
                path: busybox.into(),
                source,
            })
        }
    }
    let mut cmd = Command::new(busybox);
    cmd.args(busybox_args(&req.argv))
        .env_clear()
        .env("PATH", SESSION_PATH)
        .env("HOME", "/")
        .current_dir("/");
    let spawned = if req.tty {
        spawn_tty(cmd, req, busybox)
    } else {
        spawn_pipes(cmd, busybox)
    }?;
    let nonblocking = [
        Some(&spawned.stdin),
        Some(&spawned.stdout),
        spawned.stderr.as_ref(),
    ]
    .into_iter()
    .flatten()
    .try_for_each(set_nonblocking);
    if let Err(e) = nonblocking {
        kill_group(spawned.pid);
        return Err(e);
    }
    Ok(spawned)
}

/// `SIGKILL` to process group `pgid` (a session's process, its leader); an empty group is
/// no error. Never signals groups 0 or 1.
pub(super) fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("debug console: SIGKILL to process group {pgid}: {e}"),
    }
}

/// Stdin, stdout and stderr are pipes; the process leads a new session without a terminal.
fn spawn_pipes(mut cmd: Command, busybox: &Path) -> Result<SessionProcess, SessionError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|source| SessionError::Spawn {
        path: busybox.into(),
        source,
    })?;
    let pid = child.id();
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    // The reaper, not `Child::wait`, collects the process.
    drop(child);
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        kill_group(pid);
        return Err(SessionError::Io {
            what: "taking the session's pipes",
            source: io::ErrorKind::BrokenPipe.into(),
        });
    };
    Ok(SessionProcess {
        pid,
        stdin: File::from(OwnedFd::from(stdin)),
        stdout: File::from(OwnedFd::from(stdout)),
        stderr: Some(File::from(OwnedFd::from(stderr))),
        master: None,
    })
}

/// Stdin, stdout and stderr are a new pty's slave, the process's controlling terminal.
fn spawn_tty(
    mut cmd: Command,
    req: &ConsoleRequest,
    busybox: &Path,
) -> Result<SessionProcess, SessionError> {
    let pty = pty::open_pty()?;
    if req.rows > 0 && req.cols > 0 {
        pty::set_window_size(&pty.master, req.rows, req.cols)?;
    }
    if !req.term.is_empty() {
        cmd.env("TERM", &req.term);
    }
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|source| SessionError::Io {
            what: "duplicating the pty",
            source,
        })
    };
    let (stdin, stdout) = (File::from(dup(&pty.master)?), File::from(dup(&pty.master)?));
    cmd.stdin(dup(&pty.slave)?)
        .stdout(dup(&pty.slave)?)
        .stderr(dup(&pty.slave)?);
    // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; fd 0 is the pty slave by then
    // (the child's stdio is set up before `pre_exec` closures run).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SessionError::Spawn {
        path: busybox.into(),
        source,
    })?;
    let pid = child.id();
    // The reaper, not `Child::wait`, collects the process. Dropping `cmd` and `pty.slave`
    // closes the agent's copies of the slave: the master then reads EIO once the session's
    // processes closed theirs.
    drop(child);
    drop(cmd);
    drop(pty.slave);
    Ok(SessionProcess {
        pid,
        stdin,
        stdout,
        stderr: None,
        master: Some(pty.master),
    })
}

/// Sets `O_NONBLOCK` on `f` (the session's threads wait in `poll`).
fn set_nonblocking(f: &File) -> Result<(), SessionError> {
    let io = |e: nix::errno::Errno| SessionError::Io {
        what: "making the session's stdio non-blocking",
        source: e.into(),
    };
    let flags = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).map_err(io)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io)?;
    Ok(())
}
