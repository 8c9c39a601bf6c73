//! One vsock stream: its state machine, credit accounting and guest → host buffer.
//!
//! Host → guest data is never buffered here: it is read from the unix stream straight into
//! the rx buffer the guest posted, and only as much as the guest's credit allows, so a guest
//! that does not read leaves the bytes in the host socket. Guest → host data is written to
//! the unix stream at once; what the stream does not take waits in a buffer bounded by the
//! `buf_alloc` advertised to the guest, and a guest overrunning its credit is reset.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use super::unix::write_ok;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: the request to the guest is out, its answer pending (with a deadline).
    LocalInit,
    /// Data may flow, subject to the shutdown flags of both sides.
    Established,
    /// Both directions are finished; the guest was told so and its RST is awaited (with a
    /// deadline).
    Closing,
}

/// What the muxer must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Continue,
    /// Forget it silently (closing the host stream).
    Drop,
    /// Forget it and send the guest an RST.
    Reset,
}

/// The next packet a connection has for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOut {
    /// Nothing to send now.
    Nothing,
    /// A packet: operation, flags and payload length (the payload is in the caller's buffer).
    Packet {
        /// Operation.
        op: u16,
        /// Flags.
        flags: u32,
        /// Payload bytes written to the buffer.
        len: u32,
    },
    /// The connection failed: forget it and send an RST.
    Reset,
}

/// One stream between a guest port and a host unix stream.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: ConnState,
    local_port: u32,
    peer_port: u32,
    timeout: Duration,
    deadline: Option<Instant>,
    // Packets owed to the guest.
    need_request: bool,
    need_response: bool,
    need_credit_update: bool,
    need_credit_request: bool,
    credit_requested: bool,
    need_shutdown: u32,
    shutdown_sent: u32,
    // Host stream readiness (edge-triggered epoll) and end-of-stream state.
    host_readable: bool,
    host_writable: bool,
    host_eof: bool,
    host_hup: bool,
    write_shut: bool,
    // Guest shutdown flags.
    peer_no_send: bool,
    peer_no_recv: bool,
    close_after_flush: bool,
    // Credit: the guest's receive buffer, and ours.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    buf_size: u32,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_buf: VecDeque<u8>,
    /// Whether the muxer has this connection in its rx schedule.
    pub queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, buf_size: u32) -> Connection {
        Connection {
            stream,
            state: ConnState::Established,
            local_port,
            peer_port,
            timeout: Duration::from_secs(2),
            deadline: None,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            need_credit_request: false,
            credit_requested: false,
            need_shutdown: 0,
            shutdown_sent: 0,
            host_readable: false,
            host_writable: true,
            host_eof: false,
            host_hup: false,
            write_shut: false,
            peer_no_send: false,
            peer_no_recv: false,
            close_after_flush: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            buf_size,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            queued: false,
        }
    }

    /// A host-initiated connection: a request to guest `peer_port` from host `local_port` is
    /// owed, and the guest must answer within `timeout`.
    pub fn new_local(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        buf_size: u32,
        timeout: Duration,
        now: Instant,
    ) -> Connection {
        let mut c = Connection::new(stream, local_port, peer_port, buf_size);
        c.state = ConnState::LocalInit;
        c.timeout = timeout;
        c.deadline = Some(now + timeout);
        c.need_request = true;
        // Bytes pipelined behind the CONNECT line may already wait in the socket.
        c.host_readable = true;
        c
    }

    /// A guest-initiated connection whose unix connect succeeded; `req` is the guest's
    /// request (for its credit). A response is owed.
    pub fn new_peer(stream: UnixStream, req: &Header, buf_size: u32, timeout: Duration) -> Self {
        let mut c = Connection::new(stream, req.dst_port, req.src_port, buf_size);
        c.timeout = timeout;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.need_response = true;
        c
    }

    /// The host stream (for epoll registration).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host-side port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The guest-side port.
    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    /// When the connection is reset unless it progresses.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes of guest data waiting for the host stream.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Our receive buffer as advertised to the guest.
    pub fn buf_alloc(&self) -> u32 {
        self.buf_size
    }

    /// Our forwarded-bytes counter as advertised to the guest.
    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt.0
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == ConnState::Established && !self.peer_no_recv && !self.host_eof
    }

    /// Whether the connection has a packet for the guest now.
    pub fn has_rx(&self) -> bool {
        self.need_request
            || self.need_response
            || self.need_shutdown & !self.shutdown_sent != 0
            || self.need_credit_update
            || self.need_credit_request
            || (self.can_send_data()
                && self.host_readable
                && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// Produces the next packet for the guest, reading host data into `buf` for `OP_RW`.
    pub fn rx_packet(&mut self, buf: &mut [u8], now: Instant) -> RxOut {
        let out = self.next_rx(buf, now);
        if let RxOut::Packet { .. } = out {
            // Every header carries our fwd_cnt: that is a credit update.
            self.last_fwd_cnt_sent = self.fwd_cnt;
            self.need_credit_update = false;
        }
        out
    }

    fn next_rx(&mut self, buf: &mut [u8], now: Instant) -> RxOut {
        let packet = |op, flags, len| RxOut::Packet { op, flags, len };
        if self.need_request {
            self.need_request = false;
            return packet(OP_REQUEST, 0, 0);
        }
        if self.need_response {
            self.need_response = false;
            return packet(OP_RESPONSE, 0, 0);
        }
        // Data goes before a shutdown so the guest sees every byte the host sent.
        while self.can_send_data() && self.host_readable && !buf.is_empty() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_requested {
                    self.need_credit_request = true;
                }
                break;
            }
            let n = credit.min(buf.len());
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    self.check_host_done(now);
                }
                Ok(n) => {
                    self.rx_cnt += Wrapping(n as u32);
                    return packet(OP_RW, 0, n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return RxOut::Reset,
            }
        }
        let pending_shutdown = self.need_shutdown & !self.shutdown_sent;
        if pending_shutdown != 0 {
            self.shutdown_sent |= pending_shutdown;
            return packet(OP_SHUTDOWN, self.need_shutdown, 0);
        }
        if self.need_credit_update {
            return packet(OP_CREDIT_UPDATE, 0, 0);
        }
        if self.need_credit_request {
            self.need_credit_request = false;
            self.credit_requested = true;
            return packet(OP_CREDIT_REQUEST, 0, 0);
        }
        RxOut::Nothing
    }

    /// Handles a packet from the guest addressed to this connection (`data` is its payload).
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8], now: Instant) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (_, OP_RST) => Verdict::Drop,
            (ConnState::LocalInit, OP_RESPONSE) => {
                if write_ok(&mut self.stream, self.local_port).is_err() {
                    return Verdict::Reset;
                }
                self.state = ConnState::Established;
                self.deadline = None;
                Verdict::Continue
            }
            (ConnState::LocalInit, _) => Verdict::Reset,
            (_, OP_RW) => self.guest_data(data, now),
            (_, OP_CREDIT_UPDATE) => Verdict::Continue,
            (_, OP_CREDIT_REQUEST) => {
                self.need_credit_update = true;
                Verdict::Continue
            }
            (_, OP_SHUTDOWN) => self.guest_shutdown(hdr.flags, now),
            // A second request or response on a live connection, or an unknown op.
            _ => Verdict::Reset,
        }
    }

    fn guest_data(&mut self, data: &[u8], now: Instant) -> Verdict {
        if self.state != ConnState::Established || self.peer_no_send {
            return Verdict::Reset;
        }
        if self.tx_buf.len() + data.len() > self.buf_size as usize {
            // The guest ignored the credit we advertised.
            return Verdict::Reset;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() && self.host_writable {
            written = match self.write_some(data) {
                Ok(n) => n,
                Err(_) => return Verdict::Reset,
            };
        }
        self.tx_buf.extend(&data[written..]);
        self.after_flush(now)
    }

    /// Writes as much of `data` as the stream takes now, counting it as forwarded.
    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        let (n, blocked) = write_nonblocking(&mut self.stream, data)?;
        if blocked {
            self.host_writable = false;
        }
        self.fwd_cnt += Wrapping(n as u32);
        Ok(n)
    }

    /// Moves buffered guest data to the host stream while it takes it.
    fn flush(&mut self, now: Instant) -> Verdict {
        while !self.tx_buf.is_empty() && self.host_writable {
            let (front, _) = self.tx_buf.as_slices();
            match write_nonblocking(&mut self.stream, front) {
                Ok((n, blocked)) => {
                    self.host_writable = !blocked;
                    self.fwd_cnt += Wrapping(n as u32);
                    self.tx_buf.drain(..n);
                }
                Err(_) => return Verdict::Reset,
            }
        }
        self.after_flush(now)
    }

    fn after_flush(&mut self, now: Instant) -> Verdict {
        if self.tx_buf.is_empty() {
            if self.tx_buf.capacity() > 64 * 1024 {
                self.tx_buf = VecDeque::new();
            }
            if self.close_after_flush {
                return Verdict::Reset;
            }
            if self.peer_no_send && !self.write_shut {
                self.write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
                self.check_host_done(now);
            }
        }
        // Announce freed space once a quarter of the buffer was forwarded since the last
        // header the guest saw, so a one-way sender never stalls.
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= self.buf_size / 4 {
            self.need_credit_update = true;
        }
        Verdict::Continue
    }

    fn guest_shutdown(&mut self, flags: u32, now: Instant) -> Verdict {
        if flags & SHUTDOWN_SEND != 0 {
            self.peer_no_send = true;
        }
        if flags & SHUTDOWN_RCV != 0 {
            self.peer_no_recv = true;
        }
        if self.peer_no_send && self.peer_no_recv {
            // The guest closed: deliver what is buffered, then reset.
            if self.tx_buf.is_empty() {
                return Verdict::Reset;
            }
            self.close_after_flush = true;
            self.deadline = Some(now + self.timeout);
            return Verdict::Continue;
        }
        self.after_flush(now)
    }

    /// After the host stream ended: tell the guest, and close once nothing can flow.
    fn check_host_done(&mut self, now: Instant) {
        if !self.host_eof || self.state != ConnState::Established {
            return;
        }
        if self.host_hup || self.peer_no_send {
            self.state = ConnState::Closing;
            self.need_shutdown = SHUTDOWN_RCV | SHUTDOWN_SEND;
            self.deadline = Some(now + self.timeout);
        } else {
            self.need_shutdown |= SHUTDOWN_SEND;
        }
    }

    /// Handles readiness of the host stream (edge-triggered).
    pub fn on_host_event(&mut self, events: EventSet, now: Instant) -> Verdict {
        if events.contains(EventSet::ERROR) {
            return Verdict::Reset;
        }
        if events.contains(EventSet::HANG_UP) {
            self.host_hup = true;
            if self.state == ConnState::LocalInit {
                return Verdict::Reset;
            }
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            self.host_readable = true;
        }
        if self.host_hup && self.host_eof {
            self.check_host_done(now);
        }
        if events.contains(EventSet::OUT) {
            self.host_writable = true;
            if self.state != ConnState::LocalInit {
                return self.flush(now);
            }
        }
        Verdict::Continue
    }

    /// The header of a packet of this connection to the guest CID `guest_cid`.
    pub fn header(&self, host_cid: u64, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: host_cid,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: super::packet::TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_size,
            fwd_cnt: self.fwd_cnt.0,
        }
    }
}

/// Writes `data` until done or the stream would block; returns the bytes written and whether
/// it blocked.
fn write_nonblocking(stream: &mut UnixStream, data: &[u8]) -> io::Result<(usize, bool)> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((done, true)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((done, false))
}
