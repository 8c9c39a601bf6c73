//! CopyFile: files the host writes into the guest, confined to one directory.
//!
//! Paths must be absolute, under the agent's file root (`<state dir>/files`, `/run/moat/files`
//! in the guest), with no `.`/`..` components; every directory on the way is opened with `O_NOFOLLOW` relative to its parent,
//! so a symlink planted in the tree cannot redirect the write; the file is written to a
//! temporary name and renamed into place, so readers never see half a file.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Largest file CopyFile accepts.
pub const MAX_FILE: usize = 1 << 20;

/// Errors of CopyFile.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path is not acceptable.
    #[error("path {path:?}: {why}")]
    BadPath {
        /// The path asked for.
        path: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// The file is too big.
    #[error("file of {0} bytes exceeds the {MAX_FILE}-byte limit")]
    TooLarge(usize),
    /// A filesystem call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What to write.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// Absolute path under the root.
    pub path: &'a str,
    /// Contents.
    pub data: &'a [u8],
    /// File mode (0: 0644).
    pub file_mode: u32,
    /// Mode of created directories (0: 0755).
    pub dir_mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// Writes `req` below `root`.
pub fn copy_file(root: &Path, req: &CopyRequest) -> Result<(), FileError> {
    let parts = checked_parts(root, req)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(bad_path(req, "names the root itself"));
    };
    let dir_mode = Mode::from_bits_truncate(if req.dir_mode == 0 {
        0o755
    } else {
        req.dir_mode
    });
    let dir = open_dirs(root, dirs, dir_mode)?;
    write_at(&dir, name, req)
}

fn bad_path(req: &CopyRequest, why: &'static str) -> FileError {
    FileError::BadPath {
        path: req.path.to_string(),
        why,
    }
}

/// The size check, then the path's names below `root` (none of them `.` or `..`).
fn checked_parts<'p>(root: &Path, req: &CopyRequest<'p>) -> Result<Vec<&'p OsStr>, FileError> {
    if req.data.len() > MAX_FILE {
        return Err(FileError::TooLarge(req.data.len()));
    }
    let rel = Path::new(req.path)
        .strip_prefix(root)
        .map_err(|_| bad_path(req, "not under the agent's file root"))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            _ => return Err(bad_path(req, "has '.', '..' or repeated components")),
        }
    }
    if req.path.contains("/./") || req.path.contains("/../") || req.path.ends_with("/..") {
        return Err(bad_path(req, "has '.', '..' or repeated components"));
    }
    Ok(parts)
}

/// A `nix` error as [`FileError::Io`] saying `what`.
fn io(what: String) -> impl FnOnce(nix::Error) -> FileError {
    move |e: nix::Error| FileError::Io {
        what,
        source: e.into(),
    }
}

/// Opens `root` (created if missing), then each of `dirs` below it (created with
/// `dir_mode` if missing), every one `O_NOFOLLOW` relative to its parent; returns the last.
fn open_dirs(root: &Path, dirs: &[&OsStr], dir_mode: Mode) -> Result<OwnedFd, FileError> {
    std::fs::create_dir_all(root).map_err(|source| FileError::Io {
        what: format!("creating {}", root.display()),
        source,
    })?;
    let dflags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let fd = nix::fcntl::open(root, dflags, Mode::empty())
        .map_err(io(format!("opening {}", root.display())))?;
    // SAFETY: open returned a new fd.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    for d in dirs {
        match mkdirat(dir.as_raw_fd(), *d, dir_mode) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(io(format!("mkdir {d:?}"))(e)),
        }
        let fd = openat(dir.as_raw_fd(), *d, dflags, Mode::empty()).map_err(io(format!(
            "opening directory {d:?} (symlinks are refused)"
        )))?;
        // SAFETY: openat returned a new fd.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// Writes the file `name` in the directory `dir`: a temporary name, the mode and owner,
/// synced, then renamed into place.
fn write_at(dir: &OwnedFd, name: &OsStr, req: &CopyRequest) -> Result<(), FileError> {
    let tmp = format!(".{}.moat-tmp", name.to_string_lossy());
    let dir_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let tmp_path = Path::new(&dir_path).join(&tmp);
    let mode = if req.file_mode == 0 {
        0o644
    } else {
        req.file_mode & 0o7777
    };
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp_path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp_path)?;
        f.write_all(req.data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::fchown(&f, Some(req.uid), Some(req.gid))?;
        f.sync_all()?;
        std::fs::rename(&tmp_path, Path::new(&dir_path).join(name))
    };
    write().map_err(|source| FileError::Io {
        what: format!("writing {}", req.path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(path: &'a str, data: &'a [u8]) -> CopyRequest<'a> {
        CopyRequest {
            path,
            data,
            file_mode: 0o600,
            dir_mode: 0,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn files_land_under_the_root_and_escapes_are_refused() {
        let tmp = crate::testing::tempdir("files");
        let base = tmp.path();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let p = format!("{}/a/b/hosts", root.display());
        copy_file(&root, &req(&p, b"127.0.0.1 localhost\n")).unwrap();
        assert_eq!(
            std::fs::read(root.join("a/b/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        let mode = std::fs::metadata(root.join("a/b/hosts"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Overwrite is atomic and allowed.
        copy_file(&root, &req(&p, b"x")).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/hosts")).unwrap(), b"x");

        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        let e = copy_file(&root, &req(&format!("{}/evil/f", root.display()), b"x")).unwrap_err();
        assert!(e.to_string().contains("symlinks are refused"), "{e}");
        assert!(!outside.join("f").exists());
        for bad in [
            "/etc/passwd",
            &format!("{}/../x", root.display()),
            &format!("{}", root.display()),
        ] {
            assert!(
                matches!(
                    copy_file(&root, &req(bad, b"x")),
                    Err(FileError::BadPath { .. })
                ),
                "{bad}"
            );
        }
        let big = vec![0u8; MAX_FILE + 1];
        assert!(matches!(
            copy_file(&root, &req(&p, &big)),
            Err(FileError::TooLarge(_))
        ));
    }
}
