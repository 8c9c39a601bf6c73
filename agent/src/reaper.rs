//! Zombie reaping for PID 1, without stealing exit statuses the agent needs.
//!
//! As PID 1 the agent inherits every orphaned process of the guest and must `wait` for them,
//! or they stay zombies forever. But a blanket `waitpid(-1)` also collects the children the
//! agent itself started (container processes), whose exit status a client waits for. The [`Reaper`] resolves this:
//!
//! - It is the **only** place in the agent that calls `wait*`. Nothing else may call
//!   `std::process::Child::wait`/`try_wait` (they would race with the reaper and lose).
//! - Whoever starts a process whose status it wants calls [`Reaper::watch`] as soon as it
//!   learns the pid (a container process is a grandchild: its pid arrives over the sync
//!   socket). The statuses of the last [`RECENT_ORPHANS`] unwatched
//!   processes are kept, so a process that died before `watch` still has its status.
//! - The main thread calls [`Reaper::reap_all`] on every `SIGCHLD` (and once a second, in case
//!   a signal was coalesced). Statuses of watched pids go into a `pid → status` map until
//!   [`Reaper::forget`] takes them out ([`Reaper::wait`] only reads
//!   them, so every waiter of a process gets its status); statuses of unwatched pids (orphans)
//!   are logged at debug level and only the most recent few kept, so the maps stay bounded by
//!   the number of watched processes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// The status as a shell reports it: the exit code, or 128 + the signal number.
    pub fn shell_status(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }
}

/// How many statuses of unwatched processes are kept for a late [`Reaper::watch`].
pub const RECENT_ORPHANS: usize = 256;

#[derive(Default)]
struct State {
    /// Pids whose exit status someone will ask for, not yet exited.
    watched: HashSet<i32>,
    /// Exit statuses of watched pids, until taken.
    exited: HashMap<i32, ExitStatus>,
    /// The latest statuses of unwatched pids, oldest first.
    orphans: VecDeque<(i32, ExitStatus)>,
}

/// Reaps every child of the agent and keeps the statuses of watched ones for their waiters.
#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
    exited_cv: Condvar,
}

impl Reaper {
    /// A reaper with nothing watched.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock aborts the agent (panic = abort as PID 1); in tests
        // the state is still consistent, so poisoning is ignored.
        crate::util::lock(&self.state)
    }

    /// Watches `pid`, a process that may already have exited (then its recent status is used).
    pub fn watch(&self, pid: u32) {
        let pid = pid as i32;
        let mut state = self.lock();
        if let Some(i) = state.orphans.iter().rposition(|(p, _)| *p == pid) {
            let (_, status) = state.orphans.remove(i).expect("index from rposition");
            state.exited.insert(pid, status);
            drop(state);
            self.exited_cv.notify_all();
        } else {
            state.watched.insert(pid);
        }
    }

    /// Stops watching `pid` and drops its status.
    pub fn forget(&self, pid: u32) {
        let mut state = self.lock();
        state.watched.remove(&(pid as i32));
        state.exited.remove(&(pid as i32));
    }

    /// Whether watched `pid` has exited (its status is known).
    pub fn has_exited(&self, pid: u32) -> bool {
        self.lock().exited.contains_key(&(pid as i32))
    }

    /// Reaps every exited child without blocking. Returns how many were reaped.
    pub fn reap_all(&self) -> usize {
        let mut reaped = 0;
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid(-1) failed: {e}");
                    return reaped;
                }
                Ok(s) => s,
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, ExitStatus::Exited(code)),
                WaitStatus::Signaled(pid, sig, core_dumped) => (
                    pid,
                    ExitStatus::Signaled {
                        signal: sig as i32,
                        core_dumped,
                    },
                ),
                // Stop/continue reports only come with WUNTRACED/WCONTINUED, not asked for.
                _ => continue,
            };
            reaped += 1;
            self.record(pid.as_raw(), exit);
        }
    }

    fn record(&self, pid: i32, status: ExitStatus) {
        let mut state = self.lock();
        if state.watched.remove(&pid) {
            tracing::debug!("reaped watched pid {pid}: {status:?}");
            state.exited.insert(pid, status);
            drop(state);
            self.exited_cv.notify_all();
        } else {
            tracing::debug!("reaped orphan pid {pid}: {status:?}");
            if state.orphans.len() == RECENT_ORPHANS {
                state.orphans.pop_front();
            }
            state.orphans.push_back((pid, status));
        }
    }

    /// Waits up to `timeout` (forever with `None`) for watched `pid` to exit and returns its
    /// status (kept for other waiters until [`Reaper::forget`]). `None` on timeout, or at once
    /// if `pid` is neither watched nor exited.
    pub fn wait(&self, pid: u32, timeout: Option<Duration>) -> Option<ExitStatus> {
        let pid = pid as i32;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if let Some(status) = state.exited.get(&pid) {
                return Some(*status);
            }
            if !state.watched.contains(&pid) {
                return None;
            }
            state = match deadline {
                None => self
                    .exited_cv
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.exited_cv
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::Arc;

    /// Set in the child process that runs the test alone.
    const ALONE_ENV: &str = "MOAT_REAPER_TEST_CHILD";

    // `reap_all` collects every child of the test process, which would steal the statuses of
    // other tests' children: the test runs alone in a child process.
    #[test]
    fn watched_statuses_reach_waiters_and_orphans_are_dropped() {
        if std::env::var_os(ALONE_ENV).is_none() {
            let name = "reaper::tests::watched_statuses_reach_waiters_and_orphans_are_dropped";
            let status = crate::testing::rerun_test(name, &[], (ALONE_ENV, "1".as_ref()));
            assert!(status.success(), "{name} alone: {status}");
            return;
        }
        let reaper = Arc::new(Reaper::new());
        let spawn_watched = |script: &str| {
            // The reaper, not a `Child::wait`, collects it.
            let pid = Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap()
                .id();
            reaper.watch(pid);
            pid
        };
        let pid = spawn_watched("exit 7");
        let killed = spawn_watched("kill -9 $$");
        let orphan = Command::new("true").spawn().unwrap().id();

        let r = reaper.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let pump = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                r.reap_all();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        assert_eq!(
            reaper.wait(pid, Some(Duration::from_secs(10))),
            Some(ExitStatus::Exited(7))
        );
        assert_eq!(
            reaper.wait(killed, Some(Duration::from_secs(10))),
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        // Every waiter sees the status until it is taken; an unwatched pid never waits.
        assert_eq!(
            reaper.wait(pid, Some(Duration::ZERO)),
            Some(ExitStatus::Exited(7))
        );
        reaper.forget(pid);
        assert_eq!(reaper.wait(pid, Some(Duration::ZERO)), None);
        reaper.forget(killed);
        assert_eq!(reaper.wait(orphan, None), None);
        // An orphan's status is kept for a late watcher.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reaper
            .lock()
            .orphans
            .iter()
            .any(|(p, _)| *p == orphan as i32)
        {
            assert!(Instant::now() < deadline, "orphan {orphan} never reaped");
            std::thread::sleep(Duration::from_millis(5));
        }
        reaper.watch(orphan);
        assert!(reaper.has_exited(orphan));
        assert_eq!(
            reaper.wait(orphan, Some(Duration::ZERO)),
            Some(ExitStatus::Exited(0))
        );
        reaper.forget(orphan);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pump.join().unwrap();
        assert!(reaper.lock().exited.is_empty());
    }
}
