//! The keeper thread of a VMM: spawns it, reports its pid, forwards its console and stderr
//! to the shim's log (keeping the last lines for error messages), reaps it and records how
//! it ended in an [`ExitCell`] everyone can wait on.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_vmm_config::status::describe;

use super::{VmError, VmmStatus};
use crate::util::lock;

/// The longest guest console line forwarded to the log; the rest of the line is dropped.
const MAX_CONSOLE_LINE: usize = 4096;

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

/// The last console lines, kept for error messages.
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
/// runs. Guest console lines reach the log when `forward_console`; `on_exit` runs on the
/// keeper thread after the VMM is reaped.
pub fn start(
    cmd: Command,
    vmm: &Path,
    forward_console: bool,
    on_exit: Box<dyn FnOnce(VmmStatus) + Send>,
) -> Result<Started, VmError> {
    let exit = Arc::new(ExitCell::default());
    let tail = Arc::new(ConsoleTail::default());
    let (tx, rx) = mpsc::channel();
    let keeper = Keeper {
        vmm: vmm.to_path_buf(),
        exit: exit.clone(),
        tail: tail.clone(),
        forward_console,
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
    forward_console: bool,
}

impl Keeper {
    /// Spawns the VMM, reports its pid on `tx`, forwards its output, reaps it.
    fn run(
        self,
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
            pumps.push(pump(out, "guest", self.tail.clone(), self.forward_console));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, "moat-vmm", self.tail.clone(), true));
        }
        let status = match child.wait() {
            Ok(s) => s
                .code()
                .or_else(|| s.signal().map(|n| 128 + n))
                .unwrap_or(255),
            Err(e) => {
                log::error!("waiting for {} (pid {pid}): {e}", self.vmm.display());
                255
            }
        };
        for p in pumps {
            let _ = p.join();
        }
        log::info!("moat-vmm (pid {pid}) ended: {}", describe(status));
        self.exit.set(status);
        on_exit(status);
    }
}

/// Forwards lines of `r` to the log (prefixed by `who`) and into `tail`.
fn pump(
    r: impl Read + Send + 'static,
    who: &'static str,
    tail: Arc<ConsoleTail>,
    forward: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r
                .by_ref()
                .take(MAX_CONSOLE_LINE as u64)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if forward {
                log::info!("{who}: {line}");
            }
            tail.push(line);
        }
    })
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
