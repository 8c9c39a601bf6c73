//! Queue plumbing shared by moat's virtio devices: the per-queue kick event fds a device
//! watches in the event loop, and the activated state that drains a queue chain by chain.

use std::sync::Arc;

use event_manager::{EventOps, Events};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, VirtioInterrupt};

/// One descriptor chain as handed to a device's request handler.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The kick event fds of a device's queues (one per queue, in order).
#[derive(Debug)]
pub struct QueueEvents {
    fds: Vec<EventFd>,
}

impl QueueEvents {
    /// Creates `count` non-blocking event fds.
    pub fn new(count: usize) -> std::io::Result<QueueEvents> {
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()?;
        Ok(QueueEvents { fds })
    }

    /// The fds, in queue order.
    pub fn fds(&self) -> &[EventFd] {
        &self.fds
    }

    /// Registers every fd with the event loop, tagged with its queue index.
    pub fn register(&self, ops: &mut EventOps) {
        for (index, fd) in self.fds.iter().enumerate() {
            let tag = u32::try_from(index).unwrap_or(u32::MAX);
            if let Err(e) = ops.add(Events::with_data(fd, tag, EventSet::IN)) {
                tracing::error!("cannot watch virtio queue {index} kicks: {e:?}");
            }
        }
    }

    /// The queue whose fd fired in `events` (its counter is consumed), if it is one of ours.
    pub fn triggered(&self, events: &Events) -> Option<usize> {
        let index = usize::try_from(events.data()).ok()?;
        let fd = self.fds.get(index)?;
        // Non-blocking: an empty counter (spurious wake-up) is not an error worth reporting.
        let _ = fd.read();
        Some(index)
    }

    /// Re-kicks queue `index` so the event loop comes back to it (used when a device stops
    /// early to bound the work done per event).
    pub fn rekick(&self, index: usize) {
        if let Some(fd) = self.fds.get(index) {
            let _ = fd.write(1);
        }
    }
}

/// What a device holds between activation and reset.
pub struct ActiveQueues {
    /// Guest memory (every access is bounds-checked by vm-memory).
    pub mem: GuestMemoryMmap,
    /// The device's interrupt line.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The queues, validated by the transport.
    pub queues: Vec<Queue>,
}

impl ActiveQueues {
    /// What a device's `activate` stores: checks that the transport handed over exactly
    /// `expected` queues.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        expected: usize,
    ) -> Result<ActiveQueues, ActivateError> {
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        Ok(ActiveQueues {
            mem,
            interrupt,
            queues,
        })
    }

    /// Pops at most `max_chains` chains from queue `index`, hands each to `handle` (which
    /// returns the number of bytes it wrote into the chain), puts them on the used ring and
    /// raises the used-ring interrupt if anything was used. Returns true when it stopped at
    /// `max_chains` (more may be waiting).
    pub fn drain<F>(&mut self, index: usize, max_chains: usize, mut handle: F) -> bool
    where
        F: FnMut(&GuestMemoryMmap, Chain<'_>) -> u32,
    {
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        let mut used = 0usize;
        while used < max_chains {
            let Some(chain) = queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = handle(&self.mem, chain);
            if let Err(e) = queue.add_used(&self.mem, head, len) {
                tracing::debug!("virtio queue {index}: add_used({head}): {e}");
            }
            used += 1;
        }
        if used > 0 {
            if let Err(e) = self.interrupt.signal_used_queue() {
                tracing::warn!("virtio interrupt: {e}");
            }
        }
        used == max_chains
    }
}

/// True if `[desc.addr, desc.addr + desc.len)` lies entirely inside guest memory.
pub fn desc_in_memory(mem: &GuestMemoryMmap, desc: &Descriptor) -> bool {
    range_in_memory(mem, desc.addr(), u64::from(desc.len()))
}

/// True if `[addr, addr + len)` lies entirely inside guest memory (may span regions).
pub fn range_in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    match usize::try_from(len) {
        Ok(0) => mem.address_in_range(addr),
        Ok(n) => mem.check_range(addr, n),
        Err(_) => false,
    }
}

/// Writes `data` at `addr` in guest memory; false (nothing or a prefix written) when the range
/// leaves guest memory.
pub fn write_guest(mem: &GuestMemoryMmap, addr: GuestAddress, data: &[u8]) -> bool {
    mem.write_slice(data, addr).is_ok()
}
