//! The pod: CreatePod / DestroyPod.
//!
//! One guest runs one pod. CreatePod sets the guest's hostname, writes the pod's DNS files
//! under the agent's state directory (`<state>/pod/{hostname,resolv.conf}`, for the host
//! to bind into containers), mounts the pod's shared `/dev/shm` (`<state>/pod/shm`, a
//! tmpfs: [`moat_agent_protocol::POD_SHM_DIR`] under the default state dir), applies
//! pod-level resources to the pod cgroup (`moat`), and, when
//! the pod shares one PID namespace, starts its holder: PID 1 of that namespace, which reaps
//! the pod's orphans and which containers created with `pod_pidns` join.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process};

use super::cgroup::Cgroup;
use super::init::{InitConfig, InitKind, NamespaceStep};
use super::registry::{validate_id, ContainerError, Containers};
use super::spawn::{self, ChildFds};
use crate::util::lock;

/// What CreatePod asks for.
#[derive(Debug, Default, Clone)]
pub struct PodConfig {
    /// The pod id.
    pub id: String,
    /// Hostname of the guest (empty: unchanged).
    pub hostname: String,
    /// resolv.conf nameservers.
    pub dns_servers: Vec<String>,
    /// resolv.conf search domains.
    pub dns_searches: Vec<String>,
    /// resolv.conf options.
    pub dns_options: Vec<String>,
    /// Start a pod-wide PID namespace.
    pub pidns: bool,
    /// Pod cgroup resources (OCI LinuxResources JSON; empty: none).
    pub resources_json: String,
}

/// A created pod.
#[derive(Debug)]
pub struct Pod {
    id: String,
    holder: Option<u32>,
    cgroup: Option<Cgroup>,
    shm: std::path::PathBuf,
}

impl Pod {
    /// The pid of the PID-namespace holder, if the pod has one.
    pub fn pid_holder(&self) -> Option<u32> {
        self.holder
    }
}

/// The resolv.conf text for the pod.
pub fn resolv_conf(cfg: &PodConfig) -> String {
    let mut s = String::new();
    for ns in &cfg.dns_servers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !cfg.dns_searches.is_empty() {
        s.push_str(&format!("search {}\n", cfg.dns_searches.join(" ")));
    }
    if !cfg.dns_options.is_empty() {
        s.push_str(&format!("options {}\n", cfg.dns_options.join(" ")));
    }
    s
}

fn check_line(what: &str, v: &str) -> Result<(), ContainerError> {
    if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ContainerError::Invalid(format!("bad {what} {v:?}")));
    }
    Ok(())
}

impl PodConfig {
    /// Checks the request: the pod id, DNS entries and hostname are single words, the pod
    /// resources (if any) parse. Returns the resources.
    fn validate(&self) -> Result<Option<LinuxResources>, ContainerError> {
        validate_id("pod", &self.id)?;
        for v in self
            .dns_servers
            .iter()
            .chain(&self.dns_searches)
            .chain(&self.dns_options)
        {
            check_line("DNS entry", v)?;
        }
        if !self.hostname.is_empty() {
            check_line("hostname", &self.hostname)?;
        }
        if self.resources_json.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&self.resources_json)
            .map(Some)
            .map_err(|e| ContainerError::Invalid(format!("bad pod LinuxResources: {e}")))
    }
}

/// Writes the pod's `resolv.conf` into `dir` (created if missing), then sets the guest's
/// hostname and writes `hostname` when the request names one.
fn write_pod_files(dir: &Path, cfg: &PodConfig) -> Result<(), ContainerError> {
    let write = |name: &str, data: &str| {
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(dir.join(name), data))
            .map_err(|e| ContainerError::Internal(format!("writing {}/{name}: {e}", dir.display())))
    };
    write("resolv.conf", &resolv_conf(cfg))?;
    if !cfg.hostname.is_empty() {
        nix::unistd::sethostname(&cfg.hostname)
            .map_err(|e| ContainerError::Internal(format!("sethostname: {e}")))?;
        write("hostname", &format!("{}\n", cfg.hostname))?;
    }
    Ok(())
}

impl Containers {
    /// CreatePod.
    pub fn create_pod(
        self: &Arc<Self>,
        cfg: &PodConfig,
        state_dir: &Path,
    ) -> Result<(), ContainerError> {
        let resources = cfg.validate()?;
        let mut slot = lock(&self.pod);
        if let Some(s) = slot.as_ref() {
            return Err(ContainerError::Exists(format!("pod {:?} exists", s.id)));
        }
        let dir = state_dir.join(POD_DIR);
        write_pod_files(&dir, cfg)?;
        let shm = dir.join("shm");
        mount_pod_shm(&shm)?;
        let rest = || -> Result<_, ContainerError> {
            let cgroup = self.pod_cgroup(resources.as_ref())?;
            let holder = if cfg.pidns {
                Some(self.start_pid_holder()?)
            } else {
                None
            };
            Ok((cgroup, holder))
        };
        let (cgroup, holder) = rest().inspect_err(|_| unmount_pod_shm(&shm))?;
        *slot = Some(Pod {
            id: cfg.id.clone(),
            holder,
            cgroup,
            shm,
        });
        tracing::info!("pod {}: created (pid holder {holder:?})", cfg.id);
        Ok(())
    }

    /// The pod cgroup with `resources` applied; `None` without resources.
    fn pod_cgroup(
        &self,
        resources: Option<&LinuxResources>,
    ) -> Result<Option<Cgroup>, ContainerError> {
        let Some(res) = resources else {
            return Ok(None);
        };
        let cg = self.make_cgroup("")?.ok_or_else(|| {
            ContainerError::Invalid("pod resources need cgroup v2, which this guest lacks".into())
        })?;
        cg.apply(res)
            .map_err(|e| ContainerError::Invalid(format!("pod resources: {e}")))?;
        Ok(Some(cg))
    }

    fn start_pid_holder(&self) -> Result<u32, ContainerError> {
        let null = |write| {
            crate::stdio::dev_null(write).map_err(|e| ContainerError::Internal(e.to_string()))
        };
        let fds = ChildFds {
            stdin: null(false)?,
            stdout: null(true)?,
            stderr: null(true)?,
        };
        let mut process = Process::default();
        process.set_args(Some(vec!["moat-pid-holder".into()]));
        let cfg = InitConfig {
            kind: InitKind::PidHolder,
            process,
            namespaces: vec![NamespaceStep {
                typ: LinuxNamespaceType::Pid,
                join: None,
            }],
            cgroup_procs: None,
            seccomp: None,
            terminal: false,
        };
        let pending = spawn::spawn(&cfg, fds, None, self.reaper()).map_err(|e| {
            ContainerError::Internal(format!("starting the pod PID namespace: {e}"))
        })?;
        Ok(pending.pid)
    }

    /// DestroyPod: removes every container, the PID holder and the pod cgroup.
    pub fn destroy_pod(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        {
            let slot = lock(&self.pod);
            match slot.as_ref() {
                Some(s) if s.id == id => {}
                Some(s) => {
                    return Err(ContainerError::NotFound(format!(
                        "pod {id:?} is not this guest's ({:?})",
                        s.id
                    )))
                }
                None => return Err(ContainerError::NotFound(format!("no pod {id:?}"))),
            }
        }
        for cid in self.ids() {
            self.remove(&cid, timeout)?;
        }
        let pod = lock(&self.pod).take();
        if let Some(s) = pod {
            if let Some(pid) = s.holder {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                self.reaper().wait(pid, Some(timeout));
                self.reaper().forget(pid);
            }
            unmount_pod_shm(&s.shm);
            if let Some(cg) = s.cgroup {
                cg.remove(timeout).map_err(|e| {
                    ContainerError::Internal(format!("removing the pod cgroup: {e}"))
                })?;
            }
        }
        tracing::info!("pod {id}: destroyed");
        Ok(())
    }
}

/// Mounts the pod's `/dev/shm` tmpfs at `dir` (created if missing).
fn mount_pod_shm(dir: &Path) -> Result<(), ContainerError> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir)
        .map_err(|e| ContainerError::Internal(format!("creating {}: {e}", dir.display())))?;
    let data = format!("mode=1777,size={}", moat_agent_protocol::POD_SHM_SIZE);
    mount(
        Some("shm"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| {
        ContainerError::Internal(format!(
            "mounting the pod /dev/shm at {}: {e}",
            dir.display()
        ))
    })
}

/// Detaches the pod's `/dev/shm` (containers still holding it keep it until they exit).
fn unmount_pod_shm(dir: &Path) {
    if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!("unmounting the pod /dev/shm at {}: {e}", dir.display());
    }
}

/// Where the agent keeps its files in the guest (`--state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/run/moat";

/// The pod's directory under the state directory (DNS files, `shm`).
pub const POD_DIR: &str = "pod";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_written_from_the_request() {
        let cfg = PodConfig {
            dns_servers: vec!["10.0.0.10".into()],
            dns_searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            dns_options: vec!["ndots:5".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&cfg),
            "nameserver 10.0.0.10\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert!(check_line("DNS entry", "a b").is_err());
        assert!(check_line("DNS entry", "a\nnameserver 1.2.3.4").is_err());
    }
}
