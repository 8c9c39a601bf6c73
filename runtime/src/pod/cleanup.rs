//! Removing a pod's or a container's host side: unmount everything under its directory and
//! remove it — at teardown, and in `containerd-shim-moat-v2 delete` after a dead shim, where
//! the bundle's marker says which pod the container lived in.

use std::path::Path;
use std::time::Duration;

use super::layout::{BundleMarker, PodDir, BUNDLE_MARKER};
use crate::host::{cgroup, mounts, network, port_forward};
use crate::vm;

/// Unmounts container `cid`'s mounts (their copies in the share too) and removes its
/// directory.
pub fn remove_container_dir(dir: &PodDir, cid: &str) {
    if let Err(e) = mounts::unmount_under(&dir.shared_container(cid)) {
        crate::plog!(
            Warn,
            "unmounting {}: {e}",
            dir.shared_container(cid).display()
        );
    }
    unmount_and_remove(&dir.container(cid));
}

/// Removes container `cid`'s host side: its share directory and its bundle's marker.
pub fn remove_container(dir: &PodDir, cid: &str, bundle: &Path) {
    remove_container_dir(dir, cid);
    let _ = std::fs::remove_file(bundle.join(BUNDLE_MARKER));
}

/// Unmounts everything under the pod directory and removes it (and its namespace directory
/// when that is left empty).
pub fn remove_pod_dir(dir: &PodDir) {
    unmount_and_remove(&dir.root);
    if let Some(ns_dir) = dir.root.parent() {
        let _ = std::fs::remove_dir(ns_dir);
    }
}

/// Detaches every mount under `dir` and removes it; failures are logged (teardown goes on).
fn unmount_and_remove(dir: &Path) {
    if let Err(e) = mounts::unmount_under(dir) {
        crate::plog!(Warn, "unmounting {}: {e}", dir.display());
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            crate::plog!(Warn, "removing {}: {e}", dir.display());
        }
    }
}

/// `delete` after a dead shim: unmounts the container's share directory; for the pod's own
/// container also kills a VMM still running (normally already gone with the shim, by
/// PDEATHSIG), restores the network namespace, removes the pod's host cgroup and the pod
/// directory. Returns what it found.
pub fn after_dead_shim(bundle: &Path, cid: &str) -> String {
    let Some(marker) = BundleMarker::read(bundle) else {
        return format!("{cid}: no moat pod recorded in {}", bundle.display());
    };
    remove_container(&marker.pod, cid, bundle);
    if !marker.is_sandbox {
        return format!("{cid}: container of pod {} cleaned up", marker.pod_id);
    }
    let mut what = format!("{cid}: pod {} cleaned up", marker.pod_id);
    if let Some(pid) = vm::leftover_vmm(&marker.pod) {
        let gone = vm::kill_foreign(pid, Duration::from_secs(5));
        what.push_str(&format!("; killed leftover moat-vmm {pid} (gone: {gone})"));
    }
    if let Some(net) = network::cleanup_recorded(&marker.pod.network_record()) {
        what.push_str(&format!("; {net}"));
    }
    if let Some(pf) = port_forward::cleanup_recorded(&marker.pod.port_forward_record()) {
        what.push_str(&format!("; {pf}"));
    }
    if let Some(cg) = cgroup::cleanup_recorded(&cgroup::record_path(&marker.pod)) {
        what.push_str(&format!("; {cg}"));
    }
    remove_pod_dir(&marker.pod);
    what
}
