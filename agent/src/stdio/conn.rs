//! The stdio listener: accepts streams (AF_VSOCK in the guest, AF_UNIX in tests), reads each
//! one's header, attaches it and runs its copy loop in a thread of its own.

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_agent_protocol::stdio::{self as wire, Channel, StreamHeader};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self, sockopt, MsgFlags, Shutdown, SockFlag};
use nix::sys::time::{TimeVal, TimeValLike};

use super::{copy, StdioError, StdioHub};

/// Longest wait for a stream's header line (and for the reply to be written).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after an accept error that may clear up (out of fds or memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One accepted stream socket (AF_VSOCK or AF_UNIX), read and written with plain syscalls.
#[derive(Debug)]
pub(crate) struct Conn(OwnedFd);

impl Conn {
    /// Wraps a connected stream socket.
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Conn(fd)
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Sets (or clears, with `None`) both the receive and the send timeout.
    pub(crate) fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(d) => TimeVal::microseconds(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            None => TimeVal::microseconds(0),
        };
        socket::setsockopt(self.fd(), sockopt::ReceiveTimeout, &tv)?;
        socket::setsockopt(self.fd(), sockopt::SendTimeout, &tv)?;
        Ok(())
    }

    /// Shuts down the writing half: the peer reads EOF.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        socket::shutdown(self.fd(), Shutdown::Write).map_err(io::Error::from)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.fd(), buf).map_err(io::Error::from)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a vanished host is EPIPE here, never a SIGPIPE.
        socket::send(self.fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts the accept loop on `listener` in a thread named `stdio-accept`.
pub(super) fn serve(hub: Arc<StdioHub>, listener: OwnedFd) -> Result<JoinHandle<()>, StdioError> {
    // The listener may come non-blocking (as ttrpc's is made); this loop wants to block.
    let fd = listener.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| StdioError::sys("F_GETFL", e))?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| StdioError::sys("F_SETFL", e))?;
    std::thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || accept_loop(&hub, &listener))
        .map_err(|source| StdioError::Io {
            what: "spawning the stdio accept thread".into(),
            source,
        })
}

fn accept_loop(hub: &Arc<StdioHub>, listener: &OwnedFd) {
    loop {
        let raw = match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => raw,
            Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EAGAIN) => continue,
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                tracing::warn!("stdio listener: accept: {e}; retrying");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            Err(e) => {
                tracing::error!("stdio listener: accept: {e}; no more stdio streams");
                return;
            }
        };
        // SAFETY: accept4 just returned this fd, owned by nobody else.
        let conn = Conn::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let hub = Arc::clone(hub);
        if let Err(e) = std::thread::Builder::new()
            .name("stdio-stream".into())
            .spawn(move || handle(&hub, conn))
        {
            tracing::error!("stdio listener: spawning a stream thread: {e}; dropping the stream");
        }
    }
}

/// Serves one accepted stream: header, reply, then the copy loop (in the calling thread).
pub(crate) fn handle(hub: &StdioHub, mut conn: Conn) {
    let header = match read_header(&mut conn, hub.header_timeout) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("stdio stream refused: {e}");
            let _ = conn.write_all(&wire::error_reply(&e.to_string()));
            return;
        }
    };
    let who = format!(
        "{:?}/{:?} {}",
        header.container_id, header.exec_id, header.channel
    );
    let attachment = match hub.attach(&header) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!("stdio stream for {who} refused: {e}");
            let _ = conn.write_all(&wire::error_reply(&e.to_string()));
            return;
        }
    };
    if let Err(e) = conn.write_all(wire::REPLY_OK) {
        tracing::warn!("stdio stream for {who}: writing OK: {e}; channel lost");
        return;
    }
    if let Err(e) = conn.set_timeouts(None) {
        tracing::warn!("stdio stream for {who}: clearing timeouts: {e}; channel lost");
        return;
    }
    tracing::debug!("stdio stream for {who} attached");
    match header.channel {
        Channel::Stdin => copy::stdin(&who, conn, attachment),
        Channel::Stdout | Channel::Stderr => copy::output(&who, conn, attachment),
    }
}

/// Reads the header within `timeout` (the timeouts stay set for the reply).
fn read_header(conn: &mut Conn, timeout: Duration) -> Result<StreamHeader, StdioError> {
    conn.set_timeouts(Some(timeout))
        .map_err(|source| StdioError::Io {
            what: "setting the stdio header timeout".into(),
            source,
        })?;
    Ok(wire::read_header(conn)?)
}
