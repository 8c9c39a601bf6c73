//! The metrics file, rewritten in place: in the jail it is a single-file bind mount, so
//! writing a temporary file and renaming it over is impossible. Each flush is one `pwrite`
//! of the whole JSON document (with a trailing newline) at offset 0, then an `ftruncate` to
//! its length. A reader may catch a flush half done (a shorter new document followed by the
//! tail of the old one, or a partly written one): it parses the JSON and retries when that
//! fails (see SPECIFICATION.md, "Metrics").

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Metrics, MetricsSnapshot};

/// An open metrics file.
#[derive(Debug)]
pub struct MetricsFile {
    file: File,
}

impl MetricsFile {
    /// Opens (creating or emptying) the file at `path`; open it before the seccomp filters
    /// are in (they allow no `open` of a new path for this).
    pub fn open(path: &Path) -> std::io::Result<MetricsFile> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(MetricsFile { file })
    }

    /// A metrics file over an already open file.
    pub fn from_file(file: File) -> MetricsFile {
        MetricsFile { file }
    }

    /// Writes the next snapshot of `metrics` (its `seq` one higher, RSS sampled now) with
    /// `exit_reason`; returns the snapshot's `seq`.
    pub fn flush(&self, metrics: &Metrics, exit_reason: Option<String>) -> std::io::Result<u64> {
        let mut snapshot = metrics.next_snapshot();
        snapshot.exit_reason = exit_reason;
        self.write(&snapshot)?;
        Ok(snapshot.seq)
    }

    /// Replaces the file's content with `snapshot` as pretty JSON and a newline, in place.
    pub fn write(&self, snapshot: &MetricsSnapshot) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(snapshot)?;
        json.push(b'\n');
        self.file.write_all_at(&json, 0)?;
        self.file.set_len(json.len() as u64)
    }
}
