//! Ptys for terminal processes.
//!
//! A terminal process's pty is allocated by its init process from the container's own
//! `/dev/ptmx` ([`crate::container::console`]), so that the slave exists in the container's
//! `/dev/pts`; the agent receives the master and uses it for stdio and resizes
//! ([`crate::stdio`]).
//!
//! Both ends are opened close-on-exec (nothing may leak into an unrelated child): the master
//! with `posix_openpt(O_CLOEXEC)` (which opens `/dev/ptmx` of the caller's root), the slave
//! with `TIOCGPTPEER` (Linux 4.13+: no path lookup, so always the master's own devpts
//! instance), falling back to opening `ptsname`.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Errors of pty operations.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// A system call failed.
    #[error("{what}: {errno}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        errno: Errno,
    },
    /// Opening the slave by its name failed.
    #[error("opening pty slave {name}: {source}")]
    OpenSlave {
        /// Its `/dev/pts/N` path.
        name: String,
        /// The error.
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>, errno: Errno) -> PtyError {
    PtyError::Sys {
        what: what.into(),
        errno,
    }
}

/// A new pty.
#[derive(Debug)]
pub struct Pty {
    /// The master: the agent reads the process's output from it and writes its input.
    pub master: OwnedFd,
    /// The slave: the process's fds 0, 1 and 2.
    pub slave: OwnedFd,
}

/// Opens a new pty from `/dev/ptmx`, both ends close-on-exec, neither becoming the caller's
/// controlling terminal.
pub fn open_pty() -> Result<Pty, PtyError> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain FFI call; the result is checked.
    let raw = unsafe { libc::posix_openpt(flags) };
    if raw < 0 {
        return Err(sys("opening /dev/ptmx", Errno::last()));
    }
    // SAFETY: posix_openpt just returned this fd, owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: FFI on a valid master fd.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0 {
        return Err(sys("grantpt", Errno::last()));
    }
    // SAFETY: FFI on a valid master fd.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(sys("unlockpt", Errno::last()));
    }
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new fd.
    let raw = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER as _, flags) };
    let slave = if raw >= 0 {
        // SAFETY: the ioctl just returned this fd, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(raw) }
    } else {
        let errno = Errno::last();
        tracing::debug!("TIOCGPTPEER failed ({errno}); opening the slave by name");
        open_slave_by_name(&master)?
    };
    Ok(Pty { master, slave })
}

/// Opens the slave of `master` through its `/dev/pts/N` path.
fn open_slave_by_name(master: &OwnedFd) -> Result<OwnedFd, PtyError> {
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: `buf` is writable for its length; ptsname_r NUL-terminates on success.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return Err(sys("ptsname_r", Errno::from_i32(rc)));
    }
    // SAFETY: NUL-terminated by ptsname_r within `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map(OwnedFd::from)
        .map_err(|source| PtyError::OpenSlave { name, source })
}

/// The number N of a pty master's slave `/dev/pts/N` (`TIOCGPTN`): fails for anything that
/// is not a pty master, so it also checks an fd said to be one.
pub fn pty_number(master: impl AsFd) -> Result<u32, PtyError> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTN, &mut n) };
    if rc != 0 {
        return Err(sys("TIOCGPTN (is it a pty master?)", Errno::last()));
    }
    Ok(n)
}

/// Sets the window size of a pty (`TIOCSWINSZ`, on either end).
pub fn set_window_size(fd: impl AsFd, rows: u16, cols: u16) -> Result<(), PtyError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, valid for the call.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(sys(
            format!("TIOCSWINSZ {rows}x{cols} on the pty"),
            Errno::last(),
        ));
    }
    Ok(())
}

/// The window size of a pty (`TIOCGWINSZ`): (rows, columns).
#[cfg(test)]
pub fn window_size(fd: impl AsFd) -> Result<(u16, u16), PtyError> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, valid for the call.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } != 0 {
        return Err(sys("TIOCGWINSZ", Errno::last()));
    }
    Ok((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_cloexec(fd: &OwnedFd) -> bool {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn a_pty_is_close_on_exec_and_only_its_master_is_a_master() {
        let pty = open_pty().unwrap();
        assert!(is_cloexec(&pty.master) && is_cloexec(&pty.slave));
        let n = pty_number(&pty.master).unwrap();
        let slave = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        assert!(slave.ends_with(format!("pts/{n}")), "{}", slave.display());
        assert!(pty_number(&pty.slave).is_err());
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: pipe just returned these fds, owned by nobody else.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) };
        let e = pty_number(&r).unwrap_err();
        assert!(e.to_string().contains("pty master"), "{e}");
    }

    #[test]
    fn window_sizes_set_on_the_master_show_on_the_slave() {
        let pty = open_pty().unwrap();
        set_window_size(&pty.master, 40, 120).unwrap();
        assert_eq!(window_size(&pty.slave).unwrap(), (40, 120));
        let devnull = std::fs::File::open("/dev/null").unwrap();
        assert!(set_window_size(&devnull, 1, 1).is_err());
    }
}
