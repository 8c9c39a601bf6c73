use super::*;
use std::net::TcpListener;
use std::thread::JoinHandle;
use tungstenite::handshake::server::{Request as Req, Response as Resp};

/// What the fake streaming server does after its port frames and error text.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Echoes one message upper-cased on its channel, then closes.
    Echo,
    /// Closes.
    Close,
    /// Reads until the client goes.
    Hold,
}

/// A fake streaming server for one connection, choosing [`PROTOCOL`] if `protocol` (else
/// none), announcing `ports`, sending `error` on channel 1, then doing `then`. The URL as
/// CRI gives it, and the server's thread.
fn serve(protocol: bool, ports: &[u16], error: &str, then: Then) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/portforward/t0k", listener.local_addr().unwrap());
    let (ports, error) = (ports.to_vec(), error.to_owned());
    let server = std::thread::spawn(move || {
        let answer = |req: &Req, mut resp: Resp| {
            let offered = req.headers().get("Sec-WebSocket-Protocol");
            let offered = offered.and_then(|v| v.to_str().ok());
            assert_eq!(
                (offered, req.uri().path()),
                (Some(PROTOCOL), "/portforward/t0k")
            );
            if protocol {
                let p = HeaderValue::from_static(PROTOCOL);
                resp.headers_mut().insert("Sec-WebSocket-Protocol", p);
            }
            Ok(resp)
        };
        let mut ws = tungstenite::accept_hdr(listener.accept().unwrap().0, answer).unwrap();
        let binary = |channel: usize, payload: &[u8]| {
            Message::Binary([&[channel as u8], payload].concat().into())
        };
        for (i, port) in ports.iter().enumerate() {
            ws.send(binary(2 * i, &port.to_le_bytes())).unwrap();
            ws.send(binary(2 * i + 1, &port.to_le_bytes())).unwrap();
        }
        if !error.is_empty() {
            ws.send(binary(1, error.as_bytes())).unwrap();
        }
        if then == Then::Echo {
            let Ok(Message::Binary(b)) = ws.read() else {
                panic!("nothing to echo")
            };
            let echo = binary(b[0].into(), &b[1..].to_ascii_uppercase());
            ws.send(echo).unwrap();
        }
        if then != Then::Hold {
            ws.close(None).unwrap();
        }
        // Until the client answers the close, or goes.
        while ws.read().is_ok() {}
    });
    (url, server)
}

const T: Duration = Duration::from_secs(10);

#[test]
fn exchange_gets_the_answer_then_the_close() {
    let (url, server) = serve(true, &[80], "", Then::Echo);
    let got = exchange(&url, 80, b"hello pod", T).unwrap();
    server.join().unwrap();
    let (data, error, end) = (b"HELLO POD".to_vec(), String::new(), End::Closed);
    assert_eq!(got, Exchanged { data, error, end });
}

#[test]
fn ports_map_to_channel_pairs_and_no_subprotocol_is_binary_too() {
    for protocol in [true, false] {
        let (url, server) = serve(protocol, &[80, 8080], "", Then::Echo);
        let mut pf = PortForward::connect(&url, &[80, 8080], T).unwrap();
        let chosen = if protocol { PROTOCOL } else { "" };
        assert_eq!((pf.protocol(), pf.ports()), (chosen, &[80, 8080][..]));
        pf.send(1, b"second").unwrap();
        let bytes = b"SECOND".to_vec();
        assert_eq!(
            pf.recv().unwrap(),
            Some(Event::Data {
                port_index: 1,
                bytes
            })
        );
        assert_eq!(pf.recv().unwrap(), None);
        let e = pf.send(2, b"").unwrap_err();
        assert!(matches!(e, PortForwardError::NoSuchPort(2, 2)), "{e}");
        assert!(matches!(pf.send(0, b""), Err(PortForwardError::Closed)));
        server.join().unwrap();
    }
}

#[test]
fn a_wrong_port_frame_is_a_protocol_error() {
    let (url, server) = serve(true, &[81], "", Then::Hold);
    let e = PortForward::connect(&url, &[80], T).unwrap_err();
    assert!(matches!(e, PortForwardError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("[81, 0], not port 80"), "{e}");
    server.join().unwrap();
}

#[test]
fn the_error_channel_text_is_an_event_and_collected() {
    let text = "error forwarding port 80 to pod p, uid : connection refused";
    let (url, server) = serve(true, &[80], text, Then::Close);
    let mut pf = PortForward::connect(&url, &[80], T).unwrap();
    let error = Event::Error {
        port_index: 0,
        text: text.into(),
    };
    assert_eq!(pf.recv().unwrap(), Some(error));
    assert_eq!(pf.recv().unwrap(), None);
    server.join().unwrap();

    let (url, server) = serve(true, &[80], text, Then::Close);
    let got = exchange(&url, 80, b"GET / HTTP/1.0\r\n\r\n", T).unwrap();
    server.join().unwrap();
    assert_eq!(
        (got.data.len(), got.error.as_str(), got.end),
        (0, text, End::Closed)
    );
}

#[test]
fn a_silent_server_times_the_exchange_out() {
    let (url, server) = serve(true, &[80], "", Then::Hold);
    let start = Instant::now();
    let got = exchange(&url, 80, b"anyone?", Duration::from_millis(300)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((got.data.len(), got.end), (0, End::TimedOut));
    server.join().unwrap();
}

#[test]
fn collecting_more_than_the_limit_is_an_error() {
    let (url, server) = serve(true, &[80], "", Then::Echo);
    let e = exchange_bounded(&url, 80, b"hello", T, 4).unwrap_err();
    assert!(matches!(e, PortForwardError::TooLarge(4)), "{e:?}");
    server.join().unwrap();
}

#[test]
fn an_http_error_is_a_handshake_error_and_nobody_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/portforward/gone", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.read(&mut [0u8; 4096]).unwrap();
        let answer = "HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n";
        s.write_all(answer.as_bytes()).unwrap();
    });
    let e = PortForward::connect(&url, &[80], T).unwrap_err();
    server.join().unwrap();
    assert!(matches!(e, PortForwardError::Handshake(..)), "{e:?}");
    assert!(
        e.to_string()
            .contains("404 Not Found: \"404 page not found\""),
        "{e}"
    );
    // The listener is gone with its thread.
    let e = PortForward::connect(&url, &[80], T).unwrap_err();
    assert!(matches!(e, PortForwardError::Connect(..)), "{e:?}");
}

#[test]
fn urls_and_ports_are_checked() {
    let ws = websocket_url("http://127.0.0.1:1/portforward/x").unwrap();
    assert_eq!(ws, "ws://127.0.0.1:1/portforward/x");
    assert_eq!(websocket_url("ws://h/p").unwrap(), "ws://h/p");
    for bad in ["https://h/p", "h/p", "ftp://h/p"] {
        let e = websocket_url(bad).unwrap_err();
        assert!(matches!(e, PortForwardError::Url(..)), "{bad}: {e:?}");
    }
    let e = PortForward::connect("http://127.0.0.1:1/p", &[], T).unwrap_err();
    assert!(matches!(e, PortForwardError::Ports(0)), "{e:?}");
}
