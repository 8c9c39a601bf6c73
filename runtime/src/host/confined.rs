//! Path operations confined to one directory tree of the host (a pod's staging tree).
//!
//! Every lookup is made by the kernel beneath a directory fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: it never follows a
//! symlink, never leaves the tree and never crosses into a mount inside it. New directories and
//! files are made with `mkdirat` / `openat2(O_CREAT | O_EXCL)` in a parent opened that way, and
//! callers mount onto the returned fds (see [`crate::host::mounts`]), so a path component
//! swapped for a symlink between a check and its use is refused, never followed (Kata's
//! CVE-2020-2026 class).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;

/// Why a confined path operation failed; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path is not a plain relative path (`..`, `/`, empty).
    #[error("{path}: not a plain relative path beneath {root}")]
    NotRelative {
        /// The path asked for.
        path: PathBuf,
        /// The confining directory.
        root: PathBuf,
    },
    /// Resolving the path would follow a symlink, cross a mount or leave the tree.
    #[error("{path}: refused: a symlink, a mount point or a path outside {root} ({source})")]
    Escapes {
        /// The full path.
        path: PathBuf,
        /// The confining directory.
        root: PathBuf,
        /// The kernel's answer (ELOOP, EXDEV, ...).
        source: Errno,
    },
    /// Something already exists where a new directory or file must be made.
    #[error("{0}: already exists")]
    Exists(PathBuf),
    /// Any other failure.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The full path.
        path: PathBuf,
        /// What was tried.
        op: &'static str,
        /// Why it failed.
        source: Errno,
    },
}

/// An open directory that confines every path operation made through it.
#[derive(Debug)]
pub struct ConfinedDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// The resolve flags of every lookup.
const RESOLVE: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

impl ConfinedDir {
    /// Opens `path` itself (its last component must not be a symlink) as the confining
    /// directory. `path` is the shim's own (the state dir's pod directory), not the guest's.
    pub fn open(path: &Path) -> Result<ConfinedDir, PathError> {
        let c = cstring(path)?;
        // SAFETY: a valid NUL-terminated path; the returned fd is checked and owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let fd = owned_fd(fd.into()).map_err(|source| PathError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
        Ok(ConfinedDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory's path (for messages and mountinfo).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory's fd, owned.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Opens the existing directory `rel` beneath this one.
    pub fn dir(&self, rel: &Path) -> Result<ConfinedDir, PathError> {
        self.check(rel)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let fd = self.openat2(rel, flags, 0, "open directory")?;
        Ok(ConfinedDir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Makes the new directory `rel` (its parent must exist) with `mode`; an existing entry
    /// of any kind is refused with [`PathError::Exists`].
    pub fn create_dir(&self, rel: &Path, mode: u32) -> Result<ConfinedDir, PathError> {
        let (parent, name) = self.parent_of(rel)?;
        let c = cstring(name)?;
        // SAFETY: a valid dir fd and NUL-terminated single-component name.
        let rc = unsafe { libc::mkdirat(parent.fd.as_raw_fd(), c.as_ptr(), mode) };
        match Errno::result(rc) {
            Ok(_) => parent.dir(name),
            Err(Errno::EEXIST) => Err(PathError::Exists(self.path.join(rel))),
            Err(source) => Err(self.io_err(rel, "mkdir", source)),
        }
    }

    /// Opens directory `rel`, making each missing component with `mode`; an existing
    /// component that is not a directory (a symlink, a file) is refused.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> Result<ConfinedDir, PathError> {
        self.check(rel)?;
        let mut done = PathBuf::new();
        for part in rel.components() {
            done.push(part);
            match self.dir(&done) {
                Ok(_) => continue,
                Err(PathError::Io {
                    source: Errno::ENOENT,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
            match self.create_dir(&done, mode) {
                Ok(_) | Err(PathError::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.dir(rel)
    }

    /// Makes the new empty file `rel` (missing parent directories are made with mode 0700)
    /// and returns it opened read-only; an existing entry is refused.
    pub fn create_file(&self, rel: &Path, mode: u32) -> Result<OwnedFd, PathError> {
        let (parent_rel, name) = split(rel).ok_or_else(|| self.not_relative(rel))?;
        let parent = match parent_rel {
            Some(p) => self.create_dir_all(p, 0o700)?,
            None => self.dir(Path::new("."))?,
        };
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY | libc::O_CLOEXEC;
        parent
            .openat2(name, flags, mode, "create")
            .map_err(|e| match e {
                PathError::Io {
                    source: Errno::EEXIST,
                    ..
                } => PathError::Exists(self.path.join(rel)),
                e => e,
            })
    }

    /// `openat2(self, rel, flags, mode)` with the confining resolve flags.
    fn openat2(
        &self,
        rel: &Path,
        flags: i32,
        mode: u32,
        op: &'static str,
    ) -> Result<OwnedFd, PathError> {
        let c = cstring(rel)?;
        // SAFETY: open_how is plain data; zero is its valid default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::try_from(flags).unwrap_or_default();
        how.mode = u64::from(mode);
        how.resolve = RESOLVE;
        // SAFETY: a valid dir fd, NUL-terminated path and an open_how of the size passed;
        // the returned fd is checked and owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        owned_fd(fd).map_err(|source| match source {
            Errno::ELOOP | Errno::EXDEV | Errno::EAGAIN => PathError::Escapes {
                path: self.path.join(rel),
                root: self.path.clone(),
                source,
            },
            source => self.io_err(rel, op, source),
        })
    }

    /// The parent directory of `rel` (opened) and `rel`'s last component.
    fn parent_of<'a>(&self, rel: &'a Path) -> Result<(ConfinedDir, &'a Path), PathError> {
        let (parent, name) = split(rel).ok_or_else(|| self.not_relative(rel))?;
        let parent = self.dir(parent.unwrap_or(Path::new(".")))?;
        Ok((parent, name))
    }

    fn check(&self, rel: &Path) -> Result<(), PathError> {
        let plain = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if plain && !rel.as_os_str().is_empty() {
            Ok(())
        } else {
            Err(self.not_relative(rel))
        }
    }

    fn not_relative(&self, rel: &Path) -> PathError {
        PathError::NotRelative {
            path: rel.to_path_buf(),
            root: self.path.clone(),
        }
    }

    fn io_err(&self, rel: &Path, op: &'static str, source: Errno) -> PathError {
        PathError::Io {
            path: self.path.join(rel),
            op,
            source,
        }
    }
}

/// `rel`'s parent (None: `rel` is one component) and its last component; None if `rel` is not
/// a plain relative path.
fn split(rel: &Path) -> Option<(Option<&Path>, &Path)> {
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let name = rel.file_name()?;
    if !plain {
        return None;
    }
    let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
    Some((parent, Path::new(name)))
}

/// The `/proc/self/fd/N` path of `fd`: mount(2) on it acts on the fd's own inode, wherever
/// its path now points.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn cstring(path: &Path) -> Result<CString, PathError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PathError::Io {
        path: path.to_path_buf(),
        op: "path with a NUL byte",
        source: Errno::EINVAL,
    })
}

/// Takes ownership of a syscall's returned fd (`open`'s or `syscall`'s), or its errno.
pub fn owned_fd(fd: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = i32::try_from(Errno::result(fd)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: a fresh fd just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
