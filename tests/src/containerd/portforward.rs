//! A blocking client for CRI `PortForward` streams: what the kubelet's streaming server
//! (`k8s.io/kubelet/cri/streaming/portforward`, which containerd 1.6 and 1.7 serve) speaks over
//! a websocket. [`CriClient::port_forward`](super::cri::CriClient::port_forward) gives the URL
//! (`http://127.0.0.1:<port>/portforward/<token>`, good for one connection).
//!
//! The protocol: the client upgrades a `GET` of that URL (as `ws://`) to a websocket, offering
//! [`PROTOCOL`] (the server may also pick `""`; both are binary). For the N ports of the
//! `PortForward` request there are 2N channels: 2i carries port i's data both ways, 2i+1 its
//! errors (server to client). Every message is one byte of channel, then the payload; the first
//! payload on each channel is its port, 2 bytes little-endian; an error channel then carries
//! the text of what failed. When the forwarded connection ends the server closes the
//! websocket; the client cannot half-close.
//!
//! [`PortForward`] is one connection ([`PortForward::send`], [`PortForward::recv`]);
//! [`exchange`] sends one request to one port and collects the answer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::client::{generate_request, Response};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::http::{HeaderValue, StatusCode, Uri};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The subprotocol offered: binary channels, version 4 (port-forward's).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// The most [`exchange`] collects (data and error text together), and the largest message.
pub const MAX_EXCHANGE_BYTES: usize = 16 << 20;
/// The most ports one connection forwards: two channels each, and a channel is a byte.
pub const MAX_PORTS: usize = 127;
/// The longest HTTP answer head read during the upgrade.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// How much of an HTTP error answer's body an error quotes.
const BODY_QUOTED: usize = 512;
/// The websocket's own limit on one message (its channel byte and payload).
const MAX_MESSAGE: usize = MAX_EXCHANGE_BYTES + 1;

/// Why a port-forward connection failed.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// The URL is not a plain `http://` (or `ws://`) URL with a host (the URL, why).
    #[error("port-forward URL {0:?}: {1}")]
    Url(String, String),
    /// Not 1 to [`MAX_PORTS`] ports asked for (the number).
    #[error("port-forward of {0} ports: 1 to {MAX_PORTS} per connection")]
    Ports(usize),
    /// The streaming server did not take the connection (its `host:port`, why).
    #[error("port-forward: connecting to {0}: {1}")]
    Connect(String, #[source] io::Error),
    /// The websocket upgrade failed: an HTTP error (its status and body) or a bad answer (the
    /// `ws://` URL, why).
    #[error("port-forward: websocket upgrade of {0}: {1}")]
    Handshake(String, String),
    /// The server broke the channel protocol (what it did).
    #[error("port-forward protocol: {0}")]
    Protocol(String),
    /// Nothing came (or could be sent) within the connection's timeout.
    #[error("port-forward: timed out after {0:?}")]
    Timeout(Duration),
    /// The server has closed the connection (sending on it, or the server gone mid-way).
    #[error("port-forward: the server closed the connection")]
    Closed,
    /// No such port index (the index, how many ports the connection forwards).
    #[error("port-forward: no port #{0} (the connection forwards {1})")]
    NoSuchPort(usize, usize),
    /// A message, or what [`exchange`] collected, went over its limit (bytes).
    #[error("port-forward: more than {0} bytes")]
    TooLarge(usize),
    /// An I/O operation on the connection failed (what was being done, the error).
    #[error("port-forward: {0}: {1}")]
    Io(&'static str, #[source] io::Error),
    /// The websocket layer failed otherwise (what was being done, the error).
    #[error("port-forward: {0}: {1}")]
    WebSocket(&'static str, #[source] Box<WsError>),
}

/// What arrived on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes from the pod's port.
    Data {
        /// The port's index in the ports connected to.
        port_index: usize,
        /// What came.
        bytes: Vec<u8>,
    },
    /// Text on the port's error channel (`error forwarding port ...`).
    Error {
        /// The port's index in the ports connected to.
        port_index: usize,
        /// The text (lossy UTF-8).
        text: String,
    },
}

/// How [`exchange`] stopped collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (the forwarded connection ended).
    Closed,
    /// The timeout passed with the connection still open.
    TimedOut,
}

/// What [`exchange`] collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    /// What the pod's port sent back.
    pub data: Vec<u8>,
    /// The error channel's text, empty if none came.
    pub error: String,
    /// Whether the server closed or the timeout passed.
    pub end: End,
}

/// A connected port-forward websocket (blocking, with a read and write timeout).
#[derive(Debug)]
pub struct PortForward {
    ws: WebSocket<TcpStream>,
    ports: Vec<u16>,
    protocol: String,
    timeout: Duration,
    /// Events read while waiting for the port frames.
    pending: VecDeque<Event>,
    closed: bool,
}

impl PortForward {
    /// Connects to `url` (from `PortForward`; `http://` is dialled as `ws://`) for `ports`, the
    /// ports of that `PortForward` request in its order, and reads each channel's port frame
    /// (a port other than asked for is a [`PortForwardError::Protocol`]). `timeout` bounds the
    /// connect and is the read and write timeout of every later step.
    pub fn connect(url: &str, ports: &[u16], timeout: Duration) -> Result<Self, PortForwardError> {
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return Err(PortForwardError::Ports(ports.len()));
        }
        let timeout = timeout.max(Duration::from_millis(1));
        let ws_url = websocket_url(url)?;
        let uri: Uri = ws_url
            .parse()
            .map_err(|e| PortForwardError::Url(url.into(), format!("{e}")))?;
        let mut stream = dial(&uri, timeout)?;
        let (protocol, tail) = upgrade(&mut stream, uri, &ws_url, timeout)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws = WebSocket::from_partially_read(stream, tail, Role::Client, Some(config));
        let mut pf = Self {
            ws,
            ports: ports.to_vec(),
            protocol,
            timeout,
            pending: VecDeque::new(),
            closed: false,
        };
        pf.read_port_frames()?;
        Ok(pf)
    }

    /// The ports forwarded, by index.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The subprotocol the server chose: [`PROTOCOL`] or `""` (both binary).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Sets the read and write timeout of later calls.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), PortForwardError> {
        self.timeout = timeout.max(Duration::from_millis(1));
        set_timeouts(self.ws.get_ref(), self.timeout)
    }

    /// Sends `data` to port `port_index` (one message on its data channel).
    pub fn send(&mut self, port_index: usize, data: &[u8]) -> Result<(), PortForwardError> {
        let count = self.ports.len();
        let channel = match u8::try_from(port_index.saturating_mul(2)) {
            Ok(channel) if port_index < count => channel,
            _ => return Err(PortForwardError::NoSuchPort(port_index, count)),
        };
        if self.closed {
            return Err(PortForwardError::Closed);
        }
        let message = [&[channel], data].concat();
        self.ws
            .send(Message::Binary(message.into()))
            .map_err(|e| ws_error("sending", self.timeout, e))
    }

    /// The next event; `None` once the server has closed the connection. A timeout is a
    /// [`PortForwardError::Timeout`] after which the connection is still usable.
    pub fn recv(&mut self) -> Result<Option<Event>, PortForwardError> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(Some(event));
        }
        Ok(self
            .read_message()?
            .map(|(channel, payload)| event(channel, payload)))
    }

    /// Closes the websocket (a close frame, best effort) and the connection.
    pub fn close(mut self) {
        if !self.closed {
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
        }
    }

    /// Reads the first payload of every channel: its port, little-endian.
    fn read_port_frames(&mut self) -> Result<(), PortForwardError> {
        let channels = 2 * self.ports.len();
        let mut seen = vec![false; channels];
        for count in 0..channels {
            let (channel, payload) = loop {
                let Some((channel, payload)) = self.read_message()? else {
                    return Err(PortForwardError::Protocol(format!(
                        "the server closed after {count} of the {channels} port frames"
                    )));
                };
                match seen[channel] {
                    true => self.pending.push_back(event(channel, payload)),
                    false => break (channel, payload),
                }
            };
            let want = self.ports[channel / 2];
            if payload.get(..2) != Some(&want.to_le_bytes()[..]) {
                let head = &payload[..payload.len().min(8)];
                return Err(PortForwardError::Protocol(format!(
                    "channel {channel} began with {head:?}, not port {want} (little-endian)"
                )));
            }
            seen[channel] = true;
            if payload.len() > 2 {
                self.pending
                    .push_back(event(channel, payload[2..].to_vec()));
            }
        }
        Ok(())
    }

    /// The next binary message as (channel, payload); `None` once closed.
    fn read_message(&mut self) -> Result<Option<(usize, Vec<u8>)>, PortForwardError> {
        let (channels, protocol) = (2 * self.ports.len(), &self.protocol);
        while !self.closed {
            let message = match self.ws.read() {
                Ok(m) => m,
                Err(e) => match ws_error("receiving", self.timeout, e) {
                    PortForwardError::Closed => Message::Close(None),
                    e => return Err(e),
                },
            };
            let why = match message {
                Message::Binary(b) => match b.split_first() {
                    Some((&c, payload)) if usize::from(c) < channels => {
                        return Ok(Some((c.into(), payload.to_vec())))
                    }
                    Some((c, _)) => format!("a message on channel {c} of {channels}"),
                    None => continue,
                },
                Message::Text(t) => format!("text ({} bytes) under protocol {protocol:?}", t.len()),
                Message::Close(_) => {
                    // Send the close answer tungstenite queued, best effort.
                    let _ = self.ws.flush();
                    self.closed = true;
                    continue;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Err(PortForwardError::Protocol(why));
        }
        Ok(None)
    }
}

/// Connects to `url` for `port`, sends `request` to it, then collects the data and error text
/// that come back until the server closes the connection or `timeout` (counted from the start)
/// passes: a timeout ends the collection, [`Exchanged::end`] says which. More than
/// [`MAX_EXCHANGE_BYTES`] is an error.
pub fn exchange(
    url: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<Exchanged, PortForwardError> {
    exchange_bounded(url, port, request, timeout, MAX_EXCHANGE_BYTES)
}

/// [`exchange`], collecting `limit` bytes at most.
fn exchange_bounded(
    url: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
    limit: usize,
) -> Result<Exchanged, PortForwardError> {
    let deadline = Instant::now() + timeout;
    let mut pf = PortForward::connect(url, &[port], timeout)?;
    // A server already gone may have left its error text to read.
    match pf.send(0, request) {
        Ok(()) | Err(PortForwardError::Closed) => {}
        Err(e) => return Err(e),
    }
    let (mut data, mut error, mut end) = (Vec::new(), String::new(), End::Closed);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            end = End::TimedOut;
            break;
        }
        pf.set_timeout(left)?;
        match pf.recv() {
            Ok(None) => break,
            Ok(Some(Event::Data { bytes, .. })) => data.extend_from_slice(&bytes),
            Ok(Some(Event::Error { text, .. })) => error.push_str(&text),
            Err(PortForwardError::Timeout(_)) => {
                end = End::TimedOut;
                break;
            }
            Err(e) => return Err(e),
        }
        if data.len() + error.len() > limit {
            return Err(PortForwardError::TooLarge(limit));
        }
    }
    pf.close();
    Ok(Exchanged { data, error, end })
}

/// `url` with `http://` made `ws://` (`ws://` is kept); TLS is not supported.
fn websocket_url(url: &str) -> Result<String, PortForwardError> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Ok(format!("ws://{rest}")),
        _ => Err(PortForwardError::Url(
            url.into(),
            "not http:// or ws:// (no TLS)".into(),
        )),
    }
}

/// Connects to `uri`'s host and port (80 if none), with `timeout` as connect, read and write
/// timeout.
fn dial(uri: &Uri, timeout: Duration) -> Result<TcpStream, PortForwardError> {
    let (host, port) = (uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(80));
    let connect_err = |e| PortForwardError::Connect(format!("{host}:{port}"), e);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for sa in (bare, port).to_socket_addrs().map_err(connect_err)? {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(stream) => {
                set_timeouts(&stream, timeout)?;
                // Messages go out whole: no need to wait for more.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(connect_err(last))
}

/// Sets `stream`'s read and write timeout (non-zero).
fn set_timeouts(stream: &TcpStream, timeout: Duration) -> Result<(), PortForwardError> {
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| PortForwardError::Io("setting the socket's timeouts", e))
}

/// The websocket upgrade of `ws_url` (`uri`) on `stream`, offering [`PROTOCOL`]: the protocol
/// the server chose and what it sent after its answer (the start of the websocket stream).
fn upgrade(
    stream: &mut TcpStream,
    uri: Uri,
    ws_url: &str,
    timeout: Duration,
) -> Result<(String, Vec<u8>), PortForwardError> {
    let failed = |why: String| PortForwardError::Handshake(ws_url.into(), why);
    let mut request = uri
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    let protocol = HeaderValue::from_static(PROTOCOL);
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol);
    let (bytes, key) = generate_request(request).map_err(|e| failed(e.to_string()))?;
    stream
        .write_all(&bytes)
        .map_err(|e| io_error("sending the upgrade request", timeout, e))?;
    let (response, tail) = read_response(stream, ws_url, timeout)?;
    let protocol = check_response(&response, &key, &tail).map_err(failed)?;
    Ok((protocol, tail))
}

/// Reads the HTTP answer's head (to `ws_url`'s upgrade): the answer and the bytes after it.
fn read_response(
    stream: &mut TcpStream,
    ws_url: &str,
    timeout: Duration,
) -> Result<(Response, Vec<u8>), PortForwardError> {
    let failed = |why: String| PortForwardError::Handshake(ws_url.into(), why);
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(failed("the server closed without answering".into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("reading the upgrade answer", timeout, e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        match Response::try_parse(&buf) {
            Ok(Some((len, response))) => return Ok((response, buf.split_off(len))),
            Ok(None) if buf.len() <= MAX_RESPONSE_HEAD => {}
            Ok(None) => {
                return Err(failed(format!(
                    "an answer head over {MAX_RESPONSE_HEAD} bytes"
                )))
            }
            Err(e) => return Err(failed(format!("an unreadable answer: {e}"))),
        }
    }
}

/// Checks the upgrade answer (`body`: what came after its head); returns the chosen protocol.
fn check_response(response: &Response, key: &str, body: &[u8]) -> Result<String, String> {
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = String::from_utf8_lossy(&body[..body.len().min(BODY_QUOTED)]);
        return Err(format!("HTTP {status}: {:?}", body.trim()));
    }
    let header = |name| {
        let value = response.headers().get(name);
        value.map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    };
    if !header("Upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err("the answer has no `Upgrade: websocket`".into());
    }
    if header("Sec-WebSocket-Accept") != Some(derive_accept_key(key.as_bytes())) {
        return Err("the answer's Sec-WebSocket-Accept does not match the key".into());
    }
    match header("Sec-WebSocket-Protocol").unwrap_or_default() {
        p if p.is_empty() || p == PROTOCOL => Ok(p),
        p => Err(format!(
            "the server chose subprotocol {p:?}, offered {PROTOCOL:?}"
        )),
    }
}

/// The event of `payload` on `channel`: data on even channels, error text on odd ones.
fn event(channel: usize, payload: Vec<u8>) -> Event {
    let port_index = channel / 2;
    match channel % 2 {
        0 => Event::Data {
            port_index,
            bytes: payload,
        },
        _ => Event::Error {
            port_index,
            text: String::from_utf8_lossy(&payload).into_owned(),
        },
    }
}

/// `e`, met while doing `what` under `timeout`: a timeout, or the peer gone, by name.
fn io_error(what: &'static str, timeout: Duration, e: io::Error) -> PortForwardError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PortForwardError::Timeout(timeout),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => PortForwardError::Closed,
        _ => PortForwardError::Io(what, e),
    }
}

/// The websocket error `e`, met while doing `what` under `timeout`.
fn ws_error(what: &'static str, timeout: Duration, e: WsError) -> PortForwardError {
    match e {
        WsError::Io(e) => io_error(what, timeout, e),
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            PortForwardError::Closed
        }
        WsError::Capacity(_) => PortForwardError::TooLarge(MAX_MESSAGE),
        e => PortForwardError::WebSocket(what, Box::new(e)),
    }
}

#[cfg(test)]
mod tests;
