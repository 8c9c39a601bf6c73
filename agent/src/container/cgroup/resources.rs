//! OCI `linux.resources` to cgroup v2 control-file writes, as runc (`libcontainer/cgroups/fs2`)
//! and crun do.
//!
//! | OCI                                  | cgroup v2                                          |
//! |--------------------------------------|----------------------------------------------------|
//! | `cpu.cpus`, `cpu.mems`               | `cpuset.cpus`, `cpuset.mems`                       |
//! | `cpu.shares`                         | `cpu.weight` = 1 + (shares - 2) * 9999 / 262142    |
//! | `cpu.quota`, `cpu.period`            | `cpu.max` "QUOTA PERIOD" ("max" for quota <= 0)    |
//! | `cpu.burst`, `cpu.idle`              | `cpu.max.burst`, `cpu.idle`                        |
//! | `memory.limit`, `memory.reservation` | `memory.max`, `memory.low` (-1: "max")             |
//! | `memory.swap` (memory + swap)        | `memory.swap.max` = swap - limit                   |
//! | `pids.limit`                         | `pids.max` (<= 0: "max")                           |
//! | `blockIO.weight`, `weightDevice`     | `io.bfq.weight` if present, else `io.weight`       |
//! |                                      | converted: 1 + (w - 10) * 9999 / 990               |
//! | `blockIO.throttle*Device`            | `io.max` "MAJ:MIN rbps= wbps= riops= wiops="       |
//! | `hugepageLimits`                     | `hugetlb.SIZE.max` (and `.rsvd.max` if present)    |
//! | `rdma`                               | `rdma.max` "DEV hca_handle= hca_object="           |
//! | `unified`                            | the named files, last (they override the above)    |
//!
//! Zero means "not set" for `memory.*`, `cpu.shares`, `blockIO.weight` (as in runc). Ignored
//! (logged at debug): `devices` (no files in v2: device access is an eBPF program),
//! `memory.kernel`, `memory.kernelTCP`, `memory.swappiness`, `blockIO.leafWeight`, `network`
//! (no net_cls/net_prio in v2). Refused: `memory.disableOOMKiller: true` and realtime CPU.
//! A throttle rate of 0 is written as "max" (no limit), as 0 meant in cgroup v1.

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};
use tracing::debug;

use super::CgroupError;

/// One write to a control file of the cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileWrite {
    /// The control file's name.
    pub file: String,
    /// What to write.
    pub value: String,
}

/// `cgroup.*` files that `unified` may not write: they move, freeze or kill processes.
const UNIFIED_DENIED: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.kill",
    "cgroup.freeze",
];

/// The writes that apply `res` to the cgroup `dir`, in order; `exists` says whether a control
/// file exists there. Nothing is written: errors come before any write.
pub(crate) fn plan(
    res: &LinuxResources,
    dir: &Path,
    exists: &dyn Fn(&str) -> bool,
) -> Result<Vec<FileWrite>, CgroupError> {
    let mut p = Plan {
        dir,
        exists,
        writes: Vec::new(),
    };
    if let Some(cpu) = res.cpu() {
        p.cpu(cpu)?;
    }
    if let Some(mem) = res.memory() {
        p.memory(mem)?;
    }
    if let Some(pids) = res.pids() {
        let limit = pids.limit();
        let value = if limit <= 0 {
            "max".to_string()
        } else {
            limit.to_string()
        };
        p.push("pids.max", value)?;
    }
    if let Some(bio) = res.block_io() {
        p.block_io(bio)?;
    }
    for h in res.hugepage_limits().iter().flatten() {
        p.hugepage(h.page_size(), h.limit())?;
    }
    if let Some(rdma) = res.rdma() {
        let sorted: BTreeMap<_, _> = rdma.iter().collect();
        for (dev, r) in sorted {
            p.rdma(dev, r.hca_handles(), r.hca_objects())?;
        }
    }
    if res.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        debug!("linux.resources.devices ignored: cgroup v2 has no device files");
    }
    if res.network().is_some() {
        debug!("linux.resources.network ignored: cgroup v2 has no net_cls/net_prio");
    }
    if let Some(unified) = res.unified() {
        let sorted: BTreeMap<_, _> = unified.iter().collect();
        for (key, value) in sorted {
            p.unified(key, value)?;
        }
    }
    Ok(p.writes)
}

struct Plan<'a> {
    dir: &'a Path,
    exists: &'a dyn Fn(&str) -> bool,
    writes: Vec<FileWrite>,
}

impl Plan<'_> {
    /// Queues a write to `file`, which must exist (else its controller is not enabled).
    fn push(&mut self, file: &str, value: String) -> Result<(), CgroupError> {
        if !(self.exists)(file) {
            let controller = file.split('.').next().unwrap_or(file).to_string();
            return Err(CgroupError::ControllerNotEnabled {
                controller,
                file: file.to_string(),
                dir: self.dir.to_path_buf(),
            });
        }
        self.writes.push(FileWrite {
            file: file.to_string(),
            value,
        });
        Ok(())
    }

    fn cpu(&mut self, cpu: &LinuxCpu) -> Result<(), CgroupError> {
        for (field, v) in [
            (
                "cpu.realtimeRuntime",
                cpu.realtime_runtime().filter(|&v| v != 0),
            ),
            (
                "cpu.realtimePeriod",
                cpu.realtime_period().map(|v| v as i64).filter(|&v| v != 0),
            ),
        ] {
            if v.is_some() {
                return Err(CgroupError::Unsupported {
                    field,
                    reason: "cgroup v2 has no realtime CPU controls",
                });
            }
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.trim().is_empty()) {
            self.push("cpuset.cpus", cpu_list("cpu.cpus", cpus)?)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.trim().is_empty()) {
            self.push("cpuset.mems", cpu_list("cpu.mems", mems)?)?;
        }
        if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
            self.push("cpu.weight", shares_to_weight(shares).to_string())?;
        }
        self.cpu_max(cpu)?;
        if let Some(burst) = cpu.burst() {
            self.push("cpu.max.burst", burst.to_string())?;
        }
        if let Some(idle) = cpu.idle() {
            if !(0..=1).contains(&idle) {
                return Err(out_of_range("cpu.idle", idle, "must be 0 or 1"));
            }
            self.push("cpu.idle", idle.to_string())?;
        }
        Ok(())
    }

    /// `cpu.max` from `cpu.quota` and `cpu.period` (default period 100 ms; a quota <= 0 is
    /// no limit).
    fn cpu_max(&mut self, cpu: &LinuxCpu) -> Result<(), CgroupError> {
        let quota = cpu.quota().unwrap_or(0);
        let period = cpu.period().unwrap_or(0);
        if quota == 0 && period == 0 {
            return Ok(());
        }
        let period = if period == 0 { 100_000 } else { period };
        if !(1_000..=1_000_000).contains(&period) {
            return Err(out_of_range(
                "cpu.period",
                period,
                "must be 1000..=1000000 µs",
            ));
        }
        if quota > 0 && quota < 1_000 {
            return Err(out_of_range(
                "cpu.quota",
                quota,
                "must be >= 1000 µs, or <= 0 for no limit",
            ));
        }
        let quota = if quota > 0 {
            quota.to_string()
        } else {
            "max".to_string()
        };
        self.push("cpu.max", format!("{quota} {period}"))
    }

    fn memory(&mut self, mem: &LinuxMemory) -> Result<(), CgroupError> {
        if mem.disable_oom_killer() == Some(true) {
            return Err(CgroupError::Unsupported {
                field: "memory.disableOOMKiller",
                reason: "cgroup v2 cannot disable the OOM killer",
            });
        }
        if mem.kernel().is_some() || mem.kernel_tcp().is_some() {
            debug!("linux.resources.memory.kernel/kernelTCP ignored: not in cgroup v2");
        }
        if mem.swappiness().is_some() {
            debug!("linux.resources.memory.swappiness ignored: not in cgroup v2");
        }
        let limit = mem.limit().unwrap_or(0);
        let reservation = mem.reservation().unwrap_or(0);
        let limit_str = memory_value("memory.limit", limit)?;
        let low_str = memory_value("memory.reservation", reservation)?;
        if let Some(swap) = swap_max(limit, mem.swap().unwrap_or(0))? {
            if (self.exists)("memory.swap.max") {
                self.push("memory.swap.max", swap)?;
            } else if swap == "max" || swap == "0" {
                // No swap in this kernel: "unlimited" and "none" both hold already.
                debug!(swap, "no memory.swap.max: swap setting skipped");
            } else {
                self.push("memory.swap.max", swap)?;
            }
        }
        if let Some(v) = limit_str {
            self.push("memory.max", v)?;
        }
        if let Some(v) = low_str {
            self.push("memory.low", v)?;
        }
        Ok(())
    }

    fn block_io(&mut self, bio: &LinuxBlockIo) -> Result<(), CgroupError> {
        if bio.leaf_weight().is_some() {
            debug!("linux.resources.blockIO.leafWeight ignored: not in cgroup v2");
        }
        self.io_weights(bio)?;
        self.io_limits(bio)
    }

    /// `blockIO.weight` and `weightDevice`: `io.bfq.weight` where BFQ is there, else
    /// `io.weight` (scaled).
    fn io_weights(&mut self, bio: &LinuxBlockIo) -> Result<(), CgroupError> {
        let bfq = (self.exists)("io.bfq.weight");
        if let Some(w) = bio.weight().filter(|&w| w != 0) {
            let w = blkio_weight("blockIO.weight", w)?;
            if bfq {
                self.push("io.bfq.weight", w.to_string())?;
            } else {
                self.push("io.weight", format!("default {}", blkio_to_io_weight(w)))?;
            }
        }
        for wd in bio.weight_device().iter().flatten() {
            let dev = device("blockIO.weightDevice", wd.major(), wd.minor())?;
            if wd.leaf_weight().is_some() {
                debug!("linux.resources.blockIO.weightDevice.leafWeight ignored");
            }
            let Some(w) = wd.weight() else { continue };
            let w = blkio_weight("blockIO.weightDevice.weight", w)?;
            if bfq {
                self.push("io.bfq.weight", format!("{dev} {w}"))?;
            } else {
                self.push("io.weight", format!("{dev} {}", blkio_to_io_weight(w)))?;
            }
        }
        Ok(())
    }

    /// The throttle lists as `io.max`, one line per device.
    fn io_limits(&mut self, bio: &LinuxBlockIo) -> Result<(), CgroupError> {
        let mut limits: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
        for (field, key, list) in [
            (
                "blockIO.throttleReadBpsDevice",
                "rbps",
                bio.throttle_read_bps_device(),
            ),
            (
                "blockIO.throttleWriteBpsDevice",
                "wbps",
                bio.throttle_write_bps_device(),
            ),
            (
                "blockIO.throttleReadIOPSDevice",
                "riops",
                bio.throttle_read_iops_device(),
            ),
            (
                "blockIO.throttleWriteIOPSDevice",
                "wiops",
                bio.throttle_write_iops_device(),
            ),
        ] {
            for td in list.iter().flatten() {
                let major = u64::try_from(td.major())
                    .map_err(|_| out_of_range(field, td.major(), "negative major"))?;
                let minor = u64::try_from(td.minor())
                    .map_err(|_| out_of_range(field, td.minor(), "negative minor"))?;
                let rate = match td.rate() {
                    0 => "max".to_string(),
                    r => r.to_string(),
                };
                limits
                    .entry((major, minor))
                    .or_default()
                    .push(format!("{key}={rate}"));
            }
        }
        for ((major, minor), kv) in limits {
            self.push("io.max", format!("{major}:{minor} {}", kv.join(" ")))?;
        }
        Ok(())
    }

    fn hugepage(&mut self, size: &str, limit: i64) -> Result<(), CgroupError> {
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(out_of_range(
                "hugepageLimits.pageSize",
                size,
                "must be like 2MB or 1GB",
            ));
        }
        let value = match limit {
            -1 => "max".to_string(),
            l if l < 0 => {
                return Err(out_of_range(
                    "hugepageLimits.limit",
                    l,
                    "must be >= 0 or -1",
                ))
            }
            l => l.to_string(),
        };
        let rsvd = format!("hugetlb.{size}.rsvd.max");
        if (self.exists)(&rsvd) {
            self.push(&rsvd, value.clone())?;
        }
        self.push(&format!("hugetlb.{size}.max"), value)
    }

    fn rdma(
        &mut self,
        dev: &str,
        handles: Option<u32>,
        objects: Option<u32>,
    ) -> Result<(), CgroupError> {
        if dev.is_empty()
            || dev
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(out_of_range("rdma", dev, "device name must be one word"));
        }
        let mut value = dev.to_string();
        if let Some(h) = handles {
            value.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = objects {
            value.push_str(&format!(" hca_object={o}"));
        }
        if handles.is_some() || objects.is_some() {
            self.push("rdma.max", value)?;
        }
        Ok(())
    }

    fn unified(&mut self, key: &str, value: &str) -> Result<(), CgroupError> {
        let bad = |reason| CgroupError::UnifiedKey {
            key: key.to_string(),
            reason,
        };
        if key.is_empty() || key == "." || key == ".." || key.contains('/') || key.contains('\0') {
            return Err(bad("not a plain file name"));
        }
        if UNIFIED_DENIED.contains(&key) {
            return Err(bad("moves, freezes or kills processes; not a resource"));
        }
        if !(self.exists)(key) {
            return Err(bad(
                "no such control file in the cgroup (controller not enabled?)",
            ));
        }
        self.writes.push(FileWrite {
            file: key.to_string(),
            value: value.to_string(),
        });
        Ok(())
    }
}

/// `cpu.shares` (cgroup v1, 2..=262144, default 1024) to `cpu.weight` (1..=10000, default
/// 100), as runc's `ConvertCPUSharesToCgroupV2Value`.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// blkio weight (10..=1000) to `io.weight` (1..=10000), as runc's
/// `ConvertBlkIOToIOWeightValue`.
pub(crate) fn blkio_to_io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight) - 10) * 9999 / 990
}

/// A memory value: `None` for 0 (not set), "max" for -1, the bytes otherwise.
fn memory_value(field: &'static str, v: i64) -> Result<Option<String>, CgroupError> {
    match v {
        0 => Ok(None),
        -1 => Ok(Some("max".to_string())),
        v if v < 0 => Err(out_of_range(field, v, "must be > 0, or -1 for no limit")),
        v => Ok(Some(v.to_string())),
    }
}

/// `memory.swap.max` for OCI `memory.swap` (memory + swap) and `memory.limit`, as runc's
/// `ConvertMemorySwapToCgroupV2Value`; `None`: leave it.
fn swap_max(limit: i64, swap: i64) -> Result<Option<String>, CgroupError> {
    // An unlimited memory with swap unset means both unlimited (cgroup v1 compatibility).
    if limit == -1 && swap == 0 {
        return Ok(Some("max".to_string()));
    }
    match swap {
        0 => return Ok(None),
        -1 => return Ok(Some("max".to_string())),
        s if s < 0 => {
            return Err(out_of_range(
                "memory.swap",
                s,
                "must be > 0, or -1 for no limit",
            ))
        }
        _ => {}
    }
    if limit == 0 || limit == -1 {
        return Err(out_of_range(
            "memory.swap",
            swap,
            "a swap limit needs a memory limit",
        ));
    }
    if swap < limit {
        return Err(out_of_range(
            "memory.swap",
            swap,
            "memory+swap must be >= memory.limit",
        ));
    }
    Ok(Some((swap - limit).to_string()))
}

/// A cpuset list ("0-3,6"): digits, ',', '-' only.
fn cpu_list(field: &'static str, list: &str) -> Result<String, CgroupError> {
    let list = list.trim();
    if !list
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
    {
        return Err(out_of_range(field, list, "must be a list like 0-3,6"));
    }
    Ok(list.to_string())
}

fn blkio_weight(field: &'static str, w: u16) -> Result<u16, CgroupError> {
    if !(10..=1000).contains(&w) {
        return Err(out_of_range(field, w, "must be 10..=1000"));
    }
    Ok(w)
}

fn device(field: &'static str, major: i64, minor: i64) -> Result<String, CgroupError> {
    if major < 0 || minor < 0 {
        return Err(out_of_range(
            field,
            format!("{major}:{minor}"),
            "negative device number",
        ));
    }
    Ok(format!("{major}:{minor}"))
}

fn out_of_range(field: &'static str, value: impl ToString, reason: &'static str) -> CgroupError {
    CgroupError::OutOfRange {
        field,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests;
