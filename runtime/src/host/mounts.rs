//! Host-side mounts of a pod: container root filesystems (containerd's snapshot mounts, or a
//! bind of the bundle's rootfs) and bind mounts of host files the spec shares, all under the
//! pod's virtio-fs share; and their removal.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount as ApiMount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors of host mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Creating a mount point failed.
    #[error("creating mount point {path}: {source}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
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

/// Mounts a container's root filesystem at `target`: containerd's `mounts` (an overlay of
/// snapshots, usually one) in order, or — when containerd passed none — a bind of the spec's
/// `root.path` (relative to `bundle`).
pub fn mount_rootfs(
    mounts: &[ApiMount],
    bundle: &Path,
    spec_root: &Path,
    target: &Path,
) -> Result<(), MountError> {
    mkdir(target)?;
    if mounts.is_empty() {
        let source = if spec_root.is_absolute() {
            spec_root.to_path_buf()
        } else {
            bundle.join(spec_root)
        };
        if !source.is_dir() {
            return Err(MountError::Source {
                path: source,
                why: "the root filesystem is not a directory".into(),
            });
        }
        return bind(&source, target, false);
    }
    for m in mounts {
        let (flags, data) = parse_options(&m.options);
        let what = format!("{} {}", m.type_, m.source);
        if data.len() >= MAX_MOUNT_DATA {
            return Err(MountError::Mount {
                what,
                target: target.to_path_buf(),
                why: format!(
                    "{} bytes of mount options (at most {MAX_MOUNT_DATA})",
                    data.len()
                ),
            });
        }
        let fstype = Some(m.type_.as_str()).filter(|t| !t.is_empty() && *t != "bind");
        mount(
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            target,
            fstype,
            flags,
            Some(data.as_str()).filter(|d| !d.is_empty()),
        )
        .map_err(|e| MountError::Mount {
            what,
            target: target.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(())
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

/// Bind-mounts `source` (a file or directory) on `target`, creating `target` as the same
/// kind; read-only when `readonly`.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
    let meta = std::fs::metadata(source).map_err(|e| MountError::Source {
        path: source.to_path_buf(),
        why: e.to_string(),
    })?;
    if meta.is_dir() {
        mkdir(target)?;
    } else {
        if let Some(parent) = target.parent() {
            mkdir(parent)?;
        }
        if !target.exists() {
            std::fs::File::create(target).map_err(|source| MountError::MountPoint {
                path: target.to_path_buf(),
                source,
            })?;
        }
    }
    let failed = |e: nix::Error| MountError::Mount {
        what: format!("bind {}", source.display()),
        target: target.to_path_buf(),
        why: e.to_string(),
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(failed)?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(failed)?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint {
        path: path.to_path_buf(),
        source,
    })
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
            if let Err(source) = umount2(&p, MntFlags::MNT_DETACH) {
                if source != nix::errno::Errno::EINVAL && source != nix::errno::Errno::ENOENT {
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
        // A child in its own user+mount namespace, so nothing leaks into the host's table.
        let child = format!(
            "{}::bind_child",
            module_path!().trim_start_matches("moat_runtime::")
        );
        let out = std::process::Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", &child, "--include-ignored", "--nocapture"])
            .output()
            .expect("unshare (util-linux) must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            stdout.contains("running 1 test"),
            "`--exact {child}` did not run exactly one test"
        );
        assert!(out.status.success(), "{child} failed: {}", out.status);
    }

    #[test]
    #[ignore = "run by bind_and_unmount_in_a_private_namespace inside unshare"]
    fn bind_child() {
        let tmp = tempfile::TempDir::new().unwrap();
        let base = tmp.path();
        let src = base.join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("f"), "file").unwrap();
        let share = base.join("share");
        bind(&src, &share.join("c1/rootfs"), false).unwrap();
        bind(&src.join("f"), &share.join("c1/mounts/0-f"), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(share.join("c1/rootfs/f")).unwrap(),
            "file"
        );
        assert!(
            std::fs::write(share.join("c1/mounts/0-f"), "x").is_err(),
            "ro bind writable"
        );
        let under = mounts_under(&share).unwrap();
        assert_eq!(under.len(), 2, "{under:?}");
        assert!(under[0].ends_with("0-f"), "deepest first: {under:?}");
        unmount_under(&share).unwrap();
        assert!(mounts_under(&share).unwrap().is_empty());
        assert!(mount_rootfs(&[], base, Path::new("missing"), &share.join("c2/rootfs")).is_err());
    }
}
