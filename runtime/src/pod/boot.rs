//! Bringing a pod up: its state directory, its network namespace connected to a NIC of the
//! VM ([`crate::host::network`]), the VM, then the guest's side of the pod (clock, pod
//! environment, NIC addresses and routes). On failure every step is undone.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use moat_agent_protocol::agent::CreatePodRequest;

use super::cleanup::remove_pod_dir;
use super::layout::PodDir;
use super::{Pod, PodError, VMM_STOP_GRACE};
use crate::config::Config;
use crate::host::cgroup::PodAccounting;
use crate::host::confined::ConfinedDir;
use crate::host::network::{self, PodNetwork};
use crate::host::port_forward::PortForward;
use crate::host::share::{PodShare, ShareError};
use crate::vm::{Vm, VmmStatus};

/// What a pod is booted with.
pub struct PodSpec<'a> {
    /// The containerd namespace.
    pub namespace: &'a str,
    /// The pod id.
    pub id: &'a str,
    /// The guest's hostname.
    pub hostname: &'a str,
    /// The pod's network namespace, if the spec names one.
    pub netns: Option<&'a Path>,
    /// The VMM's host cgroup and `oom_score_adj` ([`crate::host::cgroup`]).
    pub accounting: &'a PodAccounting,
}

impl Pod {
    /// Makes the pod's directory, connects its network namespace (if any) to a NIC of the VM,
    /// boots the VM, creates the agent's pod and gives the guest NIC the pod's addresses and
    /// routes. `on_exit` runs when the VMM ends. On failure nothing is left behind.
    pub fn boot(
        cfg: &Config,
        spec: &PodSpec<'_>,
        on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
    ) -> Result<Pod, PodError> {
        let (dir, share) = make_dir(cfg, spec)?;
        let mut network = match connect_network(&dir, spec) {
            Ok(n) => n,
            Err(e) => {
                remove_pod_dir(&dir);
                return Err(e);
            }
        };
        let nic = network.as_mut().and_then(PodNetwork::take_nic);
        let booted = Vm::start(cfg, &dir, nic, spec.accounting, on_exit)
            .map_err(PodError::from)
            .and_then(|vm| {
                let vm = Arc::new(vm);
                match prepare_guest(&vm, spec, network.as_ref()) {
                    Ok(()) => Ok(vm),
                    Err(e) => {
                        vm.stop(VMM_STOP_GRACE);
                        Err(e)
                    }
                }
            });
        match booted {
            Ok(vm) => {
                let port_forward = start_port_forward(cfg, &dir, spec, &vm);
                Ok(Pod {
                    id: spec.id.into(),
                    dir,
                    vm,
                    share,
                    network: Mutex::new(network),
                    own_netns: Mutex::new(None),
                    port_forward: Mutex::new(port_forward),
                })
            }
            Err(e) => {
                if let Some(n) = network {
                    n.teardown();
                }
                remove_pod_dir(&dir);
                Err(e)
            }
        }
    }
}

/// Creates the pod's state directory (mode 0700) and its share; refuses a pod that already has
/// one.
fn make_dir(cfg: &Config, spec: &PodSpec<'_>) -> Result<(PodDir, PodShare), PodError> {
    let dir = PodDir::new(&cfg.runtime.state_dir, spec.namespace, spec.id);
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PodError::Dir { path, source }
    };
    let ns_dir = dir.root.parent().unwrap_or(&dir.root);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(ns_dir)
        .map_err(dir_err(ns_dir))?;
    match DirBuilder::new().mode(0o700).create(&dir.root) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PodError::Exists(dir.root))
        }
        r => r.map_err(dir_err(&dir.root))?,
    }
    let share = ConfinedDir::open(&dir.root)
        .map_err(ShareError::from)
        .and_then(|root| PodShare::create(&root, cfg.runtime.share_limits()))
        .map_err(PodError::from)
        .and_then(|share| {
            if cfg.debug.console {
                share.add_debug_tools(&cfg.debug.console_busybox)?;
            }
            Ok(share)
        });
    match share {
        Ok(share) => Ok((dir, share)),
        Err(e) => {
            remove_pod_dir(&dir);
            Err(e)
        }
    }
}

/// Bridges the pod network namespace's interface to a new TAP, recorded in the pod dir.
fn connect_network(dir: &PodDir, spec: &PodSpec<'_>) -> Result<Option<PodNetwork>, PodError> {
    let Some(netns) = spec.netns else {
        return Ok(None);
    };
    let t = Instant::now();
    let network = PodNetwork::setup(netns, &dir.network_record())?;
    match &network {
        Some(n) => crate::plog!(
            Info,
            "pod {}: {} of {} bridged to {} ({:?})",
            spec.id,
            n.record.interface,
            n.record.netns.display(),
            network::TAP_NAME,
            t.elapsed()
        ),
        None => crate::plog!(
            Info,
            "pod {}: {} has no interface: no NIC",
            spec.id,
            netns.display()
        ),
    }
    Ok(network)
}

/// CRI `PortForward` into the guest, for a pod with a network namespace (unless
/// `[runtime] port_forward` is off); a failure is logged: the pod runs without it.
fn start_port_forward(
    cfg: &Config,
    dir: &PodDir,
    spec: &PodSpec<'_>,
    vm: &Vm,
) -> Option<PortForward> {
    let netns = spec.netns.filter(|_| cfg.runtime.port_forward)?;
    let t = Instant::now();
    let record = dir.port_forward_record();
    match PortForward::start(spec.id, netns, &record, vm.client.port_forward_opener()) {
        Ok(f) => {
            crate::plog!(
                Info,
                "pod {}: port forward: 127.0.0.1 in {} goes to the guest (via 127.0.0.1:{}, {:?})",
                spec.id,
                netns.display(),
                f.listen_port(),
                t.elapsed()
            );
            Some(f)
        }
        Err(e) => {
            crate::plog!(
                Warn,
                "pod {}: no port forwarding (CRI PortForward will not reach the guest): {e}",
                spec.id
            );
            None
        }
    }
}

/// The guest's clock and pod, then its NIC: addresses and routes of the pod's network.
fn prepare_guest(
    vm: &Vm,
    spec: &PodSpec<'_>,
    network: Option<&PodNetwork>,
) -> Result<(), PodError> {
    let c = &vm.client;
    let mut req = CreatePodRequest::new();
    req.pod_id = spec.id.into();
    req.hostname = spec.hostname.into();
    req.pod_pidns = true;
    c.set_guest_date_time(SystemTime::now())
        .and_then(|_| c.create_pod(&req))
        .map_err(|e| PodError::GuestPod(e.to_string()))?;
    let Some(n) = network else {
        return Ok(());
    };
    let t = Instant::now();
    c.update_interface(&n.guest.interface)
        .and_then(|_| c.update_routes(&n.guest.routes))
        .map_err(|e| PodError::GuestNetwork(e.to_string()))?;
    crate::plog!(
        Info,
        "pod {}: guest {} has {} address(es), {} route(s) ({:?})",
        spec.id,
        n.guest.interface.new_name,
        n.guest.interface.addresses.len(),
        n.guest.routes.len(),
        t.elapsed()
    );
    Ok(())
}
