//! The metrics path's cost (`moat-bench ops`; issue 16: "the metrics path costs < 1% of a
//! pod's CPU at a 15 s scrape interval"). One idle moat pod (busybox `sleep` as PID 1), after a
//! warm-up scrape, through two windows of the same length in one run:
//!
//! - **idle**: nothing happens;
//! - **scraped**: the pod's ops socket is scraped (`GET /metrics`, as `moat monitor` does)
//!   once a second, each scrape's wall time recorded.
//!
//! Over each window, the CPU time (utime + stime of every thread, `/proc/PID/stat`) of the
//! pod's shim, its moat-vmm (the jail's supervisor) and the jailed moat-vmm, whose vCPU
//! threads carry the guest's time. The scraped window's CPU beyond the idle rate, over the
//! scrapes, is what one scrape costs the pod; reported per scrape, and at one scrape every
//! [`INTERVAL`] as a fraction of one CPU and of the idle pod's own use.
//!
//! Reports, asserts nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use moat_runtime::ops::client;
use moat_runtime::RUNTIME_ID;

use super::pod::start_idle_pod;
use super::report::{min_median_max, ms, ratio};
use crate::containerd::moat_stack::Stack;
use crate::containerd::sys;

/// The idle pod's container id.
const POD: &str = "bench-ops";
/// How long the pod may settle after it runs, before the first window.
const SETTLE: Duration = Duration::from_secs(5);
/// The scrape interval the report scales to (Prometheus' usual; issue 16's).
pub const INTERVAL: Duration = Duration::from_secs(15);

/// What one window measured.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The CPU time of each measured process over the window, µs (in
    /// [`OpsNumbers::processes`] order).
    pub cpu_us: Vec<u64>,
    /// The window's wall time.
    pub elapsed: Duration,
}

/// The benchmark's numbers.
#[derive(Debug, Clone, Default)]
pub struct OpsNumbers {
    /// The measured processes, by role: the shim, moat-vmm, the jailed moat-vmm.
    pub processes: Vec<&'static str>,
    /// The idle window.
    pub idle: Window,
    /// The scraped window.
    pub scraped: Window,
    /// Each scrape's wall time, µs.
    pub scrape_us: Vec<u64>,
    /// Scrapes that flagged a source as failed (`moat_scrape_source_ok{...} 0`).
    pub degraded: usize,
    /// Each process's busiest threads in the idle window (in [`OpsNumbers::processes`]
    /// order): where an idle pod's CPU goes.
    pub idle_threads: Vec<Vec<ThreadCpu>>,
}

/// One thread's CPU time over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    /// Its id.
    pub tid: u32,
    /// Its name and where it sleeps at the window's end (`comm`, `wchan`).
    pub name: String,
    /// Its CPU time over the window, µs.
    pub cpu_us: u64,
}

impl OpsNumbers {
    /// The CPU one scrape cost process `i` (`None`: all of them together), µs: the scraped
    /// window's CPU minus the idle window's rate over the scraped window's length, over the
    /// scrapes. May come out below zero within the noise.
    pub fn per_scrape_us(&self, i: Option<usize>) -> f64 {
        let pick = |w: &Window| match i {
            Some(i) => w.cpu_us.get(i).copied().unwrap_or(0) as f64,
            None => w.cpu_us.iter().sum::<u64>() as f64,
        };
        let idle_rate = pick(&self.idle) / self.idle.elapsed.as_secs_f64().max(1e-9);
        let extra = pick(&self.scraped) - idle_rate * self.scraped.elapsed.as_secs_f64();
        extra / self.scrape_us.len().max(1) as f64
    }

    /// The idle pod's CPU use as a fraction of one CPU.
    pub fn idle_fraction(&self) -> f64 {
        let cpu_s = self.idle.cpu_us.iter().sum::<u64>() as f64 / 1e6;
        cpu_s / self.idle.elapsed.as_secs_f64().max(1e-9)
    }

    /// The scrapes' cost at one scrape every [`INTERVAL`], as a fraction of one CPU.
    pub fn interval_fraction(&self) -> f64 {
        self.per_scrape_us(None) / 1e6 / INTERVAL.as_secs_f64()
    }
}

/// Runs the idle pod, measures both windows of `seconds` (the scraped one with `seconds`
/// scrapes), removes the pod and prints the report.
pub fn run(stack: &Stack, seconds: u32) -> Result<OpsNumbers, String> {
    start_idle_pod(stack, RUNTIME_ID, POD)?;
    let numbers = measure_pod(stack, seconds);
    stack.kill_and_delete(POD, Duration::from_secs(60));
    let numbers = numbers?;
    print_report(seconds, &numbers);
    Ok(numbers)
}

/// The two windows of the running pod [`POD`].
fn measure_pod(stack: &Stack, seconds: u32) -> Result<OpsNumbers, String> {
    std::thread::sleep(SETTLE);
    let socket = stack.pod_dir(POD).ops_socket();
    let warm_up = client::metrics(&socket).map_err(|e| format!("warm-up scrape: {e}"))?;
    let labelled = format!("sandbox_id=\"{POD}\"");
    if !warm_up.contains(&labelled) {
        return Err(format!("the pod's scrape has no {labelled}:\n{warm_up}"));
    }
    let roles = pod_processes(stack)?;
    let pids: Vec<u32> = roles.iter().map(|r| r.1).collect();
    let window = Duration::from_secs(seconds.into());
    let threads_before: Vec<_> = pids.iter().map(|p| threads_cpu(*p)).collect();
    let (idle, ()) = measure(&pids, || {
        std::thread::sleep(window);
        Ok(())
    })?;
    let idle_threads = pids
        .iter()
        .zip(&threads_before)
        .map(|(p, before)| busiest_threads(*p, before, 3))
        .collect();
    let (scraped, (scrape_us, degraded)) =
        measure(&pids, || scrape_every_second(&socket, seconds))?;
    Ok(OpsNumbers {
        processes: roles.iter().map(|r| r.0).collect(),
        idle,
        scraped,
        scrape_us,
        degraded,
        idle_threads,
    })
}

/// The pod's shim, its moat-vmm and (when jailed) the jailed moat-vmm, by role.
fn pod_processes(stack: &Stack) -> Result<Vec<(&'static str, u32)>, String> {
    let shim = stack.shim_process(POD).map(|(pid, _)| pid);
    let shim = shim.ok_or("no shim process of the pod")?;
    let vmm = stack.vmm_pid(POD).ok_or("no moat-vmm of the pod")?;
    Ok(match stack.jailed_vmm_pid(POD) {
        Some(jailed) if jailed != vmm => vec![
            ("shim", shim),
            ("moat-vmm (jail supervisor)", vmm),
            ("jailed moat-vmm (+ guest vCPUs)", jailed),
        ],
        _ => vec![("shim", shim), ("moat-vmm (+ guest vCPUs)", vmm)],
    })
}

/// Runs `body`; the CPU time each of `pids` used meanwhile and the wall time, with `body`'s
/// result.
fn measure<T>(
    pids: &[u32],
    body: impl FnOnce() -> Result<T, String>,
) -> Result<(Window, T), String> {
    let before = cpu_all(pids)?;
    let start = Instant::now();
    let out = body()?;
    let elapsed = start.elapsed();
    let after = cpu_all(pids)?;
    let cpu_us = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    Ok((Window { cpu_us, elapsed }, out))
}

/// [`cpu_us`] of each of `pids`; an error once one is gone.
fn cpu_all(pids: &[u32]) -> Result<Vec<u64>, String> {
    pids.iter()
        .map(|p| cpu_us(*p, None).ok_or_else(|| format!("process {p} is gone")))
        .collect()
}

/// The CPU time of each thread of process `pid`, µs, by thread id.
fn threads_cpu(pid: u32) -> BTreeMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((tid, cpu_us(pid, Some(tid))?))
        })
        .collect()
}

/// The `n` threads of `pid` that used the most CPU since `before` was taken, with their
/// names and where they sleep now.
fn busiest_threads(pid: u32, before: &BTreeMap<u32, u64>, n: usize) -> Vec<ThreadCpu> {
    let read = |tid: u32, file: &str| {
        let path = format!("/proc/{pid}/task/{tid}/{file}");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut threads: Vec<ThreadCpu> = threads_cpu(pid)
        .into_iter()
        .map(|(tid, now)| ThreadCpu {
            tid,
            name: format!("{} in {}", read(tid, "comm"), read(tid, "wchan")),
            cpu_us: now.saturating_sub(before.get(&tid).copied().unwrap_or(0)),
        })
        .collect();
    threads.sort_by_key(|t| std::cmp::Reverse(t.cpu_us));
    threads.truncate(n);
    threads
}

/// Scrapes `socket` `n` times, one a second from now (a late one at once), then waits out the
/// last second: each scrape's wall time in µs, and how many flagged a failed source.
fn scrape_every_second(socket: &Path, n: u32) -> Result<(Vec<u64>, usize), String> {
    let start = Instant::now();
    let (mut times, mut degraded) = (Vec::new(), 0);
    for i in 0..n {
        sleep_until(start + Duration::from_secs(i.into()));
        let t = Instant::now();
        let text = client::metrics(socket).map_err(|e| format!("scrape {i}: {e}"))?;
        times.push(t.elapsed().as_micros() as u64);
        degraded += usize::from(source_failed(&text));
    }
    sleep_until(start + Duration::from_secs(n.into()));
    Ok((times, degraded))
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// Whether a scrape flags one of its sources (the VMM file, the guest, a container) as failed.
fn source_failed(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("moat_scrape_source_ok") && l.ends_with(" 0"))
}

/// The kernel's clock ticks per second (`/proc/PID/stat`'s unit).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// [`sys::cpu_ticks`] in µs.
fn cpu_us(pid: u32, tid: Option<u32>) -> Option<u64> {
    Some(sys::cpu_ticks(pid, tid)? * 1_000_000 / clock_ticks())
}

/// Seconds with `decimals` places.
fn secs(us: u64, decimals: usize) -> String {
    format!("{:.*} s", decimals, us as f64 / 1e6)
}

/// A fraction as a percentage with `decimals` places.
fn percent(f: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, f * 100.0)
}

fn print_report(seconds: u32, n: &OpsNumbers) {
    let scrapes = n.scrape_us.len();
    println!(
        "moat-bench ops: one idle moat pod (busybox sleep); {seconds} s idle, then {seconds} s \
         with {scrapes} scrapes of its ops socket (GET /metrics, one a second)"
    );
    let tick_ms = 1000 / clock_ticks();
    println!("  CPU time (utime+stime, all threads; {tick_ms} ms ticks):");
    let head = ("", "idle window", "scraped window", "per scrape");
    println!(
        "    {:<32} {:>11}  {:>14}  {:>11}",
        head.0, head.1, head.2, head.3
    );
    let total = |w: &Window| w.cpu_us.iter().sum::<u64>();
    let rows = n.processes.iter().enumerate().map(|(i, name)| {
        let cpu = |w: &Window| w.cpu_us.get(i).copied().unwrap_or(0);
        (*name, cpu(&n.idle), cpu(&n.scraped), Some(i))
    });
    let all = ("the pod", total(&n.idle), total(&n.scraped), None);
    for (name, idle, scraped, i) in rows.chain(std::iter::once(all)) {
        println!(
            "    {name:<32} {:>11}  {:>14}  {:>8.2} ms",
            secs(idle, 2),
            secs(scraped, 2),
            n.per_scrape_us(i) / 1000.0
        );
    }
    for (name, threads) in n.processes.iter().zip(&n.idle_threads) {
        let list: Vec<String> = threads
            .iter()
            .map(|t| format!("{} ({}) {}", t.tid, t.name, secs(t.cpu_us, 2)))
            .collect();
        println!("  {name}'s busiest threads while idle: {}", list.join(", "));
    }
    let mut wall = n.scrape_us.clone();
    let (median, max) = min_median_max(&mut wall).map_or((None, None), |m| (Some(m.1), Some(m.2)));
    println!(
        "  scrape wall time: median {}  max {}  ({scrapes} scrapes, {} with a source \
         flagged failed)",
        ms(median, 1),
        ms(max, 1),
        n.degraded
    );
    let (cost, idle) = (n.interval_fraction(), n.idle_fraction());
    // As µs of CPU per INTERVAL, for the shared ratio format.
    let per_interval = |f: f64| Some((f.max(0.0) * INTERVAL.as_secs_f64() * 1e6) as u64);
    println!(
        "  at one scrape every {} s: {} of one CPU (issue 16's bound: < 1%)",
        INTERVAL.as_secs(),
        percent(cost, 3)
    );
    println!(
        "  the idle pod itself uses {} of one CPU: ratio scrapes/idle pod {} ({})",
        percent(idle, 2),
        ratio(per_interval(cost), per_interval(idle)),
        percent(cost / idle.max(1e-12), 2)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(cpu_us: Vec<u64>, secs: u64) -> Window {
        Window {
            cpu_us,
            elapsed: Duration::from_secs(secs),
        }
    }

    fn sample() -> OpsNumbers {
        OpsNumbers {
            processes: vec!["shim", "vmm"],
            // Idle: 0.3 s of CPU in 30 s (1% of one CPU).
            idle: window(vec![0, 300_000], 30),
            // Scraped, 31 s: the idle rate accounts for 0.31 s; 0.6 s more over 30 scrapes.
            scraped: window(vec![300_000, 610_000], 31),
            scrape_us: vec![1000; 30],
            degraded: 0,
            idle_threads: vec![Vec::new(), Vec::new()],
        }
    }

    #[test]
    fn per_scrape_is_the_cpu_beyond_the_idle_rate() {
        let n = sample();
        assert!((n.per_scrape_us(Some(0)) - 10_000.0).abs() < 1e-6);
        assert!((n.per_scrape_us(Some(1)) - 10_000.0).abs() < 1e-6);
        assert!((n.per_scrape_us(None) - 20_000.0).abs() < 1e-6);
        assert!((n.idle_fraction() - 0.01).abs() < 1e-9);
        // 20 ms every 15 s.
        assert!((n.interval_fraction() - 0.02 / 15.0).abs() < 1e-12);
    }

    #[test]
    fn the_report_prints_negative_costs_too() {
        let mut n = sample();
        print_report(30, &n);
        n.scraped.cpu_us = vec![0, 0];
        assert!(n.per_scrape_us(None) < 0.0);
        print_report(30, &n);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_us(std::process::id(), None).is_some_and(|us| us > 0));
        assert_eq!(cpu_us(u32::MAX, None), None);
        let me = std::process::id();
        let busiest = busiest_threads(me, &BTreeMap::new(), 1);
        assert_eq!(busiest.len(), 1, "{busiest:?}");
        assert!(busiest[0].cpu_us > 0, "{busiest:?}");
    }

    #[test]
    fn failed_sources_are_seen() {
        let ok = "moat_scrape_source_ok{namespace=\"k8s.io\",source=\"vmm\"} 1\n";
        let failed = "moat_scrape_source_ok{namespace=\"k8s.io\",source=\"guest\"} 0\n";
        assert!(!source_failed(ok));
        assert!(source_failed(&format!("{ok}{failed}")));
    }
}
