//! Bridges a process's stdio between containerd (FIFOs, or `file://` log paths) and the
//! agent's per-channel vsock streams.
//!
//! One thread per channel: stdout/stderr copy the agent stream into containerd's FIFO and
//! close it at the stream's end (the process's last writer is gone), which is what lets
//! `ctr`/CRI see EOF; stdin copies the FIFO into the agent stream and half-closes it at the
//! FIFO's EOF or on `CloseIO`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_agent_protocol::stdio::{Channel, Channels};
use moat_agent_protocol::AgentClient;

/// Errors attaching stdio.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A stdio URI of a kind moat does not handle.
    #[error("stdio {uri:?}: only FIFO paths and file:// URIs are supported")]
    Unsupported {
        /// The URI.
        uri: String,
    },
    /// Opening the agent stream failed.
    #[error("opening {channel} of {container}/{exec}: {why}")]
    Stream {
        /// Container id.
        container: String,
        /// Exec id ("" for the init process).
        exec: String,
        /// Which channel.
        channel: Channel,
        /// Why.
        why: String,
    },
}

/// A process's stdio as containerd gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO ("" = none).
    pub stdin: String,
    /// stdout FIFO or `file://` URI ("" = none).
    pub stdout: String,
    /// stderr FIFO or `file://` URI ("" = none; unused with a terminal).
    pub stderr: String,
    /// A pty: stdout carries the terminal's output, there is no stderr.
    pub terminal: bool,
}

impl StdioPaths {
    /// The channels the agent will be asked for.
    pub fn channels(&self) -> Channels {
        Channels {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.terminal && !self.stderr.is_empty(),
        }
    }

    /// Checks that every path is one this module can open.
    pub fn check(&self) -> Result<(), IoError> {
        for uri in [&self.stdin, &self.stdout, &self.stderr] {
            target(uri)?;
        }
        if self.stdin.starts_with("file://") {
            return Err(IoError::Unsupported {
                uri: self.stdin.clone(),
            });
        }
        Ok(())
    }
}

/// Where an output URI points.
fn target(uri: &str) -> Result<Option<(PathBuf, bool)>, IoError> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Some((PathBuf::from(path), true)));
    }
    if uri.starts_with('/') {
        return Ok(Some((PathBuf::from(uri), false)));
    }
    Err(IoError::Unsupported { uri: uri.into() })
}

/// Counts the output copiers still running, so an exit can wait for the output.
#[derive(Default)]
struct Pending {
    left: Mutex<usize>,
    cond: Condvar,
}

/// The running stdio of one process.
pub struct ProcessIo {
    stdin: Option<UnixStream>,
    stdin_fifo: Option<PathBuf>,
    outputs: Arc<Pending>,
    threads: Vec<JoinHandle<()>>,
}

impl ProcessIo {
    /// Opens the agent streams for process (`container`, `exec`) and starts copying. Call it
    /// after the create/exec RPC that announced `paths.channels()`.
    pub fn attach(
        client: &AgentClient,
        container: &str,
        exec: &str,
        paths: &StdioPaths,
    ) -> Result<ProcessIo, IoError> {
        let open = |channel| {
            client
                .open_stdio(container, exec, channel)
                .map_err(|e| IoError::Stream {
                    container: container.into(),
                    exec: exec.into(),
                    channel,
                    why: e.to_string(),
                })
        };
        let channels = paths.channels();
        let outputs = Arc::new(Pending::default());
        let mut io = ProcessIo {
            stdin: None,
            stdin_fifo: None,
            outputs: outputs.clone(),
            threads: Vec::new(),
        };
        for (channel, uri) in [
            (Channel::Stdout, &paths.stdout),
            (Channel::Stderr, &paths.stderr),
        ] {
            if !channels.contains(channel) {
                continue;
            }
            let stream = open(channel)?;
            let (path, is_file) = target(uri)?.expect("channel implies a path");
            *outputs.left.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let outputs = outputs.clone();
            io.threads.push(std::thread::spawn(move || {
                copy_out(stream, &path, is_file);
                let mut left = outputs.left.lock().unwrap_or_else(|p| p.into_inner());
                *left -= 1;
                outputs.cond.notify_all();
            }));
        }
        if channels.stdin {
            let stream = open(Channel::Stdin)?;
            let fifo = PathBuf::from(&paths.stdin);
            let writer = stream.try_clone().map_err(|e| IoError::Stream {
                container: container.into(),
                exec: exec.into(),
                channel: Channel::Stdin,
                why: e.to_string(),
            })?;
            io.stdin = Some(stream);
            io.stdin_fifo = Some(fifo.clone());
            io.threads
                .push(std::thread::spawn(move || copy_in(&fifo, writer)));
        }
        Ok(io)
    }

    /// Half-closes stdin (containerd's `CloseIO`): the process reads EOF.
    pub fn close_stdin(&self) {
        if let Some(s) = &self.stdin {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// Waits (at most `timeout`) until stdout and stderr have reached their FIFOs.
    pub fn wait_output(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = self.outputs.left.lock().unwrap_or_else(|p| p.into_inner());
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            left = self
                .outputs
                .cond
                .wait_timeout(left, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Ends the stdin copier even if no writer ever opened the FIFO (its blocking open
    /// returns when we open the write side ourselves); output copiers end with their streams.
    pub fn shutdown(&mut self) {
        self.close_stdin();
        if let Some(fifo) = &self.stdin_fifo {
            // Unblocks a reader still waiting in open(2); harmless if it already runs.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo);
        }
        if let Some(s) = self.stdin.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Copies an agent output stream into containerd's FIFO (or log file); keeps draining the
/// stream if the reader went away, so the process never blocks on a dead pipe.
fn copy_out(mut stream: UnixStream, path: &Path, is_file: bool) {
    let mut out: Option<File> = if is_file {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| log::warn!("opening {}: {e}", path.display()))
            .ok()
    } else {
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| log::warn!("opening FIFO {}: {e}", path.display()))
            .ok()
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = out.as_mut() {
            if let Err(e) = f.write_all(&buf[..n]) {
                log::debug!("writing {}: {e}; discarding the rest", path.display());
                out = None;
            }
        }
    }
}

/// Copies containerd's stdin FIFO into the agent stream, half-closing it at EOF.
fn copy_in(fifo: &Path, mut stream: UnixStream) {
    let mut f = match File::open(fifo) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("opening stdin FIFO {}: {e}", fifo.display());
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_paths() {
        let p = StdioPaths {
            stdin: "/f/in".into(),
            stdout: "/f/out".into(),
            stderr: "/f/err".into(),
            terminal: true,
        };
        assert_eq!(
            p.channels(),
            Channels {
                stdin: true,
                stdout: true,
                stderr: false
            }
        );
        assert!(p.check().is_ok());
        let p = StdioPaths {
            stdout: "binary:///usr/bin/logger".into(),
            ..Default::default()
        };
        assert!(p.check().unwrap_err().to_string().contains("binary://"));
        let p = StdioPaths {
            stdin: "file:///x".into(),
            ..Default::default()
        };
        assert!(p.check().is_err());
    }

    #[test]
    fn copy_out_reaches_a_file_and_drains_after_failure() {
        let dir = std::env::temp_dir().join(format!("moat-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out.log");
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = {
            let log = log.clone();
            std::thread::spawn(move || copy_out(b, &log, true))
        };
        a.write_all(b"hello\n").unwrap();
        drop(a);
        t.join().unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
        // An unopenable target: the stream is still drained to its end.
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || copy_out(b, Path::new("/nonexistent/dir/f"), false));
        a.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(a);
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copy_in_half_closes_at_fifo_eof() {
        let dir = std::env::temp_dir().join(format!("moat-io-in-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = {
            let fifo = fifo.clone();
            std::thread::spawn(move || copy_in(&fifo, a))
        };
        std::fs::write(&fifo, b"payload").unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"payload");
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
