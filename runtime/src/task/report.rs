//! The pod as the shim's ops socket reports it ([`crate::ops`]): status, metrics and the
//! debug console. The socket lives as long as the pod: started once it booted
//! ([`Tasks::start_ops`]), closed before its teardown.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use containerd_shim::api::Status;
use moat_vmm_config::status::describe;

use super::state::Tasks;
use crate::guard::text::Untrusted;
use crate::ops::metrics::{self, GuestFigures, PodFigures, VmmFigures};
use crate::ops::server::{OpsHandler, OpsServer};
use crate::ops::status::{ContainerStatus, PodStatus};
use crate::pod::Pod;
use crate::task::stats::sanitize;
use crate::vm::Vm;

/// The most of the VMM's metrics file read.
const MAX_VMM_METRICS: u64 = 1 << 20;
/// How long a scrape waits for the VMM to rewrite its metrics file after SIGUSR1.
const VMM_FLUSH_WAIT: Duration = Duration::from_millis(500);
/// How long the debug console's connection to the guest may take.
const CONSOLE_CONNECT: Duration = Duration::from_secs(5);

/// The ops socket's view of the tasks.
struct Report(Weak<Tasks>);

impl Report {
    fn tasks(&self) -> Result<Arc<Tasks>, String> {
        self.0
            .upgrade()
            .ok_or_else(|| "the shim is exiting".to_string())
    }
}

impl OpsHandler for Report {
    fn status(&self) -> Result<PodStatus, String> {
        Ok(self.tasks()?.pod_status())
    }

    fn metrics(&self) -> Result<String, String> {
        self.tasks()?.pod_metrics()
    }

    fn console(&self, peer: &str) -> Result<UnixStream, String> {
        self.tasks()?.open_console(peer)
    }
}

impl Tasks {
    /// Serves the ops socket of the freshly booted `pod` (a failure only costs the operator
    /// view, so it is logged, not fatal).
    pub(super) fn start_ops(&self, pod: &Pod) {
        let path = pod.dir.ops_socket();
        match OpsServer::start(&path, Arc::new(Report(self.this.clone()))) {
            Ok(server) => self.lock().ops = Some(server),
            Err(e) => crate::plog!(Warn, "pod {}: ops socket {}: {e}", pod.id, path.display()),
        }
    }

    /// The pod and its containers now.
    fn pod_status(&self) -> PodStatus {
        let st = self.lock();
        let mut containers: Vec<ContainerStatus> = st
            .containers
            .iter()
            .map(|(id, c)| ContainerStatus {
                id: id.clone(),
                status: status_name(c.init.status),
                is_sandbox: c.is_sandbox,
                execs: u32::try_from(c.execs.len()).unwrap_or(u32::MAX),
                exit_status: c.init.exit.as_ref().map(|e| e.status),
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        let pod = st.pod.as_ref();
        let info = pod.map(|p| &p.vm.info);
        PodStatus {
            pod_id: pod.map(|p| p.id.clone()).unwrap_or_default(),
            namespace: self.namespace.clone(),
            shim_pid: std::process::id(),
            vmm_pid: st.host_pid(),
            vcpus: info.map_or(0, |i| i.vcpus),
            memory_mib: info.map_or(0, |i| i.memory_mib),
            started_unix_ms: info.map_or(0, |i| {
                let since = i.started.duration_since(UNIX_EPOCH).unwrap_or_default();
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            }),
            boot_ms: info.map_or(0, |i| u64::try_from(i.boot.as_millis()).unwrap_or(0)),
            vm_state: match pod.and_then(|p| p.vm.exited()) {
                None if pod.is_some() => "running".into(),
                None => "not started".into(),
                Some(s) => format!("exited ({})", describe(s)),
            },
            debug_console: info.is_some_and(|i| i.debug_console),
            containers,
        }
    }

    /// One scrape: the VMM's file, the guest, every container, the RPC counts.
    fn pod_metrics(&self) -> Result<String, String> {
        let pod = self.lock().pod.clone().ok_or("the pod has not booted")?;
        let ids: Vec<String> = self.lock().containers.keys().cloned().collect();
        let vm = &pod.vm;
        let live = vm.exited().is_none();
        let vmm = live.then(|| read_vmm_metrics(vm)).flatten();
        let guest = live.then(|| guest_figures(vm)).flatten();
        let containers: Vec<_> = ids
            .iter()
            .filter(|_| live)
            .filter_map(|id| {
                let s = vm.client.stats_container(id).ok()?;
                Some((id.clone(), sanitize(s)))
            })
            .collect();
        let figures = PodFigures {
            sandbox_id: pod.id.clone(),
            namespace: self.namespace.clone(),
            size: (vm.info.vcpus, vm.info.memory_mib),
            boot: Some(vm.info.boot),
            sources: vec![
                ("vmm", vmm.is_some()),
                ("guest", guest.is_some()),
                ("containers", containers.len() == ids.len()),
            ],
            vmm,
            guest,
            containers,
        };
        Ok(metrics::encode(&figures, vm.client.rpc_metrics()))
    }

    /// A stream to the guest's debug console, when the pod was started with it.
    fn open_console(&self, peer: &str) -> Result<UnixStream, String> {
        let pod = self.lock().pod.clone().ok_or("the pod has not booted")?;
        if !pod.vm.info.debug_console {
            crate::plog!(
                Warn,
                "pod {}: debug console refused to {peer}: not enabled",
                pod.id
            );
            return Err(format!(
                "pod {} was started without the debug console ([debug] console = true)",
                pod.id
            ));
        }
        crate::plog!(Warn, "pod {}: debug console opened by {peer}", pod.id);
        pod.vm
            .client
            .open_console(Instant::now() + CONSOLE_CONNECT)
            .map_err(|e| format!("the guest's debug console: {}", Untrusted(&e)))
    }
}

/// containerd's name of a process status.
fn status_name(s: Status) -> String {
    match s {
        Status::CREATED => "created",
        Status::RUNNING => "running",
        Status::STOPPED => "stopped",
        Status::PAUSED => "paused",
        Status::PAUSING => "pausing",
        Status::UNKNOWN => "unknown",
    }
    .into()
}

/// The VMM's metrics, fresh: SIGUSR1 asks it to rewrite the file, and the file is read until
/// its `seq` grows (at most [`VMM_FLUSH_WAIT`]); a torn or stale read gives the last parse.
fn read_vmm_metrics(vm: &Vm) -> Option<VmmFigures> {
    let path = &vm.info.metrics_file;
    let read = || -> Option<VmmFigures> {
        let mut text = Vec::new();
        let file = std::fs::File::open(path).ok()?;
        file.take(MAX_VMM_METRICS).read_to_end(&mut text).ok()?;
        VmmFigures::parse(&text).ok()
    };
    let before = read();
    let seq = before.as_ref().map_or(0, |v| v.seq);
    vm.signal(libc::SIGUSR1);
    let deadline = Instant::now() + VMM_FLUSH_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(v) = read().filter(|v| v.seq > seq) {
            return Some(v);
        }
    }
    read().or(before)
}

/// The guest's memory and load, if the agent answers within its quick deadline.
fn guest_figures(vm: &Vm) -> Option<GuestFigures> {
    let s = vm.client.guest_stats().ok()?;
    Some(GuestFigures {
        mem_total_kib: s.mem_total_kib,
        mem_free_kib: s.mem_free_kib,
        mem_available_kib: s.mem_available_kib,
        load_milli: [s.load1_milli, s.load5_milli, s.load15_milli],
        procs: (u64::from(s.procs_running), u64::from(s.procs_total)),
    })
}
