//! The agent as the guest's container runtime (runc's job, inside the VM).
//!
//! A container is created from an OCI runtime spec by re-executing the agent binary in its
//! hidden init mode (`/proc/self/exe` with [`init::INIT_ARG`]): a fresh, single-threaded
//! process that joins the container's cgroup, enters/creates its namespaces, forks into the
//! PID namespace, sets up the root filesystem, and at StartContainer drops privileges, applies
//! seccomp and execs the program. The agent and the init process talk over a socketpair
//! ([`sync`]). Nothing runs between `fork` and `exec` in the multi-threaded agent.
//!
//! - [`cgroup`]: cgroup v2 directories, resources, stats, freeze, kill; [`oom`] watches OOM kills.
//! - [`seccomp`]: OCI seccomp profiles (and the default profile) compiled to BPF.
//! - [`rootfs`] and [`devices`]: mounts, `/dev`, `pivot_root`, masked/readonly paths, sysctls.
//! - [`capabilities`]: capability sets from the spec.
//! - [`init`]: what the init process does; [`spawn`]: how the agent starts it; [`console`]:
//!   the pty of a terminal process, allocated inside the container and sent to the agent.
//! - [`registry`]: the containers and processes the agent knows, and their lifecycle.

pub mod capabilities;
pub mod cgroup;
pub mod console;
pub mod devices;
pub mod init;
pub mod oom;
pub mod pod;
pub mod registry;
pub mod rootfs;
pub mod seccomp;
pub mod share_cache;
pub mod spawn;
pub mod sync;
