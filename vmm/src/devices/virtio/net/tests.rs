//! virtio-net queue processing against mock queues, with a datagram socket pair standing in
//! for the tap (one datagram = one frame, vnet header included, like a tap queue).

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::MAX_FRAMES_PER_EVENT;
use super::testing::socket_backend;
use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::testing::{desc, read_bytes, TestQueue, TEST_MEM_BYTES};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1};

const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const MAC: MacAddr = MacAddr([0x02, 0x6d, 0x6f, 0x61, 0x74, 0x01]);
const BUF: u64 = 0x10_0000;
const QSIZE: u16 = 16;

/// A device activated on an RX and a TX mock queue in one guest memory.
struct Rig {
    net: Net,
    rx: TestQueue,
    tx: TestQueue,
    peer: UnixDatagram,
}

fn rig(mtu: Option<u16>) -> Rig {
    let (backend, peer) = socket_backend();
    let mut net = Net::new(backend, MAC, mtu).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_MEM_BYTES)]).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let rx = TestQueue::new_at(&mem, 0, QSIZE, irq.clone());
    let tx = TestQueue::new_at(&mem, 0x8000, QSIZE, irq.clone());
    net.activate(mem, irq, vec![rx.queue(), tx.queue()])
        .unwrap();
    Rig { net, rx, tx, peer }
}

impl Rig {
    fn counter(
        &self,
        pick: fn(&crate::metrics::NetCounters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        pick(self.net.counters()).load(Ordering::Relaxed)
    }

    /// The next frame the device sent to the host side, if any.
    fn sent(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2 * MAX_FRAME_LEN];
        match self.peer.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("peer recv: {e}"),
        }
    }
}

/// A frame with a header full of junk (which the device must not pass on) and a
/// recognisable body of `len` bytes (Ethernet header included).
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xa5u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// What the guest must see in front of every received frame: no flags, one buffer.
fn rx_header() -> Vec<u8> {
    let mut h = vec![0u8; VNET_HDR_LEN];
    h[10] = 1;
    h
}

#[test]
fn offers_mac_and_version_1_but_no_offloads() {
    let (backend, _peer) = socket_backend();
    let net = Net::new(backend, MAC, None).unwrap();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = net.avail_features();
    assert_eq!(f, FEATURE_VERSION_1 | 1 << VIRTIO_NET_F_MAC);
    for off in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_eq!(f & 1 << off, 0, "offload bit {off} offered");
    }
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC.0);

    let (backend, _peer) = socket_backend();
    let net = Net::new(backend, MAC, Some(9000)).unwrap();
    assert_ne!(net.avail_features() & 1 << VIRTIO_NET_F_MTU, 0);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
}

#[test]
fn transport_refuses_offloads_the_device_did_not_offer() {
    let (backend, _peer) = socket_backend();
    let net: Arc<Mutex<dyn VirtioDevice>> =
        Arc::new(Mutex::new(Net::new(backend, MAC, None).unwrap()));
    let t = TestQueue::new(QSIZE);
    let mut tr = MmioTransport::new(net, t.mem.clone(), t.interrupt());
    let write = |tr: &mut MmioTransport, off: u64, v: u32| tr.write(off, &v.to_le_bytes());
    let status = |tr: &mut MmioTransport| {
        let mut b = [0u8; 4];
        tr.read(0x70, &mut b);
        u32::from_le_bytes(b)
    };
    let negotiate = |tr: &mut MmioTransport, features: u64| {
        write(tr, 0x70, 0);
        write(tr, 0x70, 1);
        write(tr, 0x70, 3);
        write(tr, 0x24, 0);
        write(tr, 0x20, features as u32);
        write(tr, 0x24, 1);
        write(tr, 0x20, (features >> 32) as u32);
        write(tr, 0x70, 11);
        status(tr) & 8 != 0
    };
    let good = FEATURE_VERSION_1 | 1 << VIRTIO_NET_F_MAC;
    assert!(!negotiate(&mut tr, good | 1 << VIRTIO_NET_F_CSUM));
    assert!(!negotiate(&mut tr, good | 1 << VIRTIO_NET_F_MRG_RXBUF));
    assert!(negotiate(&mut tr, good));
    let mut id = [0u8; 4];
    tr.read(0x08, &mut id);
    assert_eq!(u32::from_le_bytes(id), 1);
}

#[test]
fn tx_hands_the_gathered_frame_with_a_zeroed_header_to_the_backend() {
    let mut r = rig(None);
    let f = frame(1000, 7);
    // Header and first bytes in one descriptor, the rest split in two.
    r.tx.mem.write_slice(&f[..100], GuestAddress(BUF)).unwrap();
    r.tx.mem
        .write_slice(&f[100..600], GuestAddress(BUF + 0x1000))
        .unwrap();
    r.tx.mem
        .write_slice(&f[600..], GuestAddress(BUF + 0x2000))
        .unwrap();
    r.tx.add_chain(&[
        desc(BUF, 100, 0),
        desc(BUF + 0x1000, 500, 0),
        desc(BUF + 0x2000, (f.len() - 600) as u32, 0),
    ]);
    r.net.process_tx();
    assert_eq!(r.tx.used_idx(), 1);
    assert_eq!(r.tx.used_len(0), 0);
    let sent = r.sent().expect("nothing sent");
    assert_eq!(sent.len(), f.len());
    assert_eq!(&sent[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(&sent[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert!(r.tx.irq_raised());
    assert_eq!(r.counter(|c| &c.tx_frames), 1);
    assert_eq!(r.counter(|c| &c.tx_bytes), 1000);
}

#[test]
fn tx_accepts_64k_frames_and_refuses_longer_ones() {
    let mut r = rig(None);
    let max = (VNET_HDR_LEN + MAX_FRAME_LEN) as u32;
    r.tx.add_chain(&[desc(BUF, 0x1000, 0), desc(BUF + 0x1000, max - 0x1000, 0)]);
    r.tx.add_chain(&[
        desc(BUF, 0x1000, 0),
        desc(BUF + 0x1000, max - 0x1000 + 1, 0),
    ]);
    r.net.process_tx();
    assert_eq!(r.tx.used_idx(), 2);
    assert_eq!(r.sent().map(|s| s.len()), Some(max as usize));
    assert_eq!(r.sent(), None);
    assert_eq!(r.counter(|c| &c.tx_bad_chains), 1);
}

#[test]
fn malformed_tx_chains_are_consumed_and_counted() {
    let mut r = rig(None);
    let end = TEST_MEM_BYTES as u64;
    let cases: [&[_]; 5] = [
        // A device-writable descriptor.
        &[desc(BUF, 12, 0), desc(BUF + 0x1000, 100, W)],
        // Running past guest memory.
        &[desc(BUF, 12, 0), desc(end - 50, 100, 0)],
        // An address far outside memory.
        &[desc(u64::MAX - 8, 100, 0)],
        // A runt: header plus less than an Ethernet header.
        &[desc(BUF, (VNET_HDR_LEN + ETH_HLEN - 1) as u32, 0)],
        // Lengths that overflow when added.
        &[desc(BUF, u32::MAX, 0), desc(BUF, u32::MAX, 0)],
    ];
    for chain in cases {
        r.tx.add_chain(chain);
    }
    r.net.process_tx();
    assert_eq!(r.tx.used_idx(), cases.len() as u16);
    for i in 0..cases.len() as u16 {
        assert_eq!(r.tx.used_len(i), 0);
    }
    assert_eq!(r.sent(), None, "a malformed chain reached the backend");
    assert_eq!(r.counter(|c| &c.tx_bad_chains), cases.len() as u64);
    // The queue still works.
    r.tx.add_chain(&[desc(BUF, 60, 0)]);
    r.net.process_tx();
    assert_eq!(r.sent().map(|s| s.len()), Some(60));
}

#[test]
fn tx_backend_errors_drop_the_frame_and_free_the_chain() {
    let mut r = rig(None);
    // The host end goes away: sends fail.
    r.peer = UnixDatagram::unbound().unwrap();
    r.tx.add_chain(&[desc(BUF, 60, 0)]);
    r.net.process_tx();
    assert_eq!(r.tx.used_idx(), 1);
    assert_eq!(r.counter(|c| &c.tx_dropped), 1);
}

#[test]
fn rx_fills_posted_buffers_with_a_clean_header() {
    let mut r = rig(None);
    let f = frame(100, 3);
    r.peer.send(&f).unwrap();
    r.rx.add_chain(&[desc(BUF, 40, W), desc(BUF + 0x1000, 2000, W)]);
    r.net.process_rx();
    assert_eq!(r.rx.used_idx(), 1);
    assert_eq!(r.rx.used_len(0), f.len() as u32);
    let mut got = read_bytes(&r.rx.mem, BUF, 40);
    got.extend(read_bytes(&r.rx.mem, BUF + 0x1000, f.len() - 40));
    assert_eq!(&got[..VNET_HDR_LEN], rx_header().as_slice());
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert!(r.rx.irq_raised());
    assert_eq!(r.counter(|c| &c.rx_frames), 1);
    assert_eq!(r.counter(|c| &c.rx_bytes), 100);
}

#[test]
fn rx_waits_for_buffers_instead_of_buffering() {
    let mut r = rig(None);
    for seed in 0..3 {
        r.peer.send(&frame(60, seed)).unwrap();
    }
    r.net.process_rx();
    assert_eq!(r.rx.used_idx(), 0);
    // Frames stay in the backend; each posted chain takes the next one, in order.
    for seed in 0..3u8 {
        r.rx.add_chain(&[desc(BUF + 0x1000 * u64::from(seed), 1526, W)]);
        r.net.process_rx();
        assert_eq!(r.rx.used_idx(), u16::from(seed) + 1);
        let body = read_bytes(&r.rx.mem, BUF + 0x1000 * u64::from(seed) + 12, 60);
        assert_eq!(body, frame(60, seed)[VNET_HDR_LEN..]);
    }
    // Nothing left: a posted chain stays posted.
    r.rx.add_chain(&[desc(BUF, 1526, W)]);
    r.net.process_rx();
    assert_eq!(r.rx.used_idx(), 3);
    assert_eq!(r.counter(|c| &c.rx_dropped), 0);
}

#[test]
fn frames_larger_than_the_posted_chain_are_dropped_and_counted() {
    let mut r = rig(None);
    r.peer.send(&frame(1000, 1)).unwrap();
    r.peer.send(&frame(5, 9)).unwrap(); // a runt
    r.peer.send(&frame(400, 2)).unwrap();
    r.rx.add_chain(&[desc(BUF, 256, W), desc(BUF + 0x1000, 256, W)]);
    r.net.process_rx();
    // The big frame and the runt are gone; the chain took the frame that fits.
    assert_eq!(r.rx.used_idx(), 1);
    assert_eq!(r.rx.used_len(0), 412);
    assert_eq!(read_bytes(&r.rx.mem, BUF + 12, 10), frame(400, 2)[12..22]);
    assert_eq!(r.counter(|c| &c.rx_dropped), 2);
    assert_eq!(r.counter(|c| &c.rx_frames), 1);
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_keep_the_frame() {
    let mut r = rig(None);
    let end = TEST_MEM_BYTES as u64;
    r.peer.send(&frame(60, 5)).unwrap();
    let cases: [&[_]; 4] = [
        // A device-readable descriptor.
        &[desc(BUF, 12, 0), desc(BUF + 0x1000, 1500, W)],
        // Past the end of memory.
        &[desc(end - 100, 1500, W)],
        &[desc(u64::MAX - 100, 1500, W)],
        // Too small for a header and an Ethernet header.
        &[desc(BUF, (VNET_HDR_LEN + ETH_HLEN - 1) as u32, W)],
    ];
    for chain in cases {
        r.rx.add_chain(chain);
    }
    r.rx.add_chain(&[desc(BUF + 0x4000, 1526, W)]);
    r.net.process_rx();
    let n = cases.len() as u16;
    assert_eq!(r.rx.used_idx(), n + 1);
    for i in 0..n {
        assert_eq!(r.rx.used_len(i), 0);
    }
    assert_eq!(r.rx.used_len(n), 72);
    assert_eq!(r.counter(|c| &c.rx_bad_chains), u64::from(n));
    assert_eq!(
        read_bytes(&r.rx.mem, BUF + 0x4000 + 12, 60),
        frame(60, 5)[12..]
    );
}

#[test]
fn suppressed_interrupts_are_not_raised() {
    let mut r = rig(None);
    let (_, avail, _) = r.tx.ring_addrs();
    // VRING_AVAIL_F_NO_INTERRUPT in the driver's flags.
    r.tx.mem.write_obj(1u16, GuestAddress(avail)).unwrap();
    r.tx.add_chain(&[desc(BUF, 60, 0)]);
    r.net.process_tx();
    assert_eq!(r.tx.used_idx(), 1);
    assert!(!r.tx.irq_raised());
}

#[test]
fn work_per_event_is_bounded() {
    let mut r = rig(None);
    let total = MAX_FRAMES_PER_EVENT + 5;
    for i in 0..total {
        r.peer.send(&frame(60, i as u8)).unwrap();
    }
    let mut used = 0u16;
    while usize::from(used) < total {
        let before = r.rx.used_idx();
        for _ in 0..QSIZE {
            r.rx.add_chain(&[desc(BUF, 1526, W)]);
        }
        r.net.process_rx();
        used = r.rx.used_idx();
        assert!(used.wrapping_sub(before) <= QSIZE);
    }
    assert_eq!(r.counter(|c| &c.rx_frames), total as u64);
    // Reads stopped at the bound once, and the device re-kicked its RX queue then.
    assert!(r.net.queue_events()[RXQ_INDEX].read().is_ok());
}

#[test]
fn nothing_moves_before_activation_or_after_reset() {
    let (backend, peer) = socket_backend();
    let mut net = Net::new(backend, MAC, None).unwrap();
    peer.send(&frame(60, 0)).unwrap();
    net.process_rx();
    net.process_tx();
    let mut r = rig(None);
    r.net.reset();
    r.peer.send(&frame(60, 0)).unwrap();
    r.rx.add_chain(&[desc(BUF, 1526, W)]);
    r.tx.add_chain(&[desc(BUF, 60, 0)]);
    r.net.process_rx();
    r.net.process_tx();
    assert_eq!((r.rx.used_idx(), r.tx.used_idx()), (0, 0));
}

/// Through a real epoll loop: the backend fd is edge-triggered, a frame that arrives while
/// the guest has no buffers waits (the loop does not spin on it), and the guest's RX kick
/// resumes reading.
#[test]
fn event_loop_resumes_rx_on_the_guest_kick() {
    let Rig {
        net,
        rx,
        tx: _tx,
        peer,
    } = rig(None);
    let rx_kick = net.queue_events()[RXQ_INDEX].try_clone().unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(net)));
    // Activation re-kicked both queues: nothing to do.
    while em.run_with_timeout(50).unwrap() > 0 {}
    peer.send(&frame(60, 1)).unwrap();
    peer.send(&frame(60, 2)).unwrap();
    assert_eq!(em.run_with_timeout(500).unwrap(), 1);
    assert_eq!(rx.used_idx(), 0);
    // No buffers: the pending frames raise no further events.
    assert_eq!(em.run_with_timeout(100).unwrap(), 0);
    rx.add_chain(&[desc(BUF, 1526, W)]);
    rx.add_chain(&[desc(BUF + 0x1000, 1526, W)]);
    rx_kick.write(1).unwrap();
    assert_eq!(em.run_with_timeout(500).unwrap(), 1);
    assert_eq!(rx.used_idx(), 2);
    assert_eq!(
        read_bytes(&rx.mem, BUF + 0x1000 + 12, 60),
        frame(60, 2)[12..]
    );
    // A new frame for a posted buffer arrives by the backend's edge alone.
    rx.add_chain(&[desc(BUF + 0x2000, 1526, W)]);
    rx_kick.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    peer.send(&frame(60, 3)).unwrap();
    assert_eq!(em.run_with_timeout(500).unwrap(), 1);
    assert_eq!(rx.used_idx(), 3);
}
