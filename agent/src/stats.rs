//! cgroup statistics ([`CgroupStats`]) as the protocol's `StatsContainerResponse`.

use moat_agent_protocol::agent::{
    CpuStats, HugetlbStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse,
};

use crate::container::cgroup::CgroupStats;

/// Converts the agent's cgroup statistics to the protocol message.
pub fn to_proto(s: &CgroupStats) -> StatsContainerResponse {
    let mut r = StatsContainerResponse::new();
    let mut cpu = CpuStats::new();
    cpu.usage_usec = s.cpu.usage_usec;
    cpu.user_usec = s.cpu.user_usec;
    cpu.system_usec = s.cpu.system_usec;
    cpu.nr_periods = s.cpu.nr_periods;
    cpu.nr_throttled = s.cpu.nr_throttled;
    cpu.throttled_usec = s.cpu.throttled_usec;
    r.cpu = Some(cpu).into();

    let m = &s.memory;
    let mut mem = MemoryStats::new();
    mem.usage = m.current;
    mem.limit = m.max;
    mem.swap_usage = m.swap_current;
    mem.swap_limit = m.swap_max;
    mem.stat = m.stat.iter().map(|(k, v)| (k.clone(), *v)).collect();
    mem.events_low = m.events.low;
    mem.events_high = m.events.high;
    mem.events_max = m.events.max;
    mem.events_oom = m.events.oom;
    mem.events_oom_kill = m.events.oom_kill;
    r.memory = Some(mem).into();

    let mut pids = PidsStats::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.max;
    r.pids = Some(pids).into();

    r.io =
        s.io.iter()
            .map(|d| {
                let mut io = IoStats::new();
                io.major = d.major;
                io.minor = d.minor;
                io.rbytes = d.rbytes;
                io.wbytes = d.wbytes;
                io.rios = d.rios;
                io.wios = d.wios;
                io
            })
            .collect();
    r.hugetlb = s
        .hugetlb
        .iter()
        .map(|h| {
            let mut p = HugetlbStats::new();
            p.pagesize = h.page_size.clone();
            p.current = h.current;
            p.max = h.max;
            p.failcnt = h.failcnt;
            p
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_carried() {
        let mut s = CgroupStats::default();
        s.cpu.usage_usec = 7;
        s.memory.max = u64::MAX;
        s.memory.events.oom_kill = 2;
        s.memory.stat.insert("anon".into(), 4096);
        s.pids.current = 3;
        let r = to_proto(&s);
        assert_eq!(r.cpu.usage_usec, 7);
        assert_eq!(r.memory.limit, u64::MAX);
        assert_eq!(r.memory.events_oom_kill, 2);
        assert_eq!(r.memory.stat["anon"], 4096);
        assert_eq!(r.pids.current, 3);
    }
}
