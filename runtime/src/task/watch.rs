//! How the shim learns about exits: one `WaitProcess` watcher thread per started process,
//! the VMM's death (every process still running exits at once), and the agent's OOM events.
//! The first exit recorded for a process wins, wakes `Wait` callers and is published as
//! `TaskExit`.
//!
//! All of it is driven by the guest, which may lie: exits are recorded only for processes the
//! shim started (a watcher each), with an exit status checked to be one a process can have;
//! OOM events only for containers of this pod, each container's at most once per
//! [`OOM_DEDUP`], and the agent is asked for them (and for exits) at a bounded rate
//! ([`OOM_RATE`], [`WAIT_RATE`]), so an agent answering at once cannot make the shim spin. An
//! id the shim refuses reaches the log escaped and cut, in rate-limited warnings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use moat_vmm_config::status::describe;

use super::process::{Exit, VM_DIED_STATUS};
use super::state::Tasks;
use crate::error::agent_code;
use crate::guard::limits::{
    MAX_LOG_ID, OOM_DEDUP, OOM_RATE, OOM_SLICE, OUTPUT_DRAIN, WAIT_RATE, WAIT_SLICE, WARN_RATE,
};
use crate::guard::rate::{Dedup, Throttle, TokenBucket};
use crate::guard::text::{escape, Untrusted};
use crate::pod::io::ProcessIo;
use crate::pod::Pod;
use crate::vm::Agent;

impl Tasks {
    /// Records an exit once, wakes waiters and publishes `TaskExit`.
    pub(super) fn record_exit(&self, cid: &str, exec: &str, status: u32) {
        let exit = Exit::now(status);
        let pid = {
            let mut st = self.lock();
            let Some(p) = st
                .containers
                .get_mut(cid)
                .and_then(|c| c.process_mut(exec).ok())
            else {
                return;
            };
            if !p.set_exit(exit) {
                return;
            }
            st.host_pid()
        };
        self.exited.notify_all();
        crate::plog!(Info, container = cid; "{cid}/{exec}: exited with {status}");
        let ev = TaskExit {
            container_id: cid.into(),
            id: if exec.is_empty() { cid } else { exec }.into(),
            pid,
            exit_status: status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    }

    /// Watches a started process until it exits, then records the exit after its output.
    pub(super) fn watch(&self, pod: Arc<Pod>, cid: String, exec: String) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        std::thread::spawn(move || {
            let alive = || pod.vm.exited().is_none();
            let status = wait_process(&pod.vm.client, alive, &cid, &exec);
            // The output is waited for without the state lock, which every RPC takes.
            let outputs = {
                let st = this.lock();
                st.containers
                    .get(&cid)
                    .and_then(|c| c.process(&exec).ok())
                    .and_then(|p| p.io.as_ref())
                    .map(ProcessIo::outputs)
            };
            if let Some(outputs) = outputs {
                if !outputs.wait(OUTPUT_DRAIN) {
                    crate::plog!(Warn, container = cid; "{cid}/{exec}: output still open {OUTPUT_DRAIN:?} after exit");
                }
            }
            this.record_exit(&cid, &exec, status);
        });
    }

    /// The VMM ended: every process still running exits with [`VM_DIED_STATUS`].
    pub(super) fn vm_died(&self, status: i32) {
        let running: Vec<(String, String)> = {
            let st = self.lock();
            st.containers
                .iter()
                .flat_map(|(cid, c)| {
                    let init = c.init.exit.is_none().then(|| (cid.clone(), String::new()));
                    let execs = c
                        .execs
                        .iter()
                        .filter(|(_, p)| p.exit.is_none())
                        .map(|(e, _)| (cid.clone(), e.clone()));
                    init.into_iter().chain(execs).collect::<Vec<_>>()
                })
                .collect()
        };
        if running.is_empty() {
            crate::plog!(Info, "the pod's VM ended ({})", describe(status));
        } else {
            crate::plog!(
                Error,
                "the pod's VM ended ({}) under {} running process(es)",
                describe(status),
                running.len()
            );
        }
        for (cid, exec) in running {
            self.record_exit(&cid, &exec, VM_DIED_STATUS);
        }
    }

    /// Forwards the OOM kills the agent reports for this pod's containers as `TaskOOM`,
    /// until the VM ends ([`forward_oom`]).
    pub(super) fn watch_oom(&self, pod: Arc<Pod>) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        std::thread::spawn(move || {
            let owns = |id: &str| this.lock().containers.contains_key(id);
            let publish = |id: &str| {
                crate::plog!(Info, container = id; "{id}: OOM kill in the guest");
                let ev = TaskOOM {
                    container_id: id.into(),
                    ..Default::default()
                };
                this.events
                    .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev));
            };
            forward_oom(&pod.vm.client, || pod.vm.exited().is_none(), owns, publish);
        });
    }

    /// Stops the pod's VM and removes its directory, once.
    pub(super) fn end_pod(&self) {
        let pod = self.lock().take_pod();
        if let Some(pod) = pod {
            pod.teardown();
        }
    }
}

/// Blocks until process (`cid`, `exec`) exits; its status, or [`VM_DIED_STATUS`] when the VM
/// (`alive()` false) or the process's record in the agent is gone. Asks at most at
/// [`WAIT_RATE`].
fn wait_process(agent: &Agent, alive: impl Fn() -> bool, cid: &str, exec: &str) -> u32 {
    let mut pace = TokenBucket::new(WAIT_RATE);
    loop {
        if !alive() {
            return VM_DIED_STATUS;
        }
        pace.take();
        match agent.wait_process(cid, exec, WAIT_SLICE) {
            Ok(r) => return exit_status(cid, exec, r.status),
            Err(e) if e.is_timeout() => continue,
            Err(e) if agent_code(&e) == Some(Code::NOT_FOUND) => return VM_DIED_STATUS,
            Err(e) => {
                crate::plog!(Debug, container = cid; "{cid}/{exec}: WaitProcess: {}", Untrusted(&e));
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The exit status the agent reported, if a process can have it (0–255: a code, or 128 + a
/// signal); [`VM_DIED_STATUS`] otherwise.
fn exit_status(cid: &str, exec: &str, status: i32) -> u32 {
    match u32::try_from(status) {
        Ok(s) if s <= 255 => s,
        _ => {
            crate::plog!(
                Warn,
                "{cid}/{exec}: the agent reported exit status {status}: using {VM_DIED_STATUS}"
            );
            VM_DIED_STATUS
        }
    }
}

/// Asks the agent for OOM events until `alive()` is false (at most at [`OOM_RATE`]) and hands
/// `publish` those it should publish ([`OomGate`]); `owns(id)` says whether `id` is a
/// container of this pod.
pub(super) fn forward_oom(
    agent: &Agent,
    alive: impl Fn() -> bool,
    owns: impl Fn(&str) -> bool,
    mut publish: impl FnMut(&str),
) {
    let mut gate = OomGate::new();
    let mut pace = TokenBucket::new(OOM_RATE);
    while alive() {
        pace.take();
        match agent.get_oom_event(OOM_SLICE) {
            Ok(Some(id)) => {
                if gate.admit(&id, owns(&id), Instant::now()) {
                    publish(&id);
                }
            }
            Ok(None) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Which OOM events are published: those of the pod's own containers, each container's at
/// most once per [`OOM_DEDUP`]; the others are dropped with a rate-limited warning.
struct OomGate {
    dedup: Dedup,
    warn: Throttle,
}

impl OomGate {
    fn new() -> OomGate {
        OomGate {
            dedup: Dedup::new(OOM_DEDUP),
            warn: Throttle::new(WARN_RATE),
        }
    }

    /// Whether an event for `id` (`owned`: a container of this pod) at `now` is published.
    fn admit(&mut self, id: &str, owned: bool, now: Instant) -> bool {
        if owned {
            return self.dedup.first_at(id, now);
        }
        if let Some(before) = self.warn.admit_at(now) {
            let more = match before {
                0 => String::new(),
                n => format!(" ({n} more such events dropped before it)"),
            };
            crate::plog!(
                Warn,
                "the agent reported an OOM kill in {}, not a container of this pod: dropped{more}",
                quoted_id(id)
            );
        }
        false
    }
}

/// A guest-chosen id for a log line: quoted, escaped, cut at [`MAX_LOG_ID`] bytes.
fn quoted_id(id: &str) -> String {
    format!("\"{}\"", escape(id, MAX_LOG_ID))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::agent::testing::{FakeAgent, Script};
    use crate::vm::Deadlines;

    #[test]
    fn oom_events_only_for_owned_ids_deduplicated_and_paced() {
        let hostile = vec![
            "c1".to_string(),
            "not-ours".into(),
            "x".repeat(1 << 20),
            "evil\n time=\"0\" level=error msg=\"forged\"".into(),
            "c1".into(),
            "c2".into(),
        ];
        let fake = FakeAgent::start(Script {
            oom_ids: hostile,
            ..Default::default()
        });
        let agent = fake.agent(Deadlines::DEFAULT);
        let run = Duration::from_millis(2500);
        let start = Instant::now();
        let mut published = Vec::new();
        forward_oom(
            &agent,
            || start.elapsed() < run,
            |id| id == "c1" || id == "c2",
            |id| published.push(id.to_string()),
        );
        let took = start.elapsed();
        assert!(took < run + Duration::from_secs(5), "{took:?}");
        // Nothing false, each container at most once per OOM_DEDUP.
        assert!(published.iter().all(|id| id == "c1" || id == "c2"));
        let times = |id: &str| published.iter().filter(|p| *p == id).count();
        assert!((1..=3).contains(&times("c1")), "{published:?}");
        assert!((1..=3).contains(&times("c2")), "{published:?}");
        // The agent answers at once; the shim asked at most at OOM_RATE.
        let asked = fake.calls("GetOOMEvent") as f64;
        let most = f64::from(OOM_RATE.burst) + f64::from(OOM_RATE.per_sec) * took.as_secs_f64();
        assert!(asked <= most + 1.0, "{asked} > {most}");
    }

    #[test]
    fn the_oom_gate_drops_strangers_and_repeats() {
        let mut gate = OomGate::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(gate.admit("c1", true, t0));
        assert!(!gate.admit("c1", true, t0 + ms(500)));
        assert!(gate.admit("c2", true, t0 + ms(500)));
        assert!(gate.admit("c1", true, t0 + OOM_DEDUP));
        for i in 0..10_000 {
            assert!(!gate.admit(&format!("stranger{i}"), false, t0));
        }
        // Strangers leave nothing behind.
        assert_eq!(gate.dedup.len(), 2);
    }

    #[test]
    fn guest_ids_are_cut_and_escaped_before_logging() {
        let id = format!("a\"b\n{}", "z".repeat(4 << 20));
        let q = quoted_id(&id);
        assert!(q.len() <= MAX_LOG_ID + 2 + crate::guard::text::CUT_MARK.len());
        assert!(q.starts_with(r#""a\"b\nzz"#) && !q.contains('\n'), "{q}");
    }

    #[test]
    fn exit_statuses_are_checked_and_the_watcher_is_paced() {
        for (reported, recorded) in [
            (0, 0),
            (7, 7),
            (137, 137),
            (255, 255),
            (256, 255),
            (-1, 255),
        ] {
            let fake = FakeAgent::start(Script {
                wait_status: Some(reported),
                ..Default::default()
            });
            let agent = fake.agent(Deadlines::DEFAULT);
            assert_eq!(wait_process(&agent, || true, "c", ""), recorded);
        }
        // An agent that answers "still running" at once instead of blocking.
        let fake = FakeAgent::start(Script::default());
        let agent = fake.agent(Deadlines::DEFAULT);
        let start = Instant::now();
        let run = Duration::from_secs(2);
        let status = wait_process(&agent, || start.elapsed() < run, "c", "");
        assert_eq!(status, VM_DIED_STATUS);
        let asked = fake.calls("WaitProcess") as f64;
        let most = f64::from(WAIT_RATE.burst) + f64::from(WAIT_RATE.per_sec) * 3.0;
        assert!(asked <= most, "{asked} > {most}");
    }
}
