//! Host resources a pod uses besides its VM: the mounts that fill its virtio-fs share
//! ([`mounts`]), its network namespace bridged to a TAP of the VM ([`network`]), the host
//! cgroup and OOM score its VMM is accounted with ([`cgroup`]), and the size of its VM
//! ([`sizing`]). Each records what it changes and undoes it at teardown.

pub mod cgroup;
pub mod mounts;
pub mod network;
pub mod sizing;
