//! moat-agent driven directly, without the shim: [`ns_agent`] runs it as PID 1 of fresh host
//! namespaces (the fast rung, no VM), [`crate::guest::AgentVm`] in a real guest; the flows of
//! [`container_suite`] run against either, over [`containers`] (create, attach stdio, start,
//! wait, remove) with specs from [`oci`].

pub mod container_suite;
pub mod containers;
pub mod ns_agent;
pub mod oci;
