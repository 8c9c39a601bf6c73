//! Metrics measured inside the VMM: boot times (first KVM_RUN, the guest's /init through the
//! boot timer, setup phases), the VMM's own resident memory excluding guest RAM, vCPU exits
//! by reason, and each device's counters. They are written as JSON to the metrics file
//! (contract: SPECIFICATION.md, "Metrics") while the VM runs and once more at exit.
//!
//! Layout: [`counters`] (the devices' atomic counters and their snapshots), [`vcpu`] (exit
//! counters per vCPU), [`mod@file`] (the in-place rewrite of the file), [`flush`] (the
//! event-loop subscriber and SIGUSR1).

pub mod counters;
pub mod file;
pub mod flush;
pub mod vcpu;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::util::lock;
pub use counters::{
    bump, BlkCounters, BlkSnapshot, FsCounters, FsSnapshot, NetCounters, NetCounts, NetSnapshot,
    RngCounters, RngSnapshot, VsockCounters, VsockSnapshot,
};
pub use file::MetricsFile;
pub use flush::{install_flush_signal, MetricsFlusher, FLUSH_SIGNAL};
pub use vcpu::{ExitKind, VcpuExitCounters};

/// Metrics of one VMM run; each boot time is set at most once.
pub struct Metrics {
    start: Instant,
    start_monotonic_ns: u64,
    first_kvm_run: OnceLock<Duration>,
    guest_init: OnceLock<Duration>,
    /// Flushes so far (the last snapshot's `seq`).
    seq: AtomicU64,
    rss_excl_guest_kib: Mutex<Option<u64>>,
    guest_ranges: Mutex<Vec<(u64, u64)>>,
    /// `/proc/self/smaps`, opened before the jail drops `/proc`.
    smaps: Mutex<Option<std::fs::File>>,
    phases: Mutex<Vec<(&'static str, u64)>>,
    sources: Mutex<Sources>,
}

/// The counters registered by the vCPUs and devices.
#[derive(Default)]
struct Sources {
    vcpus: Vec<Arc<VcpuExitCounters>>,
    net: Vec<(String, String, Arc<NetCounters>)>,
    blk: Vec<Arc<BlkCounters>>,
    vsock: Option<Arc<VsockCounters>>,
    fs: Vec<Arc<FsCounters>>,
    rng: Option<Arc<RngCounters>>,
}

/// A serializable view of the metrics: one document of the metrics file.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Number of this flush of the metrics file: 1 for the first, one more for each next.
    pub seq: u64,
    /// Microseconds from VMM start to this snapshot.
    pub uptime_us: u64,
    /// CLOCK_MONOTONIC at VMM start, in ns (compare with a launcher's own clock reading).
    pub vmm_start_monotonic_ns: u64,
    /// Microseconds from VMM start to the first KVM_RUN of vCPU 0.
    pub first_kvm_run_us: Option<u64>,
    /// Microseconds from VMM start to the guest's boot-timer write (/init reached).
    pub guest_init_us: Option<u64>,
    /// Resident set of the VMM process without guest RAM, in KiB, sampled at this flush
    /// (and at /init).
    pub rss_excl_guest_kib: Option<u64>,
    /// Why the VM stopped, once it has (only in the last snapshot, written at exit).
    pub exit_reason: Option<String>,
    /// Setup phases, each with the microseconds since VMM start at which it ended.
    pub phases_us: Vec<(String, u64)>,
    /// KVM_RUN exits summed over every vCPU, by reason (every [`ExitKind`] name present).
    pub vcpu_exits: BTreeMap<String, u64>,
    /// Frame counters of each virtio-net device, in device order.
    pub net: Vec<NetSnapshot>,
    /// Counters of each virtio-blk disk, in configuration order.
    pub blk: Vec<BlkSnapshot>,
    /// Counters of the virtio-vsock device, if the VM has one.
    pub vsock: Option<VsockSnapshot>,
    /// Counters of the virtio-fs devices summed over the shares, if the VM has any.
    pub fs: Option<FsSnapshot>,
    /// Counters of the virtio-rng device, if the VM has one.
    pub rng: Option<RngSnapshot>,
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Starts the clock now.
    pub fn new() -> Metrics {
        Metrics {
            start: Instant::now(),
            start_monotonic_ns: monotonic_ns(),
            first_kvm_run: OnceLock::new(),
            guest_init: OnceLock::new(),
            seq: AtomicU64::new(0),
            rss_excl_guest_kib: Mutex::new(None),
            guest_ranges: Mutex::new(Vec::new()),
            smaps: Mutex::new(None),
            phases: Mutex::new(Vec::new()),
            sources: Mutex::new(Sources::default()),
        }
    }

    /// Reports the exit counters of a vCPU.
    pub fn add_vcpu(&self, counters: Arc<VcpuExitCounters>) {
        lock(&self.sources).vcpus.push(counters);
    }

    /// Reports the counters of a virtio-net device (backend and MAC label them).
    pub fn add_net(&self, backend: String, mac: String, counters: Arc<NetCounters>) {
        lock(&self.sources).net.push((backend, mac, counters));
    }

    /// Reports the counters of a virtio-blk disk (disks in configuration order).
    pub fn add_blk(&self, counters: Arc<BlkCounters>) {
        lock(&self.sources).blk.push(counters);
    }

    /// Reports the counters of the virtio-vsock device.
    pub fn set_vsock(&self, counters: Arc<VsockCounters>) {
        lock(&self.sources).vsock = Some(counters);
    }

    /// Reports the counters of a virtio-fs device (summed with the other shares').
    pub fn add_fs(&self, counters: Arc<FsCounters>) {
        lock(&self.sources).fs.push(counters);
    }

    /// Reports the counters of the virtio-rng device.
    pub fn set_rng(&self, counters: Arc<RngCounters>) {
        lock(&self.sources).rng = Some(counters);
    }

    /// Tells which host address ranges hold guest RAM (left out of the RSS figure), and
    /// opens `/proc/self/smaps` now: the jailed VMM has no `/proc` by the time it samples.
    pub fn set_guest_ranges(&self, ranges: Vec<(u64, u64)>) {
        *lock(&self.guest_ranges) = ranges;
        *lock(&self.smaps) = std::fs::File::open("/proc/self/smaps").ok();
    }

    /// Records that setup phase `name` ended now.
    pub fn phase_done(&self, name: &'static str) {
        let us = self.start.elapsed().as_micros() as u64;
        tracing::debug!("{name} done at {us} us");
        lock(&self.phases).push((name, us));
    }

    /// Records the first KVM_RUN (later calls are ignored).
    pub fn mark_first_kvm_run(&self) {
        let _ = self.first_kvm_run.set(self.start.elapsed());
    }

    /// When the guest reached /init (since the VMM started), once it has.
    pub fn guest_init_elapsed(&self) -> Option<Duration> {
        self.guest_init.get().copied()
    }

    /// Time since the VMM started.
    pub fn since_start(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records the guest's /init and samples RSS; true the first time only.
    pub fn mark_guest_init(&self) -> bool {
        if self.guest_init.set(self.start.elapsed()).is_err() {
            return false;
        }
        self.sample_rss();
        true
    }

    /// Samples the RSS without guest RAM from the smaps file opened by
    /// [`Metrics::set_guest_ranges`] (nothing without one).
    fn sample_rss(&self) {
        if let Some(smaps) = lock(&self.smaps).as_ref().and_then(read_from_start) {
            let kib = rss_excluding(&smaps, &lock(&self.guest_ranges));
            *lock(&self.rss_excl_guest_kib) = Some(kib);
        }
    }

    /// The snapshot of the next flush: RSS sampled now, `seq` one higher than the last.
    pub fn next_snapshot(&self) -> MetricsSnapshot {
        self.sample_rss();
        self.seq.fetch_add(1, Ordering::Relaxed);
        self.snapshot()
    }

    /// Current values (`seq` that of the last flush, RSS as last sampled).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let micros = |d: &Duration| d.as_micros() as u64;
        let sources = lock(&self.sources);
        let fs = sources.fs.iter().map(|c| c.values()).reduce(|mut sum, v| {
            sum.add(&v);
            sum
        });
        MetricsSnapshot {
            seq: self.seq.load(Ordering::Relaxed),
            uptime_us: micros(&self.start.elapsed()),
            vmm_start_monotonic_ns: self.start_monotonic_ns,
            first_kvm_run_us: self.first_kvm_run.get().map(micros),
            guest_init_us: self.guest_init.get().map(micros),
            rss_excl_guest_kib: *lock(&self.rss_excl_guest_kib),
            exit_reason: None,
            phases_us: lock(&self.phases)
                .iter()
                .map(|(n, us)| (n.to_string(), *us))
                .collect(),
            vcpu_exits: vcpu::sum_exits(&sources.vcpus),
            net: sources
                .net
                .iter()
                .map(|(backend, mac, c)| c.snapshot(backend, mac))
                .collect(),
            blk: sources.blk.iter().map(|c| c.values()).collect(),
            vsock: sources.vsock.as_ref().map(|c| c.values()),
            fs,
            rng: sources.rng.as_ref().map(|c| c.values()),
        }
    }
}

/// The whole of `file` from offset 0 (pread: a seq_file like smaps regenerates).
fn read_from_start(file: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read_at(&mut buf, out.len() as u64) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Sums the `Rss:` of every mapping in `smaps` that does not overlap a guest range.
pub fn rss_excluding(smaps: &str, guest: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut skip = false;
    for line in smaps.lines() {
        if let Some((start, end)) = mapping_range(line) {
            skip = guest
                .iter()
                .any(|&(g, len)| start < g.saturating_add(len) && g < end);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if !skip {
                total += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn mapping_range(line: &str) -> Option<(u64, u64)> {
    let range = line.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests;
