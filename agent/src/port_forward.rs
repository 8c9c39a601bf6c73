//! Port-forward streams (wire format: [`moat_agent_protocol::port_forward`]): each stream the
//! host opens on [`moat_agent_protocol::PORT_FORWARD_VSOCK_PORT`] names a TCP port; the agent
//! connects to it on the guest's loopback (`127.0.0.1`, else `::1`) in its own network
//! namespace, the pod's, where every container of the pod listens, and copies bytes both ways
//! until both sides are done.
//!
//! At most [`MAX_STREAMS`] streams run at once (more are refused with `ERR`); each runs in a
//! thread of its own.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_agent_protocol::port_forward::{self as wire, PumpEnd, MAX_STREAMS};
use moat_agent_protocol::stdio::{self, REPLY_OK};

use crate::listener::{self, Conn};
use crate::util::Gate;

/// Longest wait for the request line (and for the reply to be written).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the port's connection in the guest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The port forwarder: counts its streams.
pub struct PortForwarder {
    streams: Arc<Gate>,
}

impl Default for PortForwarder {
    fn default() -> Self {
        Self::with_max(MAX_STREAMS)
    }
}

impl PortForwarder {
    /// A forwarder that runs at most `max_streams` streams at once.
    pub fn with_max(max_streams: usize) -> Self {
        PortForwarder {
            streams: Gate::new(max_streams),
        }
    }

    /// Accepts streams on `listener` in a thread of its own.
    pub fn serve(self: Arc<Self>, listener: OwnedFd) -> io::Result<JoinHandle<()>> {
        listener::serve(listener, "port-forward", move |conn| self.accept(conn))
    }

    /// Counts a new stream and starts its thread, or refuses it when `max_streams` run.
    fn accept(self: &Arc<Self>, mut conn: Conn) {
        let Some(pass) = self.streams.enter() else {
            let msg = format!(
                "too many port-forward streams (at most {} at once)",
                self.streams.max()
            );
            tracing::warn!("port forward: refusing a stream: {msg}");
            let _ = conn.set_timeouts(Some(REQUEST_TIMEOUT));
            let _ = conn.write_all(&stdio::error_reply(&msg));
            return;
        };
        if let Err(e) = std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || {
                handle(conn);
                drop(pass);
            })
        {
            tracing::error!("port forward: spawning a stream thread: {e}; dropping it");
        }
    }
}

/// Serves one stream in the calling thread: request, connection, reply, then the copy.
pub(crate) fn handle(mut conn: Conn) {
    let port = match read_request(&mut conn) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("port forward: refused: {e}");
            let _ = conn.write_all(&stdio::error_reply(&e.to_string()));
            return;
        }
    };
    let tcp = match connect_loopback(port) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("connecting to port {port} in the pod: {e}");
            tracing::info!("port forward: {msg}");
            let _ = conn.write_all(&stdio::error_reply(&msg));
            return;
        }
    };
    if let Err(e) = conn
        .write_all(REPLY_OK)
        .and_then(|_| conn.set_timeouts(None))
    {
        tracing::warn!("port forward to port {port}: answering the host: {e}");
        return;
    }
    tracing::debug!("port forward to port {port}: open");
    match wire::pump(conn.as_fd(), tcp.as_fd(), None) {
        Ok(PumpEnd::Closed { a_to_b, b_to_a } | PumpEnd::Idle { a_to_b, b_to_a }) => {
            tracing::debug!("port forward to port {port}: closed ({a_to_b} bytes in, {b_to_a} out)")
        }
        Err(e) => tracing::warn!("port forward to port {port}: {e}"),
    }
}

/// Reads the request line within [`REQUEST_TIMEOUT`] (the timeouts stay set for the reply).
fn read_request(conn: &mut Conn) -> Result<u16, String> {
    conn.set_timeouts(Some(REQUEST_TIMEOUT))
        .map_err(|e| format!("setting the request timeout: {e}"))?;
    let line = stdio::read_line(conn, wire::MAX_REQUEST_LEN).map_err(|e| e.to_string())?;
    wire::parse_request(&line).map_err(|e| e.to_string())
}

/// Connects to `port` on `127.0.0.1`, or on `::1` when nothing listens there (containerd's
/// order for the same request on a runc pod).
fn connect_loopback(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
                .map_err(|e6| io::Error::new(e4.kind(), format!("IPv4: {e4}; IPv6: {e6}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A stream to `handle` in a thread, as the host opens it.
    fn stream() -> (UnixStream, JoinHandle<()>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || handle(Conn::new(OwnedFd::from(guest))));
        (host, t)
    }

    fn reply(s: &mut UnixStream) -> Result<(), String> {
        let line = stdio::read_line(s, stdio::MAX_REPLY_LEN).unwrap();
        stdio::parse_reply(&line).unwrap()
    }

    #[test]
    fn a_stream_reaches_the_port_and_carries_bytes_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut c, _) = server.accept().unwrap();
            let mut req = Vec::new();
            c.read_to_end(&mut req).unwrap();
            c.write_all(&req.to_ascii_uppercase()).unwrap();
        });
        let (mut host, t) = stream();
        host.write_all(&wire::request_line(port)).unwrap();
        assert_eq!(reply(&mut host), Ok(()));
        host.write_all(b"hello port").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        host.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"HELLO PORT");
        echo.join().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_closed_port_and_a_bad_request_are_refused_with_a_reason() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let (mut host, t) = stream();
        host.write_all(&wire::request_line(port)).unwrap();
        let err = reply(&mut host).unwrap_err();
        assert!(err.contains(&format!("port {port}")), "{err}");
        t.join().unwrap();
        let (mut host, t) = stream();
        host.write_all(b"PORT 0\n").unwrap();
        assert!(reply(&mut host)
            .unwrap_err()
            .contains("bad port-forward request"));
        t.join().unwrap();
        let (mut host, t) = stream();
        host.write_all(&[b'9'; 64]).unwrap();
        assert!(reply(&mut host).is_err());
        t.join().unwrap();
    }

    #[test]
    fn streams_beyond_the_limit_are_refused() {
        let fwd = Arc::new(PortForwarder::with_max(0));
        let (mut host, guest) = UnixStream::pair().unwrap();
        fwd.accept(Conn::new(OwnedFd::from(guest)));
        assert!(reply(&mut host).unwrap_err().contains("too many"));
    }
}
