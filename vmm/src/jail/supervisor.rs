//! The PID namespace: a process cannot enter a new PID namespace itself, only its children
//! can. So the jailed VMM is a child: [`fork_into_pid_namespace`] unshares the namespace and
//! forks; the child (PID 1 there, seeing no other process) goes on to be the VMM, and the
//! parent stays behind as a small supervisor with no capabilities (and `no_new_privs`) that
//! - forwards SIGTERM, SIGINT and SIGHUP (stop) and SIGUSR1 (flush the metrics file) to the
//!   VMM;
//! - exits with the VMM's exit status (a VMM killed by signal N: `128 + N`; by SIGSYS, i.e.
//!   its seccomp filter with the handler bypassed: [`EXIT_SECCOMP`]);
//! - takes the VMM with it when it dies (the child's parent-death signal is SIGKILL, which
//!   reaches a PID-namespace init from the parent namespace).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::JailError;
use crate::config::status::{signal_status, EXIT_SECCOMP, EXIT_VMM_ERROR};

/// The signals the supervisor forwards: the stop signals, and the metrics flush request
/// ([`crate::metrics::FLUSH_SIGNAL`]).
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];
const _: () = assert!(Signal::SIGUSR1 as i32 == crate::metrics::FLUSH_SIGNAL);
/// How often the supervisor looks for the VMM's exit between signals.
const POLL: Duration = Duration::from_millis(100);

/// Forks into a new PID namespace (see the module doc). Returns in the child; the parent
/// never returns. Call it while the process has one thread.
pub fn fork_into_pid_namespace() -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| JailError::nix("unshare the PID namespace", e))?;
    let mut forwarded = SigSet::empty();
    FORWARDED.iter().for_each(|s| forwarded.add(*s));
    forwarded
        .thread_block()
        .map_err(|e| JailError::nix("block the forwarded signals", e))?;
    // The child learns that the parent died before PDEATHSIG was set from this pipe.
    let (r, w) = nix::unistd::pipe().map_err(|e| JailError::nix("pipe", e))?;
    // SAFETY: pipe() just returned these two fds; nothing else owns them.
    let (alive_r, alive_w) = unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) };
    // SAFETY: the process has one thread (the caller's contract), so the child may run any
    // code after fork.
    match unsafe { fork() }.map_err(|e| JailError::nix("fork into the PID namespace", e))? {
        ForkResult::Child => {
            drop(alive_w);
            die_with_parent(&alive_r)?;
            forwarded
                .thread_unblock()
                .map_err(|e| JailError::nix("unblock signals", e))?;
            Ok(())
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            let code = supervise(child, &forwarded, alive_w);
            std::process::exit(code)
        }
    }
}

/// In the child: SIGKILL when the parent dies; exits now if it already has (its end of
/// the pipe hung up).
fn die_with_parent(alive: &OwnedFd) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(JailError::os("PR_SET_PDEATHSIG"));
    }
    let mut fds = [nix::poll::PollFd::new(
        alive.as_raw_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if nix::poll::poll(&mut fds, 0).unwrap_or(0) > 0 {
        std::process::exit(EXIT_VMM_ERROR);
    }
    Ok(())
}

/// The parent's life: drop every capability (and never gain one: `no_new_privs`), forward
/// signals, wait, return the VMM's status.
fn supervise(child: Pid, forwarded: &SigSet, _alive: OwnedFd) -> i32 {
    if let Err(e) = super::creds::drop_caps(&Default::default()) {
        eprintln!("moat-vmm supervisor: {e}");
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "moat-vmm supervisor: no_new_privs: {}",
            std::io::Error::last_os_error()
        );
    }
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => {
                eprintln!("moat-vmm: stopped by its seccomp filter (killed by SIGSYS)");
                return EXIT_SECCOMP;
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => return signal_status(sig as i32),
            Ok(_) => {}
            Err(e) => {
                eprintln!("moat-vmm supervisor: waitpid: {e}");
                return EXIT_VMM_ERROR;
            }
        }
        if let Some(sig) = wait_signal(forwarded, POLL) {
            let _ = kill(child, sig);
        }
    }
}

/// Waits up to `timeout` for one of `set` (blocked); the signal taken, if any.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: sigtimedwait reads the valid sigset and timespec and writes no siginfo (null).
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(sig).ok()
}
