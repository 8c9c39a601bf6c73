//! Tests of the hub: the "process" is the test itself, using the [`ChildStdio`] fds directly;
//! streams are socketpairs served by [`conn::handle`], and one test goes through a real unix
//! listener and [`StdioHub::serve`].

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use moat_agent_protocol::stdio::{
    self as wire, open_stream, Channel, StdioError as WireError, StreamHeader,
};

use super::conn;
use super::{Channels, ChildStdio, StdioError, StdioHub};
use crate::listener::Conn;
use crate::pty;

const TIMEOUT: Duration = Duration::from_secs(10);

fn header(container_id: &str, exec_id: &str, channel: Channel) -> StreamHeader {
    StreamHeader {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        channel,
    }
}

/// Attaches a stream through a socketpair whose agent end `conn::handle` serves in a thread.
fn attach(
    hub: &Arc<StdioHub>,
    container_id: &str,
    exec_id: &str,
    channel: Channel,
) -> Result<UnixStream, WireError> {
    let (host, agent) = UnixStream::pair().unwrap();
    let hub = Arc::clone(hub);
    thread::spawn(move || conn::handle(&hub, Conn::new(OwnedFd::from(agent))));
    open_stream(host, &header(container_id, exec_id, channel), TIMEOUT)
}

/// The agent's message of a refused attachment.
fn refusal(result: Result<UnixStream, WireError>) -> String {
    match result {
        Err(WireError::Refused { message, .. }) => message,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a stream"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn only(stdin: bool, stdout: bool, stderr: bool) -> Channels {
    Channels {
        stdin,
        stdout,
        stderr,
    }
}

fn read_all(mut stream: UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn output_is_held_until_attach_and_delivered_byte_exact() {
    let hub = StdioHub::new();
    let child = hub
        .prepare("c1", "", only(false, true, false), false)
        .unwrap();
    let ChildStdio { stdout, .. } = child;
    let data = pattern(10 << 20);
    let expected = data.clone();
    let writer = thread::spawn(move || {
        let mut f = File::from(stdout);
        f.write_all(&data).unwrap();
    });
    thread::sleep(Duration::from_millis(200));
    assert!(
        !writer.is_finished(),
        "the pipe must hold the writer back until the host attaches"
    );
    let stream = attach(&hub, "c1", "", Channel::Stdout).unwrap();
    let got = read_all(stream);
    writer.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "stdout differs");
}

#[test]
fn output_written_before_the_process_exited_is_delivered() {
    let hub = StdioHub::new();
    let child = hub
        .prepare("c1", "e1", only(false, true, true), false)
        .unwrap();
    File::from(child.stdout).write_all(b"out\n").unwrap();
    File::from(child.stderr).write_all(b"err\n").unwrap();
    drop(child.stdin);
    let err = attach(&hub, "c1", "e1", Channel::Stderr).unwrap();
    let out = attach(&hub, "c1", "e1", Channel::Stdout).unwrap();
    assert_eq!(read_all(out), b"out\n");
    assert_eq!(read_all(err), b"err\n");
}

#[test]
fn stdin_round_trip_with_eof() {
    let hub = StdioHub::new();
    let child = hub
        .prepare("c1", "", only(true, false, false), false)
        .unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        File::from(child.stdin).read_to_end(&mut got).unwrap();
        got
    });
    let mut stream = attach(&hub, "c1", "", Channel::Stdin).unwrap();
    let data = pattern(3 << 20);
    stream.write_all(&data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let got = reader.join().unwrap();
    assert!(
        got == data,
        "stdin differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
}

#[test]
fn unrequested_channels_are_dev_null() {
    let hub = StdioHub::new();
    let child = hub.prepare("c1", "", Channels::default(), false).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(File::from(child.stdin).read(&mut buf).unwrap(), 0);
    File::from(child.stdout).write_all(b"lost").unwrap();
    File::from(child.stderr).write_all(b"lost").unwrap();
}

#[test]
fn refusals() {
    let hub = StdioHub::new();
    let _child = hub
        .prepare("c1", "", only(false, true, false), false)
        .unwrap();

    let msg = refusal(attach(&hub, "c2", "", Channel::Stdout));
    assert!(msg.contains("no process \"c2\"/\"\""), "{msg}");
    let msg = refusal(attach(&hub, "c1", "x", Channel::Stdout));
    assert!(msg.contains("no process"), "{msg}");
    let msg = refusal(attach(&hub, "c1", "", Channel::Stderr));
    assert!(msg.contains("stderr was not requested"), "{msg}");

    let _first = attach(&hub, "c1", "", Channel::Stdout).unwrap();
    let msg = refusal(attach(&hub, "c1", "", Channel::Stdout));
    assert!(msg.contains("already attached"), "{msg}");

    hub.remove("c1", "");
    let msg = refusal(attach(&hub, "c1", "", Channel::Stdout));
    assert!(msg.contains("no process"), "{msg}");
}

#[test]
fn garbage_and_silent_streams_are_refused() {
    let hub = StdioHub::new();
    let (mut host, agent) = UnixStream::pair().unwrap();
    let h = Arc::clone(&hub);
    let t = thread::spawn(move || conn::handle(&h, Conn::new(OwnedFd::from(agent))));
    host.write_all(b"GET / HTTP/1.0\n").unwrap();
    let reply = String::from_utf8(read_all(host)).unwrap();
    assert!(
        reply.starts_with("ERR ") && reply.contains("bad stdio header \"GET / HTTP/1.0\""),
        "{reply}"
    );
    t.join().unwrap();

    let hub = Arc::new(StdioHub {
        procs: Default::default(),
        header_timeout: Duration::from_millis(100),
    });
    let (host, agent) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || conn::handle(&hub, Conn::new(OwnedFd::from(agent))));
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = String::from_utf8(read_all(host)).unwrap();
    assert!(reply.starts_with("ERR "), "{reply}");
    t.join().unwrap();
}

#[test]
fn prepare_errors_and_removal() {
    let hub = StdioHub::new();
    let _c = hub
        .prepare("c1", "", only(true, true, true), false)
        .unwrap();
    assert!(matches!(
        hub.prepare("c1", "", Channels::default(), false),
        Err(StdioError::AlreadyRegistered { .. })
    ));
    assert!(matches!(
        hub.prepare("c1", "t", only(true, true, true), true),
        Err(StdioError::TerminalStderr { .. })
    ));
    assert!(matches!(
        hub.resize("c1", "", 10, 10),
        Err(StdioError::NoTerminal { .. })
    ));
    assert!(matches!(
        hub.resize("c9", "", 10, 10),
        Err(StdioError::UnknownProcess { .. })
    ));
    let _e = hub.prepare("c1", "e", Channels::default(), false).unwrap();
    let _o = hub.prepare("c2", "", Channels::default(), false).unwrap();
    hub.remove_container("c1");
    assert_eq!(hub.lock().len(), 1);
    hub.prepare("c1", "", Channels::default(), false).unwrap();
}

/// Puts the slave in raw mode: bytes pass unchanged both ways, no echo.
fn make_raw(slave: &OwnedFd) {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let mut t = tcgetattr(slave.as_raw_fd()).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(slave.as_raw_fd(), SetArg::TCSANOW, &t).unwrap();
}

/// Prepares terminal process ("c1", `exec_id`) and gives it a new pty (as its init process
/// would): returns the slave, in raw mode.
fn terminal_process(hub: &StdioHub, exec_id: &str, channels: Channels) -> OwnedFd {
    let child = hub.prepare("c1", exec_id, channels, true).unwrap();
    assert!(child.terminal);
    // Until the init process puts the slave there, the process's stdio is /dev/null.
    for fd in [&child.stdin, &child.stdout, &child.stderr] {
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(path, std::path::Path::new("/dev/null"));
    }
    let pty = pty::open_pty().unwrap();
    make_raw(&pty.slave);
    hub.set_terminal("c1", exec_id, pty.master, Some((40, 120)))
        .unwrap();
    assert_eq!(pty::window_size(&pty.slave).unwrap(), (40, 120));
    pty.slave
}

#[test]
fn tty_echo_through_streams_and_resize() {
    let hub = StdioHub::new();
    let slave = terminal_process(&hub, "t", only(true, true, false));
    hub.resize("c1", "t", 50, 132).unwrap();
    assert_eq!(pty::window_size(&slave).unwrap(), (50, 132));

    let data = pattern(200_000);
    let len = data.len();
    // The "process": a cat on the slave, which exits after `len` bytes.
    let cat = thread::spawn(move || {
        let mut input = File::from(slave.try_clone().unwrap());
        let mut output = File::from(slave);
        let mut buf = vec![0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = input.read(&mut buf).unwrap();
            assert!(n > 0);
            output.write_all(&buf[..n]).unwrap();
            done += n;
        }
    });

    let out = attach(&hub, "c1", "t", Channel::Stdout).unwrap();
    let mut input = attach(&hub, "c1", "t", Channel::Stdin).unwrap();
    let reader = thread::spawn(move || read_all(out));
    input.write_all(&data).unwrap();
    input.shutdown(Shutdown::Write).unwrap();
    cat.join().unwrap();
    // All slave fds are closed now: the master reads EIO, the stream ends.
    let got = reader.join().unwrap();
    assert!(got == data, "echo differs ({} of {len} bytes)", got.len());
    assert!(matches!(
        refusal(attach(&hub, "c1", "t", Channel::Stderr)),
        m if m.contains("stderr was not requested")
    ));
    hub.resize("c1", "t", 1, 2).unwrap();
}

#[test]
fn tty_output_survives_the_process() {
    let hub = StdioHub::new();
    let slave = terminal_process(&hub, "", only(false, true, false));
    File::from(slave).write_all(b"bye\n").unwrap();
    let out = attach(&hub, "c1", "", Channel::Stdout).unwrap();
    assert_eq!(read_all(out), b"bye\n");
}

#[test]
fn a_terminal_is_attachable_only_once_its_master_arrived() {
    let hub = StdioHub::new();
    let _child = hub
        .prepare("c1", "t", only(true, true, false), true)
        .unwrap();
    let msg = refusal(attach(&hub, "c1", "t", Channel::Stdout));
    assert!(msg.contains("not set up yet"), "{msg}");
    assert!(matches!(
        hub.resize("c1", "t", 10, 10),
        Err(StdioError::TerminalPending { .. })
    ));
    let pty = pty::open_pty().unwrap();
    let again = pty.master.try_clone().unwrap();
    hub.set_terminal("c1", "t", pty.master, None).unwrap();
    assert!(matches!(
        hub.set_terminal("c1", "t", again, None),
        Err(StdioError::TerminalAlreadySet { .. })
    ));
    let _out = attach(&hub, "c1", "t", Channel::Stdout).unwrap();
    hub.resize("c1", "t", 10, 10).unwrap();

    // Not for processes without a terminal, nor unknown ones.
    let _plain = hub
        .prepare("c1", "p", only(false, true, false), false)
        .unwrap();
    let m = || pty::open_pty().unwrap().master;
    assert!(matches!(
        hub.set_terminal("c1", "p", m(), None),
        Err(StdioError::NoTerminal { .. })
    ));
    assert!(matches!(
        hub.set_terminal("c9", "", m(), None),
        Err(StdioError::UnknownProcess { .. })
    ));
}

#[test]
fn serve_on_a_real_unix_listener() {
    let tmp = crate::testing::tempdir("stdio");
    let dir = tmp.path();
    let path = wire::stdio_socket_path(&dir.join("agent.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    // As listener::bind makes it for ttrpc: serve must cope.
    listener.set_nonblocking(true).unwrap();
    let hub = StdioHub::new();
    hub.serve(OwnedFd::from(listener)).unwrap();

    let child = hub
        .prepare("c1", "e1", only(true, true, false), false)
        .unwrap();
    let ChildStdio { stdin, stdout, .. } = child;
    // The "process": upper-cases stdin to stdout.
    let process = thread::spawn(move || {
        let mut text = String::new();
        File::from(stdin).read_to_string(&mut text).unwrap();
        File::from(stdout)
            .write_all(text.to_uppercase().as_bytes())
            .unwrap();
    });
    let connect = |channel| {
        open_stream(
            UnixStream::connect(&path).unwrap(),
            &header("c1", "e1", channel),
            TIMEOUT,
        )
    };
    let mut input = connect(Channel::Stdin).unwrap();
    let output = connect(Channel::Stdout).unwrap();
    input.write_all(b"hello stdio").unwrap();
    input.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(output), b"HELLO STDIO");
    process.join().unwrap();
    assert!(refusal(connect(Channel::Stdout)).contains("already attached"));
}
