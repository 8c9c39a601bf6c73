//! Where a pod's host-side state lives: `<state_dir>/<namespace>/<pod id>/` (mode 0700) holds
//! the VMM's config and pid file, `vsock/` (its vsock socket), `jail/` (the VMM's root,
//! empty on the host), `staging/` (the tmpfs where the shim mounts
//! each container's root filesystem and shared mounts under `staging/<container id>/`) and
//! `share/`, its read-only bind exported to the guest over virtio-fs (see
//! [`crate::host::share`]). A bundle records its pod in `moat-pod.json` so `delete` can clean
//! up after a shim that was killed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::share::{SHARE_DIR, STAGING_DIR};
use crate::vm::GUEST_SHARE_DIR;

/// The marker a container's bundle gets: which pod directory the container lives in.
pub const BUNDLE_MARKER: &str = "moat-pod.json";

/// A pod's state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDir {
    /// `<state_dir>/<namespace>/<pod id>`.
    pub root: PathBuf,
}

impl PodDir {
    /// The directory of pod `pod_id` in containerd namespace `namespace`.
    pub fn new(state_dir: &Path, namespace: &str, pod_id: &str) -> PodDir {
        PodDir {
            root: state_dir.join(namespace).join(pod_id),
        }
    }

    /// The VMM's hybrid vsock socket, alone in [`PodDir::vsock_dir`].
    pub fn vsock(&self) -> PathBuf {
        self.vsock_dir().join("vm.sock")
    }

    /// The directory of the vsock socket: bound into the VMM's jail (so it holds nothing
    /// else).
    pub fn vsock_dir(&self) -> PathBuf {
        self.root.join("vsock")
    }

    /// The VMM's jail: an empty directory the VMM mounts its root on, in its own mount
    /// namespace (the host only ever sees it empty).
    pub fn jail(&self) -> PathBuf {
        self.root.join("jail")
    }

    /// The VMM's configuration (`moat-vmm --config`).
    pub fn vm_config(&self) -> PathBuf {
        self.root.join("vm.json")
    }

    /// The VMM's pid file.
    pub fn vmm_pid(&self) -> PathBuf {
        self.root.join("vmm.pid")
    }

    /// The metrics file the VMM rewrites while it runs (`metrics_file` of its config).
    pub fn vmm_metrics(&self) -> PathBuf {
        self.root.join("vmm-metrics.json")
    }

    /// The guest console's file ([`crate::vm::console_log`]; `console.log.1` the older).
    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// The shim's ops socket ([`crate::ops`]): status, metrics, debug console.
    pub fn ops_socket(&self) -> PathBuf {
        self.root.join(crate::ops::OPS_SOCKET)
    }

    /// What the shim changed in the pod's network namespace ([`crate::host::network`]).
    pub fn network_record(&self) -> PathBuf {
        self.root.join(crate::host::network::RECORD_FILE)
    }

    /// The port-forward rule the shim added in the pod's network namespace
    /// ([`crate::host::port_forward`]).
    pub fn port_forward_record(&self) -> PathBuf {
        self.root.join(crate::host::port_forward::RECORD_FILE)
    }

    /// The directory shared with the guest (read-only bind of [`PodDir::staging`]).
    pub fn share(&self) -> PathBuf {
        self.root.join(SHARE_DIR)
    }

    /// The staging tmpfs, where only the shim mounts.
    pub fn staging(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }

    /// Container `id`'s directory in the staging tree (where the shim mounts).
    pub fn container(&self, id: &str) -> PathBuf {
        self.staging().join(id)
    }

    /// Container `id`'s directory in the share (the same directory, read-only).
    pub fn shared_container(&self, id: &str) -> PathBuf {
        self.share().join(id)
    }
}

/// Container `id`'s directory as the guest sees it.
pub fn guest_container_dir(id: &str) -> PathBuf {
    Path::new(GUEST_SHARE_DIR).join(id)
}

/// What a bundle's [`BUNDLE_MARKER`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMarker {
    /// The pod's directory.
    pub pod: PodDir,
    /// The pod id.
    pub pod_id: String,
    /// Whether this container is the pod's own (sandbox) container, whose delete ends the VM.
    pub is_sandbox: bool,
}

impl BundleMarker {
    /// Writes the marker into `bundle`.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(bundle.join(BUNDLE_MARKER), json)
    }

    /// Reads the marker of `bundle`, if any (a container that never got to `Create`).
    pub fn read(bundle: &Path) -> Option<BundleMarker> {
        let bytes = std::fs::read(bundle.join(BUNDLE_MARKER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// An id that is not usable as one path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {id:?} is not a valid id ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 128)")]
pub struct InvalidId {
    /// Which id (`container id`, `pod id`, `exec id`).
    pub what: &'static str,
    /// The id given.
    pub id: String,
}

/// Checks that `id` is usable as one path component that starts with a letter or digit
/// (containerd ids are `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 76 characters).
pub fn check_id(what: &'static str, id: &str) -> Result<(), InvalidId> {
    // The first byte as containerd's own rule: a leading `.` is moat's (`.moat-debug`).
    let ok = id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            what,
            id: id.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let d = PodDir::new(Path::new("/run/moat"), "k8s.io", "pod1");
        assert_eq!(d.root, Path::new("/run/moat/k8s.io/pod1"));
        assert_eq!(
            d.container("c1"),
            Path::new("/run/moat/k8s.io/pod1/staging/c1")
        );
        assert_eq!(
            d.shared_container("c1"),
            Path::new("/run/moat/k8s.io/pod1/share/c1")
        );
        assert_eq!(
            guest_container_dir("c1"),
            Path::new("/run/moat/shares/pod/c1")
        );
    }

    #[test]
    fn ids() {
        assert!(check_id("id", "abc-1.2_3").is_ok());
        for bad in [
            "",
            ".",
            "..",
            ".moat-debug",
            "-x",
            "a/b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(check_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn marker_round_trip() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path();
        let m = BundleMarker {
            pod: PodDir::new(Path::new("/run/moat"), "default", "p"),
            pod_id: "p".into(),
            is_sandbox: true,
        };
        m.write(dir).unwrap();
        assert_eq!(BundleMarker::read(dir), Some(m));
    }
}
