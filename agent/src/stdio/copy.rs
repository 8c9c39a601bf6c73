//! The copy loops between an attached stream and a process's pipe or pty master: blocking
//! I/O, one thread per attached channel.

use std::fs::File;
use std::io::{self, Read, Write};

use super::Attachment;
use crate::listener::Conn;

/// Size of a copy loop's buffer.
pub(super) const BUF_SIZE: usize = 64 * 1024;

/// Stream to process until the host's EOF (its `shutdown(Write)` or close), then closes the
/// pipe's write end so the process reads EOF. On a pty the loop just stops (the master stays
/// open for the output and for resizes). A process that closed its stdin ends the loop too.
pub(super) fn stdin(who: &str, mut conn: Conn, attachment: Attachment) {
    let tty = attachment.tty;
    let mut sink = File::from(attachment.fd);
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total: u64 = 0;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => {
                tracing::debug!(
                    "stdin of {who}: EOF from the host after {total} bytes{}",
                    if tty { "" } else { "; closing the pipe" }
                );
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::info!("stdin of {who}: reading the stream after {total} bytes: {e}");
                break;
            }
        };
        if let Err(e) = sink.write_all(&buf[..n]) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                tracing::debug!("stdin of {who}: the process closed its stdin after {total} bytes");
            } else {
                tracing::info!("stdin of {who}: writing to the process after {total} bytes: {e}");
            }
            break;
        }
        total += n as u64;
    }
    // Dropping `sink` closes this write end of the pipe (the only one), or this copy of the
    // pty master (others remain).
}

/// Process to stream until the process side's EOF (every writer closed; EIO on a pty master
/// once the last slave fd closed), then shuts the stream's write side down and closes it. A
/// host that went away ends the loop and closes the process's side (its writes then fail with
/// EPIPE).
pub(super) fn output(who: &str, mut conn: Conn, attachment: Attachment) {
    let tty = attachment.tty;
    let mut source = File::from(attachment.fd);
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total: u64 = 0;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if tty && e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!("{who}: reading the process's output after {total} bytes: {e}");
                break;
            }
        };
        if let Err(e) = conn.write_all(&buf[..n]) {
            tracing::info!("{who}: the host stopped reading after {total} bytes: {e}");
            return;
        }
        total += n as u64;
    }
    tracing::debug!("{who}: EOF after {total} bytes; closing the stream");
    if let Err(e) = conn.shutdown_write() {
        tracing::debug!("{who}: shutdown(Write): {e}");
    }
}
