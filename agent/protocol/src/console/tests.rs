use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;

use super::*;

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, frame).unwrap();
    out
}

#[test]
fn every_frame_kind_round_trips() {
    let big = vec![0xa5u8; MAX_FRAME_PAYLOAD];
    let frames = [
        Frame::Stdin(b"ls -l\n"),
        Frame::Stdin(b""),
        Frame::StdinEof,
        Frame::Resize {
            rows: 50,
            cols: 0xfffe,
        },
        Frame::Output(&big),
        Frame::Stderr(b"oops\n"),
        Frame::Exit(-1),
        Frame::Exit(137),
        Frame::error("no debug tools"),
    ];
    let wire: Vec<u8> = frames.iter().flat_map(encode).collect();
    assert_eq!(&encode(&Frame::Exit(3)), &[0x83, 0, 0, 0, 4, 0, 0, 0, 3]);
    assert_eq!(
        &encode(&Frame::Resize { rows: 1, cols: 2 }),
        &[3, 0, 0, 0, 4, 0, 1, 0, 2]
    );
    let mut reader = FrameReader::new(wire.as_slice());
    for want in &frames {
        assert_eq!(reader.read_frame().unwrap().as_ref(), Some(want));
    }
    assert_eq!(
        reader.read_frame().unwrap(),
        None,
        "clean end between frames"
    );
}

#[test]
fn oversize_lengths_are_refused_without_allocating() {
    let mut wire = vec![FrameKind::Output as u8];
    wire.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut reader = FrameReader::new(wire.as_slice());
    match reader.read_frame() {
        Err(ConsoleError::FrameTooLarge { kind: 0x81, len }) => {
            assert_eq!(len, u64::from(u32::MAX))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reader.buf.capacity(),
        0,
        "nothing allocated for the payload"
    );
    // One byte over the limit, even of an unknown kind, is refused on its length alone.
    let mut wire = vec![0x7f];
    wire.extend_from_slice(&(MAX_FRAME_PAYLOAD as u32 + 1).to_be_bytes());
    assert!(matches!(
        FrameReader::new(wire.as_slice()).read_frame(),
        Err(ConsoleError::FrameTooLarge { kind: 0x7f, .. })
    ));
    // The writer refuses too, and writes nothing.
    let big = vec![0u8; MAX_FRAME_PAYLOAD + 1];
    let mut out = Vec::new();
    assert!(matches!(
        write_frame(&mut out, &Frame::Output(&big)),
        Err(ConsoleError::FrameTooLarge { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn truncated_and_malformed_frames_are_errors() {
    let whole = encode(&Frame::Output(b"hello"));
    for cut in 1..whole.len() {
        // A cut header, or a whole header and a cut 5-byte payload.
        let (got, want) = match cut.checked_sub(FRAME_HEADER_LEN) {
            None => (cut, FRAME_HEADER_LEN),
            Some(payload) => (payload, 5),
        };
        match FrameReader::new(&whole[..cut]).read_frame() {
            Err(ConsoleError::Truncated { got: g, want: w }) => {
                assert_eq!((g, w), (got, want), "cut at {cut}")
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert!(matches!(
        FrameReader::new(&[0x42, 0, 0, 0, 0][..]).read_frame(),
        Err(ConsoleError::UnknownKind(0x42))
    ));
    assert!(matches!(
        FrameReader::new(&[0x03, 0, 0, 0, 3, 1, 2, 3][..]).read_frame(),
        Err(ConsoleError::BadLength {
            kind: FrameKind::Resize,
            len: 3
        })
    ));
    assert!(matches!(
        FrameReader::new(&[0x02, 0, 0, 0, 1, 0][..]).read_frame(),
        Err(ConsoleError::BadLength {
            kind: FrameKind::StdinEof,
            ..
        })
    ));
    // Invalid UTF-8 in an ERROR frame is replaced, not refused.
    let frame = [0x84, 0, 0, 0, 2, 0xff, b'x'];
    assert_eq!(
        FrameReader::new(&frame[..]).read_frame().unwrap(),
        Some(Frame::Error("\u{fffd}x".into()))
    );
}

#[test]
fn error_frames_are_cut_at_a_character_boundary() {
    let long = "é".repeat(MAX_FRAME_PAYLOAD);
    let Frame::Error(text) = Frame::error(&long) else {
        unreachable!()
    };
    assert!(text.len() <= MAX_FRAME_PAYLOAD && text.len() > MAX_FRAME_PAYLOAD - 2);
    assert!(write_frame(&mut io::sink(), &Frame::error(&long)).is_ok());
}

#[test]
fn requests_round_trip_and_default() {
    let req = ConsoleRequest {
        argv: vec!["sh".into(), "-c".into(), "echo \"$HOME\" 'x'\n".into()],
        tty: true,
        term: "xterm-256color".into(),
        rows: 24,
        cols: 80,
    };
    let line = req.encode().unwrap();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(ConsoleRequest::decode(&line).unwrap(), req);
    let input = [line.as_slice(), &encode(&Frame::StdinEof)].concat();
    let mut r = input.as_slice();
    assert_eq!(read_request(&mut r).unwrap(), req);
    assert_eq!(
        FrameReader::new(r).read_frame().unwrap(),
        Some(Frame::StdinEof)
    );
    assert_eq!(
        ConsoleRequest::decode(b"{}\n").unwrap(),
        ConsoleRequest::default()
    );
    let full = br#"{"argv":["uname","-r"],"tty":false,"term":"","rows":0,"cols":0}"#;
    assert_eq!(
        ConsoleRequest::decode(full).unwrap().argv,
        vec!["uname", "-r"]
    );
}

#[test]
fn long_requests_are_refused() {
    let req = ConsoleRequest {
        argv: vec!["x".repeat(MAX_REQUEST_LEN)],
        ..Default::default()
    };
    assert!(matches!(
        req.encode(),
        Err(ConsoleError::RequestTooLong { .. })
    ));
    let long = vec![b'['; MAX_REQUEST_LEN + 100];
    match read_request(&mut long.as_slice()) {
        Err(ConsoleError::RequestTooLong { len }) => assert_eq!(len, MAX_REQUEST_LEN),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ConsoleRequest::decode(&long),
        Err(ConsoleError::RequestTooLong { .. })
    ));
    assert!(matches!(
        read_request(&mut &b"{\"argv\":"[..]),
        Err(ConsoleError::RequestClosed(8))
    ));
}

#[test]
fn malformed_requests_are_refused() {
    for bad in [
        &b"\n"[..],
        b"hello\n",
        b"{\"argv\":\"ls\"}\n",
        b"{\"argv\":[1]}\n",
        b"{\"tty\":\"yes\"}\n",
        b"{\"rows\":70000}\n",
        b"{\"argv\":[\"a\\u0000b\"]}\n",
        b"{\"term\":\"xterm\\u001b[2J\"}\n",
        b"\xff\xfe\n",
    ] {
        let err = ConsoleRequest::decode(bad).unwrap_err();
        assert!(
            matches!(err, ConsoleError::BadRequest { .. }),
            "{bad:?}: {err}"
        );
    }
    let nul = ConsoleRequest {
        argv: vec!["a\0".into()],
        ..Default::default()
    };
    assert!(matches!(nul.encode(), Err(ConsoleError::BadRequest { .. })));
}

#[test]
fn the_guest_busybox_is_in_the_pod_share() {
    assert_eq!(
        guest_busybox_path(),
        std::path::Path::new("/run/moat/shares/pod/.moat-debug/busybox")
    );
}

/// A fake agent on the other end of a socketpair: checks the request, then runs `script`.
fn fake_agent(
    script: impl FnOnce(&mut FrameReader<UnixStream>, &mut UnixStream) + Send + 'static,
) -> (UnixStream, thread::JoinHandle<ConsoleRequest>) {
    let (host, agent) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let mut agent = agent;
        let req = read_request(&mut agent).unwrap();
        let mut reader = FrameReader::new(agent.try_clone().unwrap());
        script(&mut reader, &mut agent);
        req
    });
    (host, t)
}

/// Sends raw bytes, ignoring a host that already left.
fn send_raw(w: &mut impl Write, bytes: &[u8]) {
    let _ = w.write_all(bytes);
}

#[test]
fn run_console_copies_stdin_and_output_and_returns_the_status() {
    let (host, agent) = fake_agent(|reader, w| {
        let mut got = Vec::new();
        loop {
            match reader.read_frame().unwrap() {
                Some(Frame::Stdin(b)) => got.extend_from_slice(b),
                Some(Frame::StdinEof) => break,
                other => panic!("{other:?}"),
            }
        }
        for chunk in got.chunks(MAX_FRAME_PAYLOAD) {
            write_frame(w, &Frame::Output(chunk)).unwrap();
        }
        write_frame(w, &Frame::Stderr(b"err\n")).unwrap();
        write_frame(w, &Frame::Exit(7)).unwrap();
    });
    let req = ConsoleRequest {
        argv: vec!["cat".into()],
        ..Default::default()
    };
    let stdin = io::Cursor::new(vec![b'x'; MAX_FRAME_PAYLOAD * 2 + 3]);
    let mut out = Vec::new();
    assert_eq!(run_console(host, &req, stdin, &mut out).unwrap(), 7);
    assert_eq!(agent.join().unwrap(), req);
    assert_eq!(out.len(), MAX_FRAME_PAYLOAD * 2 + 3 + 4);
    assert!(out.ends_with(b"xerr\n"));
}

#[test]
fn a_connection_separates_stderr_and_sends_resizes() {
    let (host, agent) = fake_agent(|reader, w| {
        assert_eq!(
            reader.read_frame().unwrap(),
            Some(Frame::Resize { rows: 9, cols: 99 })
        );
        write_frame(w, &Frame::Output(b"out")).unwrap();
        write_frame(w, &Frame::Stderr(b"err")).unwrap();
        write_frame(w, &Frame::Exit(0)).unwrap();
    });
    let conn = ConsoleConnection::open(host, &ConsoleRequest::default()).unwrap();
    conn.input().resize(9, 99).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(conn.wait(&mut out, Some(&mut err)).unwrap(), 0);
    agent.join().unwrap();
    assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
}

/// Runs a session against a fake agent that sends `wire` after the request, then closes.
fn session_against(wire: Vec<u8>) -> Result<i32, ConsoleError> {
    let (host, agent) = fake_agent(move |_, w| send_raw(w, &wire));
    let r = run_console(
        host,
        &ConsoleRequest::default(),
        io::empty(),
        &mut Vec::new(),
    );
    agent.join().unwrap();
    r
}

#[test]
fn hostile_or_broken_agents_end_the_session_with_an_error() {
    let err = session_against(encode(&Frame::error("no debug tools\x1b[2J"))).unwrap_err();
    match err {
        ConsoleError::Agent(msg) => assert_eq!(msg, "no debug tools\u{fffd}[2J"),
        e => panic!("{e}"),
    }
    let err = session_against(encode(&Frame::Output(b"partial"))).unwrap_err();
    assert!(matches!(err, ConsoleError::NoExit), "{err}");
    let mut huge = vec![FrameKind::Output as u8];
    huge.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let err = session_against(huge).unwrap_err();
    assert!(matches!(err, ConsoleError::FrameTooLarge { .. }), "{err}");
    let err = session_against(encode(&Frame::Stdin(b"x"))).unwrap_err();
    assert!(
        matches!(err, ConsoleError::UnexpectedFrame(FrameKind::Stdin)),
        "{err}"
    );
    let err = session_against(encode(&Frame::Exit(1))[..6].to_vec()).unwrap_err();
    assert!(
        matches!(err, ConsoleError::Truncated { got: 1, want: 4 }),
        "{err}"
    );
}

#[test]
fn a_bad_request_is_refused_before_sending() {
    let (host, mut agent) = UnixStream::pair().unwrap();
    let req = ConsoleRequest {
        term: "a b".into(),
        ..Default::default()
    };
    let err = run_console(host, &req, io::empty(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ConsoleError::BadRequest { .. }), "{err}");
    let mut rest = Vec::new();
    agent.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing sent");
}
