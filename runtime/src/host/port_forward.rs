//! CRI `PortForward` (`kubectl port-forward`) into the guest.
//!
//! containerd serves `PortForward` itself: it enters the pod's network namespace on the host
//! and dials `localhost:<port>` there (IPv4 first). Under runc the pod's processes listen in
//! that namespace; under moat they listen in the guest, and the namespace has only loopback
//! and the bridge to the VM. So, for a pod with a network namespace, the shim
//!
//! 1. listens on `127.0.0.1:<ephemeral>` inside the namespace;
//! 2. adds an iptables rule there ([`rule`]) that redirects every TCP connection to
//!    `127.0.0.1` to that listener (`SO_ORIGINAL_DST` still tells which port was dialled);
//! 3. for each connection opens a port-forward stream to the agent for that port
//!    ([`moat_agent_protocol::port_forward`]) and copies bytes both ways.
//!
//! The rule is recorded ([`RECORD_FILE`] in the pod directory) before it is added, and removed
//! at teardown, or by `delete` after a dead shim. The guest only answers streams the host
//! opened: at most [`MAX_STREAMS`] at once per pod (more connections are closed at once), each
//! opened within [`OPEN_TIMEOUT`] and closed after [`IDLE_TIMEOUT`] without a byte either way
//! (containerd's own stream idle timeout), with a bounded buffer each way.

pub mod rule;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_agent_protocol::port_forward::{pump, PumpEnd, MAX_STREAMS};
use serde::{Deserialize, Serialize};

use crate::guard::text::Untrusted;
use crate::host::netns;
use crate::host::record;
use crate::util::lock;
use crate::vm::agent::StdioOpenError;

/// What was changed, in the pod directory.
pub const RECORD_FILE: &str = "port-forward.json";

/// Longest wait for the agent to open a stream (it dials the port in the guest first).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// A stream with no byte either way for this long is closed (containerd's default
/// `stream_idle_timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Opens a stream to a guest TCP port before a deadline (the pod's agent client).
pub type Opener = dyn Fn(u16, Instant) -> Result<UnixStream, StdioOpenError> + Send + Sync;

/// Why port forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// The listener could not be made (is loopback up in the namespace?).
    #[error("listening on 127.0.0.1 in {path}: {source}")]
    Listen {
        /// The namespace.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The record could not be written.
    #[error("writing {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// iptables failed.
    #[error("the port-forward rule: {0}")]
    Rule(String),
    /// The accept thread could not be started.
    #[error("starting the port-forward thread: {0}")]
    Thread(std::io::Error),
}

/// The rule the shim added, to remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRecord {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The listener's port: the rule's `--to-ports`.
    pub listen_port: u16,
}

/// What the accept thread and the streams share.
struct Shared {
    pod: String,
    open: Box<Opener>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// The open connections (a clone of each), shut down at stop.
    streams: Mutex<HashMap<u64, TcpStream>>,
}

/// Port forwarding of one pod, running.
pub struct PortForward {
    record: ForwardRecord,
    record_path: PathBuf,
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl PortForward {
    /// Sets up forwarding for pod `pod` in network namespace `netns` (see the module doc),
    /// recording the rule in `record_path` first; `open` opens the guest streams. On failure
    /// nothing is left behind.
    pub fn start(
        pod: &str,
        netns: &Path,
        record_path: &Path,
        open: Box<Opener>,
    ) -> Result<PortForward, ForwardError> {
        let listener = netns::run_in(netns, || {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .and_then(|l| Ok((l.local_addr()?.port(), l)))
        })?
        .map_err(|source| ForwardError::Listen {
            path: netns.to_path_buf(),
            source,
        })?;
        let (listen_port, listener) = listener;
        let record = ForwardRecord {
            netns: netns.to_path_buf(),
            listen_port,
        };
        write_record(record_path, &record)?;
        if let Err(e) = rule::add(netns, listen_port) {
            let _ = std::fs::remove_file(record_path);
            return Err(ForwardError::Rule(e));
        }
        let shared = Arc::new(Shared {
            pod: pod.to_string(),
            open,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
        });
        let mut fwd = PortForward {
            record,
            record_path: record_path.to_path_buf(),
            listener: Arc::new(listener),
            shared,
            accept: None,
        };
        let (listener, shared) = (Arc::clone(&fwd.listener), Arc::clone(&fwd.shared));
        match std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || accept_loop(&listener, &shared))
        {
            Ok(t) => fwd.accept = Some(t),
            Err(e) => {
                fwd.stop();
                return Err(ForwardError::Thread(e));
            }
        }
        Ok(fwd)
    }

    /// The listener's port in the namespace.
    pub fn listen_port(&self) -> u16 {
        self.record.listen_port
    }

    /// Stops accepting, closes the open streams, removes the rule and the record; failures
    /// are logged.
    pub fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocked accept (it then fails) without closing the fd under it.
        // SAFETY: shutdown(2) on a socket this struct owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in lock(&self.shared.streams).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        undo(&self.record);
        let _ = std::fs::remove_file(&self.record_path);
    }
}

/// Accepts connections until stopped; each is served in a thread of its own.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let conn = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok((c, _)) => c,
            Err(e) => {
                crate::plog!(Warn, "pod {}: port forward: accept: {e}", shared.pod);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(id) = admit(shared, &conn) else {
            crate::plog!(
                Warn,
                "pod {}: port forward: {MAX_STREAMS} streams open: connection closed",
                shared.pod
            );
            continue;
        };
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("port-forward-stream".into())
            .spawn(move || {
                serve(&s, conn);
                lock(&s.streams).remove(&id);
            });
        if let Err(e) = spawned {
            lock(&shared.streams).remove(&id);
            crate::plog!(
                Warn,
                "pod {}: port forward: a stream thread: {e}",
                shared.pod
            );
        }
    }
}

/// Registers `conn` (a clone, to shut it down at stop) unless [`MAX_STREAMS`] are open.
fn admit(shared: &Shared, conn: &TcpStream) -> Option<u64> {
    let mut streams = lock(&shared.streams);
    if streams.len() >= MAX_STREAMS {
        return None;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    streams.insert(id, conn.try_clone().ok()?);
    Some(id)
}

/// One connection: the port it was for, the guest stream, then the copy.
fn serve(shared: &Shared, conn: TcpStream) {
    let pod = &shared.pod;
    let port = match original_port(&conn) {
        Ok(p) => p,
        Err(e) => {
            crate::plog!(Warn, "pod {pod}: port forward: the dialled port: {e}");
            return;
        }
    };
    let guest = match (shared.open)(port, Instant::now() + OPEN_TIMEOUT) {
        Ok(g) => g,
        Err(e) => {
            crate::plog!(Info, "pod {pod}: port forward to {port}: {}", Untrusted(&e));
            return;
        }
    };
    crate::plog!(Debug, "pod {pod}: port forward to {port}: open");
    match pump(conn.as_fd(), guest.as_fd(), Some(IDLE_TIMEOUT)) {
        Ok(PumpEnd::Closed { a_to_b, b_to_a }) => crate::plog!(
            Debug,
            "pod {pod}: port forward to {port}: closed ({a_to_b} bytes in, {b_to_a} out)"
        ),
        Ok(PumpEnd::Idle { .. }) => crate::plog!(
            Info,
            "pod {pod}: port forward to {port}: idle for {IDLE_TIMEOUT:?}: closed"
        ),
        Err(e) => crate::plog!(Warn, "pod {pod}: port forward to {port}: {e}"),
    }
}

/// The port `conn` was dialled on before the rule redirected it (`SO_ORIGINAL_DST`).
fn original_port(conn: &TcpStream) -> std::io::Result<u16> {
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, which has that size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

/// Removes the rule `record` names, if its namespace is still there.
fn undo(record: &ForwardRecord) {
    if !record.netns.exists() {
        return;
    }
    if let Err(e) = rule::delete(&record.netns, record.listen_port) {
        crate::plog!(Warn, "port forward teardown: {e}");
    }
}

/// `delete` after a dead shim: removes the rule recorded in `record_path`, if any. Returns
/// what it did, for the log.
pub fn cleanup_recorded(record_path: &Path) -> Option<String> {
    let record: ForwardRecord = match record::read(record_path)? {
        Ok(r) => r,
        Err(why) => return Some(why),
    };
    if netns::is_fd_path(&record.netns) {
        let _ = std::fs::remove_file(record_path);
        return Some("the port-forward rule went with the dead shim's namespace".into());
    }
    undo(&record);
    let _ = std::fs::remove_file(record_path);
    Some(format!(
        "port-forward rule in {} removed",
        record.netns.display()
    ))
}

fn write_record(path: &Path, record: &ForwardRecord) -> Result<(), ForwardError> {
    record::write(path, record).map_err(|source| ForwardError::Record {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
