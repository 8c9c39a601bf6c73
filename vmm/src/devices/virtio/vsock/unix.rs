//! The unix-socket side of the hybrid vsock: the listener, the `CONNECT <port>\n` handshake of
//! host peers and non-blocking connects to `<uds_path>_<port>`.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::VsockError;

/// Longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Binds the non-blocking host listener at `path`, replacing a stale socket file there (any
/// other kind of file is left alone and the bind fails).
pub fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    let bind_err = |source| VsockError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(bind_err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// The socket a guest connect to `port` goes to: `<uds_path>_<port>`.
pub fn guest_connect_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to the unix socket at `path` without ever blocking: a listener whose backlog is
/// full fails with `WouldBlock` instead of stalling the VMM. The stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// What a [`Handshake`] read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// The line is not complete yet.
    Pending,
    /// A valid `CONNECT <port>` line.
    Connect(u32),
    /// A malformed or too long line, EOF or a socket error: close the stream.
    Invalid,
}

/// A freshly accepted host stream that has not finished its `CONNECT` line yet.
#[derive(Debug)]
pub struct Handshake {
    /// The host stream (non-blocking).
    pub stream: UnixStream,
    /// When the host peer loses its chance.
    pub deadline: Instant,
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
}

impl Handshake {
    /// Starts the handshake of `stream`, which must send its line before `deadline`.
    pub fn new(stream: UnixStream, deadline: Instant) -> Handshake {
        Handshake {
            stream,
            deadline,
            line: [0; MAX_CONNECT_LINE],
            len: 0,
        }
    }

    /// Reads what is available, one byte at a time so nothing past the newline is consumed
    /// (the host may pipeline stream data right behind its `CONNECT` line).
    pub fn read(&mut self) -> HandshakeStatus {
        loop {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return HandshakeStatus::Invalid,
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return match parse_connect(&self.line[..self.len]) {
                            Some(port) => HandshakeStatus::Connect(port),
                            None => HandshakeStatus::Invalid,
                        };
                    }
                    // Room for the newline must remain.
                    if self.len + 1 >= MAX_CONNECT_LINE {
                        return HandshakeStatus::Invalid;
                    }
                    self.line[self.len] = byte[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HandshakeStatus::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return HandshakeStatus::Invalid,
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline; a trailing `\r` and extra blanks between the
/// words are tolerated). The port is decimal and fits in 32 bits.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?;
    if words.next().is_some() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Writes the `OK <host_port>\n` acknowledgement; the stream is fresh, so the short line fits
/// in its send buffer (a short write is treated as an error).
pub fn write_ok(stream: &mut UnixStream, host_port: u32) -> io::Result<()> {
    let line = format!("OK {host_port}\n");
    let n = stream.write(line.as_bytes())?;
    if n != line.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short OK write"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT  52"), Some(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"connect 1",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 4294967296",
            b"CONNECT 1 2",
            b"CONNECT 0x10",
            b"\xffCONNECT 1",
            b"",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connect_path() {
        assert_eq!(
            guest_connect_path(Path::new("/run/v.sock"), 1024),
            PathBuf::from("/run/v.sock_1024")
        );
    }
}
