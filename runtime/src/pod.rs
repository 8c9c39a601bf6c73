//! A pod on the host: its state directory, its VM, the host mounts of its containers, and the
//! teardown that leaves nothing behind — also when the shim itself was killed and containerd
//! runs `containerd-shim-moat-v2 delete` to clean up.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim::protos::types::mount::Mount as ApiMount;
use moat_agent_protocol::agent::CreateSandboxRequest;

use crate::config::Config;
use crate::layout::{BundleMarker, PodDir};
use crate::mounts::{self, MountError};
use crate::network::{self, NetworkError, PodNetwork};
use crate::spec::HostBind;
use crate::vm::{self, Vm, VmError, VmNic, VmmStatus};

/// How long a VMM gets to exit after SIGTERM before SIGKILL.
pub const VMM_STOP_GRACE: Duration = Duration::from_secs(3);

/// Errors setting up a pod or a container's host side.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod directory could not be made.
    #[error("creating pod directory {path}: {source}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A pod with this id already has a directory (another shim runs it).
    #[error("pod directory {0} already exists: is another shim running this pod?")]
    Exists(std::path::PathBuf),
    /// The VM did not come up.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent refused the sandbox.
    #[error("creating the sandbox in the guest: {0}")]
    Sandbox(String),
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
    /// Its network namespace's changes, undone at teardown.
    network: Mutex<Option<PodNetwork>>,
}

impl Pod {
    /// Makes the pod's directory, connects network namespace `netns` (if any) to a NIC of the
    /// VM ([`crate::network`]), boots the VM, creates the agent's sandbox and gives the guest
    /// NIC the pod's addresses and routes. `on_exit` runs when the VMM ends. On failure
    /// nothing is left behind.
    pub fn boot(
        cfg: &Config,
        namespace: &str,
        id: &str,
        hostname: &str,
        netns: Option<&Path>,
        on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
    ) -> Result<Pod, PodError> {
        let dir = PodDir::new(&cfg.runtime.state_dir, namespace, id);
        if dir.root.exists() {
            return Err(PodError::Exists(dir.root));
        }
        std::fs::create_dir_all(dir.share()).map_err(|source| PodError::Dir {
            path: dir.share(),
            source,
        })?;
        let t = Instant::now();
        let mut network = match netns.map(|p| PodNetwork::setup(p, &dir.network_record())) {
            None => None,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                remove_pod_dir(&dir);
                return Err(PodError::Network(e));
            }
        };
        match (&network, netns) {
            (Some(n), _) => log::info!(
                "pod {id}: {} of {} bridged to {} ({:?})",
                n.record.interface,
                n.record.netns.display(),
                network::TAP_NAME,
                t.elapsed()
            ),
            (None, Some(p)) => log::info!("pod {id}: {} has no interface: no NIC", p.display()),
            (None, None) => {}
        }
        let nic = network.as_mut().and_then(|n| {
            let tap = n.take_tap()?;
            Some(VmNic {
                arg: n.vmm_arg(tap.as_raw_fd()),
                tap,
            })
        });
        let booted = Vm::start(cfg, &dir, nic, on_exit)
            .map_err(PodError::from)
            .and_then(|vm| {
                let vm = Arc::new(vm);
                match prepare_guest(&vm, id, hostname, network.as_ref()) {
                    Ok(()) => Ok(vm),
                    Err(e) => {
                        vm.stop(VMM_STOP_GRACE);
                        Err(e)
                    }
                }
            });
        match booted {
            Ok(vm) => Ok(Pod {
                id: id.into(),
                dir,
                vm,
                network: Mutex::new(network),
            }),
            Err(e) => {
                if let Some(n) = network {
                    n.teardown();
                }
                remove_pod_dir(&dir);
                Err(e)
            }
        }
    }

    /// Mounts container `cid`'s root filesystem and shared host paths into the share and
    /// records the pod in its bundle. On failure the container's share directory is gone.
    pub fn setup_container(
        &self,
        cid: &str,
        bundle: &Path,
        rootfs: &[ApiMount],
        spec_root: &Path,
        binds: &[HostBind],
        is_sandbox: bool,
    ) -> Result<(), PodError> {
        let marker = BundleMarker {
            pod: self.dir.clone(),
            pod_id: self.id.clone(),
            is_sandbox,
        };
        let result = marker
            .write(bundle)
            .map_err(|source| PodError::Dir {
                path: bundle.to_path_buf(),
                source,
            })
            .and_then(|_| {
                mounts::mount_rootfs(rootfs, bundle, spec_root, &self.dir.rootfs(cid))?;
                for b in binds {
                    let target = self.dir.container(cid).join("mounts").join(&b.share_name);
                    mounts::bind(&b.source, &target, b.readonly)?;
                }
                Ok(())
            });
        if result.is_err() {
            remove_container_dir(&self.dir, cid);
        }
        result
    }

    /// Stops the VM and removes the pod's directory with every mount under it.
    pub fn teardown(&self) {
        if self.vm.exited().is_none() {
            if let Err(e) = self.vm.client.destroy_sandbox(&self.id) {
                log::debug!("pod {}: destroying the sandbox: {e}", self.id);
            }
        }
        let status = self.vm.stop(VMM_STOP_GRACE);
        log::info!("pod {}: VM stopped ({})", self.id, vm::describe(status));
        let network = self
            .network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(n) = network {
            n.teardown();
        }
        remove_pod_dir(&self.dir);
    }
}

/// The guest's clock and sandbox, then its NIC: addresses and routes of the pod's network.
fn prepare_guest(
    vm: &Vm,
    id: &str,
    hostname: &str,
    network: Option<&PodNetwork>,
) -> Result<(), PodError> {
    let c = &vm.client;
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = id.into();
    req.hostname = hostname.into();
    req.sandbox_pidns = true;
    c.set_guest_date_time(SystemTime::now())
        .and_then(|_| c.create_sandbox(&req))
        .map_err(|e| PodError::Sandbox(e.to_string()))?;
    let Some(n) = network else {
        return Ok(());
    };
    let t = Instant::now();
    c.update_interface(&n.guest.interface)
        .and_then(|_| c.update_routes(&n.guest.routes))
        .map_err(|e| PodError::GuestNetwork(e.to_string()))?;
    log::info!(
        "pod {id}: guest {} has {} address(es), {} route(s) ({:?})",
        n.guest.interface.new_name,
        n.guest.interface.addresses.len(),
        n.guest.routes.len(),
        t.elapsed()
    );
    Ok(())
}

/// Unmounts and removes container `cid`'s share directory.
pub fn remove_container_dir(dir: &PodDir, cid: &str) {
    unmount_and_remove(&dir.container(cid));
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
        log::warn!("unmounting {}: {e}", dir.display());
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", dir.display());
        }
    }
}

/// `delete` after a dead shim: unmounts the container's share directory; for the pod's own
/// container also kills a VMM still running (normally already gone with the shim, by
/// PDEATHSIG) and removes the pod directory. Returns what it found.
pub fn cleanup_after_dead_shim(bundle: &Path, cid: &str) -> String {
    let Some(marker) = BundleMarker::read(bundle) else {
        return format!("{cid}: no moat pod recorded in {}", bundle.display());
    };
    remove_container_dir(&marker.pod, cid);
    let _ = std::fs::remove_file(bundle.join(crate::layout::BUNDLE_MARKER));
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
    remove_pod_dir(&marker.pod);
    what
}
