//! The ttrpc services the agent serves: `Health` and `AgentService`.
//!
//! Container RPCs are thin: they check and convert the request and call
//! [`Containers`]; its typed errors become ttrpc status codes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moat_agent_protocol::agent::*;
use moat_agent_protocol::health::{
    create_health, CheckRequest, CheckResponse, Health, ServingStatus, VersionRequest,
    VersionResponse,
};
use moat_agent_protocol::net::{routes_from_proto, InterfaceSpec};
use moat_agent_protocol::protobuf;
use moat_agent_protocol::ttrpc::{self, Code, TtrpcContext};
use moat_agent_protocol::{CreateOptions, PROTOCOL_VERSION};

use crate::container::pod::PodConfig;
use crate::container::registry::{ContainerError, Containers};
use crate::files;
use crate::guest_info;
use crate::guest_stats;
use crate::network::{self, NetworkError};
use crate::reaper::ExitStatus;
use crate::stats;
use crate::stdio::Channels;

/// This agent's version (the crate version).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Implements every service.
#[derive(Clone)]
pub struct Services {
    containers: Arc<Containers>,
    state_dir: PathBuf,
    files_root: PathBuf,
}

impl Services {
    /// Services over `containers`, keeping files under `state_dir` (`/run/moat` in the guest).
    pub fn new(containers: Arc<Containers>, state_dir: PathBuf) -> Self {
        let files_root = state_dir.join("files");
        Services {
            containers,
            state_dir,
            files_root,
        }
    }
}

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn rpc_error(method: &str, e: ContainerError) -> ttrpc::Error {
    let code = match &e {
        ContainerError::Invalid(_) => Code::INVALID_ARGUMENT,
        ContainerError::NotFound(_) => Code::NOT_FOUND,
        ContainerError::Exists(_) => Code::ALREADY_EXISTS,
        ContainerError::State(_) => Code::FAILED_PRECONDITION,
        ContainerError::Timeout(_) => Code::DEADLINE_EXCEEDED,
        ContainerError::Internal(_) => Code::INTERNAL,
    };
    if code == Code::INTERNAL {
        tracing::error!("{method}: {e}");
    } else {
        tracing::info!("{method}: {e}");
    }
    status(code, e.to_string())
}

/// The deadline a ttrpc client gave the call, if any.
fn call_timeout(ctx: &TtrpcContext) -> Option<Duration> {
    (ctx.timeout_nano > 0).then(|| Duration::from_nanos(ctx.timeout_nano as u64))
}

/// A little less than the caller's deadline, so the reply (not the caller's timer) ends it.
fn server_wait(ctx: &TtrpcContext) -> Option<Duration> {
    call_timeout(ctx).map(|t| t.saturating_sub(t / 10).max(Duration::from_millis(1)))
}

fn channels(c: &protobuf::MessageField<StdioChannels>) -> Channels {
    c.as_ref()
        .map(|c| Channels {
            stdin: c.stdin,
            stdout: c.stdout,
            stderr: c.stderr,
        })
        .unwrap_or_default()
}

fn empty(method: &str, r: Result<(), ContainerError>) -> ttrpc::Result<Empty> {
    r.map(|()| Empty::new()).map_err(|e| rpc_error(method, e))
}

impl Health for Services {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let mut resp = CheckResponse::new();
        resp.status = ServingStatus::SERVING_STATUS_SERVING.into();
        Ok(resp)
    }

    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        let mut resp = VersionResponse::new();
        resp.agent_version = AGENT_VERSION.to_string();
        resp.protocol_version = PROTOCOL_VERSION;
        Ok(resp)
    }
}

impl AgentService for Services {
    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let internal = |e| guest_error("GetGuestDetails", e);
        let mut resp = GuestDetailsResponse::new();
        resp.kernel_release = guest_info::kernel_release().map_err(internal)?;
        resp.memory_total_bytes = guest_info::memory_total_bytes().map_err(internal)?;
        resp.online_cpus = guest_info::online_cpus().map_err(internal)?;
        resp.agent_version = AGENT_VERSION.to_string();
        resp.shares = guest_info::virtiofs_mounts()
            .map_err(internal)?
            .into_iter()
            .map(|(tag, mount_point)| {
                let mut dir = SharedDir::new();
                dir.tag = tag;
                dir.mount_point = mount_point;
                dir
            })
            .collect();
        Ok(resp)
    }

    fn get_guest_stats(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestStatsRequest,
    ) -> ttrpc::Result<GuestStatsResponse> {
        guest_stats::read()
            .map(|s| s.to_proto())
            .map_err(|e| guest_error("GetGuestStats", e))
    }

    fn create_pod(&self, _ctx: &TtrpcContext, req: CreatePodRequest) -> ttrpc::Result<Empty> {
        let cfg = PodConfig {
            id: req.pod_id,
            hostname: req.hostname,
            dns_servers: req.dns_servers,
            dns_searches: req.dns_searches,
            dns_options: req.dns_options,
            pidns: req.pod_pidns,
            resources_json: req.resources_json,
        };
        // A pod's processes talk over localhost; without lo that fails in odd ways, but a
        // guest without it still runs containers, so a failure is only logged.
        if let Err(e) = network::loopback_up() {
            tracing::warn!("CreatePod: bringing lo up: {e}");
        }
        empty(
            "CreatePod",
            self.containers.create_pod(&cfg, &self.state_dir),
        )
    }

    fn destroy_pod(&self, _ctx: &TtrpcContext, req: DestroyPodRequest) -> ttrpc::Result<Empty> {
        empty(
            "DestroyPod",
            self.containers
                .destroy_pod(&req.pod_id, Duration::from_secs(10)),
        )
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let pid = self
            .containers
            .create(
                &req.container_id,
                &req.spec_json,
                channels(&req.stdio),
                CreateOptions {
                    pod_pidns: req.pod_pidns,
                    default_seccomp: req.default_seccomp,
                },
            )
            .map_err(|e| rpc_error("CreateContainer", e))?;
        let mut resp = CreateContainerResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        empty("StartContainer", self.containers.start(&req.container_id))
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let pid = self
            .containers
            .exec(
                &req.container_id,
                &req.exec_id,
                &req.process_json,
                channels(&req.stdio),
            )
            .map_err(|e| rpc_error("ExecProcess", e))?;
        let mut resp = ExecProcessResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        empty(
            "SignalProcess",
            self.containers
                .signal(&req.container_id, &req.exec_id, req.signal, req.all),
        )
    }

    fn wait_process(
        &self,
        ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let st = self
            .containers
            .wait(&req.container_id, &req.exec_id, server_wait(ctx))
            .map_err(|e| rpc_error("WaitProcess", e))?;
        let mut resp = WaitProcessResponse::new();
        resp.status = st.shell_status();
        resp.signaled = matches!(st, ExitStatus::Signaled { .. });
        Ok(resp)
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let timeout = match req.timeout_secs {
            0 => Duration::from_secs(10),
            s => Duration::from_secs(u64::from(s.min(600))),
        };
        empty(
            "RemoveContainer",
            self.containers.remove(&req.container_id, timeout),
        )
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let mut resp = ListProcessesResponse::new();
        resp.pids = self
            .containers
            .pids(&req.container_id)
            .map_err(|e| rpc_error("ListProcesses", e))?;
        Ok(resp)
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
        self.containers
            .stdio()
            .resize(
                &req.container_id,
                &req.exec_id,
                clamp(req.rows),
                clamp(req.cols),
            )
            .map(|()| Empty::new())
            .map_err(|e| status(Code::NOT_FOUND, format!("TtyWinResize: {e}")))
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let c = self
            .containers
            .get(&req.container_id)
            .map_err(|e| rpc_error("StatsContainer", e))?;
        let cg = self
            .containers
            .cgroup_of(&c)
            .map_err(|e| rpc_error("StatsContainer", e))?;
        let s = cg
            .stats()
            .map_err(|e| status(Code::INTERNAL, format!("StatsContainer: {e}")))?;
        Ok(stats::to_proto(&s))
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        empty(
            "UpdateContainer",
            self.containers
                .update(&req.container_id, &req.resources_json),
        )
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        empty(
            "PauseContainer",
            self.containers.freeze(&req.container_id, true),
        )
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        empty(
            "ResumeContainer",
            self.containers.freeze(&req.container_id, false),
        )
    }

    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        let Some(oom) = self.containers.oom() else {
            return Err(status(
                Code::UNIMPLEMENTED,
                "no cgroup v2 in this guest: OOM events are not available",
            ));
        };
        match oom.next_event(server_wait(ctx)) {
            Some(id) => {
                let mut ev = OOMEvent::new();
                ev.container_id = id;
                Ok(ev)
            }
            None => Err(status(Code::DEADLINE_EXCEEDED, "no OOM event")),
        }
    }

    fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        if req.sec < 0 || !(0..1_000_000).contains(&req.usec) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("bad time {}.{:06}", req.sec, req.usec),
            ));
        }
        let ts = nix::sys::time::TimeSpec::new(req.sec, req.usec * 1000);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map(|()| Empty::new())
            .map_err(|e| status(Code::INTERNAL, format!("clock_settime: {e}")))
    }

    fn copy_file(&self, _ctx: &TtrpcContext, req: CopyFileRequest) -> ttrpc::Result<Empty> {
        let r = files::CopyRequest {
            path: &req.path,
            data: &req.data,
            file_mode: req.file_mode,
            dir_mode: req.dir_mode,
            uid: req.uid,
            gid: req.gid,
        };
        files::copy_file(&self.files_root, &r)
            .map(|()| Empty::new())
            .map_err(|e| {
                let code = match e {
                    files::FileError::Io { .. } => Code::INTERNAL,
                    _ => Code::INVALID_ARGUMENT,
                };
                status(code, format!("CopyFile: {e}"))
            })
    }

    fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Empty> {
        let spec = InterfaceSpec::from_proto(&req)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("UpdateInterface: {e}")))?;
        network::update_interface(&spec)
            .map(|()| Empty::new())
            .map_err(|e| net_error("UpdateInterface", e))
    }

    fn update_routes(&self, _ctx: &TtrpcContext, req: UpdateRoutesRequest) -> ttrpc::Result<Empty> {
        let routes = routes_from_proto(&req)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("UpdateRoutes: {e}")))?;
        network::update_routes(&routes)
            .map(|()| Empty::new())
            .map_err(|e| net_error("UpdateRoutes", e))
    }
}

/// The ttrpc status of a guest facts RPC's failure: the agent could not read its own guest.
fn guest_error(method: &str, e: guest_info::GuestInfoError) -> ttrpc::Error {
    tracing::error!("{method}: {e}");
    status(Code::INTERNAL, e.to_string())
}

/// The ttrpc status of a network RPC's failure.
fn net_error(method: &str, e: NetworkError) -> ttrpc::Error {
    let code = match e {
        NetworkError::NotFound(_) => Code::NOT_FOUND,
        NetworkError::Netlink(_) => Code::INTERNAL,
    };
    tracing::warn!("{method}: {e}");
    status(code, format!("{method}: {e}"))
}

/// A ttrpc server with every service registered, listening on `listener_fd` (taken over).
/// Calls like WaitProcess block a server thread each, so the pool is large.
pub fn server(
    listener_fd: std::os::unix::io::RawFd,
    services: Services,
) -> ttrpc::Result<ttrpc::Server> {
    let services = Arc::new(services);
    Ok(ttrpc::Server::new()
        .set_thread_count_min(2)
        .set_thread_count_default(8)
        .set_thread_count_max(256)
        .add_listener(listener_fd)?
        .register_service(create_health(services.clone()))
        .register_service(create_agent_service(services)))
}
