//! Detects what kind of KVM this machine offers, which decides whether
//! moat's real-VM tests can run directly or must run inside the test host.

use std::fs::OpenOptions;
use std::path::Path;

/// Environment variable that, set to `1`, makes [`crate::on_kvm`] use the
/// nested test host even where [`detect`] reports [`KvmKind::Hardware`].
pub const FORCE_TEST_HOST_ENV: &str = "MOAT_FORCE_TEST_HOST";

/// The kind of `/dev/kvm` this machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// `/dev/kvm` opens, the CPU advertises VMX or SVM and KVM is not PVM:
    /// ordinary guests run at native speed, so tests run directly.
    Hardware,
    /// `/dev/kvm` is the PVM flavour (`kvm_pvm` module): ordinary Linux
    /// guests crawl under it, so tests run in the nested test host.
    Pvm,
    /// No usable `/dev/kvm` (absent, not openable, or no VMX/SVM).
    Missing,
}

/// Probes `/dev/kvm`, `/proc/cpuinfo` and `/sys/module` to classify KVM here.
///
/// PVM is recognised by a `kvm_pvm` entry under `/sys/module` (what a PVM
/// host shows; its dmesg also says `kvm-pvm: loaded`). It is checked first:
/// a PVM host may or may not also advertise VMX/SVM to its guests.
pub fn detect() -> KvmKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify(
        kvm_openable(),
        Path::new("/sys/module/kvm_pvm").exists(),
        cpu_has_virt(&cpuinfo),
    )
}

/// True when `MOAT_FORCE_TEST_HOST=1` asks for the test host regardless.
pub fn test_host_forced() -> bool {
    std::env::var(FORCE_TEST_HOST_ENV).is_ok_and(|v| v == "1")
}

fn classify(openable: bool, pvm: bool, virt_flags: bool) -> KvmKind {
    if pvm {
        KvmKind::Pvm
    } else if openable && virt_flags {
        KvmKind::Hardware
    } else {
        KvmKind::Missing
    }
}

fn kvm_openable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether any `flags` line of `/proc/cpuinfo` text lists `vmx` or `svm`.
fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parsing() {
        assert!(cpu_has_virt("processor\t: 0\nflags\t\t: fpu svm lm\n"));
        assert!(cpu_has_virt("flags\t: vmx\n"));
        assert!(!cpu_has_virt("flags\t: fpu svm_lock lm\n"));
        assert!(!cpu_has_virt("model name\t: AMD svm\n"));
    }

    #[test]
    fn classification() {
        assert_eq!(classify(true, true, true), KvmKind::Pvm);
        assert_eq!(classify(true, true, false), KvmKind::Pvm);
        assert_eq!(classify(true, false, true), KvmKind::Hardware);
        assert_eq!(classify(true, false, false), KvmKind::Missing);
        assert_eq!(classify(false, false, true), KvmKind::Missing);
    }

    #[test]
    fn detect_matches_this_machine() {
        let kind = detect();
        eprintln!("this machine's KVM: {kind:?}");
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        match kind {
            KvmKind::Pvm => assert!(pvm),
            KvmKind::Hardware => {
                assert!(!pvm && Path::new("/dev/kvm").exists());
                assert!(cpu_has_virt(&cpuinfo));
            }
            KvmKind::Missing => {
                assert!(!pvm);
                assert!(!(kvm_openable() && cpu_has_virt(&cpuinfo)));
            }
        }
        // L1's /dev/kvm is nested SVM: what moat sees there must be hardware KVM.
        if crate::in_test_host() {
            assert_eq!(kind, KvmKind::Hardware);
        }
    }
}
