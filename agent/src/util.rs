//! Small helpers shared by the whole agent.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, tolerating poison: a thread that panicked while holding a lock leaves data the
/// agent (PID 1, which must keep serving) still uses as it is.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
