//! The debug console: an operator's shell (or one command) in a pod's guest, outside every
//! container, on guest vsock port [`crate::DEBUG_CONSOLE_VSOCK_PORT`].
//!
//! It is off by default: the agent listens on the port only when the guest kernel command line
//! has `moat.debug_console=1`; otherwise the connection is refused. The guest image holds no
//! shell: the host binds a static busybox read-only into the pod's share at
//! [`crate::DEBUG_TOOLS_DIR`]`/`[`crate::DEBUG_BUSYBOX`] ([`guest_busybox_path`] in the guest).
//! A session runs as the guest's root in the guest's initial namespaces (the agent's own
//! context), in a process group of its own. At most [`MAX_SESSIONS`] run at once; one session
//! per connection; when the connection closes, or the session's process exits, its process
//! group is killed (`SIGKILL`).
//!
//! # Wire format
//!
//! 1. Client to agent: one request line, a JSON [`ConsoleRequest`] and `\n`, at most
//!    [`MAX_REQUEST_LEN`] bytes:
//!    `{"argv":["uname","-r"],"tty":false,"term":"xterm","rows":24,"cols":80}`. Every field may
//!    be left out (defaults: no argv, no tty, no term, size 0x0). No `argv`: an interactive
//!    `busybox sh`; an `argv`: `busybox sh -c '<argv, each word shell-quoted, joined by spaces>'`.
//!    `tty: true` gives the process a pty (its `TERM` from `term`, its size from `rows`/`cols`
//!    when both are non-zero); otherwise stdin, stdout and stderr are pipes.
//! 2. Then frames, both ways: `kind: u8`, `len: u32` big-endian, `len` bytes of payload, with
//!    `len` at most [`MAX_FRAME_PAYLOAD`] (a larger `len` is a protocol error: the reader
//!    allocates nothing for it). See [`FrameKind`] for the kinds:
//!    - client to agent: `STDIN` (bytes), `STDIN_EOF` (empty: closes the process's stdin; on a
//!      tty it is ignored), `RESIZE` (rows `u16` BE, cols `u16` BE; tty only);
//!    - agent to client: `OUTPUT` (the process's stdout, or the pty), `STDERR` (its stderr, no
//!      tty), `EXIT` (`i32` BE: the exit code, or 128 + the signal that killed it; the agent
//!      then closes), `ERROR` (UTF-8 text: the session could not start or broke; the agent then
//!      closes).
//!
//! A stream that ends without `EXIT` or `ERROR` means the session was lost.
//!
//! [`FrameReader`] and [`write_frame`] are the frame codec of both sides;
//! [`ConsoleConnection`] and [`run_console`] are the host's client (blocking, on any stream
//! socket type that can be read and written through a shared reference: `UnixStream`, ...).
//! The client treats the agent's bytes as hostile: every length is checked before use and a
//! malformed frame ends the session with a [`ConsoleError`].

mod client;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stdio::{self, StdioError};

pub use client::{run_console, ConsoleConnection, ConsoleInput};

/// Longest request line, newline included.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;

/// Largest frame payload.
pub const MAX_FRAME_PAYLOAD: usize = 32 * 1024;

/// Size of a frame header: the kind byte and the big-endian `u32` length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Longest `term` of a request.
pub const MAX_TERM_LEN: usize = 64;

/// Most sessions the agent runs at once; a connection beyond them gets an `ERROR` frame.
pub const MAX_SESSIONS: usize = 4;

/// Where the agent finds the debug busybox in the guest:
/// `<POD_SHARE_DIR>/<DEBUG_TOOLS_DIR>/<DEBUG_BUSYBOX>`.
pub fn guest_busybox_path() -> PathBuf {
    [
        crate::POD_SHARE_DIR,
        crate::DEBUG_TOOLS_DIR,
        crate::DEBUG_BUSYBOX,
    ]
    .iter()
    .collect()
}

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client to agent: bytes for the process's stdin (or the pty).
    Stdin = 0x01,
    /// Client to agent: no more stdin (empty payload).
    StdinEof = 0x02,
    /// Client to agent: the terminal's new size, rows `u16` BE and cols `u16` BE.
    Resize = 0x03,
    /// Agent to client: the process's stdout (or everything, on a tty).
    Output = 0x81,
    /// Agent to client: the process's stderr (never on a tty).
    Stderr = 0x82,
    /// Agent to client: the exit status, `i32` BE; the last frame.
    Exit = 0x83,
    /// Agent to client: why the session failed, UTF-8; the last frame.
    Error = 0x84,
}

impl FrameKind {
    /// The kind of a kind byte; `None` for an unknown one.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => FrameKind::Stdin,
            0x02 => FrameKind::StdinEof,
            0x03 => FrameKind::Resize,
            0x81 => FrameKind::Output,
            0x82 => FrameKind::Stderr,
            0x83 => FrameKind::Exit,
            0x84 => FrameKind::Error,
            _ => return None,
        })
    }

    /// The payload length this kind must have, if fixed.
    pub fn fixed_len(self) -> Option<usize> {
        match self {
            FrameKind::StdinEof => Some(0),
            FrameKind::Resize | FrameKind::Exit => Some(4),
            _ => None,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::Stdin => "STDIN",
            FrameKind::StdinEof => "STDIN_EOF",
            FrameKind::Resize => "RESIZE",
            FrameKind::Output => "OUTPUT",
            FrameKind::Stderr => "STDERR",
            FrameKind::Exit => "EXIT",
            FrameKind::Error => "ERROR",
        })
    }
}

/// One decoded frame; byte payloads borrow the reader's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Bytes for the process's stdin.
    Stdin(&'a [u8]),
    /// No more stdin.
    StdinEof,
    /// The terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// The process's stdout (or the pty's output).
    Output(&'a [u8]),
    /// The process's stderr.
    Stderr(&'a [u8]),
    /// The exit status: the code, or 128 + the signal.
    Exit(i32),
    /// Why the session failed (invalid UTF-8 read is replaced, lossy).
    Error(Cow<'a, str>),
}

impl<'a> Frame<'a> {
    /// An `ERROR` frame of `message`, cut to [`MAX_FRAME_PAYLOAD`] bytes at a character
    /// boundary.
    pub fn error(message: &'a str) -> Self {
        let mut cut = message.len().min(MAX_FRAME_PAYLOAD);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        Frame::Error(Cow::Borrowed(&message[..cut]))
    }

    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Stdin(_) => FrameKind::Stdin,
            Frame::StdinEof => FrameKind::StdinEof,
            Frame::Resize { .. } => FrameKind::Resize,
            Frame::Output(_) => FrameKind::Output,
            Frame::Stderr(_) => FrameKind::Stderr,
            Frame::Exit(_) => FrameKind::Exit,
            Frame::Error(_) => FrameKind::Error,
        }
    }

    /// Decodes a payload of `kind` (its length already checked against
    /// [`MAX_FRAME_PAYLOAD`]).
    fn decode(kind: FrameKind, payload: &'a [u8]) -> Result<Self, ConsoleError> {
        if kind.fixed_len().is_some_and(|n| n != payload.len()) {
            return Err(ConsoleError::BadLength {
                kind,
                len: payload.len(),
            });
        }
        let u16_at = |i: usize| u16::from_be_bytes([payload[i], payload[i + 1]]);
        Ok(match kind {
            FrameKind::Stdin => Frame::Stdin(payload),
            FrameKind::StdinEof => Frame::StdinEof,
            FrameKind::Resize => Frame::Resize {
                rows: u16_at(0),
                cols: u16_at(2),
            },
            FrameKind::Output => Frame::Output(payload),
            FrameKind::Stderr => Frame::Stderr(payload),
            FrameKind::Exit => Frame::Exit(i32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
            FrameKind::Error => Frame::Error(String::from_utf8_lossy(payload)),
        })
    }

    /// The frame's payload bytes.
    fn payload(&self) -> Cow<'_, [u8]> {
        match self {
            Frame::Stdin(b) | Frame::Output(b) | Frame::Stderr(b) => Cow::Borrowed(b),
            Frame::StdinEof => Cow::Borrowed(&[]),
            Frame::Resize { rows, cols } => {
                Cow::Owned([rows.to_be_bytes(), cols.to_be_bytes()].concat())
            }
            Frame::Exit(status) => Cow::Owned(status.to_be_bytes().to_vec()),
            Frame::Error(text) => Cow::Borrowed(text.as_bytes()),
        }
    }
}

/// Errors of the debug console protocol.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The request line would be, or is, longer than [`MAX_REQUEST_LEN`].
    #[error("debug console request longer than {MAX_REQUEST_LEN} bytes ({len} bytes)")]
    RequestTooLong {
        /// Its length (so far, when reading).
        len: usize,
    },
    /// The request line is not a JSON [`ConsoleRequest`], or a field is invalid.
    #[error("bad debug console request {line:?}: {reason}")]
    BadRequest {
        /// The line (lossy UTF-8, cut to 200 bytes).
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream ended before the request line's newline.
    #[error("the debug console stream ended inside the request line ({0} bytes read)")]
    RequestClosed(usize),
    /// A frame header announces more than [`MAX_FRAME_PAYLOAD`] bytes.
    #[error("debug console frame of kind {kind:#04x} announces {len} bytes (at most {MAX_FRAME_PAYLOAD})")]
    FrameTooLarge {
        /// The kind byte.
        kind: u8,
        /// The announced length.
        len: u64,
    },
    /// A frame's kind byte is not a [`FrameKind`].
    #[error("unknown debug console frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A fixed-size frame has another length.
    #[error("debug console {kind} frame of {len} bytes (must be {})", kind.fixed_len().unwrap_or(0))]
    BadLength {
        /// The kind.
        kind: FrameKind,
        /// Its length.
        len: usize,
    },
    /// The stream ended inside a frame.
    #[error("the debug console stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes of the header or payload read.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The peer sent a frame that does not belong to its direction.
    #[error("unexpected debug console {0} frame from the peer")]
    UnexpectedFrame(FrameKind),
    /// The agent closed the stream without an `EXIT` or `ERROR` frame.
    #[error("the debug console stream ended without an exit status (session lost)")]
    NoExit,
    /// The agent's `ERROR` frame (control characters replaced).
    #[error("the agent's debug console: {0}")]
    Agent(String),
    /// Writing the session's output locally failed.
    #[error("writing the debug console's output: {0}")]
    LocalOutput(#[source] io::Error),
    /// Reading or writing the stream failed.
    #[error("debug console stream I/O: {0}")]
    Io(#[from] io::Error),
}

/// What a client asks the agent's debug console for: the request line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsoleRequest {
    /// The command; empty: an interactive shell.
    pub argv: Vec<String>,
    /// Give the process a pty.
    pub tty: bool,
    /// `TERM` of a tty session (empty: unset); `[A-Za-z0-9._+-]`, at most [`MAX_TERM_LEN`].
    pub term: String,
    /// The pty's rows (0 with `cols` 0: the kernel's default).
    pub rows: u16,
    /// The pty's columns.
    pub cols: u16,
}

impl ConsoleRequest {
    /// Checks the fields: no NUL in `argv` (they become one shell word each), a plain `term`.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(format!("argv[{i}] contains a NUL byte"));
        }
        let term_ok = self.term.len() <= MAX_TERM_LEN
            && self
                .term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        if !term_ok {
            return Err(format!(
                "term {:?} is not 0..={MAX_TERM_LEN} of [A-Za-z0-9._+-]",
                lossy_prefix(self.term.as_bytes(), 100)
            ));
        }
        Ok(())
    }

    /// The request line, `\n` included; checked, at most [`MAX_REQUEST_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, ConsoleError> {
        let bad = |reason: String| ConsoleError::BadRequest {
            line: String::new(),
            reason,
        };
        self.validate().map_err(bad)?;
        let mut line = serde_json::to_vec(self).map_err(|e| bad(e.to_string()))?;
        line.push(b'\n');
        if line.len() > MAX_REQUEST_LEN {
            return Err(ConsoleError::RequestTooLong { len: line.len() });
        }
        Ok(line)
    }

    /// Parses and checks one request line (with or without its `\n`).
    pub fn decode(line: &[u8]) -> Result<Self, ConsoleError> {
        if line.len() > MAX_REQUEST_LEN {
            return Err(ConsoleError::RequestTooLong { len: line.len() });
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let bad = |reason: String| ConsoleError::BadRequest {
            line: lossy_prefix(body, 200),
            reason,
        };
        let req: ConsoleRequest = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        req.validate().map_err(bad)?;
        Ok(req)
    }
}

/// Reads and checks the request line (the agent's side); nothing after its `\n` is consumed.
pub fn read_request(stream: &mut impl Read) -> Result<ConsoleRequest, ConsoleError> {
    let line = stdio::read_line(stream, MAX_REQUEST_LEN).map_err(|e| match e {
        StdioError::HeaderTooLong { len } => ConsoleError::RequestTooLong { len },
        StdioError::Closed(got) => ConsoleError::RequestClosed(got),
        StdioError::Io(e) => ConsoleError::Io(e),
        other => ConsoleError::Io(io::Error::other(other.to_string())),
    })?;
    ConsoleRequest::decode(&line)
}

/// Writes one frame (header and payload in one `write_all`). A payload over
/// [`MAX_FRAME_PAYLOAD`] is refused with [`ConsoleError::FrameTooLarge`], nothing written.
pub fn write_frame(w: &mut impl Write, frame: &Frame<'_>) -> Result<(), ConsoleError> {
    let payload = frame.payload();
    let kind = frame.kind() as u8;
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(ConsoleError::FrameTooLarge {
            kind,
            len: payload.len() as u64,
        });
    }
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads frames from a stream, checking every header before reading its payload into one
/// reused buffer of at most [`MAX_FRAME_PAYLOAD`] bytes.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of the frames of `inner` (read from where it stands: after the request line).
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` when the stream ends (EOF or a reset) between frames.
    /// [`ConsoleError::Truncated`] when it ends inside one; a length over
    /// [`MAX_FRAME_PAYLOAD`], an unknown kind or a wrong fixed length are errors.
    pub fn read_frame(&mut self) -> Result<Option<Frame<'_>>, ConsoleError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match read_full(&mut self.inner, &mut header)? {
            0 => return Ok(None),
            FRAME_HEADER_LEN => {}
            got => {
                return Err(ConsoleError::Truncated {
                    got,
                    want: FRAME_HEADER_LEN,
                })
            }
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len as usize > MAX_FRAME_PAYLOAD {
            return Err(ConsoleError::FrameTooLarge {
                kind: header[0],
                len: u64::from(len),
            });
        }
        let kind = FrameKind::from_u8(header[0]).ok_or(ConsoleError::UnknownKind(header[0]))?;
        let len = len as usize;
        self.buf.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < len {
            return Err(ConsoleError::Truncated { got, want: len });
        }
        Frame::decode(kind, &self.buf).map(Some)
    }

    /// The stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read. A reset connection
/// ends the stream too (a peer that closes with unread input resets it, after its last bytes).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// At most `max` bytes of `bytes` as lossy UTF-8, for messages.
fn lossy_prefix(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}
