//! moat-vmm-config: the typed contract between `moat-vmm` and whoever starts it (the shim,
//! tests, a person at a shell).
//!
//! - [`VmConfig`] is the whole configuration of one microVM. It round-trips through JSON
//!   (`serde_json`): `moat-vmm --config vm.json` reads exactly what a caller wrote, and
//!   command-line flags, when given, override the file's values.
//! - [`VmConfig::validate`] checks every value and every file it names before the VMM
//!   creates any KVM object, and returns the [`ValidConfig`] the VMM runs; a bad value is a
//!   [`ConfigError`] that names the field. The per-field checks ([`check_vcpus`],
//!   [`check_memory_mib`], [`check_metrics_interval_ms`], [`check_extra_cmdline`],
//!   [`valid_ifname`], [`valid_tag`], [`check_tap_fd`], [`MacAddr::check_unicast`]) are
//!   public, so a caller can check its own settings with the same rules, and [`limits`]
//!   holds every bound they use.
//! - [`status`] says what the VMM process's exit status means.
//!
//! The crate has no KVM code: a caller depends on it without pulling the VMM in.

mod block;
mod cmdline;
mod error;
mod fs;
mod jail;
pub mod limits;
mod mac;
mod net;
pub mod status;
pub mod tap;
mod vm;
mod vsock;

pub use block::BlockDeviceConfig;
pub use cmdline::{build_cmdline, check_extra_cmdline, insert_kernel_args, DEFAULT_CMDLINE};
pub use error::ConfigError;
pub use fs::{valid_tag, SharedDirConfig};
pub use jail::{JailConfig, SeccompMode};
pub use mac::{MacAddr, MacError};
pub use net::NetDeviceConfig;
pub use tap::{check_tap_fd, valid_ifname, NotATap};
pub use vm::{
    check_memory_mib, check_metrics_interval_ms, check_vcpus, SerialConfig, SerialOutput,
    ValidConfig, VmConfig,
};
pub use vsock::VsockDeviceConfig;

/// Checks that `value` of configuration field `field` is in `min..=max`.
fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
