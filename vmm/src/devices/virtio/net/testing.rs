//! Test helpers shared by the virtio-net tests and the virtio fuzz tests: a datagram socket
//! pair standing in for the tap (one datagram = one frame, vnet header included).

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use super::NetBackend;

/// The device end of a datagram socket pair as a backend.
pub(crate) struct SocketBackend(UnixDatagram);

impl NetBackend for SocketBackend {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.send(frame).map(|_| ())
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn describe(&self) -> String {
        "socket".into()
    }
}

/// A backend and the peer socket the test plays the host network on (both non-blocking).
pub(crate) fn socket_backend() -> (Box<dyn NetBackend>, UnixDatagram) {
    let (dev, peer) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    (Box::new(SocketBackend(dev)), peer)
}
