use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;

#[test]
fn request_lines_round_trip() {
    for port in [1u16, 80, 8080, 65535] {
        assert_eq!(parse_request(&request_line(port)), Ok(port));
    }
    assert_eq!(request_line(80), b"PORT 80\n");
    assert!(request_line(65535).len() <= MAX_REQUEST_LEN);
}

#[test]
fn bad_requests_are_refused() {
    for bad in [
        &b"PORT 0\n"[..],
        b"PORT 65536\n",
        b"PORT 099999\n",
        b"PORT 080\n",
        b"PORT -1\n",
        b"PORT +80\n",
        b"PORT \n",
        b"PORT 80 \n",
        b"port 80\n",
        b"PORT  80\n",
        b"PORT 80\r\n",
        b"PORT 4294967377\n",
        b"",
        b"PORT 1111111111111111111\n",
    ] {
        assert!(parse_request(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_unix_socket_path_is_next_to_the_agents() {
    assert_eq!(
        port_forward_socket_path(Path::new("/run/a.sock")),
        Path::new("/run/a.sock.portfwd")
    );
}

/// `a` <-> pump <-> `b`, the pump in a thread; returns the outer ends and the thread.
fn pumped(
    idle: Option<Duration>,
) -> (
    UnixStream,
    UnixStream,
    std::thread::JoinHandle<std::io::Result<PumpEnd>>,
) {
    let (a_out, a_in) = UnixStream::pair().unwrap();
    let (b_in, b_out) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || pump(a_in.as_fd(), b_in.as_fd(), idle));
    (a_out, b_out, t)
}

#[test]
fn the_pump_carries_both_ways_and_passes_half_closes_on() {
    let (mut a, mut b, t) = pumped(None);
    let big: Vec<u8> = (0..(5 * PUMP_BUFFER + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut b2 = b.try_clone().unwrap();
    let sent = big.clone();
    let writer = std::thread::spawn(move || {
        a.write_all(&sent).unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        a.read_to_end(&mut back).unwrap();
        back
    });
    let mut got = Vec::new();
    b.read_to_end(&mut got).unwrap();
    assert_eq!(got, big, "a to b, then a's end of stream");
    b2.write_all(b"reply after the request's end").unwrap();
    b2.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(writer.join().unwrap(), b"reply after the request's end");
    assert_eq!(
        t.join().unwrap().unwrap(),
        PumpEnd::Closed {
            a_to_b: big.len() as u64,
            b_to_a: 29
        }
    );
}

#[test]
fn the_pump_stops_after_the_idle_limit() {
    let (_a, _b, t) = pumped(Some(Duration::from_millis(100)));
    assert_eq!(
        t.join().unwrap().unwrap(),
        PumpEnd::Idle {
            a_to_b: 0,
            b_to_a: 0
        }
    );
}

#[test]
fn the_pump_ends_when_one_side_vanishes_while_the_other_floods() {
    let (mut a, b, t) = pumped(None);
    drop(b);
    // `a` floods: its bytes have nowhere to go; the pump must end, not buffer them.
    let flood = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        while a.write_all(&chunk).is_ok() {}
    });
    assert!(matches!(t.join().unwrap().unwrap(), PumpEnd::Closed { .. }));
    flood.join().unwrap();
}

#[test]
fn a_silent_side_is_let_go_once_the_other_has_ended() {
    let (a, _b, t) = pumped(None);
    // `a` is gone entirely; `b` stays open and silent: the stream must not wait for it forever.
    let start = std::time::Instant::now();
    drop(a);
    assert!(matches!(t.join().unwrap().unwrap(), PumpEnd::Closed { .. }));
    let took = start.elapsed();
    assert!(took >= LINGER - Duration::from_millis(100), "{took:?}");
}
