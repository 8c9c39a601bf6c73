//! The real `moat-agent` binary, not as PID 1, serving on a unix socket, driven by the
//! host-side `AgentClient` — directly, and through a fake VMM that speaks the hybrid-vsock
//! handshake and then proxies to the agent's socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use moat_agent_protocol::handshake::HandshakeError;
use moat_agent_protocol::health::ServingStatus;
use moat_agent_protocol::{AgentClient, ClientError, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use tempfile::TempDir;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operation that must end (time out, fail) may take before the test calls it
/// hung: a deadline, far above what the operation needs, never a timing claim.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `f` on its own thread; its result and how long it took, or a panic when it is still
/// running after `deadline`.
fn within<T: Send + 'static>(
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let start = Instant::now();
        let out = f();
        let _ = tx.send((out, start.elapsed()));
    });
    rx.recv_timeout(deadline)
        .unwrap_or_else(|_| panic!("still running after {deadline:?}"))
}

/// A fresh directory `$TMPDIR/moat-agent-test-<name>-XXXXXX`, removed on drop.
fn tempdir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("moat-agent-test-{name}-"))
        .tempdir()
        .unwrap()
}

/// A running `moat-agent --listen unix:SOCK`; killed on drop, its log printed if the test
/// failed.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(sock: &Path) -> Agent {
        Self::spawn_with(sock, &[])
    }

    /// `moat-agent --listen unix:SOCK ARGS...`.
    fn spawn_with(sock: &Path, args: &[&str]) -> Agent {
        let log = sock.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_moat-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(args)
            .env("MOAT_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning moat-agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- moat-agent log ---\n{}", self.log());
        }
    }
}

fn sysconf(name: libc::c_int) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(name) };
    assert!(v > 0, "sysconf({name}) = {v}");
    v as u64
}

#[test]
fn serves_health_version_and_guest_details() {
    let dir = tempdir("serve");
    let sock = dir.path().join("agent.sock");
    let agent = Agent::spawn(&sock);
    let client = AgentClient::connect_unix(&sock, CONNECT_TIMEOUT).unwrap();

    assert_eq!(
        client.check().unwrap(),
        ServingStatus::SERVING_STATUS_SERVING
    );

    let v = client.version().unwrap();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.protocol_version, PROTOCOL_VERSION);

    let d = client.guest_details().unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(d.kernel_release, release.trim());
    assert_eq!(d.agent_version, env!("CARGO_PKG_VERSION"));
    let phys = sysconf(libc::_SC_PHYS_PAGES) * sysconf(libc::_SC_PAGESIZE);
    assert!(
        d.memory_total_bytes >= 32 << 20 && d.memory_total_bytes.abs_diff(phys) <= phys / 100,
        "memory_total_bytes {} vs sysconf {phys}",
        d.memory_total_bytes
    );
    assert_eq!(
        u64::from(d.online_cpus),
        sysconf(libc::_SC_NPROCESSORS_ONLN)
    );
    assert!(agent.log().contains("moat-agent: "), "{}", agent.log());

    let s = client.guest_stats().unwrap();
    assert_eq!(s.mem_total_kib * 1024, d.memory_total_bytes, "{s:?}");
    assert!(s.mem_available_kib <= s.mem_total_kib && s.mem_free_kib <= s.mem_total_kib);
    assert!(
        s.procs_total >= 1 && s.procs_running <= s.procs_total,
        "{s:?}"
    );
    assert!(s.uptime_ms > 0, "{s:?}");
}

#[test]
fn the_binary_carries_its_version_marker() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_moat-agent")).unwrap();
    let marker = format!("MOAT_AGENT_VERSION={}\n", env!("CARGO_PKG_VERSION"));
    assert!(
        bin.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "{marker:?} is not in the binary"
    );
}

#[test]
fn the_debug_console_serves_only_where_asked_and_needs_its_busybox() {
    let dir = tempdir("console");
    let sock = dir.path().join("agent.sock");
    let console = dir.path().join("console.sock");
    let console_arg = format!("unix:{}", console.display());
    let _agent = Agent::spawn_with(&sock, &["--debug-console-listen", &console_arg]);
    // The console listens before ttrpc does.
    AgentClient::connect_unix(&sock, CONNECT_TIMEOUT).unwrap();
    let busybox = moat_agent_protocol::console::guest_busybox_path();
    assert!(!busybox.exists(), "this host has {}", busybox.display());
    let stream = UnixStream::connect(&console).unwrap();
    let req = moat_agent_protocol::console::ConsoleRequest::default();
    let (r, _) = within(DEADLINE, move || {
        moat_agent_protocol::console::run_console(stream, &req, io::empty(), &mut io::sink())
    });
    match r {
        Err(moat_agent_protocol::console::ConsoleError::Agent(msg)) => {
            assert!(msg.contains("this pod has no debug tools"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    // Without the option nothing listens.
    let plain = tempdir("console-off");
    let plain_sock = plain.path().join("agent.sock");
    let _plain = Agent::spawn(&plain_sock);
    AgentClient::connect_unix(&plain_sock, CONNECT_TIMEOUT).unwrap();
    let files: Vec<_> = std::fs::read_dir(plain.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut files = files;
    files.sort();
    assert_eq!(
        files,
        [
            "agent.log",
            "agent.sock",
            "agent.sock.portfwd",
            "agent.sock.stdio"
        ]
    );
}

#[test]
fn client_retries_until_the_agent_listens() {
    let dir = tempdir("retry");
    let sock = dir.path().join("agent.sock");
    let start = Instant::now();
    let s = sock.clone();
    let spawner = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        Agent::spawn(&s)
    });
    let client = AgentClient::connect_unix(&sock, CONNECT_TIMEOUT).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        client.check().unwrap(),
        ServingStatus::SERVING_STATUS_SERVING
    );
    let _agent = spawner.join().unwrap();
}

#[test]
fn connect_times_out_when_nothing_listens() {
    let dir = tempdir("timeout");
    let sock = dir.path().join("nobody.sock");
    let path = sock.clone();
    let (err, took) = within(DEADLINE, move || {
        AgentClient::connect_unix(&path, Duration::from_millis(500)).unwrap_err()
    });
    assert!(
        took >= Duration::from_millis(500),
        "gave up early: {took:?}"
    );
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("nobody.sock") && msg.contains("did not answer"),
        "{msg}"
    );

    // The same through the hybrid-vsock path.
    let err =
        AgentClient::connect_hybrid_vsock(&sock, AGENT_VSOCK_PORT, Duration::from_millis(300))
            .unwrap_err();
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
}

/// How the fake VMM answers a `CONNECT` line.
#[derive(Clone, Copy)]
enum Fake {
    /// Close the first `n` connections without a reply (no guest listener yet), then `OK 1234`
    /// and proxy to the agent.
    ProxyAfterClosing(usize),
    /// Reply with this line, then hang up.
    Reply(&'static str),
    /// `OK 1234`, then hold the stream without ever forwarding.
    Blackhole,
}

/// A fake moat-vmm hybrid vsock socket at `uds` forwarding to the agent socket `agent`.
/// Returns the number of connections it accepted so far.
fn fake_vmm(uds: &Path, agent: PathBuf, mode: Fake) -> std::sync::Arc<AtomicUsize> {
    let listener = UnixListener::bind(uds).unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let agent = agent.clone();
            thread::spawn(move || {
                let _ = serve_fake(conn, &agent, mode, n);
            });
        }
    });
    accepted
}

fn serve_fake(conn: UnixStream, agent: &Path, mode: Fake, n: usize) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    assert_eq!(line, format!("CONNECT {AGENT_VSOCK_PORT}\n"));
    // The client must not have sent anything past its line before our reply.
    assert!(reader.buffer().is_empty());
    let mut conn = conn;
    match mode {
        Fake::ProxyAfterClosing(k) if n < k => Ok(()),
        Fake::ProxyAfterClosing(_) => {
            conn.write_all(b"OK 1234\n")?;
            let upstream = UnixStream::connect(agent)?;
            let (mut a_in, mut a_out) = (conn.try_clone()?, conn);
            let (mut b_in, mut b_out) = (upstream.try_clone()?, upstream);
            let t = thread::spawn(move || io::copy(&mut a_in, &mut b_out));
            let _ = io::copy(&mut b_in, &mut a_out);
            let _ = t.join();
            Ok(())
        }
        Fake::Reply(r) => conn.write_all(r.as_bytes()),
        Fake::Blackhole => {
            conn.write_all(b"OK 1234\n")?;
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink);
            Ok(())
        }
    }
}

#[test]
fn hybrid_vsock_handshake_then_ttrpc_through_a_fake_vmm() {
    let dir = tempdir("hybrid");
    let agent_sock = dir.path().join("agent.sock");
    let vmm_sock = dir.path().join("vmm.sock");
    let _agent = Agent::spawn(&agent_sock);
    // The first two handshakes are refused, as while the guest still boots.
    let accepted = fake_vmm(&vmm_sock, agent_sock.clone(), Fake::ProxyAfterClosing(2));

    let client =
        AgentClient::connect_hybrid_vsock(&vmm_sock, AGENT_VSOCK_PORT, CONNECT_TIMEOUT).unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(
        client.check().unwrap(),
        ServingStatus::SERVING_STATUS_SERVING
    );
    let d = client.guest_details().unwrap();
    assert!(!d.kernel_release.is_empty());
    assert!(d.online_cpus >= 1);
}

#[test]
fn hybrid_vsock_garbage_reply_fails_at_once() {
    for (name, reply) in [
        ("garbage", "HTTP/1.1 400 Bad Request\n"),
        ("err", "ERR no such port\n"),
        ("long", "OK 123456789012345678901234567890123456789\n"),
    ] {
        let dir = tempdir(name);
        let vmm_sock = dir.path().join("vmm.sock");
        fake_vmm(
            &vmm_sock,
            dir.path().join("unused.sock"),
            Fake::Reply(reply),
        );
        // Failing at once, not retrying: the deadline is well inside the connect timeout.
        let sock = vmm_sock.clone();
        let (err, _) = within(DEADLINE, move || {
            AgentClient::connect_hybrid_vsock(&sock, AGENT_VSOCK_PORT, 4 * DEADLINE).unwrap_err()
        });
        match &err {
            ClientError::Handshake {
                source: HandshakeError::BadReply(_) | HandshakeError::TooLong(_),
                ..
            } => {}
            e => panic!("{name}: unexpected error {e}"),
        }
        assert!(err.to_string().contains("vmm.sock"), "{err}");
    }
}

#[test]
fn connect_retries_while_the_agent_never_answers_check() {
    // The VMM says OK but nothing answers: not connected, retried until the timeout.
    let dir = tempdir("blackhole");
    let vmm_sock = dir.path().join("vmm.sock");
    let accepted = fake_vmm(&vmm_sock, dir.path().join("unused.sock"), Fake::Blackhole);
    let sock = vmm_sock.clone();
    let (err, _) = within(DEADLINE, move || {
        AgentClient::connect_hybrid_vsock(&sock, AGENT_VSOCK_PORT, Duration::from_secs(1))
            .unwrap_err()
    });
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert!(
        err.to_string().contains("Health.Check got no reply"),
        "{err}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

#[test]
fn rpc_times_out_when_the_agent_never_answers() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let client = AgentClient::from_stream(ours, "pair".into())
        .unwrap()
        .with_call_timeout(Duration::from_millis(300));
    let (err, _) = within(DEADLINE, move || client.check().unwrap_err());
    assert!(
        matches!(
            err,
            ClientError::CallTimeout {
                method: "Health.Check",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn agent_stops_on_sigterm_and_removes_its_socket() {
    let dir = tempdir("sigterm");
    let sock = dir.path().join("agent.sock");
    let mut agent = Agent::spawn(&sock);
    AgentClient::connect_unix(&sock, CONNECT_TIMEOUT)
        .unwrap()
        .check()
        .unwrap();
    // SAFETY: plain kill(2) of our own child.
    let rc = unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(!sock.exists());
    assert!(agent.log().contains("shutting down"), "{}", agent.log());
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_moat-agent"))
        .args(["--listen", "tcp:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither vsock:PORT nor unix:PATH"));
}

/// The agent binary serves port-forward streams next to its socket (`PATH.portfwd`): a
/// stream names a port, the agent connects to it on loopback and carries bytes both ways.
#[test]
fn port_forward_streams_reach_a_loopback_port() {
    let dir = tempdir("portfwd");
    let sock = dir.path().join("agent.sock");
    let _agent = Agent::spawn(&sock);
    AgentClient::connect_unix(&sock, CONNECT_TIMEOUT).unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let echo = thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        let mut req = Vec::new();
        c.read_to_end(&mut req).unwrap();
        c.write_all(&req.to_ascii_uppercase()).unwrap();
    });
    let path = moat_agent_protocol::port_forward::port_forward_socket_path(&sock);
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(&moat_agent_protocol::port_forward::request_line(port))
        .unwrap();
    let line = moat_agent_protocol::stdio::read_line(&mut s, 1024).unwrap();
    assert_eq!(line, b"OK\n");
    s.write_all(b"through the agent").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "THROUGH THE AGENT");
    echo.join().unwrap();
}
