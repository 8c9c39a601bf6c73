//! Every deadline and cap the shim applies to what the guest sends, in one place.
//!
//! ## Agent RPC deadlines, by call class
//!
//! | class | calls | deadline |
//! |---|---|---|
//! | control | `SetGuestDateTime`, `CreatePod`, `DestroyPod`, `UpdateInterface`, `UpdateRoutes`, `CreateContainer`, `StartContainer`, `ExecProcess`, `SignalProcess`, `PauseContainer`, `ResumeContainer`, `UpdateContainer` | [`CONTROL_DEADLINE`] |
//! | removal | `RemoveContainer` | its kill wait + [`CONTROL_DEADLINE`] |
//! | quick | `StatsContainer` (the last good value is served past it), `ListProcesses`, `TtyWinResize` | [`QUICK_DEADLINE`] |
//! | long polls | `WaitProcess`, `GetOOMEvent`: renewed until the process exits or the VM ends | [`WAIT_SLICE`], [`OOM_SLICE`] |
//! | stdio | opening one process's streams: connect, hybrid-vsock `CONNECT`/`OK`, header/reply | [`STDIO_OPEN_DEADLINE`] for all of them together |
//!
//! Control and long-poll calls share one agent connection, quick calls have their own, so that
//! a slow `CreateContainer` never delays `Stats` (see [`crate::vm::agent`]). A connection that
//! has left [`MAX_UNANSWERED`] calls without any reply is closed and made anew by the next call
//! (that call may take the class deadline twice: once to reconnect, once for itself).
//!
//! ## Sizes
//!
//! The agent client is ttrpc 0.10's synchronous client: every message it receives is at most
//! [`AGENT_MAX_MESSAGE`] (4 MiB) — a longer frame is read and discarded in 4 KiB pages and the
//! call fails — so no reply, id or error message from the agent is larger than that, and the
//! decoded form of a reply is bounded by it (4 MiB of one-byte pids decode to 16 MiB). On top of
//! that the shim caps what it keeps and forwards: [`MAX_PIDS`], [`MAX_STATS_DEVICES`],
//! [`MAX_STATS_HUGETLB`]; strings reach logs and containerd escaped and cut
//! ([`MAX_LOG_ID`], [`MAX_LOG_MESSAGE`], [`MAX_ERROR_MESSAGE`], [`MAX_CONSOLE_LINE`]).
//!
//! ## Rates
//!
//! Events ([`OOM_RATE`], [`OOM_DEDUP`]), the loops that ask the agent for them ([`WAIT_RATE`]),
//! guest console and VMM stderr lines ([`CONSOLE_RATE`], [`VMM_STDERR_RATE`]) and warnings
//! about refused guest input ([`WARN_RATE`]) each go through a token bucket
//! ([`super::rate`]).

use std::time::Duration;

use super::rate::Rate;

/// Control calls (state changes in the guest; `PauseContainer` and `ResumeContainer` include
/// the agent's wait of up to 10 s for the cgroup freezer).
pub const CONTROL_DEADLINE: Duration = Duration::from_secs(30);

/// Quick calls: `StatsContainer`, `ListProcesses`, `TtyWinResize` (reads of guest state that
/// containerd polls or that only change what a user sees).
pub const QUICK_DEADLINE: Duration = Duration::from_secs(2);

/// Opening every stdio stream of one process (`Create`, exec `Start`): the connections, the
/// hybrid-vsock handshake and the stream header exchange, all before one absolute deadline, so
/// an agent that drip-feeds its replies fails the call within it.
pub const STDIO_OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// How long one `WaitProcess` call may block before it is renewed.
pub const WAIT_SLICE: Duration = Duration::from_secs(60);

/// How long one `GetOOMEvent` call may block before it is renewed.
pub const OOM_SLICE: Duration = Duration::from_secs(30);

/// How long an exit waits for the process's output to reach containerd (its stream ends when
/// the last writer in the guest is gone; only a daemon keeping stdout open waits this long).
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(30);

/// Calls without any reply after which an agent connection is closed and made anew: ttrpc's
/// client keeps a small record of every call it sent until the reply comes, so an agent that
/// never answers would otherwise grow the shim without bound.
pub const MAX_UNANSWERED: u32 = 64;

/// After a failed reconnect, calls on that connection fail at once for this long.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The largest ttrpc message the agent client accepts (ttrpc 0.10's `MESSAGE_LENGTH_MAX`).
pub const AGENT_MAX_MESSAGE: usize = moat_agent_protocol::ttrpc::proto::MESSAGE_LENGTH_MAX;

/// Most pids a `ListProcesses` reply may carry; a longer list is refused with an error.
pub const MAX_PIDS: usize = 65_536;

/// Most block devices kept from a `StatsContainer` reply's I/O statistics.
pub const MAX_STATS_DEVICES: usize = 256;

/// Most hugetlb page sizes kept from a `StatsContainer` reply.
pub const MAX_STATS_HUGETLB: usize = 16;

/// Longest hugetlb page size name kept (`2MB`, `1GB`, ...).
pub const MAX_PAGESIZE_NAME: usize = 16;

/// Longest guest-chosen id (an OOM event's container id) written to a log, in bytes.
pub const MAX_LOG_ID: usize = 128;

/// Longest guest-provided message (an agent error) in one log line, in bytes.
pub const MAX_LOG_MESSAGE: usize = 4096;

/// Longest error message sent to containerd, in bytes (it may carry the guest console's tail).
pub const MAX_ERROR_MESSAGE: usize = 16 * 1024;

/// Longest guest console or VMM stderr line forwarded, in bytes; the rest of the line is read
/// and dropped.
pub const MAX_CONSOLE_LINE: usize = 1024;

/// Guest console lines written to the shim's log: a kernel's boot burst, then 10 a second.
pub const CONSOLE_RATE: Rate = Rate {
    per_sec: 10,
    burst: 500,
};

/// VMM stderr lines written to the shim's log (the guest can provoke VMM warnings).
pub const VMM_STDERR_RATE: Rate = Rate {
    per_sec: 10,
    burst: 100,
};

/// OOM events taken from the agent (and so published at most), pod-wide.
pub const OOM_RATE: Rate = Rate {
    per_sec: 10,
    burst: 20,
};

/// An OOM event for a container is published at most once per this interval.
pub const OOM_DEDUP: Duration = Duration::from_secs(1);

/// `WaitProcess` calls of one watcher: an agent answering at once instead of blocking for
/// [`WAIT_SLICE`] cannot make the shim spin.
pub const WAIT_RATE: Rate = Rate {
    per_sec: 1,
    burst: 5,
};

/// Warnings about guest input the shim refused (unknown OOM ids, bad exit statuses).
pub const WARN_RATE: Rate = Rate {
    per_sec: 1,
    burst: 5,
};

// What the docs above promise about ttrpc's limit.
const _: () = assert!(AGENT_MAX_MESSAGE == 4 << 20);
