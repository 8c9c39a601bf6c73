//! moat-vmm: moat's KVM virtual machine monitor, built from rust-vmm crates
//! (kvm-ioctls, vm-memory, linux-loader, vm-superio, event-manager) plus minimal glue.
//!
//! Data flow: [`config::VmConfig`] (JSON/CLI) is validated into [`config::ValidConfig`];
//! [`vmm::Vmm::new`] maps guest memory, creates the KVM VM with its in-kernel irqchip,
//! places devices on the port-I/O and MMIO [`bus`]es, loads the kernel through PVH
//! ([`loader`]) and configures the vCPUs ([`vstate`]); [`vmm::Vmm::run`] runs the vCPU
//! threads and the event loop until an [`exit::ExitReason`] is recorded.

pub mod arch;
#[cfg(feature = "attack-hooks")]
pub mod attack;
pub mod bus;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod util;
pub mod vmm;
pub mod vstate;

/// The VMM's configuration, checks and exit statuses: the `moat-vmm-config` crate.
pub use moat_vmm_config as config;
