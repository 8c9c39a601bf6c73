//! Test helpers: a guest memory with a driver-side split queue (virtio-queue's mock) at
//! address 0, and ways to post chains and read back the used ring.

use std::cell::Cell;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VirtioInterrupt;

/// Size of the test guest memory.
pub const TEST_MEM_BYTES: usize = 32 << 20;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

/// A 32 MiB guest memory with a queue of `size` entries at address 0.
pub struct TestQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    state: QueueState,
    desc_addr: u64,
    avail_addr: u64,
    used_addr: u64,
    next_desc: Cell<u16>,
    irq: Arc<VirtioInterrupt>,
}

impl TestQueue {
    pub fn new(size: u16) -> TestQueue {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_MEM_BYTES)]).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        TestQueue::new_at(&mem, 0, size, irq)
    }

    /// A queue of `size` entries with its rings from `base` in `mem`, raising `irq`: several
    /// of them over one memory give a device several queues.
    pub fn new_at(
        mem: &GuestMemoryMmap,
        base: u64,
        size: u16,
        irq: Arc<VirtioInterrupt>,
    ) -> TestQueue {
        let mem = mem.clone();
        // Creating the mock zeroes the rings' indices, so it is done once.
        let mock = MockSplitQueue::create(&mem, GuestAddress(base), size);
        let state = mock.create_queue::<Queue>().unwrap().state();
        let (desc_addr, avail_addr, used_addr) = (
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        );
        TestQueue {
            mem,
            size,
            state,
            desc_addr,
            avail_addr,
            used_addr,
            next_desc: Cell::new(0),
            irq,
        }
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn ring_addrs(&self) -> (u64, u64, u64) {
        (self.desc_addr, self.avail_addr, self.used_addr)
    }

    /// A ready device-side queue over the mock rings.
    pub fn queue(&self) -> Queue {
        let q = Queue::try_from(self.state).unwrap();
        assert!(q.is_valid(&self.mem));
        q
    }

    /// Stores a raw descriptor at `index` of the table.
    pub fn store_desc(&self, index: u16, d: RawDescriptor) {
        let addr = self.desc_addr + 16 * u64::from(index % self.size);
        self.mem.write_obj(d, GuestAddress(addr)).unwrap();
    }

    pub fn interrupt(&self) -> Arc<VirtioInterrupt> {
        self.irq.clone()
    }

    /// True (once) if the interrupt was raised since the last call.
    pub fn irq_raised(&self) -> bool {
        self.irq.irqfd().read().is_ok()
    }

    /// Posts a chain linking `descs` in order (NEXT flags and indices set here).
    pub fn add_chain(&self, descs: &[RawDescriptor]) {
        let head = self.next_desc.get() % self.size;
        for (i, raw) in descs.iter().enumerate() {
            let d = Descriptor::from(*raw);
            let index = (head + i as u16) % self.size;
            let (flags, next) = if i + 1 < descs.len() {
                (d.flags() | NEXT, (index + 1) % self.size)
            } else {
                (d.flags() & !NEXT, 0)
            };
            let d = Descriptor::new(d.addr().0, d.len(), flags, next);
            self.store_desc(index, RawDescriptor::from(d));
        }
        self.next_desc.set((head + descs.len() as u16) % self.size);
        self.publish(head);
    }

    /// Appends `head` to the available ring.
    pub fn publish(&self, head: u16) {
        let idx_addr = GuestAddress(self.avail_addr + 2);
        let idx: u16 = self.mem.read_obj(idx_addr).unwrap();
        let slot = self.avail_addr + 4 + 2 * u64::from(idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem.write_obj(idx.wrapping_add(1), idx_addr).unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        let addr = self.used_addr + 2;
        self.mem.read_obj::<u16>(GuestAddress(addr)).unwrap()
    }

    /// The length of used element `n`.
    pub fn used_len(&self, n: u16) -> u32 {
        let addr = self.used_addr + 4 + 8 * u64::from(n % self.size) + 4;
        self.mem.read_obj::<u32>(GuestAddress(addr)).unwrap()
    }
}

/// A descriptor (flags without NEXT; `add_chain` links them).
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// Reads `len` bytes of guest memory at `addr`.
pub fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
