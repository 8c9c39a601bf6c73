//! The VMM's credentials once the VM is built: capabilities cut to what the virtio-fs server
//! needs (none without a share), `no_new_privs`, not dumpable, and resource limits.

use caps::{CapSet, Capability, CapsHashSet};

use super::JailError;
use crate::config::ValidConfig;

/// What the virtio-fs server needs to act as the guest's root on a share, and why:
/// - `CHOWN`: SETATTR of owner/group, files created as the guest's uid/gid;
/// - `DAC_OVERRIDE`, `DAC_READ_SEARCH`: open and search files whatever their mode, as root
///   in the guest may;
/// - `FOWNER`: chmod/utimes on files the VMM's uid does not own;
/// - `FSETID`: keep set-group-ID bits on files it changes (dropped around writes);
/// - `SETUID`, `SETGID`: create files as the requesting guest uid/gid (per-thread fsuid).
///
/// Never `SYS_ADMIN`, `NET_ADMIN`, `SYS_PTRACE`, `SYS_MODULE` or any other.
pub const SHARE_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// Open files the VMM may hold besides the virtio-fs ones: KVM, devices, eventfds, the tap,
/// logs (vsock streams are counted on their own).
pub const BASE_OPEN_FILES: u64 = 1024;
/// Open files for vsock: the listener, accepted streams and guest-initiated connections.
pub const VSOCK_OPEN_FILES: u64 = 1024;
/// Open files one share's virtio-fs server may hold: the passthrough keeps one `O_PATH` fd
/// per inode the guest kernel keeps (until the guest FORGETs it), plus open handles, so the
/// soft default (1024) is far too low for a pod with many containers; a guest past this gets
/// `EMFILE`, not the host's file table.
pub const SHARE_OPEN_FILES: u64 = 1 << 18;

/// The capabilities the VMM keeps for `config`.
pub fn kept_caps(config: &ValidConfig) -> CapsHashSet {
    if config.shared_dirs.is_empty() {
        CapsHashSet::new()
    } else {
        SHARE_CAPS.iter().copied().collect()
    }
}

/// `RLIMIT_NOFILE` for `config`: the base, vsock's, and each share's.
pub fn nofile_limit(config: &ValidConfig) -> u64 {
    let vsock = if config.vsock.is_some() {
        VSOCK_OPEN_FILES
    } else {
        0
    };
    BASE_OPEN_FILES + vsock + SHARE_OPEN_FILES * config.shared_dirs.len() as u64
}

/// Cuts the calling thread's (and so every later thread's) credentials for `config`:
/// rlimits (NOFILE, CORE 0, FSIZE when nothing the guest writes goes to a file), not
/// dumpable, capabilities to [`kept_caps`] in every set (bounding included), then
/// `no_new_privs`.
pub fn restrict(config: &ValidConfig) -> Result<(), JailError> {
    set_rlimits(config)?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(JailError::os("PR_SET_DUMPABLE 0"));
    }
    drop_caps(&kept_caps(config))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::os("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}

/// Drops every capability not in `keep` from the bounding, inheritable and ambient sets,
/// and sets effective = permitted = `keep`.
pub fn drop_caps(keep: &CapsHashSet) -> Result<(), JailError> {
    let err = |what: &'static str| {
        move |e: caps::errors::CapsError| JailError::Caps {
            what,
            why: e.to_string(),
        }
    };
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err("drop from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clear the inheritable set"))?;
    caps::set(None, CapSet::Effective, keep).map_err(err("set the effective set"))?;
    caps::set(None, CapSet::Permitted, keep).map_err(err("set the permitted set"))?;
    Ok(())
}

fn set_rlimits(config: &ValidConfig) -> Result<(), JailError> {
    let nofile = nofile_limit(config).min(current_hard(libc::RLIMIT_NOFILE));
    set_rlimit(libc::RLIMIT_NOFILE, nofile, "RLIMIT_NOFILE")?;
    set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    // Threads: the vCPUs and the main thread exist by now (for uid 0 the kernel does not
    // enforce it; the seccomp filters forbid clone).
    set_rlimit(
        libc::RLIMIT_NPROC,
        u64::from(config.vcpus) + 1,
        "RLIMIT_NPROC",
    )?;
    let guest_writes_files =
        !config.shared_dirs.is_empty() || config.block_devices.iter().any(|b| !b.read_only);
    if !guest_writes_files {
        // The console (capped) and the metrics file are all the VMM writes.
        let fsize = config.serial.limit_bytes.saturating_add(1 << 20);
        set_rlimit(libc::RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE")?;
    }
    Ok(())
}

fn current_hard(resource: libc::__rlimit_resource_t) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct passed.
    unsafe { libc::getrlimit(resource, &mut lim) };
    lim.rlim_max
}

fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &'static str,
) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the valid struct passed.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(JailError::os(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BlockDeviceConfig, SharedDirConfig, VmConfig, VsockDeviceConfig};

    /// A valid configuration (a fake vmlinux header) changed by `f`.
    fn valid(dir: &std::path::Path, f: impl FnOnce(&mut VmConfig)) -> ValidConfig {
        let kernel = dir.join("vmlinux");
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[18] = 62;
        std::fs::write(&kernel, elf).unwrap();
        let mut c = VmConfig {
            kernel: Some(kernel),
            ..Default::default()
        };
        f(&mut c);
        c.validate().unwrap()
    }

    #[test]
    fn only_a_vm_with_a_share_keeps_capabilities() {
        let tmp = tempfile::tempdir().unwrap();
        let bare = valid(tmp.path(), |_| {});
        assert!(kept_caps(&bare).is_empty());
        let shared = valid(tmp.path(), |c| {
            c.shared_dirs = vec![SharedDirConfig {
                tag: "fs".into(),
                path: tmp.path().into(),
            }]
        });
        let kept = kept_caps(&shared);
        assert_eq!(kept.len(), SHARE_CAPS.len());
        for never in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_MKNOD,
        ] {
            assert!(!kept.contains(&never), "{never:?}");
        }
    }

    #[test]
    fn the_open_file_limit_follows_the_devices() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(nofile_limit(&valid(tmp.path(), |_| {})), BASE_OPEN_FILES);
        let full = valid(tmp.path(), |c| {
            c.vsock = Some(VsockDeviceConfig {
                guest_cid: 3,
                uds_path: tmp.path().join("v.sock"),
            });
            c.shared_dirs = ["a", "b"]
                .map(|tag| SharedDirConfig {
                    tag: tag.into(),
                    path: tmp.path().into(),
                })
                .into();
            c.block_devices = vec![BlockDeviceConfig {
                path: tmp.path().join("vmlinux"),
                read_only: true,
            }];
        });
        assert_eq!(
            nofile_limit(&full),
            BASE_OPEN_FILES + VSOCK_OPEN_FILES + 2 * SHARE_OPEN_FILES
        );
        assert_eq!(nofile_limit(&full), 1024 + 1024 + 2 * 262_144);
    }
}
