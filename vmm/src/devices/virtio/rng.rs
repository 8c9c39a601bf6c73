//! virtio-rng (entropy device, id 4): one queue whose device-writable buffers are filled
//! from the host's getrandom(2). Work is bounded per chain and per event.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue::{ActiveQueues, Chain, QueueEvents};
use super::{ActivateError, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1};
use crate::metrics::{bump, RngCounters};

/// Queue size offered to the guest.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes given to one descriptor chain.
pub const MAX_BYTES_PER_CHAIN: u32 = 64 << 10;
/// Most chains served per queue kick; the rest are served on the next loop turn.
pub const MAX_CHAINS_PER_EVENT: usize = 64;

/// The virtio-rng device.
pub struct Rng {
    events: QueueEvents,
    active: Option<ActiveQueues>,
    counters: Arc<RngCounters>,
}

impl Rng {
    /// A new, inactive entropy device.
    pub fn new() -> std::io::Result<Rng> {
        Ok(Rng {
            events: QueueEvents::new(1)?,
            active: None,
            counters: Arc::new(RngCounters::default()),
        })
    }

    /// The device's counters (shared with the metrics).
    pub fn counters(&self) -> &Arc<RngCounters> {
        &self.counters
    }

    /// Serves the available requests (bounded by [`MAX_CHAINS_PER_EVENT`]); re-kicks the
    /// queue if it stopped early. Does nothing before activation.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let counters = &self.counters;
        let served = active.drain(0, MAX_CHAINS_PER_EVENT, |mem, chain| {
            let written = fill_chain(mem, chain);
            bump(&counters.requests, 1);
            bump(&counters.bytes, written.into());
            written
        });
        if served {
            self.events.rekick(0);
        }
    }
}

/// Fills the device-writable descriptors of `chain` with random bytes (at most
/// [`MAX_BYTES_PER_CHAIN`] in all); returns the number of bytes written.
fn fill_chain(mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
    let mut written = 0u32;
    let mut buf = vec![0u8; 4096];
    for desc in chain.filter(|d| d.is_write_only()) {
        let mut addr = desc.addr();
        let mut left = desc.len().min(MAX_BYTES_PER_CHAIN - written);
        while left > 0 {
            let n = (left as usize).min(buf.len());
            if getrandom(&mut buf[..n]).is_err() || !super::queue::write_guest(mem, addr, &buf[..n])
            {
                return written;
            }
            // n <= 4096, so the casts are lossless.
            written += n as u32;
            left -= n as u32;
            addr = match addr.0.checked_add(n as u64) {
                Some(a) => vm_memory::GuestAddress(a),
                None => return written,
            };
        }
        if written >= MAX_BYTES_PER_CHAIN {
            break;
        }
    }
    written
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable `rest` slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn queue_events(&self) -> &[EventFd] {
        self.events.fds()
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(mem, interrupt, queues, 1)?);
        // Buffers may have been posted before DRIVER_OK.
        self.events.rekick(0);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.register(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.events.triggered(&events).is_some() {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{read_bytes, TestQueue};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    #[test]
    fn fills_writable_buffers_and_skips_readable_ones() {
        let t = TestQueue::new(16);
        let mut rng = Rng::new().unwrap();
        t.add_chain(&[
            RawDescriptor::from(Descriptor::new(0x10_0000, 16, 0, 0)),
            RawDescriptor::from(Descriptor::new(0x20_0000, 512, WRITE, 0)),
        ]);
        rng.activate(t.mem.clone(), t.interrupt(), vec![t.queue()])
            .unwrap();
        rng.process_queue();
        assert_eq!(t.used_len(0), 512);
        let bytes = read_bytes(&t.mem, 0x20_0000, 512);
        assert!(
            bytes.iter().any(|&b| b != bytes[0]),
            "not random: {bytes:?}"
        );
        assert_eq!(read_bytes(&t.mem, 0x10_0000, 16), vec![0; 16]);
        assert!(t.irq_raised());
        let c = rng.counters().values();
        assert_eq!((c.requests, c.bytes), (1, 512));
    }

    #[test]
    fn bounds_bytes_per_chain() {
        let t = TestQueue::new(16);
        let mut rng = Rng::new().unwrap();
        t.add_chain(&[RawDescriptor::from(Descriptor::new(
            0x10_0000,
            1 << 20,
            WRITE,
            0,
        ))]);
        rng.activate(t.mem.clone(), t.interrupt(), vec![t.queue()])
            .unwrap();
        rng.process_queue();
        assert_eq!(t.used_len(0), MAX_BYTES_PER_CHAIN);
    }

    #[test]
    fn ignores_kicks_before_activation() {
        let mut rng = Rng::new().unwrap();
        rng.process_queue();
        assert!(rng.active.is_none());
    }
}
