//! The channel between the agent and a container's init process: a `SOCK_STREAM` socketpair
//! carrying length-prefixed JSON messages (4-byte little-endian length, then the JSON).
//!
//! The agent's end is in the agent; the init process gets the other end as fd
//! [`INIT_SYNC_FD`]. The socket is close-on-exec in the init process, so when the container's
//! program starts, the agent reads end-of-file: that is how it learns `execve` succeeded.
//!
//! A message may carry file descriptors (`SCM_RIGHTS`): the init process of a terminal
//! process sends the pty master it allocated inside the container with
//! [`InitMessage::Terminal`]. The reader takes them close-on-exec, at most [`MAX_FDS`] per
//! message, and [`recv`] refuses (and closes) any on a message that should carry none.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::unix::io::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The fd number of the sync socket in the init process.
pub const INIT_SYNC_FD: i32 = 3;

/// Largest message either side accepts (a spec plus compiled seccomp filters fit easily).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Most file descriptors a message may carry (`SCM_RIGHTS`): the pty master rides with
/// [`InitMessage::Terminal`]. A message with more fails with [`SyncError::TooManyFds`] (the
/// kernel closes those that did not fit, the reader those that did).
pub const MAX_FDS: usize = 1;

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
    /// A message carried more than [`MAX_FDS`] file descriptors.
    #[error("a sync message carried more than {MAX_FDS} file descriptor(s)")]
    TooManyFds,
    /// A message that carries no file descriptors came with some (they were closed).
    #[error("a sync message came with {0} unexpected file descriptor(s)")]
    UnexpectedFds(usize),
}

/// What the init process reports to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum InitMessage {
    /// The first process created a user namespace: write its id maps, then send
    /// [`AgentMessage::UserNsMapped`].
    MapUserNs,
    /// The pid (in the agent's PID namespace) of the process that will exec the program.
    Pid(i32),
    /// The master of the process's pty, allocated inside the container, rides along
    /// (`SCM_RIGHTS`); only for a terminal process, after [`InitMessage::Pid`], before
    /// [`InitMessage::Ready`].
    Terminal,
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
    send_with_fds(sock, msg, &[])
}

/// Writes one message with `fds` attached (`SCM_RIGHTS`, on its first bytes).
pub fn send_with_fds<T: Serialize>(
    sock: &mut UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SyncError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(SyncError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let sent = loop {
        let iov = [IoSlice::new(&frame)];
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            r => break r.map_err(io::Error::from)?,
        }
    };
    // A stream socket may take part of a frame (a signal); the fds went with the first part.
    sock.write_all(&frame[sent..])?;
    Ok(())
}

/// Reads one message that carries no file descriptors, waiting at most `timeout` (`None`:
/// forever). End of file before a message starts is [`SyncError::Closed`].
pub fn recv<T: DeserializeOwned>(
    sock: &mut UnixStream,
    timeout: Option<Duration>,
) -> Result<T, SyncError> {
    let (msg, fds) = recv_with_fds(sock, timeout)?;
    if !fds.is_empty() {
        return Err(SyncError::UnexpectedFds(fds.len()));
    }
    Ok(msg)
}

/// Reads one message and the file descriptors that came with it (close-on-exec, at most
/// [`MAX_FDS`]), as [`recv`] does.
pub fn recv_with_fds<T: DeserializeOwned>(
    sock: &mut UnixStream,
    timeout: Option<Duration>,
) -> Result<(T, Vec<OwnedFd>), SyncError> {
    sock.set_read_timeout(timeout)?;
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    if !fill(sock, &mut len, &mut fds, timeout)? {
        return Err(SyncError::Closed);
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(SyncError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    if !fill(sock, &mut body, &mut fds, timeout)? {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok((serde_json::from_slice(&body)?, fds))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Fills `buf` (never reading past it, so no fd of a later message is taken), adding the
/// fds that come with the bytes to `fds`. `Ok(false)`: end of file before the first byte;
/// end of file after it is an `UnexpectedEof` error.
fn fill(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    timeout: Option<Duration>,
) -> Result<bool, SyncError> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(sock, &mut buf[got..], fds) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(SyncError::Io(e)) if is_timeout(&e) => {
                return Err(SyncError::Timeout(timeout.unwrap_or_default()))
            }
            Err(e) => return Err(e),
        }
    }
    if fds.len() > MAX_FDS {
        return Err(SyncError::TooManyFds);
    }
    Ok(true)
}

/// One `recvmsg` into `buf`, taking ownership of any fds that came with it.
fn read_some(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, SyncError> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
            Ok(msg) => msg,
        };
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in this process for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(SyncError::TooManyFds);
        }
        return Ok(msg.bytes);
    }
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

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: pipe just returned these fds, owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) }
    }

    #[test]
    fn fds_ride_with_their_message_close_on_exec() {
        use std::io::Read;
        use std::os::unix::io::AsFd;
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (r, w) = pipe();
        send(&mut a, &InitMessage::Pid(7)).unwrap();
        send_with_fds(&mut a, &InitMessage::Terminal, &[w.as_fd()]).unwrap();
        send(&mut a, &InitMessage::Ready).unwrap();
        drop(w);
        let (m, fds) = recv_with_fds::<InitMessage>(&mut b, None).unwrap();
        assert_eq!((m, fds.len()), (InitMessage::Pid(7), 0));
        let (m, mut fds) = recv_with_fds::<InitMessage>(&mut b, None).unwrap();
        assert_eq!((m, fds.len()), (InitMessage::Terminal, 1));
        let fd = fds.pop().unwrap();
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fd is not close-on-exec"
        );
        std::fs::File::from(fd).write_all(b"through").unwrap();
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
        let (m, fds) = recv_with_fds::<InitMessage>(&mut b, None).unwrap();
        assert_eq!((m, fds.len()), (InitMessage::Ready, 0));
    }

    #[test]
    fn unexpected_and_surplus_fds_are_refused() {
        use std::os::unix::io::AsFd;
        let (r, w) = pipe();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send_with_fds(&mut a, &InitMessage::Ready, &[w.as_fd()]).unwrap();
        assert!(matches!(
            recv::<InitMessage>(&mut b, None),
            Err(SyncError::UnexpectedFds(1))
        ));
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let many = [r.as_fd(), w.as_fd(), r.as_fd(), w.as_fd()];
        send_with_fds(&mut a, &InitMessage::Terminal, &many).unwrap();
        assert!(matches!(
            recv_with_fds::<InitMessage>(&mut b, None),
            Err(SyncError::TooManyFds)
        ));
    }

    #[test]
    fn a_truncated_message_is_not_a_clean_close() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&10u32.to_le_bytes()).unwrap();
        a.write_all(b"{").unwrap();
        drop(a);
        let e = recv::<InitMessage>(&mut b, None).unwrap_err();
        assert!(
            matches!(&e, SyncError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e}"
        );
    }
}
