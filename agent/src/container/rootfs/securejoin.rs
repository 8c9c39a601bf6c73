//! Resolving container paths inside the rootfs without leaving it (filepath-securejoin's
//! `SecureJoin`), and creating mount points there.
//!
//! Paths are resolved component by component: a symlink is read and its target resolved
//! relative to the rootfs (absolute targets restart at the rootfs root), and `..` never climbs
//! above the rootfs. Components that do not exist are appended as they are. The result is a
//! path under the rootfs whose existing components are not symlinks, so a following mount(2)
//! or mkdir lands inside the rootfs. This is checked-then-used (not `openat2`), which is sound
//! here because nothing in the container runs yet while its init sets up the rootfs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up with ELOOP (as securejoin).
const MAX_SYMLINKS: usize = 255;

enum Part {
    Parent,
    Name(OsString),
}

fn push_parts(queue: &mut VecDeque<Part>, path: &Path, front: bool) {
    let parts: Vec<Part> = path
        .components()
        .filter_map(|c| match c {
            Component::ParentDir => Some(Part::Parent),
            Component::Normal(n) => Some(Part::Name(n.to_os_string())),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    if front {
        for p in parts.into_iter().rev() {
            queue.push_front(p);
        }
    } else {
        queue.extend(parts);
    }
}

/// Resolves `unsafe_path` (absolute or not, taken relative to `root`) inside `root`.
///
/// Errors only for I/O errors other than "does not exist"/"not a directory" while inspecting
/// components, or a symlink loop.
pub(crate) fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending = VecDeque::new();
    push_parts(&mut pending, unsafe_path, false);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        let name = match part {
            Part::Parent => {
                resolved.pop();
                continue;
            }
            Part::Name(n) => n,
        };
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_parts(&mut pending, &target, true);
            }
            Ok(_) => resolved.push(name),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                resolved.push(name)
            }
            Err(e) => return Err(e),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Creates `path` and its missing parents as directories (mode 0755 less umask).
/// `path` comes from [`secure_join`], so its existing components are real directories.
pub(crate) fn mkdir_all(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
}

/// Creates an empty regular file at `path` (and its parent directories) unless something
/// already exists there: the mount point of a bind mount of a file.
pub(crate) fn create_file(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        mkdir_all(parent)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// `path` relative to `root` as an absolute container path (`/dev/pts`); `path` comes from
/// [`secure_join`] on `root`.
pub(crate) fn container_path(root: &Path, path: &Path) -> PathBuf {
    Path::new("/").join(path.strip_prefix(root).unwrap_or(path))
}

/// Lexically cleans an absolute container path: `.` dropped, `..` clamped at `/`.
pub(crate) fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tempdir;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_and_missing_paths() {
        let t = tempdir("sj-plain");
        let root = t.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/b")).unwrap(),
            root.join("a/b")
        );
        assert_eq!(
            secure_join(root, Path::new("a/./b/c/d")).unwrap(),
            root.join("a/b/c/d")
        );
        assert_eq!(secure_join(root, Path::new("/")).unwrap(), *root);
    }

    #[test]
    fn dotdot_is_clamped_at_the_root() {
        let t = tempdir("sj-dotdot");
        let root = t.path();
        assert_eq!(
            secure_join(root, Path::new("/../../etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("a/../../../x")).unwrap(),
            root.join("x")
        );
    }

    #[test]
    fn absolute_symlink_to_slash_stays_inside() {
        let t = tempdir("sj-evil");
        let root = t.path();
        symlink("/", root.join("evil")).unwrap();
        assert_eq!(secure_join(root, Path::new("/evil")).unwrap(), *root);
        assert_eq!(
            secure_join(root, Path::new("/evil/etc/passwd")).unwrap(),
            root.join("etc/passwd")
        );
    }

    #[test]
    fn relative_symlink_escape_is_clamped() {
        let t = tempdir("sj-rel");
        let root = t.path();
        fs::create_dir_all(root.join("d")).unwrap();
        symlink("../../../../tmp", root.join("d/up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/d/up/x")).unwrap(),
            root.join("tmp/x")
        );
        // A relative link resolves against its own directory.
        symlink("sub", root.join("d/rel")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/d/rel")).unwrap(),
            root.join("d/sub")
        );
        // Chained absolute links.
        symlink("/d/rel", root.join("chain")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/chain/f")).unwrap(),
            root.join("d/sub/f")
        );
    }

    #[test]
    fn symlink_loops_fail() {
        let t = tempdir("sj-loop");
        let root = t.path();
        symlink("/b", root.join("a")).unwrap();
        symlink("/a", root.join("b")).unwrap();
        let e = secure_join(root, Path::new("/a/x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn mount_points_are_created() {
        let t = tempdir("sj-create");
        let root = t.path();
        let dir = secure_join(root, Path::new("/x/y/z")).unwrap();
        mkdir_all(&dir).unwrap();
        assert!(dir.is_dir());
        let file = secure_join(root, Path::new("/etc/resolv.conf")).unwrap();
        create_file(&file).unwrap();
        assert!(file.is_file());
        create_file(&file).unwrap();
        assert_eq!(container_path(root, &file), Path::new("/etc/resolv.conf"));
    }

    #[test]
    fn lexical_clean() {
        assert_eq!(
            clean(Path::new("/dev/../dev/./pts/")),
            Path::new("/dev/pts")
        );
        assert_eq!(clean(Path::new("/../..")), Path::new("/"));
        assert_eq!(clean(Path::new("proc")), Path::new("/proc"));
    }
}
