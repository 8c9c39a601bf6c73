//! A pod's virtio-fs share, split as Kata splits it, so that the guest can never steer a
//! host mount:
//!
//! - `<pod>/staging/` is a small tmpfs (`size=`/`nr_inodes=` from `[runtime]`,
//!   `nosuid,nodev,noexec`, mode 0700) that only the shim writes: every container's directory
//!   and mount point is made there, through [`ConfinedDir`] (no symlink, no `..`, no mount
//!   crossed), and every mount is attached to a mount point's fd.
//! - `<pod>/share/` is a read-only bind of `staging/` and its slave: the mounts made in
//!   `staging/` appear in it with their own flags (a container's rootfs and its rw volumes stay
//!   writable), but its directories are read-only, so the guest cannot plant a symlink, a
//!   directory or a byte in them. It is what moat-vmm exports as the `pod` tag.
//!
//! The guest can therefore write only a container's own storage (its rootfs upper dir on
//! containerd's snapshotter) and the rw volumes the spec gives it, as a runc container can.

use std::path::Path;

use moat_agent_protocol::{DEBUG_BUSYBOX, DEBUG_TOOLS_DIR};
use nix::mount::{mount, MsFlags};

use super::confined::{proc_fd_path, ConfinedDir, PathError};
use super::mounts::{self, MountError};
use crate::pod::spec::HostBind;

/// The staging tree's directory in a pod dir.
pub const STAGING_DIR: &str = "staging";
/// The guest-visible share's directory in a pod dir.
pub const SHARE_DIR: &str = "share";

/// The size and inode bounds of a pod's staging tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareLimits {
    /// `size=` in KiB.
    pub size_kib: u64,
    /// `nr_inodes=`: bounds containers x mount points.
    pub inodes: u64,
}

/// Errors making a pod's share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A directory of the share could not be made or opened.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A mount of the share failed.
    #[error("{what} on {target}: {source}")]
    Mount {
        /// What was mounted.
        what: &'static str,
        /// Where.
        target: std::path::PathBuf,
        /// Why.
        source: nix::Error,
    },
}

/// What one container mounts into the share.
pub struct ContainerMounts<'a> {
    /// The container id (one path component, checked by the caller).
    pub id: &'a str,
    /// containerd's rootfs mounts (none: bind the spec's `root.path`).
    pub rootfs: &'a [containerd_shim::protos::types::mount::Mount],
    /// The bundle (the base of a relative `root.path`).
    pub bundle: &'a Path,
    /// The spec's `root.path`.
    pub spec_root: &'a Path,
    /// The spec's `root.readonly`: a bound `root.path` is bound read-only.
    pub root_readonly: bool,
    /// Host paths the spec shares into the container.
    pub binds: &'a [HostBind],
}

/// A pod's share: its staging tree, where the shim mounts.
#[derive(Debug)]
pub struct PodShare {
    staging: ConfinedDir,
}

impl PodShare {
    /// Makes `staging/` (the tmpfs) and `share/` (its read-only slave bind) in the new pod
    /// directory `pod`.
    pub fn create(pod: &ConfinedDir, limits: ShareLimits) -> Result<PodShare, ShareError> {
        let staging = pod.create_dir(Path::new(STAGING_DIR), 0o700)?;
        let share = pod.create_dir(Path::new(SHARE_DIR), 0o700)?;
        let data = format!(
            "size={}k,nr_inodes={},mode=0700",
            limits.size_kib, limits.inodes
        );
        let fs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let at = |dir: &ConfinedDir| proc_fd_path(dir.fd());
        mount(
            Some("tmpfs"),
            &at(&staging),
            Some("tmpfs"),
            fs_flags,
            Some(data.as_str()),
        )
        .map_err(failed("tmpfs", &staging))?;
        // From here on, the tmpfs root (the fd above names the directory under it).
        let staging = ConfinedDir::open(staging.path())?;
        let none = None::<&str>;
        mount(none, &at(&staging), none, MsFlags::MS_SHARED, none)
            .map_err(failed("shared propagation", &staging))?;
        mount(
            Some(&at(&staging)),
            &at(&share),
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(failed("bind of staging", &share))?;
        let share = ConfinedDir::open(share.path())?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | fs_flags;
        mount(none, &at(&share), none, ro, none).map_err(failed("read-only remount", &share))?;
        mount(none, &at(&share), none, MsFlags::MS_SLAVE, none)
            .map_err(failed("slave propagation", &share))?;
        Ok(PodShare { staging })
    }

    /// Makes container `c`'s directory (a pre-existing one is refused), mounts its rootfs on
    /// `<id>/rootfs` and its binds on `<id>/mounts/<name>`. On failure the caller removes the
    /// container's directory ([`crate::pod::cleanup::remove_container_dir`]).
    pub fn add_container(&self, c: &ContainerMounts<'_>) -> Result<(), MountError> {
        let dir = self.staging.create_dir(Path::new(c.id), 0o700)?;
        let rootfs = dir.create_dir(Path::new("rootfs"), 0o700)?;
        mounts::mount_rootfs(c.rootfs, c.bundle, (c.spec_root, c.root_readonly), &rootfs)?;
        for b in c.binds {
            let rel = Path::new("mounts").join(&b.share_name);
            mounts::bind(&b.source, &dir, &rel, b.readonly)?;
        }
        Ok(())
    }

    /// Binds the host's static `busybox` read-only at
    /// `.moat-debug/busybox` (`moat_agent_protocol::console`'s tools directory), for the debug
    /// console of a pod started with `[debug] console`. Container ids never start with `.`, so
    /// it cannot meet a container's directory.
    pub fn add_debug_tools(&self, busybox: &Path) -> Result<(), MountError> {
        let dir = self.staging.create_dir(Path::new(DEBUG_TOOLS_DIR), 0o700)?;
        mounts::bind(busybox, &dir, Path::new(DEBUG_BUSYBOX), true)
    }
}

/// The error of mounting `what` on `dir`.
fn failed(what: &'static str, dir: &ConfinedDir) -> impl FnOnce(nix::Error) -> ShareError {
    let target = dir.path().to_path_buf();
    move |source| ShareError::Mount {
        what,
        target,
        source,
    }
}

#[cfg(test)]
mod tests;
