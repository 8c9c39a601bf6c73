//! The copy loop of a port-forward stream: bytes both ways between two sockets, in one thread,
//! with a bounded buffer per direction and an optional idle limit.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{send, shutdown, MsgFlags, Shutdown};

/// How long the other direction may go on once one has ended (containerd's own port
/// forwarder waits 1 s, then closes both).
pub const LINGER: Duration = Duration::from_secs(10);

/// The buffer of each direction: what one side may have in flight that the other has not
/// taken yet.
pub const PUMP_BUFFER: usize = 32 * 1024;

/// How a [`pump`] ended, with the bytes it moved each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// Both directions ended: each side's end of stream was passed on to the other (or the
    /// other could no longer take bytes).
    Closed {
        /// Bytes from `a` to `b`.
        a_to_b: u64,
        /// Bytes from `b` to `a`.
        b_to_a: u64,
    },
    /// Nothing moved either way for the idle limit.
    Idle {
        /// Bytes from `a` to `b`.
        a_to_b: u64,
        /// Bytes from `b` to `a`.
        b_to_a: u64,
    },
}

/// One direction: what was read from `src` and not yet written to `dst`.
struct Direction {
    src: RawFd,
    dst: RawFd,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// `src` reached its end (or failed): nothing more to read.
    src_done: bool,
    /// The end was passed on to `dst` (or `dst` failed): the direction is over.
    finished: bool,
    moved: u64,
}

impl Direction {
    fn new(src: RawFd, dst: RawFd) -> Self {
        Direction {
            src,
            dst,
            buf: vec![0; PUMP_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            src_done: false,
            finished: false,
            moved: 0,
        }
    }

    fn wants_read(&self) -> bool {
        !self.src_done && self.start == self.end
    }

    fn wants_write(&self) -> bool {
        !self.finished && self.start < self.end
    }

    /// Passes the end of `src` on once everything read was written.
    fn settle(&mut self) {
        if self.src_done && !self.finished && self.start == self.end {
            // The peer may be gone already: nothing to tell it then.
            let _ = shutdown(self.dst, Shutdown::Write);
            self.finished = true;
        }
    }

    fn read(&mut self) {
        match nix::unistd::read(self.src, &mut self.buf) {
            Ok(0) => self.src_done = true,
            Ok(n) => (self.start, self.end) = (0, n),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // A reset or failed source ends the direction like an end of stream.
            Err(_) => self.src_done = true,
        }
    }

    fn write(&mut self) {
        match send(
            self.dst,
            &self.buf[self.start..self.end],
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => {
                self.start += n;
                self.moved += n as u64;
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => {
                // `dst` takes nothing more: drop what is left, stop reading.
                (self.start, self.end) = (0, 0);
                self.src_done = true;
                self.finished = true;
            }
        }
    }
}

/// Copies bytes both ways between the connected stream sockets `a` and `b` until both
/// directions have ended (a half-close on one side is passed on to the other), or until
/// nothing moved either way for `idle` (`None`: no limit). Once one direction has ended, the
/// other gets at most [`LINGER`] more: a peer that closed its socket entirely looks like one
/// that only half-closed until something is written to it, so a silent other side would
/// otherwise hold the stream until `idle`. Both sockets are made non-blocking; the caller
/// closes them afterwards. Errors only when `poll` itself fails.
pub fn pump(a: BorrowedFd<'_>, b: BorrowedFd<'_>, idle: Option<Duration>) -> io::Result<PumpEnd> {
    for fd in [a.as_raw_fd(), b.as_raw_fd()] {
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    let mut dirs = [
        Direction::new(a.as_raw_fd(), b.as_raw_fd()),
        Direction::new(b.as_raw_fd(), a.as_raw_fd()),
    ];
    let mut linger_until: Option<Instant> = None;
    loop {
        dirs.iter_mut().for_each(Direction::settle);
        let (a_to_b, b_to_a) = (dirs[0].moved, dirs[1].moved);
        let ended = dirs.iter().filter(|d| d.finished).count();
        let now = Instant::now();
        if ended == 1 && linger_until.is_none() {
            linger_until = Some(now + LINGER);
        }
        if ended == 2 || linger_until.is_some_and(|t| t <= now) {
            return Ok(PumpEnd::Closed { a_to_b, b_to_a });
        }
        let mut fds = poll_set(&dirs);
        match poll(&mut fds, poll_timeout(idle, linger_until, now)) {
            Ok(0) if linger_until.is_some() => continue,
            Ok(0) => return Ok(PumpEnd::Idle { a_to_b, b_to_a }),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        step(&mut dirs, ready(0), ready(1));
    }
}

/// `poll`'s timeout in ms: the idle limit, or less when the linger ends first; -1: none.
fn poll_timeout(idle: Option<Duration>, linger_until: Option<Instant>, now: Instant) -> i32 {
    let left = linger_until.map(|t| t.saturating_duration_since(now));
    let wait = match (idle, left) {
        (Some(i), Some(l)) => Some(i.min(l)),
        (i, l) => i.or(l),
    };
    wait.map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX))
}

/// One move of each direction that `poll` found ready (`ready_a`, `ready_b`: the revents).
fn step(dirs: &mut [Direction; 2], ready_a: PollFlags, ready_b: PollFlags) {
    let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    let writable = PollFlags::POLLOUT | PollFlags::POLLHUP | PollFlags::POLLERR;
    for (d, (src_ready, dst_ready)) in dirs
        .iter_mut()
        .zip([(ready_a, ready_b), (ready_b, ready_a)])
    {
        if d.wants_write() && dst_ready.intersects(writable) {
            d.write();
        } else if d.wants_read() && src_ready.intersects(readable) {
            d.read();
        }
    }
}

/// The poll set of `a` (index 0) and `b` (index 1) for what the directions wait for; a side
/// nobody waits on is left out (fd -1), so its hang-up cannot wake the loop for nothing.
fn poll_set(dirs: &[Direction; 2]) -> [PollFd; 2] {
    let mut events = [PollFlags::empty(); 2];
    for (i, d) in dirs.iter().enumerate() {
        // Direction 0 reads `a` (0) and writes `b` (1); direction 1 the other way round.
        if d.wants_read() {
            events[i] |= PollFlags::POLLIN;
        }
        if d.wants_write() {
            events[1 - i] |= PollFlags::POLLOUT;
        }
    }
    let fd = |i: usize| match events[i].is_empty() {
        true => PollFd::new(-1, PollFlags::empty()),
        false => PollFd::new(dirs[i].src, events[i]),
    };
    [fd(0), fd(1)]
}
