//! The agent's cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`, the
//! type `ctr task metrics` and the CRI plugin decode.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use moat_agent_protocol::agent::{MemoryStats, StatsContainerResponse};

/// The type URL containerd's typeurl registry gives cgroup v2 metrics.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Maps the agent's statistics to containerd's cgroup v2 metrics.
pub fn to_metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(p) = s.pids.as_ref() {
        m.pids = Some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        })
        .into();
    }
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = Some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        })
        .into();
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = Some(memory_stat(mem)).into();
        m.memory_events = Some(MemoryEvents {
            low: mem.events_low,
            high: mem.events_high,
            max: mem.events_max,
            oom: mem.events_oom,
            oom_kill: mem.events_oom_kill,
            ..Default::default()
        })
        .into();
    }
    if !s.io.is_empty() {
        m.io = Some(IOStat {
            usage: s
                .io
                .iter()
                .map(|d| IOEntry {
                    major: d.major,
                    minor: d.minor,
                    rbytes: d.rbytes,
                    wbytes: d.wbytes,
                    rios: d.rios,
                    wios: d.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into();
    }
    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|h| HugeTlbStat {
            current: h.current,
            max: h.max,
            pagesize: h.pagesize.clone(),
            ..Default::default()
        })
        .collect();
    m
}

/// The agent's memory statistics (`memory.current`, `memory.max`, `memory.stat` keys) as
/// containerd's `MemoryStat`.
fn memory_stat(mem: &MemoryStats) -> MemoryStat {
    let k = |key: &str| mem.stat.get(key).copied().unwrap_or(0);
    MemoryStat {
        anon: k("anon"),
        file: k("file"),
        kernel_stack: k("kernel_stack"),
        slab: k("slab"),
        sock: k("sock"),
        shmem: k("shmem"),
        file_mapped: k("file_mapped"),
        file_dirty: k("file_dirty"),
        file_writeback: k("file_writeback"),
        anon_thp: k("anon_thp"),
        inactive_anon: k("inactive_anon"),
        active_anon: k("active_anon"),
        inactive_file: k("inactive_file"),
        active_file: k("active_file"),
        unevictable: k("unevictable"),
        slab_reclaimable: k("slab_reclaimable"),
        slab_unreclaimable: k("slab_unreclaimable"),
        pgfault: k("pgfault"),
        pgmajfault: k("pgmajfault"),
        workingset_refault: k("workingset_refault"),
        workingset_activate: k("workingset_activate"),
        workingset_nodereclaim: k("workingset_nodereclaim"),
        pgrefill: k("pgrefill"),
        pgscan: k("pgscan"),
        pgsteal: k("pgsteal"),
        pgactivate: k("pgactivate"),
        pgdeactivate: k("pgdeactivate"),
        pglazyfree: k("pglazyfree"),
        pglazyfreed: k("pglazyfreed"),
        thp_fault_alloc: k("thp_fault_alloc"),
        thp_collapse_alloc: k("thp_collapse_alloc"),
        usage: mem.usage,
        usage_limit: mem.limit,
        swap_usage: mem.swap_usage,
        swap_limit: mem.swap_limit,
        ..Default::default()
    }
}

/// [`to_metrics`] packed the way containerd's `StatsResponse.stats` expects.
pub fn to_any(s: &StatsContainerResponse) -> Result<Any, String> {
    let bytes = to_metrics(s)
        .write_to_bytes()
        .map_err(|e| format!("encoding metrics: {e}"))?;
    let mut any = Any::new();
    any.type_url = METRICS_V2_TYPE_URL.into();
    any.value = bytes;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_agent_protocol::agent::{CpuStats, PidsStats};

    #[test]
    fn maps_every_controller() {
        let mut s = StatsContainerResponse::new();
        let mut cpu = CpuStats::new();
        cpu.usage_usec = 10;
        cpu.user_usec = 7;
        s.cpu = Some(cpu).into();
        let mut mem = MemoryStats::new();
        mem.usage = 4096;
        mem.limit = 1 << 20;
        mem.events_oom_kill = 2;
        mem.stat.insert("anon".into(), 100);
        s.memory = Some(mem).into();
        let mut pids = PidsStats::new();
        pids.current = 3;
        pids.limit = 16;
        s.pids = Some(pids).into();
        let m = to_metrics(&s);
        assert_eq!(m.cpu.usage_usec, 10);
        assert_eq!(m.cpu.user_usec, 7);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.memory.anon, 100);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!((m.pids.current, m.pids.limit), (3, 16));
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE_URL);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }
}
