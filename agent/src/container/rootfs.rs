//! The container's root filesystem, set up in its init process the way runc's
//! `rootfs_linux.go` does it.
//!
//! [`setup_rootfs`] runs in the container's init process, inside its new mount namespace,
//! before anything of the container runs:
//!
//! 1. `/` becomes recursively `MS_SLAVE` (or `linux.rootfsPropagation`), so nothing done here
//!    propagates back to the agent's namespace; the mount holding the rootfs is made private
//!    if it is shared (`pivot_root` needs that).
//! 2. The rootfs is bind-mounted onto itself (`MS_BIND|MS_REC`) to be a mount point, and
//!    that bind drops the share's `nosuid` (setuid binaries of the image work, as under runc).
//! 3. When the spec mounts nothing on `/dev`, a tmpfs is mounted there (what containerd's
//!    default spec does; runc would use the image's `/dev`).
//! 4. The spec's mounts, in order, each destination resolved inside the rootfs
//!    ([`securejoin`]); see [`mounts`] for each type and its fallbacks.
//! 5. `/dev` entries ([`crate::container::devices`]) unless the spec bind-mounts `/dev`.
//! 6. `process.cwd` is created if missing.
//! 7. `pivot_root(".", ".")` and a lazy unmount of the old root. When the agent's root is the
//!    initramfs (`pivot_root` refuses it with EINVAL), runc's `--no-pivot` path instead: full
//!    proc/sysfs mounts outside the rootfs are detached (or covered), the rootfs is moved onto
//!    `/` and the process chroots into it.
//! 8. `linux.rootfsPropagation` again on the new `/`; `ro` tmpfs mounts and `/dev`, mounted
//!    read-write so that mount points and nodes could be made inside them, are remounted
//!    read-only; `root.readonly` remounts `/` read-only.
//!
//! [`finish_rootfs`] then (after the pivot, as runc's `standard_init` does): sysctls,
//! `linux.readonlyPaths`, `linux.maskedPaths`. The two are separate so that the caller may do
//! work in between (nothing in them depends on it); call both, in this order.
//!
//! [`validate`] checks a spec in the agent before anything is spawned.
//!
//! `linux.mountLabel` is ignored (no SELinux in the guest); idmapped mounts are refused;
//! the `tmpcopyup` option is ignored with a warning.

mod mounts;
mod options;
mod paths;
pub(crate) mod securejoin;
pub(crate) mod sys;

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use libc::c_ulong;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;
use tracing::{debug, warn};

use crate::container::devices::{self, DeviceError};
use options::{propagation_flag, MountOptions};
use securejoin::{clean, mkdir_all, secure_join};

pub use paths::validate_sysctls;

/// What [`setup_rootfs`] and [`finish_rootfs`] need to know.
pub struct RootfsConfig<'a> {
    /// The container's spec: `mounts`, `root.readonly`, `process.cwd` and `linux.{devices,
    /// maskedPaths, readonlyPaths, rootfsPropagation, sysctl, namespaces}` are used.
    pub spec: &'a Spec,
    /// The rootfs as an absolute guest path (`root.path` resolved).
    pub rootfs: &'a Path,
    /// The container has its own PID namespace (else a proc mount may fall back to a bind).
    pub new_pid_ns: bool,
    /// The container has its own network namespace (else sysfs may fall back to a bind).
    pub new_net_ns: bool,
    /// The init process is in a user namespace: no mknod, locked mount flags.
    pub in_user_ns: bool,
}

/// Why the root filesystem could not be set up.
#[derive(Debug, Error)]
pub enum RootfsError {
    /// The spec asks for something invalid or that moat does not support.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A mount step failed.
    #[error("{op} {fstype} {src} on {dest}: {error}")]
    Mount {
        /// The step (`mount`, `remount read-only`, `set propagation of`...).
        op: &'static str,
        /// The destination, as the spec names it.
        dest: PathBuf,
        /// The filesystem type.
        fstype: String,
        /// The source.
        src: String,
        /// What the kernel said.
        error: io::Error,
    },
    /// Another operation on a path failed.
    #[error("{op} {path}: {error}")]
    Path {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// A sysctl is refused or could not be written.
    #[error("sysctl {key}: {reason}")]
    Sysctl {
        /// The sysctl key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Creating the `/dev` entries failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A closure for `map_err` that builds [`RootfsError::Path`].
pub(crate) fn path_err<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> RootfsError + 'p {
    move |error| RootfsError::Path {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// Whether the spec lists a namespace of this type (new or joined by path).
pub(crate) fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

/// The spec's `linux.rootfsPropagation` as `MS_*` flags, if set.
fn rootfs_propagation(spec: &Spec) -> Result<Option<c_ulong>, RootfsError> {
    match spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        None | Some("") => Ok(None),
        Some(word) => propagation_flag(word).map(Some).ok_or_else(|| {
            RootfsError::InvalidSpec(format!("rootfsPropagation {word:?} is not a propagation"))
        }),
    }
}

/// State carried through [`setup_rootfs`].
pub(crate) struct Ctx<'a> {
    /// The caller's configuration.
    pub cfg: &'a RootfsConfig<'a>,
    /// The rootfs, canonical.
    pub rootfs: PathBuf,
    /// Container paths mounted read-write that must be remounted read-only after the pivot,
    /// with the flags they were asked with.
    pub deferred_ro: Vec<(PathBuf, c_ulong)>,
}

/// Sets up the container's root filesystem, up to and including `pivot_root` and making
/// the root read-only (steps 1 to 8 of the module documentation).
pub fn setup_rootfs(cfg: &RootfsConfig) -> Result<(), RootfsError> {
    setup_rootfs_with(cfg, false)
}

/// [`setup_rootfs`], with `force_move_root` taking the initramfs fallback instead of
/// `pivot_root` (for tests).
pub(crate) fn setup_rootfs_with(
    cfg: &RootfsConfig,
    force_move_root: bool,
) -> Result<(), RootfsError> {
    let rootfs = fs::canonicalize(cfg.rootfs).map_err(path_err("resolving rootfs", cfg.rootfs))?;
    if !rootfs.is_dir() {
        return Err(RootfsError::InvalidSpec(format!(
            "rootfs {} is not a directory",
            rootfs.display()
        )));
    }
    let propagation = rootfs_propagation(cfg.spec)?;
    make_rootfs_mount(&rootfs, propagation)?;
    allow_setuid(&rootfs)?;
    let mut ctx = Ctx {
        cfg,
        rootfs: rootfs.clone(),
        deferred_ro: Vec::new(),
    };
    populate_rootfs(&mut ctx)?;
    if force_move_root {
        move_root(&rootfs)?;
    } else {
        pivot_root(&rootfs)?;
    }
    after_pivot(&ctx, propagation)
}

/// Steps 1 and 2: `/` made `MS_SLAVE` (or `propagation`), the rootfs's parent mount private,
/// the rootfs bind-mounted onto itself.
fn make_rootfs_mount(rootfs: &Path, propagation: Option<c_ulong>) -> Result<(), RootfsError> {
    let root = Path::new("/");
    let flag = propagation.unwrap_or(libc::MS_SLAVE | libc::MS_REC);
    sys::mount(None, root, None, flag, None)
        .map_err(|e| mount_err("set propagation of", root, "", "", e))?;
    make_parent_mount_private(rootfs)?;
    sys::mount(
        Some(rootfs.as_os_str()),
        rootfs,
        Some("bind"),
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| mount_err("bind-mount the rootfs", rootfs, "bind", rootfs, e))
}

/// Step 2, continued: the share holding the rootfs is `nosuid` in the guest (its other files
/// must not elevate), but a container's root is not under runc, so its bind gets setuid and
/// setgid back: the image's `ping`, `su` or `sudo` work for a non-root user (the kernel
/// ignores them anyway for a process with `noNewPrivileges`). Where the share's `nosuid` is
/// locked (the init runs in a user namespace) it stays, as it would for runc.
fn allow_setuid(rootfs: &Path) -> Result<(), RootfsError> {
    let have = sys::statfs(rootfs)
        .map_err(path_err("statfs", rootfs))?
        .mount_flags;
    if have & libc::MS_NOSUID == 0 {
        return Ok(());
    }
    let flags = (have & !libc::MS_NOSUID) | libc::MS_BIND | libc::MS_REMOUNT;
    match sys::mount(None, rootfs, None, flags, None) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            debug!("rootfs {}: nosuid is locked; kept", rootfs.display());
            Ok(())
        }
        Err(e) => Err(mount_err("allow setuid on", rootfs, "bind", rootfs, e)),
    }
}

/// Steps 3 to 6: the default `/dev` tmpfs, the spec's mounts, `/dev` entries, `process.cwd`.
fn populate_rootfs(ctx: &mut Ctx) -> Result<(), RootfsError> {
    let cfg = ctx.cfg;
    let spec_mounts = cfg.spec.mounts().as_deref().unwrap_or(&[]);
    let dev = Path::new("/dev");
    if !spec_mounts.iter().any(|m| clean(m.destination()) == dev) {
        mounts::mount_default_dev(ctx)?;
    }
    for m in spec_mounts {
        mounts::mount_entry(ctx, m)?;
    }
    let dev_is_bind = spec_mounts.iter().any(|m| {
        clean(m.destination()) == dev
            && (m.typ().as_deref() == Some("bind")
                || MountOptions::parse(m.options().as_deref().unwrap_or(&[]))
                    .is_ok_and(|o| o.is_bind()))
    });
    if !dev_is_bind {
        let devpts = spec_mounts.iter().any(|m| {
            m.typ().as_deref() == Some("devpts") && clean(m.destination()) == dev.join("pts")
        });
        devices::setup_dev(&ctx.rootfs, cfg.spec, cfg.in_user_ns, devpts)?;
    }
    if let Some(process) = cfg.spec.process() {
        let cwd = secure_join(&ctx.rootfs, process.cwd())
            .map_err(path_err("resolving cwd", process.cwd()))?;
        mkdir_all(&cwd).map_err(path_err("creating cwd", process.cwd()))?;
    }
    Ok(())
}

/// Step 8, inside the new root: `propagation` again, the deferred read-only remounts, a
/// read-only root.
fn after_pivot(ctx: &Ctx, propagation: Option<c_ulong>) -> Result<(), RootfsError> {
    let root = Path::new("/");
    if let Some(flag) = propagation {
        sys::mount(None, root, None, flag, None)
            .map_err(|e| mount_err("set propagation of", root, "", "", e))?;
    }
    for (dest, flags) in &ctx.deferred_ro {
        mounts::remount_read_only(dest, *flags)?;
    }
    if ctx.cfg.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        paths::remount_root_read_only()?;
    }
    Ok(())
}

/// Finishes the root filesystem after [`setup_rootfs`]: sysctls, then `linux.readonlyPaths`,
/// then `linux.maskedPaths`. Paths are container paths (the process is inside its root).
pub fn finish_rootfs(cfg: &RootfsConfig) -> Result<(), RootfsError> {
    let Some(linux) = cfg.spec.linux() else {
        return Ok(());
    };
    if let Some(sysctl) = linux.sysctl() {
        paths::write_sysctls(cfg.spec, sysctl, cfg.new_net_ns)?;
    }
    for p in linux.readonly_paths().as_deref().unwrap_or(&[]) {
        paths::readonly_path(Path::new(p))?;
    }
    for p in linux.masked_paths().as_deref().unwrap_or(&[]) {
        paths::mask_path(Path::new(p))?;
    }
    Ok(())
}

/// Checks a spec before a container is spawned, so that bad specs fail fast with a clear
/// error: `root.path` is an absolute existing directory; every mount has an absolute
/// destination, a type (or is a bind), options moat supports, a bind source that exists and
/// is absolute, and is not a forbidden mount inside `/proc`; `linux.devices` are sane;
/// masked/readonly paths are absolute; sysctls are valid and namespaced;
/// `rootfsPropagation` is known; `process.cwd` is absolute.
pub fn validate(spec: &Spec) -> Result<(), RootfsError> {
    let invalid = |s: String| Err(RootfsError::InvalidSpec(s));
    let Some(root) = spec.root() else {
        return invalid("no root".into());
    };
    let path = root.path();
    if !path.is_absolute() {
        return invalid(format!("root.path {} is not absolute", path.display()));
    }
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return invalid(format!("root.path {} is not a directory", path.display())),
        Err(e) => return invalid(format!("root.path {}: {e}", path.display())),
    }
    if let Some(process) = spec.process() {
        if !process.cwd().is_absolute() {
            return invalid(format!(
                "process.cwd {} is not absolute",
                process.cwd().display()
            ));
        }
    }
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        mounts::validate_mount(m)?;
    }
    rootfs_propagation(spec)?;
    if let Some(linux) = spec.linux() {
        for d in linux.devices().as_deref().unwrap_or(&[]) {
            devices::validate_device(d)?;
        }
        for (what, list) in [
            ("maskedPaths", linux.masked_paths()),
            ("readonlyPaths", linux.readonly_paths()),
        ] {
            for p in list.as_deref().unwrap_or(&[]) {
                if !Path::new(p).is_absolute() {
                    return invalid(format!("{what} entry {p:?} is not absolute"));
                }
            }
        }
        if let Some(sysctl) = linux.sysctl() {
            validate_sysctls(spec, sysctl.keys().map(String::as_str), None)?;
        }
    }
    Ok(())
}

/// Builds [`RootfsError::Mount`].
pub(crate) fn mount_err(
    op: &'static str,
    dest: &Path,
    fstype: &str,
    src: impl AsRef<OsStr>,
    error: io::Error,
) -> RootfsError {
    RootfsError::Mount {
        op,
        dest: dest.to_path_buf(),
        fstype: fstype.to_string(),
        src: src.as_ref().to_string_lossy().into_owned(),
        error,
    }
}

/// Makes the mount that holds `rootfs` private if it is shared: `pivot_root` refuses a new
/// root whose parent mount is shared, and the bind of the rootfs must not propagate.
fn make_parent_mount_private(rootfs: &Path) -> Result<(), RootfsError> {
    let infos = sys::mountinfo().map_err(path_err("reading", Path::new("/proc/self/mountinfo")))?;
    let parent = infos
        .iter()
        .filter(|i| rootfs.starts_with(&i.mount_point))
        .max_by_key(|i| i.mount_point.components().count());
    if let Some(p) = parent {
        if p.optional.iter().any(|o| o.starts_with("shared:")) {
            debug!(mount_point = %p.mount_point.display(), "making the rootfs' parent mount private");
            sys::mount(None, &p.mount_point, None, libc::MS_PRIVATE, None)
                .map_err(|e| mount_err("make private", &p.mount_point, "", "", e))?;
        }
    }
    Ok(())
}

/// runc's `pivotRoot`: `pivot_root(".", ".")` stacks the old root under the new one at `/`;
/// it is made rslave (so the unmount does not propagate) and lazily unmounted. Falls back to
/// [`move_root`] when the current root is the initramfs (EINVAL).
fn pivot_root(rootfs: &Path) -> Result<(), RootfsError> {
    let old_root = fs::File::open("/").map_err(path_err("opening", Path::new("/")))?;
    std::env::set_current_dir(rootfs).map_err(path_err("chdir to", rootfs))?;
    let dot = Path::new(".");
    match sys::pivot_root(dot, dot) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            warn!(
                rootfs = %rootfs.display(),
                "pivot_root refused (root is the initramfs?): moving the rootfs onto / and chrooting"
            );
            return move_root(rootfs);
        }
        Err(e) => return Err(path_err("pivot_root to", rootfs)(e)),
    }
    nix::unistd::fchdir(old_root.as_raw_fd())
        .map_err(|e| path_err("fchdir to the old root", rootfs)(e.into()))?;
    sys::mount(None, dot, None, libc::MS_SLAVE | libc::MS_REC, None)
        .map_err(|e| mount_err("make the old root rslave", dot, "", "", e))?;
    sys::umount2(dot, libc::MNT_DETACH).map_err(path_err("unmounting the old root", dot))?;
    std::env::set_current_dir("/").map_err(path_err("chdir to", Path::new("/")))
}

/// runc's `msMoveRoot` (`--no-pivot`), for an initramfs root that `pivot_root` refuses:
/// detaches (or, where that is not allowed, covers with a tmpfs) every full proc and sysfs
/// mount outside the rootfs, so that they cannot vouch for new proc/sysfs mounts later, moves
/// the rootfs onto `/` and chroots into it.
fn move_root(rootfs: &Path) -> Result<(), RootfsError> {
    let infos = sys::mountinfo().map_err(path_err("reading", Path::new("/proc/self/mountinfo")))?;
    for info in infos.iter().filter(|i| {
        i.root == Path::new("/")
            && (i.fstype == "proc" || i.fstype == "sysfs")
            && !i.mount_point.starts_with(rootfs)
    }) {
        let mp = &info.mount_point;
        match sys::mount(None, mp, None, libc::MS_SLAVE | libc::MS_REC, None) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(mount_err("make rslave", mp, &info.fstype, "", e)),
        }
        match sys::umount2(mp, libc::MNT_DETACH) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => {
                sys::mount(Some(OsStr::new("tmpfs")), mp, Some("tmpfs"), 0, None)
                    .map_err(|e| mount_err("cover", mp, "tmpfs", "tmpfs", e))?;
            }
            Err(e) => return Err(path_err("detaching", mp)(e)),
        }
    }
    std::env::set_current_dir(rootfs).map_err(path_err("chdir to", rootfs))?;
    sys::mount(
        Some(rootfs.as_os_str()),
        Path::new("/"),
        None,
        libc::MS_MOVE,
        None,
    )
    .map_err(|e| mount_err("move the rootfs", Path::new("/"), "", rootfs, e))?;
    nix::unistd::chroot(".").map_err(|e| path_err("chroot to", rootfs)(e.into()))?;
    std::env::set_current_dir("/").map_err(path_err("chdir to", Path::new("/")))
}

#[cfg(test)]
mod tests;
