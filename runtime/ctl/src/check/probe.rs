//! Asking a binary for its version (`BINARY --version`), with a deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a `--version` may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// Why a binary did not say its version.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// It could not be started.
    #[error("{path}: cannot run: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It did not finish in time (and was killed).
    #[error("{path} --version: no answer within {}s", DEADLINE.as_secs())]
    Timeout {
        /// The binary.
        path: PathBuf,
    },
    /// It failed.
    #[error("{path} --version: {status}{}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr) })]
    Failed {
        /// The binary.
        path: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of its stderr.
        stderr: String,
    },
}

/// `path --version`'s answer, on one line (a multi-line answer's lines joined with spaces).
pub fn version_of(path: &Path) -> Result<String, ProbeError> {
    let mut child = spawn(path).map_err(|source| ProbeError::Spawn {
        path: path.to_path_buf(),
        source,
    })?;
    // A version fits a pipe's buffer: wait for the exit, then read.
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < DEADLINE => {
                std::thread::sleep(Duration::from_millis(10))
            }
            result => {
                let _ = child.kill();
                let _ = child.wait();
                return match result {
                    Err(source) => Err(ProbeError::Spawn {
                        path: path.to_path_buf(),
                        source,
                    }),
                    Ok(_) => Err(ProbeError::Timeout {
                        path: path.to_path_buf(),
                    }),
                };
            }
        }
    };
    let stdout = read_some(child.stdout.take());
    if !status.success() {
        return Err(ProbeError::Failed {
            path: path.to_path_buf(),
            status,
            stderr: one_line(&read_some(child.stderr.take())),
        });
    }
    Ok(one_line(&stdout))
}

/// Starts `path --version`; again, briefly, while the file is busy (`ETXTBSY`: another
/// thread's child still holds it open for writing, as when it was just written).
fn spawn(path: &Path) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        let result = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The first 4 KiB of a finished child's output.
fn read_some(pipe: Option<impl Read>) -> String {
    let mut out = Vec::new();
    if let Some(p) = pipe {
        let _ = p.take(4096).read_to_end(&mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text`'s non-empty lines, trimmed, joined with spaces.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::write_file;

    #[test]
    fn versions_and_failures() {
        let dir = tempfile::TempDir::new().unwrap();
        let ok = write_file(
            dir.path(),
            "ok",
            b"#!/bin/sh\nprintf 'tool:\\n  Version: 1.2\\n'\n",
            0o755,
        );
        assert_eq!(version_of(&ok).unwrap(), "tool: Version: 1.2");
        let bad = write_file(
            dir.path(),
            "bad",
            b"#!/bin/sh\necho nope >&2\nexit 3\n",
            0o755,
        );
        let e = version_of(&bad).unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
        let e = version_of(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, ProbeError::Spawn { .. }), "{e}");
    }
}
