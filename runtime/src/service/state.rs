//! The task service's state: the pod, its containers and processes, and the threads that
//! learn about exits (one `WaitProcess` watcher per started process, the VMM's exit, the
//! agent's OOM events).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use containerd_shim::api::Status;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, TtrpcResult};

use crate::config::Config;
use crate::events::Events;
use crate::io::ProcessIo;
use crate::pod::Pod;
use crate::process::{Exit, Process, VM_DIED_STATUS};

/// How long an exit waits for the process's output to reach containerd (its stream ends when
/// the last writer in the guest is gone; only a daemon keeping stdout open waits this long).
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);
/// How long one `WaitProcess` call may block before it is renewed.
const WAIT_SLICE: Duration = Duration::from_secs(60);

/// A ttrpc error with a gRPC code containerd maps to its errdefs.
pub fn rpc_err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// One container of the pod.
pub(super) struct Container {
    pub(super) bundle: String,
    pub(super) is_sandbox: bool,
    pub(super) init: Process,
    pub(super) execs: HashMap<String, Process>,
}

impl Container {
    pub(super) fn process(&self, exec: &str) -> TtrpcResult<&Process> {
        if exec.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec)
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("exec {exec:?} not found")))
    }
    pub(super) fn process_mut(&mut self, exec: &str) -> TtrpcResult<&mut Process> {
        if exec.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec)
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("exec {exec:?} not found")))
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) pod: Option<Arc<Pod>>,
    pub(super) containers: HashMap<String, Container>,
}

/// The task service of one shim (one pod); a handle on [`Inner`].
pub struct Service(pub(super) Arc<Inner>);

impl std::ops::Deref for Service {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The service's state and helpers.
pub struct Inner {
    pub(super) namespace: String,
    pub(super) events: Events,
    pub(super) exit: Arc<ExitSignal>,
    pub(super) state: Mutex<State>,
    pub(super) exited: Condvar,
    /// Serialises pod boot, so two creates never boot two VMs.
    pub(super) boot: Mutex<()>,
    pub(super) this: Weak<Inner>,
}

impl Service {
    /// A service for containerd namespace `namespace`, publishing through `events`; `exit`
    /// is signalled when containerd shuts the shim down.
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> Service {
        Service(Arc::new_cyclic(|this| Inner {
            namespace: namespace.into(),
            events,
            exit,
            state: Mutex::new(State::default()),
            exited: Condvar::new(),
            boot: Mutex::new(()),
            this: this.clone(),
        }))
    }
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pod(&self) -> TtrpcResult<Arc<Pod>> {
        self.lock()
            .pod
            .clone()
            .ok_or_else(|| rpc_err(Code::FAILED_PRECONDITION, "the pod has no VM"))
    }

    pub(super) fn client(&self) -> TtrpcResult<Arc<Pod>> {
        let pod = self.pod()?;
        if let Some(s) = pod.vm.exited() {
            return Err(rpc_err(
                Code::UNAVAILABLE,
                format!("the pod's VM is gone ({})", crate::vm::describe(s)),
            ));
        }
        Ok(pod)
    }

    pub(super) fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("container {id:?} not found")))?;
        f(c)
    }

    /// The init pid of container `id`; FAILED_PRECONDITION unless its init process is in
    /// state `want`.
    pub(super) fn expect_init_status(&self, id: &str, want: Status) -> TtrpcResult<u32> {
        self.with_container(id, |c| match c.init.status {
            s if s == want => Ok(c.init.pid),
            s => Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("container {id} is {s:?}"),
            )),
        })
    }

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
            id: if exec.is_empty() {
                cid.into()
            } else {
                exec.into()
            },
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
            let status = loop {
                if pod.vm.exited().is_some() {
                    break VM_DIED_STATUS;
                }
                match pod.vm.client.wait_process(&cid, &exec, Some(WAIT_SLICE)) {
                    Ok(r) => break r.status as u32,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) if code_of(&e) == Some(Code::NOT_FOUND) => break VM_DIED_STATUS,
                    Err(e) => {
                        log::debug!("{cid}/{exec}: WaitProcess: {e}");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            };
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
                    let init = (c.init.exit.is_none()).then(|| (cid.clone(), String::new()));
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
            log::info!("the pod's VM ended ({})", crate::vm::describe(status));
        } else {
            log::error!(
                "the pod's VM ended ({}) under {} running process(es)",
                crate::vm::describe(status),
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
                match pod.vm.client.get_oom_event(Duration::from_secs(30)) {
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

    /// The pod for a new container: the existing one, or a freshly booted one when this is
    /// the pod's first container.
    pub(super) fn pod_for(
        &self,
        cfg: &Config,
        cid: &str,
        pod_id: &str,
        hostname: &str,
        netns: Option<&std::path::Path>,
    ) -> TtrpcResult<(Arc<Pod>, bool)> {
        let _boot = self.boot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pod) = self.lock().pod.clone() {
            if pod.id != pod_id {
                return Err(rpc_err(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "container {cid} belongs to pod {pod_id}, this shim runs pod {}",
                        pod.id
                    ),
                ));
            }
            return Ok((pod, false));
        }
        if pod_id != cid {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("pod {pod_id} of container {cid} is not running in this shim"),
            ));
        }
        let weak = self.this.clone();
        let on_exit = Box::new(move |status| {
            if let Some(s) = weak.upgrade() {
                s.vm_died(status);
            }
        });
        let pod = Pod::boot(cfg, &self.namespace, pod_id, hostname, netns, on_exit)
            .map_err(|e| rpc_err(Code::UNKNOWN, format!("pod {pod_id}: {e}")))?;
        let pod = Arc::new(pod);
        log::info!("pod {pod_id}: VM up (moat-vmm pid {})", pod.vm.pid());
        self.lock().pod = Some(pod.clone());
        self.watch_oom(pod.clone());
        Ok((pod, true))
    }

    /// Stops the pod's VM and removes its directory, once.
    pub(super) fn end_pod(&self) {
        let pod = self.lock().pod.take();
        if let Some(pod) = pod {
            pod.teardown();
        }
    }
}

/// The exit and pid of a process, for replies.
pub(super) fn exit_fields(
    p: &Process,
) -> (
    u32,
    u32,
    Option<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp>,
) {
    (
        p.pid,
        p.exit.map_or(0, |e| e.status),
        p.exit.map(|e| e.timestamp()),
    )
}

/// The gRPC code of an agent error, in the shim protocol's ttrpc (a different ttrpc version
/// than the agent protocol's; the codes are gRPC's in both).
pub(super) fn code_of(e: &moat_agent_protocol::ClientError) -> Option<Code> {
    use containerd_shim::protos::protobuf::Enum;
    e.rpc_code().and_then(|c| Code::from_i32(c as i32))
}

pub(super) fn client_err(what: &str, e: moat_agent_protocol::ClientError) -> ttrpc::Error {
    let code = code_of(&e).unwrap_or(Code::UNKNOWN);
    rpc_err(code, format!("{what}: {e}"))
}
