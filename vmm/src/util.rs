//! Small helpers shared across the VMM.

use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

/// A signal handler with the `SA_SIGINFO` signature.
pub type SignalHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Locks `m` even if a previous holder panicked: device and VMM state stays usable for
/// teardown and for reporting why the VM stopped.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds 1 to eventfd `fd` (nothing when `fd` is negative). Async-signal-safe: a signal
/// handler's way to wake the event loop.
pub fn wake_eventfd(fd: RawFd) {
    if fd < 0 {
        return;
    }
    let one = 1u64.to_ne_bytes();
    // SAFETY: write(2) of an 8-byte buffer we own; async-signal-safe. A full counter (never
    // in practice) leaves the fd readable, so nothing is lost.
    unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

/// Installs `handler` for `sig` for the whole process, with every signal blocked while it
/// runs and `SA_RESTART` (a syscall it interrupts resumes rather than fail with `EINTR`).
pub fn set_signal_handler(sig: libc::c_int, handler: SignalHandler) -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid initial value; the handler (with the
    // SA_SIGINFO signature), flags and mask are set below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as libc::sighandler_t;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sigfillset initialises the mask inside the valid struct.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    // SAFETY: installs a valid handler from a fully initialised sigaction.
    if unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
