//! Test harness of the vsock device: a simulated guest driver on split queues in test guest
//! memory, and real unix sockets in a private temp dir on the host side.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::*;
use super::{VsockConfig, VsockDevice, HOST_CID};

pub(super) const GUEST_CID: u64 = 3;
const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub(super) const QSIZE: u16 = 256;
const SLOT_BYTES: u64 = 0x1_1000;
const RX_DATA: u32 = 4096;

/// The driver side of one split queue: chain slot `k` uses descriptors `2k`, `2k + 1` and
/// buffer memory at `bufs + k * SLOT_BYTES` (header at +0, data at +0x1000).
struct GuestQueue {
    base: GuestAddress,
    bufs: u64,
    free: Vec<u16>,
    used_seen: u16,
}

impl GuestQueue {
    fn new(base: u64, bufs: u64) -> GuestQueue {
        GuestQueue {
            base: GuestAddress(base),
            bufs,
            free: (0..QSIZE / 2).rev().collect(),
            used_seen: 0,
        }
    }

    fn desc_addr(&self) -> u64 {
        self.base.0
    }

    fn avail_addr(&self) -> u64 {
        self.base.0 + 16 * u64::from(QSIZE)
    }

    fn used_addr(&self) -> u64 {
        self.avail_addr() + 0x1000
    }

    /// A ready device-side queue over this driver's rings.
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc_addr());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail_addr());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used_addr());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    fn slot_addr(&self, slot: u16) -> u64 {
        self.bufs + u64::from(slot) * SLOT_BYTES
    }

    /// Posts a chain of `(len, flags)` buffers in a free slot; returns the slot.
    fn post(&mut self, mem: &GuestMemoryMmap, bufs: &[(u32, u16)]) -> Option<u16> {
        let slot = self.free.pop()?;
        for (i, &(len, flags)) in bufs.iter().enumerate() {
            let idx = slot * 2 + i as u16;
            let addr = self.slot_addr(slot) + if i == 0 { 0 } else { 0x1000 };
            let (flags, next) = if i + 1 < bufs.len() {
                (flags | NEXT, idx + 1)
            } else {
                (flags, 0)
            };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            let at = self.desc_addr() + 16 * u64::from(idx);
            mem.write_obj(d, GuestAddress(at)).unwrap();
        }
        let idx: u16 = mem.read_obj(GuestAddress(self.avail_addr() + 2)).unwrap();
        let entry = self.avail_addr() + 4 + 2 * u64::from(idx % QSIZE);
        mem.write_obj(slot * 2, GuestAddress(entry)).unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(self.avail_addr() + 2))
            .unwrap();
        Some(slot)
    }

    /// Used entries since the last call: (slot, len); their slots are free again.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let used = self.used_addr();
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = used + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            let slot = (id / 2) as u16;
            self.free.push(slot);
            out.push((slot, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A device with a simulated guest.
pub(super) struct Harness {
    pub dir: TempDir,
    pub uds: PathBuf,
    pub mem: GuestMemoryMmap,
    pub dev: VsockDevice,
    rxq: Queue,
    txq: Queue,
    rx: GuestQueue,
    tx: GuestQueue,
    rx_posted: usize,
}

pub(super) fn hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut VsockConfig)) -> Harness {
        let dir = TempDir::new().unwrap();
        let uds = dir.path().join("v.sock");
        let mut cfg = VsockConfig::new(GUEST_CID, &uds);
        cfg.timeout = Duration::from_millis(300);
        tweak(&mut cfg);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let rx = GuestQueue::new(0, 0x10_0000);
        let tx = GuestQueue::new(0x4000, 0x10_0000 + 128 * SLOT_BYTES);
        let rxq = rx.queue();
        let txq = tx.queue();
        let dev = VsockDevice::new(cfg).unwrap();
        let mut h = Harness {
            dir,
            uds,
            mem,
            dev,
            rxq,
            txq,
            rx,
            tx,
            rx_posted: 0,
        };
        h.refill_rx();
        h
    }

    fn refill_rx(&mut self) {
        while self.rx_posted < 64 {
            let chain = [(HEADER_SIZE as u32, WRITE), (RX_DATA, WRITE)];
            if self.rx.post(&self.mem, &chain).is_none() {
                break;
            }
            self.rx_posted += 1;
        }
    }

    /// The guest sends one packet (payload in a second descriptor).
    pub fn send(&mut self, mut h: Header, data: &[u8]) {
        h.len = data.len() as u32;
        self.send_raw(h, data);
    }

    /// Sends `h` as is with `data` in the data descriptor.
    pub fn send_raw(&mut self, h: Header, data: &[u8]) {
        self.tx.take_used(&self.mem);
        let chain: Vec<(u32, u16)> = if data.is_empty() {
            vec![(HEADER_SIZE as u32, 0)]
        } else {
            vec![(HEADER_SIZE as u32, 0), (data.len() as u32, 0)]
        };
        let slot = self.tx.post(&self.mem, &chain).expect("tx queue full");
        let addr = self.tx.slot_addr(slot);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + 0x1000))
            .unwrap();
    }

    /// Posts a raw tx chain of `(addr, len, flags, next)` descriptors (at most two; flags
    /// taken as given; `addr == u64::MAX` means the slot's buffer) after writing `bytes` at
    /// the slot's buffer.
    pub fn post_raw_tx(&mut self, descs: &[(u64, u32, u16, u16)], bytes: &[u8]) {
        self.tx.take_used(&self.mem);
        let Some(slot) = self.tx.free.pop() else {
            return;
        };
        let base = self.tx.slot_addr(slot);
        let _ = self.mem.write_slice(bytes, GuestAddress(base));
        for (i, &(addr, len, flags, next)) in descs.iter().take(2).enumerate() {
            let addr = match (addr, i) {
                (u64::MAX, 0) => base,
                (u64::MAX, _) => base + 0x1000,
                _ => addr,
            };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next % QSIZE));
            let at = self.tx.desc_addr() + 16 * u64::from(slot * 2 + i as u16);
            self.mem.write_obj(d, GuestAddress(at)).unwrap();
        }
        let avail = self.tx.avail_addr();
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        let entry = avail + 4 + 2 * u64::from(idx % QSIZE);
        self.mem.write_obj(slot * 2, GuestAddress(entry)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
    }

    /// Runs host events and both queues; returns what the guest received.
    pub fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            self.dev.process_backend(now);
            let res = self
                .dev
                .process_queues(&self.mem, &mut self.rxq, &mut self.txq, now);
            let used = self.rx.take_used(&self.mem);
            for &(slot, len) in &used {
                self.rx_posted -= 1;
                let addr = self.rx.slot_addr(slot);
                let mut b = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                let h = Header::from_bytes(&b);
                assert_eq!(len as usize, HEADER_SIZE + h.len as usize);
                let mut data = vec![0u8; h.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + 0x1000))
                    .unwrap();
                out.push((h, data));
            }
            self.tx.take_used(&self.mem);
            self.refill_rx();
            if used.is_empty() && res.tx_used == 0 && !self.backend_ready() {
                return out;
            }
        }
    }

    /// Whether the backend's epoll fd has events pending.
    fn backend_ready(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.dev.backend_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    /// Pumps until `pred` holds for the packets received so far (or panics after 3 s).
    pub fn pump_until(
        &mut self,
        mut pred: impl FnMut(&[(Header, Vec<u8>)]) -> bool,
    ) -> Vec<(Header, Vec<u8>)> {
        let end = Instant::now() + Duration::from_secs(3);
        let mut all = Vec::new();
        loop {
            all.extend(self.pump());
            if pred(&all) {
                return all;
            }
            assert!(Instant::now() < end, "timed out; got {all:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A host peer connects, asks for guest `port`; the guest accepts. Returns the stream,
    /// the host port and the guest's view (local port = host port).
    pub fn host_connect(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {guest_port}\n").as_bytes())
            .unwrap();
        let got = self.pump_until(|p| p.iter().any(|(h, _)| h.op == OP_REQUEST));
        let req = got.iter().find(|(h, _)| h.op == OP_REQUEST).unwrap().0;
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(req.dst_port, guest_port);
        assert!(req.src_port >= super::muxer::EPHEMERAL_PORT_START);
        assert_eq!(req.buf_alloc, self.dev.muxer().config().conn_buf_size);
        self.send(hdr(guest_port, req.src_port, OP_RESPONSE), &[]);
        self.pump();
        let line = read_line(&mut s);
        assert_eq!(line, format!("OK {}\n", req.src_port));
        (s, req.src_port)
    }
}

pub(super) fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// True once `s` reports EOF (or a reset) within 3 s.
pub(super) fn sees_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
