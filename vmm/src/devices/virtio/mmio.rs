//! virtio-mmio transport, version 2 ("modern", virtio 1.x §4.2.2), as a bus device.
//!
//! Registers are 32-bit and must be accessed with aligned 4-byte loads/stores; any other
//! register access is ignored (reads return 0). The device status follows the driver
//! initialisation sequence: writing 0 resets device and queues; feature words are accepted
//! only while DRIVER is set and FEATURES_OK is not; queue registers only before DRIVER_OK;
//! DRIVER_OK activates the device once, with every queue ready and valid in guest memory,
//! else DEVICE_NEEDS_RESET is set and a config-change interrupt raised.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1};
use crate::bus::BusDevice;
use crate::util::lock;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern virtio-mmio version.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("MOAT").
pub const MMIO_VENDOR_ID: u32 = 0x5441_4f4d;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset where device config space starts.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

const BAD_SIZE: u8 = 1;
const BAD_DESC: u8 = 2;
const BAD_AVAIL: u8 = 4;
const BAD_USED: u8 = 8;

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    /// Per queue, the `BAD_*` bits of refused register writes: activation fails while set.
    queue_bad: Vec<u8>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; its queues start at their maximum size, not ready.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> MmioTransport {
        let queues: Vec<Queue> = lock(&device)
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| match Queue::new(max) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::error!("virtio device declares invalid queue size {max}: {e}");
                    None
                }
            })
            .collect();
        let queue_bad = vec![0; queues.len()];
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_bad,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    /// The interrupt line shared with the device.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The current device status byte.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<(&mut Queue, &mut u8)> {
        let i = usize::try_from(self.queue_sel).ok()?;
        Some((self.queues.get_mut(i)?, self.queue_bad.get_mut(i)?))
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i));
        let device = lock(&self.device);
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => device.device_type(),
            0x0c => MMIO_VENDOR_ID,
            0x10 => {
                let features = device.avail_features() | FEATURE_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => queue.map_or(0, |q| q.max_size().into()),
            0x44 => queue.map_or(0, |q| q.ready().into()),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // No shared memory regions: their length reads as all ones.
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 => self.write_driver_features(value),
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY_OFFSET => self.notify(value),
            0x64 => self.interrupt.ack(value),
            0x70 => self.write_status(value),
            _ => tracing::debug!("virtio-mmio: write to {offset:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating =
            self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK);
        if !negotiating {
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | value << 32,
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.has(VIRTIO_CONFIG_S_FEATURES_OK) || self.has(VIRTIO_CONFIG_S_DRIVER_OK) {
            return;
        }
        let Some((queue, bad)) = self.selected_queue() else {
            return;
        };
        let (bit, ok) = match offset {
            0x38 => (
                BAD_SIZE,
                u16::try_from(value)
                    .ok()
                    .is_some_and(|size| queue.try_set_size(size).is_ok()),
            ),
            0x44 => {
                queue.set_ready(value == 1);
                return;
            }
            _ => {
                let (current, bit) = match offset & !4 {
                    0x80 => (queue.desc_table(), BAD_DESC),
                    0x90 => (queue.avail_ring(), BAD_AVAIL),
                    _ => (queue.used_ring(), BAD_USED),
                };
                let addr = if offset & 4 == 0 {
                    current & !0xffff_ffff | u64::from(value)
                } else {
                    current & 0xffff_ffff | u64::from(value) << 32
                };
                let addr = vm_memory::GuestAddress(addr);
                // Alignment depends on the low word only, so a refused write is a really
                // misaligned address.
                let ok = match offset & !4 {
                    0x80 => queue.try_set_desc_table_address(addr),
                    0x90 => queue.try_set_avail_ring_address(addr),
                    _ => queue.try_set_used_ring_address(addr),
                }
                .is_ok();
                (bit, ok)
            }
        };
        // A refused write leaves the old value, which activation must not use.
        if ok {
            *bad &= !bit;
        } else {
            *bad |= bit;
        }
    }

    fn notify(&mut self, value: u32) {
        // Normally KVM's ioeventfd catches this write; without it, forward the kick.
        if !self.activated {
            return;
        }
        let device = lock(&self.device);
        if let Some(fd) = usize::try_from(value)
            .ok()
            .and_then(|i| device.queue_events().get(i))
        {
            let _ = fd.write(1);
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // The driver may only add the next bit of the initialisation sequence.
        let steps = [
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ];
        let Some(step) = steps.iter().position(|&bit| value == self.status | bit) else {
            tracing::debug!(
                "virtio-mmio: status {value:#x} from {:#x} ignored",
                self.status
            );
            return;
        };
        if step > 0 && !self.has(steps[step - 1]) {
            return;
        }
        match steps[step] {
            VIRTIO_CONFIG_S_FEATURES_OK => {
                let offered = lock(&self.device).avail_features() | FEATURE_VERSION_1;
                if self.driver_features & !offered != 0
                    || self.driver_features & FEATURE_VERSION_1 == 0
                {
                    // Leave FEATURES_OK clear: the driver reads it back and gives up.
                    return;
                }
                lock(&self.device).ack_features(self.driver_features);
                self.status = value;
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status = value;
                self.activate();
            }
            _ => self.status = value,
        }
    }

    fn activate(&mut self) {
        if self.activated || self.has(VIRTIO_CONFIG_S_NEEDS_RESET) {
            return;
        }
        let all_valid = self
            .queues
            .iter()
            .zip(&self.queue_bad)
            .all(|(q, &bad)| bad == 0 && q.is_valid(&self.mem));
        // The device gets its own copies; the transport keeps the registers' view.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let result = match queues {
            Ok(queues) if all_valid => lock(&self.device)
                .activate(self.mem.clone(), self.interrupt.clone(), queues)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("a queue is not ready or not inside guest memory".to_string()),
        };
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("virtio device activation failed: {e}");
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                let _ = self.interrupt.signal_config_change();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_bad.fill(0);
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests;
