//! Model-specific registers set on every vCPU before its first run.
//!
//! The syscall/sysenter MSRs are zeroed (the guest kernel programs them),
//! the TSC starts at 0 (KVM keeps the vCPUs' TSCs in sync when they are
//! written close together) and fast string operations are enabled in
//! `IA32_MISC_ENABLE`, as firmware would leave them.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_STAR (syscall segment selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR (64-bit syscall entry).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR (compat-mode syscall entry).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK (syscall RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Errors setting the boot MSRs.
#[derive(Debug, Error)]
pub enum MsrError {
    /// The entry list could not be wrapped for the ioctl.
    #[error("failed to build the MSR list: {0:?}")]
    Build(vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS failed.
    #[error("KVM_SET_MSRS failed: {0}")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM stopped at an MSR it refused.
    #[error("KVM set only {set} of {total} MSRs; it refused MSR {refused:#x}")]
    Partial {
        /// Number of MSRs set.
        set: usize,
        /// Number of MSRs requested.
        total: usize,
        /// Index of the first MSR KVM did not set.
        refused: u32,
    },
}

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSRs (index, value) set on every vCPU before it first runs.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ]
}

/// Writes [`boot_msr_entries`] to `vcpu` and checks KVM accepted all of
/// them (KVM_SET_MSRS stops at the first MSR it refuses). Call it after
/// `set_cpuid2`, since KVM validates some MSRs against the guest CPUID.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set != entries.len() {
        return Err(MsrError::Partial {
            set,
            total: entries.len(),
            refused: entries.get(set).map_or(0, |e| e.index),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_list() {
        let e = boot_msr_entries();
        assert_eq!(e.len(), 10);
        let mut indices: Vec<u32> = e.iter().map(|m| m.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), e.len(), "no duplicate MSRs");
        for m in &e {
            let expected = if m.index == MSR_IA32_MISC_ENABLE {
                MSR_IA32_MISC_ENABLE_FAST_STRING
            } else {
                0
            };
            assert_eq!(m.data, expected, "MSR {:#x}", m.index);
        }
        for idx in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_SYSCALL_MASK,
            MSR_KERNEL_GS_BASE,
            MSR_IA32_TSC,
            MSR_IA32_MISC_ENABLE,
        ] {
            assert!(e.iter().any(|m| m.index == idx), "missing {idx:#x}");
        }
    }

    #[test]
    fn msrs_wrapper_builds() {
        let msrs = Msrs::from_entries(&boot_msr_entries()).expect("msrs");
        assert_eq!(msrs.as_slice().len(), 10);
    }
}
