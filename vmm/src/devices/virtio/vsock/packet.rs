//! The virtio-vsock packet header as a plain value, and the protocol constants.
//!
//! rx chains are parsed with `virtio_vsock::packet::VsockPacket`; tx chains with
//! [`read_tx_chain`], because Linux sends large packets as a header plus several page-fragment
//! descriptors, which `VsockPacket` (one data descriptor) refuses. The muxer works on this
//! owned [`Header`] so guest memory is read exactly once per packet.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, Bytes, GuestMemory};

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// Stream socket type, the only one this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset.
pub const OP_RST: u16 = 3;
/// Half- or full close, with [`SHUTDOWN_RCV`] / [`SHUTDOWN_SEND`] flags.
pub const OP_SHUTDOWN: u16 = 4;
/// Stream data.
pub const OP_RW: u16 = 5;
/// Unsolicited credit announcement.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Request for a credit announcement.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A vsock packet header (`struct virtio_vsock_hdr`), in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Copies the header fields of a parsed packet.
    pub fn from_packet<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Header {
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// The little-endian wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the little-endian wire form.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The RST answering this (guest) packet: ports and CIDs swapped, no payload.
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }
}

/// Why a tx chain was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxChainError {
    /// A device-writable descriptor in a driver → device chain.
    #[error("write-only descriptor in a tx chain")]
    WriteOnly,
    /// The descriptors hold fewer than a header's bytes.
    #[error("chain shorter than the packet header")]
    ShortHeader,
    /// `len` is larger than the payload the descriptors carry.
    #[error("header len {len} but the chain carries {got} bytes of payload")]
    ShortPayload {
        /// The header's `len`.
        len: u32,
        /// Payload bytes present.
        got: usize,
    },
    /// `len` is larger than the device accepts in one packet.
    #[error("header len {0} is larger than the device's packet limit")]
    TooLarge(u32),
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory")]
    Memory,
}

/// Reads a tx chain of any layout: the header (possibly split across descriptors), then up to
/// `header.len` payload bytes from any number of device-readable descriptors into `data`.
/// Returns the header and the payload length; `data.len()` is the largest payload accepted.
pub fn read_tx_chain<G, M>(
    mem: &G,
    chain: &mut DescriptorChain<M>,
    data: &mut [u8],
) -> Result<(Header, usize), TxChainError>
where
    G: GuestMemory,
    M: Deref,
    M::Target: GuestMemory,
{
    let mut hdr = [0u8; HEADER_SIZE];
    let (mut hdr_got, mut data_got) = (0usize, 0usize);
    let mut want: Option<usize> = None;
    for desc in chain.by_ref() {
        if desc.is_write_only() {
            return Err(TxChainError::WriteOnly);
        }
        let (mut addr, mut left) = (desc.addr(), desc.len() as usize);
        if hdr_got < HEADER_SIZE {
            let n = left.min(HEADER_SIZE - hdr_got);
            mem.read_slice(&mut hdr[hdr_got..hdr_got + n], addr)
                .map_err(|_| TxChainError::Memory)?;
            hdr_got += n;
            left -= n;
            addr = addr.checked_add(n as u64).ok_or(TxChainError::Memory)?;
            if hdr_got < HEADER_SIZE {
                continue;
            }
        }
        let len = Header::from_bytes(&hdr).len;
        let target = *want.get_or_insert(len as usize);
        if target > data.len() {
            return Err(TxChainError::TooLarge(len));
        }
        let n = left.min(target - data_got);
        if n > 0 {
            mem.read_slice(&mut data[data_got..data_got + n], addr)
                .map_err(|_| TxChainError::Memory)?;
            data_got += n;
        }
        if data_got == target {
            break;
        }
    }
    if hdr_got < HEADER_SIZE {
        return Err(TxChainError::ShortHeader);
    }
    let header = Header::from_bytes(&hdr);
    if (header.len as usize) > data.len() {
        return Err(TxChainError::TooLarge(header.len));
    }
    if data_got < header.len as usize {
        return Err(TxChainError::ShortPayload {
            len: header.len,
            got: data_got,
        });
    }
    Ok((header, data_got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 77,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 4096,
            fwd_cnt: u32::MAX,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        let r = h.reset_reply();
        assert_eq!(
            (r.src_cid, r.dst_port, r.op, r.len),
            (2, 0x1234_5678, OP_RST, 0)
        );
    }

    /// Reading tx descriptor chains ([`read_tx_chain`]) of every shape.
    mod chains {
        use super::*;
        use crate::devices::virtio::testing::{desc, TestQueue};
        use virtio_queue::QueueOwnedT;
        use vm_memory::GuestAddress;

        const WRITE: u16 = 2;

        /// Posts `descs` as one chain and reads it back with `read_tx_chain`.
        fn read(
            q: &TestQueue,
            descs: &[virtio_queue::desc::RawDescriptor],
        ) -> Result<(Header, Vec<u8>), TxChainError> {
            q.add_chain(descs);
            let mut queue = q.queue();
            let mut chain = queue.iter(&q.mem).unwrap().next().unwrap();
            let mut data = vec![0u8; 64 * 1024];
            read_tx_chain(&q.mem, &mut chain, &mut data).map(|(h, n)| (h, data[..n].to_vec()))
        }

        fn header(len: u32) -> Header {
            Header {
                src_cid: 3,
                dst_cid: 2,
                src_port: 1025,
                dst_port: 5000,
                len,
                type_: TYPE_STREAM,
                op: OP_RW,
                ..Default::default()
            }
        }

        #[test]
        fn payload_split_over_many_descriptors_like_linux_page_frags() {
            let q = TestQueue::new(16);
            let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
            let hdr = header(payload.len() as u32);
            // Header split 20 + 24 bytes, payload in 4 KiB fragments plus a tail.
            let base = 0x10_0000u64;
            q.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(base))
                .unwrap();
            q.mem
                .write_slice(&payload, GuestAddress(base + 0x1000))
                .unwrap();
            let mut descs = vec![desc(base, 20, 0), desc(base + 20, 24, 0)];
            let mut off = 0u64;
            while off < payload.len() as u64 {
                let n = (payload.len() as u64 - off).min(4096);
                descs.push(desc(base + 0x1000 + off, n as u32, 0));
                off += n;
            }
            let (got_hdr, got) = read(&q, &descs).unwrap();
            assert_eq!(got_hdr, hdr);
            assert_eq!(got, payload);
        }

        /// A fresh queue whose guest memory holds a header with `len` at 0x10_0000.
        fn case(
            len: u32,
            descs: &[virtio_queue::desc::RawDescriptor],
        ) -> Result<(Header, Vec<u8>), TxChainError> {
            let q = TestQueue::new(16);
            q.mem
                .write_slice(&header(len).to_bytes(), GuestAddress(0x10_0000))
                .unwrap();
            read(&q, descs)
        }

        #[test]
        fn malformed_chains_are_refused() {
            let base = 0x10_0000u64;
            let hdr_desc = desc(base, HEADER_SIZE as u32, 0);
            let err = case(100, &[hdr_desc, desc(base + 0x1000, 10, 0)]).unwrap_err();
            assert_eq!(err, TxChainError::ShortPayload { len: 100, got: 10 });
            let err = case(0, &[desc(base, 10, 0)]).unwrap_err();
            assert_eq!(err, TxChainError::ShortHeader);
            let err = case(0, &[desc(base, HEADER_SIZE as u32, WRITE)]).unwrap_err();
            assert_eq!(err, TxChainError::WriteOnly);
            let err = case(1 << 20, &[hdr_desc, desc(base + 0x1000, 4096, 0)]).unwrap_err();
            assert_eq!(err, TxChainError::TooLarge(1 << 20));
            let err = case(0, &[desc(1 << 40, HEADER_SIZE as u32, 0)]).unwrap_err();
            assert_eq!(err, TxChainError::Memory);
            // A control packet: header only, len 0.
            let (h, data) = case(0, &[hdr_desc]).unwrap();
            assert_eq!((h.len, data.len()), (0, 0));
        }
    }
}
