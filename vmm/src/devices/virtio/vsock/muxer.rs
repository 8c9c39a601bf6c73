//! The connection table and the host side's event loop.
//!
//! All host sockets (the listener, streams in their `CONNECT` handshake, connected streams)
//! and a deadline timer are registered, edge-triggered, on one inner epoll fd, so the VMM's
//! event loop watches a single fd and calls [`Muxer::process_host_events`] when it fires.
//! Packets for the guest are scheduled on one queue: one entry per connection that has
//! something to send (never more than one), plus standalone packets (RSTs).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, RxOut, Verdict};
use super::packet::{Header, OP_REQUEST, OP_RST, TYPE_STREAM};
use super::unix::{self, Handshake, HandshakeStatus};
use super::{VsockConfig, VsockError, HOST_CID};
use crate::metrics::{bump, VsockCounters};

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_STREAM_TOKEN: u64 = 2;
/// Standalone packets queued before the tx queue stops being processed (backpressure on a
/// guest flooding packets that each need an RST).
pub const MAX_PENDING_CONTROL: usize = 256;
/// First host port handed to host-initiated connections.
pub const EPHEMERAL_PORT_START: u32 = 1 << 30;

/// A connection's identity: the host-side port and the guest-side port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
}

enum RxItem {
    Conn(ConnKey),
    Packet(Header),
}

struct Entry {
    token: u64,
    conn: Connection,
}

/// The vsock backend: connections, handshakes, the listener and the rx schedule.
pub struct Muxer {
    cfg: VsockConfig,
    epoll: Epoll,
    listener: UnixListener,
    timer: TimerFd,
    timer_at: Option<Instant>,
    conns: HashMap<ConnKey, Entry>,
    handshakes: HashMap<u64, Handshake>,
    tokens: HashMap<u64, ConnKey>,
    next_token: u64,
    next_local_port: u32,
    rxq: VecDeque<RxItem>,
    pending_packets: usize,
    counters: Arc<VsockCounters>,
}

impl Drop for Muxer {
    /// The listener's socket file belongs to this VM: remove it so nothing is left behind.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cfg.uds_path);
    }
}

fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    /// Binds the listener at `cfg.uds_path` and sets up the inner epoll.
    pub fn new(cfg: VsockConfig) -> Result<Muxer, VsockError> {
        if cfg.max_connections == 0 || cfg.conn_buf_size < 4096 || cfg.timeout.is_zero() {
            return Err(VsockError::InvalidConfig(
                "max_connections, conn_buf_size (>= 4096) and timeout must be non-zero",
            ));
        }
        let listener = unix::bind_listener(&cfg.uds_path)?;
        let epoll = Epoll::new().map_err(VsockError::EventLoop)?;
        let timer = TimerFd::new().map_err(|e| VsockError::EventLoop(e.into()))?;
        let add = |fd: RawFd, ev: EventSet, token| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token))
                .map_err(VsockError::EventLoop)
        };
        add(
            listener.as_raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            TOKEN_LISTENER,
        )?;
        add(timer.as_raw_fd(), EventSet::IN, TOKEN_TIMER)?;
        Ok(Muxer {
            cfg,
            epoll,
            listener,
            timer,
            timer_at: None,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: EPHEMERAL_PORT_START,
            rxq: VecDeque::new(),
            pending_packets: 0,
            counters: Arc::new(VsockCounters::default()),
        })
    }

    /// The device's counters (shared with the metrics; the device counts packets, the
    /// muxer connections).
    pub fn counters(&self) -> &Arc<VsockCounters> {
        &self.counters
    }

    /// The inner epoll fd: readable whenever [`Muxer::process_host_events`] has work.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The configuration.
    pub fn config(&self) -> &VsockConfig {
        &self.cfg
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Accepted host streams still in their `CONNECT` handshake.
    pub fn handshake_count(&self) -> usize {
        self.handshakes.len()
    }

    /// Guest → host bytes buffered over all connections (each bounded by `conn_buf_size`).
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|e| e.conn.tx_buffered()).sum()
    }

    /// Entries in the rx schedule (bounded by live connections plus pending packets).
    pub fn rx_backlog(&self) -> usize {
        self.rxq.len()
    }

    /// Whether packets for the guest are scheduled.
    pub fn has_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Whether the tx queue should wait until the guest took pending packets.
    pub fn tx_blocked(&self) -> bool {
        self.pending_packets >= MAX_PENDING_CONTROL
    }

    /// Drops every connection and handshake (device reset); the listener stays.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let tokens: Vec<u64> = self.handshakes.keys().copied().collect();
        for token in tokens {
            self.drop_handshake(token);
        }
        self.rxq.clear();
        self.pending_packets = 0;
    }

    /// Handles everything the inner epoll reports, without blocking.
    pub fn process_host_events(&mut self, now: Instant) -> Result<(), VsockError> {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VsockError::EventLoop(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept_all(now),
                    TOKEN_TIMER => self.on_timer(now),
                    token => self.on_stream_event(token, ev.event_set(), now),
                }
            }
            if n < events.len() {
                return Ok(());
            }
        }
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!("vsock: accept on the host socket failed: {e}");
                    }
                    return;
                }
            };
            if self.handshakes.len() >= self.cfg.max_handshakes
                || stream.set_nonblocking(true).is_err()
            {
                continue; // dropped: the host peer sees EOF
            }
            let token = self.new_token();
            if self.register(stream.as_raw_fd(), token).is_err() {
                continue;
            }
            let deadline = now + self.cfg.timeout;
            self.handshakes
                .insert(token, Handshake::new(stream, deadline));
            self.note_deadline(Some(deadline));
        }
    }

    fn on_stream_event(&mut self, token: u64, events: EventSet, now: Instant) {
        if let Some(hs) = self.handshakes.get_mut(&token) {
            match hs.read() {
                HandshakeStatus::Pending => {}
                HandshakeStatus::Invalid => self.drop_handshake(token),
                HandshakeStatus::Connect(port) => self.host_connect(token, port, now),
            }
            return;
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        let verdict = entry.conn.on_host_event(events, now);
        self.apply(key, verdict);
    }

    /// A host peer asked for guest port `port`: schedule the request to the guest.
    fn host_connect(&mut self, token: u64, port: u32, now: Instant) {
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let local_port = match self.alloc_local_port(port) {
            Some(p) if self.conns.len() < self.cfg.max_connections => p,
            _ => {
                let _ = self.unregister(hs.stream.as_raw_fd());
                return;
            }
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::new_local(
            hs.stream,
            local_port,
            port,
            self.cfg.conn_buf_size,
            self.cfg.timeout,
            now,
        );
        self.note_deadline(conn.deadline());
        self.add_conn(token, key, conn);
    }

    /// Makes `conn` live under `key` (its stream registered under `token`).
    fn add_conn(&mut self, token: u64, key: ConnKey, conn: Connection) {
        bump(&self.counters.connections_opened, 1);
        self.tokens.insert(token, key);
        self.conns.insert(key, Entry { token, conn });
        self.schedule(key);
    }

    /// A host port for a connection to guest port `peer_port`, unused by live connections.
    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.cfg.max_connections {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) if p != u32::MAX => p,
                _ => EPHEMERAL_PORT_START,
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) && !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    /// Handles one packet from the guest (`data` is its payload, already bounded).
    pub fn handle_guest_packet(&mut self, hdr: &Header, data: &[u8], now: Instant) {
        if hdr.src_cid != self.cfg.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!("vsock: dropping packet with bad CIDs {hdr:?}");
            bump(&self.counters.dropped_malformed, 1);
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.push_packet(hdr.reset_reply());
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(entry) = self.conns.get_mut(&key) {
            let verdict = entry.conn.on_guest_packet(hdr, data, now);
            self.apply(key, verdict);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr, key),
            OP_RST => {}
            _ => self.push_packet(hdr.reset_reply()),
        }
    }

    /// The guest connects to host port `hdr.dst_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() >= self.cfg.max_connections {
            self.push_packet(hdr.reset_reply());
            return;
        }
        let path = unix::guest_connect_path(&self.cfg.uds_path, hdr.dst_port);
        let stream = match unix::connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                self.push_packet(hdr.reset_reply());
                return;
            }
        };
        let token = self.new_token();
        if self.register(stream.as_raw_fd(), token).is_err() {
            self.push_packet(hdr.reset_reply());
            return;
        }
        let conn = Connection::new_peer(stream, hdr, self.cfg.conn_buf_size, self.cfg.timeout);
        self.add_conn(token, key, conn);
    }

    /// Fills `buf` with the payload of the next packet for the guest and returns its header;
    /// `None` when nothing is ready.
    pub fn next_rx(&mut self, buf: &mut [u8], now: Instant) -> Option<Header> {
        while let Some(item) = self.rxq.pop_front() {
            let key = match item {
                RxItem::Packet(h) => {
                    self.pending_packets -= 1;
                    return Some(h);
                }
                RxItem::Conn(key) => key,
            };
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.conn.queued = false;
            let cid = self.cfg.guest_cid;
            match entry.conn.rx_packet(buf, now) {
                RxOut::Nothing => {
                    let d = entry.conn.deadline();
                    self.note_deadline(d);
                }
                RxOut::Packet { op, flags, len } => {
                    let h = entry.conn.header(HOST_CID, cid, op, flags, len);
                    let d = entry.conn.deadline();
                    self.note_deadline(d);
                    self.schedule(key);
                    return Some(h);
                }
                RxOut::Reset => {
                    let h = entry.conn.header(HOST_CID, cid, OP_RST, 0, 0);
                    self.remove(key);
                    return Some(h);
                }
            }
        }
        None
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Continue => {
                if let Some(d) = self.conns.get(&key).map(|e| e.conn.deadline()) {
                    self.note_deadline(d);
                }
                self.schedule(key);
            }
            Verdict::Drop => self.remove(key),
            Verdict::Reset => {
                if let Some(entry) = self.conns.get(&key) {
                    let h = entry
                        .conn
                        .header(HOST_CID, self.cfg.guest_cid, OP_RST, 0, 0);
                    self.push_packet(h);
                }
                self.remove(key);
            }
        }
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(entry) = self.conns.get_mut(&key) {
            if !entry.conn.queued && entry.conn.has_rx() {
                entry.conn.queued = true;
                self.rxq.push_back(RxItem::Conn(key));
            }
        }
    }

    fn push_packet(&mut self, h: Header) {
        self.pending_packets += 1;
        self.rxq.push_back(RxItem::Packet(h));
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(entry) = self.conns.remove(&key) {
            self.tokens.remove(&entry.token);
            let _ = self.unregister(entry.conn.stream().as_raw_fd());
            if entry.conn.queued {
                self.rxq
                    .retain(|item| !matches!(item, RxItem::Conn(k) if *k == key));
            }
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(hs) = self.handshakes.remove(&token) {
            let _ = self.unregister(hs.stream.as_raw_fd());
        }
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn register(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(stream_events(), token),
        )
    }

    fn unregister(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn note_deadline(&mut self, deadline: Option<Instant>) {
        let Some(d) = deadline else { return };
        if self.timer_at.is_some_and(|t| t <= d) {
            return;
        }
        let wait = d
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(1));
        if self.timer.reset(wait, None).is_ok() {
            self.timer_at = Some(d);
        }
    }

    /// Resets every connection and drops every handshake whose deadline passed.
    fn on_timer(&mut self, now: Instant) {
        let _ = self.timer.clear();
        self.timer_at = None;
        self.expire(now);
    }

    /// Applies deadlines up to `now` (also called by tests with a future `now`).
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            self.drop_handshake(token);
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.apply(key, Verdict::Reset);
        }
        let next = self
            .handshakes
            .values()
            .map(|hs| hs.deadline)
            .chain(self.conns.values().filter_map(|e| e.conn.deadline()))
            .min();
        self.note_deadline(next);
    }
}
