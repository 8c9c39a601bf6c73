//! The life of a container's processes after `Create`: start (init or exec), add an exec,
//! signal, pause/resume, wait, delete; and what the service reads or changes while they run
//! (state, pids, stats, resources, terminal size, stdin).

use containerd_shim::api::Status;
use containerd_shim::protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;

use super::process::{Exit, Process};
use super::state::Tasks;
use super::{stats, REMOVE_TIMEOUT};
use crate::error::{agent_code, TaskError};
use crate::pod::io::{ProcessIo, StdioPaths};
use crate::pod::layout::check_id;

/// A process's exit as containerd's replies carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The pid (in the guest's pod PID namespace).
    pub pid: u32,
    /// The exit status (0 while running).
    pub status: u32,
    /// When it exited, if it has.
    pub exit: Option<Exit>,
}

impl From<&Process> for ExitInfo {
    fn from(p: &Process) -> ExitInfo {
        ExitInfo {
            pid: p.pid,
            status: p.exit.map_or(0, |e| e.status),
            exit: p.exit,
        }
    }
}

/// A process's state for `State`.
#[derive(Debug, Clone)]
pub struct ProcessState {
    /// Its container's bundle.
    pub bundle: String,
    /// Its status.
    pub status: Status,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// Its pid and exit.
    pub exit: ExitInfo,
}

impl Tasks {
    /// Starts container `id`'s init (`exec` = "") or one of its added execs; returns its pid.
    pub fn start(&self, id: &str, exec: &str) -> Result<u32, TaskError> {
        if exec.is_empty() {
            self.start_init(id)
        } else {
            self.start_exec(id, exec)
        }
    }

    fn start_init(&self, id: &str) -> Result<u32, TaskError> {
        let pod = self.live_pod()?;
        let pid = self.expect_init_status(id, Status::CREATED)?;
        pod.vm
            .client
            .start_container(id)
            .map_err(TaskError::agent("StartContainer"))?;
        self.set_init_status(id, Status::RUNNING)?;
        self.watch(pod, id.into(), String::new());
        let ev = TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        Ok(pid)
    }

    fn start_exec(&self, id: &str, exec: &str) -> Result<u32, TaskError> {
        let pod = self.live_pod()?;
        let client = &pod.vm.client;
        let (json, stdio) = self.with_container(id, |c| {
            let p = c.process_mut(exec)?;
            let json = p
                .pending_exec
                .take()
                .ok_or_else(|| TaskError::ExecStarted(exec.into()))?;
            Ok((json, p.stdio.clone()))
        })?;
        let pid = client
            .exec_process(id, exec, &json, stdio.channels())
            .map_err(TaskError::agent("ExecProcess"))?;
        let io = ProcessIo::attach(client, id, exec, &stdio)?;
        self.with_container(id, |c| {
            let p = c.process_mut(exec)?;
            (p.pid, p.status, p.io) = (pid, Status::RUNNING, Some(io));
            Ok(())
        })?;
        self.watch(pod.clone(), id.into(), exec.into());
        let ev = TaskExecStarted {
            container_id: id.into(),
            exec_id: exec.into(),
            pid,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
        Ok(pid)
    }

    /// Adds exec process `exec` (OCI process JSON `spec`) to container `id`; `start` runs it.
    pub fn add_exec(
        &self,
        id: &str,
        exec: &str,
        stdio: StdioPaths,
        spec: String,
    ) -> Result<(), TaskError> {
        check_id("exec id", exec)?;
        stdio.check()?;
        serde_json::from_str::<serde_json::Value>(&spec).map_err(|e| {
            TaskError::BadRequest(format!("the exec process spec is not JSON: {e}"))
        })?;
        self.with_container(id, |c| {
            if c.init.exit.is_some() {
                return Err(TaskError::Exited(id.into()));
            }
            if c.execs.contains_key(exec) {
                return Err(TaskError::ExecExists(exec.into()));
            }
            let mut p = Process::new(stdio);
            p.pending_exec = Some(spec);
            c.execs.insert(exec.into(), p);
            Ok(())
        })?;
        let ev = TaskExecAdded {
            container_id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(())
    }

    /// Signals process `exec` of container `id` (`all`: every process of the container).
    pub fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let started = self.with_container(id, |c| {
            let p = c.process(exec)?;
            if p.exit.is_some() {
                return Err(TaskError::Finished);
            }
            Ok(p.pending_exec.is_none())
        })?;
        if !started {
            return Err(TaskError::ExecNotStarted(exec.into()));
        }
        let pod = self.live_pod()?;
        match pod.vm.client.signal_process(id, exec, signal, all) {
            Ok(()) => Ok(()),
            Err(e) if agent_code(&e) == Some(Code::NOT_FOUND) => Err(TaskError::Finished),
            Err(e) => Err(TaskError::agent("SignalProcess")(e)),
        }
    }

    /// Freezes container `id`.
    pub fn pause(&self, id: &str) -> Result<(), TaskError> {
        let pod = self.live_pod()?;
        self.expect_init_status(id, Status::RUNNING)?;
        pod.vm
            .client
            .pause_container(id)
            .map_err(TaskError::agent("PauseContainer"))?;
        self.set_init_status(id, Status::PAUSED)?;
        let ev = TaskPaused {
            container_id: id.into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        Ok(())
    }

    /// Thaws container `id` and sets the guest clock (it may have been frozen with it).
    pub fn resume(&self, id: &str) -> Result<(), TaskError> {
        let pod = self.live_pod()?;
        self.expect_init_status(id, Status::PAUSED)?;
        let client = &pod.vm.client;
        client
            .resume_container(id)
            .map_err(TaskError::agent("ResumeContainer"))?;
        let _ = client.set_guest_date_time(std::time::SystemTime::now());
        self.set_init_status(id, Status::RUNNING)?;
        let ev = TaskResumed {
            container_id: id.into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        Ok(())
    }

    /// Blocks until process `exec` of container `id` has exited.
    pub fn wait(&self, id: &str, exec: &str) -> Result<Exit, TaskError> {
        let mut st = self.lock();
        loop {
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| TaskError::NoContainer(id.into()))?;
            if let Some(e) = c.process(exec)?.exit {
                return Ok(e);
            }
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The state of process `exec` of container `id`.
    pub fn state(&self, id: &str, exec: &str) -> Result<ProcessState, TaskError> {
        self.with_container(id, |c| {
            let p = c.process(exec)?;
            Ok(ProcessState {
                bundle: c.bundle.clone(),
                status: p.status,
                stdio: p.stdio.clone(),
                exit: p.into(),
            })
        })
    }

    /// The pids of container `id`'s processes.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, TaskError> {
        self.with_container(id, |_| Ok(()))?;
        self.live_pod()?
            .vm
            .client
            .list_processes(id)
            .map_err(TaskError::agent("ListProcesses"))
    }

    /// Container `id`'s cgroup statistics, as containerd's cgroup v2 metrics.
    pub fn stats(&self, id: &str) -> Result<Any, TaskError> {
        self.with_container(id, |_| Ok(()))?;
        let s = self
            .live_pod()?
            .vm
            .client
            .stats_container(id)
            .map_err(TaskError::agent("StatsContainer"))?;
        stats::to_any(&s).map_err(TaskError::Internal)
    }

    /// Applies OCI `LinuxResources` JSON to container `id`'s cgroup.
    pub fn update(&self, id: &str, resources: &str) -> Result<(), TaskError> {
        self.with_container(id, |_| Ok(()))?;
        self.live_pod()?
            .vm
            .client
            .update_container(id, resources)
            .map_err(TaskError::agent("UpdateContainer"))
    }

    /// Resizes process `exec`'s terminal.
    pub fn resize_pty(
        &self,
        id: &str,
        exec: &str,
        height: u32,
        width: u32,
    ) -> Result<(), TaskError> {
        self.with_container(id, |c| c.process(exec).map(|_| ()))?;
        self.live_pod()?
            .vm
            .client
            .tty_win_resize(id, exec, height, width)
            .map_err(TaskError::agent("TtyWinResize"))
    }

    /// Closes process `exec`'s stdin once what is in its FIFO has been read.
    pub fn close_stdin(&self, id: &str, exec: &str) -> Result<(), TaskError> {
        self.with_container(id, |c| {
            if let Some(io) = &c.process(exec)?.io {
                io.close_stdin();
            }
            Ok(())
        })
    }

    /// Deletes an exited exec process (`exec` non-empty) or a stopped container with its host
    /// side; the pod ends with its sandbox container or its last container.
    pub fn delete(&self, id: &str, exec: &str) -> Result<ExitInfo, TaskError> {
        if !exec.is_empty() {
            return self.delete_exec(id, exec);
        }
        let is_sandbox = self.with_container(id, |c| match c.is_running() {
            true => Err(TaskError::Running(id.into())),
            false => Ok(c.is_sandbox),
        })?;
        let pod = self.pod()?;
        if pod.vm.exited().is_none() {
            if let Err(e) = pod.vm.client.remove_container(id, Some(REMOVE_TIMEOUT)) {
                log::warn!("{id}: RemoveContainer: {e}");
            }
        }
        let mut c = self
            .lock()
            .containers
            .remove(id)
            .ok_or_else(|| TaskError::NoContainer(id.into()))?;
        if let Some(io) = c.init.io.as_mut() {
            io.shutdown();
        }
        pod.remove_container(id, std::path::Path::new(&c.bundle));
        if c.init.exit.is_none() {
            c.init.set_exit(Exit::now(128 + 9));
        }
        let info = ExitInfo::from(&c.init);
        let last = self.lock().containers.is_empty();
        if is_sandbox || last {
            self.end_pod();
        }
        self.publish_delete(id, info);
        self.exited.notify_all();
        Ok(info)
    }

    fn delete_exec(&self, id: &str, exec: &str) -> Result<ExitInfo, TaskError> {
        self.with_container(id, |c| {
            let p = c.process(exec)?;
            if p.exit.is_none() && p.pending_exec.is_none() {
                return Err(TaskError::ExecRunning(exec.into()));
            }
            let p = c.execs.remove(exec).expect("checked above");
            Ok(ExitInfo::from(&p))
        })
    }

    fn publish_delete(&self, id: &str, info: ExitInfo) {
        let ev = TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid: info.pid,
            exit_status: info.status,
            exited_at: info.exit.map(|e| e.timestamp()).into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
    }

    /// containerd's `Shutdown`: with no container left, ends the pod and the shim.
    pub fn shutdown(&self) {
        if !self.lock().containers.is_empty() {
            return;
        }
        self.end_pod();
        self.exit.signal();
    }
}
