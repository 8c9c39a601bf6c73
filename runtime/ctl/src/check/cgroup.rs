//! `cgroup`: which cgroup layout the host has — v2 (unified), v1, or hybrid (v1 hierarchies
//! with a cgroup2 mount beside them) — as the shim's pod accounting sees it
//! ([`Layout::detect`], the shim's own detection), with the mount table telling hybrid
//! from v1.

use std::path::Path;

use moat_runtime::host::cgroup::hierarchy::{Hierarchy, Layout, V1_CONTROLLERS};

use super::host::Host;
use super::Finding;

/// The cgroup filesystems in a mount table.
#[derive(Debug, Default, PartialEq, Eq)]
struct CgroupMounts {
    /// Mount points of cgroup (v1) filesystems.
    v1: Vec<String>,
    /// Mount points of cgroup2 filesystems.
    v2: Vec<String>,
}

/// `cgroup`: v2 is OK; v1 and hybrid work, with less (WARN); none fails.
pub fn cgroup(host: &Host) -> Finding {
    let mounts = std::fs::read_to_string(&host.mountinfo)
        .map(|t| cgroup_mounts(&t))
        .unwrap_or_default();
    judge(
        &host.sys_fs_cgroup,
        Layout::detect(&host.sys_fs_cgroup),
        &mounts,
    )
}

fn judge(
    root: &Path,
    layout: Result<Layout, impl std::fmt::Display>,
    mounts: &CgroupMounts,
) -> Finding {
    match layout {
        Ok(Layout::V2(h)) => Finding::ok(
            "cgroup",
            format!("cgroup v2 (unified) at {}", h.root.display()),
        ),
        Ok(Layout::V1(trees)) => {
            let kind = match mounts.v2.first() {
                Some(at) => {
                    format!("hybrid (cgroup v1 hierarchies, and cgroup2 at {at} unused by moat)")
                }
                None => "cgroup v1".to_string(),
            };
            Finding::warn(
                "cgroup",
                format!("{kind}: moat works; {}", v1_limits(&trees)),
                "for one tree with every controller, boot with systemd.unified_cgroup_hierarchy=1 \
                 (cgroup v2)",
            )
        }
        Err(e) => {
            let elsewhere: Vec<&str> = mounts
                .v1
                .iter()
                .chain(&mounts.v2)
                .map(String::as_str)
                .collect();
            let detail = match elsewhere.is_empty() {
                true => format!("{e}: no cgroup filesystem is mounted"),
                false => format!("{e} (cgroup filesystems at {})", elsewhere.join(", ")),
            };
            Finding::fail(
                "cgroup",
                detail,
                format!(
                    "mount cgroup v2 at {0} (mount -t cgroup2 cgroup2 {0}), as systemd does",
                    root.display()
                ),
            )
        }
    }
}

/// What pod accounting does on v1 `trees`, and what it lacks there.
fn v1_limits(trees: &[Hierarchy]) -> String {
    let found: Vec<&str> = trees
        .iter()
        .flat_map(|t| t.controllers.iter().copied())
        .collect();
    let missing: Vec<&str> = V1_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !found.contains(c))
        .collect();
    let mut text = format!(
        "each pod's VMM is accounted in the v1 hierarchies of {}",
        found.join(", ")
    );
    if !missing.is_empty() {
        text += &format!(" (not mounted, so not accounted: {})", missing.join(", "));
    }
    text + "; limited: no unified tree (the kubelet and containerd treat v1 as legacy), no \
            pressure (PSI) or writeback io accounting"
}

/// The cgroup mounts of `/proc/self/mountinfo` text (`... MOUNTPOINT ... - FSTYPE ...`).
fn cgroup_mounts(mountinfo: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for line in mountinfo.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (head.split(' ').nth(4), tail.split(' ').next()) else {
            continue;
        };
        match fstype {
            "cgroup" => mounts.v1.push(point.to_string()),
            "cgroup2" => mounts.v2.push(point.to_string()),
            _ => {}
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::temp_host;
    use crate::check::Status;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    fn setup(files: &[&str], mountinfo: &str) -> (tempfile::TempDir, Host) {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        for f in files {
            let p = host.sys_fs_cgroup.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        std::fs::create_dir_all(&host.sys_fs_cgroup).unwrap();
        std::fs::create_dir_all(host.mountinfo.parent().unwrap()).unwrap();
        std::fs::write(&host.mountinfo, mountinfo).unwrap();
        (dir, host)
    }

    #[test]
    fn layouts() {
        let (_d, host) = setup(&["cgroup.controllers"], "");
        let f = cgroup(&host);
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.starts_with("cgroup v2 (unified)"), "{f:?}");

        let (_d, host) = setup(&["memory/cgroup.procs", "pids/cgroup.procs"], HYBRID);
        let f = cgroup(&host);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.starts_with("hybrid"), "{f:?}");
        assert!(
            f.detail.contains("memory, pids")
                && f.detail
                    .contains("not accounted: cpu, cpuacct, cpuset, blkio"),
            "{f:?}"
        );

        let (_d, host) = setup(&["memory/cgroup.procs"], "");
        let f = cgroup(&host);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.starts_with("cgroup v1:"), "{f:?}");
    }

    #[test]
    fn no_cgroup_fails() {
        let (_d, host) = setup(&[], "22 1 0:5 / /proc rw - proc proc rw\n");
        let f = cgroup(&host);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("no cgroup filesystem is mounted"),
            "{f:?}"
        );
        assert!(f.hint.unwrap().contains("mount -t cgroup2"));
        // Mounted elsewhere than where the shim looks: still a failure, and said where.
        let (_d, host) = setup(&[], "41 31 0:38 / /mnt/cg rw - cgroup2 cgroup2 rw\n");
        let f = cgroup(&host);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("cgroup filesystems at /mnt/cg"), "{f:?}");
    }

    #[test]
    fn mountinfo_parsing() {
        let m = cgroup_mounts(HYBRID);
        assert_eq!(m.v1, ["/sys/fs/cgroup/memory"]);
        assert_eq!(m.v2, ["/sys/fs/cgroup/unified"]);
        assert_eq!(
            cgroup_mounts("garbage\n1 2 3 - cgroup2\n"),
            CgroupMounts::default()
        );
    }
}
