//! The shim's agent client against a fake agent ([`super::testing`]) that lies, stalls and
//! floods: every call ends within its deadline (with a generous margin: these are
//! correctness bounds, not timings), oversized replies are refused, a stalled connection is
//! replaced.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_agent_protocol::handshake;
use moat_agent_protocol::health::{CheckResponse, ServingStatus};
use moat_agent_protocol::port_forward;
use moat_agent_protocol::protobuf::Message;
use moat_agent_protocol::stdio::Channel;
use moat_agent_protocol::ttrpc;

use super::testing::{FakeAgent, Script};
use super::*;

/// What a call may take beyond its deadline on a loaded test machine.
const MARGIN: Duration = Duration::from_secs(5);

fn assert_within(start: Instant, deadline: Duration) {
    let took = start.elapsed();
    assert!(
        took <= deadline + MARGIN,
        "took {took:?}, deadline {deadline:?}"
    );
}

#[test]
fn millions_of_pids_are_refused() {
    let fake = FakeAgent::start(Script {
        pids: 4_000_000,
        ..Default::default()
    });
    // A deadline long enough for 4 MB through a debug build: this test is about the cap.
    let agent = fake.agent(Deadlines {
        quick: Duration::from_secs(30),
        ..Deadlines::DEFAULT
    });
    let e = agent.list_processes("c").unwrap_err();
    assert!(matches!(e, ClientError::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("4000000 pids"), "{e}");
    // Past ttrpc's 4 MiB a reply never reaches the shim's decoder at all.
    let fake = FakeAgent::start(Script {
        pids: limits::AGENT_MAX_MESSAGE + 1,
        ..Default::default()
    });
    let e = fake
        .agent(Deadlines::DEFAULT)
        .list_processes("c")
        .unwrap_err();
    assert!(!e.is_timeout(), "{e}");
}

/// A hostile agent writing raw ttrpc frames on the first `conns` connections: `Health.Check`
/// is answered honestly, every other call with a frame of `claim` bytes.
fn raw_agent(listener: UnixListener, conns: usize, claim: usize) {
    for stream in listener.incoming().take(conns) {
        let mut s = stream.unwrap();
        std::thread::spawn(move || {
            while let Some((id, method)) = read_request(&mut s) {
                let payload = match method.as_str() {
                    "Check" => {
                        let mut c = CheckResponse::new();
                        c.status = ServingStatus::SERVING_STATUS_SERVING.into();
                        let mut r = ttrpc::Response::new();
                        r.payload = c.write_to_bytes().unwrap();
                        r.write_to_bytes().unwrap()
                    }
                    _ => vec![0; claim],
                };
                let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
                frame.extend(id.to_be_bytes());
                frame.extend([2, 0]); // a response, no flags
                frame.extend(payload);
                if s.write_all(&frame).is_err() {
                    return;
                }
            }
        });
    }
}

/// The stream id and method of the next request frame.
fn read_request(s: &mut impl Read) -> Option<(u32, String)> {
    let mut h = [0u8; 10];
    s.read_exact(&mut h).ok()?;
    let len = u32::from_be_bytes(h[..4].try_into().unwrap()) as usize;
    let id = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((id, ttrpc::Request::parse_from_bytes(&body).ok()?.method))
}

#[test]
fn a_reply_frame_over_4_mib_is_discarded_unread() {
    let tmp = tempfile::TempDir::new().unwrap();
    let path = tmp.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let claim = limits::AGENT_MAX_MESSAGE + 1;
    let server = std::thread::spawn(move || raw_agent(listener, 2, claim));
    let agent = Agent::connect(AgentAddress::Unix(path), MARGIN, Deadlines::DEFAULT).unwrap();
    let start = Instant::now();
    let e = agent.list_processes("c").unwrap_err();
    assert_within(start, Deadlines::DEFAULT.quick);
    // ttrpc's receiver discards the frame in 4 KiB pages and fails the call: no timeout, and
    // the connection still serves the next call the same way.
    assert!(e.to_string().contains("exceed maximum message size"), "{e}");
    assert!(agent.list_processes("c").is_err());
    server.join().unwrap();
}

#[test]
fn the_pid_cap_is_exact() {
    for (pids, ok) in [
        (3, true),
        (limits::MAX_PIDS, true),
        (limits::MAX_PIDS + 1, false),
    ] {
        let fake = FakeAgent::start(Script {
            pids,
            ..Default::default()
        });
        let r = fake.agent(Deadlines::DEFAULT).list_processes("c");
        assert_eq!(r.is_ok(), ok, "{pids}: {r:?}");
    }
}

#[test]
fn a_silent_stats_call_ends_at_its_deadline_while_other_calls_go_on() {
    let fake = FakeAgent::start(Script {
        stats_hang: true,
        pids: 2,
        wait_status: Some(0),
        ..Default::default()
    });
    let agent = Arc::new(fake.agent(Deadlines::DEFAULT));
    let quick = Deadlines::DEFAULT.quick;
    let start = Instant::now();
    let stats = {
        let agent = agent.clone();
        std::thread::spawn(move || agent.stats_container("c"))
    };
    // Several more stalled calls at once: each one ends on its own deadline.
    let more: Vec<_> = (0..4)
        .map(|_| {
            let agent = agent.clone();
            std::thread::spawn(move || agent.stats_container("c").unwrap_err())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // The shim stays responsive meanwhile, on both connections.
    let t = Instant::now();
    assert_eq!(agent.list_processes("c").unwrap().len(), 2);
    assert_eq!(
        agent
            .wait_process("c", "", limits::WAIT_SLICE)
            .unwrap()
            .status,
        0
    );
    assert!(t.elapsed() < quick, "{:?}", t.elapsed());
    let e = stats.join().unwrap().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_within(start, quick);
    for t in more {
        assert!(t.join().unwrap().is_timeout());
    }
    assert_within(start, quick);
}

#[test]
fn a_connection_left_unanswered_is_made_anew() {
    let fake = FakeAgent::start(Script {
        resize_hang: true,
        pids: 1,
        ..Default::default()
    });
    let deadlines = Deadlines {
        quick: Duration::from_millis(200),
        max_unanswered: 3,
        ..Deadlines::DEFAULT
    };
    let agent = fake.agent(deadlines);
    assert_eq!(fake.calls("Check"), 2, "the control and quick connections");
    for _ in 0..3 {
        let t = Instant::now();
        let e = agent.tty_win_resize("c", "", 24, 80).unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_within(t, deadlines.quick);
    }
    // The quick connection was closed: the next call makes a new one and is answered.
    assert_eq!(agent.list_processes("c").unwrap(), vec![1]);
    assert_eq!(fake.calls("Check"), 3);
    assert_eq!(fake.calls("TtyWinResize"), 3);
}

#[test]
fn a_vanished_agent_fails_calls_within_their_deadline() {
    let fake = FakeAgent::start(Script {
        pids: 1,
        ..Default::default()
    });
    let deadlines = Deadlines {
        quick: Duration::from_millis(500),
        ..Deadlines::DEFAULT
    };
    let agent = fake.agent(deadlines);
    drop(fake);
    for _ in 0..3 {
        let t = Instant::now();
        assert!(agent.list_processes("c").is_err());
        // At worst: the call's own deadline, then one reconnect within the same deadline.
        assert_within(t, 2 * deadlines.quick);
    }
}

#[test]
fn stdio_streams_open_against_an_honest_agent() {
    let fake = FakeAgent::start(Script::default());
    let agent = fake.agent(Deadlines::DEFAULT);
    let deadline = Instant::now() + agent.deadlines().stdio_open;
    let mut s = agent
        .open_stdio("c", "", Channel::Stdout, deadline)
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "hello\n");
}

#[test]
fn a_drip_fed_vsock_handshake_fails_at_its_deadline() {
    let tmp = tempfile::TempDir::new().unwrap();
    let path = tmp.path().join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // A VMM socket that reads `CONNECT <port>` and answers one byte of `OK …` at a time.
    let vmm = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let line = handshake::read_reply_line(&mut s).unwrap();
        assert_eq!(line, b"CONNECT 1025\n");
        for b in b"OK 1234567890".iter().cycle().take(20) {
            std::thread::sleep(Duration::from_millis(150));
            if s.write_all(&[*b]).is_err() {
                return;
            }
        }
    });
    let budget = Duration::from_secs(1);
    let start = Instant::now();
    let address = AgentAddress::HybridVsock(path);
    let e = stdio::open(&address, "c", "", Channel::Stdout, start + budget).unwrap_err();
    assert!(matches!(e, StdioOpenError::Deadline(_)), "{e}");
    let took = start.elapsed();
    assert!(took >= budget - Duration::from_millis(50), "{took:?}");
    assert_within(start, budget);
    vmm.join().unwrap();
}

/// A hostile agent's port-forward listener at `<tmp>/a.sock.portfwd`: reads the request line,
/// then `answer` plays the guest; returns the agent's address.
fn hostile_port_forwarder(
    tmp: &tempfile::TempDir,
    answer: impl FnOnce(UnixStream) + Send + 'static,
) -> (AgentAddress, std::thread::JoinHandle<()>) {
    let path = tmp.path().join("a.sock");
    let listener = UnixListener::bind(port_forward::port_forward_socket_path(&path)).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let line = moat_agent_protocol::stdio::read_line(&mut s, 64).unwrap();
        assert_eq!(port_forward::parse_request(&line), Ok(8080));
        answer(s);
    });
    (AgentAddress::Unix(path), t)
}

#[test]
fn a_port_forward_reply_drip_fed_or_endless_fails_within_its_deadline() {
    let budget = Duration::from_secs(1);
    let drip = |mut s: UnixStream| {
        for b in b"OK".iter().cycle().take(20) {
            std::thread::sleep(Duration::from_millis(150));
            if s.write_all(&[*b]).is_err() {
                return;
            }
        }
    };
    let endless = |mut s: UnixStream| {
        let junk = [b'E'; 4096];
        while s.write_all(&junk).is_ok() {}
    };
    let tmp = tempfile::TempDir::new().unwrap();
    let (address, t) = hostile_port_forwarder(&tmp, drip);
    let start = Instant::now();
    let e = stdio::open_port_forward(&address, 8080, start + budget).unwrap_err();
    assert!(matches!(e, StdioOpenError::Deadline(_)), "{e}");
    assert_within(start, budget);
    t.join().unwrap();
    let tmp = tempfile::TempDir::new().unwrap();
    let (address, t) = hostile_port_forwarder(&tmp, endless);
    let start = Instant::now();
    let e = stdio::open_port_forward(&address, 8080, start + budget).unwrap_err();
    assert!(e.to_string().contains("without a newline"), "{e}");
    assert_within(start, budget);
    drop(e);
    t.join().unwrap();
}

#[test]
fn a_port_forward_refusal_is_quoted_escaped() {
    let tmp = tempfile::TempDir::new().unwrap();
    let (address, t) = hostile_port_forwarder(&tmp, |mut s| {
        s.write_all(b"ERR \x1b[2Jgone\x07\n").unwrap();
    });
    let e = stdio::open_port_forward(&address, 8080, Instant::now() + Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(e, StdioOpenError::PortRefused { port: 8080, .. }),
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07'),
        "{shown:?}"
    );
    assert!(shown.contains("gone"), "{shown}");
    t.join().unwrap();
}
