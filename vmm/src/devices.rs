//! Legacy and platform device models of a moat microVM: the COM1 serial console, the i8042
//! reset line and the boot timer. Each file holds one device, its bus glue and its tests.

pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an event fd that KVM injects through irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
