//! The host's devices and memory: the device nodes moat opens (`/dev/kvm`, `/dev/net/tun`)
//! and whether a pod VM's memory fits the host.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use moat_runtime::config::PodVmConfig;

use super::host::Host;
use super::Finding;

/// Why a device node is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Nothing at the path.
    #[error("{}: absent", .0.display())]
    Absent(PathBuf),
    /// Something other than a character device at the path.
    #[error("{}: not a character device", .0.display())]
    NotCharDevice(PathBuf),
    /// It does not open read-write.
    #[error("{}: cannot open read-write: {source}", path.display())]
    Open {
        /// The device.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens `path`, a character device, read-write.
pub fn open_device(path: &Path) -> Result<File, DeviceError> {
    let open_error = |source| DeviceError::Open {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DeviceError::Absent(path.to_path_buf()))
        }
        Err(e) => return Err(open_error(e)),
        Ok(m) if !m.file_type().is_char_device() => {
            return Err(DeviceError::NotCharDevice(path.to_path_buf()))
        }
        Ok(_) => {}
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(open_error)
}

/// `tun`: the TUN/TAP device pod networking needs.
pub fn tun(host: &Host) -> Finding {
    match open_device(&host.dev_tun) {
        Ok(_) => Finding::ok(
            "tun",
            format!("{}: opened read-write", host.dev_tun.display()),
        ),
        Err(e) => {
            let hint = match e {
                DeviceError::Open { .. } => "pod networking needs it: run the shim as root",
                _ => "pod networking needs it: modprobe tun (CONFIG_TUN)",
            };
            Finding::fail("tun", e.to_string(), hint)
        }
    }
}

/// `memory`: a pod VM's memory (`[vm] memory_mib`, up to `max_memory_mib`) against the
/// host's `MemTotal`.
pub fn memory(host: &Host, vm: &PodVmConfig) -> Finding {
    let total_kib = std::fs::read_to_string(&host.proc_meminfo)
        .ok()
        .and_then(|t| mem_total_kib(&t));
    match total_kib {
        Some(kib) => judge_memory(kib / 1024, vm),
        None => Finding::warn(
            "memory",
            format!("{}: no MemTotal", host.proc_meminfo.display()),
            "cannot compare [vm] memory_mib with the host's memory",
        ),
    }
}

fn judge_memory(host_mib: u64, vm: &PodVmConfig) -> Finding {
    let (mib, max_mib) = (vm.memory_mib, vm.max_memory_mib());
    let detail = format!(
        "[vm] memory_mib = {mib} (max_memory_mib = {max_mib}); this host has {host_mib} MiB"
    );
    if mib > host_mib {
        Finding::fail(
            "memory",
            format!("{detail}: one pod's VM is larger than the host"),
            format!("lower [vm] memory_mib below {host_mib}"),
        )
    } else if max_mib > host_mib {
        Finding::warn(
            "memory",
            format!("{detail}: a pod sized up to max_memory_mib would not fit"),
            format!("lower [vm] max_memory_mib below {host_mib}"),
        )
    } else {
        Finding::ok("memory", detail)
    }
}

/// `MemTotal` of `/proc/meminfo` text, KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{temp_host, unopenable_char_device, write_file};
    use crate::check::Status;

    #[test]
    fn a_missing_or_regular_file_tun_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let f = tun(&host);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.ends_with("tun: absent"), "{f:?}");
        assert!(f.hint.unwrap().contains("modprobe tun"));
        std::fs::create_dir_all(host.dev_tun.parent().unwrap()).unwrap();
        write_file(dir.path(), "dev/net/tun", b"", 0o666);
        let f = tun(&host);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("not a character device"), "{f:?}");
        let host = Host {
            dev_tun: "/dev/null".into(),
            ..host
        };
        assert_eq!(tun(&host).status, Status::Ok);
    }

    #[test]
    fn a_tun_that_does_not_open_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        if !unopenable_char_device(&host.dev_tun) {
            return;
        }
        let f = tun(&host);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("cannot open read-write"), "{f:?}");
        assert!(f.hint.unwrap().contains("as root"));
    }

    #[test]
    fn a_pod_larger_than_the_host_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let mut vm = PodVmConfig::default();
        assert_eq!(memory(&host, &vm).status, Status::Warn, "no meminfo");
        std::fs::create_dir_all(host.proc_meminfo.parent().unwrap()).unwrap();
        std::fs::write(
            &host.proc_meminfo,
            "MemTotal:        4194304 kB\nMemFree: 1 kB\n",
        )
        .unwrap();
        let f = memory(&host, &vm);
        assert_eq!(f.status, Status::Warn, "max_memory_mib 8192 > 4096: {f:?}");
        vm.max_memory_mib = Some(2048);
        assert_eq!(memory(&host, &vm).status, Status::Ok);
        vm.memory_mib = 8192;
        vm.max_memory_mib = None;
        let f = memory(&host, &vm);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("memory_mib = 8192") && f.detail.contains("4096 MiB"));
    }
}
