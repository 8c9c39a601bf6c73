//! A fake moat-agent for unit tests: a real ttrpc server (the protocol crate's generated
//! `Health` and `AgentService`, as `agent/src/service.rs` serves them) on a unix socket in a
//! [`TempDir`], with its stdio port on `PATH.stdio`, answering as a test's [`Script`] says:
//! honestly, or as a hostile guest would. The shim reaches it through
//! [`AgentAddress::Unix`], the same [`Agent`] code as a real pod's.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_agent_protocol::agent::{
    create_agent_service, AgentService, ContainerRequest, Empty, GetOOMEventRequest,
    ListProcessesResponse, OOMEvent, ProcessRequest, StatsContainerResponse, TtyWinResizeRequest,
    WaitProcessResponse,
};
use moat_agent_protocol::health::{
    create_health, CheckRequest, CheckResponse, Health, ServingStatus,
};
use moat_agent_protocol::stdio::{self, stdio_socket_path, REPLY_OK};
use moat_agent_protocol::ttrpc::{self, Code, TtrpcContext};
use tempfile::TempDir;

use super::{Agent, AgentAddress, Deadlines};
use crate::util::lock;

/// How long a "never answering" handler holds on before the test ends it anyway.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// How the fake agent answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Script {
    /// `GetOOMEvent` answers these ids in turn, at once; empty: no event, the call answers
    /// `DEADLINE_EXCEEDED` near its deadline as the real agent does.
    pub oom_ids: Vec<String>,
    /// `StatsContainer` never answers.
    pub stats_hang: bool,
    /// `ListProcesses` answers this many pids (all `1`, the smallest on the wire).
    pub pids: usize,
    /// `TtyWinResize` never answers.
    pub resize_hang: bool,
    /// `WaitProcess` answers this status at once; `None`: `DEADLINE_EXCEEDED` at once.
    pub wait_status: Option<i32>,
    /// Stdio streams get one byte of a reply line that never ends per this interval; `None`:
    /// `OK`, then `hello\n`, then the stream's end.
    pub stdio_drip: Option<Duration>,
}

/// What the services share with the test.
struct Shared {
    script: Script,
    released: Mutex<bool>,
    cond: Condvar,
    calls: Mutex<HashMap<&'static str, usize>>,
    next_oom: AtomicUsize,
}

impl Shared {
    fn count(&self, method: &'static str) {
        *lock(&self.calls).entry(method).or_default() += 1;
    }

    /// Waits until the fake is dropped or `limit` passes; true if dropped.
    fn wait_released(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut released = lock(&self.released);
        while !*released {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            released = self
                .cond
                .wait_timeout(released, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// A handler that never answers (until the test ends).
    fn hang<T>(&self) -> ttrpc::Result<T> {
        self.wait_released(HANG_LIMIT);
        Err(status(Code::UNAVAILABLE, "the fake agent is shutting down"))
    }
}

fn status(code: Code, msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

/// The fake agent's services.
struct Services(Arc<Shared>);

impl Health for Services {
    fn check(&self, _ctx: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        self.0.count("Check");
        let mut r = CheckResponse::new();
        r.status = ServingStatus::SERVING_STATUS_SERVING.into();
        Ok(r)
    }
}

impl AgentService for Services {
    fn get_oom_event(&self, ctx: &TtrpcContext, _: GetOOMEventRequest) -> ttrpc::Result<OOMEvent> {
        self.0.count("GetOOMEvent");
        let ids = &self.0.script.oom_ids;
        if ids.is_empty() {
            let wait = Duration::from_nanos(ctx.timeout_nano.max(0) as u64);
            self.0.wait_released(wait.saturating_sub(wait / 10));
            return Err(status(Code::DEADLINE_EXCEEDED, "no OOM event"));
        }
        let i = self.0.next_oom.fetch_add(1, Ordering::SeqCst);
        let mut ev = OOMEvent::new();
        ev.container_id = ids[i % ids.len()].clone();
        Ok(ev)
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        _: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.0.count("StatsContainer");
        if self.0.script.stats_hang {
            return self.0.hang();
        }
        Ok(StatsContainerResponse::new())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        _: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.0.count("ListProcesses");
        let mut r = ListProcessesResponse::new();
        r.pids = vec![1; self.0.script.pids];
        Ok(r)
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        _: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.0.count("WaitProcess");
        let Some(exit) = self.0.script.wait_status else {
            return Err(status(Code::DEADLINE_EXCEEDED, "still running"));
        };
        let mut r = WaitProcessResponse::new();
        r.status = exit;
        Ok(r)
    }

    fn tty_win_resize(&self, _ctx: &TtrpcContext, _: TtyWinResizeRequest) -> ttrpc::Result<Empty> {
        self.0.count("TtyWinResize");
        if self.0.script.resize_hang {
            return self.0.hang();
        }
        Ok(Empty::new())
    }
}

/// A running fake agent; dropping it ends every handler still holding on and the server.
pub(crate) struct FakeAgent {
    _dir: TempDir,
    path: PathBuf,
    shared: Arc<Shared>,
    server: Option<ttrpc::Server>,
    stdio: Option<JoinHandle<()>>,
}

impl FakeAgent {
    /// Serves `script` on a fresh socket.
    pub(crate) fn start(script: Script) -> FakeAgent {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("agent.sock");
        let shared = Arc::new(Shared {
            script,
            released: Mutex::new(false),
            cond: Condvar::new(),
            calls: Mutex::new(HashMap::new()),
            next_oom: AtomicUsize::new(0),
        });
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let services = Arc::new(Services(shared.clone()));
        let mut server = ttrpc::Server::new()
            .set_thread_count_min(2)
            .set_thread_count_default(8)
            .set_thread_count_max(256)
            .add_listener(listener.into_raw_fd())
            .unwrap()
            .register_service(create_health(services.clone()))
            .register_service(create_agent_service(services));
        server.start().unwrap();
        let stdio_listener = UnixListener::bind(stdio_socket_path(&path)).unwrap();
        stdio_listener.set_nonblocking(true).unwrap();
        let s = shared.clone();
        let stdio = std::thread::spawn(move || accept_stdio(&stdio_listener, &s));
        FakeAgent {
            _dir: dir,
            path,
            shared,
            server: Some(server),
            stdio: Some(stdio),
        }
    }

    /// Where it serves.
    pub(crate) fn address(&self) -> AgentAddress {
        AgentAddress::Unix(self.path.clone())
    }

    /// The shim's client of it.
    pub(crate) fn agent(&self, deadlines: Deadlines) -> Agent {
        Agent::connect(self.address(), Duration::from_secs(10), deadlines).unwrap()
    }

    /// How many times `method` (`Check`, `StatsContainer`, ...) was called.
    pub(crate) fn calls(&self, method: &str) -> usize {
        lock(&self.shared.calls).get(method).copied().unwrap_or(0)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        *lock(&self.shared.released) = true;
        self.shared.cond.notify_all();
        if let Some(t) = self.stdio.take() {
            let _ = t.join();
        }
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

/// Accepts stdio streams until the fake is dropped.
fn accept_stdio(listener: &UnixListener, shared: &Arc<Shared>) {
    while !*lock(&shared.released) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || serve_stdio(stream, &shared));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One stdio stream: the header, then the scripted reply.
fn serve_stdio(mut stream: UnixStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    if stdio::read_header(&mut stream).is_err() {
        return;
    }
    match shared.script.stdio_drip {
        Some(every) => {
            while !shared.wait_released(every) {
                if stream.write_all(b"O").is_err() {
                    return;
                }
            }
        }
        None => {
            let _ = stream.write_all(REPLY_OK);
            let _ = stream.write_all(b"hello\n");
        }
    }
}
