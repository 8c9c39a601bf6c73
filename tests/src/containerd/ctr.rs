//! `ctr` commands run against a [`Containerd`](super::Containerd): finished ([`CtrOutput`]),
//! running with captured output ([`CtrChild`], from
//! [`Containerd::ctr_spawn`](super::Containerd::ctr_spawn)), or watched while they run
//! ([`LiveCtr`]: output readable as it arrives, optionally on a pty of its own — `ctr run -t`
//! needs a controlling terminal — resizable, killed if dropped; made by
//! [`Stack::ctr_live`](super::moat_stack::Stack::ctr_live) and
//! [`Stack::ctr_on_pty`](super::moat_stack::Stack::ctr_on_pty)).

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{io_err, log_tail, ContainerdError};
use crate::process::{KillOnDrop, WaitOutcome};

/// What a `ctr` command did.
#[derive(Debug, Clone)]
pub struct CtrOutput {
    /// Its exit status (`ctr run` exits with the task's status).
    pub status: ExitStatus,
    /// Its stdout, byte-exact.
    pub stdout: Vec<u8>,
    /// Its stderr, byte-exact.
    pub stderr: Vec<u8>,
    /// How long it ran.
    pub elapsed: Duration,
}

impl CtrOutput {
    /// The exit code (`None` if a signal killed ctr).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A `ctr` command started by [`Containerd::ctr_spawn`](super::Containerd::ctr_spawn); killed if dropped unwaited.
#[derive(Debug)]
pub struct CtrChild {
    /// ctr's stdin, if piped: take it, write, drop it for EOF.
    pub stdin: Option<ChildStdin>,
    pub(super) stdout: JoinHandle<Vec<u8>>,
    pub(super) stderr: JoinHandle<Vec<u8>>,
    pub(super) child: KillOnDrop,
    pub(super) start: Instant,
    pub(super) args: String,
    pub(super) log: PathBuf,
}

impl CtrChild {
    /// ctr's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin (if still open) and waits for ctr to exit; after `timeout` kills it
    /// (an error). A non-zero exit is not an error.
    pub fn wait(mut self, timeout: Duration) -> Result<CtrOutput, ContainerdError> {
        drop(self.stdin.take());
        let outcome = self
            .child
            .wait_timeout(timeout)
            .map_err(io_err(format!("waiting for `ctr {}`", self.args)))?;
        let out = CtrOutput {
            status: match outcome {
                WaitOutcome::Exited(st) => st,
                WaitOutcome::TimedOut => ExitStatus::from_raw(libc::SIGKILL),
            },
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
            elapsed: self.start.elapsed(),
        };
        match outcome {
            WaitOutcome::Exited(_) => Ok(out),
            WaitOutcome::TimedOut => {
                let why = format!("did not finish within {timeout:?} (killed)");
                Err(ctr_error(self.args, why, &out, &self.log))
            }
        }
    }
}

/// The error of a failed or timed-out ctr command.
pub(super) fn ctr_error(args: String, why: String, o: &CtrOutput, log: &Path) -> ContainerdError {
    let (stdout, stderr, log_tail) = (o.stdout_str(), o.stderr_str(), log_tail(log));
    ContainerdError::Ctr {
        args,
        why,
        stdout,
        stderr,
        log_tail,
    }
}

/// `args` for messages: `["run", "--rm", ...]`.
pub(super) fn show(args: &[impl AsRef<OsStr>]) -> String {
    format!(
        "{:?}",
        args.iter().map(AsRef::as_ref).collect::<Vec<&OsStr>>()
    )
}

/// Reads a pipe to its end on a thread.
pub(crate) fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// What a [`LiveCtr`] has read so far from one of ctr's outputs.
#[derive(Default)]
struct Collected {
    bytes: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl Collected {
    /// Reads `r` to its end (or error: a pty master reads EIO once the slave is gone).
    fn fill(self: Arc<Self>, mut r: impl Read + Send + 'static) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                self.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                self.grew.notify_all();
            }
        })
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.bytes.lock().unwrap())
    }
}

/// A `ctr` command whose output is watched while it runs
/// ([`Stack::ctr_live`](super::moat_stack::Stack::ctr_live),
/// [`Stack::ctr_on_pty`](super::moat_stack::Stack::ctr_on_pty)); killed if dropped unfinished.
pub struct LiveCtr {
    child: KillOnDrop,
    out: Arc<Collected>,
    err: Arc<Collected>,
    readers: Vec<JoinHandle<()>>,
    /// The pty master, for a ctr on a pty.
    master: Option<std::fs::File>,
    start: Instant,
    args: String,
}

impl LiveCtr {
    /// Starts `cmd` (a ctr command showing as `args`) with stdin `/dev/null`, stdout and
    /// stderr piped.
    pub fn piped(mut cmd: Command, args: &[&str]) -> LiveCtr {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        LiveCtr::spawn(cmd, args, None)
    }

    /// Starts `cmd` on a fresh pty of `rows` x `cols` as its controlling terminal; the pty's
    /// output is its stdout.
    pub fn on_pty(mut cmd: Command, args: &[&str], rows: u16, cols: u16) -> LiveCtr {
        let (master, slave) = openpty(rows, cols);
        let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup of the pty slave"));
        cmd.stdin(dup(&slave))
            .stdout(dup(&slave))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the pty slave by now.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        LiveCtr::spawn(cmd, args, Some(std::fs::File::from(master)))
    }

    fn spawn(mut cmd: Command, args: &[&str], master: Option<std::fs::File>) -> LiveCtr {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting ctr {args:?}: {e}"));
        drop(cmd); // a pty slave it holds must close here, for the master's EOF
        let (out, err) = (Arc::<Collected>::default(), Arc::<Collected>::default());
        let mut readers = Vec::new();
        if let Some(m) = &master {
            let m = m.try_clone().expect("dup of the pty master");
            readers.push(out.clone().fill(m));
        }
        if let Some(o) = child.stdout.take() {
            readers.push(out.clone().fill(o));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(err.clone().fill(e));
        }
        LiveCtr {
            child: KillOnDrop::new(child),
            out,
            err,
            readers,
            master,
            start: Instant::now(),
            args: format!("{args:?}"),
        }
    }

    /// Waits until ctr's stdout (a pty's output, `\r` dropped) contains `needle`, returning
    /// it; panics after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut bytes = self.out.bytes.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&bytes).replace('\r', "");
            if text.contains(needle) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "ctr {} never printed {needle:?} in {timeout:?}; it printed {text:?}",
                self.args
            );
            bytes = self.out.grew.wait_timeout(bytes, left).unwrap().0;
        }
    }

    /// Sets the pty's window size (TIOCSWINSZ on the master: ctr gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        let m = self.master.as_ref().expect("resize: ctr is not on a pty");
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Waits (at most `timeout`, else panics) for ctr to exit and returns what it printed.
    pub fn finish(mut self, timeout: Duration) -> CtrOutput {
        let status = match self.child.wait_timeout(timeout) {
            Ok(WaitOutcome::Exited(st)) => st,
            Ok(WaitOutcome::TimedOut) => panic!(
                "ctr {} did not finish within {timeout:?}; stdout {:?}, stderr {:?}",
                self.args,
                String::from_utf8_lossy(&self.out.take()),
                String::from_utf8_lossy(&self.err.take())
            ),
            Err(e) => panic!("waiting for ctr {}: {e}", self.args),
        };
        drop(self.master.take());
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        CtrOutput {
            status,
            stdout: self.out.take(),
            stderr: self.err.take(),
            elapsed: self.start.elapsed(),
        }
    }
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A pty pair of size `rows` x `cols`, both ends close-on-exec: (master, slave).
fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let ws = winsize(rows, cols);
    // SAFETY: openpty writes two fds; name and termios may be null, `ws` is read only.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded, so both are fresh fds owned by nobody else.
    let fds = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&fds.0, &fds.1] {
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    fds
}
