//! The ttrpc services the agent serves: `Health` and `AgentService`.

use std::sync::Arc;

use moat_agent_protocol::agent::{
    create_agent_service, AgentService, GuestDetailsRequest, GuestDetailsResponse, SharedDir,
};
use moat_agent_protocol::health::{
    create_health, CheckRequest, CheckResponse, Health, ServingStatus, VersionRequest,
    VersionResponse,
};
use moat_agent_protocol::ttrpc::{self, TtrpcContext};
use moat_agent_protocol::PROTOCOL_VERSION;

use crate::guest_info;

/// This agent's version (the crate version).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Implements every service; stateless today (containers come in issue 4).
#[derive(Debug, Default, Clone)]
pub struct Services;

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
        let internal = |e: guest_info::GuestInfoError| {
            tracing::error!("GetGuestDetails: {e}");
            ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, e.to_string()))
        };
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
}

/// A ttrpc server with every service registered, listening on `listener_fd` (taken over).
pub fn server(listener_fd: std::os::unix::io::RawFd) -> ttrpc::Result<ttrpc::Server> {
    let services = Arc::new(Services);
    Ok(ttrpc::Server::new()
        .add_listener(listener_fd)?
        .register_service(create_health(services.clone()))
        .register_service(create_agent_service(services)))
}
