//! Boot metrics measured inside the VMM: time to the first KVM_RUN, time to the guest's /init
//! (boot timer), and the VMM's own resident memory excluding guest RAM; plus the frame
//! counters of each virtio-net device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::util::lock;

/// Metrics of one VMM run; every value is set at most once.
pub struct Metrics {
    start: Instant,
    start_monotonic_ns: u64,
    first_kvm_run: OnceLock<Duration>,
    guest_init: OnceLock<Duration>,
    rss_excl_guest_kib: OnceLock<u64>,
    guest_ranges: Mutex<Vec<(u64, u64)>>,
    /// `/proc/self/smaps`, opened before the jail drops `/proc`.
    smaps: Mutex<Option<std::fs::File>>,
    phases: Mutex<Vec<(&'static str, u64)>>,
    net: Mutex<Vec<(String, String, Arc<NetCounters>)>>,
}

/// Frame counters of one virtio-net device, updated by the device as it runs.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered into guest RX buffers.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames (Ethernet frame, virtio header not counted).
    pub rx_bytes: AtomicU64,
    /// Frames read from the backend and dropped: larger than the posted chain, or runts.
    pub rx_dropped: AtomicU64,
    /// Malformed RX chains (readable or out-of-memory descriptors, too small), used with 0.
    pub rx_bad_chains: AtomicU64,
    /// Frames the guest sent that reached the backend.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames (virtio header not counted).
    pub tx_bytes: AtomicU64,
    /// Well-formed guest frames the backend refused (write error).
    pub tx_dropped: AtomicU64,
    /// Malformed TX chains (writable or out-of-memory descriptors, over 64 KiB, runts).
    pub tx_bad_chains: AtomicU64,
}

/// A serializable view of one virtio-net device's counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct NetSnapshot {
    /// The backend (e.g. `tap:tap0`).
    pub backend: String,
    /// The guest's MAC address.
    pub mac: String,
    /// See [`NetCounters::rx_frames`].
    pub rx_frames: u64,
    /// See [`NetCounters::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`NetCounters::rx_dropped`].
    pub rx_dropped: u64,
    /// See [`NetCounters::rx_bad_chains`].
    pub rx_bad_chains: u64,
    /// See [`NetCounters::tx_frames`].
    pub tx_frames: u64,
    /// See [`NetCounters::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`NetCounters::tx_dropped`].
    pub tx_dropped: u64,
    /// See [`NetCounters::tx_bad_chains`].
    pub tx_bad_chains: u64,
}

impl NetCounters {
    /// The current values, labelled with the device's backend and MAC.
    pub fn snapshot(&self, backend: &str, mac: &str) -> NetSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetSnapshot {
            backend: backend.to_string(),
            mac: mac.to_string(),
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            rx_bad_chains: get(&self.rx_bad_chains),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            tx_bad_chains: get(&self.tx_bad_chains),
        }
    }
}

/// A serializable view of the metrics (written to the metrics file at exit).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// CLOCK_MONOTONIC at VMM start, in ns (compare with a launcher's own clock reading).
    pub vmm_start_monotonic_ns: u64,
    /// Microseconds from VMM start to the first KVM_RUN of vCPU 0.
    pub first_kvm_run_us: Option<u64>,
    /// Microseconds from VMM start to the guest's boot-timer write (/init reached).
    pub guest_init_us: Option<u64>,
    /// Resident set of the VMM process without guest RAM, in KiB, sampled at /init.
    pub rss_excl_guest_kib: Option<u64>,
    /// Why the VM stopped, once it has.
    pub exit_reason: Option<String>,
    /// Setup phases, each with the microseconds since VMM start at which it ended.
    pub phases_us: Vec<(String, u64)>,
    /// Frame counters of each virtio-net device, in device order.
    pub net: Vec<NetSnapshot>,
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
            rss_excl_guest_kib: OnceLock::new(),
            guest_ranges: Mutex::new(Vec::new()),
            smaps: Mutex::new(None),
            phases: Mutex::new(Vec::new()),
            net: Mutex::new(Vec::new()),
        }
    }

    /// Reports the counters of a virtio-net device (backend and MAC label them).
    pub fn add_net(&self, backend: String, mac: String, counters: Arc<NetCounters>) {
        lock(&self.net).push((backend, mac, counters));
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
        if let Some(smaps) = lock(&self.smaps).as_ref().and_then(read_from_start) {
            let _ = self
                .rss_excl_guest_kib
                .set(rss_excluding(&smaps, &lock(&self.guest_ranges)));
        }
        true
    }

    /// Current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            vmm_start_monotonic_ns: self.start_monotonic_ns,
            first_kvm_run_us: self.first_kvm_run.get().map(|d| d.as_micros() as u64),
            guest_init_us: self.guest_init.get().map(|d| d.as_micros() as u64),
            rss_excl_guest_kib: self.rss_excl_guest_kib.get().copied(),
            exit_reason: None,
            phases_us: lock(&self.phases)
                .iter()
                .map(|(n, us)| (n.to_string(), *us))
                .collect(),
            net: lock(&self.net)
                .iter()
                .map(|(backend, mac, c)| c.snapshot(backend, mac))
                .collect(),
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
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0010000 r-xp 00000000 fd:00 1 /usr/bin/moat-vmm
Size:                 64 kB
Rss:                  40 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:              100000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
";

    #[test]
    fn guest_ram_is_left_out() {
        assert_eq!(rss_excluding(SMAPS, &[]), 100_052);
        assert_eq!(rss_excluding(SMAPS, &[(0x7f00_0000_0000, 0x800_0000)]), 52);
    }

    #[test]
    fn first_marks_win() {
        let m = Metrics::new();
        // Opens /proc/self/smaps (as Vmm::new does, before any jail drops /proc).
        m.set_guest_ranges(Vec::new());
        m.mark_first_kvm_run();
        let first = m.snapshot().first_kvm_run_us;
        std::thread::sleep(Duration::from_millis(2));
        m.mark_first_kvm_run();
        assert_eq!(m.snapshot().first_kvm_run_us, first);
        assert!(m.mark_guest_init());
        assert!(!m.mark_guest_init());
        assert!(m.snapshot().rss_excl_guest_kib.unwrap() > 0);
    }
}
