//! A running session's threads:
//!
//! - one output thread per output (stdout/pty, stderr): reads it and sends `OUTPUT`/`STDERR`
//!   frames until its EOF (EIO on a pty master once every slave is closed);
//! - the input thread: reads the client's frames (stdin, stdin EOF, resizes); when the
//!   connection closes (or breaks, or the client breaks the protocol) before the session
//!   ended, it kills the session's process group;
//! - the session's own thread ([`run`]): waits for the process to exit, kills what is left of
//!   its group, lets the output drain (at most [`DRAIN_TIMEOUT`]), sends `EXIT` and closes.
//!
//! The agent's ends of the process's stdio are non-blocking and waited on with `poll`, which
//! also watches the connection while stdin is full: a client that leaves while the process
//! does not read its stdin still ends the session.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_agent_protocol::console::{write_frame, Frame, FrameKind, FrameReader, MAX_FRAME_PAYLOAD};

use super::process::{kill_group, SessionProcess};
use super::ExitWaiter;
use crate::listener::Conn;
use crate::pty;
use crate::reaper::ExitStatus;
use crate::util::lock;

/// How long the output may keep flowing after the process exited and its group was killed
/// (a process that left the group may hold it open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes written to the process's stdin per `poll`.
const INPUT_CHUNK: usize = 4096;

/// The connection's writing side, shared by the output threads and the exit.
type Sink = Arc<Mutex<Conn>>;

/// Runs a started session until its process exits (or the connection closes and the process
/// is killed): `conn` writes, `reader` reads. Returns the exit status (the code, or 128 + the
/// signal), or `None` when it is lost.
pub(super) fn run(
    conn: Conn,
    reader: Conn,
    process: SessionProcess,
    waiter: &dyn ExitWaiter,
    who: &str,
) -> Option<i32> {
    let pid = process.pid;
    let sink: Sink = Arc::new(Mutex::new(conn));
    let finished = Arc::new(AtomicBool::new(false));
    let threads = start_threads(process, reader, &sink, &finished, who);
    if !threads.all_started {
        kill_group(pid);
    }
    let status = waiter.wait_exit(pid).map(ExitStatus::shell_status);
    finished.store(true, Ordering::SeqCst);
    kill_group(pid);
    drain(&threads.done, threads.outputs, who);
    let mut sink = lock(&sink);
    if let Some(code) = status {
        if let Err(e) = write_frame(&mut *sink, &Frame::Exit(code)) {
            tracing::debug!("{who}: sending the exit status: {e}");
        }
    }
    // The input thread's read returns 0 now; it sees `finished` and ends.
    let _ = sink.shutdown_both();
    drop(sink);
    if let Some(t) = threads.input {
        let _ = t.join();
    }
    status
}

/// The threads of a session.
struct Threads {
    /// How many output threads run.
    outputs: usize,
    /// One message from each output thread when it ends.
    done: mpsc::Receiver<()>,
    /// The input thread.
    input: Option<JoinHandle<()>>,
    /// Whether every thread started (if not, the session is killed).
    all_started: bool,
}

/// Starts the output threads and the input thread of `process`.
fn start_threads(
    process: SessionProcess,
    reader: Conn,
    sink: &Sink,
    finished: &Arc<AtomicBool>,
    who: &str,
) -> Threads {
    let SessionProcess {
        pid,
        stdin,
        stdout,
        stderr,
        master,
    } = process;
    let tty = master.is_some();
    let (done_tx, done) = mpsc::channel::<()>();
    let (mut outputs, mut all_started) = (0, true);
    for (source, kind) in [
        (Some(stdout), FrameKind::Output),
        (stderr, FrameKind::Stderr),
    ] {
        let Some(source) = source else { continue };
        let (sink, done_tx, name) = (Arc::clone(sink), done_tx.clone(), who.to_string());
        let started = spawn_thread("debug-console-out", who, move || {
            output(source, kind, tty, &sink, &name);
            let _ = done_tx.send(());
        });
        outputs += usize::from(started.is_some());
        all_started &= started.is_some();
    }
    let input = Input {
        stdin: Some(stdin),
        master,
        pgid: pid,
    };
    let (finished, name) = (Arc::clone(finished), who.to_string());
    let input = spawn_thread("debug-console-in", who, move || {
        input.run(reader, &finished, &name)
    });
    all_started &= input.is_some();
    Threads {
        outputs,
        done,
        input,
        all_started,
    }
}

/// Spawns a thread; `None` (logged) when it cannot.
fn spawn_thread(
    name: &str,
    who: &str,
    f: impl FnOnce() + Send + 'static,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| tracing::error!("{who}: spawning a {name} thread: {e}"))
        .ok()
}

/// Waits for `outputs` output threads to finish, at most [`DRAIN_TIMEOUT`] in all.
fn drain(done: &mpsc::Receiver<()>, outputs: usize, who: &str) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..outputs {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            tracing::info!(
                "{who}: output still open {DRAIN_TIMEOUT:?} after the exit (a process outside \
                 the session's group holds it); sending the exit status"
            );
            return;
        }
    }
}

/// Copies one output of the process to frames of `kind` until its EOF or a failed send.
fn output(source: File, kind: FrameKind, tty: bool, sink: &Mutex<Conn>, who: &str) {
    let mut buf = vec![0u8; MAX_FRAME_PAYLOAD];
    loop {
        let n = match (&source).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = poll_fds(&mut [pollfd(source.as_raw_fd(), libc::POLLIN)]) {
                    tracing::warn!("{who}: polling its {kind}: {e}");
                    return;
                }
                continue;
            }
            // A pty master reads EIO once every slave fd is closed: its EOF.
            Err(e) if tty && e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) => {
                tracing::warn!("{who}: reading its {kind}: {e}");
                return;
            }
        };
        let frame = match kind {
            FrameKind::Stderr => Frame::Stderr(&buf[..n]),
            _ => Frame::Output(&buf[..n]),
        };
        if let Err(e) = write_frame(&mut *lock(sink), &frame) {
            tracing::debug!("{who}: the client stopped reading: {e}");
            return;
        }
    }
}

/// A `pollfd` asking for `events` on `fd`.
fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Blocks until one of `fds` is ready (or reports an error or hang-up); retried on EINTR.
/// (libc's poll: nix 0.26 has no `POLLRDHUP`.)
fn poll_fds(fds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of `pollfd` for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The input side of a session.
struct Input {
    /// Where stdin goes; `None` once closed (`STDIN_EOF` or the process closed it).
    stdin: Option<File>,
    /// The pty master (tty sessions).
    master: Option<OwnedFd>,
    /// The session's process group.
    pgid: u32,
}

/// Why writing to the process's stdin stopped.
enum InputEnd {
    /// The connection closed or broke while waiting.
    ClientGone,
    /// The process side is closed (or failed).
    ProcessClosed(io::Error),
}

impl Input {
    /// Applies the client's frames until the connection ends; if the session has not
    /// `finished` by then, kills its process group.
    fn run(mut self, conn: Conn, finished: &AtomicBool, who: &str) {
        let conn_fd = conn.as_raw_fd();
        let mut reader = FrameReader::new(conn);
        let end = loop {
            let frame = match reader.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break "the client closed the connection".to_string(),
                Err(e) => break format!("reading the client's frames: {e}"),
            };
            match frame {
                Frame::Stdin(data) => {
                    if let Err(InputEnd::ClientGone) = self.write_stdin(data, conn_fd, who) {
                        break "the client closed the connection".to_string();
                    }
                }
                // A pty has no EOF of its own: the process reads on until it exits.
                Frame::StdinEof if self.master.is_none() => self.stdin = None,
                Frame::StdinEof => {}
                Frame::Resize { rows, cols } => self.resize(rows, cols, who),
                other => break format!("the client sent a {} frame", other.kind()),
            }
        };
        if !finished.load(Ordering::SeqCst) {
            tracing::info!("{who}: {end}: killing its process group");
            kill_group(self.pgid);
        }
    }

    /// Writes `data` to the process's stdin, if still open; a closed stdin drops the data.
    fn write_stdin(&mut self, data: &[u8], conn_fd: RawFd, who: &str) -> Result<(), InputEnd> {
        let Some(stdin) = &self.stdin else {
            return Ok(());
        };
        match write_input(stdin, data, conn_fd) {
            Err(InputEnd::ProcessClosed(e)) => {
                tracing::debug!("{who}: its stdin is closed ({e}); dropping further input");
                self.stdin = None;
                Ok(())
            }
            r => r,
        }
    }

    /// Resizes the pty (tty sessions; ignored otherwise).
    fn resize(&self, rows: u16, cols: u16, who: &str) {
        if let Some(master) = &self.master {
            if let Err(e) = pty::set_window_size(master, rows, cols) {
                tracing::debug!("{who}: {e}");
            }
        }
    }
}

/// Writes all of `data` to the non-blocking `stdin`, waiting in `poll` for room while
/// watching the connection `conn_fd` for a hang-up.
fn write_input(stdin: &File, mut data: &[u8], conn_fd: RawFd) -> Result<(), InputEnd> {
    while !data.is_empty() {
        let mut fds = [
            pollfd(stdin.as_fd().as_raw_fd(), libc::POLLOUT),
            pollfd(conn_fd, libc::POLLRDHUP),
        ];
        poll_fds(&mut fds).map_err(InputEnd::ProcessClosed)?;
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(InputEnd::ClientGone);
        }
        if fds[0].revents == 0 {
            continue;
        }
        let chunk = &data[..data.len().min(INPUT_CHUNK)];
        match (&*stdin).write(chunk) {
            Ok(n) => data = &data[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(InputEnd::ProcessClosed(e)),
        }
    }
    Ok(())
}
