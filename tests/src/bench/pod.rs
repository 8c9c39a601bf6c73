//! The pod benchmark (`moat-bench pod`): moat through containerd against runc through the same
//! containerd, in the same run, on the same busybox image.
//!
//! - **`ctr run --rm IMAGE ID true`**, alternating moat and runc so drift hits both alike
//!   (after one warm-up of each): median wall time and the moat/runc ratio. For moat this is
//!   shim start + VM boot + agent + container + teardown.
//! - **Host memory of one idle pod** (`ctr run -d ... sleep`): the proportional set size
//!   (PSS, `/proc/PID/smaps_rollup`) of the pod's shim and everything under it — for moat the
//!   shim and moat-vmm, whose guest RAM mapping holds the guest memory actually touched
//!   (reported on its own too); for runc the shim and the container's processes.
//!
//! Reports, asserts nothing.

use std::path::Path;
use std::time::Duration;

use moat_runtime::RUNTIME_ID;

use super::report::{median, mib, ms, ratio};
use crate::containerd::moat_stack::{Stack, VM_MEMORY_MIB};
use crate::containerd::sys;

/// containerd's runc runtime, the baseline.
pub const RUNC: &str = "io.containerd.runc.v2";

/// Medians of one runtime.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeNumbers {
    /// Median wall time of `ctr run --rm ... true`, µs.
    pub run_rm_us: Option<u64>,
    /// PSS of the idle pod's host processes, KiB.
    pub idle_pss_kib: Option<u64>,
    /// Of that, the PSS of the guest RAM mapping (moat only), KiB.
    pub guest_ram_pss_kib: Option<u64>,
}

/// Runs `runs` alternating `ctr run --rm` of each runtime (after one warm-up each), then
/// measures one idle pod of each, and prints the report.
pub fn run(stack: &Stack, runs: u32) -> Result<(RuntimeNumbers, RuntimeNumbers), String> {
    let variants = [(RUNTIME_ID, "moat"), (RUNC, "runc")];
    let [moat_t, runc_t] = alternate(stack, runs, variants, |_| Ok(()))?;
    let mut moat = RuntimeNumbers {
        run_rm_us: moat_t,
        ..Default::default()
    };
    let mut runc = RuntimeNumbers {
        run_rm_us: runc_t,
        ..Default::default()
    };
    (moat.idle_pss_kib, moat.guest_ram_pss_kib) = idle_pod(stack, RUNTIME_ID)?;
    (runc.idle_pss_kib, _) = idle_pod(stack, RUNC)?;
    print_report(runs, &moat, &runc);
    let variants = [(RUNTIME_ID, "jail-on"), (RUNTIME_ID, "jail-off")];
    let [on, off] = alternate(stack, runs, variants, |v| unconfined(stack, v == 1))?;
    unconfined(stack, false)?;
    println!(
        "  ctr run --rm IMAGE true, moat-vmm jailed+filtered vs neither ([debug] no_jail, \
         no_seccomp):  on {}  off {}  ratio on/off {}",
        ms(on, 0),
        ms(off, 0),
        ratio(on, off)
    );
    Ok((moat, runc))
}

/// Median wall time of `ctr run --rm IMAGE true` for each `(runtime, label)` variant, run
/// alternately (after one warm-up each) so drift hits all alike; `prepare(i)` readies variant
/// `i` before each of its runs.
fn alternate<const N: usize>(
    stack: &Stack,
    runs: u32,
    variants: [(&str, &str); N],
    prepare: impl Fn(usize) -> Result<(), String>,
) -> Result<[Option<u64>; N], String> {
    let mut times: [Vec<u64>; N] = std::array::from_fn(|_| Vec::new());
    for i in 0..=runs {
        for (v, (runtime, label)) in variants.iter().enumerate() {
            prepare(v)?;
            let id = format!("bench-{label}-{i}");
            let out = stack.run_rm_with(runtime, &id, &["true"], None)?;
            if out.code() != Some(0) {
                return Err(format!(
                    "{label}: ctr run --rm exited {:?}: {}\n{}",
                    out.code(),
                    out.stderr_str(),
                    stack.log()
                ));
            }
            if i > 0 {
                times[v].push(out.elapsed.as_micros() as u64);
            }
        }
    }
    Ok(times.map(median))
}

/// Writes the stack's shim configuration with moat-vmm's jail and filters off (`off`) or on.
fn unconfined(stack: &Stack, off: bool) -> Result<(), String> {
    let mut cfg = moat_runtime::Config::load(&stack.config).map_err(|e| e.to_string())?;
    cfg.debug.no_jail = off;
    cfg.debug.no_seccomp = off;
    std::fs::write(&stack.config, cfg.to_toml()).map_err(|e| e.to_string())
}

fn print_report(runs: u32, moat: &RuntimeNumbers, runc: &RuntimeNumbers) {
    println!("moat-bench pod: {runs} runs each after a warm-up, medians; busybox image");
    println!(
        "  ctr run --rm IMAGE true:  moat {}  runc {}  ratio moat/runc {}",
        ms(moat.run_rm_us, 0),
        ms(runc.run_rm_us, 0),
        ratio(moat.run_rm_us, runc.run_rm_us)
    );
    println!(
        "  idle pod host PSS:        moat {} (guest RAM touched {} of {VM_MEMORY_MIB} MiB)  \
         runc {}  ratio moat/runc {}",
        mib(moat.idle_pss_kib, 1),
        mib(moat.guest_ram_pss_kib, 1),
        mib(runc.idle_pss_kib, 1),
        ratio(moat.idle_pss_kib, runc.idle_pss_kib)
    );
}

/// Starts container `id` with `runtime` running `sleep 3600` (`ctr run -d`), waits until it
/// runs and lets it settle for 3 s. Remove it with [`Stack::kill_and_delete`].
pub(crate) fn start_idle_pod(stack: &Stack, runtime: &str, id: &str) -> Result<(), String> {
    let image = stack.image.as_str();
    let run = [
        "run",
        "-d",
        "--null-io",
        "--runtime",
        runtime,
        image,
        id,
        "sleep",
        "3600",
    ];
    stack
        .containerd
        .ctr_ok(&run)
        .map_err(|e| format!("{runtime}: {e}"))?;
    stack.wait_task_status(id, "RUNNING", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    Ok(())
}

/// Starts an idle pod with `runtime`, lets it settle, measures the PSS of its shim and the
/// shim's descendants (and of moat-vmm's guest RAM mapping), removes it.
fn idle_pod(stack: &Stack, runtime: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let id = format!("idle-{}", short(runtime));
    start_idle_pod(stack, runtime, &id)?;
    let procs = sys::list();
    let shims = sys::with_address(&procs, stack.containerd.address());
    let ours: Vec<u32> = shims
        .into_iter()
        .filter(|pid| {
            procs.iter().any(|p| {
                p.0 == *pid
                    && p.2
                        .first()
                        .is_some_and(|a| String::from_utf8_lossy(a).contains(short(runtime)))
            })
        })
        .collect();
    let pids = sys::descendants(&procs, &ours);
    let pss: Option<u64> = pids.iter().map(|p| pss_kib(*p)).sum();
    let guest = pids.iter().find_map(|p| guest_ram_pss_kib(*p));
    stack.kill_and_delete(&id, Duration::from_secs(60));
    if ours.is_empty() {
        return Err(format!("{runtime}: no shim process found for the idle pod"));
    }
    Ok((pss, guest))
}

/// `Pss:` of `/proc/PID/smaps_rollup`, KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&text, "Pss:")
}

/// The PSS of moat-vmm's guest RAM: its one mapping of exactly [`VM_MEMORY_MIB`].
fn guest_ram_pss_kib(pid: u32) -> Option<u64> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    if exe.file_name() != Some(Path::new("moat-vmm").as_os_str()) {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    // Each mapping's `Size:` comes before its `Pss:`.
    let mut in_guest_ram = false;
    for line in text.lines() {
        if let Some(size) = field_kib(line, "Size:") {
            in_guest_ram = size == VM_MEMORY_MIB * 1024;
        } else if in_guest_ram {
            if let Some(pss) = field_kib(line, "Pss:") {
                return Some(pss);
            }
        }
    }
    None
}

/// The value of `name  N kB` in a smaps text.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn short(runtime: &str) -> &'static str {
    if runtime == RUNC {
        "runc"
    } else {
        "moat"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_fields() {
        let t = "Rss:  12 kB\nPss:   7 kB\n";
        assert_eq!(field_kib(t, "Pss:"), Some(7));
        assert_eq!(field_kib(t, "Size:"), None);
    }

    #[test]
    fn own_pss_is_readable() {
        assert!(pss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
