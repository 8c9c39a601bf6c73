//! KVM: the device (present, opens read-write, API version 12, a VM can be created), what
//! kind of virtualization it is (hardware, or PVM, or nested/emulated), and whether its vCPU
//! limits fit the configured VM sizes.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use kvm_ioctls::Kvm;
use moat_runtime::config::PodVmConfig;

use super::host::Host;
use super::system::{open_device, DeviceError};
use super::{Finding, Status};

/// The KVM API version every Linux since 2.6.22 reports, and the one moat-vmm speaks.
pub const KVM_API_VERSION: i32 = 12;

/// The KVM findings: `kvm`, `virtualization`, `vcpus`.
pub fn checks(host: &Host, vm: &PodVmConfig) -> Vec<Finding> {
    let (device, kvm) = device(&host.dev_kvm);
    let limits = match &kvm {
        Some(kvm) => vcpus(kvm.get_nr_vcpus(), kvm.get_max_vcpus(), vm),
        None => Finding::warn(
            "vcpus",
            "not checked: the KVM device is unusable (above)",
            "fix the kvm line first",
        ),
    };
    vec![device, virtualization(host), limits]
}

/// `kvm`: the device opens read-write, speaks API 12 and creates a VM; the handle if so.
fn device(path: &Path) -> (Finding, Option<Kvm>) {
    let file = match open_device(path) {
        Ok(file) => file,
        Err(e) => {
            let hint = device_hint(&e, path);
            return (Finding::fail("kvm", e.to_string(), hint), None);
        }
    };
    // SAFETY: the fd is open (just opened, close-on-exec) and owned by nothing else: its
    // ownership moves from the `File` to the `Kvm`, which closes it.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    let finding = judge_device(path, kvm.get_api_version(), || {
        kvm.create_vm().map(drop).map_err(|e| e.to_string())
    });
    let usable = finding.status == Status::Ok;
    (finding, usable.then_some(kvm))
}

/// What to do about a KVM device that does not open.
fn device_hint(e: &DeviceError, path: &Path) -> String {
    match e {
        DeviceError::Absent(_) => "load KVM (modprobe kvm_intel or kvm_amd) with VT-x/AMD-V \
             enabled in the firmware; in a cloud VM, use one with nested virtualization"
            .into(),
        DeviceError::NotCharDevice(_) => format!(
            "{} must be the KVM character device (10:232): remove what is there and reload \
             the kvm module",
            path.display()
        ),
        DeviceError::Open { .. } => format!(
            "run as root, or as a member of the group that owns {} (usually `kvm`)",
            path.display()
        ),
    }
}

/// The `kvm` finding from the device's API version and, when that is right, whether a VM
/// can be created.
fn judge_device(path: &Path, api: i32, create_vm: impl FnOnce() -> Result<(), String>) -> Finding {
    if api != KVM_API_VERSION {
        return Finding::fail(
            "kvm",
            format!(
                "{}: KVM_GET_API_VERSION is {api}, moat needs {KVM_API_VERSION}",
                path.display()
            ),
            format!("{} is not a Linux KVM device moat can use", path.display()),
        );
    }
    match create_vm() {
        Ok(()) => Finding::ok(
            "kvm",
            format!(
                "{}: opened read-write, API version {api}, a VM was created",
                path.display()
            ),
        ),
        Err(e) => Finding::fail(
            "kvm",
            format!("{}: KVM_CREATE_VM failed: {e}", path.display()),
            "another hypervisor may hold VT-x/AMD-V (VirtualBox, VMware), or memory is short; \
             see dmesg",
        ),
    }
}

/// `virtualization`: hardware KVM, PVM, or no virtualization flags (nested or emulated).
fn virtualization(host: &Host) -> Finding {
    if host.sys_module.join("kvm_pvm").exists() {
        return Finding::fail(
            "virtualization",
            "this /dev/kvm is PVM: ordinary Linux guests do not boot",
            "run moat on hardware KVM, or in the test host (tests/)",
        );
    }
    let cpuinfo = match std::fs::read_to_string(&host.proc_cpuinfo) {
        Ok(text) => text,
        Err(e) => {
            return Finding::warn(
                "virtualization",
                format!("{}: cannot read: {e}", host.proc_cpuinfo.display()),
                "cannot tell hardware from nested or emulated virtualization",
            )
        }
    };
    match virt_flag(&cpuinfo) {
        Some(flag) => Finding::ok("virtualization", format!("hardware ({flag}), not PVM")),
        None => Finding::warn(
            "virtualization",
            format!(
                "no vmx or svm flag in {}: this KVM is nested without VT-x/AMD-V exposed, or \
                 emulated",
                host.proc_cpuinfo.display()
            ),
            "guests may be very slow or not boot: run moat on bare metal, or in a VM that \
             exposes vmx/svm (nested virtualization)",
        ),
    }
}

/// The first `vmx` or `svm` on a `flags` line of `/proc/cpuinfo` text.
fn virt_flag(cpuinfo: &str) -> Option<&'static str> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(_, flags)| flags.split_whitespace())
        .find_map(|f| match f {
            "vmx" => Some("vmx"),
            "svm" => Some("svm"),
            _ => None,
        })
}

/// `vcpus`: the configured vCPUs against KVM's recommended (`KVM_CAP_NR_VCPUS`) and maximum
/// (`KVM_CAP_MAX_VCPUS`) vCPUs per VM.
fn vcpus(recommended: usize, max: usize, vm: &PodVmConfig) -> Finding {
    let (vcpus, max_vcpus) = (vm.vcpus as usize, vm.max_vcpus() as usize);
    let detail = format!(
        "[vm] vcpus = {vcpus}, max_vcpus = {max_vcpus}; KVM allows {max} per VM \
         (KVM_CAP_MAX_VCPUS), recommends at most {recommended} (KVM_CAP_NR_VCPUS)"
    );
    if vcpus > max {
        Finding::fail(
            "vcpus",
            format!("{detail}: no pod VM can be created"),
            format!("lower [vm] vcpus to at most {max}"),
        )
    } else if max_vcpus > max {
        Finding::warn(
            "vcpus",
            format!("{detail}: a pod sized above {max} vCPUs fails to boot"),
            format!("lower [vm] max_vcpus to at most {max}"),
        )
    } else if max_vcpus > recommended {
        Finding::warn(
            "vcpus",
            format!("{detail}: pods above {recommended} vCPUs overcommit this host's CPUs"),
            format!("keep [vm] max_vcpus at most {recommended}, or accept slower pods"),
        )
    } else {
        Finding::ok("vcpus", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{temp_host, unopenable_char_device, write_file};

    #[test]
    fn a_missing_or_regular_file_kvm_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let f = &checks(&host, &PodVmConfig::default());
        assert_eq!((f[0].name, f[0].status), ("kvm", Status::Fail));
        assert!(f[0].detail.ends_with("kvm: absent"), "{f:?}");
        assert!(f[0].hint.as_deref().unwrap().contains("modprobe"), "{f:?}");
        assert_eq!((f[2].name, f[2].status), ("vcpus", Status::Warn));

        std::fs::create_dir_all(host.dev_kvm.parent().unwrap()).unwrap();
        write_file(dir.path(), "dev/kvm", b"", 0o666);
        let f = &checks(&host, &PodVmConfig::default())[0];
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("not a character device"), "{f:?}");
    }

    #[test]
    fn a_device_that_does_not_open_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("kvm");
        if !unopenable_char_device(&path) {
            return;
        }
        let (f, kvm) = device(&path);
        assert!(kvm.is_none());
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("cannot open read-write"), "{f:?}");
        assert!(f.hint.unwrap().contains("group"));
    }

    #[test]
    fn a_device_that_is_not_kvm_fails_on_the_api_version() {
        // /dev/null opens read-write, but answers no KVM ioctl.
        let (f, kvm) = device(Path::new("/dev/null"));
        assert!(kvm.is_none());
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("KVM_GET_API_VERSION is -1"), "{f:?}");
    }

    #[test]
    fn a_vm_that_cannot_be_created_fails() {
        let p = Path::new("/dev/kvm");
        let f = judge_device(
            p,
            12,
            || Err("Device or resource busy (os error 16)".into()),
        );
        assert_eq!(f.status, Status::Fail);
        assert!(f
            .detail
            .contains("KVM_CREATE_VM failed: Device or resource busy"));
        let f = judge_device(p, 11, || unreachable!("no VM for a wrong API"));
        assert!(f.detail.contains("is 11, moat needs 12"), "{f:?}");
        assert_eq!(judge_device(p, 12, || Ok(())).status, Status::Ok);
    }

    #[test]
    fn pvm_fails_and_flags_are_read() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let f = virtualization(&host);
        assert_eq!(f.status, Status::Warn, "no cpuinfo: {f:?}");
        std::fs::create_dir_all(host.proc_cpuinfo.parent().unwrap()).unwrap();
        std::fs::write(&host.proc_cpuinfo, "flags\t: fpu svm_lock lm\n").unwrap();
        let f = virtualization(&host);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("no vmx or svm"), "{f:?}");
        std::fs::write(&host.proc_cpuinfo, "model name: x\nflags\t: fpu vmx lm\n").unwrap();
        assert_eq!(virtualization(&host).status, Status::Ok);

        // PVM wins over the flags.
        std::fs::create_dir_all(host.sys_module.join("kvm_pvm")).unwrap();
        let f = virtualization(&host);
        assert_eq!(f.status, Status::Fail);
        assert_eq!(
            format!("{}; {}", f.detail, f.hint.unwrap()),
            "this /dev/kvm is PVM: ordinary Linux guests do not boot; \
             run moat on hardware KVM, or in the test host (tests/)"
        );
    }

    #[test]
    fn vcpu_limits() {
        let mut vm = PodVmConfig::default();
        assert_eq!(vcpus(16, 1024, &vm).status, Status::Ok);
        vm.max_vcpus = Some(32);
        assert_eq!(vcpus(16, 1024, &vm).status, Status::Warn);
        let f = vcpus(16, 16, &vm);
        assert_eq!(f.status, Status::Warn);
        assert!(f.hint.unwrap().contains("max_vcpus to at most 16"));
        vm.vcpus = 24;
        let f = vcpus(16, 16, &vm);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("[vm] vcpus = 24"), "{f:?}");
        assert!(f.hint.unwrap().contains("vcpus to at most 16"));
    }
}
