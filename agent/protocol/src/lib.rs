//! The ttrpc protocol between moat's host side and `moat-agent` (PID 1 in the guest).
//!
//! - [`health`]: `moat.health.v1.Health` — `Check` (is the agent serving) and `Version`.
//! - [`agent`]: `moat.agent.v1.AgentService` — the guest (`GetGuestDetails`, time, files), the
//!   pod (`CreatePod`/`DestroyPod`), containers and their processes, stats and resources, OOM
//!   events, the pod's network.
//! - [`client`]: the host-side [`AgentClient`] over the VMM's hybrid vsock socket (or a plain unix
//!   socket in tests).
//! - [`net`]: typed, validated forms of the network RPCs (`UpdateInterface`, `UpdateRoutes`).
//! - [`port_forward`]: streams to the pod's guest ports on [`PORT_FORWARD_VSOCK_PORT`]
//!   (request line, `OK`/`ERR`, raw bytes) and their copy loop.
//! - [`stdio`]: the process stdio streams on [`STDIO_VSOCK_PORT`] (header line, `OK`/`ERR`).
//! - [`console`]: the debug console on [`DEBUG_CONSOLE_VSOCK_PORT`] (request line, frames) and
//!   its host client.
//! - [`guest`]: typed forms of the guest RPCs' replies ([`GuestStats`]).
//!
//! The messages and ttrpc stubs are generated at build time from `protos/*.proto` by
//! `ttrpc-codegen` (pure-Rust parser, no `protoc`).

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unused_imports,
    unused_qualifications,
    non_camel_case_types,
    non_upper_case_globals,
    unreachable_pub
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub mod client;
pub mod console;
pub mod guest;
pub mod handshake;
pub mod net;
pub mod port_forward;
pub mod stdio;
mod util;

pub use client::{AgentClient, ClientError, CreateOptions};
pub use guest::GuestStats;

/// Version of the protocol defined by `protos/`: bumped on every incompatible change.
pub const PROTOCOL_VERSION: u32 = 3;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock port of the agent's process stdio streams ([`stdio`]).
pub const STDIO_VSOCK_PORT: u32 = 1025;

/// The vsock port of the agent's debug console ([`console`]); the agent listens on it only
/// when the guest kernel command line has `moat.debug_console=1`.
pub const DEBUG_CONSOLE_VSOCK_PORT: u32 = 1026;

/// The vsock port of the agent's port-forward streams ([`port_forward`]): connections to a
/// port of the pod's guest network namespace, for CRI `PortForward`.
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1027;

/// Where the guest sees the pod's virtio-fs share (tag `pod`, mounted by the agent for
/// `moat.share=pod`; the shim's `GUEST_SHARE_DIR` has the same value).
pub const POD_SHARE_DIR: &str = "/run/moat/shares/pod";

/// The directory, in the root of the pod's share, that holds the debug console's tools (the
/// host binds it there only for a pod with the debug console on).
pub const DEBUG_TOOLS_DIR: &str = ".moat-debug";

/// The static busybox in [`DEBUG_TOOLS_DIR`]: the debug console's shell and tools.
pub const DEBUG_BUSYBOX: &str = "busybox";

/// The pod's shared `/dev/shm` in the guest: a tmpfs the agent mounts at CreatePod (under
/// its default state dir) and unmounts at DestroyPod; the host binds a pod's containers'
/// `/dev/shm` to it, so they share POSIX shared memory as CRI pods do.
pub const POD_SHM_DIR: &str = "/run/moat/pod/shm";

/// The pod's network namespace in the guest, as a spec names it: the agent's (PID 1's), the
/// VM's own, where the pod's NIC is. A container that joins it may set `net.*` sysctls, as a
/// runc container that joins its pod's namespace may.
pub const POD_NETNS_PATH: &str = "/proc/1/ns/net";

/// The size of [`POD_SHM_DIR`] (Docker's and Kubernetes' default `/dev/shm`).
pub const POD_SHM_SIZE: &str = "64m";

/// `moat.health.v1`: messages and ttrpc stubs of the health service.
pub mod health {
    pub use crate::generated::health::*;
    pub use crate::generated::health_ttrpc::{create_health, Health, HealthClient};
}

/// `moat.agent.v1`: messages and ttrpc stubs of the agent service.
pub mod agent {
    pub use crate::generated::agent::*;
    pub use crate::generated::agent_ttrpc::{
        create_agent_service, AgentService, AgentServiceClient,
    };
}

/// The ttrpc and protobuf crates this protocol is built with, so users need no
/// separate (and possibly mismatched) dependency on them.
pub use {protobuf, ttrpc};
