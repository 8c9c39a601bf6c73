//! Statistics of a cgroup v2 directory, parsed from its control files (formats from the
//! kernel's Documentation/admin-guide/cgroup-v2.rst). Missing files read as zeros or empty;
//! malformed lines are skipped.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{read_optional, CgroupError};

/// Everything [`super::Cgroup::stats`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// `cpu.stat`.
    pub cpu: CpuStats,
    /// `memory.*`.
    pub memory: MemoryStats,
    /// `pids.*`.
    pub pids: PidsStats,
    /// `io.stat`, one entry per device, in the kernel's order.
    pub io: Vec<IoDeviceStats>,
    /// `hugetlb.<size>.*`, one entry per page size, sorted by name.
    pub hugetlb: Vec<HugetlbStats>,
}

/// `cpu.stat` (microseconds and counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Total CPU time.
    pub usage_usec: u64,
    /// User CPU time.
    pub user_usec: u64,
    /// System CPU time.
    pub system_usec: u64,
    /// Enforcement periods elapsed (with a `cpu.max` quota).
    pub nr_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Total time throttled.
    pub throttled_usec: u64,
}

/// Memory usage and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// `memory.current` (bytes).
    pub current: u64,
    /// `memory.max` (bytes; `u64::MAX` for "max", 0 without a memory controller).
    pub max: u64,
    /// `memory.swap.current` (bytes).
    pub swap_current: u64,
    /// `memory.swap.max` (bytes; `u64::MAX` for "max", 0 without swap accounting).
    pub swap_max: u64,
    /// `memory.stat`, every key.
    pub stat: BTreeMap<String, u64>,
    /// `memory.events`.
    pub events: MemoryEvents,
}

/// `memory.events` counters (hierarchical: they include descendants).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Reclaims below `memory.low`.
    pub low: u64,
    /// Times over `memory.high` (throttled).
    pub high: u64,
    /// Times at `memory.max` (reclaim or OOM about to happen).
    pub max: u64,
    /// Times the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

/// `pids.current` and `pids.max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidsStats {
    /// Processes (tasks) in the cgroup.
    pub current: u64,
    /// The limit; 0 for "max" (no limit).
    pub max: u64,
}

/// One device line of `io.stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoDeviceStats {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// One hugepage size of the hugetlb controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugetlbStats {
    /// The page size as the kernel names it (`2MB`, `1GB`).
    pub page_size: String,
    /// `hugetlb.<size>.current` (bytes).
    pub current: u64,
    /// `hugetlb.<size>.max` (bytes; `u64::MAX` for "max", 0 if missing).
    pub max: u64,
    /// Allocations that failed at the limit (`max` of `hugetlb.<size>.events`).
    pub failcnt: u64,
}

/// Reads every statistic of the cgroup `dir`.
pub(super) fn read_stats(dir: &Path) -> Result<CgroupStats, CgroupError> {
    let read = |name: &str| -> Result<String, CgroupError> {
        Ok(read_optional(&dir.join(name))?.unwrap_or_default())
    };
    let cpu = flat_keyed(&read("cpu.stat")?);
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let cpu = CpuStats {
        usage_usec: get(&cpu, "usage_usec"),
        user_usec: get(&cpu, "user_usec"),
        system_usec: get(&cpu, "system_usec"),
        nr_periods: get(&cpu, "nr_periods"),
        nr_throttled: get(&cpu, "nr_throttled"),
        throttled_usec: get(&cpu, "throttled_usec"),
    };
    let memory = MemoryStats {
        current: single_value(&read("memory.current")?, 0),
        max: single_value(&read("memory.max")?, u64::MAX),
        swap_current: single_value(&read("memory.swap.current")?, 0),
        swap_max: single_value(&read("memory.swap.max")?, u64::MAX),
        stat: flat_keyed(&read("memory.stat")?),
        events: MemoryEvents::parse(&read("memory.events")?),
    };
    let pids = PidsStats {
        current: single_value(&read("pids.current")?, 0),
        // "max" and a missing file both mean no limit: 0.
        max: single_value(&read("pids.max")?, 0),
    };
    let io = parse_io_stat(&read("io.stat")?);
    let mut hugetlb = Vec::new();
    for size in hugetlb_sizes(dir)? {
        let events = flat_keyed(&read(&format!("hugetlb.{size}.events"))?);
        hugetlb.push(HugetlbStats {
            current: single_value(&read(&format!("hugetlb.{size}.current"))?, 0),
            max: single_value(&read(&format!("hugetlb.{size}.max"))?, u64::MAX),
            failcnt: get(&events, "max"),
            page_size: size,
        });
    }
    Ok(CgroupStats {
        cpu,
        memory,
        pids,
        io,
        hugetlb,
    })
}

/// A flat-keyed file ("KEY VALUE" per line) as a map; malformed lines are skipped.
pub(super) fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) {
            if let Ok(value) = value.parse::<u64>() {
                map.insert(key.to_string(), value);
            }
        }
    }
    map
}

/// A single-value file: the number, `if_max` for "max", 0 if missing (empty) or malformed.
pub(super) fn single_value(text: &str, if_max: u64) -> u64 {
    match text.trim() {
        "max" => if_max,
        v => v.parse().unwrap_or(0),
    }
}

impl MemoryEvents {
    /// Parses the content of `memory.events`; unknown keys (`oom_group_kill`,
    /// `sock_throttled`) are ignored, missing ones are 0, a key given twice counts the last.
    pub fn parse(text: &str) -> MemoryEvents {
        let m = flat_keyed(text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        MemoryEvents {
            low: get("low"),
            high: get("high"),
            max: get("max"),
            oom: get("oom"),
            oom_kill: get("oom_kill"),
        }
    }
}

/// `io.stat`: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N" per device. Lines
/// without a valid device are skipped; malformed or unknown keys are ignored.
pub(super) fn parse_io_stat(text: &str) -> Vec<IoDeviceStats> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some((major, minor)) = words.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        let mut dev = IoDeviceStats {
            major,
            minor,
            ..Default::default()
        };
        for kv in words {
            let Some((key, value)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "rbytes" => dev.rbytes = value,
                "wbytes" => dev.wbytes = value,
                "rios" => dev.rios = value,
                "wios" => dev.wios = value,
                _ => {}
            }
        }
        out.push(dev);
    }
    out
}

/// The page sizes with a `hugetlb.<size>.current` file in `dir`, sorted.
fn hugetlb_sizes(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(super::io_err("reading", dir, source)),
    };
    let mut sizes: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(".current")?;
            // Not `hugetlb.2MB.rsvd.current`.
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort();
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::cgroup::Cgroup;
    use crate::testing::{tempdir, TempDirExt};

    // Sample contents in the formats of Documentation/admin-guide/cgroup-v2.rst (6.12).
    const CPU_STAT: &str = "usage_usec 2105734\nuser_usec 1503011\nsystem_usec 602723\n\
        core_sched.force_idle_usec 0\nnr_periods 120\nnr_throttled 7\nthrottled_usec 352001\n\
        nr_bursts 0\nburst_usec 0\n";
    const MEMORY_STAT: &str = "anon 1593344\nfile 6115328\nkernel 1261568\nkernel_stack 65536\n\
        pagetables 126976\nsock 0\nshmem 0\nfile_mapped 4521984\nfile_dirty 0\n\
        inactive_anon 1589248\nactive_file 2101248\npgfault 2391\npgmajfault 13\n";
    const MEMORY_EVENTS: &str = "low 0\nhigh 3\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
    const IO_STAT: &str =
        "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
        8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n";

    #[test]
    fn flat_keyed_skips_malformed_lines() {
        let m = flat_keyed("a 1\nb\nc x\nd 2 3\n\ne  4 \n");
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            [("a".into(), 1), ("e".into(), 4)]
        );
    }

    #[test]
    fn single_values() {
        assert_eq!(single_value("max\n", u64::MAX), u64::MAX);
        assert_eq!(single_value("max\n", 0), 0);
        assert_eq!(single_value("4096\n", u64::MAX), 4096);
        assert_eq!(single_value("", 7), 0);
        assert_eq!(single_value("junk", 7), 0);
    }

    #[test]
    fn io_stat_lines() {
        let mut text = IO_STAT.to_string();
        text.push_str("garbage\n8:x rbytes=1\n253:0 rbytes=5 wios=oops newkey=9\n");
        let io = parse_io_stat(&text);
        assert_eq!(io.len(), 3);
        assert_eq!(
            io[0],
            IoDeviceStats {
                major: 8,
                minor: 16,
                rbytes: 1459200,
                wbytes: 314773504,
                rios: 192,
                wios: 353
            }
        );
        assert_eq!(
            (io[1].major, io[1].minor, io[1].rios, io[1].wios),
            (8, 0, 8950, 1252)
        );
        assert_eq!(
            io[2],
            IoDeviceStats {
                major: 253,
                rbytes: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn stats_of_a_full_cgroup() {
        let t = tempdir("stats");
        t.file("cpu.stat", CPU_STAT);
        t.file("memory.current", "8970240\n");
        t.file("memory.max", "268435456\n");
        t.file("memory.swap.current", "0\n");
        t.file("memory.swap.max", "max\n");
        t.file("memory.stat", MEMORY_STAT);
        t.file("memory.events", MEMORY_EVENTS);
        t.file("pids.current", "3\n");
        t.file("pids.max", "max\n");
        t.file("io.stat", IO_STAT);
        t.file("hugetlb.2MB.current", "4194304\n");
        t.file("hugetlb.2MB.max", "8388608\n");
        t.file("hugetlb.2MB.events", "max 5\n");
        t.file("hugetlb.2MB.rsvd.current", "0\n");
        t.file("hugetlb.1GB.current", "0\n");
        t.file("hugetlb.1GB.max", "max\n");
        let s = Cgroup::open(t.path()).stats().unwrap();
        assert_eq!(
            s.cpu,
            CpuStats {
                usage_usec: 2105734,
                user_usec: 1503011,
                system_usec: 602723,
                nr_periods: 120,
                nr_throttled: 7,
                throttled_usec: 352001
            }
        );
        assert_eq!(
            (
                s.memory.current,
                s.memory.max,
                s.memory.swap_current,
                s.memory.swap_max
            ),
            (8970240, 268435456, 0, u64::MAX)
        );
        assert_eq!(s.memory.stat.len(), 13);
        assert_eq!(s.memory.stat["file_mapped"], 4521984);
        assert_eq!(
            s.memory.events,
            MemoryEvents {
                low: 0,
                high: 3,
                max: 12,
                oom: 2,
                oom_kill: 1
            }
        );
        assert_eq!(s.pids, PidsStats { current: 3, max: 0 });
        assert_eq!(s.io.len(), 2);
        assert_eq!(
            s.hugetlb,
            [
                HugetlbStats {
                    page_size: "1GB".into(),
                    current: 0,
                    max: u64::MAX,
                    failcnt: 0
                },
                HugetlbStats {
                    page_size: "2MB".into(),
                    current: 4194304,
                    max: 8388608,
                    failcnt: 5
                }
            ]
        );
    }

    #[test]
    fn stats_of_an_empty_or_missing_dir() {
        let t = tempdir("stats-empty");
        t.file("pids.max", "100\n");
        let s = Cgroup::open(t.path()).stats().unwrap();
        assert_eq!(s.cpu, CpuStats::default());
        assert_eq!((s.memory.current, s.memory.max), (0, 0));
        assert!(s.memory.stat.is_empty() && s.io.is_empty() && s.hugetlb.is_empty());
        assert_eq!(s.pids.max, 100);
        let gone = Cgroup::open(t.path().join("gone")).stats().unwrap();
        assert_eq!(gone.pids, PidsStats::default());
    }
}
