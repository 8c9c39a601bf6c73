//! The virtio-net device: queue processing over a [`NetBackend`], and its `VirtioDevice` /
//! `MutEventSubscriber` glue.
//!
//! Event loop contract: the device watches its two queue kick fds and the backend fd, the
//! latter edge-triggered. An edge sets `backend_readable`; only reading until
//! `WouldBlock` clears it. RX reads a frame only after popping a posted chain, so when
//! the guest has no buffers the device stops reading (frames wait in the tap's own
//! bounded kernel queue, nothing is buffered here) and resumes on the guest's next RX
//! kick. Work per event is bounded ([`MAX_FRAMES_PER_EVENT`]); a queue that stopped at
//! the bound is re-kicked so the loop comes back to it.
//!
//! Every descriptor is hostile: an RX chain must be all device-writable and inside guest
//! memory, with room for at least a header and an Ethernet header; a TX chain all
//! device-readable, inside guest memory, at most [`MAX_FRAME_LEN`] + header bytes and at
//! least header + Ethernet header. Anything else is returned with used length 0 and
//! counted; nothing panics.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    MacAddr, NetBackend, ETH_HLEN, MAX_FRAME_LEN, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX, VNET_HDR_LEN,
};
use crate::devices::virtio::queue::{desc_in_memory, write_guest, ActiveQueues, QueueEvents};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1,
};
use crate::metrics::NetCounters;

/// Most frames moved per queue per event; the rest wait for the next loop turn.
pub const MAX_FRAMES_PER_EVENT: usize = 256;
/// Event-loop tag of the backend fd (queue kicks are tagged with their index).
const BACKEND_TAG: u32 = 0x100;
/// Smallest frame (header included) passed on in either direction.
const MIN_FRAME: usize = VNET_HDR_LEN + ETH_HLEN;
/// Largest frame (header included) moved in either direction.
const MAX_FRAME: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Bytes of `virtio_net_config` the device exposes: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// The virtio-net device.
pub struct Net {
    io: NetIo,
    mac: MacAddr,
    mtu: Option<u16>,
    config_space: [u8; CONFIG_LEN],
    events: QueueEvents,
    active: Option<ActiveQueues>,
}

/// The frame-moving half of the device: backend, bounce buffers, counters.
struct NetIo {
    backend: Box<dyn NetBackend>,
    counters: Arc<NetCounters>,
    /// The backend fd signalled readable and was not read dry since.
    backend_readable: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    rx_descs: Vec<Descriptor>,
}

/// What one bounded turn on a queue did.
struct Turn {
    /// Chains put on the used ring.
    used: usize,
    /// Stopped at the bound with work left: come back.
    more: bool,
}

/// Adds `n` to a counter.
fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Net {
    /// A new, inactive device on `backend` with guest MAC `mac`; `mtu` is announced with
    /// `VIRTIO_NET_F_MTU` when given (the caller checked it against [`super::MIN_MTU`] /
    /// [`super::MAX_MTU`]).
    pub fn new(
        backend: Box<dyn NetBackend>,
        mac: MacAddr,
        mtu: Option<u16>,
    ) -> std::io::Result<Net> {
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[..6].copy_from_slice(&mac.0);
        // status (6..8) stays 0: VIRTIO_NET_F_STATUS is not offered, the link is up.
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        config_space[10..12].copy_from_slice(&mtu.unwrap_or(1500).to_le_bytes());
        Ok(Net {
            io: NetIo {
                backend,
                counters: Arc::new(NetCounters::default()),
                backend_readable: true,
                rx_buf: vec![0; MAX_FRAME],
                tx_buf: vec![0; MAX_FRAME],
                rx_descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            },
            mac,
            mtu,
            config_space,
            events: QueueEvents::new(2)?,
            active: None,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The device's frame counters (shared with the metrics).
    pub fn counters(&self) -> &Arc<NetCounters> {
        &self.io.counters
    }

    /// The backend's description (e.g. `tap:tap0`).
    pub fn backend_name(&self) -> String {
        self.io.backend.describe()
    }

    /// Moves waiting frames from the backend into posted RX chains, at most
    /// [`MAX_FRAMES_PER_EVENT`] reads; raises the interrupt if the guest wants one.
    /// Does nothing before activation or while the backend is known to be empty.
    pub fn process_rx(&mut self) {
        self.run_queue(RXQ_INDEX, NetIo::rx);
    }

    /// Sends the guest's TX chains to the backend, at most [`MAX_FRAMES_PER_EVENT`];
    /// every chain is returned with used length 0. Does nothing before activation.
    pub fn process_tx(&mut self) {
        self.run_queue(TXQ_INDEX, NetIo::tx);
    }

    /// One turn of `turn` on queue `index` (after activation only): interrupt if chains
    /// were used, re-kick if it stopped at the bound.
    fn run_queue(
        &mut self,
        index: usize,
        turn: fn(&mut NetIo, &GuestMemoryMmap, &mut Queue) -> Turn,
    ) {
        let Some(ActiveQueues {
            mem,
            interrupt,
            queues,
        }) = self.active.as_mut()
        else {
            return;
        };
        let queue = &mut queues[index];
        let Turn { used, more } = turn(&mut self.io, mem, queue);
        if used > 0 {
            notify(queue, mem, interrupt);
        }
        if more {
            self.events.rekick(index);
        }
    }
}

impl NetIo {
    /// Reads frames into posted RX chains; reading stops when the guest has no buffer
    /// left, the backend runs dry or the bound is reached.
    fn rx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Turn {
        let mut used = 0usize;
        let mut reads = 0usize;
        'chains: while self.backend_readable && reads < MAX_FRAMES_PER_EVENT {
            // No posted buffer: stop reading until the guest kicks the RX queue.
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            self.rx_descs.clear();
            self.rx_descs.extend(chain);
            let Some(capacity) = rx_capacity(mem, &self.rx_descs) else {
                count(&self.counters.rx_bad_chains, 1);
                add_used(queue, mem, head, 0);
                used += 1;
                continue;
            };
            // Read until a frame fits this chain (or the backend runs dry).
            loop {
                if reads == MAX_FRAMES_PER_EVENT {
                    queue.go_to_previous_position();
                    break 'chains;
                }
                reads += 1;
                let n = match self.backend.recv(&mut self.rx_buf) {
                    Ok(n) => n,
                    Err(e) => {
                        if e.kind() != ErrorKind::WouldBlock {
                            tracing::warn!("virtio-net {}: read: {e}", self.backend.describe());
                        }
                        self.backend_readable = false;
                        queue.go_to_previous_position();
                        break 'chains;
                    }
                };
                if !(MIN_FRAME..=capacity).contains(&n) {
                    // A runt, or longer than the buffers the guest posted.
                    count(&self.counters.rx_dropped, 1);
                    continue;
                }
                // The guest negotiated no offloads: a zero header, one buffer.
                self.rx_buf[..VNET_HDR_LEN].fill(0);
                self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                let len = if scatter(mem, &self.rx_descs, &self.rx_buf[..n]) {
                    count(&self.counters.rx_frames, 1);
                    count(&self.counters.rx_bytes, n - VNET_HDR_LEN);
                    n as u32
                } else {
                    count(&self.counters.rx_dropped, 1);
                    0
                };
                add_used(queue, mem, head, len);
                used += 1;
                break;
            }
        }
        let more = self.backend_readable && reads == MAX_FRAMES_PER_EVENT;
        Turn { used, more }
    }

    /// Gathers TX chains and writes their frames to the backend.
    fn tx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Turn {
        let mut used = 0usize;
        while used < MAX_FRAMES_PER_EVENT {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match gather(mem, chain, &mut self.tx_buf) {
                Ok(n) => {
                    // No offloads were negotiated: whatever the guest put in the header,
                    // the tap gets "no checksum, no GSO".
                    self.tx_buf[..VNET_HDR_LEN].fill(0);
                    match self.backend.send(&self.tx_buf[..n]) {
                        Ok(()) => {
                            count(&self.counters.tx_frames, 1);
                            count(&self.counters.tx_bytes, n - VNET_HDR_LEN);
                        }
                        Err(e) => {
                            tracing::debug!("virtio-net {}: write: {e}", self.backend.describe());
                            count(&self.counters.tx_dropped, 1);
                        }
                    }
                }
                Err(why) => {
                    tracing::debug!("virtio-net: malformed tx chain dropped: {why}");
                    count(&self.counters.tx_bad_chains, 1);
                }
            }
            add_used(queue, mem, head, 0);
            used += 1;
        }
        Turn {
            used,
            more: used == MAX_FRAMES_PER_EVENT,
        }
    }
}

/// Total length of an RX chain, if every descriptor is device-writable and inside guest
/// memory and there is room for at least a header and an Ethernet header.
fn rx_capacity(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<usize> {
    let mut total = 0usize;
    for d in descs {
        if !d.is_write_only() || !desc_in_memory(mem, d) {
            return None;
        }
        total = total.saturating_add(d.len() as usize);
    }
    (total >= MIN_FRAME).then_some(total.min(MAX_FRAME))
}

/// Copies `frame` into the (validated) descriptors in order; false if a write failed.
fn scatter(mem: &GuestMemoryMmap, descs: &[Descriptor], mut frame: &[u8]) -> bool {
    for d in descs {
        if frame.is_empty() {
            break;
        }
        let n = frame.len().min(d.len() as usize);
        if !write_guest(mem, d.addr(), &frame[..n]) {
            return false;
        }
        frame = &frame[n..];
    }
    frame.is_empty()
}

/// Gathers a TX chain into `buf`; the frame length, or why the chain is unusable.
fn gather(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    buf: &mut [u8],
) -> Result<usize, &'static str> {
    let mut total = 0usize;
    for d in chain {
        if d.is_write_only() {
            return Err("device-writable descriptor");
        }
        let end = total
            .checked_add(d.len() as usize)
            .filter(|&end| end <= buf.len())
            .ok_or("frame longer than 64 KiB plus header")?;
        mem.read_slice(&mut buf[total..end], d.addr())
            .map_err(|_| "buffer outside guest memory")?;
        total = end;
    }
    if total < MIN_FRAME {
        return Err("shorter than a header plus an Ethernet header");
    }
    Ok(total)
}

fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        tracing::debug!("virtio-net add_used({head}): {e}");
    }
}

/// Raises the used-ring interrupt unless the driver suppressed it: Linux sets
/// `VRING_AVAIL_F_NO_INTERRUPT` while its NAPI poll runs, and each interrupt saved is a VM
/// exit saved. (virtio-queue does not look at that flag, so it is read here; its
/// `needs_notification` orders the used-ring writes before the read.)
fn notify(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &VirtioInterrupt) {
    if matches!(queue.needs_notification(mem), Ok(false)) {
        return;
    }
    let flags = mem.read_obj::<u16>(GuestAddress(queue.avail_ring()));
    if flags.is_ok_and(|f| u32::from(u16::from_le(f)) & VRING_AVAIL_F_NO_INTERRUPT != 0) {
        return;
    }
    if let Err(e) = interrupt.signal_used_queue() {
        tracing::warn!("virtio-net interrupt: {e}");
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        let mtu = if self.mtu.is_some() {
            1 << VIRTIO_NET_F_MTU
        } else {
            0
        };
        FEATURE_VERSION_1 | 1 << VIRTIO_NET_F_MAC | mtu
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
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
        self.active = Some(ActiveQueues::new(mem, interrupt, queues, 2)?);
        // Buffers and frames may have been posted before DRIVER_OK.
        self.events.rekick(RXQ_INDEX);
        self.events.rekick(TXQ_INDEX);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        // Frames may have arrived meanwhile; look again after the next activation.
        self.io.backend_readable = true;
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.register(ops);
        let fd = self.io.backend.raw_fd();
        let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND_TAG, set)) {
            tracing::error!("cannot watch the virtio-net backend: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == BACKEND_TAG {
            self.io.backend_readable = true;
            self.process_rx();
            return;
        }
        match self.events.triggered(&events) {
            Some(RXQ_INDEX) => self.process_rx(),
            Some(TXQ_INDEX) => self.process_tx(),
            _ => {}
        }
    }
}
