//! Booting a real guest kernel: the default guest image (moat's vmlinux + a busybox test
//! initramfs) and one-shot runs of it under `moat-vmm` — or, as a baseline for benchmarks,
//! under qemu's `microvm` machine on the same KVM. Used by the boot tests, the soak and the
//! bench, which run where KVM works (inside the test host here).
//!
//! `guest/image.rs` builds what is booted, `guest/boot.rs` boots it; [`cpio`] writes the
//! initramfs archives (the test host's too).

mod boot;
pub mod cpio;
mod image;

pub use boot::{boot_moat, boot_qemu, boot_qemu_until, AgentVm, BootRun, BootSpec};
pub use image::{
    default_image_for, test_initramfs, test_initramfs_with, GuestImage, INIT_MARKER,
    VSOCK_ECHO_GUEST_PATH, VSOCK_ECHO_PORT,
};

/// Errors preparing or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The guest kernel is not built.
    #[error("guest kernel missing: {0} (run `guest-kernel/build.sh guest`)")]
    KernelMissing(String),
    /// Building the initramfs failed.
    #[error("initramfs: {0}")]
    Initramfs(String),
    /// Starting the VMM (or qemu) failed.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The program.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}
