//! Host resources a pod uses besides its VM: its virtio-fs share ([`share`]: a host-only
//! staging tmpfs and its read-only bind for the guest) filled with mounts ([`mounts`]) made
//! through symlink-free, confined paths ([`confined`]), its network namespace bridged to a TAP
//! of the VM ([`network`]), the host cgroup and OOM score its VMM is accounted with
//! ([`cgroup`]), the size of its VM ([`sizing`]), the spec's host-side OCI hooks
//! ([`hooks`]), and CRI `PortForward`'s way into the guest ([`port_forward`]). Each records what it changes and undoes
//! it at teardown.

pub mod cgroup;
pub mod confined;
pub mod hooks;
pub mod mounts;
pub mod netns;
pub mod network;
pub mod port_forward;
pub mod record;
pub mod share;
pub mod sizing;

#[cfg(test)]
pub mod testing;
