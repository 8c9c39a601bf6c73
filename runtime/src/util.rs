//! Small helpers shared by the shim's modules.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: every critical section in the shim leaves its state
/// consistent (a panic in one would abort nothing else), so a poisoned lock is still usable.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
