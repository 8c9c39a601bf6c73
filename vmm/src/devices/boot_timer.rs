//! Boot timer: the guest writes `BOOT_TIMER_MAGIC` to the device's MMIO address when it
//! reaches /init, and the VMM records the time since its own start (the boot time moat
//! reports). Later writes are ignored, so a guest can't move the number.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::metrics::Metrics;

/// Byte value the guest writes at offset 0 to mark "reached /init".
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// The boot-timer MMIO device.
pub struct BootTimer {
    metrics: Arc<Metrics>,
}

impl BootTimer {
    /// A timer that stores its reading in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> BootTimer {
        BootTimer { metrics }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) && self.metrics.mark_guest_init()
        {
            tracing::info!(
                "guest reached /init {:.1} ms after VMM start",
                self.metrics
                    .snapshot()
                    .guest_init_us
                    .map_or(0.0, |us| us as f64 / 1000.0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_magic_write_counts() {
        let metrics = Arc::new(Metrics::new());
        let mut timer = BootTimer::new(metrics.clone());
        timer.write(0, &[1]);
        timer.write(4, &[BOOT_TIMER_MAGIC]);
        assert_eq!(metrics.snapshot().guest_init_us, None);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = metrics.snapshot().guest_init_us;
        assert!(first.is_some());
        std::thread::sleep(std::time::Duration::from_millis(2));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(metrics.snapshot().guest_init_us, first);
    }
}
