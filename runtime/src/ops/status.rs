//! A pod's status as its shim reports it (`GET /status`, `moat ps`).

use serde::{Deserialize, Serialize};

/// The pod, its VM and its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// The pod id (CRI sandbox id, or the lone container's id).
    pub pod_id: String,
    /// The containerd namespace.
    pub namespace: String,
    /// The shim's pid.
    pub shim_pid: u32,
    /// The VMM's pid (the process the shim spawned; 0 before boot).
    pub vmm_pid: u32,
    /// The VM's vCPUs.
    pub vcpus: u32,
    /// The VM's memory in MiB.
    pub memory_mib: u64,
    /// When the VMM was started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Milliseconds from starting the VMM to the agent's first answer.
    pub boot_ms: u64,
    /// `running`, or how the VMM ended.
    pub vm_state: String,
    /// Whether the pod was started with the debug console on.
    pub debug_console: bool,
    /// The pod's containers, by id.
    pub containers: Vec<ContainerStatus>,
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// The container id.
    pub id: String,
    /// `created`, `running`, `paused`, `stopped`, ...
    pub status: String,
    /// Whether it is the pod's own (sandbox) container.
    pub is_sandbox: bool,
    /// Exec processes it has.
    pub execs: u32,
    /// The init process's exit status, once it exited.
    pub exit_status: Option<u32>,
}
