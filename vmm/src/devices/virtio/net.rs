//! virtio-net (id 1) with a host TAP backend: one RX and one TX queue, no offloads.
//!
//! Frames cross the device with the 12-byte virtio 1.0 header (`virtio_net_hdr_v1`) in
//! front, exactly as a tap opened with `IFF_VNET_HDR` and `TUNSETVNETHDRSZ 12` reads and
//! writes them, so a frame moves between a guest chain and the tap in one copy through a
//! bounce buffer. No checksum or segmentation offload is offered: the guest sends complete
//! frames with a zero header and receives complete frames with a zero header (`num_buffers`
//! 1); csum/TSO (and mergeable RX buffers) are left for later.
//!
//! Layout: [`device`] (the virtqueue side: RX only while the guest has posted buffers, TX
//! gather with bounds, counters), [`tap`] (the `/dev/net/tun` backend, opened by interface
//! name or adopted from an inherited fd). The device talks to its backend through
//! [`NetBackend`], so tests drive it over a datagram socket pair.

pub mod device;
pub mod tap;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::os::unix::io::RawFd;

pub use device::Net;
pub use moat_vmm_config::limits::{MAX_MTU, MIN_MTU};
pub use moat_vmm_config::{MacAddr, MacError};
pub use tap::{Tap, TapError};

/// Index of the receive queue (host → guest).
pub const RXQ_INDEX: usize = 0;
/// Index of the transmit queue (guest → host).
pub const TXQ_INDEX: usize = 1;
/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the virtio 1.0 net header (`virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Length of an Ethernet header (the shortest frame the device passes on).
pub const ETH_HLEN: usize = 14;
/// Largest Ethernet frame (without the virtio header) moved in either direction: 64 KiB.
pub const MAX_FRAME_LEN: usize = 64 << 10;
// The configuration's MTU bound is what a frame of MAX_FRAME_LEN holds with an Ethernet
// header and one VLAN tag.
const _: () = assert!(MAX_MTU as usize == MAX_FRAME_LEN - ETH_HLEN - 4);

/// A host-side frame backend. Every frame carries the [`VNET_HDR_LEN`]-byte virtio header
/// first; a read or write moves exactly one frame.
pub trait NetBackend: Send {
    /// Reads one frame into `buf` (sized for the largest frame plus header) and returns
    /// its length; `ErrorKind::WouldBlock` when none is waiting (never blocks).
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;

    /// Writes one frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;

    /// The fd the event loop watches (edge-triggered) for readable frames.
    fn raw_fd(&self) -> RawFd;

    /// A short description for logs and metrics (e.g. `tap:tap0`).
    fn describe(&self) -> String;
}
