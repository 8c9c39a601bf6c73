//! Shim threads in a pod's network namespace: a pid for the container's namespace, for the
//! hooks that run on the host ([`with_thread_in`]), and work done inside it ([`run_in`]).
//!
//!
//! A hook finds the container's namespaces through the state's `pid` (`/proc/<pid>/ns/net`).
//! Under runc that is the container's init; a moat container's init is in the VM, so the
//! shim lends a thread of its own instead: one that joined the namespace the spec names, or
//! that made a new one when the spec asks for a new namespace (Docker: its `libnetwork-setkey`
//! prestart hook then moves the container's veth into it, and the pod's network is read from
//! it like CRI's). The thread does nothing else and ends when the hooks are done; a new
//! namespace outlives it through the descriptor returned (the pod keeps it until teardown).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::sched::CloneFlags;

/// Errors lending a thread.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The named namespace could not be joined.
    #[error("joining network namespace {path}: {source}")]
    Join {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A new namespace could not be made.
    #[error("making a network namespace: {0}")]
    Unshare(std::io::Error),
    /// The thread could not be started.
    #[error("starting the network-namespace thread: {0}")]
    Thread(std::io::Error),
}

/// Runs `f` with the tid of a shim thread that sits in network namespace `join`, or in a new
/// one when `join` is `None`; returns `f`'s result and, for a new namespace, its descriptor.
pub fn with_thread_in<R>(
    join: Option<&Path>,
    f: impl FnOnce(u32) -> R,
) -> Result<(R, Option<OwnedFd>), NetnsError> {
    let target = match join {
        Some(path) => Some(
            std::fs::File::open(path).map_err(|source| NetnsError::Join {
                path: path.to_path_buf(),
                source,
            })?,
        ),
        None => None,
    };
    let shown = join.map(Path::to_path_buf);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(u32, Option<OwnedFd>), NetnsError>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let lent = std::thread::Builder::new()
        .name("hook-netns".into())
        .spawn(move || {
            let entered = enter(target, shown);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                // Until the hooks are done (the sender dropped).
                let _ = done_rx.recv();
            }
        })
        .map_err(NetnsError::Thread)?;
    let entered = ready_rx.recv().unwrap_or_else(|_| {
        Err(NetnsError::Thread(std::io::Error::other(
            "the thread ended before entering the namespace",
        )))
    });
    let result = entered.map(|(tid, fd)| (f(tid), fd));
    drop(done_tx);
    let _ = lent.join();
    result
}

/// In the lent thread: joins `target` or makes a new namespace; its tid and the new
/// namespace's descriptor.
fn enter(
    target: Option<std::fs::File>,
    shown: Option<PathBuf>,
) -> Result<(u32, Option<OwnedFd>), NetnsError> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() } as u32;
    match target {
        Some(file) => {
            nix::sched::setns(file.as_raw_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Join {
                    path: shown.unwrap_or_default(),
                    source: e.into(),
                }
            })?;
            Ok((tid, None))
        }
        None => {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetnsError::Unshare(e.into()))?;
            let ns =
                std::fs::File::open("/proc/thread-self/ns/net").map_err(NetnsError::Unshare)?;
            Ok((tid, Some(ns.into())))
        }
    }
}

/// Runs `f` on a fresh thread that joined network namespace `netns` and returns its result
/// (the thread ends with `f`, so no other work ever runs in that namespace by accident).
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let join_err = |source| NetnsError::Join {
        path: netns.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(netns).map_err(join_err)?;
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("pod-netns".into())
            .spawn_scoped(s, move || {
                nix::sched::setns(file.as_raw_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| join_err(e.into()))?;
                Ok(f())
            })
            .map_err(NetnsError::Thread)?;
        worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A path naming namespace descriptor `fd` of this process, for code that opens namespaces
/// by path (valid while the descriptor is open).
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

/// Whether `path` is of [`fd_path`]'s form (`/proc/<pid>/fd/<n>`): a namespace a shim made,
/// which dies with that shim's descriptor (nothing of it to restore after the shim is gone).
pub fn is_fd_path(path: &Path) -> bool {
    let parts: Vec<&str> = path.to_str().unwrap_or("").split('/').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(parts.as_slice(), ["", "proc", pid, "fd", fd] if number(pid) && number(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ns_id(path: &Path) -> (u64, u64) {
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    /// Needs CAP_SYS_ADMIN (unshare of a network namespace): the suite runs as root.
    #[test]
    fn a_new_namespace_is_named_by_the_tid_and_outlives_the_thread() {
        let own = ns_id(Path::new("/proc/self/ns/net"));
        let (seen, fd) = with_thread_in(None, |tid| {
            ns_id(Path::new(&format!(
                "/proc/{}/task/{tid}/ns/net",
                std::process::id()
            )))
        })
        .unwrap();
        let fd = fd.expect("a new namespace's descriptor");
        assert_ne!(seen, own, "the thread stayed in the shim's namespace");
        assert_eq!(ns_id(&fd_path(&fd)), seen);
        // Joining it by path lends a thread in that same namespace.
        let (joined, none) = with_thread_in(Some(&fd_path(&fd)), |tid| {
            ns_id(Path::new(&format!("/proc/{tid}/ns/net")))
        })
        .unwrap();
        assert!(none.is_none());
        assert_eq!(joined, seen);
        assert_eq!(ns_id(Path::new("/proc/self/ns/net")), own);
    }

    #[test]
    fn fd_paths_are_told_from_namespace_paths() {
        let fd = std::fs::File::open("/proc/self/ns/net").unwrap();
        assert!(is_fd_path(&fd_path(&fd.into())));
        for other in [
            "/proc/12/ns/net",
            "/var/run/netns/cni-1",
            "/proc/self/fd/3",
            "/proc/1/fd/",
        ] {
            assert!(!is_fd_path(Path::new(other)), "{other}");
        }
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = with_thread_in(Some(Path::new("/nonexistent/netns")), |_| ()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
