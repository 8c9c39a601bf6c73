//! Process stdio streams: the wire format shared by the host ([`open_stream`]) and the agent.
//!
//! Process stdio does not travel in RPCs. After `CreateContainer`/`ExecProcess` the host opens
//! one stream per channel it asked for (`StdioChannels`) on the agent's stdio port
//! ([`crate::STDIO_VSOCK_PORT`] in the guest; `PATH.stdio` for an agent serving on
//! `unix:PATH`). On a fresh stream the host sends one header line, a JSON [`StreamHeader`] and
//! `\n`, at most [`MAX_HEADER_LEN`] bytes; the agent answers `OK\n` or `ERR <message>\n`. From
//! then on the stream carries raw bytes:
//!
//! - `stdin`: host to process. The host's half-close (`shutdown(Write)`) is EOF: the agent
//!   closes the process's stdin.
//! - `stdout`/`stderr`: process to host. When every writer of the process side is closed the
//!   agent shuts its write side down and closes the stream.
//!
//! The agent reads a process's output only once its channel is attached, so nothing written
//! before the attach (or before the process exited) is lost.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::StdioChannels;

/// Longest header line, newline included.
pub const MAX_HEADER_LEN: usize = 4096;

/// Longest reply line, newline included (`ERR ` messages longer than this are cut).
pub const MAX_REPLY_LEN: usize = 1024;

/// The reply line that accepts an attachment.
pub const REPLY_OK: &[u8] = b"OK\n";

/// One stdio channel of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Host to process (fd 0).
    Stdin,
    /// Process fd 1 to host.
    Stdout,
    /// Process fd 2 to host.
    Stderr,
}

impl Channel {
    /// The channel's wire name: `stdin`, `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stdin => "stdin",
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which channels the host will attach to a process; the host-side twin of the protocol's
/// `StdioChannels` message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Channels {
    /// The host will open a stdin stream.
    pub stdin: bool,
    /// The host will open a stdout stream.
    pub stdout: bool,
    /// The host will open a stderr stream.
    pub stderr: bool,
}

impl Channels {
    /// Whether `channel` is one of them.
    pub fn contains(&self, channel: Channel) -> bool {
        match channel {
            Channel::Stdin => self.stdin,
            Channel::Stdout => self.stdout,
            Channel::Stderr => self.stderr,
        }
    }

    /// The protocol message.
    pub fn to_proto(self) -> StdioChannels {
        let mut m = StdioChannels::new();
        m.stdin = self.stdin;
        m.stdout = self.stdout;
        m.stderr = self.stderr;
        m
    }
}

impl From<&StdioChannels> for Channels {
    fn from(m: &StdioChannels) -> Self {
        Channels {
            stdin: m.stdin,
            stdout: m.stdout,
            stderr: m.stderr,
        }
    }
}

/// The first line of a stdio stream: which process and channel the stream attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// The container id.
    pub container_id: String,
    /// The exec id (`""` for the container's init process).
    pub exec_id: String,
    /// The channel.
    pub channel: Channel,
}

/// Errors of the stdio stream protocol.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The header line would be, or is, longer than [`MAX_HEADER_LEN`].
    #[error("stdio header longer than {MAX_HEADER_LEN} bytes ({len} bytes)")]
    HeaderTooLong {
        /// Its length (so far, when reading).
        len: usize,
    },
    /// The header line is not a valid [`StreamHeader`].
    #[error("bad stdio header {line:?}: {reason}")]
    BadHeader {
        /// The line (lossy UTF-8, cut to 200 bytes).
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent refused the attachment (`ERR <message>`).
    #[error("the agent refused the {channel} stream of {container_id:?}/{exec_id:?}: {message}")]
    Refused {
        /// The container id asked for.
        container_id: String,
        /// The exec id asked for.
        exec_id: String,
        /// The channel asked for.
        channel: Channel,
        /// The agent's message.
        message: String,
    },
    /// The reply line is neither `OK` nor `ERR <message>`, or is too long.
    #[error("unexpected stdio reply {0:?} (expected \"OK\" or \"ERR <message>\")")]
    BadReply(String),
    /// The peer closed the stream before a full line.
    #[error("the peer closed the stdio stream before a full line ({0} bytes read)")]
    Closed(usize),
    /// Reading or writing the stream failed (a timeout included).
    #[error("stdio stream I/O: {0}")]
    Io(#[from] io::Error),
}

impl StreamHeader {
    /// The header line, `\n` included; [`StdioError::HeaderTooLong`] past [`MAX_HEADER_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, StdioError> {
        let mut line = serde_json::to_vec(self).map_err(|e| StdioError::BadHeader {
            line: String::new(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        if line.len() > MAX_HEADER_LEN {
            return Err(StdioError::HeaderTooLong { len: line.len() });
        }
        Ok(line)
    }

    /// Parses one header line (with or without its `\n`).
    pub fn decode(line: &[u8]) -> Result<Self, StdioError> {
        if line.len() > MAX_HEADER_LEN {
            return Err(StdioError::HeaderTooLong { len: line.len() });
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        serde_json::from_slice(body).map_err(|e| StdioError::BadHeader {
            line: lossy_prefix(body, 200),
            reason: e.to_string(),
        })
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes (newline included), one byte at a
/// time so that nothing after the newline is consumed. [`StdioError::Closed`] on EOF before the
/// newline, [`StdioError::HeaderTooLong`] past `max`.
pub fn read_line(stream: &mut impl Read, max: usize) -> Result<Vec<u8>, StdioError> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(StdioError::Closed(line.len())),
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return Ok(line);
                }
                if line.len() >= max {
                    return Err(StdioError::HeaderTooLong { len: line.len() });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StdioError::Io(e)),
        }
    }
}

/// Reads and parses the header line of a stream (the agent's side).
pub fn read_header(stream: &mut impl Read) -> Result<StreamHeader, StdioError> {
    let line = read_line(stream, MAX_HEADER_LEN)?;
    StreamHeader::decode(&line)
}

/// The refusal line `ERR <message>\n`: newlines in `message` become spaces and the line is cut
/// to [`MAX_REPLY_LEN`] bytes (at a character boundary).
pub fn error_reply(message: &str) -> Vec<u8> {
    let mut text: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let room = MAX_REPLY_LEN - "ERR \n".len();
    if text.len() > room {
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    format!("ERR {text}\n").into_bytes()
}

/// Parses a reply line: `Ok(Ok(()))` for `OK`, `Ok(Err(message))` for `ERR <message>`.
pub fn parse_reply(line: &[u8]) -> Result<Result<(), String>, StdioError> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if body == b"OK" {
        return Ok(Ok(()));
    }
    match body.strip_prefix(b"ERR ") {
        Some(msg) => Ok(Err(String::from_utf8_lossy(msg).into_owned())),
        None => Err(StdioError::BadReply(lossy_prefix(body, 200))),
    }
}

/// The host side: sends `header` on a freshly connected `stream` (after any hybrid-vsock
/// handshake), waits at most `timeout` for each of the write and the reply, and returns the
/// stream ready for raw bytes, with its timeouts cleared.
pub fn open_stream(
    mut stream: UnixStream,
    header: &StreamHeader,
    timeout: Duration,
) -> Result<UnixStream, StdioError> {
    let line = header.encode()?;
    let timeout = timeout.max(Duration::from_millis(1));
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&line)?;
    let reply = match read_line(&mut stream, MAX_REPLY_LEN) {
        Ok(reply) => reply,
        Err(StdioError::HeaderTooLong { len }) => {
            return Err(StdioError::BadReply(format!(
                "<{len} bytes without a newline>"
            )))
        }
        Err(e) => return Err(e),
    };
    if let Err(message) = parse_reply(&reply)? {
        return Err(StdioError::Refused {
            container_id: header.container_id.clone(),
            exec_id: header.exec_id.clone(),
            channel: header.channel,
            message,
        });
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// The stdio socket of an agent serving ttrpc on the unix socket `path`: `PATH.stdio`.
pub fn stdio_socket_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".stdio");
    PathBuf::from(s)
}

/// At most `max` bytes of `bytes` as lossy UTF-8, for messages.
fn lossy_prefix(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn header() -> StreamHeader {
        StreamHeader {
            container_id: "c1".into(),
            exec_id: "e\"1".into(),
            channel: Channel::Stderr,
        }
    }

    #[test]
    fn header_round_trip() {
        let line = header().encode().unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(String::from_utf8_lossy(&line).contains("\"channel\":\"stderr\""));
        assert_eq!(StreamHeader::decode(&line).unwrap(), header());
        assert_eq!(
            StreamHeader::decode(&line[..line.len() - 1]).unwrap(),
            header()
        );
        let input = [line.as_slice(), b"raw bytes"].concat();
        let mut r = input.as_slice();
        assert_eq!(read_header(&mut r).unwrap(), header());
        assert_eq!(r, b"raw bytes");
    }

    #[test]
    fn oversize_headers_are_rejected() {
        let big = StreamHeader {
            container_id: "x".repeat(MAX_HEADER_LEN),
            ..header()
        };
        assert!(matches!(
            big.encode(),
            Err(StdioError::HeaderTooLong { .. })
        ));
        let long = vec![b'{'; MAX_HEADER_LEN + 10];
        match read_header(&mut long.as_slice()) {
            Err(StdioError::HeaderTooLong { len }) => assert_eq!(len, MAX_HEADER_LEN),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            StreamHeader::decode(&long),
            Err(StdioError::HeaderTooLong { .. })
        ));
    }

    #[test]
    fn garbage_headers_are_rejected() {
        for bad in [
            &b"\n"[..],
            b"hello\n",
            b"{\"container_id\":\"c\",\"exec_id\":\"\"}\n",
            b"{\"container_id\":\"c\",\"exec_id\":\"\",\"channel\":\"stdall\"}\n",
            b"{\"container_id\":1,\"exec_id\":\"\",\"channel\":\"stdin\"}\n",
            b"\xff\xfe\n",
        ] {
            let err = StreamHeader::decode(bad).unwrap_err();
            assert!(
                matches!(err, StdioError::BadHeader { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(matches!(
            read_header(&mut &b"{\"container_id\""[..]),
            Err(StdioError::Closed(15))
        ));
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(REPLY_OK).unwrap(), Ok(()));
        assert_eq!(
            parse_reply(&error_reply("no such\nprocess")).unwrap(),
            Err("no such process".to_string())
        );
        assert!(matches!(
            parse_reply(b"OK \n"),
            Err(StdioError::BadReply(_))
        ));
        assert!(matches!(
            parse_reply(b"ERR\n"),
            Err(StdioError::BadReply(_))
        ));
        let long = error_reply(&"é".repeat(MAX_REPLY_LEN));
        assert!(long.len() <= MAX_REPLY_LEN);
        assert!(std::str::from_utf8(&long).is_ok());
    }

    /// A fake agent on the other end of a socketpair: reads the header, answers `reply`.
    fn fake_agent(reply: &'static [u8]) -> (UnixStream, std::thread::JoinHandle<StreamHeader>) {
        let (host, agent) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut agent = agent;
            let h = read_header(&mut agent).unwrap();
            agent.write_all(reply).unwrap();
            // After an ERR the host may already have closed its end.
            let _ = agent.write_all(b"payload\n");
            h
        });
        (host, t)
    }

    #[test]
    fn open_stream_ok_leaves_raw_bytes() {
        let (host, t) = fake_agent(REPLY_OK);
        let stream = open_stream(host, &header(), Duration::from_secs(5)).unwrap();
        assert_eq!(t.join().unwrap(), header());
        assert_eq!(stream.read_timeout().unwrap(), None);
        let mut line = String::new();
        io::BufReader::new(stream).read_line(&mut line).unwrap();
        assert_eq!(line, "payload\n");
    }

    #[test]
    fn open_stream_err_reply_is_typed() {
        let (host, t) = fake_agent(b"ERR no process c1/e1\n");
        let err = open_stream(host, &header(), Duration::from_secs(5)).unwrap_err();
        t.join().unwrap();
        match err {
            StdioError::Refused {
                message, channel, ..
            } => {
                assert_eq!(message, "no process c1/e1");
                assert_eq!(channel, Channel::Stderr);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn open_stream_times_out_on_a_silent_agent() {
        let (host, _agent) = UnixStream::pair().unwrap();
        let err = open_stream(host, &header(), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, StdioError::Io(_)), "{err}");
    }

    #[test]
    fn stdio_path_appends_suffix() {
        assert_eq!(
            stdio_socket_path(Path::new("/run/a.sock")),
            Path::new("/run/a.sock.stdio")
        );
    }

    #[test]
    fn channels_convert() {
        let c = Channels {
            stdin: true,
            stdout: false,
            stderr: true,
        };
        assert_eq!(Channels::from(&c.to_proto()), c);
        assert!(c.contains(Channel::Stdin) && !c.contains(Channel::Stdout));
    }
}
