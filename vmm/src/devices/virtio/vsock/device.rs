//! The virtio-vsock device (id 19): rx/tx queue processing over the [`Muxer`], and its
//! `VirtioDevice` / `MutEventSubscriber` glue.
//!
//! Event loop contract: the device registers its three queue kick fds and the muxer's inner
//! epoll fd ([`VsockDevice::backend_fd`]) in `init`; every event runs one bounded turn of
//! [`VsockDevice::process`] (host sockets if the backend fired, then tx, then rx), which
//! raises the used-ring interrupt when buffers were used.

use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use moat_vmm_config::limits::{MAX_GUEST_CID, MIN_GUEST_CID};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{read_tx_chain, HEADER_SIZE, OP_RST, OP_RW};
use super::{
    VsockConfig, VsockError, EVQ_INDEX, MAX_PKT_DATA, NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX,
};
use crate::devices::virtio::queue::{ActiveQueues, QueueEvents};
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1};
use crate::metrics::{bump, VsockCounters};

/// Most chains used per queue per event; the rest wait for the next loop turn (re-kicked).
pub const MAX_CHAINS_PER_EVENT: usize = 256;
/// Event-loop tag of the backend fd (queue kicks are tagged with their index).
const BACKEND_TAG: u32 = 0x100;

/// What one [`VsockDevice::process_queues`] turn did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockQueueResult {
    /// Chains put on the rx used ring.
    pub rx_used: usize,
    /// Chains put on the tx used ring.
    pub tx_used: usize,
    /// The tx queue stopped at the per-turn bound and may hold more.
    pub tx_more: bool,
    /// The rx queue stopped at the per-turn bound while packets were pending.
    pub rx_more: bool,
}

/// The virtio-vsock device with its hybrid unix-socket backend.
pub struct VsockDevice {
    muxer: Muxer,
    config_space: [u8; 8],
    events: QueueEvents,
    active: Option<ActiveQueues>,
    scratch: Vec<u8>,
}

impl VsockDevice {
    /// A new, inactive device; binds the host listener at `cfg.uds_path`.
    pub fn new(cfg: VsockConfig) -> Result<VsockDevice, VsockError> {
        if !(u64::from(MIN_GUEST_CID)..=u64::from(MAX_GUEST_CID)).contains(&cfg.guest_cid) {
            return Err(VsockError::InvalidCid(cfg.guest_cid));
        }
        let config_space = cfg.guest_cid.to_le_bytes();
        Ok(VsockDevice {
            muxer: Muxer::new(cfg)?,
            config_space,
            events: QueueEvents::new(NUM_QUEUES).map_err(VsockError::EventLoop)?,
            active: None,
            scratch: vec![0; MAX_PKT_DATA as usize],
        })
    }

    /// The fd the event loop watches (readable) for host-side work.
    pub fn backend_fd(&self) -> RawFd {
        self.muxer.epoll_fd()
    }

    /// The backend (for inspection).
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// The device's counters (shared with the metrics).
    pub fn counters(&self) -> &Arc<VsockCounters> {
        self.muxer.counters()
    }

    /// Handles host socket events (never blocks); call when [`Self::backend_fd`] is readable.
    pub fn process_backend(&mut self, now: Instant) {
        if let Err(e) = self.muxer.process_host_events(now) {
            tracing::warn!("vsock backend: {e}");
        }
    }

    /// One bounded turn over explicit queues: tx first (it may schedule replies), then rx,
    /// then tx again if it was waiting for rx to drain.
    pub fn process_queues(
        &mut self,
        mem: &GuestMemoryMmap,
        rxq: &mut Queue,
        txq: &mut Queue,
        now: Instant,
    ) -> VsockQueueResult {
        let mut res = VsockQueueResult::default();
        let (tx_used, tx_more) = self.process_tx(mem, txq, now, MAX_CHAINS_PER_EVENT);
        res.tx_used += tx_used;
        let (rx_used, rx_more) = self.process_rx(mem, rxq, now, MAX_CHAINS_PER_EVENT);
        res.rx_used += rx_used;
        res.rx_more = rx_more;
        res.tx_more = tx_more;
        if rx_used > 0 && !tx_more && res.tx_used < MAX_CHAINS_PER_EVENT {
            let (n, more) = self.process_tx(mem, txq, now, MAX_CHAINS_PER_EVENT - res.tx_used);
            res.tx_used += n;
            res.tx_more = more;
            let (n, more) = self.process_rx(mem, rxq, now, MAX_CHAINS_PER_EVENT - rx_used);
            res.rx_used += n;
            res.rx_more = more;
        }
        res
    }

    /// Takes up to `max` guest packets off the tx queue. Returns (chains used, stopped at
    /// `max` with chains left).
    pub fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        txq: &mut Queue,
        now: Instant,
        max: usize,
    ) -> (usize, bool) {
        let mut used = 0;
        while !self.muxer.tx_blocked() {
            if used == max {
                return (used, true);
            }
            let Some(mut chain) = txq.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx_chain(mem, &mut chain, &mut self.scratch) {
                Ok((hdr, len)) => {
                    // Only data packets carry a payload; other ops' bytes are ignored.
                    let len = if hdr.op == OP_RW { len } else { 0 };
                    let counters = self.muxer.counters();
                    bump(&counters.tx_packets, 1);
                    bump(&counters.tx_bytes, len as u64);
                    self.muxer
                        .handle_guest_packet(&hdr, &self.scratch[..len], now);
                }
                Err(e) => {
                    tracing::debug!("vsock: dropping malformed tx chain: {e}");
                    bump(&self.muxer.counters().dropped_malformed, 1);
                }
            }
            if let Err(e) = txq.add_used(mem, head, 0) {
                tracing::debug!("vsock tx add_used: {e}");
            }
            used += 1;
        }
        (used, false)
    }

    /// Fills up to `max` rx chains with pending packets. Returns (chains used, stopped at
    /// `max` with packets left).
    pub fn process_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        rxq: &mut Queue,
        now: Instant,
        max: usize,
    ) -> (usize, bool) {
        let mut used = 0;
        while self.muxer.has_rx() {
            if used == max {
                return (used, true);
            }
            let Some(mut chain) = rxq.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    let cap = pkt
                        .data_slice()
                        .map_or(0, |s| s.len())
                        .min(self.scratch.len());
                    let Some(hdr) = self.muxer.next_rx(&mut self.scratch[..cap], now) else {
                        // Nothing after all: give the buffer back.
                        rxq.go_to_previous_position();
                        break;
                    };
                    let len = (hdr.len as usize).min(cap);
                    if let Some(slice) = pkt.data_slice() {
                        slice.copy_from(&self.scratch[..len]);
                    }
                    match pkt.set_header_from_raw(&hdr.to_bytes()) {
                        Ok(()) => {
                            count_rx(self.muxer.counters(), hdr.op, len);
                            (HEADER_SIZE + len) as u32
                        }
                        Err(e) => {
                            tracing::debug!("vsock rx header write: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: unusable rx chain: {e}");
                    0
                }
            };
            if let Err(e) = rxq.add_used(mem, head, written) {
                tracing::debug!("vsock rx add_used: {e}");
            }
            used += 1;
        }
        (used, false)
    }

    /// One event-loop turn on the activated queues; raises the interrupt and re-kicks
    /// queues that stopped at the per-turn bound.
    pub fn process(&mut self, backend: bool) {
        let now = Instant::now();
        if backend {
            self.process_backend(now);
        }
        let Some(mut active) = self.active.take() else {
            return;
        };
        let res = {
            let ActiveQueues { mem, queues, .. } = &mut active;
            let (rx, rest) = queues.split_at_mut(TXQ_INDEX);
            self.process_queues(mem, &mut rx[RXQ_INDEX], &mut rest[0], now)
        };
        if res.rx_used + res.tx_used > 0 {
            if let Err(e) = active.interrupt.signal_used_queue() {
                tracing::warn!("vsock interrupt: {e}");
            }
        }
        if res.tx_more {
            self.events.rekick(TXQ_INDEX);
        }
        if res.rx_more {
            self.events.rekick(RXQ_INDEX);
        }
        self.active = Some(active);
    }
}

/// Counts a packet put into a guest rx buffer (`len` payload bytes; an RST refuses or
/// resets a connection).
fn count_rx(counters: &VsockCounters, op: u16, len: usize) {
    bump(&counters.rx_packets, 1);
    bump(&counters.rx_bytes, len as u64);
    if op == OP_RST {
        bump(&counters.connections_reset, 1);
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config_space, offset, data);
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
        self.active = Some(ActiveQueues::new(mem, interrupt, queues, NUM_QUEUES)?);
        // Buffers may have been posted before DRIVER_OK.
        self.events.rekick(RXQ_INDEX);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }
}

impl MutEventSubscriber for VsockDevice {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.register(ops);
        let fd = self.backend_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND_TAG, EventSet::IN)) {
            tracing::error!("cannot watch the vsock backend: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == BACKEND_TAG {
            self.process(true);
            return;
        }
        if let Some(index) = self.events.triggered(&events) {
            // Event-queue kicks carry nothing this device acts on.
            if index != EVQ_INDEX {
                self.process(false);
            }
        }
    }
}
