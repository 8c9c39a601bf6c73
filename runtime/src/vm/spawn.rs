//! The VMM's command: the pod's [`VmConfig`] built from the shim's configuration (the one
//! typed contract with moat-vmm, validated by its own [`VmConfig::validate`]), written to
//! `<pod>/vm.json` and passed as `moat-vmm --config <pod>/vm.json`.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use moat_vmm_config::{
    MacAddr, NetDeviceConfig, SerialConfig, SerialOutput, SharedDirConfig, VmConfig,
    VsockDeviceConfig,
};

use super::{VmError, VmNic, GUEST_CID, SHARE_TAG};
use crate::config::Config;
use crate::host::network::inheritable;
use crate::pod::layout::PodDir;

/// The VM of the pod in `dir`: kernel, initramfs and size from `cfg`, the pod's vsock socket
/// and share, and its NIC (the inherited TAP queue) if it has one.
pub fn vm_config(cfg: &Config, dir: &PodDir, nic: Option<&VmNic>) -> VmConfig {
    let extra = format!("moat.share={SHARE_TAG} {}", cfg.vm.kernel_params);
    VmConfig {
        kernel: Some(cfg.vm.kernel.clone()),
        initrd: Some(cfg.vm.initrd.clone()),
        extra_cmdline: Some(extra),
        // Out of range values are refused by validation, not wrapped.
        vcpus: u8::try_from(cfg.vm.vcpus).unwrap_or(u8::MAX),
        memory_mib: cfg.vm.memory_mib,
        serial: SerialConfig {
            output: SerialOutput::Stdout,
            ..SerialConfig::default()
        },
        rng: true,
        vsock: Some(VsockDeviceConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.vsock(),
        }),
        shared_dirs: vec![SharedDirConfig {
            tag: SHARE_TAG.into(),
            path: dir.share(),
        }],
        net_devices: nic.map(net_device).into_iter().collect(),
        ..VmConfig::default()
    }
}

/// The virtio-net device on the NIC's inherited TAP queue.
fn net_device(nic: &VmNic) -> NetDeviceConfig {
    use std::os::fd::AsRawFd;
    NetDeviceConfig {
        fd: Some(nic.tap.as_raw_fd()),
        mac: Some(MacAddr(nic.mac)),
        mtu: Some(u16::try_from(nic.mtu).unwrap_or(u16::MAX)),
        ..NetDeviceConfig::default()
    }
}

/// Writes `vm` as JSON to `path` (the file `moat-vmm --config` reads).
pub fn write_config(vm: &VmConfig, path: &Path) -> Result<(), VmError> {
    let write_err = |source| VmError::WriteConfig {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(vm).map_err(|e| write_err(e.into()))?;
    std::fs::write(path, json).map_err(write_err)
}

/// `vmm --config <config>`, with piped stdout (guest console) and stderr, and `tap_fd` kept
/// open across exec. The child dies with the thread that spawns it (PDEATHSIG, see
/// [`super::keeper`]) and leaves the shim's session, so a terminal's signals don't reach it.
pub fn command(vmm: &Path, config: &Path, tap_fd: Option<RawFd>) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl, setsid and fcntl are async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            if let Some(fd) = tap_fd {
                inheritable(fd)?;
            }
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_vm_names_its_socket_share_and_size() {
        let mut cfg = Config::default();
        cfg.vm.vcpus = 2;
        cfg.vm.memory_mib = 384;
        cfg.vm.kernel_params = "quiet".into();
        let dir = PodDir::new(Path::new("/run/moat"), "default", "p1");
        let vm = vm_config(&cfg, &dir, None);
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 384));
        assert_eq!(vm.kernel.as_deref(), Some(cfg.vm.kernel.as_path()));
        assert_eq!(vm.extra_cmdline.as_deref(), Some("moat.share=pod quiet"));
        let vsock = vm.vsock.as_ref().unwrap();
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path.clone()),
            (GUEST_CID, dir.vsock())
        );
        assert_eq!(vm.shared_dirs[0].path, dir.share());
        assert!(vm.net_devices.is_empty() && vm.rng);
        let json = serde_json::to_string(&vm).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), vm);
    }

    #[test]
    fn out_of_range_sizes_are_left_to_validation() {
        let mut cfg = Config::default();
        cfg.vm.vcpus = 300;
        let dir = PodDir::new(Path::new("/run/moat"), "default", "p1");
        let vm = vm_config(&cfg, &dir, None);
        assert_eq!(vm.vcpus, u8::MAX, "saturated, not wrapped to 44");
        let e = moat_vmm_config::check_vcpus(vm.vcpus.into()).unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
    }
}
