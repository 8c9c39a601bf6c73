//! The life of a container's processes after `Create`: start (init or exec), add an exec,
//! signal, pause/resume, wait, delete; and what the service reads or changes while they run
//! (state, pids, stats, resources, terminal size, stdin).
//!
//! Every pid given to containerd is the pod's VMM's ([`super::state::State::host_pid`]);
//! the agent's answers are bounded by [`crate::vm::agent`] (deadlines, `ListProcesses` cap) and
//! `Stats` serves the last good value while the agent is slow.

use std::path::Path;

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
use crate::guard::text::Untrusted;
use crate::pod::io::{ProcessIo, StdioPaths};
use crate::pod::layout::check_id;

/// A process's exit as containerd's replies carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The pid containerd is told: the pod's VMM's, never the guest's.
    pub pid: u32,
    /// The exit status (0 while running).
    pub status: u32,
    /// When it exited, if it has.
    pub exit: Option<Exit>,
}

impl ExitInfo {
    /// Process `p`'s exit, reported with `host_pid`.
    pub fn of(p: &Process, host_pid: u32) -> ExitInfo {
        ExitInfo {
            pid: host_pid,
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
    /// Starts container `id`'s init (`exec` = "") or one of its added execs; returns the pid
    /// containerd is told (the VMM's).
    pub fn start(&self, id: &str, exec: &str) -> Result<u32, TaskError> {
        if exec.is_empty() {
            self.start_init(id)
        } else {
            self.start_exec(id, exec)
        }
    }

    fn start_init(&self, id: &str) -> Result<u32, TaskError> {
        let pod = self.live_pod()?;
        self.expect_init_status(id, Status::CREATED)?;
        pod.vm
            .client
            .start_container(id)
            .map_err(TaskError::agent("StartContainer"))?;
        self.set_init_status(id, Status::RUNNING)?;
        self.watch(pod, id.into(), String::new());
        let pid = self.host_pid();
        let (hooks, bundle) =
            self.with_container(id, |c| Ok((c.post_hooks.clone(), c.bundle.clone())))?;
        hooks.poststart(id, pid, Path::new(&bundle));
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
        let guest_pid = client
            .exec_process(id, exec, &json, stdio.channels())
            .map_err(TaskError::agent("ExecProcess"))?;
        let io = ProcessIo::attach(client, id, exec, &stdio)?;
        self.with_container(id, |c| {
            let p = c.process_mut(exec)?;
            (p.pid, p.status, p.io) = (guest_pid, Status::RUNNING, Some(io));
            Ok(())
        })?;
        self.watch(pod.clone(), id.into(), exec.into());
        let pid = self.host_pid();
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
        let host_pid = self.host_pid();
        self.with_container(id, |c| {
            let p = c.process(exec)?;
            Ok(ProcessState {
                bundle: c.bundle.clone(),
                status: p.status,
                stdio: p.stdio.clone(),
                exit: ExitInfo::of(p, host_pid),
            })
        })
    }

    /// `Pids`: the pod's VMM pid, as Kata reports its hypervisor's, while the agent lists any
    /// process in container `id` (none: an empty list). The guest's own pids (at most
    /// [`crate::guard::limits::MAX_PIDS`]) only reach the debug log, marked as guest pids.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, TaskError> {
        self.with_container(id, |_| Ok(()))?;
        let guest = self
            .live_pod()?
            .vm
            .client
            .list_processes(id)
            .map_err(TaskError::agent("ListProcesses"))?;
        crate::plog!(
            Debug,
            "{id}: {} process(es), guest pids {:?}",
            guest.len(),
            &guest[..guest.len().min(32)]
        );
        Ok(match guest.is_empty() {
            true => Vec::new(),
            false => vec![self.host_pid()],
        })
    }

    /// Container `id`'s cgroup statistics, as containerd's cgroup v2 metrics: fresh within the
    /// quick deadline, else the last good ones (none yet: [`TaskError::NoStats`]).
    pub fn stats(&self, id: &str) -> Result<Any, TaskError> {
        self.with_container(id, |_| Ok(()))?;
        let reply = self.live_pod()?.vm.client.stats_container(id);
        let last = self.lock().last_stats.get(id).cloned();
        match stats::fresh_or_last(id, reply, last)? {
            stats::Reading::Fresh(any) => {
                let mut st = self.lock();
                if st.containers.contains_key(id) {
                    st.last_stats.insert(id.into(), any.clone());
                }
                Ok(any)
            }
            stats::Reading::Last(any) => Ok(any),
        }
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
        // A container can outlive its pod (its sandbox deleted first, say after the VM
        // crashed): it is dead with the VM and must still be deletable, or this shim, which
        // exits only once it holds no container, would outlive every task containerd knows.
        let pod = self.lock().pod.clone();
        let is_sandbox = self.with_container(id, |c| match c.is_running() && pod.is_some() {
            true => Err(TaskError::Running(id.into())),
            false => Ok(c.is_sandbox),
        })?;
        if let Some(live) = pod.as_ref().filter(|p| p.vm.exited().is_none()) {
            if let Err(e) = live.vm.client.remove_container(id, Some(REMOVE_TIMEOUT)) {
                crate::plog!(Warn, container = id; "{id}: RemoveContainer: {}", Untrusted(&e));
            }
        }
        let (mut c, host_pid) = {
            let mut st = self.lock();
            st.last_stats.remove(id);
            let c = st
                .containers
                .remove(id)
                .ok_or_else(|| TaskError::NoContainer(id.into()))?;
            (c, st.host_pid())
        };
        if let Some(io) = c.init.io.as_mut() {
            io.shutdown();
        }
        if let Some(pod) = &pod {
            pod.remove_container(id, Path::new(&c.bundle));
        }
        if c.init.exit.is_none() {
            c.init.set_exit(Exit::now(128 + 9));
        }
        let info = ExitInfo::of(&c.init, host_pid);
        let last = self.lock().containers.is_empty();
        if is_sandbox || last {
            self.end_pod();
        }
        c.post_hooks.poststop(id, Path::new(&c.bundle));
        self.publish_delete(id, info);
        self.exited.notify_all();
        Ok(info)
    }

    fn delete_exec(&self, id: &str, exec: &str) -> Result<ExitInfo, TaskError> {
        let host_pid = self.host_pid();
        self.with_container(id, |c| {
            let p = c.process(exec)?;
            if p.exit.is_none() && p.pending_exec.is_none() {
                return Err(TaskError::ExecRunning(exec.into()));
            }
            let p = c.execs.remove(exec).expect("checked above");
            Ok(ExitInfo::of(&p, host_pid))
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
