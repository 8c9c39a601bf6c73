//! The host's side of a debug console session: blocking, on any stream socket that can be read
//! and written through a shared reference (`&UnixStream: Read + Write`), so that one thread
//! reads the agent's frames while another sends local stdin.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{write_frame, ConsoleError, ConsoleRequest, Frame, FrameReader, MAX_FRAME_PAYLOAD};
use crate::util::lock;

/// The stream, and the lock that keeps the frames of several writers whole.
#[derive(Debug)]
struct Shared<S> {
    stream: S,
    write_lock: Mutex<()>,
}

/// A debug console session the client opened: [`ConsoleConnection::open`] sends the request,
/// [`ConsoleConnection::input`] sends stdin and resizes, [`ConsoleConnection::wait`] copies the
/// output until the exit status. The stream closes when the connection and every
/// [`ConsoleInput`] (the stdin thread's included) are dropped.
#[derive(Debug)]
pub struct ConsoleConnection<S> {
    shared: Arc<Shared<S>>,
}

/// Sends client frames on a [`ConsoleConnection`]'s stream; cheap to clone, usable from any
/// thread (a SIGWINCH handler's thread sending [`ConsoleInput::resize`], say).
#[derive(Debug)]
pub struct ConsoleInput<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for ConsoleInput<S> {
    fn clone(&self) -> Self {
        ConsoleInput {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> ConsoleInput<S>
where
    for<'a> &'a S: Write,
{
    /// Sends one frame, whole, even while other threads send theirs.
    pub fn send(&self, frame: &Frame<'_>) -> Result<(), ConsoleError> {
        let _guard = lock(&self.shared.write_lock);
        write_frame(&mut &self.shared.stream, frame)
    }

    /// Sends `data` for the process's stdin, in frames of at most [`MAX_FRAME_PAYLOAD`].
    pub fn stdin(&self, data: &[u8]) -> Result<(), ConsoleError> {
        data.chunks(MAX_FRAME_PAYLOAD)
            .try_for_each(|chunk| self.send(&Frame::Stdin(chunk)))
    }

    /// Ends the process's stdin (ignored by a tty session).
    pub fn stdin_eof(&self) -> Result<(), ConsoleError> {
        self.send(&Frame::StdinEof)
    }

    /// Sets the pty's size (ignored without a tty).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ConsoleError> {
        self.send(&Frame::Resize { rows, cols })
    }
}

impl<S> ConsoleConnection<S>
where
    S: Send + Sync + 'static,
    for<'a> &'a S: Read + Write,
{
    /// Sends `request` on `stream`, a fresh connection to the agent's debug console (after any
    /// hybrid-vsock handshake or shim handshake).
    pub fn open(stream: S, request: &ConsoleRequest) -> Result<Self, ConsoleError> {
        let line = request.encode()?;
        if let Err(e) = (&stream).write_all(&line) {
            // An agent that refuses at once (too many sessions) may have closed already: its
            // ERROR frame says more than the broken pipe.
            return Err(match FrameReader::new(&stream).read_frame() {
                Ok(Some(Frame::Error(message))) => ConsoleError::Agent(printable(&message)),
                _ => ConsoleError::Io(e),
            });
        }
        Ok(ConsoleConnection {
            shared: Arc::new(Shared {
                stream,
                write_lock: Mutex::new(()),
            }),
        })
    }

    /// A handle that sends stdin and resizes.
    pub fn input(&self) -> ConsoleInput<S> {
        ConsoleInput {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Copies `stdin` to `STDIN` frames in a thread of its own, then sends `STDIN_EOF` at its
    /// end (or a read error). The thread stops when sending fails (the session ended); while
    /// it is blocked reading `stdin` it keeps the stream open.
    pub fn copy_stdin(&self, stdin: impl Read + Send + 'static) -> io::Result<JoinHandle<()>> {
        let input = self.input();
        std::thread::Builder::new()
            .name("console-stdin".into())
            .spawn(move || copy_stdin(stdin, &input))
    }

    /// Copies `OUTPUT` frames to `stdout` and `STDERR` frames to `stderr` (`None`: to
    /// `stdout`), flushing after each, until `EXIT`, whose status it returns. An `ERROR` frame
    /// is [`ConsoleError::Agent`], a stream that ends first [`ConsoleError::NoExit`], a frame
    /// the agent may not send [`ConsoleError::UnexpectedFrame`].
    pub fn wait(
        &self,
        stdout: &mut dyn Write,
        mut stderr: Option<&mut dyn Write>,
    ) -> Result<i32, ConsoleError> {
        let mut reader = FrameReader::new(&self.shared.stream);
        loop {
            let Some(frame) = reader.read_frame()? else {
                return Err(ConsoleError::NoExit);
            };
            match frame {
                Frame::Output(bytes) => write_local(stdout, bytes)?,
                Frame::Stderr(bytes) => match stderr.as_deref_mut() {
                    Some(err) => write_local(err, bytes)?,
                    None => write_local(stdout, bytes)?,
                },
                Frame::Exit(status) => return Ok(status),
                Frame::Error(message) => return Err(ConsoleError::Agent(printable(&message))),
                other => return Err(ConsoleError::UnexpectedFrame(other.kind())),
            }
        }
    }
}

/// Runs one debug console session on `stream` (a fresh connection to the agent's console):
/// sends `request`, copies `stdin` to the session in a thread of its own, copies the session's
/// output (stdout and stderr, merged) to `stdout`, and returns the exit status (the code, or
/// 128 + the signal). The stdin thread outlives the call while `stdin` blocks (a terminal):
/// meant for a CLI that exits afterwards. Use [`ConsoleConnection`] for separate stderr or
/// resizes.
pub fn run_console<S>(
    stream: S,
    request: &ConsoleRequest,
    stdin: impl Read + Send + 'static,
    stdout: &mut impl Write,
) -> Result<i32, ConsoleError>
where
    S: Send + Sync + 'static,
    for<'a> &'a S: Read + Write,
{
    let conn = ConsoleConnection::open(stream, request)?;
    conn.copy_stdin(stdin)?;
    conn.wait(stdout, None)
}

/// The stdin thread's loop.
fn copy_stdin<S>(mut stdin: impl Read, input: &ConsoleInput<S>)
where
    for<'a> &'a S: Write,
{
    let mut buf = vec![0u8; MAX_FRAME_PAYLOAD];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if input.stdin(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = input.stdin_eof();
}

/// Writes and flushes session output locally.
fn write_local(w: &mut dyn Write, bytes: &[u8]) -> Result<(), ConsoleError> {
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(ConsoleError::LocalOutput)
}

/// The agent's message with control characters (but newlines and tabs) replaced: it is shown
/// to an operator, and the guest is not trusted with their terminal.
fn printable(message: &str) -> String {
    message
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}
