//! Small helpers shared by the crate.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, tolerating poison: the data behind the crate's locks stays consistent when a
/// holder panics (they guard whole writes, not multi-step state).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
