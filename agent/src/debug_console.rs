//! The debug console (see [`moat_agent_protocol::console`] for the wire format): an operator's
//! shell, or one command, in the guest, outside every container.
//!
//! Served on vsock port [`moat_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT`] only when the kernel
//! command line has `moat.debug_console=1` (otherwise nothing listens and the connection is
//! refused). A session runs the busybox the host bound into the pod's share
//! ([`moat_agent_protocol::console::guest_busybox_path`]) as the guest's root, in the agent's
//! own namespaces and cgroup, in a new session and process group of its own; when the
//! connection closes, or the session's process exits, that process group gets `SIGKILL`.
//! Processes that leave the group (`setsid`) outlive the session.
//!
//! - [`process`]: the command line, environment, pipes or pty.
//! - [`session`]: a running session's threads: output, input, exit.

mod process;
mod session;

#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::io::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_agent_protocol::console::{self as wire, ConsoleError, Frame, MAX_SESSIONS};

use crate::listener::{self, Conn};
use crate::pty::PtyError;
use crate::reaper::{ExitStatus, Reaper};
use crate::util::Gate;

/// Longest wait for the request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait to write the `ERROR` frame that refuses a connection.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request line was unreadable or invalid.
    #[error(transparent)]
    Request(#[from] ConsoleError),
    /// The pod's share has no busybox: the pod was started without the debug console's tools.
    #[error("this pod has no debug tools ({} is missing)", path.display())]
    NoDebugTools {
        /// Where the busybox should be.
        path: PathBuf,
    },
    /// Starting the busybox failed.
    #[error("starting {}: {source}", path.display())]
    Spawn {
        /// The busybox.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The pty could not be set up.
    #[error("the session's pty: {0}")]
    Pty(#[from] PtyError),
    /// Another system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Waits for a session's process: the agent's [`Reaper`] (the only `wait` caller in the
/// agent), or a direct `waitpid` in tests.
pub trait ExitWaiter: Send + Sync {
    /// Called as soon as the process is spawned.
    fn watch(&self, pid: u32);
    /// Blocks until the process exits; `None` if its status is lost.
    fn wait_exit(&self, pid: u32) -> Option<ExitStatus>;
}

impl ExitWaiter for Reaper {
    fn watch(&self, pid: u32) {
        Reaper::watch(self, pid);
    }

    fn wait_exit(&self, pid: u32) -> Option<ExitStatus> {
        let status = self.wait(pid, None);
        self.forget(pid);
        status
    }
}

/// The debug console: its busybox, its sessions.
pub struct DebugConsole {
    busybox: PathBuf,
    waiter: Arc<dyn ExitWaiter>,
    sessions: Arc<Gate>,
    next_id: AtomicU64,
}

impl DebugConsole {
    /// The guest's console: the pod share's busybox, at most [`MAX_SESSIONS`] sessions.
    pub fn new(waiter: Arc<dyn ExitWaiter>) -> Self {
        Self::with_busybox(waiter, wire::guest_busybox_path(), MAX_SESSIONS)
    }

    /// A console running `busybox`, at most `max_sessions` at once.
    fn with_busybox(waiter: Arc<dyn ExitWaiter>, busybox: PathBuf, max_sessions: usize) -> Self {
        DebugConsole {
            busybox,
            waiter,
            sessions: Gate::new(max_sessions),
            next_id: AtomicU64::new(1),
        }
    }

    /// Accepts connections on `listener` in a thread of its own; each session runs in a
    /// thread of its own.
    pub fn serve(self: Arc<Self>, listener: OwnedFd) -> io::Result<JoinHandle<()>> {
        listener::serve(listener, "debug-console", move |conn| self.accept(conn))
    }

    /// Counts a new connection and starts its session thread, or refuses it when
    /// `max_sessions` already run.
    fn accept(self: &Arc<Self>, conn: Conn) {
        let Some(pass) = self.sessions.enter() else {
            let msg = format!(
                "too many debug console sessions (at most {} at once)",
                self.sessions.max()
            );
            tracing::warn!("debug console: refusing a connection: {msg}");
            refuse(conn, &msg, Some(REFUSE_TIMEOUT));
            return;
        };
        let console = Arc::clone(self);
        if let Err(e) = std::thread::Builder::new()
            .name("debug-console".into())
            .spawn(move || {
                console.handle(conn);
                drop(pass);
            })
        {
            tracing::error!("debug console: spawning a session thread: {e}; dropping it");
        }
    }

    /// Serves one connection, in the calling thread: the request, the process, its I/O until
    /// it exits or the connection closes.
    pub(crate) fn handle(&self, mut conn: Conn) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let who = format!("debug console session {id}");
        let started = read_request(&mut conn).and_then(|req| {
            let reader = conn.try_clone().map_err(|source| SessionError::Io {
                what: "duplicating the connection",
                source,
            })?;
            let child = process::spawn(&self.busybox, &req)?;
            self.waiter.watch(child.pid);
            Ok((req, reader, child))
        });
        let (req, reader, child) = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::info!("{who}: refused: {e}");
                refuse(conn, &e.to_string(), None);
                return;
            }
        };
        tracing::info!(
            "{who}: started {:?} (tty: {}) as pid {}",
            req.argv,
            req.tty,
            child.pid
        );
        let status = session::run(conn, reader, child, self.waiter.as_ref(), &who);
        let (argv, tty) = (&req.argv, req.tty);
        match status {
            Some(code) => tracing::info!("{who}: {argv:?} (tty: {tty}) ended: exit status {code}"),
            None => tracing::warn!("{who}: {argv:?} (tty: {tty}) ended: exit status lost"),
        }
    }
}

/// Reads the request within [`REQUEST_TIMEOUT`], then clears the timeouts.
fn read_request(conn: &mut Conn) -> Result<wire::ConsoleRequest, SessionError> {
    let io = |what| move |source| SessionError::Io { what, source };
    conn.set_timeouts(Some(REQUEST_TIMEOUT))
        .map_err(io("setting the request timeout"))?;
    let req = wire::read_request(conn)?;
    conn.set_timeouts(None)
        .map_err(io("clearing the request timeout"))?;
    Ok(req)
}

/// Sends `message` as an `ERROR` frame (within `timeout`, if any) and closes the connection.
fn refuse(mut conn: Conn, message: &str, timeout: Option<Duration>) {
    if let Some(t) = timeout {
        let _ = conn.set_timeouts(Some(t));
    }
    if let Err(e) = wire::write_frame(&mut conn, &Frame::error(message)) {
        tracing::debug!("debug console: sending the refusal: {e}");
    }
    let _ = conn.shutdown_write();
}
