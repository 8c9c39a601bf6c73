//! Opening a process's stdio stream before an absolute deadline.
//!
//! The protocol crate's `AgentClient::open_stdio` gives each read its own timeout; its lines
//! are read one byte at a time, so an agent sending one byte per timeout could hold a `Create`
//! for hours. Here every step (the connection, the hybrid vsock `CONNECT`/`OK`, the header and
//! the agent's `OK`/`ERR` line) runs against one [`Instant`]: each read and write is given what
//! is left of it, and none starts once it has passed. The wire format is the protocol crate's
//! ([`moat_agent_protocol::handshake`], [`moat_agent_protocol::stdio`]).

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_agent_protocol::handshake::{self, HandshakeError};
use moat_agent_protocol::port_forward::{self, port_forward_socket_path};
use moat_agent_protocol::stdio::{self, stdio_socket_path, Channel, StdioError, StreamHeader};
use moat_agent_protocol::{PORT_FORWARD_VSOCK_PORT, STDIO_VSOCK_PORT};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::AgentAddress;

/// How often a connect to a socket whose backlog is full is tried again.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Why a stdio stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StdioOpenError {
    /// The deadline passed before the stream was open.
    #[error("the agent did not open the stream within the {0:?} deadline")]
    Deadline(Duration),
    /// The socket could not be connected.
    #[error("connecting {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The VMM refused or garbled the hybrid vsock handshake.
    #[error("hybrid vsock handshake: {0}")]
    Handshake(#[source] HandshakeError),
    /// The agent refused the stream or garbled its reply.
    #[error(transparent)]
    Stream(StdioError),
    /// The agent refused a port-forward stream (`ERR <message>`: nothing listens on the port
    /// in the guest, too many streams, ...).
    #[error("the guest refused port-forward to port {port}: {message:?}")]
    PortRefused {
        /// The guest TCP port.
        port: u16,
        /// The agent's message (guest input: printed escaped).
        message: String,
    },
}

/// Opens the `channel` stream of (`container_id`, `exec_id`) at `address` before `deadline`.
pub(super) fn open(
    address: &AgentAddress,
    container_id: &str,
    exec_id: &str,
    channel: Channel,
    deadline: Instant,
) -> Result<UnixStream, StdioOpenError> {
    let header = StreamHeader {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        channel,
    };
    let line = header.encode().map_err(StdioOpenError::Stream)?;
    let (path, port) = match address {
        AgentAddress::HybridVsock(path) => (path.clone(), Some(STDIO_VSOCK_PORT)),
        AgentAddress::Unix(path) => (stdio_socket_path(path), None),
    };
    open_line_stream(&path, port, &line, deadline)?.map_err(|message| {
        StdioOpenError::Stream(StdioError::Refused {
            container_id: header.container_id.clone(),
            exec_id: header.exec_id.clone(),
            channel: header.channel,
            message,
        })
    })
}

/// Opens a port-forward stream to guest TCP `port` at `address` before `deadline`
/// ([`moat_agent_protocol::port_forward`]).
pub(super) fn open_port_forward(
    address: &AgentAddress,
    port: u16,
    deadline: Instant,
) -> Result<UnixStream, StdioOpenError> {
    let (path, vsock_port) = match address {
        AgentAddress::HybridVsock(path) => (path.clone(), Some(PORT_FORWARD_VSOCK_PORT)),
        AgentAddress::Unix(path) => (port_forward_socket_path(path), None),
    };
    let line = port_forward::request_line(port);
    open_line_stream(&path, vsock_port, &line, deadline)?
        .map_err(|message| StdioOpenError::PortRefused { port, message })
}

/// Connects to `path` (guest `port` through it, for a hybrid vsock socket), sends the
/// `header` line and reads the agent's `OK` (`Ok(Ok(stream))`, blocking, no timeouts) or
/// `ERR <message>` (`Ok(Err(message))`), all before `deadline`.
fn open_line_stream(
    path: &Path,
    port: Option<u32>,
    header: &[u8],
    deadline: Instant,
) -> Result<Result<UnixStream, String>, StdioOpenError> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let stream = connect_port(path, port, deadline)?;
    let mut io = Before {
        stream: &stream,
        deadline,
    };
    let reply = exchange_header(&mut io, header).map_err(|e| match e {
        StdioError::Io(e) if timed_out(&e) => StdioOpenError::Deadline(budget),
        e => StdioOpenError::Stream(e),
    })?;
    if let Err(message) = reply {
        return Ok(Err(message));
    }
    let clear = |r: io::Result<()>| r.map_err(|e| StdioOpenError::Stream(StdioError::Io(e)));
    clear(stream.set_read_timeout(None))?;
    clear(stream.set_write_timeout(None))?;
    Ok(Ok(stream))
}

/// Connects to the unix socket `path` and, for a hybrid vsock socket, to guest `port` through
/// it, before `deadline`. The stream may keep the handshake's last read and write timeouts.
pub(super) fn connect_port(
    path: &Path,
    port: Option<u32>,
    deadline: Instant,
) -> Result<UnixStream, StdioOpenError> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let stream = connect_before(path, deadline).map_err(|e| match timed_out(&e) {
        true => StdioOpenError::Deadline(budget),
        false => StdioOpenError::Connect {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let mut io = Before {
        stream: &stream,
        deadline,
    };
    if let Some(port) = port {
        vsock_handshake(&mut io, port).map_err(|e| match e {
            HandshakeError::Io(e) if timed_out(&e) => StdioOpenError::Deadline(budget),
            e => StdioOpenError::Handshake(e),
        })?;
    }
    Ok(stream)
}

/// `CONNECT <port>` and the VMM's `OK <host port>`.
fn vsock_handshake(io: &mut Before<'_>, port: u32) -> Result<(), HandshakeError> {
    io.write_all(handshake::connect_line(port).as_bytes())?;
    let line = handshake::read_reply_line(io)?;
    handshake::parse_reply(&line).map(drop)
}

/// The header line, then the agent's `OK` (`Ok(Ok(()))`) or its `ERR <message>`
/// (`Ok(Err(message))`, a refusal).
fn exchange_header(io: &mut Before<'_>, header: &[u8]) -> Result<Result<(), String>, StdioError> {
    io.write_all(header)?;
    let reply = match stdio::read_line(io, stdio::MAX_REPLY_LEN) {
        Ok(reply) => reply,
        Err(StdioError::HeaderTooLong { len }) => {
            return Err(StdioError::BadReply(format!(
                "<{len} bytes without a newline>"
            )))
        }
        Err(e) => return Err(e),
    };
    stdio::parse_reply(&reply)
}

/// Whether an I/O error is the deadline passing.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Connects to the unix socket `path` without blocking past `deadline` (a blocking connect
/// waits as long as the listener's backlog is full).
fn connect_before(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    loop {
        let raw = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // SAFETY: `socket` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        match socket::connect(raw, &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(Errno::EAGAIN) => return Err(io::ErrorKind::TimedOut.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A stream whose every read and write gets what is left until `deadline`.
struct Before<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Before<'_> {
    /// What is left, or a timeout error once nothing is.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for Before<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Before<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
