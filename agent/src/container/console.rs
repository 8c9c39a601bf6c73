//! The terminal of a process with `process.terminal: true`, allocated inside the container
//! (runc's console socket, over the sync socket).
//!
//! A container mounts its own devpts instance on `/dev/pts` (`newinstance`), so a pty from the
//! agent's `/dev/ptmx` would have a slave `/dev/pts/N` that does not exist in the container
//! (`tty` says "not a tty", `ttyname(3)` fails). Instead the init process, once it is in the
//! container's mount namespace with its root filesystem set up (after `pivot_root`; for an
//! exec, after joining the namespaces) and in a new session, runs [`setup_in_init`]: it
//! opens `/dev/ptmx` there (`/dev/ptmx -> pts/ptmx`, so the container's instance), makes the
//! slave its controlling terminal and fds 0, 1 and 2, and sends the master to the agent with
//! [`InitMessage::Terminal`] (`SCM_RIGHTS`). The agent takes it with [`take_master`], which
//! trusts nothing: exactly one fd, and a pty master (`TIOCGPTN`). Both ends are
//! close-on-exec in the init process, so only fds 0-2 reach the program.

use std::os::unix::io::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;

use super::sync::{self, InitMessage, SyncError};
use crate::pty::{self, PtyError};

/// Errors setting up or receiving a process's terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The container's `/dev/ptmx` gave no pty.
    #[error(
        "allocating the terminal from the container's /dev/ptmx (terminal: true needs devpts \
         on /dev/pts): {0}"
    )]
    Allocate(PtyError),
    /// Making the slave the controlling terminal or stdio failed.
    #[error("{step}: {errno}")]
    Sys {
        /// What was being done.
        step: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// The master could not be sent to the agent.
    #[error("sending the pty master to the agent: {0}")]
    Send(SyncError),
    /// The init process's terminal message carried other than one fd.
    #[error("the init process sent {0} file descriptors with its terminal, not 1")]
    FdCount(usize),
    /// The fd the init process sent is not a pty master.
    #[error("the init process's terminal is not a pty master: {0}")]
    NotAMaster(PtyError),
}

/// In the init process (a session leader without a controlling terminal, inside the
/// container's root): allocates the pty from `/dev/ptmx`, makes the slave the controlling
/// terminal and fds 0, 1 and 2, and sends the master to the agent. Returns the pty number.
pub fn setup_in_init(sock: &mut UnixStream) -> Result<u32, ConsoleError> {
    let pty = pty::open_pty().map_err(ConsoleError::Allocate)?;
    let n = pty::pty_number(&pty.master).map_err(ConsoleError::Allocate)?;
    let slave = pty.slave.as_raw_fd();
    // SAFETY: ioctl on a valid fd with an integer argument (0: do not steal).
    let r = unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) };
    Errno::result(r).map_err(|errno| ConsoleError::Sys {
        step: "TIOCSCTTY on the pty slave",
        errno,
    })?;
    for fd in 0..=2 {
        nix::unistd::dup2(slave, fd).map_err(|errno| ConsoleError::Sys {
            step: "dup2 of the pty slave onto fds 0-2",
            errno,
        })?;
    }
    sync::send_with_fds(sock, &InitMessage::Terminal, &[pty.master.as_fd()])
        .map_err(ConsoleError::Send)?;
    // Dropping `pty` closes this process's master and the slave's original fd.
    Ok(n)
}

/// In the agent: the pty master from the fds of an [`InitMessage::Terminal`], which must be
/// exactly one fd and a pty master (the rest are closed).
pub fn take_master(fds: Vec<OwnedFd>) -> Result<OwnedFd, ConsoleError> {
    let [master] = <[OwnedFd; 1]>::try_from(fds).map_err(|v| ConsoleError::FdCount(v.len()))?;
    pty::pty_number(&master).map_err(ConsoleError::NotAMaster)?;
    Ok(master)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_takes_one_pty_master_and_nothing_else() {
        let p = pty::open_pty().unwrap();
        let n = pty::pty_number(&p.master).unwrap();
        let master = take_master(vec![p.master]).unwrap();
        assert_eq!(pty::pty_number(&master).unwrap(), n);

        let e = take_master(vec![p.slave]).unwrap_err();
        assert!(matches!(e, ConsoleError::NotAMaster(_)), "{e}");
        assert!(e.to_string().contains("not a pty master"), "{e}");
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(matches!(take_master(vec![]), Err(ConsoleError::FdCount(0))));
        assert!(matches!(
            take_master(vec![null(), null()]),
            Err(ConsoleError::FdCount(2))
        ));
        assert!(matches!(
            take_master(vec![null()]),
            Err(ConsoleError::NotAMaster(_))
        ));
    }
}
