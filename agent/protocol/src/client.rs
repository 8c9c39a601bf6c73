//! The host-side client of `moat-agent`.
//!
//! [`AgentClient::connect_hybrid_vsock`] reaches the agent through the VMM's hybrid vsock unix
//! socket (see [`crate::handshake`]); [`AgentClient::connect_unix`] talks to an agent serving on
//! a plain unix socket (`moat-agent --listen unix:PATH`, used by tests). Both retry with backoff
//! until the agent answers `Health.Check` with `SERVING` or the timeout passes, since the
//! microVM may still be booting.
//! Every RPC has its own timeout ([`AgentClient::with_call_timeout`]).
//!
//! Process stdio travels on separate streams ([`crate::stdio`]): [`AgentClient::open_stdio`]
//! dials the agent's stdio port the way the client itself was connected. The typed wrappers of
//! the pod, container, process and guest RPCs live in `rpcs.rs`, those of the network RPCs in
//! `net_rpcs.rs`.

mod net_rpcs;
mod rpcs;

pub use rpcs::CreateOptions;

use std::io;
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::{AgentServiceClient, GuestDetailsRequest, GuestDetailsResponse};
use crate::handshake::{self, HandshakeError};
use crate::health::{CheckRequest, HealthClient, ServingStatus, VersionRequest, VersionResponse};
use crate::stdio::{self, stdio_socket_path, Channel, StdioError, StreamHeader};
use crate::STDIO_VSOCK_PORT;

/// Per-RPC timeout unless [`AgentClient::with_call_timeout`] sets another.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause between connection attempts; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait for the `OK` line, and then for the `Health.Check` reply, of one attempt: the
/// VMM answers as soon as the guest accepts or refuses, so a longer silence means a wedged
/// attempt worth redoing.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of [`AgentClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No attempt reached the agent before the connect timeout.
    #[error("agent at {target} did not answer within {timeout:?} ({attempts} attempts); last error: {last}")]
    ConnectTimeout {
        /// What was dialled (socket path, port).
        target: String,
        /// The connect timeout that passed.
        timeout: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        last: String,
    },
    /// The VMM answered the hybrid-vsock handshake with something other than `OK <port>`.
    #[error("hybrid vsock handshake with {target} failed: {source}")]
    Handshake {
        /// What was dialled.
        target: String,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// The ttrpc client could not be set up on the connected stream.
    #[error("setting up the ttrpc client on {target}: {source}")]
    Setup {
        /// What was dialled.
        target: String,
        /// ttrpc's error.
        #[source]
        source: ttrpc::Error,
    },
    /// An RPC got no reply within its timeout.
    #[error("{method} got no reply within {timeout:?}: {source}")]
    CallTimeout {
        /// The RPC, e.g. `Health.Check`.
        method: &'static str,
        /// The per-call timeout.
        timeout: Duration,
        /// ttrpc's error.
        #[source]
        source: ttrpc::Error,
    },
    /// An RPC failed (transport error or a non-OK status from the agent).
    #[error("{method} failed: {source}")]
    Rpc {
        /// The RPC, e.g. `Health.Check`.
        method: &'static str,
        /// ttrpc's error.
        #[source]
        source: ttrpc::Error,
    },
    /// The agent replied with a value this client does not understand.
    #[error("{method}: unexpected reply from the agent: {detail}")]
    BadReply {
        /// The RPC.
        method: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The request was refused before it was sent (see [`crate::net`]).
    #[error("{method}: invalid request: {source}")]
    Invalid {
        /// The RPC.
        method: &'static str,
        /// What was wrong.
        #[source]
        source: crate::net::NetSpecError,
    },
    /// The client was built by [`AgentClient::from_stream`]: it does not know where the
    /// agent's stdio port is.
    #[error("{target}: no stdio address known (client made from a bare stream)")]
    NoStdioAddress {
        /// What the client is connected to.
        target: String,
    },
    /// Connecting a stdio stream failed.
    #[error("connecting the stdio stream {target}: {source}")]
    StdioConnect {
        /// What was dialled.
        target: String,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The stdio stream's header exchange failed or the agent refused the attachment.
    #[error("stdio stream {target}: {source}")]
    Stdio {
        /// What was dialled.
        target: String,
        /// What went wrong.
        #[source]
        source: StdioError,
    },
}

impl ClientError {
    /// The ttrpc status code the agent answered with, if the error is a non-OK status.
    pub fn rpc_code(&self) -> Option<ttrpc::Code> {
        match self {
            ClientError::Rpc {
                source: ttrpc::Error::RpcStatus(status),
                ..
            }
            | ClientError::CallTimeout {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => Some(status.code()),
            _ => None,
        }
    }

    /// Whether the call ran out of time: no reply within the client's timeout, or the agent
    /// answered `DEADLINE_EXCEEDED`.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::CallTimeout { .. })
            || self.rpc_code() == Some(ttrpc::Code::DEADLINE_EXCEEDED)
    }
}

/// How the client reached the agent, so that stdio streams can be dialled the same way.
#[derive(Debug, Clone)]
enum StdioAddress {
    /// Through the VMM's hybrid vsock socket, to [`STDIO_VSOCK_PORT`].
    HybridVsock(PathBuf),
    /// A plain unix socket (`PATH.stdio` of an agent serving on `unix:PATH`).
    Unix(PathBuf),
    /// Unknown ([`AgentClient::from_stream`]).
    None,
}

/// A connected client of `moat-agent`'s services. Cheap to share by reference across threads
/// (the underlying ttrpc client multiplexes calls on one connection).
pub struct AgentClient {
    health: HealthClient,
    agent: AgentServiceClient,
    call_timeout: Duration,
    target: String,
    stdio: StdioAddress,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("target", &self.target)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// The outcome of one failed connection attempt.
enum AttemptError {
    /// Try again after a pause (socket missing, refused, closed by the VMM...).
    Transient(String),
    /// Give up now.
    Fatal(ClientError),
}

impl AgentClient {
    /// Connects through the VMM's hybrid vsock unix socket `uds_path` to guest vsock `port`
    /// (normally [`crate::AGENT_VSOCK_PORT`]), retrying with backoff until the handshake
    /// succeeds and the agent answers `Health.Check` with `SERVING`, or `timeout` passes.
    ///
    /// A reply other than `OK <port>` fails at once with [`ClientError::Handshake`]; a missing
    /// socket, a refused connection, the VMM closing the stream (no listener in the guest yet)
    /// or an unanswered `Health.Check` are retried, and end as [`ClientError::ConnectTimeout`].
    pub fn connect_hybrid_vsock(
        uds_path: impl AsRef<Path>,
        port: u32,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let path = uds_path.as_ref().to_path_buf();
        let target = format!("{} (hybrid vsock port {port})", path.display());
        retry(&target, timeout, |remaining| {
            let mut stream = connect_stream(&path)?;
            let budget = remaining.clamp(Duration::from_millis(1), ATTEMPT_TIMEOUT);
            match handshake::handshake(&mut stream, port, budget) {
                Ok(_host_port) => {}
                Err(e) if e.is_transient() => return Err(AttemptError::Transient(e.to_string())),
                Err(e) => {
                    return Err(AttemptError::Fatal(ClientError::Handshake {
                        target: target.clone(),
                        source: e,
                    }))
                }
            }
            probe(stream, &target, budget)
        })
        .map(|client| client.with_stdio(StdioAddress::HybridVsock(path.clone())))
    }

    /// Connects to an agent serving on the unix socket `path` (`moat-agent --listen
    /// unix:PATH`), retrying with backoff until it answers `Health.Check` or `timeout` passes.
    pub fn connect_unix(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let target = path.display().to_string();
        retry(&target, timeout, |remaining| {
            let stream = connect_stream(&path)?;
            probe(
                stream,
                &target,
                remaining.clamp(Duration::from_millis(1), ATTEMPT_TIMEOUT),
            )
        })
        .map(|client| client.with_stdio(StdioAddress::Unix(stdio_socket_path(&path))))
    }

    /// Wraps an already connected stream (after any handshake); `target` names it in errors.
    /// Such a client cannot [`open_stdio`](Self::open_stdio).
    pub fn from_stream(stream: UnixStream, target: String) -> Result<Self, ClientError> {
        let client =
            ttrpc::Client::new(stream.into_raw_fd()).map_err(|source| ClientError::Setup {
                target: target.clone(),
                source,
            })?;
        Ok(AgentClient {
            health: HealthClient::new(client.clone()),
            agent: AgentServiceClient::new(client),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            target,
            stdio: StdioAddress::None,
        })
    }

    fn with_stdio(mut self, stdio: StdioAddress) -> Self {
        self.stdio = stdio;
        self
    }

    /// Sets the timeout of every later RPC (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// What this client is connected to, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// `Health.Check`: the agent's serving status.
    pub fn check(&self) -> Result<ServingStatus, ClientError> {
        const METHOD: &str = "Health.Check";
        let resp = self.call(METHOD, |ctx| self.health.check(ctx, &CheckRequest::new()))?;
        resp.status.enum_value().map_err(|v| ClientError::BadReply {
            method: METHOD,
            detail: format!("unknown serving status {v}"),
        })
    }

    /// `Health.Version`: the agent's version and protocol version.
    pub fn version(&self) -> Result<VersionResponse, ClientError> {
        self.call("Health.Version", |ctx| {
            self.health.version(ctx, &VersionRequest::new())
        })
    }

    /// `AgentService.GetGuestDetails`: kernel release, memory, CPUs, agent version.
    pub fn guest_details(&self) -> Result<GuestDetailsResponse, ClientError> {
        self.call("AgentService.GetGuestDetails", |ctx| {
            self.agent
                .get_guest_details(ctx, &GuestDetailsRequest::new())
        })
    }

    /// Opens the `channel` stream of process (`container_id`, `exec_id`) on the agent's stdio
    /// port, dialled the way this client was connected (hybrid vsock: the VMM's socket and
    /// `CONNECT` [`STDIO_VSOCK_PORT`]; unix: `PATH.stdio`). The connect, handshake and header
    /// exchange each get the call timeout; the returned stream is blocking, without timeouts,
    /// and carries raw bytes (see [`crate::stdio`]). Ask for each channel once, after the
    /// `CreateContainer`/`ExecProcess` that requested it.
    pub fn open_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        channel: Channel,
    ) -> Result<UnixStream, ClientError> {
        let (path, hybrid) = match &self.stdio {
            StdioAddress::HybridVsock(path) => (path, true),
            StdioAddress::Unix(path) => (path, false),
            StdioAddress::None => {
                return Err(ClientError::NoStdioAddress {
                    target: self.target.clone(),
                })
            }
        };
        let target = if hybrid {
            format!(
                "{} (hybrid vsock port {STDIO_VSOCK_PORT}) for {container_id:?}/{exec_id:?} {channel}",
                path.display()
            )
        } else {
            format!(
                "{} for {container_id:?}/{exec_id:?} {channel}",
                path.display()
            )
        };
        let mut stream = UnixStream::connect(path).map_err(|source| ClientError::StdioConnect {
            target: target.clone(),
            source,
        })?;
        if hybrid {
            handshake::handshake(&mut stream, STDIO_VSOCK_PORT, self.call_timeout).map_err(
                |source| ClientError::Handshake {
                    target: target.clone(),
                    source,
                },
            )?;
        }
        let header = StreamHeader {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            channel,
        };
        stdio::open_stream(stream, &header, self.call_timeout)
            .map_err(|source| ClientError::Stdio { target, source })
    }

    /// Runs one RPC with the client's call timeout.
    fn call<T>(
        &self,
        method: &'static str,
        f: impl FnOnce(ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, ClientError> {
        self.call_with(method, Some(self.call_timeout), f)
    }

    /// Runs one RPC with `timeout` (at least 1 ms), or without a deadline for `None`.
    fn call_with<T>(
        &self,
        method: &'static str,
        timeout: Option<Duration>,
        f: impl FnOnce(ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, ClientError> {
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        let ctx = match timeout {
            Some(t) => ttrpc::context::with_duration(t),
            None => ttrpc::context::Context::default(),
        };
        let start = Instant::now();
        f(ctx).map_err(|source| match timeout {
            Some(timeout) if start.elapsed() >= timeout => ClientError::CallTimeout {
                method,
                timeout,
                source,
            },
            _ => ClientError::Rpc { method, source },
        })
    }
}

/// Sets up a client on a connected `stream` and asks `Health.Check` (within `timeout`): only an
/// agent that answers `SERVING` ends the retries. Whether the VMM's `OK` means "the guest
/// accepted" or merely "connection queued", this way the caller gets a client that works.
fn probe(stream: UnixStream, target: &str, timeout: Duration) -> Result<AgentClient, AttemptError> {
    let client = AgentClient::from_stream(stream, target.to_string())
        .map_err(AttemptError::Fatal)?
        .with_call_timeout(timeout);
    match client.check() {
        Ok(ServingStatus::SERVING_STATUS_SERVING) => {
            Ok(client.with_call_timeout(DEFAULT_CALL_TIMEOUT))
        }
        Ok(status) => Err(AttemptError::Transient(format!("agent reports {status:?}"))),
        Err(e) => Err(AttemptError::Transient(e.to_string())),
    }
}

/// One `connect(2)` to a unix socket; every failure is transient (the socket may not exist yet).
fn connect_stream(path: &PathBuf) -> Result<UnixStream, AttemptError> {
    UnixStream::connect(path)
        .map_err(|e| AttemptError::Transient(format!("connect {}: {e}", path.display())))
}

/// Runs `attempt(remaining)` until it succeeds, fails fatally or `timeout` passes, pausing with
/// exponential backoff (never past the deadline) between attempts.
fn retry<T>(
    target: &str,
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> Result<T, AttemptError>,
) -> Result<T, ClientError> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = timeout.saturating_sub(start.elapsed());
        let last = match attempt(remaining) {
            Ok(v) => return Ok(v),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Transient(msg)) => msg,
        };
        let remaining = timeout.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            return Err(ClientError::ConnectTimeout {
                target: target.to_string(),
                timeout,
                attempts,
                last,
            });
        }
        std::thread::sleep(backoff.min(remaining));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_gives_up_after_timeout_with_last_error() {
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            let err = retry::<()>("t", Duration::from_millis(100), |_| {
                Err(AttemptError::Transient("nope".into()))
            });
            let _ = tx.send((err, start.elapsed()));
        });
        // A deadline on the operation (it must give up), not a timing claim.
        let (err, took) = done
            .recv_timeout(Duration::from_secs(30))
            .expect("retry never gave up");
        let err = err.unwrap_err();
        assert!(
            took >= Duration::from_millis(100),
            "gave up early: {took:?}"
        );
        match err {
            ClientError::ConnectTimeout { attempts, last, .. } => {
                assert!(attempts > 2, "{attempts}");
                assert_eq!(last, "nope");
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn from_stream_has_no_stdio_address() {
        let (a, _b) = UnixStream::pair().unwrap();
        let client = AgentClient::from_stream(a, "pair".into()).unwrap();
        let err = client.open_stdio("c", "", Channel::Stdout).unwrap_err();
        assert!(matches!(err, ClientError::NoStdioAddress { .. }), "{err}");
    }

    #[test]
    fn retry_stops_on_fatal() {
        let mut n = 0;
        let err = retry::<()>("t", Duration::from_secs(10), |_| {
            n += 1;
            Err(AttemptError::Fatal(ClientError::BadReply {
                method: "m",
                detail: "d".into(),
            }))
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert!(matches!(err, ClientError::BadReply { .. }));
    }
}
