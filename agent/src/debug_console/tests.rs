//! Sessions over socketpairs (and one real unix listener), with the host's static busybox
//! standing in for the pod share's, and a direct `waitpid` standing in for the reaper.

use std::io::{self, Write};
use std::os::unix::io::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use moat_agent_protocol::console::{
    run_console, ConsoleConnection, ConsoleError, ConsoleRequest, Frame, FrameReader,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::process::busybox_args;
use super::{DebugConsole, ExitWaiter};
use crate::listener::{self, Conn, ListenAddr};
use crate::reaper::ExitStatus;

/// The host's busybox (Debian's busybox-static).
const HOST_BUSYBOX: &str = "/bin/busybox";

/// How long a session that must end may take before the test calls it hung (a deadline, not a
/// timing claim).
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits for exactly the session's process, so no other test's child is reaped.
struct DirectWait;

impl ExitWaiter for DirectWait {
    fn watch(&self, _pid: u32) {}

    fn wait_exit(&self, pid: u32) -> Option<ExitStatus> {
        loop {
            match waitpid(Pid::from_raw(pid as i32), None) {
                Ok(WaitStatus::Exited(_, code)) => return Some(ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(_, sig, core_dumped)) => {
                    return Some(ExitStatus::Signaled {
                        signal: sig as i32,
                        core_dumped,
                    })
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return None,
            }
        }
    }
}

fn console_with(busybox: &Path, max_sessions: usize) -> Arc<DebugConsole> {
    assert!(
        Path::new(HOST_BUSYBOX).is_file() || busybox != Path::new(HOST_BUSYBOX),
        "these tests need the host's static busybox at {HOST_BUSYBOX} (apt install busybox-static)"
    );
    Arc::new(DebugConsole::with_busybox(
        Arc::new(DirectWait),
        busybox.to_path_buf(),
        max_sessions,
    ))
}

/// A client connection whose agent end a session thread serves; the thread's handle.
fn connect(console: &Arc<DebugConsole>) -> (UnixStream, thread::JoinHandle<()>) {
    let (host, agent) = UnixStream::pair().unwrap();
    let console = Arc::clone(console);
    let t = thread::spawn(move || console.handle(Conn::new(OwnedFd::from(agent))));
    (host, t)
}

/// Runs `f` on its own thread and returns its result, or panics after [`DEADLINE`].
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE).expect("the session hung")
}

/// What a whole session gave: stdout, stderr, status.
struct Outcome {
    stdout: String,
    stderr: String,
    status: Result<i32, ConsoleError>,
}

/// Runs `req` against `busybox` with `stdin` (then its EOF).
fn session_with(busybox: &str, req: ConsoleRequest, stdin: &[u8]) -> Outcome {
    let console = console_with(Path::new(busybox), 4);
    let stdin = stdin.to_vec();
    within(move || {
        let (host, agent) = connect(&console);
        let conn = ConsoleConnection::open(host, &req).unwrap();
        conn.copy_stdin(io::Cursor::new(stdin)).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = conn.wait(&mut out, Some(&mut err));
        agent.join().unwrap();
        Outcome {
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            status,
        }
    })
}

fn session(argv: &[&str], stdin: &[u8]) -> Outcome {
    let req = ConsoleRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    session_with(HOST_BUSYBOX, req, stdin)
}

#[test]
fn uname_reports_this_kernel_and_exits_0() {
    let o = session(&["uname", "-r"], b"");
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy();
    assert_eq!(o.stdout, format!("{release}\n"));
    assert_eq!(o.stderr, "");
    assert_eq!(o.status.unwrap(), 0);
}

#[test]
fn exit_statuses_and_signals_come_back() {
    assert_eq!(session(&["exit", "3"], b"").status.unwrap(), 3);
    assert_eq!(
        session(&["sh", "-c", "kill -9 $$"], b"").status.unwrap(),
        128 + 9
    );
}

#[test]
fn stdin_reaches_cat_and_stderr_is_separate() {
    let o = session(&["cat"], b"hello\nworld\n");
    assert_eq!(o.stdout, "hello\nworld\n");
    assert_eq!(o.status.unwrap(), 0);
    let o = session(&["sh", "-c", "echo out; echo err >&2; exit 4"], b"");
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!(o.status.unwrap(), 4);
}

#[test]
fn no_argv_is_a_shell_reading_stdin_with_a_clean_environment() {
    let o = session(&[], b"echo \"$PATH|$HOME|${TERM-unset}\"; pwd; exit 5\n");
    assert_eq!(o.stdout, "/usr/sbin:/usr/bin:/sbin:/bin|/|unset\n/\n");
    assert_eq!(o.status.unwrap(), 5);
}

#[test]
fn argv_words_are_quoted_for_the_shell() {
    let argv = ["printf", "%s|", "a b", "it's", "$HOME", "", "`x`;*"];
    let o = session(&argv, b"");
    assert_eq!(o.stdout, "a b|it's|$HOME||`x`;*|");
    assert_eq!(
        busybox_args(&["it's".to_string()]),
        vec!["sh", "-c", r"'it'\''s'"]
    );
    assert_eq!(busybox_args(&[]), vec!["sh"]);
}

#[test]
fn a_tty_session_has_a_terminal_of_the_asked_size() {
    let req = ConsoleRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "[ -t 0 ] && [ -t 1 ] && echo TTY-YES; tty; stty size; echo \"TERM=$TERM\"".into(),
        ],
        tty: true,
        term: "xterm-256color".into(),
        rows: 33,
        cols: 111,
    };
    let o = session_with(HOST_BUSYBOX, req, b"");
    assert_eq!(o.status.unwrap(), 0, "{}", o.stdout);
    let lines: Vec<&str> = o.stdout.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines[0], "TTY-YES", "{lines:?}");
    assert!(lines[1].starts_with("/dev/pts/"), "{lines:?}");
    assert_eq!(&lines[2..], ["33 111", "TERM=xterm-256color"]);
    assert_eq!(o.stderr, "", "a tty has no separate stderr");
    // Without a tty there is none.
    let o = session(&["sh", "-c", "[ -t 0 ] || echo NO-TTY; tty"], b"");
    assert_eq!(o.stdout, "NO-TTY\nnot a tty\n");
    assert_eq!(o.status.unwrap(), 1);
}

#[test]
fn a_tty_session_follows_resizes() {
    let console = console_with(Path::new(HOST_BUSYBOX), 4);
    let out = within(move || {
        let (host, agent) = connect(&console);
        let req = ConsoleRequest {
            argv: vec!["sh".into(), "-c".into(), "read x; stty size".into()],
            tty: true,
            ..Default::default()
        };
        let conn = ConsoleConnection::open(host, &req).unwrap();
        let input = conn.input();
        input.resize(40, 120).unwrap();
        input.stdin(b"go\n").unwrap();
        let mut out = Vec::new();
        assert_eq!(conn.wait(&mut out, None).unwrap(), 0);
        agent.join().unwrap();
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(out.contains("40 120"), "{out:?}");
}

#[test]
fn a_missing_busybox_is_an_error_frame() {
    let dir = crate::testing::tempdir("console");
    let missing = dir.path().join(moat_agent_protocol::DEBUG_BUSYBOX);
    let o = session_with(missing.to_str().unwrap(), ConsoleRequest::default(), b"");
    match o.status {
        Err(ConsoleError::Agent(msg)) => {
            assert!(msg.contains("this pod has no debug tools"), "{msg}");
            assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_request_is_an_error_frame() {
    let console = console_with(Path::new(HOST_BUSYBOX), 4);
    let msg = within(move || {
        let (mut host, agent) = connect(&console);
        host.write_all(b"{\"argv\":\"ls\"}\n").unwrap();
        let mut reader = FrameReader::new(&host);
        let msg = match reader.read_frame().unwrap() {
            Some(Frame::Error(m)) => m.into_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(reader.read_frame().unwrap(), None, "closed after ERROR");
        agent.join().unwrap();
        msg
    });
    assert!(msg.contains("bad debug console request"), "{msg}");
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Starts `sh -c 'echo $$; exec sleep 1000'` in a session on `host` and returns the pid it
/// printed (a child of the session's shell, in its process group).
fn start_sleeper(host: &UnixStream, tty: bool) -> u32 {
    let req = ConsoleRequest {
        argv: vec!["sh".into(), "-c".into(), "echo $$; exec sleep 1000".into()],
        tty,
        ..Default::default()
    };
    (&*host).write_all(&req.encode().unwrap()).unwrap();
    let mut reader = FrameReader::new(host);
    let mut out = Vec::new();
    while !out.contains(&b'\n') {
        match reader.read_frame().unwrap() {
            Some(Frame::Output(b)) => out.extend_from_slice(b),
            other => panic!("{other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.trim().parse().unwrap_or_else(|_| panic!("{text:?}"))
}

#[test]
fn closing_the_connection_kills_the_session() {
    for tty in [false, true] {
        let console = console_with(Path::new(HOST_BUSYBOX), 4);
        within(move || {
            let (host, agent) = connect(&console);
            let pid = start_sleeper(&host, tty);
            assert!(!is_gone(pid), "sleep {pid} is running");
            drop(host);
            agent.join().unwrap();
            let deadline = Instant::now() + DEADLINE;
            while !is_gone(pid) {
                assert!(
                    Instant::now() < deadline,
                    "sleep {pid} survived (tty: {tty})"
                );
                thread::sleep(Duration::from_millis(10));
            }
        });
    }
}

#[test]
fn a_client_that_leaves_while_stdin_is_full_still_ends_the_session() {
    let console = console_with(Path::new(HOST_BUSYBOX), 4);
    within(move || {
        let (host, agent) = connect(&console);
        let pid = start_sleeper(&host, false);
        // sleep never reads: fill its stdin pipe (and the socket) from another thread.
        let writer = host.try_clone().unwrap();
        thread::spawn(move || {
            let chunk = vec![b'x'; 16 * 1024];
            while (&writer)
                .write_all(&[&[1u8, 0, 0, 0x40, 0][..], &chunk].concat())
                .is_ok()
            {}
        });
        thread::sleep(Duration::from_millis(200));
        host.shutdown(std::net::Shutdown::Both).unwrap();
        agent.join().unwrap();
        let deadline = Instant::now() + DEADLINE;
        while !is_gone(pid) {
            assert!(Instant::now() < deadline, "sleep {pid} survived");
            thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn at_most_max_sessions_run_at_once() {
    let dir = crate::testing::tempdir("console");
    let sock: PathBuf = dir.path().join("console.sock");
    let fd = listener::bind(&ListenAddr::Unix(sock.clone())).unwrap();
    let console = console_with(Path::new(HOST_BUSYBOX), 2);
    Arc::clone(&console).serve(fd).unwrap();
    within(move || {
        let a = UnixStream::connect(&sock).unwrap();
        let b = UnixStream::connect(&sock).unwrap();
        start_sleeper(&a, false);
        start_sleeper(&b, false);
        let req = ConsoleRequest {
            argv: vec!["true".into()],
            ..Default::default()
        };
        let third = UnixStream::connect(&sock).unwrap();
        match run_console(third, &req, io::empty(), &mut io::sink()) {
            Err(ConsoleError::Agent(msg)) => assert!(msg.contains("too many"), "{msg}"),
            other => panic!("{other:?}"),
        }
        drop(a);
        // The place frees once the first session is over.
        loop {
            let c = UnixStream::connect(&sock).unwrap();
            match run_console(c, &req, io::empty(), &mut io::sink()) {
                Ok(status) => break assert_eq!(status, 0),
                Err(ConsoleError::Agent(msg)) if msg.contains("too many") => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        drop(b);
    });
}

#[test]
fn frames_right_behind_the_request_line_belong_to_the_session() {
    let console = console_with(Path::new(HOST_BUSYBOX), 4);
    let frames = within(move || {
        let (mut host, agent) = connect(&console);
        let req = ConsoleRequest {
            argv: vec!["cat".into()],
            ..Default::default()
        };
        let mut wire = req.encode().unwrap();
        for f in [Frame::Stdin(b"hi"), Frame::StdinEof] {
            moat_agent_protocol::console::write_frame(&mut wire, &f).unwrap();
        }
        host.write_all(&wire).unwrap();
        let mut reader = FrameReader::new(&host);
        let mut frames = Vec::new();
        while let Some(f) = reader.read_frame().unwrap() {
            frames.push(format!("{f:?}"));
        }
        agent.join().unwrap();
        frames
    });
    assert_eq!(frames, ["Output([104, 105])", "Exit(0)"]);
}
