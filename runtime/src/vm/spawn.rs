//! The VMM's command: the pod's [`VmConfig`] built from the shim's configuration (the one
//! typed contract with moat-vmm, validated by its own [`VmConfig::validate`]), written to
//! `<pod>/vm.json` and passed as `moat-vmm --config <pod>/vm.json`; and what the child does
//! before exec ([`ChildSetup`]): join the pod's host cgroup ([`pod_cgroup`]), take the pod's
//! `oom_score_adj`.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use moat_vmm_config::{
    JailConfig, MacAddr, NetDeviceConfig, SeccompMode, SerialConfig, SerialOutput, SharedDirConfig,
    VmConfig, VsockDeviceConfig,
};

use super::{VmError, VmNic, GUEST_CID, SHARE_TAG};
use crate::config::Config;
use crate::host::cgroup::{self, OomScoreAdj, PodAccounting, PodCgroup, ProcsFiles, CGROUP_ROOT};
use crate::host::network::inheritable;
use crate::pod::layout::PodDir;

/// The VM of the pod in `dir`: kernel, initramfs and size from `cfg`, the pod's vsock socket
/// and share, and its NIC (the inherited TAP queue) if it has one.
pub fn vm_config(cfg: &Config, dir: &PodDir, nic: Option<&VmNic>) -> VmConfig {
    let console = if cfg.debug.console {
        " moat.debug_console=1"
    } else {
        ""
    };
    let extra = format!(
        "moat.share={SHARE_TAG} moat.log={}{console} {}",
        cfg.runtime.agent_log_level, cfg.vm.kernel_params
    );
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
        metrics_file: Some(dir.vmm_metrics()),
        jail: (!cfg.debug.no_jail).then(|| JailConfig { dir: dir.jail() }),
        seccomp: if cfg.debug.no_seccomp {
            SeccompMode::Off
        } else {
            SeccompMode::Enforce
        },
        ..VmConfig::default()
    }
}

/// Creates the directories the VMM's jail needs: the (empty) jail and the vsock socket's.
pub fn jail_dirs(dir: &PodDir) -> Result<(), VmError> {
    for d in [dir.jail(), dir.vsock_dir()] {
        std::fs::create_dir_all(&d).map_err(|source| VmError::WriteConfig {
            path: d.clone(),
            source,
        })?;
    }
    Ok(())
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

/// Makes the pod's host cgroup ready for the VMM and opens what the child writes to join
/// it; `None` when the VMM stays in the shim's cgroup (no `linux.cgroupsPath`, or
/// `[runtime] sandbox_cgroup = false`).
pub fn pod_cgroup(
    dir: &PodDir,
    accounting: &PodAccounting,
) -> Result<(Option<PodCgroup>, Option<ProcsFiles>), VmError> {
    let Some(path) = &accounting.cgroup else {
        crate::plog!(
            Info,
            "pod cgroup: none named (or sandbox_cgroup off): moat-vmm stays in the shim's"
        );
        return Ok((None, None));
    };
    let cgroup = PodCgroup::create(Path::new(CGROUP_ROOT), path, &cgroup::record_path(dir))?;
    match cgroup.procs_files() {
        Ok(procs) => {
            crate::plog!(
                Info,
                "pod cgroup: moat-vmm joins {:?}",
                cgroup.record.joined
            );
            Ok((Some(cgroup), Some(procs)))
        }
        Err(e) => {
            cgroup.remove();
            Err(e.into())
        }
    }
}

/// A failed spawn of a VMM that was to join `cgroup` says so (the child reports only an
/// errno, and joining is one of the things it does before exec).
pub fn in_cgroup(e: VmError, cgroup: Option<&PodCgroup>) -> VmError {
    match (e, cgroup) {
        (VmError::Spawn { vmm, source }, Some(cg)) => VmError::Spawn {
            vmm,
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source} (its child joins cgroup {} before exec)",
                    cg.record.cgroups_path
                ),
            ),
        },
        (e, _) => e,
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

/// What the VMM child does between fork and exec besides leaving the shim's session and
/// dying with its keeper thread.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// The TAP queue fd to keep open across exec.
    pub tap_fd: Option<RawFd>,
    /// The pod cgroup's open `cgroup.procs` files to join, one per hierarchy
    /// ([`cgroup::join_in_child`]); the shim keeps them open until the spawn returns.
    pub cgroup_procs: Vec<RawFd>,
    /// The pod's `oom_score_adj`, tried before exec ([`OomScoreAdj::apply_in_child`]).
    pub oom_score_adj: Option<OomScoreAdj>,
}

/// `vmm --config <config> --log-level <log_level>`, with piped stdout (guest console) and
/// stderr. Before exec the child joins the pod's cgroup (so the VMM is accounted there from
/// its first instruction; a refused join fails the spawn), takes the pod's `oom_score_adj`,
/// dies with the thread that spawns it (PDEATHSIG, see [`super::keeper`]), leaves the shim's
/// session (a terminal's signals don't reach it) and keeps the TAP fd open across exec.
pub fn command(vmm: &Path, config: &Path, log_level: &str, child: ChildSetup) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--config")
        .arg(config)
        .args(["--log-level", log_level])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl, write (cgroup join), open/write/close (oom_score_adj), setsid and fcntl
    // are async-signal-safe, and `child` was built before the fork: nothing allocates or
    // locks between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            cgroup::join_in_child(&child.cgroup_procs)?;
            if let Some(adj) = &child.oom_score_adj {
                adj.apply_in_child();
            }
            libc::setsid();
            if let Some(fd) = child.tap_fd {
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
        assert_eq!(
            vm.extra_cmdline.as_deref(),
            Some("moat.share=pod moat.log=info quiet")
        );
        let vsock = vm.vsock.as_ref().unwrap();
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path.clone()),
            (GUEST_CID, dir.vsock())
        );
        assert_eq!(vm.shared_dirs[0].path, dir.share());
        assert_eq!(vm.jail.as_ref().unwrap().dir, dir.jail());
        assert_eq!(vm.seccomp, SeccompMode::Enforce);
        cfg.debug.no_seccomp = true;
        cfg.debug.no_jail = true;
        let debug = vm_config(&cfg, &dir, None);
        assert_eq!((debug.seccomp, debug.jail), (SeccompMode::Off, None));
        assert_eq!(vm.metrics_file, Some(dir.vmm_metrics()));
        cfg.debug.console = true;
        let console = vm_config(&cfg, &dir, None);
        assert_eq!(
            console.extra_cmdline.as_deref(),
            Some("moat.share=pod moat.log=info moat.debug_console=1 quiet")
        );
        assert!(vm.net_devices.is_empty() && vm.rng);
        let json = serde_json::to_string(&vm).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), vm);
    }

    #[test]
    fn the_child_joins_the_cgroup_and_takes_the_oom_score_before_exec() {
        let tmp = tempfile::TempDir::new().unwrap();
        // A stand-in VMM: writes its oom_score_adj into its `--config` argument.
        let vmm = tmp.path().join("fake-vmm");
        std::fs::write(&vmm, "#!/bin/sh\ncat /proc/self/oom_score_adj > \"$2\"\n").unwrap();
        std::fs::set_permissions(&vmm, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // A file standing for a cgroup.procs: the child writes "0" (itself) to it.
        let procs_path = tmp.path().join("cgroup.procs");
        let procs = std::fs::File::create(&procs_path).unwrap();
        let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Raising is always allowed.
        let want = OomScoreAdj::new((own + 7).min(1000)).unwrap();
        let out = tmp.path().join("oom");
        let child = ChildSetup {
            cgroup_procs: vec![std::os::fd::AsRawFd::as_raw_fd(&procs)],
            oom_score_adj: Some(want),
            ..ChildSetup::default()
        };
        let status = command(&vmm, &out, "warn", child).status().unwrap();
        assert!(status.success(), "{status}");
        assert_eq!(std::fs::read_to_string(&procs_path).unwrap(), "0");
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(got.trim(), want.value().to_string());
    }

    #[test]
    fn a_refused_cgroup_join_fails_the_spawn() {
        let tmp = tempfile::TempDir::new().unwrap();
        // Open read-only: the child's write of "0" fails, and with it the spawn.
        let procs = std::fs::File::create(tmp.path().join("cgroup.procs")).unwrap();
        let read_only = std::fs::File::open(tmp.path().join("cgroup.procs")).unwrap();
        drop(procs);
        let child = ChildSetup {
            cgroup_procs: vec![std::os::fd::AsRawFd::as_raw_fd(&read_only)],
            ..ChildSetup::default()
        };
        let e = command(Path::new("/bin/true"), Path::new("/x"), "warn", child)
            .status()
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
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
