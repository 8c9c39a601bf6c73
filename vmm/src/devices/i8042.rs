//! Minimal i8042 keyboard controller: only the CPU-reset command matters. Linux (with
//! `reboot=k`) resets through it on reboot, poweroff and panic; the BIOS warm-reset flag it
//! writes first (`reboot=k,c,panic_w`) tells a panic from a clean stop.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_superio::{I8042Device, Trigger};

use crate::bus::{byte_register, BusDevice};
use crate::exit::{ExitReason, ExitSignal};

/// First I/O port of the controller (data port 0x60; command/status is 0x64, offset 4).
pub const I8042_PORT: u64 = 0x60;
/// Number of ports decoded (0x60..=0x64).
pub const I8042_PORTS: u64 = 5;
/// Guest physical address of the BIOS reset-mode word Linux writes before a reset.
pub const RESET_MODE_ADDR: u64 = 0x472;
/// Value of that word for a warm reset (moat's command line uses warm only for panics).
pub const WARM_RESET: u16 = 0x1234;

/// Turns the controller's reset line into a VM stop with the right reason.
pub struct ResetTrigger {
    exit: ExitSignal,
    mem: GuestMemoryMmap,
}

impl ResetTrigger {
    /// A trigger that reads the reset-mode word from `mem` and stops the VM through `exit`.
    pub fn new(exit: ExitSignal, mem: GuestMemoryMmap) -> ResetTrigger {
        ResetTrigger { exit, mem }
    }
}

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        let mode: u16 = self
            .mem
            .read_obj(GuestAddress(RESET_MODE_ADDR))
            .unwrap_or(0);
        self.exit.request(if mode == WARM_RESET {
            ExitReason::GuestPanic
        } else {
            ExitReason::GuestShutdown
        });
        Ok(())
    }
}

/// The controller as seen on the port I/O bus.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller whose reset command fires `trigger`.
    pub fn new(trigger: ResetTrigger) -> I8042 {
        I8042 {
            dev: I8042Device::new(trigger),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match byte_register(offset, data.len()) {
            Some(reg) => data[0] = self.dev.read(reg),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(reg), [value]) = (byte_register(offset, data.len()), data) {
            let Ok(()) = self.dev.write(reg, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(mode: u16) -> (I8042, ExitSignal) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_obj(mode, GuestAddress(RESET_MODE_ADDR)).unwrap();
        let exit = ExitSignal::new().unwrap();
        (I8042::new(ResetTrigger::new(exit.clone(), mem)), exit)
    }

    #[test]
    fn cold_reset_is_a_clean_shutdown() {
        let (mut dev, exit) = setup(0);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestShutdown));
    }

    #[test]
    fn warm_reset_is_a_panic() {
        let (mut dev, exit) = setup(WARM_RESET);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn other_commands_do_nothing() {
        let (mut dev, exit) = setup(0);
        dev.write(4, &[0xad]);
        dev.write(0, &[0xfe]);
        let mut b = [0u8];
        dev.read(4, &mut b);
        assert_eq!(exit.reason(), None);
    }
}
