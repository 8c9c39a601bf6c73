//! `moat-vsock-echo [PORT [MAX_WRITE]]`: an AF_VSOCK echo server for real-guest tests.
//!
//! Listens on `VMADDR_CID_ANY:PORT` (default 5000), prints
//! `moat-vsock-echo: listening on <port>` once listening, and serves each connection on its
//! own thread: every byte read is written back until the peer shuts down its write side,
//! then this side's write half is shut down too. At most [`MAX_CONNECTIONS`] connections are
//! served at once; further ones wait in the accept queue until a slot frees up. With
//! `MAX_WRITE`, each write(2) of the echo is at most that many bytes (default 64 KiB), which
//! bounds the size of the guest's vsock tx packets.
//!
//! It is built as a static binary (`tests/scripts/build-guest-tools.sh`) because the test
//! initramfs has no libc.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};

/// Port used when none is given.
const DEFAULT_PORT: u32 = 5000;
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 256;
/// Bytes moved per read/write.
const BUF_SIZE: usize = 64 * 1024;

/// Counts live connections and lets the accept loop wait for a free slot.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// Blocks until fewer than [`MAX_CONNECTIONS`] are in use, then takes one.
    fn acquire(&self) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_CONNECTIONS {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
    }

    /// Gives a slot back.
    fn release(&self) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(1);
        self.freed.notify_one();
    }
}

/// The last OS error with `what` prepended.
fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Creates, binds and listens on an AF_VSOCK stream socket on `port` (any CID).
fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd: RawFd =
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket(AF_VSOCK)"));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os_err(&format!("bind(vsock port {port})")));
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd, 1024) } < 0 {
        return Err(os_err("listen"));
    }
    Ok(sock)
}

/// Accepts one connection (retrying on EINTR).
fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: accept4(2) on our listening socket; peer address not requested.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor from accept4 that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Echoes everything until EOF, then shuts down the write side. Returns bytes echoed.
fn echo(fd: OwnedFd, max_write: usize) -> io::Result<u64> {
    // A connected stream socket: UnixStream's Read/Write/shutdown are plain
    // read(2)/write(2)/shutdown(2), which work for any stream socket family.
    let mut stream = UnixStream::from(fd);
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for chunk in buf[..n].chunks(max_write) {
            stream.write_all(chunk)?;
        }
        total += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(total)
}

fn main() -> ExitCode {
    let port = match std::env::args().nth(1) {
        None => DEFAULT_PORT,
        Some(p) => {
            match p.parse::<u32>() {
                Ok(p) => p,
                Err(_) => {
                    eprintln!("moat-vsock-echo: bad port {p:?}; usage: moat-vsock-echo [PORT [MAX_WRITE]]");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let max_write = match std::env::args().nth(2).map(|w| w.parse::<usize>()) {
        None => BUF_SIZE,
        Some(Ok(w)) if w > 0 => w,
        Some(_) => {
            eprintln!("moat-vsock-echo: bad MAX_WRITE; usage: moat-vsock-echo [PORT [MAX_WRITE]]");
            return ExitCode::from(2);
        }
    };
    let listener = match listen_vsock(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("moat-vsock-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("moat-vsock-echo: listening on {port}");
    let _ = io::stdout().flush();
    let slots = Arc::new(Slots {
        used: Mutex::new(0),
        freed: Condvar::new(),
    });
    loop {
        slots.acquire();
        let conn = match accept(&listener) {
            Ok(c) => c,
            Err(e) => {
                slots.release();
                eprintln!("moat-vsock-echo: accept: {e}");
                // Transient (e.g. ECONNABORTED, EMFILE): back off briefly and go on.
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let s = Arc::clone(&slots);
        let spawned = std::thread::Builder::new()
            .name("echo".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(e) = echo(conn, max_write) {
                    eprintln!("moat-vsock-echo: connection: {e}");
                }
                s.release();
            });
        if let Err(e) = spawned {
            // The closure (and the connection) was dropped; give its slot back.
            slots.release();
            eprintln!("moat-vsock-echo: cannot spawn a thread: {e}");
        }
    }
}
