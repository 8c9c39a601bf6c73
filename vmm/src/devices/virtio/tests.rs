//! Property tests with hostile input: random descriptor tables (any address, length, flags
//! and next index, so loops, indirect tables and out-of-memory buffers), random available
//! rings and request headers fed to the rng, blk and net queue processing, and random register
//! traffic on the virtio-mmio transport. The properties: no panic, termination, no more used
//! entries than chains offered, and the disk file never grows.
//!
//! Cases per property: `PROPTEST_CASES` (default 1000).

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

use super::block::Block;
use super::mmio::MmioTransport;
use super::net::testing::socket_backend;
use super::net::{MacAddr, Net};
use super::rng::Rng;
use super::testing::{TestQueue, TEST_MEM_BYTES};
use super::VirtioDevice;
use crate::bus::BusDevice;

const QUEUE_SIZE: u16 = 16;
const DISK_BYTES: u64 = 64 << 10;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn address() -> impl Strategy<Value = u64> {
    let mem = TEST_MEM_BYTES as u64;
    prop_oneof![
        4 => 0x10_0000..0x11_0000u64,
        2 => 0..mem,
        2 => mem - 0x1000..mem + 0x1000,
        1 => any::<u64>(),
        1 => u64::MAX - 0x1000..=u64::MAX,
    ]
}

fn length() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0..2048u32,
        2 => (0..16u32).prop_map(|n| n * 512),
        1 => any::<u32>(),
    ]
}

fn descriptor() -> impl Strategy<Value = RawDescriptor> {
    // NEXT, WRITE and INDIRECT in any combination, sometimes junk bits.
    let flags = prop_oneof![4 => 0..8u16, 1 => any::<u16>()];
    let next = prop_oneof![4 => 0..QUEUE_SIZE, 1 => any::<u16>()];
    (address(), length(), flags, next)
        .prop_map(|(a, l, f, n)| RawDescriptor::from(Descriptor::new(a, l, f, n)))
}

/// A request header (type, sector) written at a spot descriptors often point to.
fn header() -> impl Strategy<Value = (u32, u64)> {
    let kind = prop_oneof![4 => prop::sample::select(vec![0u32, 1, 4, 8]), 1 => any::<u32>()];
    let sector = prop_oneof![3 => 0..(DISK_BYTES / 512 + 4), 1 => any::<u64>()];
    (kind, sector)
}

#[derive(Debug, Clone)]
struct QueueInput {
    table: Vec<RawDescriptor>,
    avail: Vec<u16>,
    /// How far the driver claims the available index moved (may exceed the ring).
    avail_idx: u16,
    headers: Vec<(u32, u64)>,
}

fn queue_input() -> impl Strategy<Value = QueueInput> {
    (
        prop::collection::vec(descriptor(), usize::from(QUEUE_SIZE)),
        prop::collection::vec(any::<u16>(), usize::from(QUEUE_SIZE)),
        prop_oneof![4 => 0..=QUEUE_SIZE, 1 => any::<u16>()],
        prop::collection::vec(header(), 16),
    )
        .prop_map(|(table, avail, avail_idx, headers)| QueueInput {
            table,
            avail,
            avail_idx,
            headers,
        })
}

/// Writes the hostile queue into guest memory and returns the activated queue's test rig.
fn install(input: &QueueInput) -> TestQueue {
    let t = TestQueue::new(QUEUE_SIZE);
    for (i, d) in input.table.iter().enumerate() {
        t.store_desc(i as u16, *d);
    }
    let (_, avail, _) = t.ring_addrs();
    for (i, head) in input.avail.iter().enumerate() {
        let slot = GuestAddress(avail + 4 + 2 * i as u64);
        t.mem.write_obj(head % (2 * QUEUE_SIZE), slot).unwrap();
    }
    t.mem
        .write_obj(input.avail_idx, GuestAddress(avail + 2))
        .unwrap();
    for (i, (kind, sector)) in input.headers.iter().enumerate() {
        let at = GuestAddress(0x10_0000 + 0x1000 * i as u64);
        t.mem.write_obj(*kind, at).unwrap();
        t.mem.write_obj(*sector, GuestAddress(at.0 + 8)).unwrap();
    }
    t
}

/// The used index may move by at most the number of chains the driver offered — unless the
/// guest pointed buffers at its own rings (the first page here) or used indirect tables,
/// which it is free to do (then only "no panic" is checked).
fn check_used(t: &TestQueue, input: &QueueInput) {
    let rings_untouched = input.table.iter().all(|raw| {
        let d = Descriptor::from(*raw);
        d.flags() & 4 == 0 && (d.addr().0 >= 0x1000 || d.len() == 0)
    });
    if !rings_untouched {
        return;
    }
    let offered = input.avail_idx.min(QUEUE_SIZE);
    assert!(
        t.used_idx() <= offered,
        "used {} > offered {offered}",
        t.used_idx()
    );
}

/// A zeroed temporary disk (removed when the path is dropped) and a device on it.
fn disk() -> (tempfile::TempPath, Block) {
    let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::write(&path, vec![0u8; DISK_BYTES as usize]).unwrap();
    let blk = Block::open(&path, false).unwrap();
    (path, blk)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rng_survives_hostile_queues(input in queue_input()) {
        let t = install(&input);
        let mut rng = Rng::new().unwrap();
        rng.activate(t.mem.clone(), t.interrupt(), vec![t.queue()]).unwrap();
        rng.process_queue();
        rng.process_queue();
        check_used(&t, &input);
    }

    #[test]
    fn blk_survives_hostile_queues(input in queue_input()) {
        let t = install(&input);
        let (path, mut blk) = disk();
        blk.activate(t.mem.clone(), t.interrupt(), vec![t.queue()]).unwrap();
        blk.process_queue();
        blk.process_queue();
        check_used(&t, &input);
        let len = std::fs::metadata(&path).unwrap().len();
        prop_assert_eq!(len, DISK_BYTES);
    }

    #[test]
    fn net_survives_hostile_queues(
        input in queue_input(),
        frames in prop::collection::vec(0..2000usize, 0..8),
        hostile_tx in any::<bool>(),
    ) {
        let t = install(&input);
        let (backend, peer) = socket_backend();
        for len in frames {
            peer.send(&vec![0x5a; len]).unwrap();
        }
        let mut net = Net::new(backend, MacAddr([2, 0, 0, 0, 0, 1]), None).unwrap();
        // The hostile queue as RX or TX; the other one empty, above the test buffers.
        let clean = TestQueue::new_at(&t.mem, 0x20_0000, QUEUE_SIZE, t.interrupt());
        let queues = if hostile_tx {
            vec![clean.queue(), t.queue()]
        } else {
            vec![t.queue(), clean.queue()]
        };
        net.activate(t.mem.clone(), t.interrupt(), queues).unwrap();
        for _ in 0..2 {
            net.process_rx();
            net.process_tx();
        }
        check_used(&t, &input);
    }

    #[test]
    fn mmio_survives_random_register_traffic(
        ops in prop::collection::vec(
            (
                prop_oneof![4 => (0..0x40u64).prop_map(|r| r * 4), 1 => 0..0x1000u64],
                prop::sample::select(vec![1usize, 2, 4, 4, 4, 8]),
                prop_oneof![
                    3 => prop::sample::select(vec![0u32, 1, 2, 3, 0xb, 0xf, 0x80, 16, 256]),
                    1 => 0..0x20_0000u32,
                    1 => any::<u32>(),
                ],
                any::<bool>(),
            ),
            0..200,
        ),
        use_blk in any::<bool>(),
    ) {
        let t = TestQueue::new(QUEUE_SIZE);
        let (_path, blk) = disk();
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let blk = Arc::new(Mutex::new(blk));
        let device: Arc<Mutex<dyn VirtioDevice>> =
            if use_blk { blk.clone() } else { rng.clone() };
        let mut tr = MmioTransport::new(device, t.mem.clone(), t.interrupt());
        for (offset, width, value, read) in ops {
            let bytes = u64::from(value).to_le_bytes();
            if read {
                let mut buf = vec![0u8; width];
                tr.read(offset, &mut buf);
            } else {
                tr.write(offset, &bytes[..width]);
            }
            // Whatever state the device is in, serving its queue must be safe.
            rng.lock().unwrap().process_queue();
            blk.lock().unwrap().process_queue();
        }
    }
}
