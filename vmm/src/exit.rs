//! Why a microVM stopped, and the VMM process exit status each reason maps to (the statuses
//! and what they mean are part of the configuration contract: [`moat_vmm_config::status`]).

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

use crate::util::lock;

pub use moat_vmm_config::status::{
    signal_status, EXIT_BAD_CONFIG, EXIT_GUEST_CRASH, EXIT_GUEST_PANIC, EXIT_OK, EXIT_VMM_ERROR,
};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset or power-off (Linux `reboot`/`poweroff`).
    GuestShutdown,
    /// The guest kernel panicked and then reset itself.
    GuestPanic,
    /// The guest stopped in a way only a crash explains.
    GuestCrash(String),
    /// The VMM failed while the guest ran.
    VmmError(String),
    /// The host asked the VMM to stop with this signal.
    Signal(i32),
}

impl ExitReason {
    /// The process exit status for this reason (see [`moat_vmm_config::status`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestShutdown => EXIT_OK,
            ExitReason::GuestPanic => EXIT_GUEST_PANIC,
            ExitReason::GuestCrash(_) => EXIT_GUEST_CRASH,
            ExitReason::VmmError(_) => EXIT_VMM_ERROR,
            ExitReason::Signal(sig) => signal_status(*sig),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestShutdown => write!(f, "guest shut down"),
            ExitReason::GuestPanic => write!(f, "guest kernel panicked"),
            ExitReason::GuestCrash(why) => write!(f, "guest crashed: {why}"),
            ExitReason::VmmError(why) => write!(f, "VMM error: {why}"),
            ExitReason::Signal(sig) => write!(f, "stopped by signal {sig}"),
        }
    }
}

/// The first stop request wins; the event fd wakes the VMM's event loop.
#[derive(Clone)]
pub struct ExitSignal {
    reason: Arc<Mutex<Option<ExitReason>>>,
    event: Arc<EventFd>,
}

impl ExitSignal {
    /// Creates a signal with its (non-blocking) event fd.
    pub fn new() -> std::io::Result<ExitSignal> {
        Ok(ExitSignal {
            reason: Arc::new(Mutex::new(None)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            tracing::debug!(%reason, "stop requested");
            *slot = Some(reason);
        }
        drop(slot);
        // A full counter (never in practice) still leaves the fd readable: nothing is lost.
        let _ = self.event.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// Makes SIGTERM, SIGINT and SIGHUP stop the VM through this signal (one per process):
    /// the handler only records the signal and writes the event fd (async-signal-safe), and
    /// the event loop turns it into [`ExitReason::Signal`] for a normal teardown.
    pub fn install_stop_signals(&self) -> std::io::Result<()> {
        STOP_EVENT_FD.store(self.event.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            register_signal_handler(sig, on_stop_signal)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(())
    }

    /// Records a pending stop signal, if one arrived, as the exit reason.
    pub fn take_stop_signal(&self) {
        let sig = STOP_SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            self.request(ExitReason::Signal(sig));
        }
    }

    /// The event fd the event loop watches.
    pub fn event_fd(&self) -> &EventFd {
        &self.event
    }
}

static STOP_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    crate::util::wake_eventfd(STOP_EVENT_FD.load(Ordering::SeqCst));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let sig = ExitSignal::new().unwrap();
        assert_eq!(sig.reason(), None);
        sig.request(ExitReason::GuestPanic);
        sig.request(ExitReason::GuestShutdown);
        assert_eq!(sig.reason(), Some(ExitReason::GuestPanic));
        assert!(sig.event_fd().read().unwrap() >= 1);
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            ExitReason::GuestShutdown.exit_code(),
            ExitReason::GuestPanic.exit_code(),
            ExitReason::GuestCrash(String::new()).exit_code(),
            ExitReason::VmmError(String::new()).exit_code(),
            ExitReason::Signal(libc::SIGTERM).exit_code(),
            EXIT_BAD_CONFIG,
        ];
        let mut sorted = codes.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }
}
