//! One agent connection of one call class, made anew when the agent stops answering on it.
//!
//! ttrpc 0.10's client keeps, for every call it sent, a record until the reply comes; a call
//! that times out leaves its record behind. An agent that never answers would so grow the shim
//! by a record per call for as long as the pod lives. A [`Link`] counts the calls that got no
//! reply at all; at `max_unanswered` it closes the connection (the records go with it, once the
//! calls still running on it return) and the next call connects again. A connection that broke
//! is replaced the same way. A failed connect makes calls fail at once for
//! [`limits::RECONNECT_PAUSE`], so that a refusing agent costs no more than one connect per
//! pause.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_agent_protocol::ttrpc;
use moat_agent_protocol::{AgentClient, ClientError};

use super::rpc_metrics::RpcMetrics;
use super::AgentAddress;
use crate::guard::limits;
use crate::guard::text::{escape, Untrusted};
use crate::util::lock;

/// The connection of one call class.
pub(super) struct Link {
    name: &'static str,
    address: AgentAddress,
    deadline: Duration,
    max_unanswered: u32,
    slot: Mutex<Slot>,
    unanswered: AtomicU32,
    metrics: RpcMetrics,
}

/// The current client, or why there is none.
#[derive(Default)]
struct Slot {
    client: Option<Arc<AgentClient>>,
    /// After a failed connect: until when calls fail at once, and the connect's error.
    paused: Option<(Instant, String)>,
}

impl Link {
    /// A link of class `name` to `address` whose calls get `deadline` (and that reconnects
    /// after `max_unanswered` calls without a reply), starting with `client` (`None`: the
    /// first call connects); every call is recorded in `metrics`.
    pub(super) fn new(
        name: &'static str,
        address: AgentAddress,
        (deadline, max_unanswered): (Duration, u32),
        client: Option<AgentClient>,
        metrics: RpcMetrics,
    ) -> Link {
        Link {
            name,
            address,
            deadline,
            max_unanswered: max_unanswered.max(1),
            slot: Mutex::new(Slot {
                client: client.map(Arc::new),
                paused: None,
            }),
            unanswered: AtomicU32::new(0),
            metrics,
        }
    }

    /// Runs one call of `method` on the link's client, connecting first if there is none.
    pub(super) fn call<T>(
        &self,
        method: &'static str,
        f: impl FnOnce(&AgentClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let start = Instant::now();
        let r = self.client().and_then(|client| {
            let r = f(&client);
            self.after(&client, &r);
            r
        });
        self.metrics.record(method, start.elapsed(), &r);
        r
    }

    /// Counts a call without a reply, or replaces a broken connection.
    fn after<T>(&self, client: &Arc<AgentClient>, r: &Result<T, ClientError>) {
        match &r {
            Err(e) if no_reply(e) => self.unanswered(),
            Err(e) if broken(e) => {
                crate::plog!(
                    Warn,
                    "the agent's {} connection broke ({}); reconnecting",
                    self.name,
                    Untrusted(e)
                );
                self.forget(client);
            }
            _ => {}
        }
    }

    /// Counts a call that got no reply; closes the connection at `max_unanswered`.
    pub(super) fn unanswered(&self) {
        let n = self.unanswered.fetch_add(1, Ordering::SeqCst) + 1;
        if n < self.max_unanswered {
            return;
        }
        self.unanswered.store(0, Ordering::SeqCst);
        if lock(&self.slot).client.take().is_some() {
            crate::plog!(
                Warn,
                "the agent left {n} calls on its {} connection without a reply: closing it",
                self.name
            );
        }
    }

    /// Drops `client` if it is still the current one.
    fn forget(&self, client: &Arc<AgentClient>) {
        let mut slot = lock(&self.slot);
        if slot.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            slot.client = None;
        }
    }

    /// The current client, or a new one (within the link's deadline).
    fn client(&self) -> Result<Arc<AgentClient>, ClientError> {
        let mut slot = lock(&self.slot);
        if let Some(c) = &slot.client {
            return Ok(c.clone());
        }
        let now = Instant::now();
        if let Some((until, last)) = &slot.paused {
            if now < *until {
                return Err(self.refused(last.clone(), 0));
            }
        }
        match self.address.connect(self.deadline, self.deadline) {
            Ok(c) => {
                let c = Arc::new(c);
                self.unanswered.store(0, Ordering::SeqCst);
                (slot.client, slot.paused) = (Some(c.clone()), None);
                crate::plog!(Info, "the agent's {} connection was made anew", self.name);
                Ok(c)
            }
            Err(e) => {
                let last = escape(&e.to_string(), limits::MAX_LOG_MESSAGE);
                slot.paused = Some((Instant::now() + limits::RECONNECT_PAUSE, last.clone()));
                Err(self.refused(last, 1))
            }
        }
    }

    fn refused(&self, last: String, attempts: u32) -> ClientError {
        ClientError::ConnectTimeout {
            target: format!("{} ({} connection)", self.address.describe(), self.name),
            timeout: self.deadline,
            attempts,
            last,
        }
    }
}

/// Whether a call ended without any reply from the agent (the client gave up waiting).
fn no_reply(e: &ClientError) -> bool {
    matches!(e, ClientError::CallTimeout { source, .. }
        if !matches!(source, ttrpc::Error::RpcStatus(_)))
}

/// Whether the connection itself is gone.
fn broken(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Rpc {
            source: ttrpc::Error::Socket(_)
                | ttrpc::Error::LocalClosed
                | ttrpc::Error::RemoteClosed
                | ttrpc::Error::Eof,
            ..
        }
    )
}
