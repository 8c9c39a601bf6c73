//! `moat monitor --listen ADDR`: one Prometheus endpoint for every pod on the host, as
//! kata-monitor is for Kata. Each scrape of `GET /metrics` asks every shim's ops socket in
//! parallel and merges their families ([`moat_runtime::ops::exposition`]); the monitor adds
//! `moat_monitor_pods` and `moat_monitor_scrape_failed{namespace,sandbox_id}` for shims that
//! did not answer.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use moat_runtime::ops::exposition::{Exposition, CONTENT_TYPE};
use moat_runtime::ops::http::{read_head, respond};
use moat_runtime::ops::server::serve_each;

use crate::pods::{self, PodEntry};
use crate::Globals;

/// Scrapes served at once; more get `503`.
const MAX_SCRAPES: usize = 4;

/// `moat monitor`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The address to serve `/metrics` on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
}

/// Runs `moat monitor` until killed.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<ExitCode> {
    let state_dir = pods::state_dir(g)?;
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "moat monitor: serving http://{}/metrics for the pods under {}",
        listener.local_addr()?,
        state_dir.display()
    );
    serve_each(
        listener.incoming(),
        MAX_SCRAPES,
        || false,
        move |conn| serve(conn, &state_dir),
    );
    Ok(ExitCode::SUCCESS)
}

/// Answers one request.
fn serve(mut conn: TcpStream, state_dir: &Path) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(head) = read_head(&mut conn) else {
        let _ = respond(&mut conn, "400 Bad Request", "text/plain", b"bad request\n");
        return;
    };
    let mut words = head.first.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => {
            let body = match pods::list(state_dir) {
                Ok(pods) => scrape(&pods),
                Err(e) => {
                    let msg = format!("{e:#}\n");
                    let _ = respond(
                        &mut conn,
                        "500 Internal Server Error",
                        "text/plain",
                        msg.as_bytes(),
                    );
                    return;
                }
            };
            let _ = respond(&mut conn, "200 OK", CONTENT_TYPE, body.as_bytes());
        }
        (Some("GET"), Some("/")) => {
            let _ = respond(
                &mut conn,
                "200 OK",
                "text/plain",
                b"moat monitor: see /metrics\n",
            );
        }
        _ => {
            let _ = respond(&mut conn, "404 Not Found", "text/plain", b"not found\n");
        }
    }
    let _ = conn.flush();
}

/// Every pod's metrics and the monitor's own.
fn scrape(pods: &[PodEntry]) -> String {
    let (text, failed) = crate::metrics::gather(pods);
    let mut e = Exposition::new();
    e.add(&text);
    let mut own = format!(
        "# HELP moat_monitor_pods Pods with an ops socket on this host.\n\
         # TYPE moat_monitor_pods gauge\nmoat_monitor_pods {}\n\
         # HELP moat_monitor_scrape_failed Pods whose shim did not answer this scrape.\n\
         # TYPE moat_monitor_scrape_failed gauge\n",
        pods.len()
    );
    for (pod, _) in &failed {
        own += &format!(
            "moat_monitor_scrape_failed{{namespace=\"{}\",sandbox_id=\"{}\"}} 1\n",
            escape(&pod.namespace),
            escape(&pod.id)
        );
    }
    e.add(&own);
    e.render()
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_dead_shim_is_reported_not_fatal() {
        let tmp = tempfile::TempDir::new().unwrap();
        let pods = [PodEntry {
            namespace: "default".into(),
            id: "gone".into(),
            socket: tmp.path().join("ops.sock"),
        }];
        let text = scrape(&pods);
        assert!(text.contains("moat_monitor_pods 1\n"), "{text}");
        assert!(
            text.contains(
                "moat_monitor_scrape_failed{namespace=\"default\",sandbox_id=\"gone\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn serves_metrics_over_http() {
        let tmp = tempfile::TempDir::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tmp.path().to_path_buf();
        std::thread::spawn(move || {
            for c in listener.incoming().take(2) {
                serve(c.unwrap(), &dir);
            }
        });
        let ask = |req: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("moat_monitor_pods 0"), "{ok}");
        let missing = ask("GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }
}
