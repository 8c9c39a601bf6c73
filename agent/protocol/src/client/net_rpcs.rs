//! Typed wrappers of `AgentService`'s network RPCs: requests are built from the checked forms
//! of [`crate::net`], so a request the agent would refuse (too many addresses or routes, a bad
//! name, MTU or prefix) fails here with [`ClientError::Invalid`] and is never sent.

use super::{AgentClient, ClientError};
use crate::net::{routes_to_proto, InterfaceSpec, RouteSpec};

impl AgentClient {
    /// `UpdateInterface`: finds the guest interface (by MAC, else by name) and gives it the
    /// name, MTU, addresses and state of `spec`.
    pub fn update_interface(&self, spec: &InterfaceSpec) -> Result<(), ClientError> {
        const METHOD: &str = "AgentService.UpdateInterface";
        let req = spec.to_proto().map_err(|source| ClientError::Invalid {
            method: METHOD,
            source,
        })?;
        self.call(METHOD, |ctx| self.agent.update_interface(ctx, &req))
            .map(drop)
    }

    /// `UpdateRoutes`: adds `routes` (at most [`crate::net::MAX_ROUTES`]) in order to the
    /// guest's main table.
    pub fn update_routes(&self, routes: &[RouteSpec]) -> Result<(), ClientError> {
        const METHOD: &str = "AgentService.UpdateRoutes";
        let req = routes_to_proto(routes).map_err(|source| ClientError::Invalid {
            method: METHOD,
            source,
        })?;
        self.call(METHOD, |ctx| self.agent.update_routes(ctx, &req))
            .map(drop)
    }
}
