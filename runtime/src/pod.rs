//! A pod on the host: its state directory ([`layout`]), its VM, the host side of its
//! containers, and the teardown that leaves nothing behind — also when the shim itself was
//! killed and containerd runs `containerd-shim-moat-v2 delete` ([`cleanup`]).
//!
//! [`boot`] brings a pod up; [`spec`] turns a container's OCI spec into the guest's; [`io`]
//! bridges a process's stdio between containerd and the agent.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::protos::types::mount::Mount as ApiMount;

use crate::guard::text::Untrusted;
use crate::host::confined::PathError;
use crate::host::mounts::MountError;
use crate::host::network::{NetworkError, PodNetwork};
use crate::host::port_forward::PortForward;
use crate::host::share::{ContainerMounts, PodShare, ShareError};
use crate::util::lock;
use crate::vm::{Vm, VmError};

pub mod boot;
pub mod cleanup;
pub mod io;
pub mod layout;
pub mod spec;

use layout::{BundleMarker, PodDir};
use spec::HostBind;

/// How long a VMM gets to exit after SIGTERM before SIGKILL.
pub const VMM_STOP_GRACE: Duration = Duration::from_secs(3);

/// Errors setting up a pod or a container's host side.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod directory could not be made.
    #[error("creating pod directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A pod with this id already has a directory (another shim runs it).
    #[error("pod directory {0} already exists: is another shim running this pod?")]
    Exists(PathBuf),
    /// The pod's share could not be made.
    #[error("the pod's share: {0}")]
    Share(#[from] ShareError),
    /// The VM did not come up.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent refused the pod.
    #[error("creating the pod in the guest: {0}")]
    GuestPod(String),
    /// A host mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The pod's network namespace could not be connected to the VM.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The agent refused the pod's network.
    #[error("configuring the pod network in the guest: {0}")]
    GuestNetwork(String),
}

/// A booted pod.
pub struct Pod {
    /// The pod id (CRI sandbox id, or the lone container's id).
    pub id: String,
    /// Its state directory.
    pub dir: PodDir,
    /// Its VM.
    pub vm: Arc<Vm>,
    /// Its share, where containers' root filesystems and volumes are mounted.
    share: PodShare,
    /// Its network namespace's changes, undone at teardown.
    network: Mutex<Option<PodNetwork>>,
    /// The network namespace the shim made for the pod (for its hooks, see
    /// [`crate::host::netns`]), kept until teardown.
    own_netns: Mutex<Option<OwnedFd>>,
    /// CRI `PortForward`'s way into the guest, stopped at teardown.
    port_forward: Mutex<Option<PortForward>>,
}

/// What the host prepares for one container before the agent creates it.
pub struct ContainerSetup<'a> {
    /// The container id.
    pub id: &'a str,
    /// Its bundle directory (gets the [`BundleMarker`]).
    pub bundle: &'a Path,
    /// containerd's rootfs mounts (none: bind the spec's `root.path`).
    pub rootfs: &'a [ApiMount],
    /// The spec's `root.path`.
    pub spec_root: &'a Path,
    /// The spec's `root.readonly`: a bound `root.path` is read-only on the host too.
    pub root_readonly: bool,
    /// Host paths the spec shares into the container.
    pub binds: &'a [HostBind],
    /// Whether it is the pod's own (first, CRI sandbox) container, whose delete ends the pod.
    pub is_sandbox: bool,
}

impl Pod {
    /// Mounts container `c`'s root filesystem and shared host paths into the share and
    /// records the pod in its bundle. A container directory that already exists is refused.
    /// On failure the container's share directory is gone.
    pub fn setup_container(&self, c: &ContainerSetup<'_>) -> Result<(), PodError> {
        let marker = BundleMarker {
            pod: self.dir.clone(),
            pod_id: self.id.clone(),
            is_sandbox: c.is_sandbox,
        };
        let result = marker
            .write(c.bundle)
            .map_err(|source| PodError::Dir {
                path: c.bundle.to_path_buf(),
                source,
            })
            .and_then(|_| {
                let mounts = ContainerMounts {
                    id: c.id,
                    rootfs: c.rootfs,
                    bundle: c.bundle,
                    spec_root: c.spec_root,
                    root_readonly: c.root_readonly,
                    binds: c.binds,
                };
                Ok(self.share.add_container(&mounts)?)
            });
        match &result {
            // Not ours to remove: another container's, or planted.
            Err(PodError::Mount(MountError::MountPoint(PathError::Exists(p))))
                if *p == self.dir.container(c.id) => {}
            Err(_) => cleanup::remove_container_dir(&self.dir, c.id),
            Ok(()) => {}
        }
        result
    }

    /// Keeps `fd`, the network namespace the shim made for the pod, until teardown.
    pub fn keep_netns(&self, fd: OwnedFd) {
        *lock(&self.own_netns) = Some(fd);
    }

    /// A path naming the pod's own network namespace, if the shim made one.
    pub fn own_netns_path(&self) -> Option<PathBuf> {
        lock(&self.own_netns)
            .as_ref()
            .map(crate::host::netns::fd_path)
    }

    /// Removes container `cid`'s host side: its share directory and the bundle's marker.
    pub fn remove_container(&self, cid: &str, bundle: &Path) {
        cleanup::remove_container(&self.dir, cid, bundle);
    }

    /// Stops the VM and removes the pod's directory with every mount under it.
    pub fn teardown(&self) {
        if let Some(f) = lock(&self.port_forward).take() {
            f.stop();
        }
        if self.vm.exited().is_none() {
            if let Err(e) = self.vm.client.destroy_pod(&self.id) {
                crate::plog!(
                    Debug,
                    "pod {}: destroying the pod in the guest: {}",
                    self.id,
                    Untrusted(&e)
                );
            }
        }
        let status = self.vm.stop(VMM_STOP_GRACE);
        crate::plog!(
            Info,
            "pod {}: VM stopped ({})",
            self.id,
            moat_vmm_config::status::describe(status)
        );
        if let Some(n) = lock(&self.network).take() {
            n.teardown();
        }
        drop(lock(&self.own_netns).take());
        cleanup::remove_pod_dir(&self.dir);
    }
}
