//! The virtio-mmio register file and status state machine, driven like a guest driver would.

use super::*;
use crate::devices::virtio::testing::TestQueue;
use crate::devices::virtio::ActivateError;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRV: u32 = ACK | VIRTIO_CONFIG_S_DRIVER;
const FOK: u32 = DRV | VIRTIO_CONFIG_S_FEATURES_OK;
const DOK: u32 = FOK | VIRTIO_CONFIG_S_DRIVER_OK;
const FEATURE_X: u64 = 1 << 3;

/// A two-queue device that records what the transport does to it.
struct Fake {
    events: Vec<EventFd>,
    acked: u64,
    activations: u32,
    resets: u32,
    config: [u8; 8],
    fail: bool,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            acked: 0,
            activations: 0,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            fail: false,
        }
    }
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1 | FEATURE_X
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(o), [b]) = (usize::try_from(offset), data) {
            if let Some(slot) = self.config.get_mut(o) {
                *slot = *b;
            }
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        assert_eq!(queues.len(), 2);
        self.activations += 1;
        if self.fail {
            return Err(ActivateError::Backend("refused".into()));
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

impl MutEventSubscriber for Fake {
    fn init(&mut self, _ops: &mut EventOps) {}
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}

fn transport() -> (MmioTransport, Arc<Mutex<Fake>>, TestQueue) {
    let t = TestQueue::new(16);
    let fake = Arc::new(Mutex::new(Fake::new()));
    let tr = MmioTransport::new(fake.clone(), t.mem.clone(), t.interrupt());
    (tr, fake, t)
}

fn r(tr: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    tr.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w(tr: &mut MmioTransport, offset: u64, value: u32) {
    tr.write(offset, &value.to_le_bytes());
}

fn negotiate(tr: &mut MmioTransport, features: u64) {
    w(tr, 0x70, ACK);
    w(tr, 0x70, DRV);
    for sel in 0..2 {
        w(tr, 0x24, sel);
        w(tr, 0x20, (features >> (32 * sel)) as u32);
    }
    w(tr, 0x70, FOK);
}

fn setup_queue(tr: &mut MmioTransport, index: u32, size: u32, base: u64) {
    w(tr, 0x30, index);
    w(tr, 0x38, size);
    for (reg, addr) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
        w(tr, reg, addr as u32);
        w(tr, reg + 4, (addr >> 32) as u32);
    }
    w(tr, 0x44, 1);
}

fn bring_up(tr: &mut MmioTransport) {
    negotiate(tr, FEATURE_VERSION_1 | FEATURE_X);
    setup_queue(tr, 0, 16, 0x10_0000);
    setup_queue(tr, 1, 8, 0x20_0000);
    w(tr, 0x70, DOK);
}

#[test]
fn identity_registers_and_bad_widths() {
    let (mut tr, _, _) = transport();
    assert_eq!(r(&mut tr, 0x00), MMIO_MAGIC);
    assert_eq!(r(&mut tr, 0x04), 2);
    assert_eq!(r(&mut tr, 0x08), 42);
    assert_eq!(r(&mut tr, 0x0c), MMIO_VENDOR_ID);
    let mut two = [0xffu8; 2];
    tr.read(0x00, &mut two);
    assert_eq!(two, [0, 0]);
    assert_eq!(r(&mut tr, 0x02), 0, "unaligned");
    tr.write(0x70, &[1]);
    assert_eq!(r(&mut tr, 0x70), 0, "byte write to a register ignored");
}

#[test]
fn feature_negotiation() {
    let (mut tr, fake, _) = transport();
    w(&mut tr, 0x14, 1);
    assert_eq!(r(&mut tr, 0x10), 1, "VERSION_1 is bit 32");
    w(&mut tr, 0x14, 0);
    assert_eq!(r(&mut tr, 0x10), FEATURE_X as u32);
    // Features written before DRIVER are ignored; without VERSION_1, no FEATURES_OK.
    w(&mut tr, 0x20, 0xffff);
    negotiate(&mut tr, FEATURE_X);
    assert_eq!(r(&mut tr, 0x70), DRV);
    // Unknown feature bits are refused as well.
    w(&mut tr, 0x70, 0);
    negotiate(&mut tr, FEATURE_VERSION_1 | 1 << 20);
    assert_eq!(r(&mut tr, 0x70), DRV);
    w(&mut tr, 0x70, 0);
    negotiate(&mut tr, FEATURE_VERSION_1 | FEATURE_X);
    assert_eq!(r(&mut tr, 0x70), FOK);
    assert_eq!(fake.lock().unwrap().acked, FEATURE_VERSION_1 | FEATURE_X);
    // Features are frozen after FEATURES_OK.
    w(&mut tr, 0x24, 0);
    w(&mut tr, 0x20, 0);
    assert_eq!(tr.driver_features, FEATURE_VERSION_1 | FEATURE_X);
}

#[test]
fn status_steps_cannot_be_skipped() {
    let (mut tr, fake, _) = transport();
    w(&mut tr, 0x70, DOK);
    assert_eq!(r(&mut tr, 0x70), 0);
    w(&mut tr, 0x70, ACK);
    w(&mut tr, 0x70, ACK | VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(r(&mut tr, 0x70), ACK);
    assert_eq!(fake.lock().unwrap().activations, 0);
}

#[test]
fn activation_with_valid_queues_happens_once() {
    let (mut tr, fake, _) = transport();
    assert_eq!(r(&mut tr, 0x34), 16);
    w(&mut tr, 0x30, 1);
    assert_eq!(r(&mut tr, 0x34), 8);
    w(&mut tr, 0x30, 7);
    assert_eq!(r(&mut tr, 0x34), 0, "no such queue");
    bring_up(&mut tr);
    assert!(tr.is_activated());
    assert_eq!(r(&mut tr, 0x70), DOK);
    w(&mut tr, 0x30, 0);
    assert_eq!(r(&mut tr, 0x44), 1);
    w(&mut tr, 0x70, DOK);
    assert_eq!(fake.lock().unwrap().activations, 1);
    // Queue registers are frozen once running.
    w(&mut tr, 0x44, 0);
    assert_eq!(r(&mut tr, 0x44), 1);
    // The fallback notify path kicks the queue's event fd.
    w(&mut tr, 0x50, 1);
    assert_eq!(fake.lock().unwrap().events[1].read().unwrap(), 1);
    w(&mut tr, 0x50, 9);
}

#[test]
fn invalid_queues_prevent_activation() {
    type Breakage = fn(&mut MmioTransport);
    let cases: [(&str, Breakage); 5] = [
        ("not ready", |tr| {
            w(tr, 0x30, 1);
            w(tr, 0x44, 0);
        }),
        ("size not a power of two", |tr| {
            w(tr, 0x30, 0);
            w(tr, 0x38, 12);
        }),
        ("size above max", |tr| {
            w(tr, 0x30, 1);
            w(tr, 0x38, 16);
        }),
        ("misaligned used ring", |tr| {
            w(tr, 0x30, 0);
            w(tr, 0xa0, 0x10_2002);
        }),
        ("ring outside memory", |tr| {
            w(tr, 0x30, 1);
            w(tr, 0x84, 0x10);
        }),
    ];
    for (what, breakage) in cases {
        let (mut tr, fake, _) = transport();
        negotiate(&mut tr, FEATURE_VERSION_1);
        setup_queue(&mut tr, 0, 16, 0x10_0000);
        setup_queue(&mut tr, 1, 8, 0x20_0000);
        breakage(&mut tr);
        w(&mut tr, 0x70, DOK);
        assert!(!tr.is_activated(), "{what}");
        assert_eq!(fake.lock().unwrap().activations, 0, "{what}");
        assert_ne!(r(&mut tr, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "{what}");
        assert_ne!(r(&mut tr, 0x60) & INT_CONFIG, 0, "{what}");
    }
}

const INT_CONFIG: u32 = crate::devices::virtio::INT_CONFIG_CHANGE;

#[test]
fn device_activation_error_sets_needs_reset() {
    let (mut tr, fake, _) = transport();
    fake.lock().unwrap().fail = true;
    bring_up(&mut tr);
    assert!(!tr.is_activated());
    assert_ne!(r(&mut tr, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn reset_returns_everything_to_initial_state() {
    let (mut tr, fake, t) = transport();
    bring_up(&mut tr);
    t.interrupt().signal_used_queue().unwrap();
    assert_eq!(r(&mut tr, 0x60), 1);
    w(&mut tr, 0x64, 1);
    assert_eq!(r(&mut tr, 0x60), 0, "acknowledged");
    t.interrupt().signal_used_queue().unwrap();
    w(&mut tr, 0x70, 0);
    assert_eq!(fake.lock().unwrap().resets, 1);
    assert!(!tr.is_activated());
    assert_eq!(r(&mut tr, 0x70), 0);
    assert_eq!(r(&mut tr, 0x60), 0);
    assert_eq!(r(&mut tr, 0x44), 0);
    // And it can be brought up again.
    bring_up(&mut tr);
    assert!(tr.is_activated());
    assert_eq!(fake.lock().unwrap().activations, 2);
}

#[test]
fn failed_bit_is_sticky_until_reset() {
    let (mut tr, _, _) = transport();
    w(&mut tr, 0x70, ACK);
    w(&mut tr, 0x70, ACK | VIRTIO_CONFIG_S_FAILED);
    assert_eq!(r(&mut tr, 0x70), ACK | VIRTIO_CONFIG_S_FAILED);
    w(&mut tr, 0x70, 0);
    assert_eq!(r(&mut tr, 0x70), 0);
}

#[test]
fn config_space_access() {
    let (mut tr, fake, _) = transport();
    let mut b = [0u8; 4];
    tr.read(0x104, &mut b);
    assert_eq!(b, [5, 6, 7, 8]);
    let mut one = [0u8; 1];
    tr.read(0x107, &mut one);
    assert_eq!(one, [8]);
    tr.read(0x1000 - 4, &mut b);
    assert_eq!(b, [0; 4]);
    let gen = r(&mut tr, 0xfc);
    tr.write(0x100, &[9]);
    assert_eq!(fake.lock().unwrap().config[0], 9);
    assert_ne!(r(&mut tr, 0xfc), gen);
}
