//! virtio-vsock with a hybrid unix-socket backend (Firecracker protocol).
//!
//! The guest sees a virtio-vsock device (CID from the config, host CID 2). On the host the
//! device is a unix socket:
//!
//! - host-initiated: a host process connects to `uds_path`, writes `CONNECT <port>\n`, and
//!   after the guest accepted gets `OK <host_port>\n` followed by the byte stream;
//! - guest-initiated: a guest connect to CID 2 port `P` is relayed to a connect on the unix
//!   socket `<uds_path>_<P>`.
//!
//! Layout: [`packet`] (header codec and protocol constants), [`unix`] (listener, `CONNECT`
//! handshake, unix connect), [`connection`] (one stream's state machine and credit
//! accounting), [`muxer`] (connection table, rx scheduling, inner epoll and timers) and
//! [`device`] (virtqueue processing). The host side runs on one inner epoll fd
//! ([`VsockDevice::backend_fd`]) so the event loop watches a single fd for all host sockets.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
pub mod unix;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use device::{VsockDevice, VsockQueueResult};

/// The host's CID on the vsock bus.
pub const HOST_CID: u64 = 2;
/// Index of the rx queue (device → guest).
pub const RXQ_INDEX: usize = 0;
/// Index of the tx queue (guest → device).
pub const TXQ_INDEX: usize = 1;
/// Index of the event queue (transport events).
pub const EVQ_INDEX: usize = 2;
/// Number of virtqueues of a vsock device.
pub const NUM_QUEUES: usize = 3;
/// Maximum size of each virtqueue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest packet payload accepted from or sent to the guest (Linux's own limit).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Settings of one vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's CID (3 or more).
    pub guest_cid: u64,
    /// The unix socket the VMM listens on; guest connects go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
    /// How long a host peer may take to send its `CONNECT` line, the guest to answer a
    /// connection request, and a closing connection to finish.
    pub timeout: Duration,
    /// Most live connections (guest- plus host-initiated) at a time.
    pub max_connections: usize,
    /// Most accepted host streams still sending their `CONNECT` line.
    pub max_handshakes: usize,
    /// Per-connection guest → host buffer, advertised to the guest as `buf_alloc`.
    pub conn_buf_size: u32,
}

impl VsockConfig {
    /// Defaults for `guest_cid` listening on `uds_path`: 2 s timeouts, 256 connections,
    /// 64 pending handshakes, 256 KiB per connection (so at most 64 MiB of buffering).
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> VsockConfig {
        VsockConfig {
            guest_cid,
            uds_path: uds_path.into(),
            timeout: Duration::from_secs(2),
            max_connections: 256,
            max_handshakes: 64,
            conn_buf_size: 256 * 1024,
        }
    }
}

/// Errors of the vsock device's setup and host side.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved (0, 1, 2 or `u32::MAX` and above).
    #[error("invalid guest CID {0}: must be at least 3 and below 2^32 - 1")]
    InvalidCid(u64),
    /// A configuration value is out of range.
    #[error("invalid vsock configuration: {0}")]
    InvalidConfig(&'static str),
    /// Binding the host listener failed.
    #[error("binding vsock unix socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating or driving the inner epoll / timer failed.
    #[error("vsock event loop: {0}")]
    EventLoop(std::io::Error),
}
