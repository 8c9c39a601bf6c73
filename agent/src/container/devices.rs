//! The container's `/dev` entries (runc's `createDevices`, `setupPtmx`, `setupDevSymlinks`):
//! the default device nodes, `linux.devices`, and the standard symlinks.
//!
//! Nodes are made with mknod(2) (mode set exactly, whatever the umask, then chowned); in a
//! user namespace, or when mknod is refused with EPERM, the agent's node of the same path is
//! bind-mounted onto an empty file instead. An existing node is kept.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Spec};
use thiserror::Error;

use super::rootfs::securejoin::{create_file, mkdir_all, secure_join};
use super::rootfs::sys;

/// Why a `/dev` entry could not be made.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// A `linux.devices` entry is not acceptable.
    #[error("device {path}: {reason}")]
    Invalid {
        /// The device's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Creating an entry failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The container path.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
}

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// The container path (under `/dev`), also the agent's node bound in a user namespace.
    pub path: PathBuf,
    /// `libc::S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: libc::mode_t,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The nodes every container gets (runc's defaults): null, zero, full, random, urandom, tty.
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DeviceNode {
        path: Path::new("/dev").join(name),
        kind: libc::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// The symlinks runc makes in `/dev` (`/dev/core` only when the agent has `/proc/kcore`).
fn dev_symlinks() -> Vec<(&'static str, &'static str)> {
    let mut links = vec![
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "/dev/core"));
    }
    links
}

fn invalid(path: &Path, reason: impl Into<String>) -> DeviceError {
    DeviceError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> DeviceError + 'p {
    move |error| DeviceError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// Checks a `linux.devices` entry and turns it into a [`DeviceNode`]: type `c`, `u`, `b` or
/// `p`; an absolute path strictly under `/dev` without `.`/`..`; major/minor that fit 32
/// bits. The file mode defaults to 0666 (its type bits are ignored), uid/gid to 0.
pub fn validate_device(d: &LinuxDevice) -> Result<DeviceNode, DeviceError> {
    let path = d.path();
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => return Err(invalid(path, "type \"a\" is not a device node type")),
    };
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !plain || !path.starts_with("/dev") || path == Path::new("/dev") {
        return Err(invalid(path, "path must be an absolute path under /dev"));
    }
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(invalid(path, "path contains a NUL byte"));
    }
    let num = |n: i64, what: &str| {
        u32::try_from(n).map_err(|_| invalid(path, format!("{what} number {n} is out of range")))
    };
    Ok(DeviceNode {
        path: path.clone(),
        kind,
        major: num(d.major(), "major")?,
        minor: num(d.minor(), "minor")?,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Creates the default nodes and `linux.devices` (a spec device replaces the default of the
/// same path), `/dev/ptmx -> pts/ptmx` when `devpts` is mounted on `/dev/pts`, and the
/// standard symlinks, in the rootfs `rootfs` (canonical, before the pivot).
/// With `in_user_ns` nodes are bind-mounted from the agent's `/dev`.
pub(crate) fn setup_dev(
    rootfs: &Path,
    spec: &Spec,
    in_user_ns: bool,
    devpts: bool,
) -> Result<(), DeviceError> {
    let mut nodes = Vec::new();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_deref())
        .unwrap_or(&[])
    {
        nodes.push(validate_device(d)?);
    }
    for def in default_devices() {
        if !nodes.iter().any(|n| n.path == def.path) {
            nodes.push(def);
        }
    }
    for node in &nodes {
        create_node(rootfs, node, in_user_ns)?;
    }
    if devpts {
        let ptmx = Path::new("/dev/ptmx");
        let dest = secure_join(rootfs, ptmx).map_err(io_err("resolving", ptmx))?;
        match fs::remove_file(&dest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("removing", ptmx)(e));
            }
            _ => {}
        }
        symlink("pts/ptmx", &dest).map_err(io_err("symlinking", ptmx))?;
    }
    for (target, link) in dev_symlinks() {
        let link = Path::new(link);
        let dest = secure_join(rootfs, link).map_err(io_err("resolving", link))?;
        match symlink(target, &dest) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_err("symlinking", link)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates one node inside the rootfs.
fn create_node(rootfs: &Path, node: &DeviceNode, bind: bool) -> Result<(), DeviceError> {
    let path = node.path.as_path();
    let dest = secure_join(rootfs, path).map_err(io_err("resolving", path))?;
    if dest == rootfs {
        return Err(invalid(path, "resolves to the rootfs itself"));
    }
    if let Some(parent) = dest.parent() {
        mkdir_all(parent).map_err(io_err("creating the directory of", path))?;
    }
    if bind {
        return bind_node(node, &dest);
    }
    let c = std::ffi::CString::new(dest.as_os_str().as_bytes())
        .map_err(|_| invalid(path, "path contains a NUL byte"))?;
    let dev = libc::makedev(node.major, node.minor);
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), node.kind | node.mode, dev) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EEXIST) => Ok(()),
            Some(libc::EPERM) => bind_node(node, &dest),
            _ => Err(io_err("mknod", path)(e)),
        };
    }
    fs::set_permissions(&dest, fs::Permissions::from_mode(node.mode))
        .map_err(io_err("chmod", path))?;
    lchown(&dest, Some(node.uid), Some(node.gid)).map_err(io_err("chown", path))
}

/// Binds the agent's node of the same path onto an empty file at `dest`.
fn bind_node(node: &DeviceNode, dest: &Path) -> Result<(), DeviceError> {
    let path = node.path.as_path();
    create_file(dest).map_err(io_err("creating the mount point of", path))?;
    sys::mount(
        Some(path.as_os_str()),
        dest,
        Some("bind"),
        libc::MS_BIND,
        None,
    )
    .map_err(io_err("bind-mounting the agent's node onto", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(json: &str) -> LinuxDevice {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn device_entries_are_validated() {
        let n = validate_device(&dev(
            r#"{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":8630,"uid":0,"gid":0}"#,
        ))
        .unwrap();
        assert_eq!(n.kind, libc::S_IFCHR);
        assert_eq!((n.major, n.minor, n.mode), (10, 229, 0o666));
        let n = validate_device(&dev(
            r#"{"path":"/dev/sda","type":"b","major":8,"minor":0}"#,
        ))
        .unwrap();
        assert_eq!((n.kind, n.mode), (libc::S_IFBLK, 0o666));
        let n = validate_device(&dev(r#"{"path":"/dev/x/fifo","type":"p"}"#)).unwrap();
        assert_eq!(n.kind, libc::S_IFIFO);
        let n =
            validate_device(&dev(r#"{"path":"/dev/u","type":"u","major":1,"minor":3}"#)).unwrap();
        assert_eq!(n.kind, libc::S_IFCHR);
        for bad in [
            r#"{"path":"/dev/all","type":"a"}"#,
            r#"{"path":"/etc/passwd","type":"c","major":1,"minor":3}"#,
            r#"{"path":"dev/null","type":"c","major":1,"minor":3}"#,
            r#"{"path":"/dev/../etc/x","type":"c","major":1,"minor":3}"#,
            r#"{"path":"/dev","type":"c","major":1,"minor":3}"#,
            r#"{"path":"/devices","type":"c","major":1,"minor":3}"#,
            r#"{"path":"/dev/neg","type":"c","major":-1,"minor":3}"#,
        ] {
            assert!(validate_device(&dev(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults() {
        let d = default_devices();
        assert_eq!(d.len(), 6);
        assert!(d.iter().all(|n| n.mode == 0o666 && n.kind == libc::S_IFCHR));
        let tty = d.iter().find(|n| n.path == Path::new("/dev/tty")).unwrap();
        assert_eq!((tty.major, tty.minor), (5, 0));
    }
}
