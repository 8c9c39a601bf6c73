//! Property test: random headers and random descriptor chains on the tx queue never panic
//! the device and never make it hold more than its bounds.

use proptest::prelude::*;

use crate::devices::virtio::vsock::muxer::MAX_PENDING_CONTROL;
use crate::devices::virtio::vsock::packet::{Header, HEADER_SIZE};
use crate::devices::virtio::vsock::testing::Harness;

const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

#[derive(Debug, Clone)]
struct RawPacket {
    hdr: Header,
    data: Vec<u8>,
    // (address choice, len, write flag, next flag, next index)
    descs: Vec<(u8, u32, bool, bool, u16)>,
}

fn header() -> impl Strategy<Value = Header> {
    (
        prop_oneof![Just(3u64), Just(2), any::<u64>()],
        prop_oneof![Just(2u64), Just(3), any::<u64>()],
        prop_oneof![Just(5000u32), 5000..5004u32, any::<u32>()],
        prop_oneof![Just(1024u32), Just(7), any::<u32>()],
        prop_oneof![
            Just(0u32),
            0..200u32,
            Just(65_536),
            Just(65_537),
            any::<u32>()
        ],
        prop_oneof![Just(1u16), any::<u16>()],
        0..10u16,
        any::<u32>(),
        prop_oneof![Just(65_536u32), any::<u32>()],
        any::<u32>(),
    )
        .prop_map(
            |(src_cid, dst_cid, src_port, dst_port, len, type_, op, flags, buf_alloc, fwd)| {
                Header {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len,
                    type_,
                    op,
                    flags: flags & 3,
                    buf_alloc,
                    fwd_cnt: fwd,
                }
            },
        )
}

fn packet() -> impl Strategy<Value = RawPacket> {
    (
        header(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(
            (
                0..4u8,
                prop_oneof![Just(HEADER_SIZE as u32), 0..400u32, any::<u32>()],
                any::<bool>(),
                prop::bool::weighted(0.1),
                any::<u16>(),
            ),
            1..3,
        ),
    )
        .prop_map(|(hdr, data, descs)| RawPacket { hdr, data, descs })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_tx_chains_never_panic_and_stay_bounded(
        packets in proptest::collection::vec(packet(), 1..40)
    ) {
        let mut h = Harness::with(|c| {
            c.max_connections = 8;
            c.conn_buf_size = 8192;
        });
        let _listener =
            std::os::unix::net::UnixListener::bind(format!("{}_1024", h.uds.display())).unwrap();
        for p in &packets {
            let mut bytes = p.hdr.to_bytes().to_vec();
            bytes.resize(0x1000, 0);
            bytes.extend(&p.data);
            let descs: Vec<(u64, u32, u16, u16)> = p
                .descs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, write, next, idx))| {
                    let addr = match addr {
                        0 | 1 => u64::MAX, // the slot's own buffer
                        2 => 0x7f_ffff_fff0,
                        _ => (32 << 20) - 8,
                    };
                    let mut flags = if write { WRITE } else { 0 };
                    if next || i + 1 < p.descs.len() {
                        flags |= NEXT;
                    }
                    (addr, len, flags, idx)
                })
                .collect();
            h.post_raw_tx(&descs, &bytes);
            if h.dev.muxer().connection_count() > 0 {
                h.pump();
            }
        }
        h.pump();
        let m = h.dev.muxer();
        prop_assert!(m.connection_count() <= 8);
        prop_assert!(m.buffered_bytes() <= 8 * 8192);
        prop_assert!(m.rx_backlog() <= 8 + MAX_PENDING_CONTROL + 1);
    }
}
