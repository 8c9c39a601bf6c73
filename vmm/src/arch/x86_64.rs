//! x86_64 support: guest memory layout, MP table, CPUID, MSRs, registers
//! and the PVH boot protocol.
//!
//! Typical per-VM / per-vCPU order (see each module for details):
//!
//! 1. [`arch_memory_regions`] to build guest memory, register it with KVM.
//! 2. `VmFd::create_irq_chip` (needed by [`setup_lapic`]) before any vCPU.
//! 3. Load the kernel, write the command line, place the initrd with
//!    [`initrd_load_addr`], then [`configure_pvh`] and [`setup_mptable`].
//! 4. For every vCPU: [`filter_cpuid`] on a clone of the supported CPUID,
//!    `VcpuFd::set_cpuid2`, [`setup_msrs`], [`setup_pvh_regs`] /
//!    [`setup_pvh_sregs`] (boot vCPU), [`setup_fpu`], [`setup_lapic`].

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod msr;
pub mod regs;

#[cfg(test)]
mod tests;

pub use boot::{configure_pvh, initrd_load_addr, BootError};
pub use cpuid::{filter_cpuid, set_tsc_deadline, CpuidError};
pub use memory::{arch_memory_regions, e820_entries, E820Entry, E820_RAM, E820_RESERVED};
pub use mptable::{setup_mptable, MptableError};
pub use msr::{boot_msr_entries, setup_msrs, MsrError};
pub use regs::{setup_fpu, setup_lapic, setup_pvh_regs, setup_pvh_sregs, RegsError};
