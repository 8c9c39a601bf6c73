//! Where the agent listens: AF_VSOCK in the guest, a unix socket in tests.

use std::fmt;
use std::io;
use std::os::unix::io::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};

/// Pending connections the kernel queues before `accept`.
const BACKLOG: usize = 128;

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
