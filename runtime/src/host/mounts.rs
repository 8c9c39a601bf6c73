//! Host-side mounts of a pod: container root filesystems (containerd's snapshot mounts, or a
//! bind of the bundle's rootfs) and bind mounts of host files the spec shares, attached by fd
//! to mount points of the pod's staging tree ([`crate::host::share`]), `nosuid,nodev`, binds
//! recursive (read-only throughout when asked); and their removal (`UMOUNT_NOFOLLOW`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount as ApiMount;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::confined::{owned_fd, proc_fd_path, ConfinedDir, PathError};

/// Errors of host mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount point could not be made or opened safely.
    #[error("mount point {0}")]
    MountPoint(#[from] PathError),
    /// A mount failed.
    #[error("mounting {what} on {target}: {why}")]
    Mount {
        /// What was mounted (type and source).
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        why: String,
    },
    /// A source path is unusable.
    #[error("mount source {path}: {why}")]
    Source {
        /// The source.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Reading the mount table failed.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    /// Unmounting failed.
    #[error("unmounting {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
}

/// Mounts a container's root filesystem on `target` (an empty directory of the pod's staging
/// tree, mounted on through its fd, never by path): containerd's `mounts` (an overlay of
/// snapshots, usually one) in order, each `nosuid,nodev` on the host, or — when containerd
/// passed none (Docker, which mounts its graph driver itself; `ctr run --rootfs`) — a bind
/// of the spec's `root.path` (relative to `bundle`), read-only when `root.readonly` says so
/// (`root` is both).
pub fn mount_rootfs(
    mounts: &[ApiMount],
    bundle: &Path,
    root: (&Path, bool),
    target: &ConfinedDir,
) -> Result<(), MountError> {
    let (spec_root, readonly) = root;
    if mounts.is_empty() {
        let source = if spec_root.is_absolute() {
            spec_root.to_path_buf()
        } else {
            bundle.join(spec_root)
        };
        let tree = DetachedTree::clone_of(&source, readonly)?;
        if !tree.is_dir()? {
            return Err(MountError::Source {
                path: source,
                why: "the root filesystem is not a directory".into(),
            });
        }
        return tree.attach(target.fd(), target.path());
    }
    mounts.iter().try_for_each(|m| mount_one(m, target))
}

/// Mounts one of containerd's rootfs mounts on `target`.
fn mount_one(m: &ApiMount, target: &ConfinedDir) -> Result<(), MountError> {
    let (flags, data) = parse_options(&m.options);
    let what = format!("{} {}", m.type_, m.source);
    if data.len() >= MAX_MOUNT_DATA {
        return Err(MountError::Mount {
            what,
            target: target.path().to_path_buf(),
            why: format!(
                "{} bytes of mount options (at most {MAX_MOUNT_DATA})",
                data.len()
            ),
        });
    }
    if flags.contains(MsFlags::MS_BIND) || m.type_ == "bind" {
        // A bind ignores nosuid/nodev/ro until remounted: clone and set attributes instead.
        let readonly = flags.contains(MsFlags::MS_RDONLY);
        return DetachedTree::clone_of(Path::new(&m.source), readonly)?
            .attach(target.fd(), target.path());
    }
    let fstype = Some(m.type_.as_str()).filter(|t| !t.is_empty());
    mount(
        Some(m.source.as_str()).filter(|s| !s.is_empty()),
        &proc_fd_path(target.fd()),
        fstype,
        flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()).filter(|d| !d.is_empty()),
    )
    .map_err(|e| MountError::Mount {
        what,
        target: target.path().to_path_buf(),
        why: e.to_string(),
    })
}

/// The most mount data the kernel takes (one page).
const MAX_MOUNT_DATA: usize = 4096;

/// Splits containerd mount options into mount(2) flags and filesystem data
/// (`lowerdir=...,upperdir=...` for overlay).
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "suid" | "dev" | "exec" | "async" | "atime" | "defaults" => {
                (MsFlags::empty(), MsFlags::empty())
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

/// A detached copy of a host mount tree (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`),
/// `nosuid,nodev` throughout (read-only throughout if asked), to be attached to a mount point
/// by fd. The source keeps its own `noexec`/`nosuid`/`nodev`: attributes are only added.
pub struct DetachedTree {
    fd: OwnedFd,
    source: PathBuf,
}

impl DetachedTree {
    /// Clones the mount tree at `source` (a host path from containerd's spec, symlinks in it
    /// followed as runc does) and sets its attributes.
    pub fn clone_of(source: &Path, readonly: bool) -> Result<DetachedTree, MountError> {
        let source_err = |e: Errno| MountError::Source {
            path: source.to_path_buf(),
            why: e.desc().to_string(),
        };
        let c =
            CString::new(source.as_os_str().as_bytes()).map_err(|_| source_err(Errno::EINVAL))?;
        let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
        // SAFETY: a NUL-terminated path; the returned fd is checked and owned below.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
        let fd = owned_fd(fd).map_err(source_err)?;
        let mut attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if readonly {
            attr_set |= libc::MOUNT_ATTR_RDONLY;
        }
        // SAFETY: mount_attr is plain data; zero is its valid default.
        let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
        attr.attr_set = attr_set;
        // SAFETY: a valid detached-tree fd, an empty path with AT_EMPTY_PATH and a mount_attr
        // of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                &attr as *const libc::mount_attr,
                size_of::<libc::mount_attr>(),
            )
        };
        Errno::result(rc).map_err(source_err)?;
        Ok(DetachedTree {
            fd,
            source: source.to_path_buf(),
        })
    }

    /// Whether the tree's root is a directory (else a file: bind it on a file).
    pub fn is_dir(&self) -> Result<bool, MountError> {
        let st = nix::sys::stat::fstat(self.fd.as_raw_fd()).map_err(|e| MountError::Source {
            path: self.source.clone(),
            why: e.desc().to_string(),
        })?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// Attaches the tree on `target` (an fd of the mount point; `path` names it in errors).
    pub fn attach(self, target: BorrowedFd<'_>, path: &Path) -> Result<(), MountError> {
        let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
        // SAFETY: two valid fds with empty paths and the EMPTY_PATH flags for both.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                flags,
            )
        };
        Errno::result(rc).map_err(|e| MountError::Mount {
            what: format!("bind {}", self.source.display()),
            target: path.to_path_buf(),
            why: e.desc().to_string(),
        })?;
        Ok(())
    }
}

/// Binds host path `source` (a file or a directory) on the new mount point `rel` of `dir`
/// (created as the same kind, missing parents included; an existing entry is refused),
/// `nosuid,nodev`, read-only throughout when `readonly`.
pub fn bind(
    source: &Path,
    dir: &ConfinedDir,
    rel: &Path,
    readonly: bool,
) -> Result<(), MountError> {
    let tree = DetachedTree::clone_of(source, readonly)?;
    let target = if tree.is_dir()? {
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(p) = parent {
            dir.create_dir_all(p, 0o700)?;
        }
        dir.create_dir(rel, 0o700)?.into_fd()
    } else {
        dir.create_file(rel, 0o600)?
    };
    tree.attach(target.as_fd(), &dir.path().join(rel))
}

/// The mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Detaches every mount at or below `dir` (deepest first, each as many times as it is
/// stacked). Returns the first failure after trying them all.
pub fn unmount_under(dir: &Path) -> Result<(), MountError> {
    let mut first_err = None;
    for _round in 0..8 {
        let points = mounts_under(dir)?;
        if points.is_empty() {
            break;
        }
        for p in points {
            if let Err(source) = umount2(&p, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                if source != Errno::EINVAL && source != Errno::ENOENT {
                    first_err.get_or_insert(MountError::Unmount { path: p, source });
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_data() {
        let opts: Vec<String> = ["ro", "nosuid", "index=off", "lowerdir=/a:/b", "upperdir=/u"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data, "index=off,lowerdir=/a:/b,upperdir=/u");
        let (flags, data) = parse_options(&["rbind".to_string(), "rw".to_string()]);
        assert_eq!(
            (flags, data.as_str()),
            (MsFlags::MS_BIND | MsFlags::MS_REC, "")
        );
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn bind_and_unmount_in_a_private_namespace() {
        crate::host::testing::in_private_namespace(&format!("{}::bind_child", module_path!()));
    }

    #[test]
    #[ignore = "run by bind_and_unmount_in_a_private_namespace inside unshare"]
    fn bind_child() {
        let tmp = tempfile::TempDir::new().unwrap();
        let base = tmp.path();
        let src = base.join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("f"), "file").unwrap();
        std::fs::create_dir_all(base.join("tree")).unwrap();
        let tree = ConfinedDir::open(&base.join("tree")).unwrap();
        bind(&src, &tree, Path::new("c1/rootfs"), false).unwrap();
        bind(&src.join("f"), &tree, Path::new("c1/mounts/0-f"), true).unwrap();
        let share = tree.path();
        assert_eq!(
            std::fs::read_to_string(share.join("c1/rootfs/f")).unwrap(),
            "file"
        );
        assert!(
            std::fs::write(share.join("c1/mounts/0-f"), "x").is_err(),
            "ro bind writable"
        );
        let e = bind(&src, &tree, Path::new("c1/rootfs"), false).unwrap_err();
        assert!(e.to_string().contains("c1/rootfs"), "{e}");
        let under = mounts_under(share).unwrap();
        assert_eq!(under.len(), 2, "{under:?}");
        assert!(under[0].ends_with("0-f"), "deepest first: {under:?}");
        unmount_under(share).unwrap();
        assert!(mounts_under(share).unwrap().is_empty());
        let c2 = tree.create_dir_all(Path::new("c2/rootfs"), 0o700).unwrap();
        let e = mount_rootfs(&[], base, (Path::new("missing"), false), &c2).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // A root.path bound read-only (root.readonly) is read-only on the host too.
        mount_rootfs(&[], base, (Path::new("src"), true), &c2).unwrap();
        let err = std::fs::write(share.join("c2/rootfs/f"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        unmount_under(share).unwrap();
    }
}
