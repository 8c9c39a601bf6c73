//! The shim's task service: containerd's Task API mapped onto the pod's VM and its agent.
//!
//! State lives in one mutex; every call into the guest is made without holding it (an agent
//! RPC can take seconds). Exits are learnt by one watcher thread per started process
//! (`WaitProcess`), or all at once when the VMM dies; the first exit recorded wins, wakes
//! `Wait` callers and is published as `TaskExit`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_shim::api::Empty;
use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{TtrpcContext, TtrpcResult};

use crate::config::Config;
use crate::io::{ProcessIo, StdioPaths};
use crate::layout::check_id;
use crate::pod;
use crate::process::{Exit, Process};
use crate::{metrics, options, sizing, spec};

mod state;

use state::{client_err, code_of, exit_fields, Container};
pub use state::{rpc_err, Service};

/// How long `RemoveContainer` lets a container die after SIGKILL.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

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
        let pod_id = spec::pod_of(&host_spec, &req.id);
        check_id("pod id", &pod_id).map_err(bad)?;
        // A CRI app container shares its pod sandbox's IPC/UTS namespaces and /dev/shm.
        let sandbox_pid = (pod_id != req.id)
            .then(|| self.with_container(&pod_id, |c| Ok(c.init.pid)).ok())
            .flatten();
        let guest =
            spec::translate(&host_spec, &req.id, sandbox_pid).map_err(|e| bad(e.to_string()))?;
        for n in &guest.notes {
            log::info!("{}: {n}", req.id);
        }
        let config_path = options::config_path(req.options.as_ref()).map_err(bad)?;
        let mut cfg = Config::resolve(config_path.as_deref()).map_err(|e| bad(e.to_string()))?;
        if pod_id == req.id {
            // The pod's first container: its spec sizes the VM.
            let size = sizing::size_for(&cfg.vm, &host_spec).map_err(|e| bad(e.to_string()))?;
            for n in &size.notes {
                log::info!("pod {pod_id}: {n}");
            }
            (cfg.vm.vcpus, cfg.vm.memory_mib) = (size.vcpus, size.memory_mib);
        }
        let hostname = host_spec["hostname"].as_str().unwrap_or("").to_string();
        let netns = spec::netns_path(&host_spec);
        let (pod, booted) = self.pod_for(&cfg, &req.id, &pod_id, &hostname, netns.as_deref())?;
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
