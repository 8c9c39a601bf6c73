//! `Create`: a container's spec is read and translated for the guest, its pod found (or
//! booted, for the pod's first container, sized by its spec), its host side set up, and the
//! agent creates it; its stdio is attached before `TaskCreate` is published. Every failure
//! leaves nothing behind (and a pod booted for it is torn down).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::events::task::{TaskCreate, TaskIO};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::mount::Mount as ApiMount;
use moat_agent_protocol::CreateOptions;
use serde_json::Value;

use super::process::Process;
use super::state::{Container, Tasks};
use super::REMOVE_TIMEOUT;
use crate::config::Config;
use crate::error::TaskError;
use crate::host::cgroup::{self, CgroupError, OomScoreAdj, PodAccounting};
use crate::host::hooks::{self, PostHooks, SpecHooks};
use crate::host::netns;
use crate::host::sizing;
use crate::pod::boot::PodSpec;
use crate::pod::cleanup::remove_container_dir;
use crate::pod::io::{ProcessIo, StdioPaths};
use crate::pod::layout::check_id;
use crate::pod::spec::{self, GuestSpec, SpecError};
use crate::pod::{ContainerSetup, Pod};

/// A container to create, as containerd's `Create` asks for it.
pub struct NewContainer {
    /// The container id.
    pub id: String,
    /// Its bundle directory (with `config.json`).
    pub bundle: PathBuf,
    /// containerd's rootfs mounts (empty: the spec's `root.path` is ready).
    pub rootfs: Vec<ApiMount>,
    /// Its init process's stdio.
    pub stdio: StdioPaths,
    /// The moat config file named by the runtime options, if any.
    pub config_path: Option<PathBuf>,
}

/// What the spec says about where and how the container runs.
struct Plan {
    /// The spec as containerd wrote it.
    host_spec: Value,
    /// Its `root.path`.
    spec_root: PathBuf,
    /// The pod it belongs to.
    pod_id: String,
    /// The spec for the guest.
    guest: GuestSpec,
    /// The shim's configuration, with the VM sized for a pod's first container.
    cfg: Config,
    /// Where a pod's first container's VMM is accounted on the host.
    accounting: PodAccounting,
    /// The spec's host-side hooks.
    hooks: SpecHooks,
}

impl Plan {
    fn is_sandbox(&self, id: &str) -> bool {
        self.pod_id == id
    }
}

impl Tasks {
    /// Creates container `c`; returns the pid containerd is told (the pod's VMM's, never the
    /// guest's: see [`super::state::State::host_pid`]).
    pub fn create(&self, c: NewContainer) -> Result<u32, TaskError> {
        check_id("container id", &c.id)?;
        if self.lock().containers.contains_key(&c.id) {
            return Err(TaskError::ContainerExists(c.id));
        }
        c.stdio.check()?;
        let plan = self.plan(&c)?;
        let (pod, booted) = self.pod_for(&plan, &c)?;
        let (pid, io) = self.create_in_pod(&pod, &c, &plan).inspect_err(|_| {
            remove_container_dir(&pod.dir, &c.id);
            if booted {
                self.end_pod();
            }
        })?;
        let mut init = Process::new(c.stdio.clone());
        init.pid = pid;
        init.io = Some(io);
        let container = Container {
            bundle: c.bundle.to_string_lossy().into_owned(),
            is_sandbox: plan.is_sandbox(&c.id),
            init,
            execs: HashMap::new(),
            post_hooks: PostHooks::of(&plan.host_spec, &plan.hooks),
        };
        self.lock().containers.insert(c.id.clone(), container);
        crate::plog!(Info, container = c.id.as_str(); "{}: created in pod {}, guest pid {pid}", c.id, plan.pod_id);
        let host_pid = self.host_pid();
        self.publish_create(&c, host_pid);
        Ok(host_pid)
    }

    /// Reads the bundle's spec, finds the container's pod and translates the spec; resolves
    /// the configuration and, for a pod's first container, sizes the VM from the spec.
    fn plan(&self, c: &NewContainer) -> Result<Plan, TaskError> {
        let host_spec = spec::read_bundle_spec(&c.bundle)?;
        let spec_root = spec::root_path(&host_spec)?;
        let pod_id = spec::pod_of(&host_spec, &c.id);
        check_id("pod id", &pod_id)?;
        // A CRI app container shares its pod sandbox's IPC/UTS namespaces and /dev/shm.
        let sandbox_pid = (pod_id != c.id)
            .then(|| self.with_container(&pod_id, |s| Ok(s.init.pid)).ok())
            .flatten();
        let mut guest = spec::translate(&host_spec, &c.id, sandbox_pid)?;
        if let Some(own) = OomScoreAdj::of_self() {
            spec::fill_oom_score_adj(&mut guest.spec, own);
        }
        let hooks = SpecHooks::from_spec(&host_spec)?;
        if !hooks.before_start.is_empty() && spec::netns_path(&host_spec).is_none() {
            // Its hooks fill the namespace the shim makes (or the pod's): the VM's network.
            spec::join_vm_netns(&mut guest.spec);
        }
        for n in &guest.notes {
            crate::plog!(Info, container = c.id.as_str(); "{}: {n}", c.id);
        }
        let mut cfg = Config::resolve(c.config_path.as_deref())?;
        log::set_max_level(cfg.runtime.log_filter());
        let mut accounting = PodAccounting::default();
        if pod_id == c.id {
            accounting = size_pod(&mut cfg, &host_spec, &pod_id)?;
        }
        Ok(Plan {
            host_spec,
            spec_root,
            pod_id,
            guest,
            cfg,
            accounting,
            hooks,
        })
    }

    /// The pod for a new container: the existing one, or a freshly booted one when this is
    /// the pod's first container (then `true`).
    fn pod_for(&self, plan: &Plan, c: &NewContainer) -> Result<(Arc<Pod>, bool), TaskError> {
        let cid = c.id.as_str();
        let _boot = crate::util::lock(&self.boot);
        if let Some(pod) = self.lock().pod.clone() {
            if pod.id != plan.pod_id {
                return Err(TaskError::OtherPod {
                    container: cid.into(),
                    pod: plan.pod_id.clone(),
                    running: pod.id.clone(),
                });
            }
            // A namespace made for a later container's hooks alone is dropped with them.
            self.run_before_start(c, plan, pod.own_netns_path().as_deref())?;
            return Ok((pod, false));
        }
        if !plan.is_sandbox(cid) {
            return Err(TaskError::PodNotHere {
                container: cid.into(),
                pod: plan.pod_id.clone(),
            });
        }
        let own_netns = self.run_before_start(c, plan, None)?;
        let pod = Arc::new(self.boot_pod(plan, own_netns)?);
        crate::plog!(
            Info,
            "pod {}: VM up (moat-vmm pid {})",
            pod.id,
            pod.vm.pid()
        );
        self.lock().pod = Some(pod.clone());
        self.start_ops(&pod);
        self.watch_oom(pod.clone());
        Ok((pod, true))
    }

    /// Boots the pod of `plan` on the network namespace its spec names, else on `own_netns`
    /// (made for its hooks, see [`Tasks::run_before_start`]), which the pod then keeps.
    fn boot_pod(&self, plan: &Plan, own_netns: Option<OwnedFd>) -> Result<Pod, TaskError> {
        let weak = self.this.clone();
        let on_exit = Box::new(move |status| {
            if let Some(s) = weak.upgrade() {
                s.vm_died(status);
            }
        });
        let netns = spec::netns_path(&plan.host_spec).or(own_netns.as_ref().map(netns::fd_path));
        let hostname = match plan.host_spec["hostname"].as_str() {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => spec::host_hostname().unwrap_or_default(),
        };
        let pod_spec = PodSpec {
            namespace: &self.namespace,
            id: &plan.pod_id,
            hostname: &hostname,
            netns: netns.as_deref(),
            accounting: &plan.accounting,
        };
        let pod = Pod::boot(&plan.cfg, &pod_spec, on_exit).map_err(|source| TaskError::Boot {
            pod: plan.pod_id.clone(),
            source: Box::new(source),
        })?;
        if let Some(fd) = own_netns {
            pod.keep_netns(fd);
        }
        Ok(pod)
    }

    /// Runs container `c`'s `createRuntime` and `prestart` hooks ([`crate::host::hooks`])
    /// with the tid of a shim thread in its network namespace: the one its spec names, else
    /// `pod_netns`, else a new one, whose descriptor is returned (Docker's hook moves the
    /// container's interface into it; the pod boots on it).
    fn run_before_start(
        &self,
        c: &NewContainer,
        plan: &Plan,
        pod_netns: Option<&Path>,
    ) -> Result<Option<OwnedFd>, TaskError> {
        if plan.hooks.before_start.is_empty() {
            return Ok(None);
        }
        let spec_netns = spec::netns_path(&plan.host_spec);
        let join = spec_netns.as_deref().or(pod_netns);
        let (ran, own) = netns::with_thread_in(join, |tid| {
            let state = hooks::state(&plan.host_spec, &c.id, "created", Some(tid), &c.bundle);
            plan.hooks
                .before_start
                .iter()
                .try_for_each(|(phase, i, h)| hooks::run((phase, *i), h, &state, &c.bundle))
        })?;
        ran?;
        crate::plog!(Info, container = c.id.as_str(); "{}: {} createRuntime/prestart hooks ran", c.id, plan.hooks.before_start.len());
        Ok(own)
    }

    /// The host side, then the agent's container, then its stdio streams.
    fn create_in_pod(
        &self,
        pod: &Pod,
        c: &NewContainer,
        plan: &Plan,
    ) -> Result<(u32, ProcessIo), TaskError> {
        let setup = ContainerSetup {
            id: &c.id,
            bundle: &c.bundle,
            rootfs: &c.rootfs,
            spec_root: &plan.spec_root,
            root_readonly: spec::root_readonly(&plan.host_spec),
            binds: &plan.guest.binds,
            is_sandbox: plan.is_sandbox(&c.id),
        };
        pod.setup_container(&setup)
            .map_err(|e| TaskError::HostSetup(Box::new(e)))?;
        let client = &pod.vm.client;
        let spec_json = plan.guest.spec.to_string();
        let options = CreateOptions {
            pod_pidns: plan.guest.pod_pidns,
            default_seccomp: plan.cfg.container.default_seccomp,
        };
        let pid = client
            .create_container(&c.id, &spec_json, c.stdio.channels(), options)
            .map_err(TaskError::agent("CreateContainer"))?;
        let io = ProcessIo::attach(client, &c.id, "", &c.stdio).inspect_err(|_| {
            let _ = client.remove_container(&c.id, Some(REMOVE_TIMEOUT));
        })?;
        Ok((pid, io))
    }

    fn publish_create(&self, c: &NewContainer, pid: u32) {
        let ev = TaskCreate {
            container_id: c.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            rootfs: c.rootfs.clone(),
            io: Some(TaskIO {
                stdin: c.stdio.stdin.clone(),
                stdout: c.stdio.stdout.clone(),
                stderr: c.stdio.stderr.clone(),
                terminal: c.stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
    }
}

/// For a pod's first container (spec `spec`): where its VMM is accounted (the spec's
/// `linux.cgroupsPath` unless `[runtime] sandbox_cgroup` is off, its `process.oomScoreAdj`),
/// and the VM's size in `cfg`, its annotations bounded by the pod cgroup's limits. A bad
/// `linux.cgroupsPath` is the spec's fault, ignored (with a warning) only when the VMM does
/// not join it.
fn size_pod(cfg: &mut Config, spec: &Value, pod_id: &str) -> Result<PodAccounting, TaskError> {
    let invalid = |e: CgroupError| SpecError::Invalid(e.to_string());
    let path = match cgroup::cgroup_of_spec(spec) {
        Ok(p) => p,
        Err(e) if !cfg.runtime.sandbox_cgroup => {
            crate::plog!(Warn, "pod {pod_id}: {e} (ignored: sandbox_cgroup = false)");
            None
        }
        Err(e) => return Err(invalid(e).into()),
    };
    let limits = path
        .as_ref()
        .and_then(|p| cgroup::parent_limits(Path::new(cgroup::CGROUP_ROOT), p));
    let size = sizing::size_for(&cfg.vm, spec, limits.as_ref())?;
    for n in &size.notes {
        crate::plog!(Info, "pod {pod_id}: {n}");
    }
    (cfg.vm.vcpus, cfg.vm.memory_mib) = (size.vcpus, size.memory_mib);
    Ok(PodAccounting {
        cgroup: path.filter(|_| cfg.runtime.sandbox_cgroup),
        oom_score_adj: OomScoreAdj::of_spec(spec).map_err(invalid)?,
    })
}
