//! Bridges a process's stdio between containerd (FIFOs, or `file://` log paths) and the
//! agent's per-channel vsock streams.
//!
//! One thread per channel: stdout/stderr copy the agent stream into containerd's FIFO and
//! close it at the stream's end (the process's last writer is gone), which is what lets
//! `ctr`/CRI see EOF; stdin copies the FIFO into the agent stream and half-closes it at the
//! FIFO's EOF or on `CloseIO`.
//!
//! The streams of one process are opened before one absolute deadline
//! ([`crate::guard::limits::STDIO_OPEN_DEADLINE`], [`Agent::open_stdio`]): an agent that
//! drip-feeds its handshake fails the `Create` (or exec `Start`) within it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_agent_protocol::stdio::{Channel, Channels};
use nix::poll::{poll, PollFd, PollFlags};

use crate::util::lock;
use crate::vm::agent::{Agent, StdioOpenError};

/// Errors attaching stdio.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A stdio URI of a kind moat does not handle.
    #[error("stdio {uri:?}: only FIFO paths and file:// URIs are supported")]
    Unsupported {
        /// The URI.
        uri: String,
    },
    /// The agent did not open the process's streams before their deadline.
    #[error("opening {channel} of {container}/{exec}: the agent did not complete the stdio handshake within {deadline:?}")]
    Deadline {
        /// Container id.
        container: String,
        /// Exec id ("" for the init process).
        exec: String,
        /// The channel being opened when the deadline passed.
        channel: Channel,
        /// The deadline of all the process's streams.
        deadline: Duration,
    },
    /// Opening the agent stream failed.
    #[error("opening {channel} of {container}/{exec}: {why}")]
    Stream {
        /// Container id.
        container: String,
        /// Exec id ("" for the init process).
        exec: String,
        /// Which channel.
        channel: Channel,
        /// Why.
        why: String,
    },
}

/// A process's stdio as containerd gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO ("" = none).
    pub stdin: String,
    /// stdout FIFO or `file://` URI ("" = none).
    pub stdout: String,
    /// stderr FIFO or `file://` URI ("" = none; unused with a terminal).
    pub stderr: String,
    /// A pty: stdout carries the terminal's output, there is no stderr.
    pub terminal: bool,
}

impl StdioPaths {
    /// The channels the agent will be asked for.
    pub fn channels(&self) -> Channels {
        Channels {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.terminal && !self.stderr.is_empty(),
        }
    }

    /// Checks that every path is one this module can open.
    pub fn check(&self) -> Result<(), IoError> {
        for uri in [&self.stdin, &self.stdout, &self.stderr] {
            target(uri)?;
        }
        if self.stdin.starts_with("file://") {
            return Err(IoError::Unsupported {
                uri: self.stdin.clone(),
            });
        }
        Ok(())
    }
}

/// Where an output URI points.
fn target(uri: &str) -> Result<Option<(PathBuf, bool)>, IoError> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Some((PathBuf::from(path), true)));
    }
    if uri.starts_with('/') {
        return Ok(Some((PathBuf::from(uri), false)));
    }
    Err(IoError::Unsupported { uri: uri.into() })
}

/// Counts a process's output copiers still running, so an exit can wait for its output
/// (shared: the waiter need not hold whatever lock guards the [`ProcessIo`]).
#[derive(Default)]
pub struct Outputs {
    left: Mutex<usize>,
    cond: Condvar,
}

impl Outputs {
    /// Waits (at most `timeout`) until stdout and stderr have reached their FIFOs.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = lock(&self.left);
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            left = self
                .cond
                .wait_timeout(left, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The running stdio of one process.
pub struct ProcessIo {
    stdin: Option<UnixStream>,
    stdin_fifo: Option<PathBuf>,
    /// Set by `CloseIO`: the stdin copier ends once the FIFO has nothing more to read.
    stdin_closing: Arc<AtomicBool>,
    outputs: Arc<Outputs>,
    threads: Vec<JoinHandle<()>>,
}

impl ProcessIo {
    /// Opens the agent streams for process (`container`, `exec`), all of them within the
    /// agent's stdio deadline, and starts copying. Call it after the create/exec RPC that
    /// announced `paths.channels()`.
    pub fn attach(
        agent: &Agent,
        container: &str,
        exec: &str,
        paths: &StdioPaths,
    ) -> Result<ProcessIo, IoError> {
        let budget = agent.deadlines().stdio_open;
        let deadline = Instant::now() + budget;
        let open = |channel| open_stream(agent, container, exec, channel, deadline, budget);
        let channels = paths.channels();
        let mut io = ProcessIo {
            stdin: None,
            stdin_fifo: None,
            stdin_closing: Arc::new(AtomicBool::new(false)),
            outputs: Arc::new(Outputs::default()),
            threads: Vec::new(),
        };
        for (channel, uri) in [
            (Channel::Stdout, &paths.stdout),
            (Channel::Stderr, &paths.stderr),
        ] {
            if !channels.contains(channel) {
                continue;
            }
            let stream = open(channel)?;
            let (path, is_file) = target(uri)?.expect("channel implies a path");
            io.copy_out(stream, path, is_file);
        }
        if channels.stdin {
            let stream = open(Channel::Stdin)?;
            let fifo = PathBuf::from(&paths.stdin);
            let writer = stream.try_clone().map_err(|e| IoError::Stream {
                container: container.into(),
                exec: exec.into(),
                channel: Channel::Stdin,
                why: e.to_string(),
            })?;
            io.stdin = Some(stream);
            io.stdin_fifo = Some(fifo.clone());
            let closing = io.stdin_closing.clone();
            io.threads
                .push(std::thread::spawn(move || copy_in(&fifo, writer, &closing)));
        }
        Ok(io)
    }

    /// Copies `stream` into the output at `path` on a thread counted in [`Self::outputs`].
    fn copy_out(&mut self, stream: UnixStream, path: PathBuf, is_file: bool) {
        *lock(&self.outputs.left) += 1;
        let outputs = self.outputs.clone();
        self.threads.push(std::thread::spawn(move || {
            copy_out(stream, &path, is_file);
            let mut left = lock(&outputs.left);
            *left -= 1;
            outputs.cond.notify_all();
        }));
    }

    /// containerd's `CloseIO`: what is already in the stdin FIFO still reaches the process,
    /// then it reads EOF (ctr calls this right after writing its last byte into the FIFO, so
    /// cutting the stream here would drop up to a pipe buffer of input).
    pub fn close_stdin(&self) {
        self.stdin_closing.store(true, Ordering::SeqCst);
        self.nudge_stdin_fifo();
    }

    /// Opens and closes the FIFO's write side: a copier still blocked in open(2) returns
    /// (and then sees EOF); harmless if it already runs.
    fn nudge_stdin_fifo(&self) {
        if let Some(fifo) = &self.stdin_fifo {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo);
        }
    }

    /// The process's output copiers, to wait for.
    pub fn outputs(&self) -> Arc<Outputs> {
        self.outputs.clone()
    }

    /// Ends the stdin copier even if no writer ever opened the FIFO (its blocking open
    /// returns when we open the write side ourselves); output copiers end with their streams.
    pub fn shutdown(&mut self) {
        self.close_stdin();
        if let Some(s) = self.stdin.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Copies an agent output stream into containerd's FIFO (or log file); keeps draining the
/// stream if the reader went away, so the process never blocks on a dead pipe.
/// Opens the agent stream of `channel` before `deadline` (`budget` after the first).
fn open_stream(
    agent: &Agent,
    container: &str,
    exec: &str,
    channel: Channel,
    deadline: Instant,
    budget: Duration,
) -> Result<UnixStream, IoError> {
    agent
        .open_stdio(container, exec, channel, deadline)
        .map_err(|e| match e {
            StdioOpenError::Deadline(_) => IoError::Deadline {
                container: container.into(),
                exec: exec.into(),
                channel,
                deadline: budget,
            },
            e => IoError::Stream {
                container: container.into(),
                exec: exec.into(),
                channel,
                why: e.to_string(),
            },
        })
}

fn copy_out(mut stream: UnixStream, path: &Path, is_file: bool) {
    let mut out: Option<File> = if is_file {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| crate::plog!(Warn, "opening {}: {e}", path.display()))
            .ok()
    } else {
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| crate::plog!(Warn, "opening FIFO {}: {e}", path.display()))
            .ok()
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = out.as_mut() {
            if let Err(e) = f.write_all(&buf[..n]) {
                crate::plog!(
                    Debug,
                    "writing {}: {e}; discarding the rest",
                    path.display()
                );
                out = None;
            }
        }
    }
}

/// How often a stdin copier with nothing to read looks at `CloseIO`.
const STDIN_POLL_MS: i32 = 100;

/// Copies containerd's stdin FIFO into the agent stream, half-closing it at the FIFO's EOF, or
/// once `closing` is set and the FIFO has nothing more to read.
fn copy_in(fifo: &Path, mut stream: UnixStream, closing: &AtomicBool) {
    let mut f = match File::open(fifo) {
        Ok(f) => f,
        Err(e) => {
            crate::plog!(Warn, "opening stdin FIFO {}: {e}", fifo.display());
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [PollFd::new(f.as_raw_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, STDIN_POLL_MS) {
            Ok(0) if closing.load(Ordering::SeqCst) => break,
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::agent::testing::{FakeAgent, Script};
    use crate::vm::Deadlines;

    #[test]
    fn channels_follow_paths() {
        let p = StdioPaths {
            stdin: "/f/in".into(),
            stdout: "/f/out".into(),
            stderr: "/f/err".into(),
            terminal: true,
        };
        assert_eq!(
            p.channels(),
            Channels {
                stdin: true,
                stdout: true,
                stderr: false
            }
        );
        assert!(p.check().is_ok());
        let p = StdioPaths {
            stdout: "binary:///usr/bin/logger".into(),
            ..Default::default()
        };
        assert!(p.check().unwrap_err().to_string().contains("binary://"));
        let p = StdioPaths {
            stdin: "file:///x".into(),
            ..Default::default()
        };
        assert!(p.check().is_err());
    }

    #[test]
    fn copy_out_reaches_a_file_and_drains_after_failure() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path();
        let log = dir.join("out.log");
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = {
            let log = log.clone();
            std::thread::spawn(move || copy_out(b, &log, true))
        };
        a.write_all(b"hello\n").unwrap();
        drop(a);
        t.join().unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
        // An unopenable target: the stream is still drained to its end.
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || copy_out(b, Path::new("/nonexistent/dir/f"), false));
        a.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(a);
        t.join().unwrap();
    }

    #[test]
    fn copy_in_half_closes_at_fifo_eof() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path();
        let fifo = dir.join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = {
            let fifo = fifo.clone();
            std::thread::spawn(move || copy_in(&fifo, a, &AtomicBool::new(false)))
        };
        std::fs::write(&fifo, b"payload").unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"payload");
        t.join().unwrap();
    }

    #[test]
    fn close_io_still_delivers_what_the_fifo_holds() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path();
        let fifo = dir.join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let closing = Arc::new(AtomicBool::new(false));
        let t = {
            let (fifo, closing) = (fifo.clone(), closing.clone());
            std::thread::spawn(move || copy_in(&fifo, a, &closing))
        };
        // A writer that stays open (no EOF): 48 KiB sit in the pipe when CloseIO comes.
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        let data = vec![5u8; 48 * 1024];
        w.write_all(&data).unwrap();
        closing.store(true, Ordering::SeqCst);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), data.len());
        t.join().unwrap();
        drop(w);
    }

    #[test]
    fn a_drip_fed_stdio_handshake_fails_the_attach_at_its_deadline() {
        let fake = FakeAgent::start(Script {
            stdio_drip: Some(Duration::from_millis(400)),
            ..Default::default()
        });
        let agent = fake.agent(Deadlines::DEFAULT);
        let tmp = tempfile::TempDir::new().unwrap();
        let paths = StdioPaths {
            stdout: format!("file://{}", tmp.path().join("out").display()),
            stderr: format!("file://{}", tmp.path().join("err").display()),
            ..Default::default()
        };
        let start = Instant::now();
        let e = ProcessIo::attach(&agent, "c", "", &paths).err().unwrap();
        let took = start.elapsed();
        // One deadline for all the process's streams, not one per stream or per byte.
        let deadline = Deadlines::DEFAULT.stdio_open;
        assert!(took >= deadline - Duration::from_millis(100), "{took:?}");
        assert!(took <= deadline + Duration::from_secs(5), "{took:?}");
        assert!(matches!(e, IoError::Deadline { .. }), "{e}");
        assert!(e.to_string().contains("within 10s"), "{e}");
    }

    #[test]
    fn an_honest_agent_streams_reach_containerd() {
        let fake = FakeAgent::start(Script::default());
        let agent = fake.agent(Deadlines::DEFAULT);
        let tmp = tempfile::TempDir::new().unwrap();
        let out = tmp.path().join("out");
        let paths = StdioPaths {
            stdout: format!("file://{}", out.display()),
            ..Default::default()
        };
        let io = ProcessIo::attach(&agent, "c", "", &paths).unwrap();
        assert!(io.outputs().wait(Duration::from_secs(10)));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    }
}
