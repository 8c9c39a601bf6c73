//! containerd's Task API (shim v2) for one pod: [`TaskService`] translates each RPC into a
//! call on [`Tasks`] (the pod and its containers) and the result back into the reply; every
//! error is a [`TaskError`], mapped to a ttrpc code in one place ([`TaskError::code`]).
//!
//! [`Tasks`]' operations live by theme: [`create`] (spec, pod boot, host side, agent),
//! [`lifecycle`] (start, exec, kill, pause, wait, delete, ...), [`watch`] (exits, OOM
//! events, the VM's death); [`state`] holds what they share, [`process`] one process's
//! record, [`events`] the publisher, [`stats`] the metrics conversion.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::{self, Empty};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crate::config::options;
use crate::error::TaskError;
use crate::pod::io::StdioPaths;

pub mod create;
pub mod events;
pub mod lifecycle;
pub mod process;
mod report;
pub mod state;
pub mod stats;
pub mod watch;

use create::NewContainer;
use events::Events;
use lifecycle::ExitInfo;
pub use state::Tasks;

/// How long `RemoveContainer` lets a container die after SIGKILL.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The task service of one shim (one pod).
pub struct TaskService(Arc<Tasks>);

impl TaskService {
    /// A service for containerd namespace `namespace`, publishing through `events`; `exit`
    /// is signalled when containerd shuts the shim down.
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> TaskService {
        TaskService(Tasks::new(namespace, events, exit))
    }
}

/// The request's stdio.
fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

/// The UTF-8 payload of an `Any` field, or a bad-request error naming `what`.
fn any_text(any: Option<&Any>, what: &str) -> Result<String, TaskError> {
    let any = any.ok_or_else(|| TaskError::BadRequest(format!("{what} without a payload")))?;
    String::from_utf8(any.value.clone())
        .map_err(|_| TaskError::BadRequest(format!("the {what} payload is not UTF-8 JSON")))
}

impl containerd_shim::Task for TaskService {
    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.0.state(&req.id, "").map_or(0, |s| s.exit.pid);
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
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unsupported("moat cannot restore checkpoints").into());
        }
        let config_path =
            options::config_path(req.options.as_ref()).map_err(TaskError::BadRequest)?;
        let pid = self.0.create(NewContainer {
            stdio: stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            id: req.id,
            bundle: req.bundle.into(),
            rootfs: req.rootfs,
            config_path,
        })?;
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
        let pid = self.0.start(&req.id, &req.exec_id)?;
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
        let e: ExitInfo = self.0.delete(&req.id, &req.exec_id)?;
        Ok(api::DeleteResponse {
            pid: e.pid,
            exit_status: e.status,
            exited_at: e.exit.map(|x| x.timestamp()).into(),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let s = self.0.state(&req.id, &req.exec_id)?;
        let id = if req.exec_id.is_empty() {
            &req.id
        } else {
            &req.exec_id
        };
        Ok(api::StateResponse {
            id: id.clone(),
            bundle: s.bundle,
            pid: s.exit.pid,
            status: s.status.into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status: s.exit.status,
            exited_at: s.exit.exit.map(|x| x.timestamp()).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let processes = self.0.pids(&req.id)?.into_iter().map(|pid| {
            containerd_shim::protos::types::task::ProcessInfo {
                pid,
                ..Default::default()
            }
        });
        Ok(api::PidsResponse {
            processes: processes.collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.0.pause(&req.id)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.0.resume(&req.id)?;
        Ok(Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported("checkpoint is not supported by moat").into())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        self.0.kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec = any_text(req.spec.as_ref(), "exec process spec")?;
        let stdio = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        self.0.add_exec(&req.id, &req.exec_id, stdio, spec)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.0
            .resize_pty(&req.id, &req.exec_id, req.height, req.width)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.0.close_stdin(&req.id, &req.exec_id)?;
        } else {
            self.0.state(&req.id, &req.exec_id)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = any_text(req.resources.as_ref(), "update resources")?;
        self.0.update(&req.id, &resources)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let e = self.0.wait(&req.id, &req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: Some(e.timestamp()).into(),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.0.stats(&req.id)?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        self.0.shutdown();
        Ok(Empty::new())
    }
}
