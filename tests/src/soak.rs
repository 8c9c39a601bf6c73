//! The pod lifecycle soak: rounds of pods created and torn down through containerd, several at
//! once, each pod living one of the [`Life`]s (a plain `ctr run --rm`; exec then stop; its VMM
//! or its shim killed with SIGKILL), and every few rounds containerd itself killed and
//! restarted under running pods. After each round nothing may be left: no moat process,
//! mount, pod dir or cgroup ([`Stack::leftovers`]), no fifo ctr made under
//! `/run/containerd/fifo`, no containerd task, container or snapshot beyond the image's, no
//! new network interface or network namespace.
//!
//! `moat-soak pods ROUNDS PODS` runs it by hand at any size; `tests/tests/lifecycle_soak.rs`
//! runs a small one in CI.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::containerd::moat_stack::Stack;

/// How long a pod's task may take to reach a state.
const SETTLE: Duration = Duration::from_secs(60);
/// Every this many rounds, containerd is restarted under that round's pods.
pub const RESTART_EVERY: usize = 3;

/// One pod's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// `ctr run --rm ... true`.
    RunRm,
    /// Detached; an exec; SIGKILL; task and container deleted.
    ExecThenStop,
    /// Detached; its moat-vmm killed with SIGKILL; deleted.
    VmmKilled,
    /// Detached; its shim killed with SIGKILL; the container deleted.
    ShimKilled,
}

impl Life {
    /// Every life, in the order a round's pods cycle through them.
    pub const ALL: [Life; 4] = [
        Life::RunRm,
        Life::ExecThenStop,
        Life::VmmKilled,
        Life::ShimKilled,
    ];

    /// The life of the soak's `n`th pod (counting every round's pods in turn): consecutive
    /// pods cycle through [`Life::ALL`], so two rounds of two pods see every life.
    pub fn of(n: usize) -> Life {
        Life::ALL[n % Life::ALL.len()]
    }
}

/// What a soak did.
#[derive(Debug, Default)]
pub struct Report {
    /// Rounds run.
    pub rounds: usize,
    /// Pods created in all.
    pub pods: usize,
    /// containerd restarts under running pods.
    pub restarts: usize,
    /// Guest crashes seen (each a finding: the nested test host's, or moat's).
    pub guest_crashes: usize,
    /// Wall time of the slowest round.
    pub slowest_round: Duration,
}

/// What must be back to its start state after every round.
#[derive(Debug, PartialEq, Eq)]
struct Baseline {
    links: BTreeSet<String>,
    netns: BTreeSet<String>,
    snapshots: BTreeSet<String>,
}

impl Baseline {
    fn take(s: &Stack) -> Baseline {
        Baseline {
            links: dir_names(Path::new("/sys/class/net")),
            netns: dir_names(Path::new("/run/netns")),
            snapshots: ctr_ids(s, &["snapshots", "ls"]),
        }
    }
}

/// The entry names of `dir` (none if it does not exist).
fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The first column of `ctr ARGS`' table, header left out.
fn ctr_ids(s: &Stack, args: &[&str]) -> BTreeSet<String> {
    let out = s.ctr_ok(args).stdout_str();
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Runs `rounds` rounds of `pods` pods at once on `s`; after each, checks that nothing is
/// left. `Err` names the first round that failed and why (its pods' failures, or what was
/// left).
pub fn run(s: &mut Stack, rounds: usize, pods: usize) -> Result<Report, String> {
    let base = Baseline::take(s);
    let mut report = Report::default();
    for round in 0..rounds {
        let started = Instant::now();
        let restart = (round + 1) % RESTART_EVERY == 0;
        if restart {
            restart_under_pods(s, round, pods)?;
            report.restarts += 1;
        } else {
            let failures = run_lanes(s, round, pods);
            if !failures.is_empty() {
                return Err(format!("round {round}: {}", failures.join("; ")));
            }
        }
        report.pods += pods;
        check_round(s, &base).map_err(|e| format!("round {round} left {e}"))?;
        report.rounds += 1;
        report.slowest_round = report.slowest_round.max(started.elapsed());
        println!(
            "soak round {round}: {pods} pods{} in {:.1} s, nothing left",
            if restart {
                ", containerd restarted"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
    }
    report.guest_crashes = s.guest_crashes().len();
    Ok(report)
}

/// `pods` pods at once, each living [`Life::of`] its lane; the failures, one line each.
fn run_lanes(s: &Stack, round: usize, pods: usize) -> Vec<String> {
    std::thread::scope(|scope| {
        let lanes: Vec<_> = (0..pods)
            .map(|lane| {
                let id = format!("soak-{round}-{lane}");
                let life = Life::of(round * pods + lane);
                scope.spawn(move || {
                    let lived = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        live(s, &id, life)
                    }));
                    lived.map_err(|p| format!("{id} ({life:?}): {}", panic_text(&p)))
                })
            })
            .collect();
        lanes
            .into_iter()
            .filter_map(|h| h.join().ok()?.err())
            .collect()
    })
}

/// The text of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Pod `id` lives `life` to its end (panics on anything unexpected).
fn live(s: &Stack, id: &str, life: Life) {
    if life == Life::RunRm {
        let o = s.run_rm(id, &["true"], None);
        assert_eq!(o.code(), Some(0), "ctr run --rm: {}", o.stderr_str());
        return;
    }
    s.run_detached(id, &["sleep", "100000"]);
    s.wait_task_status(id, "RUNNING", SETTLE);
    match life {
        Life::ExecThenStop => {
            let out = s.ctr_ok(&["task", "exec", "--exec-id", "e", id, "echo", "hi"]);
            assert_eq!(out.stdout_str().trim(), "hi");
            // SIGKILL: `sleep` as its pid namespace's init ignores SIGTERM.
            s.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
            s.wait_task_status(id, "STOPPED", SETTLE);
            s.ctr_ok(&["task", "delete", id]);
        }
        Life::VmmKilled => {
            let vmm = s.vmm_pid(id).expect("the pod's moat-vmm");
            crate::containerd::moat_stack::sigkill(vmm);
            s.wait_task_status(id, "STOPPED", SETTLE);
            s.ctr_ok(&["task", "delete", id]);
        }
        Life::ShimKilled => {
            let (shim, _) = s.shim_process(id).expect("the pod's shim");
            crate::containerd::moat_stack::sigkill(shim);
            crate::wait_until("containerd drops the task", SETTLE, || {
                !ctr_ids(s, &["task", "ls"]).contains(id)
            });
        }
        Life::RunRm => unreachable!("handled above"),
    }
    s.ctr_ok(&["container", "delete", id]);
}

/// Starts `pods` detached pods, restarts containerd under them, then checks each is still
/// RUNNING, answers an exec and ends with kill and delete.
fn restart_under_pods(s: &mut Stack, round: usize, pods: usize) -> Result<(), String> {
    let ids: Vec<String> = (0..pods).map(|l| format!("soak-{round}-{l}")).collect();
    for id in &ids {
        s.run_detached(id, &["sleep", "100000"]);
        s.wait_task_status(id, "RUNNING", SETTLE);
    }
    s.restart_containerd();
    for id in &ids {
        s.wait_task_status(id, "RUNNING", SETTLE);
        let out = s.ctr_ok(&["task", "exec", "--exec-id", "after", id, "echo", "up"]);
        if out.stdout_str().trim() != "up" {
            return Err(format!("{id}: exec after the restart printed {out:?}"));
        }
        s.kill_and_delete(id, SETTLE);
    }
    Ok(())
}

/// Whatever a round may have left behind, or `Ok`.
fn check_round(s: &Stack, base: &Baseline) -> Result<(), String> {
    if let Some(left) = s.leftovers() {
        return Err(left);
    }
    let mut left = Vec::new();
    let tasks = ctr_ids(s, &["task", "ls"]);
    let containers = ctr_ids(s, &["container", "ls"]);
    if !tasks.is_empty() || !containers.is_empty() {
        left.push(format!("tasks {tasks:?}, containers {containers:?}"));
    }
    let fifos = dir_names(Path::new("/run/containerd/fifo"));
    let fifos: Vec<_> = fifos
        .iter()
        .filter(|d| !dir_names(&Path::new("/run/containerd/fifo").join(d)).is_empty())
        .collect();
    if !fifos.is_empty() {
        left.push(format!("fifos under /run/containerd/fifo: {fifos:?}"));
    }
    let now = Baseline::take(s);
    if now != *base {
        left.push(format!("before {base:?}, after {now:?}"));
    }
    match left.is_empty() {
        true => Ok(()),
        false => Err(left.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_life_comes_round() {
        let lives: BTreeSet<String> = (0..4).map(|n| format!("{:?}", Life::of(n))).collect();
        assert_eq!(lives.len(), Life::ALL.len());
    }

    #[test]
    fn names_of_a_missing_dir_are_none() {
        assert!(dir_names(Path::new("/nonexistent-moat-dir")).is_empty());
    }
}
