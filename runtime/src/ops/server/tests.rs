use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::ops::client;

struct Fake {
    console: bool,
}

impl OpsHandler for Fake {
    fn status(&self) -> Result<PodStatus, String> {
        Ok(PodStatus {
            pod_id: "p".into(),
            namespace: "ns".into(),
            shim_pid: 1,
            vmm_pid: 2,
            vcpus: 1,
            memory_mib: 256,
            started_unix_ms: 0,
            boot_ms: 10,
            vm_state: "running".into(),
            debug_console: self.console,
            containers: Vec::new(),
        })
    }

    fn metrics(&self) -> Result<String, String> {
        Err("the agent is slow".into())
    }

    fn console(&self, peer: &str) -> Result<UnixStream, String> {
        assert!(
            peer.starts_with("uid 0") || peer.starts_with("uid "),
            "{peer}"
        );
        if !self.console {
            return Err("this pod was started without the debug console".into());
        }
        // An echo "guest" that upper-cases.
        let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut s = theirs;
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = s.write_all(&buf[..n].to_ascii_uppercase());
            }
        });
        Ok(ours)
    }
}

fn server(console: bool) -> (tempfile::TempDir, PathBuf, OpsServer) {
    let tmp = tempfile::TempDir::new().unwrap();
    let path = tmp.path().join("ops.sock");
    let s = OpsServer::start(&path, Arc::new(Fake { console })).unwrap();
    (tmp, path, s)
}

#[test]
fn status_metrics_and_unknown_requests() {
    let (_tmp, path, _s) = server(false);
    let st = client::status(&path).unwrap();
    assert_eq!((st.pod_id.as_str(), st.memory_mib), ("p", 256));
    let e = client::metrics(&path).unwrap_err();
    assert!(
        matches!(&e, client::OpsError::Refused { status: 500, message, .. } if message == "the agent is slow"),
        "{e}"
    );
    let e = client::get(&path, "/nothing").unwrap_err();
    assert!(
        matches!(e, client::OpsError::Refused { status: 404, .. }),
        "{e}"
    );
}

#[test]
fn the_console_is_proxied_or_refused() {
    let (_tmp, path, _s) = server(true);
    let (mut s, rest) = client::console(&path).unwrap();
    assert!(rest.is_empty());
    s.write_all(b"uname -r").unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"UNAME -R");
    drop(s);

    let (_tmp, path, _s) = server(false);
    let e = client::console(&path).unwrap_err();
    assert!(
        matches!(&e, client::OpsError::Refused { status: 403, message, .. } if message.contains("without the debug console")),
        "{e}"
    );
}

#[test]
fn too_many_connections_get_busy_and_drop_cleans_up() {
    let (_tmp, path, s) = server(false);
    // Idle connections hold their slots (until the head timeout).
    let idle: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let e = client::status(&path).unwrap_err();
    assert!(
        matches!(e, client::OpsError::Refused { status: 503, .. }),
        "{e}"
    );
    drop(idle);
    drop(s);
    assert!(!path.exists(), "the socket goes with the server");
    assert!(UnixStream::connect(&path).is_err());
}

#[test]
fn a_malformed_head_gets_400() {
    let (_tmp, path, _s) = server(false);
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(&[0xff; 10]).unwrap();
    c.write_all(b"\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}
