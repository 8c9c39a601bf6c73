//! The host side of the hybrid-vsock handshake (Firecracker's protocol, which moat-vmm's vsock
//! device speaks).
//!
//! The VMM exposes the guest's vsock as one unix socket on the host. A host process connects to
//! it, writes `CONNECT <port>\n` naming the guest port, and the VMM answers `OK <host_port>\n`
//! once the guest accepted the connection (`host_port` is the ephemeral port the VMM assigned to
//! the host end). From then on the unix stream carries the guest connection's bytes. When no
//! guest process listens on the port, the VMM closes the unix stream instead of answering.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Longest reply line accepted, newline included (`OK 4294967295\n` is 14 bytes).
pub const MAX_REPLY_LEN: usize = 32;

/// Why a hybrid-vsock handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The VMM closed the stream before a full reply line: nothing listens on the guest port
    /// (yet). Worth retrying while the guest boots.
    #[error(
        "the VMM closed the connection before answering (nothing listening on the guest port yet?)"
    )]
    Closed,
    /// The reply line is not `OK <u32>`: a protocol mismatch, never retried.
    #[error("unexpected hybrid vsock reply {0:?} (expected \"OK <port>\")")]
    BadReply(String),
    /// No newline within [`MAX_REPLY_LEN`] bytes: not a hybrid-vsock peer, never retried.
    #[error("hybrid vsock reply longer than {MAX_REPLY_LEN} bytes without a newline: {0:?}")]
    TooLong(String),
    /// Reading or writing the stream failed (including the handshake's read timeout).
    #[error("hybrid vsock handshake I/O: {0}")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    /// Whether a later attempt may succeed (the guest may still be booting), as opposed to a
    /// peer that speaks something else.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandshakeError::Closed | HandshakeError::Io(_))
    }
}

/// The request line for guest port `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Parses one reply line (with or without its trailing `\n`) into the host port.
///
/// Strict: exactly `OK`, one space, a decimal `u32`; anything else is
/// [`HandshakeError::BadReply`].
pub fn parse_reply(line: &[u8]) -> Result<u32, HandshakeError> {
    let bad = || HandshakeError::BadReply(String::from_utf8_lossy(line).into_owned());
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let rest = line.strip_prefix(b"OK ").ok_or_else(bad)?;
    if rest.is_empty() || rest.len() > 10 || !rest.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(rest)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(bad)
}

/// Reads one `\n`-terminated line of at most [`MAX_REPLY_LEN`] bytes, one byte at a time so
/// that nothing after the newline (the first ttrpc bytes) is consumed.
pub fn read_reply_line(stream: &mut impl Read) -> Result<Vec<u8>, HandshakeError> {
    let mut line = Vec::with_capacity(MAX_REPLY_LEN);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return Ok(line);
                }
                if line.len() >= MAX_REPLY_LEN {
                    return Err(HandshakeError::TooLong(
                        String::from_utf8_lossy(&line).into_owned(),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HandshakeError::Closed)
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
}

/// Runs the handshake on a connected stream: sends `CONNECT <port>`, waits at most `timeout` for
/// the reply and returns the host port. The stream's read/write timeouts are cleared again on
/// success, so the caller gets a plain blocking stream.
pub fn handshake(
    stream: &mut UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<u32, HandshakeError> {
    let timeout = timeout.max(Duration::from_millis(1));
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    match stream.write_all(connect_line(port).as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(HandshakeError::Closed),
        Err(e) => return Err(e.into()),
    }
    let line = read_reply_line(stream)?;
    let host_port = parse_reply(&line)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(host_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_lines() {
        assert_eq!(parse_reply(b"OK 1234\n").unwrap(), 1234);
        assert_eq!(parse_reply(b"OK 0").unwrap(), 0);
        assert_eq!(parse_reply(b"OK 4294967295\n").unwrap(), u32::MAX);
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            &b"OK\n"[..],
            b"OK \n",
            b"ok 12\n",
            b"OK  12\n",
            b"OK 12 \n",
            b"OK -1\n",
            b"OK +1\n",
            b"OK 4294967296\n",
            b"OK 12\r\n",
            b"ERR 12\n",
            b"HTTP/1.1 200 OK\n",
            b"",
        ] {
            let err = parse_reply(bad).unwrap_err();
            assert!(matches!(err, HandshakeError::BadReply(_)), "{bad:?}: {err}");
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn reads_exactly_one_line() {
        let mut input: &[u8] = b"OK 7\nttrpc-bytes";
        assert_eq!(read_reply_line(&mut input).unwrap(), b"OK 7\n");
        assert_eq!(input, b"ttrpc-bytes");
    }

    #[test]
    fn eof_is_transient_and_long_lines_are_refused() {
        let mut eof: &[u8] = b"OK 1";
        let err = read_reply_line(&mut eof).unwrap_err();
        assert!(matches!(err, HandshakeError::Closed) && err.is_transient());

        let long = [b'9'; 100];
        let err = read_reply_line(&mut &long[..]).unwrap_err();
        assert!(matches!(err, HandshakeError::TooLong(ref s) if s.len() == MAX_REPLY_LEN));
    }

    #[test]
    fn connect_line_format() {
        assert_eq!(connect_line(1024), "CONNECT 1024\n");
    }
}
