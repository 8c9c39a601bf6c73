//! virtio devices over the virtio-mmio transport.
//!
//! How a device plugs in:
//! - it implements [`VirtioDevice`] (identity, features, config space, activate/reset) and
//!   event-manager's `MutEventSubscriber` (it watches its own queue kick fds, see
//!   [`queue::QueueEvents`], and ignores them until activated);
//! - the VMM wraps it in an [`mmio::MmioTransport`] on the MMIO bus, registers each queue
//!   event fd as a KVM ioeventfd on the transport's QueueNotify register (datamatch = queue
//!   index), hands the device to the event loop and tells the guest kernel about the slot on
//!   its command line (`virtio_mmio.device=4K@0x<addr>:<irq>`);
//! - vCPU threads touch the device only through the transport (register and config-space
//!   accesses, activation, reset); the event-loop thread processes its queues.
//!   Both lock the device's mutex, so a device never sees two callers at once.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod vsock;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::MutEventSubscriber;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// `VIRTIO_F_VERSION_1` as a feature mask; every moat device offers it (modern devices only).
pub const FEATURE_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// InterruptStatus bit: the device used buffers in at least one queue.
pub const INT_USED_RING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the device's configuration (or status) changed.
pub const INT_CONFIG_CHANGE: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Why a device refused to activate; the transport then reports DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport passed a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues given.
        got: usize,
    },
    /// The device's backend could not start.
    #[error("backend: {0}")]
    Backend(String),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus bits the guest reads
/// and acknowledges through the transport, and the irqfd KVM injects on the device's GSI.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt line raising `irqfd` (registered with KVM as an irqfd by the caller).
    pub fn new(irqfd: EventFd) -> VirtioInterrupt {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in InterruptStatus and raises the interrupt.
    pub fn signal(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Tells the guest that buffers were used.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(INT_USED_RING)
    }

    /// Tells the guest that the configuration (or device status) changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.signal(INT_CONFIG_CHANGE)
    }

    /// The current InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged `bits` (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The irqfd (for KVM registration).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// The contract of every moat virtio device, as seen by the virtio-mmio transport.
///
/// A device is also an event-manager `MutEventSubscriber` watching [`queue_events`]
/// (registered with KVM as ioeventfds on QueueNotify); it must ignore kicks until
/// [`activate`] succeeded, and after [`reset`].
///
/// [`queue_events`]: VirtioDevice::queue_events
/// [`activate`]: VirtioDevice::activate
/// [`reset`]: VirtioDevice::reset
pub trait VirtioDevice: MutEventSubscriber + Send {
    /// The virtio device id (`virtio_bindings::virtio_ids`, e.g. 2 block, 4 rng, 19 vsock).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue (powers of two); its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers; must include [`FEATURE_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// The features the driver accepted (already masked with [`avail_features`]), given once
    /// when the driver sets FEATURES_OK.
    ///
    /// [`avail_features`]: VirtioDevice::avail_features
    /// The default ignores them (for devices whose behaviour doesn't depend on features).
    fn ack_features(&mut self, features: u64) {
        let _ = features;
    }

    /// Reads device config space at `offset` (from 0x100 of the MMIO slot). Bytes past the
    /// end of the config read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device config space; the default ignores writes (nothing writable).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// One event fd per queue, in queue order: written by KVM (ioeventfd) or by the transport
    /// when the guest writes the queue's index to QueueNotify.
    fn queue_events(&self) -> &[EventFd];

    /// Starts the device with validated, ready queues (one per [`queue_max_sizes`] entry).
    /// Called at most once between resets, when the driver sets DRIVER_OK.
    ///
    /// [`queue_max_sizes`]: VirtioDevice::queue_max_sizes
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;

    /// Returns to the pre-activation state: drops queues, memory and interrupt, forgets the
    /// negotiated features. Called when the driver writes 0 to Status.
    fn reset(&mut self);
}

/// Copies `value[offset..]` into `data` (zero past the end): config-space reads.
pub fn read_config_bytes(value: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = value.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
