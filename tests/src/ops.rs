//! The `moat` operator tool as the tests run it: one-shot commands ([`moat`]), a running
//! `moat monitor` ([`Monitor`]) and its scrape checked with `promtool` ([`promtool_check`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::CtrOutput;
use crate::process::KillOnDrop;

/// Runs `moat ARGS` with the shim configuration `config` (whose state dir names the pods).
pub fn moat(config: &Path, args: &[&str]) -> CtrOutput {
    let bin = crate::try_cargo_bin("moat").unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let out = Command::new(&bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let o = CtrOutput {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: start.elapsed(),
    };
    println!(
        "moat {args:?}: {:?} in {:?}\n{}{}",
        o.code(),
        o.elapsed,
        o.stdout_str(),
        o.stderr_str()
    );
    o
}

/// A running `moat monitor`, killed when dropped.
pub struct Monitor {
    _child: KillOnDrop,
    /// Where it serves (`127.0.0.1:PORT`).
    pub addr: String,
}

impl Monitor {
    /// Starts `moat monitor --listen addr` and waits until it answers.
    pub fn start(config: &Path, addr: &str) -> Monitor {
        let bin = crate::try_cargo_bin("moat").unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(&bin)
            .arg("--config")
            .arg(config)
            .args(["monitor", "--listen", addr])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moat monitor: {e}"));
        let m = Monitor {
            _child: KillOnDrop::new(child),
            addr: addr.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moat monitor never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// `GET /metrics`: the body of a 200 answer.
    pub fn scrape(&self) -> String {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: moat\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        body.to_string()
    }
}

/// `promtool check metrics` on `text`: `Err` with promtool's complaints.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian's prometheus package): {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The value of the sample whose line starts with `series` (name and labels, as
/// rendered), if any.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
