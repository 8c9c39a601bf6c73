//! How moat-vmm confines itself: the jail ([`JailConfig`]) and the seccomp filters'
//! mode ([`SeccompMode`]). What each does is in `vmm/SPECIFICATION.md`, "Jail".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, NetDeviceConfig, VsockDeviceConfig};

/// The jail: moat-vmm enters new mount, PID, IPC, UTS and network namespaces and makes
/// `dir` its root, holding only what the VM needs (kernel, initramfs, disks, shares, the
/// vsock socket's directory, `/dev/kvm`, `/dev/urandom`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An empty directory, absolute path: the VMM mounts a small tmpfs on it in its own
    /// mount namespace (the host never sees that mount) and pivots into it.
    pub dir: PathBuf,
}

/// What the per-thread seccomp filters do with a syscall outside a thread's allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Stop the VMM (exit status [`crate::status::EXIT_SECCOMP`], the syscall on stderr).
    #[default]
    Enforce,
    /// Allow it and have the kernel log it (audit, `type=1326`): for finding a missing
    /// entry; needs a kernel with `CONFIG_AUDITSYSCALL`.
    Log,
    /// No filters (debugging only; the VMM warns).
    Off,
}

/// Checks the jail against the rest of the configuration (errors name `jail.*`).
pub(crate) fn check_jail(
    jail: &JailConfig,
    vsock: Option<&VsockDeviceConfig>,
    nets: &[NetDeviceConfig],
) -> Result<(), ConfigError> {
    let bad = |field: &'static str, why: String| ConfigError::Jail { field, why };
    let dir = &jail.dir;
    if !dir.is_absolute() {
        return Err(bad(
            "dir",
            format!("{} is not an absolute path", dir.display()),
        ));
    }
    let mut entries =
        std::fs::read_dir(dir).map_err(|e| bad("dir", format!("{}: {e}", dir.display())))?;
    if entries.next().is_some() {
        return Err(bad("dir", format!("{} is not empty", dir.display())));
    }
    if let Some(v) = vsock {
        let parent = v.uds_path.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() || parent == Path::new("/") {
            return Err(bad(
                "vsock",
                format!(
                    "the socket {} needs a directory of its own (bound into the jail)",
                    v.uds_path.display()
                ),
            ));
        }
    }
    if let Some(i) = nets.iter().position(|n| n.tap.is_some()) {
        return Err(bad(
            "net_devices",
            format!(
                "net_devices[{i}] names a tap, but the jail's network namespace is empty: pass \
                 the tap queue as an inherited fd"
            ),
        ));
    }
    Ok(())
}
