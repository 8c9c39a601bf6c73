//! A pod's guest console in a file of its own: `<pod dir>/console.log`, at most a configured
//! size, then renamed to `console.log.1` (the one older file kept) and begun again. The lines
//! are the escaped ones the log gets (a hostile guest's bytes never reach the file raw), and
//! the file goes with the pod directory at teardown. moat-vmm caps the guest's console output
//! in total (`serial.limit_bytes`), so the writes are bounded too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A size-bounded, rotated log file.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    written: u64,
}

impl RotatingLog {
    /// Creates (or empties) `path`, mode 0600, never through a symlink; at most `max_bytes`
    /// per file.
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<RotatingLog> {
        Ok(RotatingLog {
            path: path.to_path_buf(),
            max: max_bytes.max(1),
            file: Some(open(path)?),
            written: 0,
        })
    }

    /// The previous file's path (`console.log.1`).
    pub fn rotated_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Appends `line` and a newline, rotating first when it would pass the bound. After a
    /// write error the file is given up (the log still has every line).
    pub fn line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.written > 0 && self.written + len > self.max {
            self.rotate();
        }
        let Some(f) = &mut self.file else { return };
        let cut = &line.as_bytes()[..line.len().min(self.max as usize - 1)];
        if f.write_all(cut).and_then(|_| f.write_all(b"\n")).is_err() {
            self.file = None;
            return;
        }
        self.written += cut.len() as u64 + 1;
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::rename(&self.path, self.rotated_path());
        self.file = open(&self.path).ok();
        self.written = 0;
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_at_its_bound_and_keeps_one_old_file() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("console.log");
        let mut log = RotatingLog::create(&path, 20).unwrap();
        for i in 0..7 {
            log.line(&format!("line {i}"));
        }
        // 7 bytes a line: two per file.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 6\n");
        let old = std::fs::read_to_string(log.rotated_path()).unwrap();
        assert_eq!(old, "line 4\nline 5\n");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
        // A line longer than the bound is cut to it.
        log.line(&"x".repeat(100));
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 20);
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let tmp = tempfile::TempDir::new().unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let path = tmp.path().join("console.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(RotatingLog::create(&path, 100).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
