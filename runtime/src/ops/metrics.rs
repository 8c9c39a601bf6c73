//! A pod's metrics, as its shim serves them (`GET /metrics`): the VM's size and boot time,
//! moat-vmm's own counters (from the metrics file it rewrites while it runs), the agent RPCs
//! the shim made, the guest's memory and load, and each container's cgroup statistics (the
//! same the shim reports to containerd). Every series carries `sandbox_id` and `namespace`;
//! container series also `container_id`.
//!
//! Encoded with `prometheus-client` and served as text format 0.0.4 ([`super::exposition`]).
//! A source that could not be read this time is left out and reported by
//! `moat_scrape_source_ok{source}` = 0.

use std::borrow::Cow;
use std::time::Duration;

use moat_agent_protocol::agent::StatsContainerResponse;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use super::exposition::Exposition;
use crate::vm::agent::rpc_metrics::RpcMetrics;

mod vmm;

pub use vmm::VmmFigures;

/// A float gauge.
type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
/// A float counter.
type FCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// The guest's memory and load (`GetGuestStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct GuestFigures {
    /// MemTotal, KiB.
    pub mem_total_kib: u64,
    /// MemFree, KiB.
    pub mem_free_kib: u64,
    /// MemAvailable, KiB.
    pub mem_available_kib: u64,
    /// Load averages ×1000 (1, 5, 15 min).
    pub load_milli: [u64; 3],
    /// Runnable and total tasks.
    pub procs: (u64, u64),
}

/// Everything one scrape of a pod gathered.
#[derive(Debug, Default)]
pub struct PodFigures {
    /// The pod (sandbox) id.
    pub sandbox_id: String,
    /// The containerd namespace.
    pub namespace: String,
    /// The VM's vCPUs and memory (MiB).
    pub size: (u32, u64),
    /// From starting the VMM to the agent's first answer.
    pub boot: Option<Duration>,
    /// moat-vmm's metrics file, if it could be read.
    pub vmm: Option<VmmFigures>,
    /// The guest's memory and load, if the agent answered.
    pub guest: Option<GuestFigures>,
    /// Each container's statistics (those the agent answered for).
    pub containers: Vec<(String, StatsContainerResponse)>,
    /// Each source and whether it answered (`vmm`, `guest`, `containers`).
    pub sources: Vec<(&'static str, bool)>,
}

/// A container's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabel {
    container_id: String,
}

/// A scrape source's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// The pod's metrics as text format 0.0.4.
pub fn encode(f: &PodFigures, rpc: &RpcMetrics) -> String {
    let labels = [
        ("namespace", f.namespace.clone()),
        ("sandbox_id", f.sandbox_id.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)));
    let mut r = Registry::with_labels(labels);
    vm(&mut r, f);
    if let Some(v) = &f.vmm {
        vmm::register(&mut r, v);
    }
    if let Some(g) = &f.guest {
        guest(&mut r, g);
    }
    containers(&mut r, &f.containers);
    rpc.register(&mut r);
    let sources = Family::<SourceLabel, Gauge>::default();
    for (source, ok) in &f.sources {
        sources
            .get_or_create(&SourceLabel { source })
            .set(i64::from(*ok));
    }
    r.register(
        "moat_scrape_source_ok",
        "Whether this scrape could read the source (vmm, guest, containers): 1 yes, 0 no",
        sources,
    );
    let mut om = String::new();
    // Writing into a String cannot fail.
    let _ = text::encode(&mut om, &r);
    let mut e = Exposition::new();
    e.add(&om);
    e.render()
}

/// Registers a float gauge with value `v`.
fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = FGauge::default();
    g.set(v);
    r.register(name, help, g);
}

/// The VM's size and boot time.
fn vm(r: &mut Registry, f: &PodFigures) {
    gauge(
        r,
        "moat_vm_vcpus",
        "vCPUs of the pod's VM",
        f64::from(f.size.0),
    );
    let mem = (f.size.1 << 20) as f64;
    gauge(r, "moat_vm_memory_bytes", "Memory of the pod's VM", mem);
    if let Some(b) = f.boot {
        let help = "Seconds from starting moat-vmm to the agent's first answer";
        gauge(r, "moat_vm_boot_seconds", help, b.as_secs_f64());
    }
}

/// The guest's memory and load.
fn guest(r: &mut Registry, g: &GuestFigures) {
    let kib = |v: u64| (v << 10) as f64;
    let total = kib(g.mem_total_kib);
    gauge(r, "moat_guest_memory_total_bytes", "Guest MemTotal", total);
    let free = kib(g.mem_free_kib);
    gauge(r, "moat_guest_memory_free_bytes", "Guest MemFree", free);
    let available = kib(g.mem_available_kib);
    let help = "Guest MemAvailable (what the guest could still give its containers)";
    gauge(r, "moat_guest_memory_available_bytes", help, available);
    for (i, minutes) in [1, 5, 15].iter().enumerate() {
        let help = format!("Guest load average over {minutes} min");
        let load = g.load_milli[i] as f64 / 1000.0;
        gauge(r, &format!("moat_guest_load{minutes}"), &help, load);
    }
    let (running, total) = g.procs;
    gauge(
        r,
        "moat_guest_procs_running",
        "Guest runnable tasks",
        running as f64,
    );
    gauge(r, "moat_guest_procs", "Guest tasks", total as f64);
}

/// A container series: name, help, and its value in a container's statistics.
type Series<T> = (&'static str, &'static str, fn(&StatsContainerResponse) -> T);

/// The counters of each container.
const COUNTERS: [Series<f64>; 5] = [
    (
        "moat_container_cpu_usage_seconds",
        "CPU time (cpu.stat usage_usec)",
        |s| usec(s.cpu.usage_usec),
    ),
    ("moat_container_cpu_user_seconds", "User CPU time", |s| {
        usec(s.cpu.user_usec)
    }),
    (
        "moat_container_cpu_system_seconds",
        "System CPU time",
        |s| usec(s.cpu.system_usec),
    ),
    (
        "moat_container_cpu_throttled_seconds",
        "Time throttled by the CPU limit",
        |s| usec(s.cpu.throttled_usec),
    ),
    (
        "moat_container_memory_oom_kills",
        "OOM kills (memory.events oom_kill)",
        |s| s.memory.events_oom_kill as f64,
    ),
];

/// The gauges of each container (`None`: no sample).
const GAUGES: [Series<Option<f64>>; 4] = [
    ("moat_container_memory_usage_bytes", "memory.current", |s| {
        Some(s.memory.usage as f64)
    }),
    (
        "moat_container_memory_limit_bytes",
        "memory.max (absent: no limit)",
        |s| (s.memory.limit != u64::MAX).then_some(s.memory.limit as f64),
    ),
    ("moat_container_pids", "pids.current", |s| {
        Some(s.pids.current as f64)
    }),
    (
        "moat_container_pids_limit",
        "pids.max (absent: no limit)",
        |s| (s.pids.limit != 0).then_some(s.pids.limit as f64),
    ),
];

/// Each container's cgroup statistics.
fn containers(r: &mut Registry, stats: &[(String, StatsContainerResponse)]) {
    for (name, help, get) in COUNTERS {
        let family = Family::<ContainerLabel, FCounter>::default();
        for (id, s) in stats {
            family.get_or_create(&label(id)).inc_by(get(s));
        }
        r.register(name, help, family);
    }
    for (name, help, get) in GAUGES {
        let family = Family::<ContainerLabel, FGauge>::default();
        for (id, s) in stats {
            if let Some(v) = get(s) {
                family.get_or_create(&label(id)).set(v);
            }
        }
        r.register(name, help, family);
    }
    io(r, stats);
}

/// Bytes read and written by each container, summed over its devices.
fn io(r: &mut Registry, stats: &[(String, StatsContainerResponse)]) {
    let read = Family::<ContainerLabel, FCounter>::default();
    let written = Family::<ContainerLabel, FCounter>::default();
    for (id, s) in stats {
        let sum = |f: fn(&moat_agent_protocol::agent::IoStats) -> u64| {
            s.io.iter().map(f).fold(0u64, u64::saturating_add) as f64
        };
        read.get_or_create(&label(id)).inc_by(sum(|d| d.rbytes));
        written.get_or_create(&label(id)).inc_by(sum(|d| d.wbytes));
    }
    r.register("moat_container_io_read_bytes", "Bytes read (io.stat)", read);
    r.register(
        "moat_container_io_written_bytes",
        "Bytes written (io.stat)",
        written,
    );
}

fn label(id: &str) -> ContainerLabel {
    ContainerLabel {
        container_id: id.to_string(),
    }
}

fn usec(v: u64) -> f64 {
    v as f64 / 1e6
}

#[cfg(test)]
mod tests;
