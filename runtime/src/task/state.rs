//! The task service's state: the pod, its containers and their processes, behind one mutex,
//! and the lookups every operation starts with.
//!
//! Every call into the guest is made without holding the lock (an agent RPC can take
//! seconds); exits wake `Wait` callers through one condition variable.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use containerd_shim::api::Status;
use containerd_shim::ExitSignal;
use moat_vmm_config::status::describe;

use super::events::Events;
use super::process::Process;
use crate::error::TaskError;
use crate::pod::Pod;
use crate::util::lock;

/// One container of the pod.
pub struct Container {
    /// Its bundle directory.
    pub bundle: String,
    /// Whether it is the pod's own (first, CRI sandbox) container, whose delete ends the pod.
    pub is_sandbox: bool,
    /// Its init process.
    pub init: Process,
    /// Its exec processes by exec id.
    pub execs: HashMap<String, Process>,
}

impl Container {
    /// The process `exec` ("" = the init process).
    pub fn process(&self, exec: &str) -> Result<&Process, TaskError> {
        if exec.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec)
            .ok_or_else(|| TaskError::NoExec(exec.into()))
    }

    /// The process `exec` ("" = the init process), to change.
    pub fn process_mut(&mut self, exec: &str) -> Result<&mut Process, TaskError> {
        if exec.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec)
            .ok_or_else(|| TaskError::NoExec(exec.into()))
    }

    /// Whether the init process runs (or is paused).
    pub fn is_running(&self) -> bool {
        matches!(self.init.status, Status::RUNNING | Status::PAUSED)
    }
}

/// What the lock guards.
#[derive(Default)]
pub struct State {
    /// The booted pod, once its first container was created.
    pub pod: Option<Arc<Pod>>,
    /// The containers by id.
    pub containers: HashMap<String, Container>,
}

/// The shim's tasks: one pod and its containers. The task service
/// ([`super::TaskService`]) translates containerd's RPCs onto its operations.
pub struct Tasks {
    pub(super) namespace: String,
    pub(super) events: Events,
    pub(super) exit: Arc<ExitSignal>,
    state: Mutex<State>,
    pub(super) exited: Condvar,
    /// Serialises pod boot, so two creates never boot two VMs.
    pub(super) boot: Mutex<()>,
    pub(super) this: Weak<Tasks>,
}

impl Tasks {
    /// The tasks of containerd namespace `namespace`, publishing through `events`; `exit` is
    /// signalled when containerd shuts the shim down.
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> Arc<Tasks> {
        Arc::new_cyclic(|this| Tasks {
            namespace: namespace.into(),
            events,
            exit,
            state: Mutex::new(State::default()),
            exited: Condvar::new(),
            boot: Mutex::new(()),
            this: this.clone(),
        })
    }

    /// The state, locked.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The pod, whether or not its VM still runs.
    pub(super) fn pod(&self) -> Result<Arc<Pod>, TaskError> {
        self.lock().pod.clone().ok_or(TaskError::NoVm)
    }

    /// The pod, when its VM still runs (to call the agent).
    pub(super) fn live_pod(&self) -> Result<Arc<Pod>, TaskError> {
        let pod = self.pod()?;
        match pod.vm.exited() {
            Some(s) => Err(TaskError::VmGone(describe(s))),
            None => Ok(pod),
        }
    }

    /// Runs `f` on container `id` under the lock.
    pub(super) fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| TaskError::NoContainer(id.into()))?;
        f(c)
    }

    /// The init pid of container `id`, if its init process is in state `want`.
    pub(super) fn expect_init_status(&self, id: &str, want: Status) -> Result<u32, TaskError> {
        self.with_container(id, |c| match c.init.status {
            s if s == want => Ok(c.init.pid),
            status => Err(TaskError::WrongStatus {
                id: id.into(),
                status,
            }),
        })
    }

    /// Sets the init process of container `id` to `status` (unless it has exited).
    pub(super) fn set_init_status(&self, id: &str, status: Status) -> Result<(), TaskError> {
        self.with_container(id, |c| {
            if c.init.exit.is_none() {
                c.init.status = status;
            }
            Ok(())
        })
    }
}
