//! The shim process's life: containerd's `start` (spawn or reuse the pod's shim), `delete`
//! (clean up after a dead shim) and the serving process's task service.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config as ShimConfig, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::events::Events;
use crate::service::Service;
use crate::{pod, spec};

/// containerd's runtime type for moat.
pub const RUNTIME_ID: &str = "io.containerd.moat.v2";

/// The `containerd_shim::Shim` of moat.
pub struct Shim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

/// How the shim library should behave: moat reaps its own VMM (the keeper thread waits on
/// it), so the library's SIGCHLD reaper and subreaper role are off.
pub fn shim_config() -> ShimConfig {
    ShimConfig {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The shim grouping of the container in `bundle`: its CRI pod, so every container of a pod
/// reaches the same shim (and VM); a lone container groups by itself.
pub fn grouping(bundle: &Path, id: &str) -> String {
    match spec::read_bundle_spec(bundle) {
        Ok(s) => spec::pod_of(&s, id),
        Err(_) => id.to_string(),
    }
}

impl containerd_shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Shim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let group = grouping(&bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let what = pod::cleanup_after_dead_shim(&bundle, &self.id);
        eprintln!("{RUNTIME_ID}: delete {}: {what}", self.id);
        Ok(api::DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(crate::process::timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(
            &self.namespace,
            Events::new(Some(publisher), &self.namespace),
            self.exit.clone(),
        )
    }
}
