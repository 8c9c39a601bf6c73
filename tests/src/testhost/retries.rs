//! Every retry after a guest crash, counted where CI shows it.
//!
//! A test that redoes work after the nested test host's guest crashed calls [`record`]. Inside
//! the test host that prints a [`MARK`] line on stdout, which [`super::on_kvm`] relays from the
//! test host's output; outside it the line is appended to the retry log (`$MOAT_RETRY_LOG`,
//! else `<target>/moat-retries.log`). `tests/scripts/test-all.sh` empties the log before the
//! tests, prints `guest-crash retries: N` with every line after them, and fails past its
//! budget: a retry can cost time but cannot hide.

use std::io::Write as _;
use std::path::PathBuf;

use super::on_kvm::in_test_host;

/// Names the retry log file.
pub const RETRY_LOG_ENV: &str = "MOAT_RETRY_LOG";
/// How a retry line starts on a test-host run's stdout.
pub const MARK: &str = "moat-retry: ";

/// Records one retry of `test`: all of `why` (an L1 console tail, say) goes to stderr, its
/// first line to the count.
pub fn record(test: &str, why: &str) {
    let line = format!("{test}: {}", why.lines().next().unwrap_or(""));
    eprintln!("\n!!! GUEST CRASH, retried (counted): {test}: {why}\n");
    if in_test_host() {
        println!("{MARK}{line}");
    } else {
        append(&line);
    }
}

/// Records the retries a test-host run reported on its `stdout`; returns how many.
pub fn relay(stdout: &str) -> usize {
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(MARK))
        .collect();
    for l in &lines {
        append(l);
    }
    lines.len()
}

/// The retry log's path.
pub fn log_path() -> PathBuf {
    match std::env::var_os(RETRY_LOG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::target_dir().join("moat-retries.log"),
    }
}

/// Appends `line` to the retry log; a log that cannot be written fails the test (an uncounted
/// retry is what this module exists to prevent).
fn append(line: &str) {
    let path = log_path();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening the retry log {}: {e}", path.display()));
    writeln!(f, "{line}")
        .unwrap_or_else(|e| panic!("writing the retry log {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_lines_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("retries.log");
        std::env::set_var(RETRY_LOG_ENV, &log);
        let out = format!("noise\n{MARK}t1: attempt 1/4: crashed\nmore\n{MARK}t2: redo\n");
        assert_eq!(relay(&out), 2);
        assert_eq!(relay("nothing here"), 0);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "t1: attempt 1/4: crashed\nt2: redo\n");
        std::env::remove_var(RETRY_LOG_ENV);
    }
}
