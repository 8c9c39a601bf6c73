//! Small helpers shared by the whole agent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `m`, tolerating poison: a thread that panicked while holding a lock leaves data the
/// agent (PID 1, which must keep serving) still uses as it is.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts what runs at once (sessions, streams) and admits at most its limit.
#[derive(Debug)]
pub struct Gate {
    active: AtomicUsize,
    max: usize,
}

/// A place taken in a [`Gate`]; dropping it frees the place.
#[derive(Debug)]
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// A gate admitting at most `max` at once.
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            active: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a place, or `None` when `max` are in.
    pub fn enter(self: &Arc<Self>) -> Option<Pass> {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Pass(Arc::clone(self)))
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}
