//! The task service's state: the pod, its containers and their processes, behind one mutex,
//! and the lookups every operation starts with.
//!
//! Every call into the guest is made without holding the lock (an agent RPC can take
//! seconds); exits wake `Wait` callers through one condition variable.
//!
//! The pid containerd is told for every process (`Create`, `Start`, `State`, `Pids`, `Delete`,
//! `TaskExit`, ...) is [`State::host_pid`]: the pod's VMM, a host process moat owns, as Kata
//! reports its hypervisor's. The guest's pids ([`Process::pid`]) are only used with the agent.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::ExitSignal;
use moat_vmm_config::status::describe;

use super::events::Events;
use super::process::Process;
use crate::error::TaskError;
use crate::host::hooks::PostHooks;
use crate::ops::server::OpsServer;
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
    /// Its spec's `poststart` and `poststop` hooks.
    pub post_hooks: PostHooks,
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
    /// The last statistics the agent gave for each container, served when it is slow.
    pub last_stats: HashMap<String, Any>,
    /// The VMM's pid once the pod was torn down (0: no pod yet).
    ended_vmm_pid: u32,
    /// The pod's ops socket, while the pod runs.
    pub ops: Option<OpsServer>,
}

impl State {
    /// The pid containerd is told for every process of the pod: the VMM's (also after the pod
    /// ended), 0 before the pod booted. Never a pid the guest chose.
    pub fn host_pid(&self) -> u32 {
        self.pod.as_ref().map_or(self.ended_vmm_pid, |p| {
            u32::try_from(p.vm.pid()).unwrap_or_default()
        })
    }

    /// Takes the pod out (to tear it down), remembering its VMM's pid; its ops socket
    /// closes.
    pub fn take_pod(&mut self) -> Option<Arc<Pod>> {
        self.ended_vmm_pid = self.host_pid();
        self.ops = None;
        self.pod.take()
    }
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

    /// [`State::host_pid`].
    pub(super) fn host_pid(&self) -> u32 {
        self.lock().host_pid()
    }

    /// Checks that container `id`'s init process is in state `want`.
    pub(super) fn expect_init_status(&self, id: &str, want: Status) -> Result<(), TaskError> {
        self.with_container(id, |c| match c.init.status {
            s if s == want => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::io::StdioPaths;

    #[test]
    fn containerd_is_told_the_vmm_pid_never_the_guests() {
        let events = Events::new(None, "ns");
        let tasks = Tasks::new("ns", events, Arc::new(ExitSignal::default()));
        assert_eq!(tasks.host_pid(), 0, "no pod yet");
        let mut init = Process::new(StdioPaths::default());
        init.pid = 77;
        {
            let mut st = tasks.lock();
            st.ended_vmm_pid = 4242;
            let c = Container {
                bundle: "/b".into(),
                is_sandbox: true,
                init,
                execs: HashMap::new(),
                post_hooks: PostHooks::default(),
            };
            st.containers.insert("c".into(), c);
        }
        assert_eq!(tasks.state("c", "").unwrap().exit.pid, 4242);
        tasks.record_exit("c", "", 3);
        let s = tasks.state("c", "").unwrap();
        assert_eq!((s.exit.pid, s.exit.status), (4242, 3));
        // The guest's pid stays, for the agent only.
        assert_eq!(tasks.lock().containers["c"].init.pid, 77);
    }

    #[test]
    fn a_container_that_outlived_its_pod_is_deleted_and_the_shim_may_exit() {
        let events = Events::new(None, "ns");
        let exit = Arc::new(ExitSignal::default());
        let tasks = Tasks::new("ns", events, Arc::clone(&exit));
        let container = Container {
            bundle: "/b".into(),
            is_sandbox: false,
            // Never reported exited: the VM went away under it.
            init: Process::new(StdioPaths::default()),
            execs: HashMap::new(),
            post_hooks: PostHooks::default(),
        };
        tasks.lock().containers.insert("victim".into(), container);
        let info = tasks.delete("victim", "").unwrap();
        assert_eq!(info.status, 128 + 9);
        assert!(tasks.lock().containers.is_empty());
        let (tx, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            exit.wait();
            let _ = tx.send(());
        });
        tasks.shutdown();
        let signalled = exited.recv_timeout(std::time::Duration::from_secs(30));
        assert!(
            signalled.is_ok(),
            "the shim must exit once it holds no container"
        );
    }
}
