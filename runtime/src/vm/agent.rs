//! The shim's side of the agent: [`Agent`] wraps moat-agent-protocol's [`AgentClient`] with
//! what a hostile guest requires (see [`crate::guard::limits`] for every number):
//!
//! - each call class has its deadline, and quick calls (`Stats`, `ListProcesses`,
//!   `TtyWinResize`) their own connection, so a slow control call never delays them;
//! - a connection that leaves [`Deadlines::max_unanswered`] calls unanswered is closed and made
//!   anew (ttrpc keeps a record of every unanswered call until its connection closes);
//! - replies are capped ([`Agent::list_processes`] refuses more than
//!   [`limits::MAX_PIDS`] pids);
//! - stdio streams are opened before one absolute deadline ([`Agent::open_stdio`]), not with a
//!   timeout per byte.
//!
//! It reaches the agent at an [`AgentAddress`]: the VMM's hybrid vsock socket, or a plain unix
//! socket where an agent (or the unit tests' fake, `testing`) serves ttrpc, with its stdio
//! streams on `PATH.stdio`.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use moat_agent_protocol::agent::{CreatePodRequest, StatsContainerResponse, WaitProcessResponse};
use moat_agent_protocol::net::{InterfaceSpec, RouteSpec};
use moat_agent_protocol::stdio::{Channel, Channels};
use moat_agent_protocol::{AgentClient, ClientError, CreateOptions, GuestStats, AGENT_VSOCK_PORT};

use crate::guard::limits;

mod link;
pub mod rpc_metrics;
mod stdio;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use link::Link;
use rpc_metrics::RpcMetrics;
pub use stdio::StdioOpenError;

/// Where the agent serves ttrpc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// The VMM's hybrid vsock unix socket: `CONNECT` to the agent's vsock port (and to
    /// [`moat_agent_protocol::STDIO_VSOCK_PORT`] for stdio streams).
    HybridVsock(PathBuf),
    /// A plain unix socket (stdio streams on `PATH.stdio`): an agent serving `unix:PATH`.
    Unix(PathBuf),
}

impl AgentAddress {
    /// A client for the agent, retrying while the guest boots, for at most `timeout`; its
    /// calls get `call_timeout` each.
    pub fn connect(
        &self,
        timeout: Duration,
        call_timeout: Duration,
    ) -> Result<AgentClient, ClientError> {
        let client = match self {
            AgentAddress::HybridVsock(path) => {
                AgentClient::connect_hybrid_vsock(path, AGENT_VSOCK_PORT, timeout)
            }
            AgentAddress::Unix(path) => AgentClient::connect_unix(path, timeout),
        }?;
        Ok(client.with_call_timeout(call_timeout))
    }

    /// The address, for messages.
    pub fn describe(&self) -> String {
        match self {
            AgentAddress::HybridVsock(p) => format!("{} (hybrid vsock)", p.display()),
            AgentAddress::Unix(p) => p.display().to_string(),
        }
    }
}

/// The deadlines an [`Agent`] applies; [`Deadlines::DEFAULT`] is what the shim uses (unit
/// tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Control calls and (added to their kill wait) `RemoveContainer`.
    pub control: Duration,
    /// Quick calls, on their own connection.
    pub quick: Duration,
    /// Opening all the stdio streams of one process.
    pub stdio_open: Duration,
    /// Calls without a reply after which a connection is made anew.
    pub max_unanswered: u32,
}

impl Deadlines {
    /// The documented deadlines of [`crate::guard::limits`].
    pub const DEFAULT: Deadlines = Deadlines {
        control: limits::CONTROL_DEADLINE,
        quick: limits::QUICK_DEADLINE,
        stdio_open: limits::STDIO_OPEN_DEADLINE,
        max_unanswered: limits::MAX_UNANSWERED,
    };
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines::DEFAULT
    }
}

/// The pod's agent, as the shim calls it.
pub struct Agent {
    address: AgentAddress,
    deadlines: Deadlines,
    control: Link,
    quick: Link,
    rpc_metrics: RpcMetrics,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("address", &self.address)
            .field("deadlines", &self.deadlines)
            .finish()
    }
}

impl Agent {
    /// Connects to the agent at `address`, retrying for at most `timeout` while the guest
    /// boots. The quick connection is made at once too if the agent accepts it within its
    /// deadline, else by the first quick call.
    pub fn connect(
        address: AgentAddress,
        timeout: Duration,
        deadlines: Deadlines,
    ) -> Result<Agent, ClientError> {
        let control = address.connect(timeout, deadlines.control)?;
        let quick = match address.connect(deadlines.quick, deadlines.quick) {
            Ok(c) => Some(c),
            Err(e) => {
                let e = crate::guard::text::Untrusted(e);
                crate::plog!(
                    Warn,
                    "the agent's quick connection: {e} (retried by the next call)"
                );
                None
            }
        };
        let rpc_metrics = RpcMetrics::default();
        let link = |name, deadline, client| {
            Link::new(
                name,
                address.clone(),
                (deadline, deadlines.max_unanswered),
                client,
                rpc_metrics.clone(),
            )
        };
        Ok(Agent {
            control: link("control", deadlines.control, Some(control)),
            quick: link("quick", deadlines.quick, quick),
            address,
            deadlines,
            rpc_metrics,
        })
    }

    /// Where the agent is.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// Counts and latencies of the RPCs made through this client.
    pub fn rpc_metrics(&self) -> &RpcMetrics {
        &self.rpc_metrics
    }

    /// The deadlines this client applies.
    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    /// `SetGuestDateTime` (control).
    pub fn set_guest_date_time(&self, time: SystemTime) -> Result<(), ClientError> {
        self.control
            .call("SetGuestDateTime", |c| c.set_guest_date_time(time))
    }

    /// `CreatePod` (control).
    pub fn create_pod(&self, req: &CreatePodRequest) -> Result<(), ClientError> {
        self.control.call("CreatePod", |c| c.create_pod(req))
    }

    /// `DestroyPod` (control).
    pub fn destroy_pod(&self, pod_id: &str) -> Result<(), ClientError> {
        self.control.call("DestroyPod", |c| c.destroy_pod(pod_id))
    }

    /// `UpdateInterface` (control).
    pub fn update_interface(&self, spec: &InterfaceSpec) -> Result<(), ClientError> {
        self.control
            .call("UpdateInterface", |c| c.update_interface(spec))
    }

    /// `UpdateRoutes` (control).
    pub fn update_routes(&self, routes: &[RouteSpec]) -> Result<(), ClientError> {
        self.control
            .call("UpdateRoutes", |c| c.update_routes(routes))
    }

    /// `CreateContainer` (control); the init process's guest pid (for the agent only: the
    /// shim never reports guest pids to containerd).
    pub fn create_container(
        &self,
        container_id: &str,
        spec_json: &str,
        channels: Channels,
        options: CreateOptions,
    ) -> Result<u32, ClientError> {
        self.control.call("CreateContainer", |c| {
            c.create_container(container_id, spec_json, channels, options)
        })
    }

    /// `StartContainer` (control).
    pub fn start_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.control
            .call("StartContainer", |c| c.start_container(container_id))
    }

    /// `ExecProcess` (control); the process's guest pid (for the agent only).
    pub fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &str,
        channels: Channels,
    ) -> Result<u32, ClientError> {
        self.control.call("ExecProcess", |c| {
            c.exec_process(container_id, exec_id, process_json, channels)
        })
    }

    /// `SignalProcess` (control: a kill must work when the guest is busiest).
    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError> {
        self.control.call("SignalProcess", |c| {
            c.signal_process(container_id, exec_id, signal, all)
        })
    }

    /// `WaitProcess`, blocking at most `slice` (long poll on the control connection).
    pub fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
        slice: Duration,
    ) -> Result<WaitProcessResponse, ClientError> {
        self.control.call("WaitProcess", |c| {
            c.wait_process(container_id, exec_id, Some(slice))
        })
    }

    /// `RemoveContainer`: the agent waits at most `kill_timeout` (`None`: its 10 s) for the
    /// processes to die; the call's deadline is that plus the control deadline.
    pub fn remove_container(
        &self,
        container_id: &str,
        kill_timeout: Option<Duration>,
    ) -> Result<(), ClientError> {
        self.control.call("RemoveContainer", |c| {
            c.remove_container(container_id, kill_timeout)
        })
    }

    /// `UpdateContainer` (control).
    pub fn update_container(
        &self,
        container_id: &str,
        resources_json: &str,
    ) -> Result<(), ClientError> {
        self.control.call("UpdateContainer", |c| {
            c.update_container(container_id, resources_json)
        })
    }

    /// `PauseContainer` (control).
    pub fn pause_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.control
            .call("PauseContainer", |c| c.pause_container(container_id))
    }

    /// `ResumeContainer` (control).
    pub fn resume_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.control
            .call("ResumeContainer", |c| c.resume_container(container_id))
    }

    /// `GetOOMEvent`, blocking at most `slice` (long poll on the control connection): the id
    /// of a container with an OOM kill, as the guest says — unchecked, up to 4 MiB; `None`
    /// when there was none in time.
    pub fn get_oom_event(&self, slice: Duration) -> Result<Option<String>, ClientError> {
        let start = Instant::now();
        let r = self.control.call("GetOOMEvent", |c| c.get_oom_event(slice));
        // The client reports a call that got no reply at all as "no event"; it still counts.
        if matches!(r, Ok(None)) && start.elapsed() >= slice {
            self.control.unanswered();
        }
        r
    }

    /// `StatsContainer` (quick).
    pub fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, ClientError> {
        self.quick
            .call("StatsContainer", |c| c.stats_container(container_id))
    }

    /// `GetGuestStats` (quick): the guest's memory and load.
    pub fn guest_stats(&self) -> Result<GuestStats, ClientError> {
        self.quick.call("GetGuestStats", |c| c.guest_stats())
    }

    /// `ListProcesses` (quick): guest pids, at most [`limits::MAX_PIDS`]; a longer list is
    /// refused with [`ClientError::BadReply`].
    pub fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, ClientError> {
        let pids = self
            .quick
            .call("ListProcesses", |c| c.list_processes(container_id))?;
        if pids.len() > limits::MAX_PIDS {
            return Err(ClientError::BadReply {
                method: "AgentService.ListProcesses",
                detail: format!(
                    "{} pids, more than the {} the shim accepts",
                    pids.len(),
                    limits::MAX_PIDS
                ),
            });
        }
        Ok(pids)
    }

    /// `TtyWinResize` (quick).
    pub fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ClientError> {
        self.quick.call("TtyWinResize", |c| {
            c.tty_win_resize(container_id, exec_id, rows, cols)
        })
    }

    /// Opens the `channel` stream of process (`container_id`, `exec_id`): connection, hybrid
    /// vsock handshake and header exchange all before `deadline` (give every stream of one
    /// process the same one, [`Deadlines::stdio_open`] from the first). The stream is
    /// blocking, without timeouts, and carries raw bytes.
    pub fn open_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        channel: Channel,
        deadline: Instant,
    ) -> Result<UnixStream, StdioOpenError> {
        stdio::open(&self.address, container_id, exec_id, channel, deadline)
    }

    /// Opens streams to TCP ports on the guest's loopback, through the agent's port
    /// forwarder ([`moat_agent_protocol::port_forward`]), each before its deadline: blocking,
    /// no timeouts, raw bytes. It holds only the agent's address, so the threads that use it
    /// may outlive the client.
    pub fn port_forward_opener(&self) -> Box<crate::host::port_forward::Opener> {
        let address = self.address.clone();
        Box::new(move |port, deadline| stdio::open_port_forward(&address, port, deadline))
    }

    /// A raw stream to the guest's debug console (vsock port
    /// [`moat_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT`]), connected before `deadline`. The
    /// agent listens there only when the pod was started with the console on; otherwise the
    /// connection is refused.
    pub fn open_console(&self, deadline: Instant) -> Result<UnixStream, StdioOpenError> {
        let AgentAddress::HybridVsock(path) = &self.address else {
            let e = std::io::Error::other("the debug console needs a hybrid vsock agent");
            return Err(StdioOpenError::Connect {
                path: PathBuf::new(),
                source: e,
            });
        };
        let port = Some(moat_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT);
        let stream = stdio::connect_port(path, port, deadline)?;
        let clear = |r: std::io::Result<()>| {
            r.map_err(|source| StdioOpenError::Connect {
                path: path.clone(),
                source,
            })
        };
        clear(stream.set_read_timeout(None))?;
        clear(stream.set_write_timeout(None))?;
        Ok(stream)
    }
}
