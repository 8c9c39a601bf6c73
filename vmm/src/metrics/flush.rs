//! Flushes while the VM runs: a [`MetricsFlusher`] in the event loop rewrites the metrics
//! file when its timerfd expires (every `metrics_interval_ms`) and when SIGUSR1 asks for it.
//! The SIGUSR1 handler only adds 1 to an eventfd the loop watches (async-signal-safe); it is
//! installed once, early ([`install_flush_signal`]), so a SIGUSR1 never kills the VMM, and
//! does nothing until a flusher exists.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{Metrics, MetricsFile};
use crate::util::{set_signal_handler, wake_eventfd};

/// The signal that asks for a flush now.
pub const FLUSH_SIGNAL: libc::c_int = libc::SIGUSR1;
/// Event-loop tag of the timerfd.
const TIMER_TAG: u32 = 0;
/// Event-loop tag of the request eventfd.
const REQUEST_TAG: u32 = 1;

/// The eventfd [`FLUSH_SIGNAL`] writes; created once and never closed, so the handler can
/// never write to a reused fd number.
static REQUEST: OnceLock<EventFd> = OnceLock::new();
/// [`REQUEST`]'s fd for the handler (-1 until it exists).
static REQUEST_FD: AtomicI32 = AtomicI32::new(-1);

/// Installs the [`FLUSH_SIGNAL`] handler for the process (before the seccomp filters, which
/// allow no `rt_sigaction`): until a [`MetricsFlusher`] exists the signal is ignored.
pub fn install_flush_signal() -> std::io::Result<()> {
    set_signal_handler(FLUSH_SIGNAL, on_flush_signal)
}

extern "C" fn on_flush_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    wake_eventfd(REQUEST_FD.load(Ordering::SeqCst));
}

/// The process's flush-request eventfd, created on first use.
fn request_event() -> std::io::Result<&'static EventFd> {
    if let Some(event) = REQUEST.get() {
        return Ok(event);
    }
    let created = EventFd::new(EFD_NONBLOCK)?;
    let event = REQUEST.get_or_init(|| created);
    REQUEST_FD.store(event.as_raw_fd(), Ordering::SeqCst);
    Ok(event)
}

/// Asks for a flush as [`FLUSH_SIGNAL`] does (for tests and in-process callers).
pub fn request_flush() {
    wake_eventfd(REQUEST_FD.load(Ordering::SeqCst));
}

/// The event-loop subscriber that rewrites the metrics file.
pub struct MetricsFlusher {
    metrics: Arc<Metrics>,
    out: Arc<MetricsFile>,
    timer: TimerFd,
    request: &'static EventFd,
}

impl MetricsFlusher {
    /// A flusher of `metrics` into `out` every `interval` (the timer starts now) and on
    /// [`FLUSH_SIGNAL`].
    pub fn new(
        metrics: Arc<Metrics>,
        out: Arc<MetricsFile>,
        interval: Duration,
    ) -> std::io::Result<MetricsFlusher> {
        let mut timer = TimerFd::new()?;
        timer.reset(interval, Some(interval))?;
        Ok(MetricsFlusher {
            metrics,
            out,
            timer,
            request: request_event()?,
        })
    }

    fn flush(&self) {
        if let Err(e) = self.out.flush(&self.metrics, None) {
            tracing::warn!("cannot write the metrics file: {e}");
        }
    }
}

impl MutEventSubscriber for MetricsFlusher {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.timer.as_raw_fd(), TIMER_TAG),
            (self.request.as_raw_fd(), REQUEST_TAG),
        ];
        for (fd, tag) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, tag, EventSet::IN)) {
                tracing::error!("cannot watch the metrics flush events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // Consume the expiration count or the requests (readable: neither blocks).
        if events.data() == TIMER_TAG {
            let _ = self.timer.wait();
        } else {
            let _ = self.request.read();
        }
        self.flush();
    }
}
