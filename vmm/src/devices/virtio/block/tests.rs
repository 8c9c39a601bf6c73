//! virtio-blk request handling against mock queues and a temporary backing file.

use tempfile::{NamedTempFile, TempPath};
use vm_memory::Bytes;

use super::*;
use crate::devices::virtio::testing::{desc, read_bytes, TestQueue, TEST_MEM_BYTES};

const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const SECTORS: u64 = 64;

fn pattern() -> Vec<u8> {
    (0..SECTORS * SECTOR_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

/// A temporary backing file holding [`pattern`], removed when the path is dropped.
fn disk_file() -> TempPath {
    let path = NamedTempFile::new().unwrap().into_temp_path();
    std::fs::write(&path, pattern()).unwrap();
    path
}

/// A file-backed device, activated on a fresh mock queue.
fn device(read_only: bool) -> (Block, TestQueue, TempPath) {
    let path = disk_file();
    let mut blk = Block::open(&path, read_only).unwrap();
    let t = TestQueue::new(16);
    blk.activate(t.mem.clone(), t.interrupt(), vec![t.queue()])
        .unwrap();
    (blk, t, path)
}

fn header(t: &TestQueue, kind: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    t.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    t.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn status(t: &TestQueue) -> u8 {
    t.mem.read_obj(GuestAddress(STATUS)).unwrap()
}

/// Posts header + data (len, flags) + status and runs the device; returns (status, used len).
fn request(
    blk: &mut Block,
    t: &TestQueue,
    kind: u32,
    sector: u64,
    data: &[(u32, u16)],
) -> (u8, u32) {
    header(t, kind, sector);
    let mut chain = vec![desc(HDR, 16, 0)];
    let mut addr = DATA;
    for &(len, flags) in data {
        chain.push(desc(addr, len, flags));
        addr += u64::from(len);
    }
    chain.push(desc(STATUS, 1, W));
    t.add_chain(&chain);
    let n = t.used_idx();
    blk.process_queue();
    assert_eq!(t.used_idx(), n.wrapping_add(1), "request not completed");
    (status(t), t.used_len(n))
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let (blk, _t, path) = device(false);
    let mut cap = [0u8; 8];
    blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut seg = [0u8; 4];
    blk.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    let mut past = [0xffu8; 4];
    blk.read_config(4096, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(blk.avail_features() & FEATURE_VERSION_1, 0);
    let ro = Block::open(&path, true).unwrap();
    assert_ne!(ro.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn reads_sectors_into_scattered_buffers() {
    let (mut blk, t, _) = device(false);
    let (st, used) = request(&mut blk, &t, VIRTIO_BLK_T_IN, 3, &[(512, W), (1024, W)]);
    assert_eq!((st, used), (0, 1537));
    assert_eq!(read_bytes(&t.mem, DATA, 1536), pattern()[3 * 512..6 * 512]);
    assert!(t.irq_raised());
    let c = blk.counters().values();
    assert_eq!((c.reads, c.read_bytes, c.writes, c.errors), (1, 1536, 0, 0));
}

#[test]
fn writes_land_in_the_file_and_flush_succeeds() {
    let (mut blk, t, path) = device(false);
    t.mem
        .write_slice(&[0xabu8; 1024], GuestAddress(DATA))
        .unwrap();
    let (st, used) = request(&mut blk, &t, VIRTIO_BLK_T_OUT, 10, &[(1024, 0)]);
    assert_eq!((st, used), (0, 1));
    let file = std::fs::read(&path).unwrap();
    assert!(file[10 * 512..12 * 512].iter().all(|&b| b == 0xab));
    assert_eq!(file[..10 * 512], pattern()[..10 * 512]);
    assert_eq!(request(&mut blk, &t, VIRTIO_BLK_T_FLUSH, 0, &[]).0, 0);
    let c = blk.counters().values();
    assert_eq!(
        (c.writes, c.write_bytes, c.flushes, c.errors),
        (1, 1024, 1, 0)
    );
}

#[test]
fn get_id_returns_the_serial() {
    let (mut blk, t, _) = device(false);
    let (st, used) = request(&mut blk, &t, VIRTIO_BLK_T_GET_ID, 0, &[(20, W)]);
    assert_eq!((st, used), (0, 21));
    let id = read_bytes(&t.mem, DATA, 20);
    assert_eq!(id, blk.serial());
    assert!(id.starts_with(b"moat-"));
}

#[test]
fn read_only_disk_refuses_writes() {
    let (mut blk, t, path) = device(true);
    let (st, _) = request(&mut blk, &t, VIRTIO_BLK_T_OUT, 0, &[(512, 0)]);
    assert_eq!(u32::from(st), VIRTIO_BLK_S_IOERR);
    assert_eq!(std::fs::read(&path).unwrap(), pattern());
    assert_eq!(request(&mut blk, &t, VIRTIO_BLK_T_IN, 0, &[(512, W)]).0, 0);
    assert_eq!(request(&mut blk, &t, VIRTIO_BLK_T_FLUSH, 0, &[]).0, 0);
    let c = blk.counters().values();
    assert_eq!((c.writes, c.reads, c.flushes, c.errors), (0, 1, 1, 1));
}

#[test]
fn out_of_range_and_overflowing_sectors_fail() {
    let (mut blk, t, _) = device(false);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_IN, SECTORS, &[(512, W)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_IN, SECTORS - 1, &[(1024, W)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_IN, u64::MAX, &[(512, W)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_OUT, u64::MAX / 512, &[(512, 0)]).0,
        ioerr
    );
    // Partial sectors are refused too.
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_IN, 0, &[(100, W)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_IN, SECTORS - 1, &[(512, W)]).0,
        0
    );
}

#[test]
fn malformed_requests_get_errors() {
    let (mut blk, t, _) = device(false);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Data in the wrong direction, both ways.
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_IN, 0, &[(512, 0)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_OUT, 0, &[(512, W)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut blk, &t, VIRTIO_BLK_T_GET_ID, 0, &[(20, 0)]).0,
        ioerr
    );
    // Unknown request type.
    assert_eq!(
        u32::from(request(&mut blk, &t, 77, 0, &[]).0),
        VIRTIO_BLK_S_UNSUPP
    );
    // Header too short, or device-writable.
    for (len, flags) in [(8, 0), (16, W)] {
        header(&t, VIRTIO_BLK_T_IN, 0);
        t.add_chain(&[
            desc(HDR, len, flags),
            desc(DATA, 512, W),
            desc(STATUS, 1, W),
        ]);
        blk.process_queue();
        assert_eq!(status(&t), ioerr);
    }
    // A data buffer running past guest memory.
    header(&t, VIRTIO_BLK_T_IN, 0);
    let end = TEST_MEM_BYTES as u64;
    t.add_chain(&[
        desc(HDR, 16, 0),
        desc(end - 256, 512, W),
        desc(STATUS, 1, W),
    ]);
    blk.process_queue();
    assert_eq!(status(&t), ioerr);
}

#[test]
fn requests_without_a_writable_status_are_dropped() {
    let (mut blk, t, _) = device(false);
    header(&t, VIRTIO_BLK_T_IN, 0);
    let cases: [&[RawDescriptor]; 4] = [
        // Last descriptor readable.
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, 0)],
        // Only a header.
        &[desc(HDR, 16, 0)],
        // Only a writable "status" (no header).
        &[desc(STATUS, 1, W)],
        // Status outside guest memory.
        &[desc(HDR, 16, 0), desc(u64::MAX, 1, W)],
    ];
    for (i, chain) in cases.iter().enumerate() {
        t.add_chain(chain);
        blk.process_queue();
        assert_eq!(t.used_len(i as u16), 0, "case {i}");
        assert_eq!(status(&t), 0xff, "case {i}: status written");
    }
    assert_eq!(read_bytes(&t.mem, DATA, 512), vec![0; 512]);
}

#[test]
fn reset_stops_processing() {
    let (mut blk, t, _) = device(false);
    blk.reset();
    header(&t, VIRTIO_BLK_T_IN, 0);
    t.add_chain(&[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)]);
    blk.process_queue();
    assert_eq!(t.used_idx(), 0);
}

use virtio_queue::desc::RawDescriptor;
