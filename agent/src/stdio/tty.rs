//! Ptys for terminal processes.
//!
//! Both ends are opened close-on-exec (the agent spawns processes from several threads, so an
//! fd without it could leak into an unrelated child): the master with `posix_openpt(O_CLOEXEC)`,
//! the slave with `TIOCGPTPEER` (Linux 4.13+), falling back to opening `ptsname`.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::StdioError;

/// A new pty.
#[derive(Debug)]
pub(super) struct Pty {
    /// The master: the agent reads the process's output from it and writes its input.
    pub master: OwnedFd,
    /// The slave: the process's fds 0, 1 and 2.
    pub slave: OwnedFd,
}

/// Opens a new pty, both ends close-on-exec, neither becoming the agent's controlling terminal.
pub(super) fn open_pty() -> Result<Pty, StdioError> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain FFI call; the result is checked.
    let raw = unsafe { libc::posix_openpt(flags) };
    if raw < 0 {
        return Err(StdioError::sys("posix_openpt(/dev/ptmx)", Errno::last()));
    }
    // SAFETY: posix_openpt just returned this fd, owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: FFI on a valid master fd.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0 {
        return Err(StdioError::sys("grantpt", Errno::last()));
    }
    // SAFETY: FFI on a valid master fd.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(StdioError::sys("unlockpt", Errno::last()));
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
fn open_slave_by_name(master: &OwnedFd) -> Result<OwnedFd, StdioError> {
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: `buf` is writable for its length; ptsname_r NUL-terminates on success.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return Err(StdioError::sys("ptsname_r", Errno::from_i32(rc)));
    }
    // SAFETY: NUL-terminated by ptsname_r within `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map(OwnedFd::from)
        .map_err(|source| StdioError::Io {
            what: format!("opening pty slave {name}"),
            source,
        })
}

/// TIOCSWINSZ on `master`.
pub(super) fn set_window_size(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), StdioError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(StdioError::sys(
            format!("TIOCSWINSZ {rows}x{cols} on the pty master"),
            Errno::last(),
        ));
    }
    Ok(())
}
