//! The shim's ops socket: a thread that accepts, a thread per connection (at most
//! [`MAX_CONNECTIONS`] at once), one request each, answered from an [`OpsHandler`].
//!
//! The socket lives in the pod dir (mode 0700): its clients are root on the host. Still, a
//! head is bounded ([`super::http::MAX_HEAD`]) and must arrive within [`HEAD_TIMEOUT`].

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::exposition::CONTENT_TYPE;
use super::http::{read_head, respond};
use super::status::PodStatus;

/// Connections served at once; more get `503`.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the ops socket serves.
pub trait OpsHandler: Send + Sync + 'static {
    /// `GET /status`.
    fn status(&self) -> Result<PodStatus, String>;
    /// `GET /metrics`: Prometheus text format 0.0.4.
    fn metrics(&self) -> Result<String, String>;
    /// `CONNECT /console`: a stream to the guest's debug console; `peer` describes the
    /// client (for the log).
    fn console(&self, peer: &str) -> Result<UnixStream, String>;
}

/// A running ops socket; dropping it stops the server and removes the socket.
pub struct OpsServer {
    path: PathBuf,
    listener: Arc<UnixListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OpsServer {
    /// Binds `path` (mode 0600) and serves `handler` on it.
    pub fn start(path: &Path, handler: Arc<dyn OpsHandler>) -> io::Result<OpsServer> {
        let listener = Arc::new(UnixListener::bind(path)?);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("ops".into())
            .spawn(move || accept_loop(&l, &s, handler))?;
        Ok(OpsServer {
            path: path.to_path_buf(),
            listener,
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) of a socket fd this server owns; it wakes the blocked accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, stopping: &AtomicBool, handler: Arc<dyn OpsHandler>) {
    let stop = || stopping.load(Ordering::SeqCst);
    serve_each(listener.incoming(), MAX_CONNECTIONS, stop, move |conn| {
        serve(conn, &*handler)
    });
}

/// Runs `handle` on each connection of `incoming` in a thread of its own, at most `max` at
/// once (one more is answered `503` and closed), until `incoming` ends or `stop()` holds.
pub fn serve_each<S, H>(
    incoming: impl Iterator<Item = io::Result<S>>,
    max: usize,
    stop: impl Fn() -> bool,
    handle: H,
) where
    S: Write + Send + 'static,
    H: Fn(S) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in incoming {
        if stop() {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        if busy.fetch_add(1, Ordering::SeqCst) >= max {
            busy.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(
                &mut conn,
                "503 Service Unavailable",
                "text/plain",
                b"busy\n",
            );
            continue;
        }
        let (h, b) = (handle.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("ops-conn".into())
            .spawn(move || {
                h(conn);
                b.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Answers one connection's request.
fn serve(mut conn: UnixStream, handler: &dyn OpsHandler) {
    let _ = conn.set_read_timeout(Some(HEAD_TIMEOUT));
    let head = match read_head(&mut conn) {
        Ok(h) => h,
        Err(e) => {
            let msg = format!("bad request: {e}\n");
            let _ = respond(&mut conn, "400 Bad Request", "text/plain", msg.as_bytes());
            return;
        }
    };
    let mut words = head.first.split_whitespace();
    let route = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let result = match route {
        ("GET", "/status") => handler.status().and_then(|s| {
            let json = serde_json::to_vec_pretty(&s).map_err(|e| e.to_string())?;
            Ok(("application/json", json))
        }),
        ("GET", "/metrics") => handler.metrics().map(|m| (CONTENT_TYPE, m.into_bytes())),
        ("CONNECT", "/console") => {
            console(conn, handler, head.rest);
            return;
        }
        _ => {
            let msg = format!("no such request: {} {}\n", route.0, route.1);
            let _ = respond(&mut conn, "404 Not Found", "text/plain", msg.as_bytes());
            return;
        }
    };
    let _ = match result {
        Ok((kind, body)) => respond(&mut conn, "200 OK", kind, &body),
        Err(e) => respond(
            &mut conn,
            "500 Internal Server Error",
            "text/plain",
            format!("{e}\n").as_bytes(),
        ),
    };
}

/// Proxies the connection to the guest's debug console until either side ends.
fn console(mut conn: UnixStream, handler: &dyn OpsHandler, early: Vec<u8>) {
    let peer = peer(&conn);
    let mut guest = match handler.console(&peer) {
        Ok(g) => g,
        Err(e) => {
            let _ = respond(
                &mut conn,
                "403 Forbidden",
                "text/plain",
                format!("{e}\n").as_bytes(),
            );
            return;
        }
    };
    let _ = conn.set_read_timeout(None);
    if conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").is_err() || guest.write_all(&early).is_err() {
        return;
    }
    let (Ok(mut conn2), Ok(mut guest2)) = (conn.try_clone(), guest.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pump(&mut conn2, &mut guest2));
    pump(&mut guest, &mut conn);
    let _ = up.join();
    crate::plog!(Info, "debug console: {peer} disconnected");
}

/// Copies `from` to `to` until EOF or an error, then shuts both directions down.
fn pump(from: &mut UnixStream, to: &mut UnixStream) {
    let _ = io::copy(from, to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// `uid U pid P` of the connection's peer.
fn peer(conn: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_PEERCRED) writes at most `len` bytes into `cred`, which is a
    // `ucred` of exactly that size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        format!("uid {} pid {}", cred.uid, cred.pid)
    } else {
        "an unknown peer".into()
    }
}

#[cfg(test)]
mod tests;
