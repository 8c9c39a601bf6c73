//! The containers and processes the agent manages, and their lifecycle.
//!
//! [`Containers`] holds every container by id. Each container has an init process (exec id
//! `""`) and exec processes by exec id; all are watched by the [`Reaper`], whose statuses
//! are kept until the container is removed, so any number of waiters get them.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_agent_protocol::CreateOptions;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{Linux, LinuxNamespaceType, LinuxResources, Process, Spec};

use super::cgroup::{self, Cgroup};
use super::init::{InitConfig, InitKind, NamespaceStep};
use super::oom::OomWatcher;
use super::seccomp::{self, SeccompProgram};
use super::spawn::{self, ChildFds, IdMaps, Pending};
use super::{pod::Pod, rootfs};
use crate::reaper::{ExitStatus, Reaper};
use crate::stdio::{Channels, StdioHub};
use crate::util::lock;

/// How long StartContainer/ExecProcess wait for `execve`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The pod's cgroup, relative to the cgroup root; containers are its children.
pub const POD_CGROUP: &str = "moat";

/// Errors of container operations, each with the ttrpc code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The request or spec is invalid (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// No such container or process (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The id is taken (ALREADY_EXISTS).
    #[error("{0}")]
    Exists(String),
    /// Not possible in the current state (FAILED_PRECONDITION).
    #[error("{0}")]
    State(String),
    /// The wait timed out (DEADLINE_EXCEEDED).
    #[error("{0}")]
    Timeout(String),
    /// The guest could not do it (INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl ContainerError {
    fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        ContainerError::Internal(format!("{what}: {e}"))
    }
}

/// Checks a container or exec id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
pub fn validate_id(kind: &str, id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::Invalid(format!(
            "invalid {kind} id {id:?}: want [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        )))
    }
}

/// One container.
pub struct Container {
    /// Its id.
    pub id: String,
    cgroup: Option<Cgroup>,
    seccomp: Option<SeccompProgram>,
    init_pid: u32,
    /// The init process until StartContainer.
    pending: Mutex<Option<Pending>>,
    execs: Mutex<HashMap<String, u32>>,
}

/// Every container of the guest.
pub struct Containers {
    reaper: Arc<Reaper>,
    stdio: Arc<StdioHub>,
    oom: Option<Arc<OomWatcher>>,
    cgroup_root: Option<PathBuf>,
    by_id: Mutex<HashMap<String, Arc<Container>>>,
    /// The pod, after CreatePod.
    pub pod: Mutex<Option<Pod>>,
}

impl Containers {
    /// No containers yet, using cgroup v2 at `/sys/fs/cgroup` if mounted there (else containers
    /// get no cgroup and resource requests are refused).
    pub fn new(reaper: Arc<Reaper>, stdio: Arc<StdioHub>) -> Arc<Self> {
        let root = Path::new(cgroup::CGROUP_ROOT);
        let cgroup_root = cgroup::is_cgroup2(root).then(|| root.to_path_buf());
        let oom = cgroup_root
            .as_ref()
            .and_then(|_| match OomWatcher::start() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!("OOM watcher: {e}; OOM kills will not be reported");
                    None
                }
            });
        if cgroup_root.is_none() {
            tracing::warn!(
                "no cgroup v2 at {}: containers get no cgroup",
                root.display()
            );
        }
        Arc::new(Containers {
            reaper,
            stdio,
            oom,
            cgroup_root,
            by_id: Mutex::new(HashMap::new()),
            pod: Mutex::new(None),
        })
    }

    /// The reaper all processes are watched by.
    pub fn reaper(&self) -> &Arc<Reaper> {
        &self.reaper
    }

    /// The stdio hub.
    pub fn stdio(&self) -> &Arc<StdioHub> {
        &self.stdio
    }

    /// The OOM watcher, if cgroup v2 is there.
    pub fn oom(&self) -> Option<&Arc<OomWatcher>> {
        self.oom.as_ref()
    }

    /// A cgroup under the pod's, created; `None` without cgroup v2.
    pub fn make_cgroup(&self, name: &str) -> Result<Option<Cgroup>, ContainerError> {
        let Some(root) = &self.cgroup_root else {
            return Ok(None);
        };
        let rel = Path::new(POD_CGROUP).join(name);
        Cgroup::create(root, &rel)
            .map(Some)
            .map_err(|e| ContainerError::internal("creating the cgroup", e))
    }

    /// Looks up a container.
    pub fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        lock(&self.by_id)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(format!("no container {id:?}")))
    }

    /// CreateContainer: validates everything, then starts the init process up to `Ready`.
    pub fn create(
        &self,
        id: &str,
        spec_json: &str,
        channels: Channels,
        options: CreateOptions,
    ) -> Result<u32, ContainerError> {
        let plan = self.plan_container(id, spec_json, options)?;
        let cgroup = self.container_cgroup(id, plan.linux.resources().as_ref())?;
        let terminal = plan.process.terminal().unwrap_or(false);
        let cfg = InitConfig {
            kind: InitKind::Container {
                spec: Box::new(plan.spec),
                rootfs: plan.rootfs,
            },
            process: plan.process,
            namespaces: plan.namespaces,
            cgroup_procs: cgroup.as_ref().map(|c| c.path().join("cgroup.procs")),
            seccomp: plan.seccomp.clone(),
            terminal,
        };
        let pending = match self.spawn_process(id, "", &cfg, channels, plan.id_maps.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                discard_cgroup(&cgroup);
                return Err(e);
            }
        };
        let pid = pending.pid;
        if let (Some(oom), Some(cg)) = (&self.oom, &cgroup) {
            if let Err(e) = oom.watch(id, cg) {
                tracing::warn!(container = %id, "OOM events will not be reported: {e}");
            }
        }
        let c = Container {
            id: id.to_string(),
            cgroup,
            seccomp: plan.seccomp,
            init_pid: pid,
            pending: Mutex::new(Some(pending)),
            execs: Mutex::new(HashMap::new()),
        };
        lock(&self.by_id).insert(id.to_string(), Arc::new(c));
        tracing::info!(container = %id, "created, init pid {pid}");
        Ok(pid)
    }

    /// Checks a CreateContainer request (id, spec, process, seccomp, namespaces, root) before
    /// anything is made.
    fn plan_container(
        &self,
        id: &str,
        spec_json: &str,
        options: CreateOptions,
    ) -> Result<ContainerPlan, ContainerError> {
        validate_id("container", id)?;
        let spec: Spec = serde_json::from_str(spec_json)
            .map_err(|e| ContainerError::Invalid(format!("container {id}: bad OCI spec: {e}")))?;
        if lock(&self.by_id).contains_key(id) {
            return Err(ContainerError::Exists(format!("container {id:?} exists")));
        }
        rootfs::validate(&spec)
            .map_err(|e| ContainerError::Invalid(format!("container {id}: {e}")))?;
        let process = spec.process().clone().ok_or_else(|| {
            ContainerError::Invalid(format!("container {id}: spec has no process"))
        })?;
        validate_process(&process)?;
        let linux = spec.linux().clone().unwrap_or_default();
        let seccomp = seccomp::compile(linux.seccomp().as_ref(), options.default_seccomp)
            .map_err(|e| ContainerError::Invalid(format!("container {id}: seccomp: {e}")))?;
        let (namespaces, id_maps) = self.container_namespaces(&spec, options.pod_pidns)?;
        let rootfs = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| ContainerError::Invalid(format!("container {id}: spec has no root")))?;
        Ok(ContainerPlan {
            spec,
            process,
            linux,
            seccomp,
            namespaces,
            id_maps,
            rootfs,
        })
    }

    /// The container's cgroup (`None` without cgroup v2) with `resources` applied; limits
    /// without cgroup v2 are refused.
    fn container_cgroup(
        &self,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Option<Cgroup>, ContainerError> {
        let cgroup = self.make_cgroup(id)?;
        if let (Some(res), Some(cg)) = (resources, &cgroup) {
            if let Err(e) = cg.apply(res) {
                discard_cgroup(&cgroup);
                return Err(ContainerError::Invalid(format!(
                    "container {id}: resources: {e}"
                )));
            }
        } else if resources.is_some_and(has_limits) && cgroup.is_none() {
            return Err(ContainerError::Invalid(format!(
                "container {id}: resource limits need cgroup v2, which this guest lacks"
            )));
        }
        Ok(cgroup)
    }

    /// Stdio + spawn (a terminal process's pty master, from its init process, goes to the
    /// stdio hub, sized by `process.consoleSize`); on failure the stdio registration is
    /// dropped again and the process killed.
    fn spawn_process(
        &self,
        id: &str,
        exec_id: &str,
        cfg: &InitConfig,
        channels: Channels,
        id_maps: Option<&IdMaps>,
    ) -> Result<Pending, ContainerError> {
        let stdio = self
            .stdio
            .prepare(id, exec_id, channels, cfg.terminal)
            .map_err(|e| ContainerError::Invalid(format!("container {id}: stdio: {e}")))?;
        debug_assert_eq!(stdio.terminal, cfg.terminal);
        let fds = ChildFds {
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
        };
        let mut pending = spawn::spawn(cfg, fds, id_maps, &self.reaper).map_err(|e| {
            self.stdio.remove(id, exec_id);
            ContainerError::Invalid(format!("container {id}: {e}"))
        })?;
        if let Some(master) = pending.terminal.take() {
            let size = console_size(&cfg.process);
            if let Err(e) = self.stdio.set_terminal(id, exec_id, master, size) {
                pending.abort(&self.reaper);
                self.stdio.remove(id, exec_id);
                return Err(ContainerError::internal(
                    &format!("container {id}: terminal"),
                    e,
                ));
            }
        }
        Ok(pending)
    }

    /// The namespace steps of a container and the id maps of a new user namespace.
    fn container_namespaces(
        &self,
        spec: &Spec,
        pod_pidns: bool,
    ) -> Result<(Vec<NamespaceStep>, Option<IdMaps>), ContainerError> {
        let linux = spec.linux().clone().unwrap_or_default();
        let mut steps = Vec::new();
        for ns in linux.namespaces().iter().flatten() {
            if ns.typ() == LinuxNamespaceType::Pid && pod_pidns {
                continue;
            }
            if let Some(path) = ns.path() {
                if !path.exists() {
                    return Err(ContainerError::Invalid(format!(
                        "{} namespace path {} does not exist in the guest",
                        ns.typ(),
                        path.display()
                    )));
                }
            }
            if steps.iter().any(|s: &NamespaceStep| s.typ == ns.typ()) {
                return Err(ContainerError::Invalid(format!(
                    "{} namespace listed twice",
                    ns.typ()
                )));
            }
            steps.push(NamespaceStep {
                typ: ns.typ(),
                join: ns.path().clone(),
            });
        }
        if pod_pidns {
            steps.push(self.pod_pid_namespace()?);
        }
        if !steps
            .iter()
            .any(|s| s.typ == LinuxNamespaceType::Mount && s.join.is_none())
        {
            return Err(ContainerError::Invalid(
                "the spec must ask for a new mount namespace".into(),
            ));
        }
        let id_maps = new_user_id_maps(&steps, &linux)?;
        Ok((steps, id_maps))
    }

    /// The step joining the pod's PID namespace (its holder's).
    fn pod_pid_namespace(&self) -> Result<NamespaceStep, ContainerError> {
        let holder = lock(&self.pod)
            .as_ref()
            .and_then(|s| s.pid_holder())
            .ok_or_else(|| ContainerError::State("the pod has no pod-wide PID namespace".into()))?;
        Ok(NamespaceStep {
            typ: LinuxNamespaceType::Pid,
            join: Some(PathBuf::from(format!("/proc/{holder}/ns/pid"))),
        })
    }

    /// StartContainer.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let pending = lock(&c.pending)
            .take()
            .ok_or_else(|| ContainerError::State(format!("container {id} was already started")))?;
        pending
            .start(START_TIMEOUT)
            .map_err(|e| ContainerError::Invalid(format!("container {id}: start: {e}")))?;
        tracing::info!(container = %id, "started");
        Ok(())
    }

    /// ExecProcess: a new process in the running container's namespaces and cgroup.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &str,
        channels: Channels,
    ) -> Result<u32, ContainerError> {
        validate_id("exec", exec_id)?;
        let c = self.get(id)?;
        let process: Process = serde_json::from_str(process_json).map_err(|e| {
            ContainerError::Invalid(format!("exec {exec_id}: bad OCI process: {e}"))
        })?;
        validate_process(&process)?;
        if lock(&c.pending).is_some() || self.reaper.has_exited(c.init_pid) {
            return Err(ContainerError::State(format!(
                "container {id} is not running"
            )));
        }
        if lock(&c.execs).contains_key(exec_id) {
            return Err(ContainerError::Exists(format!(
                "exec id {exec_id:?} exists in {id}"
            )));
        }
        let namespaces = namespaces_of(c.init_pid)?;
        let cfg = InitConfig {
            kind: InitKind::Exec,
            terminal: process.terminal().unwrap_or(false),
            process,
            namespaces,
            cgroup_procs: c.cgroup.as_ref().map(|cg| cg.path().join("cgroup.procs")),
            seccomp: c.seccomp.clone(),
        };
        let pending = self.spawn_process(id, exec_id, &cfg, channels, None)?;
        let pid = pending.pid;
        lock(&c.execs).insert(exec_id.to_string(), pid);
        if let Err(e) = pending.start(START_TIMEOUT) {
            lock(&c.execs).remove(exec_id);
            self.reaper.forget(pid);
            self.stdio.remove(id, exec_id);
            return Err(ContainerError::Invalid(format!(
                "exec {exec_id} in {id}: {e}"
            )));
        }
        tracing::info!(container = %id, exec = %exec_id, "exec started, pid {pid}");
        Ok(pid)
    }

    /// The pid of a process of a container.
    pub fn pid_of(&self, c: &Container, exec_id: &str) -> Result<u32, ContainerError> {
        if exec_id.is_empty() {
            return Ok(c.init_pid);
        }
        lock(&c.execs)
            .get(exec_id)
            .copied()
            .ok_or_else(|| ContainerError::NotFound(format!("no exec {exec_id:?} in {}", c.id)))
    }

    /// SignalProcess.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        sig: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let signal = Signal::try_from(sig as i32)
            .map_err(|_| ContainerError::Invalid(format!("bad signal number {sig}")))?;
        if all {
            if let Some(cg) = &c.cgroup {
                return cg
                    .signal_all(signal as i32)
                    .map_err(|e| ContainerError::internal("signalling the cgroup", e));
            }
            for pid in self.live_pids(&c) {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
            return Ok(());
        }
        let pid = self.pid_of(&c, exec_id)?;
        if self.reaper.has_exited(pid) {
            return Err(ContainerError::NotFound(format!(
                "process {exec_id:?} of {id} has already exited"
            )));
        }
        kill(Pid::from_raw(pid as i32), signal)
            .map_err(|e| ContainerError::internal(&format!("kill {pid}"), e))
    }

    fn live_pids(&self, c: &Container) -> Vec<u32> {
        let mut pids = vec![c.init_pid];
        pids.extend(lock(&c.execs).values().copied());
        pids.retain(|p| !self.reaper.has_exited(*p));
        pids
    }

    /// WaitProcess: the exit status, `None` on timeout.
    pub fn wait(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ContainerError> {
        let c = self.get(id)?;
        let pid = self.pid_of(&c, exec_id)?;
        self.reaper.wait(pid, timeout).ok_or_else(|| {
            ContainerError::Timeout(format!("process {exec_id:?} of {id} still runs"))
        })
    }

    /// RemoveContainer: kills what is left, waits, removes the cgroup and forgets it all.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        drop(lock(&c.pending).take());
        match &c.cgroup {
            Some(cg) => {
                let _ = cg.freeze(false, Duration::from_secs(1));
                cg.remove(timeout).map_err(|e| {
                    ContainerError::internal(&format!("removing container {id}"), e)
                })?;
            }
            None => {
                for pid in self.live_pids(&c) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
        if self.reaper.wait(c.init_pid, Some(timeout)).is_none() {
            return Err(ContainerError::Timeout(format!(
                "container {id}: init pid {} did not die within {timeout:?}",
                c.init_pid
            )));
        }
        if let Some(oom) = &self.oom {
            oom.unwatch(id);
        }
        self.stdio.remove_container(id);
        self.reaper.forget(c.init_pid);
        for pid in lock(&c.execs).values() {
            self.reaper.forget(*pid);
        }
        lock(&self.by_id).remove(id);
        super::share_cache::release_unused();
        tracing::info!(container = %id, "removed");
        Ok(())
    }

    /// Ids of every container.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.by_id).keys().cloned().collect()
    }

    /// ListProcesses.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        let c = self.get(id)?;
        match &c.cgroup {
            Some(cg) => Ok(cg
                .procs()
                .map_err(|e| ContainerError::internal("reading cgroup.procs", e))?
                .into_iter()
                .map(|p| p as u32)
                .collect()),
            None => Ok(self.live_pids(&c)),
        }
    }

    /// The container's cgroup, or an error saying there is none.
    pub fn cgroup_of<'a>(&self, c: &'a Container) -> Result<&'a Cgroup, ContainerError> {
        c.cgroup.as_ref().ok_or_else(|| {
            ContainerError::State(format!("container {} has no cgroup (no cgroup v2)", c.id))
        })
    }

    /// UpdateContainer.
    pub fn update(&self, id: &str, resources_json: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let res: LinuxResources = serde_json::from_str(resources_json)
            .map_err(|e| ContainerError::Invalid(format!("bad LinuxResources: {e}")))?;
        self.cgroup_of(&c)?
            .apply(&res)
            .map_err(|e| ContainerError::Invalid(format!("container {id}: resources: {e}")))
    }

    /// PauseContainer / ResumeContainer.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        self.cgroup_of(&c)?
            .freeze(frozen, Duration::from_secs(10))
            .map_err(|e| ContainerError::internal(&format!("container {id}: freeze"), e))
    }
}

/// A checked CreateContainer request ([`Containers::plan_container`]).
struct ContainerPlan {
    spec: Spec,
    process: Process,
    linux: Linux,
    seccomp: Option<SeccompProgram>,
    namespaces: Vec<NamespaceStep>,
    id_maps: Option<IdMaps>,
    rootfs: PathBuf,
}

/// Removes a cgroup made for a container that failed to start (best effort).
fn discard_cgroup(cgroup: &Option<Cgroup>) {
    if let Some(cg) = cgroup {
        let _ = cg.remove(Duration::from_secs(5));
    }
}

fn has_limits(r: &LinuxResources) -> bool {
    r.memory().is_some()
        || r.cpu().is_some()
        || r.pids().is_some()
        || r.block_io().is_some()
        || r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty())
        || r.unified().as_ref().is_some_and(|u| !u.is_empty())
}

/// `process.consoleSize` as (rows, columns), when both are set (a zero is "not given", as
/// runc reads it); [`validate_process`] checked that they fit.
fn console_size(p: &Process) -> Option<(u16, u16)> {
    let b = p.console_size()?;
    let (rows, cols) = (
        u16::try_from(b.height()).ok()?,
        u16::try_from(b.width()).ok()?,
    );
    (rows > 0 && cols > 0).then_some((rows, cols))
}

/// The spec's id maps when `steps` create a user namespace (which then needs both).
fn new_user_id_maps(
    steps: &[NamespaceStep],
    linux: &Linux,
) -> Result<Option<IdMaps>, ContainerError> {
    let id_maps = steps
        .iter()
        .any(|s| s.typ == LinuxNamespaceType::User && s.join.is_none())
        .then(|| IdMaps {
            uid: linux.uid_mappings().clone().unwrap_or_default(),
            gid: linux.gid_mappings().clone().unwrap_or_default(),
        });
    if id_maps
        .as_ref()
        .is_some_and(|m| m.uid.is_empty() || m.gid.is_empty())
    {
        return Err(ContainerError::Invalid(
            "a new user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    Ok(id_maps)
}

/// Checks the parts of a process the init process cannot check early.
fn validate_process(p: &Process) -> Result<(), ContainerError> {
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ContainerError::Invalid("process.args is empty".into()));
    }
    if let Some(b) = p.console_size() {
        if b.height() > u64::from(u16::MAX) || b.width() > u64::from(u16::MAX) {
            return Err(ContainerError::Invalid(format!(
                "process.consoleSize {}x{} is out of range",
                b.height(),
                b.width()
            )));
        }
    }
    if !p.cwd().is_absolute() {
        return Err(ContainerError::Invalid(format!(
            "process.cwd {} is not absolute",
            p.cwd().display()
        )));
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    for rl in p.rlimits().iter().flatten() {
        if rl.soft() > rl.hard() {
            return Err(ContainerError::Invalid(format!(
                "rlimit {:?}: soft {} above hard {}",
                rl.typ(),
                rl.soft(),
                rl.hard()
            )));
        }
        if rl.typ() == oci_spec::runtime::PosixRlimitType::RlimitNofile && rl.hard() > nr_open {
            return Err(ContainerError::Invalid(format!(
                "rlimit RLIMIT_NOFILE hard {} above the kernel's nr_open {nr_open}",
                rl.hard()
            )));
        }
    }
    Ok(())
}

/// The namespaces of `pid` that differ from the agent's, to join for an exec.
fn namespaces_of(pid: u32) -> Result<Vec<NamespaceStep>, ContainerError> {
    use LinuxNamespaceType::*;
    let mut steps = Vec::new();
    for (typ, name) in [
        (User, "user"),
        (Ipc, "ipc"),
        (Uts, "uts"),
        (Network, "net"),
        (Pid, "pid"),
        (Cgroup, "cgroup"),
        (Time, "time"),
        (Mount, "mnt"),
    ] {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let ino = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let Ok(t) = ino(&theirs) else {
            if typ == Mount {
                return Err(ContainerError::State(format!("process {pid} is gone")));
            }
            continue;
        };
        if ino(Path::new(&format!("/proc/self/ns/{name}"))).ok() != Some(t) {
            steps.push(NamespaceStep {
                typ,
                join: Some(theirs),
            });
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("container", "abc-1.2_3").is_ok());
        for bad in ["", "-a", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id("container", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_rlimits_are_refused() {
        let p: Process = serde_json::from_str(
            r#"{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0},
                "rlimits":[{"type":"RLIMIT_NOFILE","soft":10,"hard":5}]}"#,
        )
        .unwrap();
        assert!(validate_process(&p)
            .unwrap_err()
            .to_string()
            .contains("soft 10 above hard 5"));
        let p: Process = serde_json::from_str(
            r#"{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0},
                "rlimits":[{"type":"RLIMIT_NOFILE","soft":1,"hard":18446744073709551615}]}"#,
        )
        .unwrap();
        assert!(validate_process(&p)
            .unwrap_err()
            .to_string()
            .contains("nr_open"));
    }

    #[test]
    fn console_sizes() {
        let p = |size: &str| -> Process {
            serde_json::from_str(&format!(
                r#"{{"cwd":"/","args":["true"],"user":{{"uid":0,"gid":0}}{size}}}"#
            ))
            .unwrap()
        };
        assert_eq!(console_size(&p("")), None);
        let sized = p(r#","consoleSize":{"height":40,"width":100}"#);
        assert_eq!(console_size(&sized), Some((40, 100)));
        assert!(validate_process(&sized).is_ok());
        assert_eq!(
            console_size(&p(r#","consoleSize":{"height":0,"width":100}"#)),
            None
        );
        let huge = p(r#","consoleSize":{"height":70000,"width":100}"#);
        assert!(validate_process(&huge)
            .unwrap_err()
            .to_string()
            .contains("consoleSize 70000x100"));
    }
}
