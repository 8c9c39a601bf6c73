//! The shim's task service: containerd's Task API mapped onto the pod's VM and its agent.
//!
//! State lives in one mutex; every call into the guest is made without holding it (an agent
//! RPC can take seconds). Exits are learnt by one watcher thread per started process
//! (`WaitProcess`), or all at once when the VMM dies; the first exit recorded wins, wakes
//! `Wait` callers and is published as `TaskExit`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use containerd_shim::api::Empty;
use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crate::config::Config;
use crate::events::Events;
use crate::io::{ProcessIo, StdioPaths};
use crate::layout::check_id;
use crate::pod::{self, Pod};
use crate::process::{Exit, Process, VM_DIED_STATUS};
use crate::{metrics, options, spec};

/// How long an exit waits for the process's output to reach containerd (its stream ends when
/// the last writer in the guest is gone; only a daemon keeping stdout open waits this long).
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);
/// How long one `WaitProcess` call may block before it is renewed.
const WAIT_SLICE: Duration = Duration::from_secs(60);
/// How long `RemoveContainer` lets a container die after SIGKILL.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A ttrpc error with a gRPC code containerd maps to its errdefs.
pub fn rpc_err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// One container of the pod.
struct Container {
    bundle: String,
    is_sandbox: bool,
    init: Process,
    execs: HashMap<String, Process>,
}

impl Container {
    fn process(&self, exec: &str) -> TtrpcResult<&Process> {
        if exec.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec)
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("exec {exec:?} not found")))
    }
    fn process_mut(&mut self, exec: &str) -> TtrpcResult<&mut Process> {
        if exec.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec)
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("exec {exec:?} not found")))
    }
}

#[derive(Default)]
struct State {
    pod: Option<Arc<Pod>>,
    containers: HashMap<String, Container>,
}

/// The task service of one shim (one pod); a handle on [`Inner`].
pub struct Service(Arc<Inner>);

impl std::ops::Deref for Service {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The service's state and helpers.
pub struct Inner {
    namespace: String,
    events: Events,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
    exited: Condvar,
    /// Serialises pod boot, so two creates never boot two VMs.
    boot: Mutex<()>,
    this: Weak<Inner>,
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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pod(&self) -> TtrpcResult<Arc<Pod>> {
        self.lock()
            .pod
            .clone()
            .ok_or_else(|| rpc_err(Code::FAILED_PRECONDITION, "the pod has no VM"))
    }

    fn client(&self) -> TtrpcResult<Arc<Pod>> {
        let pod = self.pod()?;
        if let Some(s) = pod.vm.exited() {
            return Err(rpc_err(
                Code::UNAVAILABLE,
                format!("the pod's VM is gone ({})", crate::vm::describe(s)),
            ));
        }
        Ok(pod)
    }

    fn with_container<T>(
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
    fn expect_init_status(&self, id: &str, want: Status) -> TtrpcResult<u32> {
        self.with_container(id, |c| match c.init.status {
            s if s == want => Ok(c.init.pid),
            s => Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("container {id} is {s:?}"),
            )),
        })
    }

    /// Records an exit once, wakes waiters and publishes `TaskExit`.
    fn record_exit(&self, cid: &str, exec: &str, status: u32) {
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
    fn watch(&self, pod: Arc<Pod>, cid: String, exec: String) {
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
    fn vm_died(&self, status: i32) {
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
    fn watch_oom(&self, pod: Arc<Pod>) {
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
    fn pod_for(
        &self,
        cfg: &Config,
        cid: &str,
        pod_id: &str,
        hostname: &str,
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
        let pod = Pod::boot(cfg, &self.namespace, pod_id, hostname, on_exit)
            .map_err(|e| rpc_err(Code::UNKNOWN, format!("pod {pod_id}: {e}")))?;
        let pod = Arc::new(pod);
        log::info!("pod {pod_id}: VM up (moat-vmm pid {})", pod.vm.pid());
        self.lock().pod = Some(pod.clone());
        self.watch_oom(pod.clone());
        Ok((pod, true))
    }

    /// Stops the pod's VM and removes its directory, once.
    fn end_pod(&self) {
        let pod = self.lock().pod.take();
        if let Some(pod) = pod {
            pod.teardown();
        }
    }
}

/// The exit and pid of a process, for replies.
fn exit_fields(
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
fn code_of(e: &moat_agent_protocol::ClientError) -> Option<Code> {
    use containerd_shim::protos::protobuf::Enum;
    e.rpc_code().and_then(|c| Code::from_i32(c as i32))
}

fn client_err(what: &str, e: moat_agent_protocol::ClientError) -> ttrpc::Error {
    let code = code_of(&e).unwrap_or(Code::UNKNOWN);
    rpc_err(code, format!("{what}: {e}"))
}

impl containerd_shim::Task for Service {
    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .with_container(&req.id, |c| Ok(c.init.pid))
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("moat {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let bad = |m: String| rpc_err(Code::INVALID_ARGUMENT, m);
        check_id("container id", &req.id).map_err(bad)?;
        if !req.checkpoint.is_empty() {
            return Err(rpc_err(
                Code::UNIMPLEMENTED,
                "moat cannot restore checkpoints",
            ));
        }
        if self.lock().containers.contains_key(&req.id) {
            return Err(rpc_err(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.check().map_err(|e| bad(e.to_string()))?;
        let bundle = PathBuf::from(&req.bundle);
        let host_spec = spec::read_bundle_spec(&bundle).map_err(|e| bad(e.to_string()))?;
        let spec_root = spec::root_path(&host_spec).map_err(|e| bad(e.to_string()))?;
        let guest = spec::translate(&host_spec, &req.id).map_err(|e| bad(e.to_string()))?;
        for n in &guest.notes {
            log::info!("{}: {n}", req.id);
        }
        let config_path = options::config_path(req.options.as_ref()).map_err(bad)?;
        let cfg = Config::resolve(config_path.as_deref()).map_err(|e| bad(e.to_string()))?;
        let pod_id = spec::pod_of(&host_spec, &req.id);
        check_id("pod id", &pod_id).map_err(bad)?;
        let hostname = host_spec["hostname"].as_str().unwrap_or("").to_string();
        let (pod, booted) = self.pod_for(&cfg, &req.id, &pod_id, &hostname)?;
        let is_sandbox = pod_id == req.id;
        let fail = |e: ttrpc::Error| {
            pod::remove_container_dir(&pod.dir, &req.id);
            if booted {
                self.end_pod();
            }
            e
        };
        pod.setup_container(
            &req.id,
            &bundle,
            &req.rootfs,
            &spec_root,
            &guest.binds,
            is_sandbox,
        )
        .map_err(|e| fail(rpc_err(Code::UNKNOWN, e.to_string())))?;
        let spec_json = guest.spec.to_string();
        let pid = pod
            .vm
            .client
            .create_container(&req.id, &spec_json, stdio.channels(), guest.sandbox_pidns)
            .map_err(|e| fail(client_err("CreateContainer", e)))?;
        let io = ProcessIo::attach(&pod.vm.client, &req.id, "", &stdio).map_err(|e| {
            let _ = pod
                .vm
                .client
                .remove_container(&req.id, Some(REMOVE_TIMEOUT));
            fail(rpc_err(Code::UNKNOWN, e.to_string()))
        })?;
        let mut init = Process::new(stdio.clone());
        init.pid = pid;
        init.io = Some(io);
        self.lock().containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                is_sandbox,
                init,
                execs: HashMap::new(),
            },
        );
        log::info!("{}: created in pod {pod_id}, guest pid {pid}", req.id);
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pod = self.client()?;
        let c = &pod.vm.client;
        let pid = if req.exec_id.is_empty() {
            let pid = self.expect_init_status(&req.id, Status::CREATED)?;
            c.start_container(&req.id)
                .map_err(|e| client_err("StartContainer", e))?;
            self.with_container(&req.id, |c| {
                c.init.status = Status::RUNNING;
                Ok(())
            })?;
            self.watch(pod.clone(), req.id.clone(), String::new());
            let ev = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
            pid
        } else {
            let (json, stdio) = self.with_container(&req.id, |c| {
                let p = c.process_mut(&req.exec_id)?;
                let json = p.pending_exec.take().ok_or_else(|| {
                    rpc_err(
                        Code::FAILED_PRECONDITION,
                        format!("exec {} already started", req.exec_id),
                    )
                })?;
                Ok((json, p.stdio.clone()))
            })?;
            let pid = c
                .exec_process(&req.id, &req.exec_id, &json, stdio.channels())
                .map_err(|e| client_err("ExecProcess", e))?;
            let io = ProcessIo::attach(c, &req.id, &req.exec_id, &stdio)
                .map_err(|e| rpc_err(Code::UNKNOWN, e.to_string()))?;
            self.with_container(&req.id, |c| {
                let p = c.process_mut(&req.exec_id)?;
                p.pid = pid;
                p.status = Status::RUNNING;
                p.io = Some(io);
                Ok(())
            })?;
            self.watch(pod.clone(), req.id.clone(), req.exec_id.clone());
            let ev = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
            pid
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let p = self.with_container(&req.id, |c| {
                let p = c.process(&req.exec_id)?;
                if p.exit.is_none() && p.pending_exec.is_none() {
                    return Err(rpc_err(
                        Code::FAILED_PRECONDITION,
                        format!("exec {} is running", req.exec_id),
                    ));
                }
                Ok(c.execs.remove(&req.exec_id).expect("checked above"))
            })?;
            let (pid, status, at) = exit_fields(&p);
            return Ok(api::DeleteResponse {
                pid,
                exit_status: status,
                exited_at: at.into(),
                ..Default::default()
            });
        }
        let (running, is_sandbox) = self.with_container(&req.id, |c| {
            Ok((
                c.init.status == Status::RUNNING || c.init.status == Status::PAUSED,
                c.is_sandbox,
            ))
        })?;
        if running {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("container {} is running: kill it first", req.id),
            ));
        }
        let pod = self.pod()?;
        if pod.vm.exited().is_none() {
            if let Err(e) = pod
                .vm
                .client
                .remove_container(&req.id, Some(REMOVE_TIMEOUT))
            {
                log::warn!("{}: RemoveContainer: {e}", req.id);
            }
        }
        let c = self.lock().containers.remove(&req.id);
        let Some(mut c) = c else {
            return Err(rpc_err(
                Code::NOT_FOUND,
                format!("container {} not found", req.id),
            ));
        };
        if let Some(io) = c.init.io.as_mut() {
            io.shutdown();
        }
        pod::remove_container_dir(&pod.dir, &req.id);
        let _ = std::fs::remove_file(PathBuf::from(&c.bundle).join(crate::layout::BUNDLE_MARKER));
        if c.init.exit.is_none() {
            c.init.set_exit(Exit::now(128 + 9));
        }
        let (pid, status, at) = exit_fields(&c.init);
        let last = self.lock().containers.is_empty();
        if is_sandbox || last {
            self.end_pod();
        }
        let ev = TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid,
            exit_status: status,
            exited_at: at.clone().into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        self.exited.notify_all();
        Ok(api::DeleteResponse {
            pid,
            exit_status: status,
            exited_at: at.into(),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            let (pid, status, at) = exit_fields(p);
            Ok(api::StateResponse {
                id: if req.exec_id.is_empty() {
                    req.id.clone()
                } else {
                    req.exec_id.clone()
                },
                bundle: c.bundle.clone(),
                pid,
                status: p.status.into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: status,
                exited_at: at.into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.with_container(&req.id, |_| Ok(()))?;
        let pod = self.client()?;
        let pids = pod
            .vm
            .client
            .list_processes(&req.id)
            .map_err(|e| client_err("ListProcesses", e))?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        let pod = self.client()?;
        self.expect_init_status(&req.id, Status::RUNNING)?;
        pod.vm
            .client
            .pause_container(&req.id)
            .map_err(|e| client_err("PauseContainer", e))?;
        self.with_container(&req.id, |c| {
            c.init.status = Status::PAUSED;
            Ok(())
        })?;
        let ev = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        let pod = self.client()?;
        self.expect_init_status(&req.id, Status::PAUSED)?;
        pod.vm
            .client
            .resume_container(&req.id)
            .map_err(|e| client_err("ResumeContainer", e))?;
        let _ = pod
            .vm
            .client
            .set_guest_date_time(std::time::SystemTime::now());
        self.with_container(&req.id, |c| {
            if c.init.exit.is_none() {
                c.init.status = Status::RUNNING;
            }
            Ok(())
        })?;
        let ev = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(rpc_err(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by moat",
        ))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let started = self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            if p.exit.is_some() {
                return Err(rpc_err(Code::NOT_FOUND, "process already finished"));
            }
            Ok(p.pending_exec.is_none())
        })?;
        if !started {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("exec {} is not started", req.exec_id),
            ));
        }
        let pod = self.client()?;
        match pod
            .vm
            .client
            .signal_process(&req.id, &req.exec_id, req.signal, req.all)
        {
            Ok(()) => Ok(Empty::new()),
            Err(e) if code_of(&e) == Some(Code::NOT_FOUND) => {
                Err(rpc_err(Code::NOT_FOUND, "process already finished"))
            }
            Err(e) => Err(client_err("SignalProcess", e)),
        }
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let bad = |m: String| rpc_err(Code::INVALID_ARGUMENT, m);
        check_id("exec id", &req.exec_id).map_err(bad)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.check().map_err(|e| bad(e.to_string()))?;
        let json = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| bad("exec without a process spec".into()))?;
        let json = String::from_utf8(json)
            .map_err(|_| bad("the exec process spec is not UTF-8 JSON".into()))?;
        serde_json::from_str::<serde_json::Value>(&json)
            .map_err(|e| bad(format!("the exec process spec is not JSON: {e}")))?;
        self.with_container(&req.id, |c| {
            if c.init.exit.is_some() {
                return Err(rpc_err(
                    Code::FAILED_PRECONDITION,
                    format!("container {} has exited", req.id),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(rpc_err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let mut p = Process::new(stdio);
            p.pending_exec = Some(json);
            c.execs.insert(req.exec_id.clone(), p);
            Ok(())
        })?;
        let ev = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.with_container(&req.id, |c| c.process(&req.exec_id).map(|_| ()))?;
        let pod = self.client()?;
        pod.vm
            .client
            .tty_win_resize(&req.id, &req.exec_id, req.height, req.width)
            .map_err(|e| client_err("TtyWinResize", e))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            if req.stdin {
                if let Some(io) = &p.io {
                    io.close_stdin();
                }
            }
            Ok(Empty::new())
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.with_container(&req.id, |_| Ok(()))?;
        let json = req
            .resources
            .as_ref()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .ok_or_else(|| rpc_err(Code::INVALID_ARGUMENT, "update without resources"))?;
        let pod = self.client()?;
        pod.vm
            .client
            .update_container(&req.id, &json)
            .map_err(|e| client_err("UpdateContainer", e))?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut st = self.lock();
        loop {
            let c = st.containers.get(&req.id).ok_or_else(|| {
                rpc_err(Code::NOT_FOUND, format!("container {} not found", req.id))
            })?;
            let p = c.process(&req.exec_id)?;
            if let Some(e) = p.exit {
                return Ok(api::WaitResponse {
                    exit_status: e.status,
                    exited_at: Some(e.timestamp()).into(),
                    ..Default::default()
                });
            }
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.with_container(&req.id, |_| Ok(()))?;
        let pod = self.client()?;
        let s = pod
            .vm
            .client
            .stats_container(&req.id)
            .map_err(|e| client_err("StatsContainer", e))?;
        let any = metrics::to_any(&s).map_err(|e| rpc_err(Code::INTERNAL, e))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        if !self.lock().containers.is_empty() {
            return Ok(Empty::new());
        }
        self.end_pod();
        self.exit.signal();
        Ok(Empty::new())
    }
}
