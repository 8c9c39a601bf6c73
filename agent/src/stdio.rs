//! Process stdio: the fds a new process gets as 0, 1 and 2, and the streams the host attaches
//! to them on the stdio port (see [`moat_agent_protocol::stdio`] for the wire format).
//!
//! [`StdioHub::prepare`] makes pipes for the channels the host asked for and `/dev/null` for
//! the others, hands the child's ends to the spawner and keeps the agent's ends registered
//! under (container id, exec id). A terminal process gets `/dev/null` for all three: its init
//! process allocates the pty inside the container ([`crate::container::console`]) and the
//! agent hands the master to [`StdioHub::set_terminal`] before the process runs.
//! [`StdioHub::serve`] accepts streams; each takes one registered end and copies between it
//! and the stream in its own thread ([`copy`]). A process's output pipe is not read before
//! its channel is attached, so the pipe's buffer holds the process back and nothing is lost
//! (a pty's buffer, likewise).
//!
//! - [`conn`]: the accepted streams (AF_VSOCK or AF_UNIX) and the accept loop.
//! - [`copy`]: the copy loops.

mod conn;
mod copy;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use moat_agent_protocol::stdio::{Channel, StreamHeader};
use nix::fcntl::OFlag;

use crate::pty::{self, PtyError};

pub use moat_agent_protocol::stdio::Channels;

/// Errors of process stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// `prepare` for a process that already has stdio registered.
    #[error("stdio of process {container_id:?}/{exec_id:?} is already registered")]
    AlreadyRegistered {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// No stdio registered for this process.
    #[error("no process {container_id:?}/{exec_id:?} with stdio")]
    UnknownProcess {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// A terminal process has no separate stderr.
    #[error("process {container_id:?}/{exec_id:?}: a terminal has no stderr channel")]
    TerminalStderr {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// The channel was not requested when the process was created.
    #[error("process {container_id:?}/{exec_id:?}: channel {channel} was not requested")]
    NotRequested {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
        /// The channel.
        channel: Channel,
    },
    /// The channel already has a stream.
    #[error("process {container_id:?}/{exec_id:?}: channel {channel} is already attached")]
    AlreadyAttached {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
        /// The channel.
        channel: Channel,
    },
    /// `resize` or `set_terminal` of a process without a terminal.
    #[error("process {container_id:?}/{exec_id:?} has no terminal")]
    NoTerminal {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// The terminal process's pty master has not arrived (yet).
    #[error("the terminal of process {container_id:?}/{exec_id:?} is not set up yet")]
    TerminalPending {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// `set_terminal` twice.
    #[error("process {container_id:?}/{exec_id:?} already has its terminal")]
    TerminalAlreadySet {
        /// The container id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// A pty operation failed.
    #[error(transparent)]
    Pty(#[from] PtyError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path/fd.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The stream's header was unreadable or invalid.
    #[error("stdio stream header: {0}")]
    Header(#[from] moat_agent_protocol::stdio::StdioError),
}

impl StdioError {
    /// An [`StdioError::Io`] from a nix errno.
    fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        StdioError::Io {
            what: what.into(),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }
}

/// The child's ends of a new process's stdio: they become its fds 0, 1 and 2 (close-on-exec
/// here; the spawner dup2()s them).
#[derive(Debug)]
pub struct ChildStdio {
    /// Its fd 0: a pipe's read end or `/dev/null`.
    pub stdin: OwnedFd,
    /// Its fd 1: a pipe's write end or `/dev/null`.
    pub stdout: OwnedFd,
    /// Its fd 2: a pipe's write end or `/dev/null`.
    pub stderr: OwnedFd,
    /// Whether this is a terminal process (all three are `/dev/null`; its init process puts
    /// the pty slave there).
    pub terminal: bool,
}

/// The agent's end of one channel.
#[derive(Debug)]
enum Slot {
    /// Not requested at create: nothing to attach.
    Absent,
    /// Requested, on a pty whose master has not arrived yet.
    Pending,
    /// Waiting for the host's stream.
    Ready(OwnedFd),
    /// A stream took it.
    Attached,
}

impl Slot {
    /// The slot of a terminal channel before its master arrives.
    fn pending(requested: bool) -> Self {
        if requested {
            Slot::Pending
        } else {
            Slot::Absent
        }
    }
}

/// The registered stdio of one process.
#[derive(Debug)]
struct Entry {
    stdin: Slot,
    stdout: Slot,
    stderr: Slot,
    /// Whether the process has a terminal.
    terminal: bool,
    /// The pty master (once [`StdioHub::set_terminal`] gave it), for resizes.
    master: Option<OwnedFd>,
}

impl Entry {
    fn slot(&mut self, channel: Channel) -> &mut Slot {
        match channel {
            Channel::Stdin => &mut self.stdin,
            Channel::Stdout => &mut self.stdout,
            Channel::Stderr => &mut self.stderr,
        }
    }
}

/// What a stream attached to: the agent's end of the channel.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// Stdin: a pipe's write end or the pty master; output: a pipe's read end or the master.
    pub fd: OwnedFd,
    /// Whether `fd` is a pty master.
    pub tty: bool,
}

type Key = (String, String);

/// The registry of attachable process stdio; shared (`Arc`) by the services and the stdio
/// listener.
#[derive(Debug)]
pub struct StdioHub {
    procs: Mutex<HashMap<Key, Entry>>,
    /// Longest wait for a stream's header ([`conn::HEADER_TIMEOUT`]; shorter in tests).
    header_timeout: Duration,
}

impl StdioHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(StdioHub {
            procs: Mutex::default(),
            header_timeout: conn::HEADER_TIMEOUT,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // insert/remove/replace), so poisoning is ignored.
        crate::util::lock(&self.procs)
    }

    /// Creates the fds of a new process: pipes for the requested channels, `/dev/null` for
    /// the others (all three with `terminal`: the requested channels then wait for
    /// [`StdioHub::set_terminal`]). Returns the child's ends (its future fds 0, 1, 2) and
    /// keeps the agent's ends registered under (`container_id`, `exec_id`).
    pub fn prepare(
        &self,
        container_id: &str,
        exec_id: &str,
        channels: Channels,
        terminal: bool,
    ) -> Result<ChildStdio, StdioError> {
        if terminal && channels.stderr {
            return Err(StdioError::TerminalStderr {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
            });
        }
        let key = (container_id.to_string(), exec_id.to_string());
        let mut procs = self.lock();
        if procs.contains_key(&key) {
            return Err(StdioError::AlreadyRegistered {
                container_id: key.0,
                exec_id: key.1,
            });
        }
        let (child, entry) = if terminal {
            terminal_stdio(channels)?
        } else {
            piped_stdio(channels)?
        };
        tracing::debug!(
            "stdio of {container_id:?}/{exec_id:?} prepared: {channels:?}, terminal {terminal}"
        );
        procs.insert(key, entry);
        Ok(child)
    }

    /// Gives a terminal process its pty master (received from its init process, allocated
    /// inside the container), sized `size` (rows, columns) if given: the requested channels
    /// become attachable.
    pub fn set_terminal(
        &self,
        container_id: &str,
        exec_id: &str,
        master: OwnedFd,
        size: Option<(u16, u16)>,
    ) -> Result<(), StdioError> {
        let mut procs = self.lock();
        let entry = terminal_entry(&mut procs, container_id, exec_id)?;
        if entry.master.is_some() {
            return Err(StdioError::TerminalAlreadySet {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
            });
        }
        if let Some((rows, cols)) = size {
            pty::set_window_size(&master, rows, cols)?;
        }
        for slot in [&mut entry.stdin, &mut entry.stdout] {
            if matches!(slot, Slot::Pending) {
                *slot = Slot::Ready(dup(&master, "pty master")?);
            }
        }
        entry.master = Some(master);
        Ok(())
    }

    /// Sets the window size of a terminal process's pty (TIOCSWINSZ on the master).
    pub fn resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), StdioError> {
        let mut procs = self.lock();
        let entry = terminal_entry(&mut procs, container_id, exec_id)?;
        let master = entry
            .master
            .as_ref()
            .ok_or_else(|| StdioError::TerminalPending {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
            })?;
        Ok(pty::set_window_size(master, rows, cols)?)
    }

    /// Forgets a process's stdio (RemoveContainer, a failed create): closes the ends no stream
    /// took; copy threads of attached streams run on until their EOF.
    pub fn remove(&self, container_id: &str, exec_id: &str) {
        let key = (container_id.to_string(), exec_id.to_string());
        if self.lock().remove(&key).is_some() {
            tracing::debug!("stdio of {container_id:?}/{exec_id:?} removed");
        }
    }

    /// Forgets the stdio of every process of a container (see [`StdioHub::remove`]).
    pub fn remove_container(&self, container_id: &str) {
        let removed: Vec<Entry> = {
            let mut procs = self.lock();
            let keys: Vec<Key> = procs
                .keys()
                .filter(|(c, _)| c == container_id)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| procs.remove(k)).collect()
        };
        if !removed.is_empty() {
            tracing::debug!(
                "stdio of {} process(es) of {container_id:?} removed",
                removed.len()
            );
        }
    }

    /// Serves stream attachments on `listener` (a listening AF_VSOCK or AF_UNIX socket) in a
    /// background thread, which runs until accepting fails for good.
    pub fn serve(self: &Arc<Self>, listener: OwnedFd) -> Result<JoinHandle<()>, StdioError> {
        conn::serve(Arc::clone(self), listener)
    }

    /// Takes the agent's end of `header`'s channel for a stream.
    pub(crate) fn attach(&self, header: &StreamHeader) -> Result<Attachment, StdioError> {
        let key = (header.container_id.clone(), header.exec_id.clone());
        let mut procs = self.lock();
        let entry = procs
            .get_mut(&key)
            .ok_or_else(|| StdioError::UnknownProcess {
                container_id: header.container_id.clone(),
                exec_id: header.exec_id.clone(),
            })?;
        let tty = entry.terminal;
        let slot = entry.slot(header.channel);
        let other = match std::mem::replace(slot, Slot::Attached) {
            Slot::Ready(fd) => return Ok(Attachment { fd, tty }),
            other => other,
        };
        let (container_id, exec_id, channel) = (
            header.container_id.clone(),
            header.exec_id.clone(),
            header.channel,
        );
        let e = match other {
            Slot::Attached => StdioError::AlreadyAttached {
                container_id,
                exec_id,
                channel,
            },
            Slot::Pending => StdioError::TerminalPending {
                container_id,
                exec_id,
            },
            _ => StdioError::NotRequested {
                container_id,
                exec_id,
                channel,
            },
        };
        *slot = other;
        Err(e)
    }
}

/// The entry of a terminal process: [`StdioError::UnknownProcess`] or
/// [`StdioError::NoTerminal`] otherwise.
fn terminal_entry<'a>(
    procs: &'a mut HashMap<Key, Entry>,
    container_id: &str,
    exec_id: &str,
) -> Result<&'a mut Entry, StdioError> {
    let key = (container_id.to_string(), exec_id.to_string());
    match procs.get_mut(&key) {
        None => Err(StdioError::UnknownProcess {
            container_id: key.0,
            exec_id: key.1,
        }),
        Some(e) if !e.terminal => Err(StdioError::NoTerminal {
            container_id: key.0,
            exec_id: key.1,
        }),
        Some(e) => Ok(e),
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::sys("pipe2", e))?;
    // SAFETY: pipe2 just returned these fds, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// `/dev/null`, for reading or writing (close-on-exec, as std opens every file).
pub(crate) fn dev_null(write: bool) -> Result<OwnedFd, StdioError> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(|f: File| f.into())
        .map_err(|source| StdioError::Io {
            what: "opening /dev/null".into(),
            source,
        })
}

/// The fds of a terminal process: `/dev/null` until its init process sends the pty master
/// (see [`StdioHub::set_terminal`]); stdin/stdout are attachable, stderr never is.
fn terminal_stdio(channels: Channels) -> Result<(ChildStdio, Entry), StdioError> {
    let child = ChildStdio {
        stdin: dev_null(false)?,
        stdout: dev_null(true)?,
        stderr: dev_null(true)?,
        terminal: true,
    };
    let entry = Entry {
        stdin: Slot::pending(channels.stdin),
        stdout: Slot::pending(channels.stdout),
        stderr: Slot::Absent,
        terminal: true,
        master: None,
    };
    Ok((child, entry))
}

/// The fds of a process without a terminal: a pipe per requested channel (the child's end
/// and the agent's), `/dev/null` for the others.
fn piped_stdio(channels: Channels) -> Result<(ChildStdio, Entry), StdioError> {
    let (child_stdin, stdin) = if channels.stdin {
        let (r, w) = pipe()?;
        (r, Slot::Ready(w))
    } else {
        (dev_null(false)?, Slot::Absent)
    };
    let output = |requested: bool| -> Result<(OwnedFd, Slot), StdioError> {
        if requested {
            let (r, w) = pipe()?;
            Ok((w, Slot::Ready(r)))
        } else {
            Ok((dev_null(true)?, Slot::Absent))
        }
    };
    let (child_stdout, stdout) = output(channels.stdout)?;
    let (child_stderr, stderr) = output(channels.stderr)?;
    let child = ChildStdio {
        stdin: child_stdin,
        stdout: child_stdout,
        stderr: child_stderr,
        terminal: false,
    };
    let entry = Entry {
        stdin,
        stdout,
        stderr,
        terminal: false,
        master: None,
    };
    Ok((child, entry))
}

/// A close-on-exec duplicate of `fd`.
fn dup(fd: &OwnedFd, what: &str) -> Result<OwnedFd, StdioError> {
    fd.try_clone().map_err(|source| StdioError::Io {
        what: format!("duplicating the {what}"),
        source,
    })
}
