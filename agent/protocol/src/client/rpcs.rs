//! Typed wrappers of `AgentService`'s pod, container, process and guest RPCs.
//!
//! Each is one RPC with the client's call timeout unless its doc says otherwise; errors are
//! [`ClientError`]s (use [`ClientError::rpc_code`] for the agent's ttrpc status code).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AgentClient, ClientError};
use crate::agent::{
    ContainerRequest, CopyFileRequest, CreateContainerRequest, CreatePodRequest, DestroyPodRequest,
    ExecProcessRequest, GetOOMEventRequest, GuestStatsRequest, ProcessRequest,
    RemoveContainerRequest, SetGuestDateTimeRequest, SignalProcessRequest, StatsContainerResponse,
    TtyWinResizeRequest, UpdateContainerRequest, WaitProcessResponse,
};
use crate::guest::GuestStats;
use crate::stdio::Channels;

/// How long the agent waits for a removed container's processes to die when the caller
/// gives no timeout (the protocol's `timeout_secs: 0`).
pub const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

fn container_request(container_id: &str) -> ContainerRequest {
    let mut req = ContainerRequest::new();
    req.container_id = container_id.to_string();
    req
}

fn process_request(container_id: &str, exec_id: &str) -> ProcessRequest {
    let mut req = ProcessRequest::new();
    req.container_id = container_id.to_string();
    req.exec_id = exec_id.to_string();
    req
}

/// How the agent creates a container, beyond its spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Join the pod's PID namespace (made by `CreatePod` with `pod_pidns`) instead of the
    /// spec's.
    pub pod_pidns: bool,
    /// Give a spec without `linux.seccomp` moat's default seccomp profile instead of none.
    pub default_seccomp: bool,
}

impl AgentClient {
    /// `GetGuestStats`: the guest's memory, load averages, runnable/total tasks and uptime, as
    /// the guest reports them (see [`GuestStats`]).
    pub fn guest_stats(&self) -> Result<GuestStats, ClientError> {
        self.call("AgentService.GetGuestStats", |ctx| {
            self.agent.get_guest_stats(ctx, &GuestStatsRequest::new())
        })
        .map(|resp| GuestStats::from_proto(&resp))
    }

    /// `CreatePod`: hostname, DNS files, pod PID namespace and pod cgroup.
    pub fn create_pod(&self, req: &CreatePodRequest) -> Result<(), ClientError> {
        self.call("AgentService.CreatePod", |ctx| {
            self.agent.create_pod(ctx, req)
        })
        .map(drop)
    }

    /// `DestroyPod`: kills every container of the pod and undoes `CreatePod`.
    pub fn destroy_pod(&self, pod_id: &str) -> Result<(), ClientError> {
        let mut req = DestroyPodRequest::new();
        req.pod_id = pod_id.to_string();
        self.call("AgentService.DestroyPod", |ctx| {
            self.agent.destroy_pod(ctx, &req)
        })
        .map(drop)
    }

    /// `CreateContainer` from an OCI spec (`config.json` text, guest paths); returns the init
    /// process's pid. Open the stdio streams named in `channels` afterwards with
    /// [`AgentClient::open_stdio`] (exec id `""`).
    pub fn create_container(
        &self,
        container_id: &str,
        spec_json: &str,
        channels: Channels,
        options: CreateOptions,
    ) -> Result<u32, ClientError> {
        let mut req = CreateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.spec_json = spec_json.to_string();
        req.stdio = Some(channels.to_proto()).into();
        req.pod_pidns = options.pod_pidns;
        req.default_seccomp = options.default_seccomp;
        self.call("AgentService.CreateContainer", |ctx| {
            self.agent.create_container(ctx, &req)
        })
        .map(|resp| resp.pid)
    }

    /// `StartContainer`: lets the init process exec the spec's program.
    pub fn start_container(&self, container_id: &str) -> Result<(), ClientError> {
        let req = container_request(container_id);
        self.call("AgentService.StartContainer", |ctx| {
            self.agent.start_container(ctx, &req)
        })
        .map(drop)
    }

    /// `ExecProcess`: starts `process_json` (an OCI `process` object) in a running container;
    /// returns its pid.
    pub fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &str,
        channels: Channels,
    ) -> Result<u32, ClientError> {
        let mut req = ExecProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.process_json = process_json.to_string();
        req.stdio = Some(channels.to_proto()).into();
        self.call("AgentService.ExecProcess", |ctx| {
            self.agent.exec_process(ctx, &req)
        })
        .map(|resp| resp.pid)
    }

    /// `SignalProcess`: `signal` to one process, or to every process of the container (`all`).
    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError> {
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        self.call("AgentService.SignalProcess", |ctx| {
            self.agent.signal_process(ctx, &req)
        })
        .map(drop)
    }

    /// `WaitProcess`: waits for a process to exit, at most `timeout` (`None`: no deadline, the
    /// call blocks until the process exits or the connection breaks). A timeout ends as an
    /// error whose [`ClientError::is_timeout`] is true.
    pub fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<WaitProcessResponse, ClientError> {
        let req = process_request(container_id, exec_id);
        self.call_with("AgentService.WaitProcess", timeout, |ctx| {
            self.agent.wait_process(ctx, &req)
        })
    }

    /// `RemoveContainer`: kills what is left and removes the container, waiting at most
    /// `kill_timeout` (`None`: the agent's 10 s) for its processes to die. The call's own
    /// timeout is that wait plus the client's call timeout.
    pub fn remove_container(
        &self,
        container_id: &str,
        kill_timeout: Option<Duration>,
    ) -> Result<(), ClientError> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.to_string();
        let wait = match kill_timeout {
            Some(t) => {
                // Whole seconds, rounded up, at least 1 (0 means "the agent's default").
                let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
                req.timeout_secs = u32::try_from(secs.max(1)).unwrap_or(u32::MAX);
                Duration::from_secs(u64::from(req.timeout_secs))
            }
            None => DEFAULT_REMOVE_TIMEOUT,
        };
        self.call_with(
            "AgentService.RemoveContainer",
            Some(wait.saturating_add(self.call_timeout)),
            |ctx| self.agent.remove_container(ctx, &req),
        )
        .map(drop)
    }

    /// `ListProcesses`: pids (guest root PID namespace) of a container's processes.
    pub fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, ClientError> {
        let req = container_request(container_id);
        self.call("AgentService.ListProcesses", |ctx| {
            self.agent.list_processes(ctx, &req)
        })
        .map(|resp| resp.pids)
    }

    /// `TtyWinResize`: resizes a process's pty.
    pub fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ClientError> {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.rows = rows;
        req.cols = cols;
        self.call("AgentService.TtyWinResize", |ctx| {
            self.agent.tty_win_resize(ctx, &req)
        })
        .map(drop)
    }

    /// `StatsContainer`: cgroup v2 statistics of a container.
    pub fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, ClientError> {
        let req = container_request(container_id);
        self.call("AgentService.StatsContainer", |ctx| {
            self.agent.stats_container(ctx, &req)
        })
    }

    /// `UpdateContainer`: new cgroup resources (OCI `LinuxResources` JSON).
    pub fn update_container(
        &self,
        container_id: &str,
        resources_json: &str,
    ) -> Result<(), ClientError> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.resources_json = resources_json.to_string();
        self.call("AgentService.UpdateContainer", |ctx| {
            self.agent.update_container(ctx, &req)
        })
        .map(drop)
    }

    /// `PauseContainer`: freezes the container's cgroup.
    pub fn pause_container(&self, container_id: &str) -> Result<(), ClientError> {
        let req = container_request(container_id);
        self.call("AgentService.PauseContainer", |ctx| {
            self.agent.pause_container(ctx, &req)
        })
        .map(drop)
    }

    /// `ResumeContainer`: thaws the container's cgroup.
    pub fn resume_container(&self, container_id: &str) -> Result<(), ClientError> {
        let req = container_request(container_id);
        self.call("AgentService.ResumeContainer", |ctx| {
            self.agent.resume_container(ctx, &req)
        })
        .map(drop)
    }

    /// `GetOOMEvent`: the id of the next container whose cgroup saw an OOM kill, waiting at
    /// most `timeout`; `Ok(None)` when none happened in time (the agent's `DEADLINE_EXCEEDED`
    /// or no reply within `timeout`). Call it again in a loop.
    pub fn get_oom_event(&self, timeout: Duration) -> Result<Option<String>, ClientError> {
        match self.call_with("AgentService.GetOOMEvent", Some(timeout), |ctx| {
            self.agent.get_oom_event(ctx, &GetOOMEventRequest::new())
        }) {
            Ok(event) => Ok(Some(event.container_id)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `SetGuestDateTime`: sets the guest's wall clock to `time`.
    pub fn set_guest_date_time(&self, time: SystemTime) -> Result<(), ClientError> {
        let mut req = SetGuestDateTimeRequest::new();
        (req.sec, req.usec) = epoch_sec_usec(time);
        self.call("AgentService.SetGuestDateTime", |ctx| {
            self.agent.set_guest_date_time(ctx, &req)
        })
        .map(drop)
    }

    /// `CopyFile`: writes a file under the guest's `/run/moat/files`.
    pub fn copy_file(&self, req: &CopyFileRequest) -> Result<(), ClientError> {
        self.call("AgentService.CopyFile", |ctx| {
            self.agent.copy_file(ctx, req)
        })
        .map(drop)
    }
}

/// Seconds and microseconds since the epoch (negative seconds, non-negative microseconds for
/// times before it), saturating.
fn epoch_sec_usec(time: SystemTime) -> (i64, i64) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            i64::from(d.subsec_micros()),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_micros() {
                0 => (-secs, 0),
                us => (-secs - 1, 1_000_000 - i64::from(us)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversion() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(epoch_sec_usec(t), (1_700_000_000, 123_456));
        let t = UNIX_EPOCH - Duration::new(2, 250_000_000);
        assert_eq!(epoch_sec_usec(t), (-3, 750_000));
        let t = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(epoch_sec_usec(t), (-5, 0));
    }
}
