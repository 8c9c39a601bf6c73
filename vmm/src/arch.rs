//! Architecture-specific parts of the VMM.
//!
//! moat only supports x86_64 today; everything lives in [`x86_64`] and is
//! re-exported here so the rest of the VMM can write `crate::arch::...`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
