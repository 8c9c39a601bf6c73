//! The pod's limits as the kubelet left them on the host: the memory limit and CPU quota of
//! the sandbox cgroup's parent (the kubelet's pod cgroup, which also counts the RuntimeClass
//! overhead). containerd 1.6 passes the pod's limits nowhere else; [`crate::host::sizing`]
//! keeps the `moat.vm.*` annotations under them.

use std::path::Path;

use super::hierarchy::{missing, Layout};
use super::path::CgroupPath;
use crate::host::sizing::{CpuQuota, PodLimits};

/// v1's "no limit" is `PAGE_COUNTER_MAX` pages in bytes; anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// The memory and CPU limits of the cgroup above `path` under cgroup root `root`; `None`
/// when it is the root, is not there, or sets neither. Unreadable or odd files count as no
/// limit (logged).
pub fn parent_limits(root: &Path, path: &CgroupPath) -> Option<PodLimits> {
    let parent = path.parent()?;
    let layout = Layout::detect(root).ok()?;
    // Read through real directories only: an unexpected symlink means no limit is known.
    let dir_in = |controller: &str| {
        let h = layout.with(controller)?;
        missing(h, &parent)
            .ok()
            .filter(|m| m.is_empty())
            .map(|_| h.root.join(parent.relative()))
    };
    let (memory_bytes, cpu) = match &layout {
        Layout::V2(_) => {
            let dir = dir_in("memory")?;
            (
                read(&dir.join("memory.max")).and_then(|v| v.parse().ok()),
                read(&dir.join("cpu.max")).and_then(|v| cpu_quota(&v)),
            )
        }
        Layout::V1(_) => (
            dir_in("memory")
                .and_then(|d| read(&d.join("memory.limit_in_bytes")))
                .and_then(|v| v.parse().ok())
                .filter(|b| *b < V1_UNLIMITED),
            dir_in("cpu").and_then(|d| {
                let quota = read(&d.join("cpu.cfs_quota_us"))?;
                let period = read(&d.join("cpu.cfs_period_us"))?;
                cpu_quota(&format!("{quota} {period}"))
            }),
        ),
    };
    let limits = PodLimits {
        memory_bytes: memory_bytes.filter(|b| *b > 0),
        cpu,
        source: format!("pod cgroup {parent}"),
    };
    (limits.memory_bytes.is_some() || limits.cpu.is_some()).then_some(limits)
}

/// A cgroup file's trimmed content; `None` when it cannot be read.
fn read(file: &Path) -> Option<String> {
    match std::fs::read_to_string(file) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) => {
            crate::plog!(Debug, "pod limits: reading {}: {e}", file.display());
            None
        }
    }
}

/// `quota period` (v2's `cpu.max`; v1's two files, `-1` for no quota): `None` without a
/// quota (`max`, `-1`, 0) or with a bad value.
fn cpu_quota(text: &str) -> Option<CpuQuota> {
    let mut it = text.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next()?.parse().ok()?;
    (quota > 0 && period > 0).then_some(CpuQuota { quota, period })
}
