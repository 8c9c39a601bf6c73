//! The JSON records of host changes, written in the pod directory before a change is made and
//! read back by `delete` after a dead shim to undo it ([`crate::host::network`],
//! [`crate::host::port_forward`], [`crate::host::cgroup`]).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Writes `record` as JSON to `path`.
pub fn write<T: Serialize>(path: &Path, record: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    std::fs::write(path, json)
}

/// The record at `path`: `None` when there is none, `Some(Err(why))` when it does not parse
/// (`why` names the file, for the log).
pub fn read<T: DeserializeOwned>(path: &Path) -> Option<Result<T, String>> {
    let bytes = std::fs::read(path).ok()?;
    Some(serde_json::from_slice(&bytes).map_err(|e| format!("unreadable {}: {e}", path.display())))
}
