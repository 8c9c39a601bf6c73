//! How the shim learns about exits: one `WaitProcess` watcher thread per started process,
//! the VMM's death (every process still running exits at once), and the agent's OOM events.
//! The first exit recorded for a process wins, wakes `Wait` callers and is published as
//! `TaskExit`.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use moat_vmm_config::status::describe;

use super::process::{Exit, VM_DIED_STATUS};
use super::state::Tasks;
use crate::error::agent_code;
use crate::pod::io::ProcessIo;
use crate::pod::Pod;

/// How long an exit waits for the process's output to reach containerd (its stream ends when
/// the last writer in the guest is gone; only a daemon keeping stdout open waits this long).
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);
/// How long one `WaitProcess` call may block before it is renewed.
const WAIT_SLICE: Duration = Duration::from_secs(60);
/// How long one `GetOOMEvent` call may block before it is renewed.
const OOM_SLICE: Duration = Duration::from_secs(30);

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
            p.pid
        };
        self.exited.notify_all();
        log::info!("{cid}/{exec}: exited with {status}");
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
            let status = wait_process(&pod, &cid, &exec);
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
                    log::warn!("{cid}/{exec}: output still open {OUTPUT_DRAIN:?} after exit");
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
            log::info!("the pod's VM ended ({})", describe(status));
        } else {
            log::error!(
                "the pod's VM ended ({}) under {} running process(es)",
                describe(status),
                running.len()
            );
        }
        for (cid, exec) in running {
            self.record_exit(&cid, &exec, VM_DIED_STATUS);
        }
    }

    /// Forwards OOM kills reported by the agent as `TaskOOM` until the VM ends.
    pub(super) fn watch_oom(&self, pod: Arc<Pod>) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        std::thread::spawn(move || {
            while pod.vm.exited().is_none() {
                match pod.vm.client.get_oom_event(OOM_SLICE) {
                    Ok(Some(cid)) => {
                        log::info!("{cid}: OOM kill in the guest");
                        let ev = TaskOOM {
                            container_id: cid,
                            ..Default::default()
                        };
                        this.events
                            .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev));
                    }
                    Ok(None) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        });
    }

    /// Stops the pod's VM and removes its directory, once.
    pub(super) fn end_pod(&self) {
        let pod = self.lock().pod.take();
        if let Some(pod) = pod {
            pod.teardown();
        }
    }
}

/// Blocks until process (`cid`, `exec`) exits; its status, or [`VM_DIED_STATUS`] when the VM
/// (or the process's record in the agent) is gone.
fn wait_process(pod: &Pod, cid: &str, exec: &str) -> u32 {
    loop {
        if pod.vm.exited().is_some() {
            return VM_DIED_STATUS;
        }
        match pod.vm.client.wait_process(cid, exec, Some(WAIT_SLICE)) {
            Ok(r) => return r.status as u32,
            Err(e) if e.is_timeout() => continue,
            Err(e) if agent_code(&e) == Some(Code::NOT_FOUND) => return VM_DIED_STATUS,
            Err(e) => {
                log::debug!("{cid}/{exec}: WaitProcess: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}
