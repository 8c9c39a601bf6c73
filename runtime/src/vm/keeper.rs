//! The keeper thread of a VMM: spawns it, reports its pid, forwards its console and stderr
//! to the shim's log (keeping the last lines for error messages), reaps it and records how
//! it ended in an [`ExitCell`] everyone can wait on.
//!
//! Both streams are guest-controlled (the console directly, VMM stderr by what the guest
//! provokes): lines are cut at [`MAX_CONSOLE_LINE`] bytes, escaped ([`escape`]) so that none
//! can end its log record or forge another, and rate-limited ([`CONSOLE_RATE`],
//! [`VMM_STDERR_RATE`]) with a note of how many were suppressed. The pipes are always drained,
//! so the VMM never blocks on them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_vmm_config::status::describe;

use super::console_log::RotatingLog;
use super::{VmError, VmmStatus};
use crate::guard::limits::{CONSOLE_RATE, MAX_CONSOLE_LINE, VMM_STDERR_RATE};
use crate::guard::rate::{Rate, Throttle};
use crate::guard::text::escape;
use crate::util::lock;

/// The VMM's exit, shared between the keeper thread and everyone waiting for it.
#[derive(Default)]
pub struct ExitCell {
    status: Mutex<Option<VmmStatus>>,
    cond: Condvar,
}

impl ExitCell {
    /// How the VMM ended, if it has.
    pub fn status(&self) -> Option<VmmStatus> {
        *lock(&self.status)
    }

    /// Waits for the VMM's exit, at most `timeout` (forever with `None`).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmmStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut status = lock(&self.status);
        while status.is_none() {
            let Some(d) = deadline else {
                status = self.cond.wait(status).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            status = self
                .cond
                .wait_timeout(status, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *status
    }

    fn set(&self, status: VmmStatus) {
        *lock(&self.status) = Some(status);
        self.cond.notify_all();
    }
}

/// The last console lines (cut, not escaped: error messages escape them on their way out),
/// kept for error messages.
#[derive(Default)]
pub struct ConsoleTail(Mutex<VecDeque<String>>);

impl ConsoleTail {
    const LINES: usize = 30;

    fn push(&self, line: String) {
        let mut q = lock(&self.0);
        if q.len() == Self::LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn text(&self) -> String {
        lock(&self.0).iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// What [`start`] returns: the VMM's pid, its exit cell and its console tail.
pub type Started = (i32, Arc<ExitCell>, Arc<ConsoleTail>);

/// Starts the keeper thread, which spawns `cmd` (the VMM binary `vmm`); returns once the VMM
/// runs. Guest console lines go where `console` says (the log, the pod's file); `on_exit`
/// runs on the keeper thread after the VMM is reaped.
pub fn start(
    cmd: Command,
    vmm: &Path,
    console: ConsoleSink,
    on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
) -> Result<Started, VmError> {
    let exit = Arc::new(ExitCell::default());
    let tail = Arc::new(ConsoleTail::default());
    let (tx, rx) = mpsc::channel();
    let keeper = Keeper {
        vmm: vmm.to_path_buf(),
        exit: exit.clone(),
        tail: tail.clone(),
        console,
    };
    let spawn_err = |source| VmError::Spawn {
        vmm: vmm.to_path_buf(),
        source,
    };
    std::thread::Builder::new()
        .name("vmm-keeper".into())
        .spawn(move || keeper.run(cmd, tx, on_exit))
        .map_err(spawn_err)?;
    match rx.recv() {
        Ok(Ok(pid)) => Ok((pid, exit, tail)),
        Ok(Err(source)) => Err(spawn_err(source)),
        Err(_) => Err(spawn_err(std::io::Error::other(
            "the VMM keeper thread died",
        ))),
    }
}

/// The keeper thread's state.
struct Keeper {
    vmm: PathBuf,
    exit: Arc<ExitCell>,
    tail: Arc<ConsoleTail>,
    console: ConsoleSink,
}

/// Where the guest console's lines go besides the tail.
#[derive(Debug, Default)]
pub struct ConsoleSink {
    /// To the shim's log (rate-limited).
    pub forward: bool,
    /// To the pod's console file.
    pub file: Option<RotatingLog>,
}

impl Keeper {
    /// Spawns the VMM, reports its pid on `tx`, forwards its output, reaps it.
    fn run(
        mut self,
        mut cmd: Command,
        tx: mpsc::Sender<std::io::Result<i32>>,
        on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
    ) {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let pid = child.id() as i32;
        let _ = tx.send(Ok(pid));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            let rate = self.console.forward.then_some(CONSOLE_RATE);
            let file = self.console.file.take();
            pumps.push(pump(out, "guest", self.tail.clone(), rate, file));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(
                err,
                "moat-vmm",
                self.tail.clone(),
                Some(VMM_STDERR_RATE),
                None,
            ));
        }
        let status = match child.wait() {
            Ok(s) => s
                .code()
                .or_else(|| s.signal().map(|n| 128 + n))
                .unwrap_or(255),
            Err(e) => {
                crate::plog!(Error, "waiting for {} (pid {pid}): {e}", self.vmm.display());
                255
            }
        };
        for p in pumps {
            let _ = p.join();
        }
        crate::plog!(Info, "moat-vmm (pid {pid}) ended: {}", describe(status));
        self.exit.set(status);
        on_exit(status);
    }
}

/// Forwards lines of `r` into `tail`, into `file` (escaped), and at `rate` (`None`: not at
/// all) to the log prefixed by `who`.
fn pump(
    r: impl Read + Send + 'static,
    who: &'static str,
    tail: Arc<ConsoleTail>,
    rate: Option<Rate>,
    file: Option<RotatingLog>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut fwd = Forward {
            who,
            tail,
            throttle: rate.map(Throttle::new),
            file,
        };
        let mut log = |line: &str| crate::plog!(Info, "{line}");
        read_lines(r, MAX_CONSOLE_LINE, |line| fwd.line(line, &mut log));
        fwd.end(&mut log);
    })
}

/// What a pump does with each line.
struct Forward {
    who: &'static str,
    tail: Arc<ConsoleTail>,
    /// `None`: lines only go into the tail.
    throttle: Option<Throttle>,
    /// The pod's console file, if any.
    file: Option<RotatingLog>,
}

impl Forward {
    /// Keeps `raw` in the tail and writes it escaped through `out` if the rate allows, after a
    /// note of the lines suppressed before it.
    fn line(&mut self, raw: &[u8], out: &mut impl FnMut(&str)) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end();
        let escaped = escape(text, MAX_CONSOLE_LINE);
        if let Some(file) = &mut self.file {
            file.line(&escaped);
        }
        if let Some(throttle) = &mut self.throttle {
            if let Some(suppressed) = throttle.admit() {
                self.note(suppressed, out);
                out(&format!("{}: {escaped}", self.who));
            }
        }
        self.tail.push(text.to_string());
    }

    /// At the stream's end: the note of lines suppressed since the last one written.
    fn end(&mut self, out: &mut impl FnMut(&str)) {
        if let Some(suppressed) = self.throttle.as_mut().map(Throttle::take_suppressed) {
            self.note(suppressed, out);
        }
    }

    fn note(&self, suppressed: u64, out: &mut impl FnMut(&str)) {
        if suppressed > 0 {
            out(&format!(
                "{}: ({suppressed} lines suppressed: more than the log takes)",
                self.who
            ));
        }
    }
}

/// Calls `each` with every `\n`-terminated line of `r` (without the newline; the last line
/// also without one), each cut at `max` bytes: the rest of a longer line is read and dropped,
/// so memory stays bounded whatever the stream holds. Ends at EOF or a read error.
fn read_lines(r: impl Read, max: usize, mut each: impl FnMut(&[u8])) {
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(max.min(4096));
    loop {
        let (used, done) = match r.fill_buf() {
            Ok([]) => break,
            Ok(buf) => {
                let end = buf.iter().position(|&b| b == b'\n');
                let chunk = &buf[..end.unwrap_or(buf.len())];
                let room = max.saturating_sub(line.len());
                line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                (chunk.len() + usize::from(end.is_some()), end.is_some())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        r.consume(used);
        if done {
            each(&line);
            line.clear();
        }
    }
    if !line.is_empty() {
        each(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_cell_wakes_waiters_and_times_out() {
        let cell = Arc::new(ExitCell::default());
        assert_eq!(cell.wait(Some(Duration::from_millis(10))), None);
        let c = cell.clone();
        let t = std::thread::spawn(move || c.wait(None));
        cell.set(4);
        assert_eq!(t.join().unwrap(), Some(4));
        assert_eq!(cell.status(), Some(4));
    }

    #[test]
    fn lines_are_cut_and_long_ones_drained() {
        let mut input = b"short\r\n".to_vec();
        input.extend(vec![b'a'; 10_000]);
        input.extend(b"\nnext\nlast without newline");
        let mut lines = Vec::new();
        read_lines(&input[..], 1024, |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], b"short\r");
        assert_eq!(lines[1], vec![b'a'; 1024]);
        assert_eq!(lines[2], b"next");
        assert_eq!(lines[3], b"last without newline");
    }

    #[test]
    fn a_hostile_console_is_escaped_and_rate_limited() {
        let tail = Arc::new(ConsoleTail::default());
        let tmp = tempfile::TempDir::new().unwrap();
        let file = RotatingLog::create(&tmp.path().join("console.log"), 1 << 20).unwrap();
        let mut fwd = Forward {
            who: "guest",
            tail: tail.clone(),
            throttle: Some(Throttle::new(Rate {
                per_sec: 1,
                burst: 3,
            })),
            file: Some(file),
        };
        let mut logged = Vec::new();
        let mut out = |l: &str| logged.push(l.to_string());
        fwd.line(b"x\" level=error msg=\"forged", &mut out);
        fwd.line(&[0x1b, b'[', b'2', b'J', 0xff], &mut out);
        for i in 0..10_000 {
            fwd.line(format!("flood {i}").as_bytes(), &mut out);
        }
        fwd.end(&mut out);
        assert_eq!(logged[0], r#"guest: x\" level=error msg=\"forged"#);
        assert_eq!(logged[1], "guest: \\u{1b}[2J\u{fffd}");
        assert_eq!(logged[2], "guest: flood 0");
        // The rest of the flood is one note (a slow test run may let a few more through).
        assert!(logged.len() <= 8, "{logged:?}");
        let note = logged.last().unwrap();
        assert!(
            note.starts_with("guest: (") && note.contains("lines suppressed"),
            "{note}"
        );
        assert!(logged
            .iter()
            .all(|l| !l.contains('\n') && l.len() < 2 * MAX_CONSOLE_LINE));
        // The tail keeps every line, unescaped, for error messages (escaped there).
        assert!(tail.text().ends_with("flood 9999"));
        // The pod's file has every line, escaped as the log's, none suppressed.
        drop(fwd);
        let file = std::fs::read_to_string(tmp.path().join("console.log")).unwrap();
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines.len(), 10_002);
        assert_eq!(lines[0], r#"x\" level=error msg=\"forged"#);
        assert_eq!(lines[1], "\\u{1b}[2J\u{fffd}");
        assert_eq!(lines[10_001], "flood 9999");
        assert!(!file.contains('\u{1b}'));
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let tail = ConsoleTail::default();
        for i in 0..40 {
            tail.push(format!("line {i}"));
        }
        let text = tail.text();
        assert!(
            text.starts_with("line 10\n") && text.ends_with("line 39"),
            "{text}"
        );
    }
}
