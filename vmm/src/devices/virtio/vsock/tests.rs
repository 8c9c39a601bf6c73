//! End-to-end tests of the vsock device (harness in `testing.rs`); the property tests are
//! in `tests/proptests.rs`.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::packet::*;
use super::testing::*;
use super::{VsockConfig, VsockDevice};

mod proptests;

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn host_initiated_handshake_and_data() {
    let mut h = Harness::new();
    let (mut s, port) = h.host_connect(1024);
    s.write_all(b"hello").unwrap();
    let got = h.pump_until(|p| !p.is_empty());
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (port, 1024));
    assert_eq!(got[0].1, b"hello");
    h.send(hdr(1024, port, OP_RW), b"world");
    h.pump();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"world");
    assert_eq!(h.dev.muxer().connection_count(), 1);
}

#[test]
fn bytes_pipelined_behind_connect_line_are_kept() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 7\nearly").unwrap();
    let got = h.pump_until(|p| !p.is_empty());
    let req = got[0].0;
    assert_eq!(req.op, OP_REQUEST);
    h.send(hdr(7, req.src_port, OP_RESPONSE), &[]);
    let got = h.pump_until(|p| !p.is_empty());
    assert_eq!(read_line(&mut s), format!("OK {}\n", req.src_port));
    assert_eq!((got[0].0.op, got[0].1.as_slice()), (OP_RW, &b"early"[..]));
}

#[test]
fn guest_rst_refuses_host_connection() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 99\n").unwrap();
    let got = h.pump_until(|p| !p.is_empty());
    h.send(hdr(99, got[0].0.src_port, OP_RST), &[]);
    h.pump();
    assert!(sees_eof(&mut s));
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn guest_initiated_connection_to_listener() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(format!("{}_1024", h.uds.display())).unwrap();
    h.send(hdr(5000, 1024, OP_REQUEST), &[]);
    let got = h.pump();
    assert_eq!(ops(&got), [OP_RESPONSE]);
    let r = got[0].0;
    assert_eq!((r.src_port, r.dst_port, r.dst_cid), (1024, 5000, GUEST_CID));
    let (mut s, _) = listener.accept().unwrap();
    h.send(hdr(5000, 1024, OP_RW), b"ping");
    h.pump();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong").unwrap();
    let got = h.pump_until(|p| !p.is_empty());
    assert_eq!(got[0].1, b"pong");
    let c = h.dev.counters().values();
    assert_eq!((c.connections_opened, c.tx_bytes, c.rx_bytes), (1, 4, 4));
    assert_eq!((c.connections_reset, c.dropped_malformed), (0, 0));
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let mut h = Harness::new();
    h.send(hdr(5000, 4444, OP_REQUEST), &[]);
    let got = h.pump();
    assert_eq!(ops(&got), [OP_RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (4444, 5000));
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn unknown_connection_gets_rst_and_rst_gets_nothing() {
    let mut h = Harness::new();
    h.send(hdr(6000, 77, OP_RW), b"data");
    h.send(hdr(6000, 78, OP_RST), &[]);
    h.send(hdr(6000, 79, OP_CREDIT_UPDATE), &[]);
    let got = h.pump();
    assert_eq!(ops(&got), [OP_RST, OP_RST]);
    assert_eq!(got[0].0.src_port, 77);
    assert_eq!(got[1].0.src_port, 79);
}

#[test]
fn bad_cid_dropped_and_bad_type_reset() {
    let mut h = Harness::new();
    let mut bad = hdr(1, 2, OP_REQUEST);
    bad.src_cid = 99;
    h.send(bad, &[]);
    let mut bad = hdr(1, 2, OP_REQUEST);
    bad.dst_cid = 7;
    h.send(bad, &[]);
    assert!(h.pump().is_empty());
    let mut seq = hdr(1, 2, OP_REQUEST);
    seq.type_ = 2;
    h.send(seq, &[]);
    assert_eq!(ops(&h.pump()), [OP_RST]);
    // len larger than the data descriptor: dropped as malformed.
    let mut lie = hdr(1, 2, OP_RW);
    lie.len = 1000;
    h.send_raw(lie, b"short");
    assert!(h.pump().is_empty());
    let c = h.dev.counters().values();
    assert_eq!((c.tx_packets, c.dropped_malformed), (3, 3));
    assert_eq!(
        (c.rx_packets, c.connections_reset, c.connections_opened),
        (1, 1, 0)
    );
}

#[test]
fn malformed_connect_lines_are_closed() {
    let mut h = Harness::new();
    let lines: [&[u8]; 5] = [
        b"CONNECT abc\n",
        b"HELLO 1\n",
        b"CONNECT 1 2\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 00000000000000000000000000000000001\n",
    ];
    for line in lines {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        h.pump();
        assert!(sees_eof(&mut s), "{line:?}");
    }
    assert!(h.pump().is_empty());
    assert_eq!(h.dev.muxer().handshake_count(), 0);
}

#[test]
fn silent_host_peer_times_out() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONN").unwrap();
    h.pump();
    assert_eq!(h.dev.muxer().handshake_count(), 1);
    h.pump_until(|_| h_count_zero(&s));
    assert!(sees_eof(&mut s));
}

/// Whether the host peer's stream was closed (non-blocking check).
fn h_count_zero(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    let r = matches!((&*s).read(&mut b), Ok(0));
    s.set_nonblocking(false).unwrap();
    r
}

#[test]
fn silent_guest_times_out_handshake() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let t0 = Instant::now();
    let got = h.pump_until(|p| p.iter().any(|(h, _)| h.op == OP_RST));
    assert_eq!(ops(&got), [OP_REQUEST, OP_RST]);
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert!(sees_eof(&mut s));
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn host_to_guest_respects_credit() {
    let mut h = Harness::new();
    let (mut s, port) = h.host_connect(1024);
    let payload = pattern(1 << 20, 7);
    let writer = {
        let p = payload.clone();
        std::thread::spawn(move || s.write_all(&p).map(|_| s))
    };
    let buf_alloc = 64 * 1024u32;
    let mut received = Vec::new();
    let mut credit_requests = 0;
    let end = Instant::now() + Duration::from_secs(20);
    while received.len() < payload.len() {
        assert!(Instant::now() < end, "stalled at {}", received.len());
        let consumed_before = received.len();
        let got = h.pump();
        for (hd, data) in got {
            match hd.op {
                OP_RW => received.extend(data),
                OP_CREDIT_REQUEST => credit_requests += 1,
                op => panic!("unexpected op {op}"),
            }
        }
        // The device never exceeds the credit of the last update.
        assert!(received.len() as u32 <= consumed_before as u32 + buf_alloc);
        let mut up = hdr(1024, port, OP_CREDIT_UPDATE);
        up.buf_alloc = buf_alloc;
        up.fwd_cnt = received.len() as u32;
        h.send(up, &[]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(received == payload, "payload differs");
    assert!(credit_requests > 0, "device never asked for credit");
    writer.join().unwrap().unwrap();
}

#[test]
fn guest_to_host_large_payload_with_flow_control() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(format!("{}_2000", h.uds.display())).unwrap();
    h.send(hdr(5000, 2000, OP_REQUEST), &[]);
    let got = h.pump();
    let (mut buf_alloc, mut fwd_cnt) = (got[0].0.buf_alloc, got[0].0.fwd_cnt);
    let (mut s, _) = listener.accept().unwrap();
    let payload = pattern(3 << 20, 3);
    let expected = payload.clone();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    });
    let mut sent = 0usize;
    let end = Instant::now() + Duration::from_secs(20);
    while sent < payload.len() {
        assert!(Instant::now() < end, "stalled at {sent}");
        let credit = buf_alloc as usize - (sent - fwd_cnt as usize);
        let n = credit.min(60_000).min(payload.len() - sent);
        if n > 0 {
            h.send(hdr(5000, 2000, OP_RW), &payload[sent..sent + n]);
            sent += n;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
        for (hd, _) in h.pump() {
            assert_eq!(hd.op, OP_CREDIT_UPDATE);
            buf_alloc = hd.buf_alloc;
            fwd_cnt = hd.fwd_cnt;
        }
        assert!(h.dev.muxer().buffered_bytes() <= 256 * 1024);
    }
    h.send(hdr(5000, 2000, OP_SHUTDOWN), &[]);
    let mut sd = hdr(5000, 2000, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    let got = h.pump_until(|p| p.iter().any(|(h, _)| h.op == OP_RST));
    assert_eq!(got.last().unwrap().0.op, OP_RST);
    assert!(reader.join().unwrap() == expected, "payload differs");
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mut h = Harness::with(|c| c.conn_buf_size = 8192);
    let listener = UnixListener::bind(format!("{}_2001", h.uds.display())).unwrap();
    h.send(hdr(5000, 2001, OP_REQUEST), &[]);
    h.pump();
    let (_s, _) = listener.accept().unwrap(); // never reads
    let chunk = vec![0xab; 60_000];
    let mut reset = false;
    for _ in 0..40 {
        h.send(hdr(5000, 2001, OP_RW), &chunk);
        if h.pump().iter().any(|(h, _)| h.op == OP_RST) {
            reset = true;
            break;
        }
        assert!(h.dev.muxer().buffered_bytes() <= 8192);
    }
    assert!(reset);
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn guest_half_close_then_host_close() {
    let mut h = Harness::new();
    let (mut s, port) = h.host_connect(1024);
    let mut sd = hdr(1024, port, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    h.pump();
    // The host sees EOF on its read side but may still send.
    let mut b = [0u8; 8];
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(s.read(&mut b).unwrap(), 0);
    s.write_all(b"late").unwrap();
    let got = h.pump_until(|p| !p.is_empty());
    assert_eq!(got[0].1, b"late");
    s.shutdown(Shutdown::Write).unwrap();
    let got = h.pump_until(|p| p.iter().any(|(h, _)| h.op == OP_SHUTDOWN));
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    h.send(hdr(1024, port, OP_RST), &[]);
    h.pump();
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn host_half_close_then_guest_close() {
    let mut h = Harness::new();
    let (mut s, port) = h.host_connect(1024);
    s.write_all(b"bye").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = h.pump_until(|p| p.iter().any(|(h, _)| h.op == OP_SHUTDOWN));
    assert_eq!(ops(&got), [OP_RW, OP_SHUTDOWN]);
    assert_eq!(got[0].1, b"bye");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    // The guest can still send.
    h.send(hdr(1024, port, OP_RW), b"reply");
    h.pump();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"reply");
    let mut sd = hdr(1024, port, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    assert_eq!(ops(&h.pump()), [OP_RST]);
    assert!(sees_eof(&mut s));
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn host_close_without_guest_rst_times_out() {
    let mut h = Harness::new();
    let (s, _port) = h.host_connect(1024);
    drop(s);
    let got = h.pump_until(|p| p.iter().any(|(h, _)| h.op == OP_RST));
    assert_eq!(ops(&got), [OP_SHUTDOWN, OP_RST]);
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn credit_request_is_answered() {
    let mut h = Harness::new();
    let (_s, port) = h.host_connect(1024);
    h.send(hdr(1024, port, OP_CREDIT_REQUEST), &[]);
    let got = h.pump();
    assert_eq!(ops(&got), [OP_CREDIT_UPDATE]);
    assert_eq!(got[0].0.buf_alloc, 256 * 1024);
}

#[test]
fn many_concurrent_connections() {
    let mut h = Harness::new();
    let mut conns = Vec::new();
    for i in 0..64u32 {
        let (s, port) = h.host_connect(3000 + i);
        conns.push((s, port, 3000 + i));
    }
    let ports: std::collections::HashSet<u32> = conns.iter().map(|c| c.1).collect();
    assert_eq!(ports.len(), 64);
    assert_eq!(h.dev.muxer().connection_count(), 64);
    for (s, _, gp) in conns.iter_mut() {
        s.write_all(format!("to {gp}").as_bytes()).unwrap();
    }
    let got = h.pump_until(|p| p.len() >= 64);
    for (hd, data) in &got {
        assert_eq!(data, format!("to {}", hd.dst_port).as_bytes());
    }
    for (s, port, gp) in conns.iter_mut() {
        h.send(hdr(*gp, *port, OP_RW), format!("from {gp}").as_bytes());
        h.pump();
        let want = format!("from {gp}");
        let mut b = vec![0u8; want.len()];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, want.as_bytes());
    }
}

#[test]
fn connection_cap_is_enforced() {
    let mut h = Harness::with(|c| c.max_connections = 2);
    let _a = h.host_connect(1);
    let _b = h.host_connect(2);
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 3\n").unwrap();
    h.pump();
    assert!(sees_eof(&mut s));
    let _l = UnixListener::bind(format!("{}_9", h.uds.display())).unwrap();
    h.send(hdr(5000, 9, OP_REQUEST), &[]);
    assert_eq!(ops(&h.pump()), [OP_RST]);
    assert_eq!(h.dev.muxer().connection_count(), 2);
}

#[test]
fn virtio_identity_and_config() {
    use crate::devices::virtio::VirtioDevice;
    let h = Harness::new();
    assert_eq!(h.dev.device_type(), 19);
    assert_eq!(h.dev.queue_max_sizes().len(), 3);
    let mut b = [0u8; 8];
    h.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), GUEST_CID);
    assert!(VsockDevice::new(VsockConfig::new(2, h.dir.path().join("x"))).is_err());
}
