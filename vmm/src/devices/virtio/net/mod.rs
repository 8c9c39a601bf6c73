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
pub(crate) mod tests;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::io::RawFd;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use device::Net;
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
/// Largest MTU that may be announced: a frame of [`MAX_FRAME_LEN`] holds it with an
/// Ethernet header and one VLAN tag.
pub const MAX_MTU: u16 = (MAX_FRAME_LEN - ETH_HLEN - 4) as u16;
/// Smallest MTU that may be announced (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

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

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six `:`-separated hex bytes.
    #[error("{0:?} is not a MAC address (expected six hex bytes like 02:00:00:00:00:01)")]
    Syntax(String),
    /// A multicast (or broadcast) address: a NIC needs a unicast one.
    #[error("{0} is a multicast address (the low bit of the first byte must be 0)")]
    Multicast(MacAddr),
    /// All zeros.
    #[error("00:00:00:00:00:00 is not a usable address")]
    Zero,
}

impl MacAddr {
    /// A random locally administered unicast address (first byte `x2`, `x6`, `xa` or
    /// `xe`), from the process's randomly seeded hasher keys.
    pub fn random_local() -> MacAddr {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
        let bytes = h.finish().to_le_bytes();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        mac[0] = (mac[0] & 0xfc) | 0x02;
        MacAddr(mac)
    }

    /// Checks that the address can be a NIC's: unicast and not all zeros.
    pub fn check_unicast(self) -> Result<MacAddr, MacError> {
        if self.0 == [0; 6] {
            Err(MacError::Zero)
        } else if self.0[0] & 1 != 0 {
            Err(MacError::Multicast(self))
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let syntax = || MacError::Syntax(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
