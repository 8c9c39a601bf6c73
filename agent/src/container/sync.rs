//! The channel between the agent and a container's init process: a `SOCK_STREAM` socketpair
//! carrying length-prefixed JSON messages (4-byte little-endian length, then the JSON).
//!
//! The agent's end is in the agent; the init process gets the other end as fd
//! [`INIT_SYNC_FD`]. The socket is close-on-exec in the init process, so when the container's
//! program starts, the agent reads end-of-file: that is how it learns `execve` succeeded.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The fd number of the sync socket in the init process.
pub const INIT_SYNC_FD: i32 = 3;

/// Largest message either side accepts (a spec plus compiled seccomp filters fit easily).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Errors of the sync channel.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Reading or writing the socket failed.
    #[error("sync socket: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the socket.
    #[error("the init process closed the sync socket")]
    Closed,
    /// A message exceeded [`MAX_MESSAGE`].
    #[error("sync message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// A message was not valid JSON of the expected type.
    #[error("malformed sync message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// No message arrived in time.
    #[error("no sync message within {0:?}")]
    Timeout(Duration),
}

/// What the init process reports to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum InitMessage {
    /// The first process created a user namespace: write its id maps, then send
    /// [`AgentMessage::UserNsMapped`].
    MapUserNs,
    /// The pid (in the agent's PID namespace) of the process that will exec the program.
    Pid(i32),
    /// Setup is done; waiting for [`AgentMessage::Start`].
    Ready,
    /// Setup or exec failed; the process exits.
    Error(String),
}

/// What the agent tells the init process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum AgentMessage {
    /// The user namespace's id maps are written.
    UserNsMapped,
    /// Exec the program.
    Start,
}

/// Writes one message.
pub fn send<T: Serialize>(sock: &mut UnixStream, msg: &T) -> Result<(), SyncError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(SyncError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    sock.write_all(&frame)?;
    Ok(())
}

/// Reads one message, waiting at most `timeout` (`None`: forever). End of file before a
/// message starts is [`SyncError::Closed`].
pub fn recv<T: DeserializeOwned>(
    sock: &mut UnixStream,
    timeout: Option<Duration>,
) -> Result<T, SyncError> {
    sock.set_read_timeout(timeout)?;
    let mut len = [0u8; 4];
    match read_exact_or_eof(sock, &mut len) {
        Ok(true) => {}
        Ok(false) => return Err(SyncError::Closed),
        Err(e) if is_timeout(&e) => return Err(SyncError::Timeout(timeout.unwrap_or_default())),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(SyncError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).map_err(|e| {
        if is_timeout(&e) {
            SyncError::Timeout(timeout.unwrap_or_default())
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            SyncError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(serde_json::from_slice(&body)?)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Fills `buf`; `Ok(false)` on end of file before the first byte.
fn read_exact_or_eof(sock: &mut UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_closed() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &InitMessage::Pid(42)).unwrap();
        send(&mut a, &InitMessage::Error("boom".into())).unwrap();
        assert_eq!(
            recv::<InitMessage>(&mut b, None).unwrap(),
            InitMessage::Pid(42)
        );
        assert_eq!(
            recv::<InitMessage>(&mut b, None).unwrap(),
            InitMessage::Error("boom".into())
        );
        drop(a);
        assert!(matches!(
            recv::<InitMessage>(&mut b, None),
            Err(SyncError::Closed)
        ));
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        assert!(matches!(
            recv::<InitMessage>(&mut b, None),
            Err(SyncError::TooLarge(_))
        ));
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&3u32.to_le_bytes()).unwrap();
        a.write_all(b"{{{").unwrap();
        assert!(matches!(
            recv::<InitMessage>(&mut b, None),
            Err(SyncError::Malformed(_))
        ));
        let (_a, mut b) = UnixStream::pair().unwrap();
        assert!(matches!(
            recv::<InitMessage>(&mut b, Some(Duration::from_millis(20))),
            Err(SyncError::Timeout(_))
        ));
    }
}
