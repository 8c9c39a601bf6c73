//! Port forwarding into the guest (CRI `PortForward`, `kubectl port-forward`): the wire format
//! of the agent's port-forward streams on [`crate::PORT_FORWARD_VSOCK_PORT`], and the copy
//! loop ([`pump`]) both sides run on an open stream.
//!
//! containerd's CRI plugin serves `PortForward` itself: it dials `localhost:<port>` inside the
//! pod's network namespace on the host. The shim redirects those connections to a listener of
//! its own and opens one stream per connection to the agent:
//!
//! 1. Host to agent: one request line, `PORT <port>\n` (`port` in 1..=65535, decimal, no sign
//!    or leading zero), at most [`MAX_REQUEST_LEN`] bytes.
//! 2. The agent dials `127.0.0.1:<port>` in the pod's network namespace in the guest (the
//!    VM's, where every container of the pod listens) and answers `OK\n`, or
//!    `ERR <message>\n` when it cannot (nothing listens, too many streams); replies are the
//!    stdio streams' ([`crate::stdio::parse_reply`]), at most
//!    [`crate::stdio::MAX_REPLY_LEN`] bytes.
//! 3. Then raw bytes both ways; a half-close on one side is passed on to the other.
//!
//! At most [`MAX_STREAMS`] streams are open at once, on each side; more are refused.

mod pump;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use pump::{pump, PumpEnd, LINGER, PUMP_BUFFER};

/// Longest request line, newline included (`PORT 65535\n` is 11 bytes).
pub const MAX_REQUEST_LEN: usize = 16;

/// Most port-forward streams open at once in one pod, on each side.
pub const MAX_STREAMS: usize = 64;

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad port-forward request {line:?}: {reason}")]
pub struct RequestError {
    /// The line (lossy UTF-8).
    pub line: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The request line for `port`.
pub fn request_line(port: u16) -> Vec<u8> {
    format!("PORT {port}\n").into_bytes()
}

/// Parses a request line (with or without its `\n`): strictly `PORT <1..=65535>`.
pub fn parse_request(line: &[u8]) -> Result<u16, RequestError> {
    let bad = |reason| RequestError {
        line: String::from_utf8_lossy(&line[..line.len().min(MAX_REQUEST_LEN)]).into_owned(),
        reason,
    };
    if line.len() > MAX_REQUEST_LEN {
        return Err(bad("too long"));
    }
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let digits = body
        .strip_prefix(b"PORT ")
        .ok_or_else(|| bad("not PORT <n>"))?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad("the port is not a decimal number"));
    }
    if digits[0] == b'0' {
        return Err(bad("the port has a leading zero, or is 0"));
    }
    let port: u32 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| bad("the port is not a decimal number"))?;
    u16::try_from(port).map_err(|_| bad("the port is above 65535"))
}

/// Where an agent serving ttrpc on `unix:PATH` serves port-forward streams: `PATH.portfwd`.
pub fn port_forward_socket_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".portfwd");
    PathBuf::from(p)
}
