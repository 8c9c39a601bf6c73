//! The main thread's signal loop: reaps children on `SIGCHLD` and ends the agent on
//! `SIGTERM`/`SIGINT` when it is not PID 1.
//!
//! The handled signals are blocked in the main thread before any other thread exists
//! ([`block_handled`]), so every thread inherits the mask and the signals stay pending until
//! [`run_loop`] takes them with `sigtimedwait`. (Rust's `Command` resets the mask in children.)

use std::io;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::reaper::Reaper;

/// How often the loop reaps even without a `SIGCHLD` (coalesced or lost signals).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the signals [`run_loop`] handles in the calling thread (call it first in `main`).
pub fn block_handled() -> nix::Result<()> {
    handled().thread_block()
}

/// Waits for signals forever, reaping children through `reaper`; returns the stop signal
/// (`SIGTERM`, `SIGINT` or `SIGHUP`) when `pid1` is false. As PID 1 those are logged and
/// ignored: the agent leaves only by rebooting the guest.
pub fn run_loop(reaper: &Reaper, pid1: bool) -> io::Result<Signal> {
    let set = handled();
    let timeout = libc::timespec {
        tv_sec: REAP_INTERVAL.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: valid pointers to a sigset and a timespec; siginfo is not requested.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    reaper.reap_all();
                    continue;
                }
                _ => return Err(e),
            }
        }
        match Signal::try_from(sig) {
            Ok(Signal::SIGCHLD) => {
                reaper.reap_all();
            }
            Ok(s) if !pid1 => return Ok(s),
            Ok(s) => tracing::warn!("PID 1 ignores {s}"),
            Err(_) => tracing::warn!("unexpected signal {sig}"),
        }
    }
}
