//! The agent's cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`, the
//! type `ctr task metrics` and the CRI plugin decode.
//!
//! The agent's reply is untrusted: its lists are cut ([`MAX_STATS_DEVICES`],
//! [`MAX_STATS_HUGETLB`]) and its page size names reduced to short alphanumerics before they
//! reach containerd ([`sanitize`]); when the agent does not answer within the quick deadline,
//! the last good value is served ([`fresh_or_last`]).

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use moat_agent_protocol::agent::{MemoryStats, StatsContainerResponse};
use moat_agent_protocol::ClientError;

use crate::error::TaskError;
use crate::guard::limits::{MAX_PAGESIZE_NAME, MAX_STATS_DEVICES, MAX_STATS_HUGETLB};

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

/// Cuts what a hostile agent could inflate: at most [`MAX_STATS_DEVICES`] block devices and
/// [`MAX_STATS_HUGETLB`] hugetlb sizes, page size names of at most [`MAX_PAGESIZE_NAME`] ASCII
/// letters and digits. (`memory.stat` keys are only looked up, never forwarded.)
pub fn sanitize(mut s: StatsContainerResponse) -> StatsContainerResponse {
    s.io.truncate(MAX_STATS_DEVICES);
    s.hugetlb.truncate(MAX_STATS_HUGETLB);
    for h in &mut s.hugetlb {
        h.pagesize = h
            .pagesize
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(MAX_PAGESIZE_NAME)
            .collect();
    }
    s
}

/// Statistics for containerd, and whether they are fresh.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// From the agent's reply just now.
    Fresh(Any),
    /// The last good value: the agent did not answer in time.
    Last(Any),
}

/// Container `id`'s statistics from the agent's `reply` (sanitized), or `last` when the agent
/// was too slow (or its connection is being made anew): [`TaskError::NoStats`] when there is
/// no last value. Other agent errors are errors.
pub fn fresh_or_last(
    id: &str,
    reply: Result<StatsContainerResponse, ClientError>,
    last: Option<Any>,
) -> Result<Reading, TaskError> {
    match reply {
        Ok(s) => to_any(&sanitize(s))
            .map(Reading::Fresh)
            .map_err(TaskError::Internal),
        Err(e) if slow(&e) => match last {
            Some(any) => {
                crate::plog!(
                    Debug,
                    "{id}: the agent is slow to give statistics: serving the last ones"
                );
                Ok(Reading::Last(any))
            }
            None => Err(TaskError::NoStats {
                id: id.into(),
                source: Box::new(e),
            }),
        },
        Err(e) => Err(TaskError::agent("StatsContainer")(e)),
    }
}

/// Whether the agent did not answer in time (or could not be reached to ask).
fn slow(e: &ClientError) -> bool {
    e.is_timeout() || matches!(e, ClientError::ConnectTimeout { .. })
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
    use moat_agent_protocol::agent::{CpuStats, HugetlbStats, IoStats, PidsStats};
    use std::time::Duration;

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

    #[test]
    fn inflated_replies_are_cut() {
        let mut s = StatsContainerResponse::new();
        s.io = (0..100_000).map(|_| IoStats::new()).collect();
        let mut h = HugetlbStats::new();
        h.pagesize = format!("2MB\n\u{1b}[31m{}", "x".repeat(1 << 20));
        s.hugetlb = vec![h; 1000];
        let s = sanitize(s);
        assert_eq!(s.io.len(), MAX_STATS_DEVICES);
        assert_eq!(s.hugetlb.len(), MAX_STATS_HUGETLB);
        assert_eq!(s.hugetlb[0].pagesize, "2MB31mxxxxxxxxxx");
        let m = to_metrics(&s);
        assert_eq!(m.io.usage.len(), MAX_STATS_DEVICES);
    }

    #[test]
    fn a_slow_agent_gets_the_last_good_value_served() {
        let refused = || ClientError::BadReply {
            method: "AgentService.StatsContainer",
            detail: "not a timeout".into(),
        };
        let fresh = fresh_or_last("c", Ok(StatsContainerResponse::new()), None).unwrap();
        let Reading::Fresh(any) = fresh else {
            panic!("{fresh:?}")
        };
        let silent = || ClientError::ConnectTimeout {
            target: "t".into(),
            timeout: Duration::from_secs(2),
            attempts: 0,
            last: "paused".into(),
        };
        assert_eq!(
            fresh_or_last("c", Err(silent()), Some(any.clone())).unwrap(),
            Reading::Last(any.clone())
        );
        let e = fresh_or_last("c", Err(silent()), None).unwrap_err();
        assert!(matches!(e, TaskError::NoStats { .. }), "{e}");
        assert!(e.to_string().contains("no statistics"), "{e}");
        // Any other failure is an error, whatever was served before.
        let e = fresh_or_last("c", Err(refused()), Some(any)).unwrap_err();
        assert!(matches!(e, TaskError::Agent { .. }), "{e}");
    }

    #[test]
    fn an_agent_that_never_answers_gets_the_last_value_served_within_the_deadline() {
        use crate::vm::agent::testing::{FakeAgent, Script};
        use crate::vm::Deadlines;
        use std::time::Instant;

        let fake = FakeAgent::start(Script {
            stats_hang: true,
            ..Default::default()
        });
        let agent = fake.agent(Deadlines::DEFAULT);
        let last = to_any(&StatsContainerResponse::new()).unwrap();
        let start = Instant::now();
        let r = fresh_or_last("c", agent.stats_container("c"), Some(last.clone()));
        assert_eq!(r.unwrap(), Reading::Last(last));
        let e = fresh_or_last("c", agent.stats_container("c"), None).unwrap_err();
        assert!(matches!(e, TaskError::NoStats { .. }), "{e}");
        assert_eq!(
            e.code(),
            containerd_shim::protos::ttrpc::Code::DEADLINE_EXCEEDED
        );
        let took = start.elapsed();
        assert!(
            took <= 2 * Deadlines::DEFAULT.quick + Duration::from_secs(5),
            "{took:?}"
        );
    }
}
