//! Where the agent listens: AF_VSOCK in the guest, a unix socket in tests; the accepted
//! streams ([`Conn`]) and the blocking accept loop ([`serve`]) of the agent's own listeners
//! (stdio streams, debug console; ttrpc has its own).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::VsockAddr;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, Shutdown, SockFlag, SockType};
use nix::sys::time::{TimeVal, TimeValLike};

/// Pending connections the kernel queues before `accept`.
const BACKLOG: usize = 128;

/// Pause after an accept error that may clear up (out of fds or memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listen address, written `vsock:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any CID, this port.
    Vsock(u32),
    /// A unix socket at this path (replaced if a stale socket file is there).
    Unix(PathBuf),
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr::Vsock(moat_agent_protocol::AGENT_VSOCK_PORT)
    }
}

impl ListenAddr {
    /// Where process stdio streams are served when the agent serves ttrpc here: vsock
    /// [`moat_agent_protocol::STDIO_VSOCK_PORT`], or `PATH.stdio` next to a unix socket.
    pub fn stdio_default(&self) -> ListenAddr {
        match self {
            ListenAddr::Vsock(_) => ListenAddr::Vsock(moat_agent_protocol::STDIO_VSOCK_PORT),
            ListenAddr::Unix(path) => {
                ListenAddr::Unix(moat_agent_protocol::stdio::stdio_socket_path(path))
            }
        }
    }

    /// Where port-forward streams are served when the agent serves ttrpc here: vsock
    /// [`moat_agent_protocol::PORT_FORWARD_VSOCK_PORT`], or `PATH.portfwd` next to a unix
    /// socket.
    pub fn port_forward_default(&self) -> ListenAddr {
        match self {
            ListenAddr::Vsock(_) => ListenAddr::Vsock(moat_agent_protocol::PORT_FORWARD_VSOCK_PORT),
            ListenAddr::Unix(path) => ListenAddr::Unix(
                moat_agent_protocol::port_forward::port_forward_socket_path(path),
            ),
        }
    }

    /// Where the debug console listens (`moat.debug_console=1`): vsock
    /// [`moat_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT`].
    pub fn debug_console_default() -> ListenAddr {
        ListenAddr::Vsock(moat_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("vsock:") {
            let port = port
                .parse::<u32>()
                .map_err(|e| format!("bad vsock port {port:?}: {e}"))?;
            Ok(ListenAddr::Vsock(port))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path".into());
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            Err(format!("{s:?} is neither vsock:PORT nor unix:PATH"))
        }
    }
}

/// Binds and listens on `addr`; returns a non-blocking, close-on-exec listening socket, as
/// ttrpc's server expects from `Server::add_listener`.
pub fn bind(addr: &ListenAddr) -> io::Result<OwnedFd> {
    let fd: OwnedFd = match addr {
        ListenAddr::Vsock(port) => {
            let raw = socket::socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(|e| ctx(e.into(), "socket(AF_VSOCK)"))?;
            // SAFETY: `raw` was just returned by socket(2) and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let sa = VsockAddr::new(libc::VMADDR_CID_ANY, *port);
            socket::bind(raw, &sa)
                .map_err(|e| ctx(e.into(), &format!("bind vsock port {port}")))?;
            socket::listen(raw, BACKLOG).map_err(|e| ctx(e.into(), "listen on vsock"))?;
            fd
        }
        ListenAddr::Unix(path) => {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::debug!("removed stale socket {}", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx(e, &format!("removing stale {}", path.display()))),
            }
            let l = UnixListener::bind(path)
                .map_err(|e| ctx(e, &format!("bind {}", path.display())))?;
            l.set_nonblocking(true)?;
            // SAFETY: into_raw_fd hands over sole ownership.
            unsafe { OwnedFd::from_raw_fd(l.into_raw_fd()) }
        }
    };
    Ok(fd)
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The raw fd of a listener, for ttrpc (which takes ownership and closes it).
pub fn into_raw(fd: OwnedFd) -> RawFd {
    fd.into_raw_fd()
}

/// One accepted stream socket (AF_VSOCK or AF_UNIX), read and written with plain syscalls.
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    /// Wraps a connected stream socket.
    pub fn new(fd: OwnedFd) -> Self {
        Conn(fd)
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Sets (or clears, with `None`) both the receive and the send timeout.
    pub fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(d) => TimeVal::microseconds(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            None => TimeVal::microseconds(0),
        };
        socket::setsockopt(self.fd(), sockopt::ReceiveTimeout, &tv)?;
        socket::setsockopt(self.fd(), sockopt::SendTimeout, &tv)?;
        Ok(())
    }

    /// Shuts down the writing half: the peer reads EOF.
    pub fn shutdown_write(&self) -> io::Result<()> {
        socket::shutdown(self.fd(), Shutdown::Write).map_err(io::Error::from)
    }

    /// Shuts down both halves: the peer reads EOF, and a read of ours (in any thread, on any
    /// clone) returns 0.
    pub fn shutdown_both(&self) -> io::Result<()> {
        socket::shutdown(self.fd(), Shutdown::Both).map_err(io::Error::from)
    }

    /// A second handle on the same socket (close-on-exec), for another thread.
    pub fn try_clone(&self) -> io::Result<Conn> {
        self.0.try_clone().map(Conn)
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
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

/// Starts a blocking accept loop on `listener` in a thread named `<what>-accept`; every
/// accepted connection (close-on-exec) goes to `on_conn`, which must hand it on quickly (to a
/// thread of its own). Transient accept errors are retried; the loop ends on another.
pub fn serve(
    listener: OwnedFd,
    what: &'static str,
    mut on_conn: impl FnMut(Conn) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    // The listener may come non-blocking (as ttrpc's is made); this loop wants to block.
    let fd = listener.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| ctx(e.into(), "F_GETFL"))?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| ctx(e.into(), "F_SETFL"))?;
    std::thread::Builder::new()
        .name(format!("{what}-accept"))
        .spawn(move || loop {
            match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just returned this fd, owned by nobody else.
                Ok(raw) => on_conn(Conn::new(unsafe { OwnedFd::from_raw_fd(raw) })),
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EAGAIN) => {}
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    tracing::warn!("{what} listener: accept: {e}; retrying");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
                Err(e) => {
                    tracing::error!("{what} listener: accept: {e}; no more connections");
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!("vsock:1024".parse(), Ok(ListenAddr::Vsock(1024)));
        assert_eq!(
            "unix:/tmp/a.sock".parse(),
            Ok(ListenAddr::Unix("/tmp/a.sock".into()))
        );
        assert!("vsock:-1".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:1".parse::<ListenAddr>().is_err());
        assert_eq!(ListenAddr::default().to_string(), "vsock:1024");
        assert_eq!(
            ListenAddr::default().stdio_default().to_string(),
            "vsock:1025"
        );
        assert_eq!(
            ListenAddr::Unix("/tmp/a.sock".into()).stdio_default(),
            ListenAddr::Unix("/tmp/a.sock.stdio".into())
        );
    }
}
