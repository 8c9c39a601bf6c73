//! The client side of a shim's ops socket (the `moat` tool's).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exposition::MAX_TEXT;
use super::http::{read_body, read_head, status_code};
use super::status::PodStatus;

/// How long a request may take (the shim asks the agent for a scrape within its deadlines).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors talking to a shim.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// No shim answers on the socket.
    #[error("{path}: no shim answers: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The shim answered with an error.
    #[error("{path}: the shim answered {status}: {message}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The HTTP status code.
        status: u16,
        /// Its text.
        message: String,
    },
    /// The shim's answer could not be read.
    #[error("{path}: unreadable answer: {what}")]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// Sends `METHOD TARGET` to the ops socket at `socket`; returns the stream after the
/// response head when the shim answered 200, with the head's extra bytes.
fn request(socket: &Path, method: &str, target: &str) -> Result<(UnixStream, Vec<u8>), OpsError> {
    let io = |source| OpsError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| OpsError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    // A busy shim answers (503) and closes before reading: its answer still counts.
    let sent = write!(s, "{method} {target} HTTP/1.1\r\nHost: moat\r\n\r\n");
    let head = match (read_head(&mut s), sent) {
        (Ok(head), _) => head,
        (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(io(e)),
    };
    let status = status_code(&head.first).ok_or_else(|| OpsError::Malformed {
        path: socket.to_path_buf(),
        what: format!("status line {:?}", head.first),
    })?;
    if status == 200 {
        return Ok((s, head.rest));
    }
    let body = read_body(&mut s, head, 64 << 10).unwrap_or_default();
    Err(OpsError::Refused {
        path: socket.to_path_buf(),
        status,
        message: String::from_utf8_lossy(&body).trim().to_string(),
    })
}

/// `GET target`: the body of a 200 answer (at most the exposition cap).
pub fn get(socket: &Path, target: &str) -> Result<Vec<u8>, OpsError> {
    let (mut s, rest) = request(socket, "GET", target)?;
    let head = super::http::Head {
        first: String::new(),
        headers: Vec::new(),
        rest,
    };
    read_body(&mut s, head, MAX_TEXT).map_err(|source| OpsError::Io {
        path: socket.to_path_buf(),
        source,
    })
}

/// The pod's status.
pub fn status(socket: &Path) -> Result<PodStatus, OpsError> {
    let body = get(socket, "/status")?;
    serde_json::from_slice(&body).map_err(|e| OpsError::Malformed {
        path: socket.to_path_buf(),
        what: e.to_string(),
    })
}

/// The pod's metrics (Prometheus text format 0.0.4).
pub fn metrics(socket: &Path) -> Result<String, OpsError> {
    let body = get(socket, "/metrics")?;
    String::from_utf8(body).map_err(|_| OpsError::Malformed {
        path: socket.to_path_buf(),
        what: "metrics are not UTF-8".into(),
    })
}

/// A stream to the pod's debug console (the shim proxies it to the guest), with bytes that
/// already arrived after the shim's answer.
pub fn console(socket: &Path) -> Result<(UnixStream, Vec<u8>), OpsError> {
    let (s, rest) = request(socket, "CONNECT", "/console")?;
    let io = |source| OpsError::Io {
        path: socket.to_path_buf(),
        source,
    };
    s.set_read_timeout(None).map_err(io)?;
    s.set_write_timeout(None).map_err(io)?;
    Ok((s, rest))
}
