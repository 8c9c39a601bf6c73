//! The pod share's cache in the guest. moat-vmm's virtio-fs server holds one open host fd per
//! inode the guest kernel keeps of the share, until the guest FORGETs it; a removed
//! container's root filesystem is unreachable but its dentries and inodes stay cached until
//! memory pressure, pinning those fds (and the host's detached overlay mount). After a
//! container is removed the agent drops the guest's reclaimable dentry and inode caches
//! (`vm.drop_caches = 2`), which sends the FORGETs: the VMM's fds then track the containers
//! that live, not every container the pod ever ran.

/// The kernel's knob.
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Drops the guest's unused dentries and inodes (only as the guest's init: an agent run in a
/// test namespace leaves its host alone).
pub fn release_unused() {
    if std::process::id() != 1 {
        return;
    }
    if let Err(e) = std::fs::write(DROP_CACHES, "2") {
        tracing::warn!("dropping the share's unused inodes ({DROP_CACHES}): {e}");
    }
}
