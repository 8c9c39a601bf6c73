//! The shim process's life: containerd's `start` (spawn or reuse the pod's shim), `delete`
//! (clean up after a dead shim) and the serving process's task service.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::host::cgroup::OomScoreAdj;
use crate::pod::{cleanup, spec};
use crate::task::events::Events;
use crate::task::TaskService;

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

/// Removes the shim socket of `address` (`unix:///run/containerd/s/...`, from the bundle's
/// `address` file) when no shim serves it any more (connecting is refused): a killed shim
/// leaves it behind, and a later `start` of the same group would only remove it then.
/// Returns the path removed.
fn remove_dead_socket(address: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let path = Path::new(address.trim().strip_prefix("unix://")?);
    if !std::fs::symlink_metadata(path)
        .ok()?
        .file_type()
        .is_socket()
    {
        return None;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).ok()?;
            Some(path.display().to_string())
        }
        _ => None,
    }
}

impl containerd_shim::Shim for Shim {
    type T = TaskService;

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
        let (pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        // A pod's later containers reach its running shim: the child spawned then is gone.
        match OomScoreAdj::adjust_shim(pid) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("{RUNTIME_ID}: oom_score_adj of shim {pid}: {e}");
            }
            _ => {}
        }
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let mut what = cleanup::after_dead_shim(&bundle, &self.id);
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            if let Some(removed) = remove_dead_socket(&address) {
                what.push_str(&format!("; removed the dead shim's socket {removed}"));
            }
        }
        eprintln!("{RUNTIME_ID}: delete {}: {what}", self.id);
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(crate::task::process::timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // The serving shim's id is its group's: the pod (ctr: the lone container).
        crate::logctx::set_pod(&self.id);
        TaskService::new(
            &self.namespace,
            Events::new(Some(publisher), &self.namespace),
            self.exit.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `install.sh` installs `runtime/configuration.toml` as the default config: it must
    /// parse, and say exactly the built-in defaults.
    #[test]
    fn the_installed_default_config_is_the_built_in_one() {
        let text = include_str!("../configuration.toml");
        let cfg = crate::config::Config::parse(text, Path::new("configuration.toml")).unwrap();
        assert_eq!(cfg, crate::config::Config::default());
    }

    #[test]
    fn only_a_dead_shim_socket_is_removed() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path();
        let live = dir.join("live");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let dead = dir.join("dead");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        let addr = |p: &Path| format!("unix://{}", p.display());
        assert_eq!(remove_dead_socket(&addr(&live)), None);
        assert!(live.exists());
        assert_eq!(
            remove_dead_socket(&addr(&dead)),
            Some(dead.display().to_string())
        );
        assert!(!dead.exists());
        assert_eq!(remove_dead_socket(&addr(&file)), None);
        assert!(file.exists());
        assert_eq!(remove_dead_socket(&addr(&dir.join("none"))), None);
        assert_eq!(remove_dead_socket("/no/scheme"), None);
    }
}
