//! OOM-kill notifications: one thread watches the `memory.events` file of every registered
//! container's cgroup with inotify (cgroup v2 signals IN_MODIFY on it when a counter
//! changes) and queues the container's id when its `oom_kill` count grows.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tracing::{debug, warn};

use super::cgroup::{read_optional, Cgroup, CgroupError};
use crate::util::lock;

/// The most OOM events kept for [`OomWatcher::next_event`]; beyond it the oldest is dropped.
pub const QUEUE_LIMIT: usize = 1024;
/// How long the watcher thread sleeps in `poll` before looking at its stop flag anyway.
const POLL_MS: i32 = 1000;

/// Why the OOM watcher could not start or watch a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum OomError {
    /// `inotify_init1` or `pipe2` failed.
    #[error("creating the OOM watcher's {what}: {source}")]
    Init {
        /// "inotify instance" or "wake-up pipe".
        what: &'static str,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The thread could not be spawned.
    #[error("spawning the OOM watcher thread: {0}")]
    Thread(#[source] std::io::Error),
    /// `inotify_add_watch` failed (no memory controller: no `memory.events`).
    #[error("watching {path}: {source}")]
    Watch {
        /// The `memory.events` file.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// Reading the initial `memory.events` failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The watcher was stopped.
    #[error("the OOM watcher is stopped")]
    Stopped,
}

/// Watches registered cgroups for OOM kills; see the module documentation.
pub struct OomWatcher {
    shared: Arc<Shared>,
    /// Write end of the pipe that wakes the thread to stop.
    wake: OwnedFd,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the API and the thread share.
struct Shared {
    inotify: InotifyFd,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
}

/// An inotify instance that closes its descriptor when dropped.
struct InotifyFd(Inotify);

impl Drop for InotifyFd {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.0.as_raw_fd());
    }
}

#[derive(Default)]
struct State {
    /// Per watch descriptor, the containers using it (one file watched twice gives one wd).
    by_wd: HashMap<WatchDescriptor, Vec<Watched>>,
    by_id: HashMap<String, WatchDescriptor>,
}

struct Watched {
    id: String,
    events: PathBuf,
    /// The largest `oom_kill` seen.
    oom_kill: u64,
}

#[derive(Default)]
struct Queue {
    ids: VecDeque<String>,
    stopped: bool,
}

/// `oom_kill` of a `memory.events` file (0 if it is gone).
fn oom_kills(events: &std::path::Path) -> Result<u64, CgroupError> {
    let text = read_optional(events)?.unwrap_or_default();
    Ok(crate::container::cgroup::MemoryEvents::parse(&text).oom_kill)
}

impl OomWatcher {
    /// Starts the watcher thread.
    pub fn start() -> Result<Arc<Self>, OomError> {
        let inotify =
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|source| {
                OomError::Init {
                    what: "inotify instance",
                    source,
                }
            })?;
        let inotify = InotifyFd(inotify);
        let (r, w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|source| {
                OomError::Init {
                    what: "wake-up pipe",
                    source,
                }
            })?;
        // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
        let (wake_rx, wake) = unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) };
        let shared = Arc::new(Shared {
            inotify,
            state: Mutex::new(State::default()),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("oom-watcher".into())
            .spawn(move || thread_shared.run(wake_rx))
            .map_err(OomError::Thread)?;
        Ok(Arc::new(OomWatcher {
            shared,
            wake,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Watches `cgroup`'s `memory.events` for container `id` (replacing an earlier watch of
    /// the same id). OOM kills before this call are not reported.
    pub fn watch(&self, id: &str, cgroup: &Cgroup) -> Result<(), OomError> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(OomError::Stopped);
        }
        let events = cgroup.path().join("memory.events");
        let mut state = lock(&self.shared.state);
        self.shared.forget(&mut state, id);
        let wd = self
            .shared
            .inotify
            .0
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
            .map_err(|source| OomError::Watch {
                path: events.clone(),
                source,
            })?;
        // Read after the watch exists: a kill from now on is either counted here or seen
        // by the thread (which waits for this lock before it looks).
        let oom_kill = match oom_kills(&events) {
            Ok(n) => n,
            Err(e) => {
                if !state.by_wd.contains_key(&wd) {
                    let _ = self.shared.inotify.0.rm_watch(wd);
                }
                return Err(e.into());
            }
        };
        state.by_wd.entry(wd).or_default().push(Watched {
            id: id.to_string(),
            events,
            oom_kill,
        });
        state.by_id.insert(id.to_string(), wd);
        Ok(())
    }

    /// Stops watching container `id` (no-op if it is not watched).
    pub fn unwatch(&self, id: &str) {
        let mut state = lock(&self.shared.state);
        self.shared.forget(&mut state, id);
    }

    /// The next container id whose cgroup had an OOM kill, waiting up to `timeout` (`None`:
    /// until one comes or the watcher stops). `None` on timeout or once stopped and drained.
    pub fn next_event(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut queue = lock(&self.shared.queue);
        loop {
            if let Some(id) = queue.ids.pop_front() {
                return Some(id);
            }
            if queue.stopped {
                return None;
            }
            queue = match deadline {
                None => self
                    .shared
                    .ready
                    .wait(queue)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.shared
                        .ready
                        .wait_timeout(queue, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Stops the thread and wakes every [`OomWatcher::next_event`] waiter. Idempotent.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        lock(&self.shared.queue).stopped = true;
        self.shared.ready.notify_all();
        let _ = nix::unistd::write(self.wake.as_raw_fd(), &[1]);
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                warn!("the OOM watcher thread panicked");
            }
        }
    }

    /// The container ids being watched (sorted).
    #[cfg(test)]
    pub fn watched(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.shared.state).by_id.keys().cloned().collect();
        ids.sort();
        ids
    }
}

impl Drop for OomWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    /// The thread: wait for inotify events (or the stop pipe), then look at the files.
    fn run(&self, wake_rx: OwnedFd) {
        let ino_fd = self.inotify.0.as_raw_fd();
        while !self.stop.load(Ordering::SeqCst) {
            let mut fds = [
                PollFd::new(ino_fd, PollFlags::POLLIN),
                PollFd::new(wake_rx.as_raw_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, POLL_MS) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    warn!("OOM watcher: poll: {e}");
                    std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                    continue;
                }
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                // Only stop() writes there; the flag is set already.
                continue;
            }
            self.drain();
        }
        debug!("OOM watcher stopped");
    }

    /// Reads every pending inotify event and handles it.
    fn drain(&self) {
        loop {
            let events = match self.inotify.0.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("OOM watcher: reading inotify events: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    warn!("OOM watcher: inotify queue overflowed; checking every cgroup");
                    self.check_all();
                } else if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dropped(ev.wd);
                } else if ev.mask.contains(AddWatchFlags::IN_MODIFY) {
                    self.check(ev.wd);
                }
            }
        }
    }

    /// Queues the ids of `wd` whose `oom_kill` grew.
    fn check(&self, wd: WatchDescriptor) {
        let mut state = lock(&self.state);
        let Some(list) = state.by_wd.get_mut(&wd) else {
            return;
        };
        for w in list.iter_mut() {
            match oom_kills(&w.events) {
                Ok(n) if n > w.oom_kill => {
                    debug!(id = %w.id, oom_kill = n, "OOM kill");
                    w.oom_kill = n;
                    self.push(w.id.clone());
                }
                Ok(_) => {}
                Err(e) => debug!(id = %w.id, "OOM watcher: {e}"),
            }
        }
    }

    fn check_all(&self) {
        let wds: Vec<WatchDescriptor> = lock(&self.state).by_wd.keys().copied().collect();
        for wd in wds {
            self.check(wd);
        }
    }

    /// The kernel removed watch `wd` (file deleted, cgroup removed): forget its ids.
    fn dropped(&self, wd: WatchDescriptor) {
        let mut state = lock(&self.state);
        if let Some(list) = state.by_wd.remove(&wd) {
            for w in list {
                debug!(id = %w.id, path = %w.events.display(), "OOM watch gone");
                if state.by_id.get(&w.id) == Some(&wd) {
                    state.by_id.remove(&w.id);
                }
            }
        }
    }

    /// Removes `id` from the state, and its inotify watch when no one else uses it.
    fn forget(&self, state: &mut State, id: &str) {
        let Some(wd) = state.by_id.remove(id) else {
            return;
        };
        if let Some(list) = state.by_wd.get_mut(&wd) {
            list.retain(|w| w.id != id);
            if list.is_empty() {
                state.by_wd.remove(&wd);
                // EINVAL: the kernel dropped it already (IN_IGNORED on its way).
                let _ = self.inotify.0.rm_watch(wd);
            }
        }
    }

    /// Queues `id`, dropping the oldest beyond [`QUEUE_LIMIT`].
    fn push(&self, id: String) {
        let mut queue = lock(&self.queue);
        if queue.ids.len() >= QUEUE_LIMIT {
            if let Some(old) = queue.ids.pop_front() {
                warn!(dropped = %old, "OOM event queue full: dropping the oldest event");
            }
        }
        queue.ids.push_back(id);
        drop(queue);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tempdir, TempDirExt};
    use std::io::Write;

    const EVENTS: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n";

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn oom_kill_growth_is_reported() {
        let t = tempdir("oom");
        let a = t.file("a/memory.events", EVENTS);
        let b = t.file("b/memory.events", "oom_kill 3\n");
        let w = OomWatcher::start().unwrap();
        w.watch("ctr-a", &Cgroup::open(t.path().join("a"))).unwrap();
        w.watch("ctr-b", &Cgroup::open(t.path().join("b"))).unwrap();
        assert_eq!(w.watched(), ["ctr-a", "ctr-b"]);

        // A change that is not an OOM kill: no event.
        append(&a, "max 1\n");
        assert_eq!(w.next_event(Some(Duration::from_millis(200))), None);

        // The later line wins in the parse, as a rewrite would.
        append(&a, "oom 1\noom_kill 1\n");
        assert_eq!(
            w.next_event(Some(Duration::from_secs(5))).as_deref(),
            Some("ctr-a")
        );
        // b's kills before watch() are not reported; new ones are.
        append(&b, "oom_kill 4\n");
        assert_eq!(
            w.next_event(Some(Duration::from_secs(5))).as_deref(),
            Some("ctr-b")
        );
        // A full rewrite (truncate, then write) with a larger count: one event.
        std::fs::write(&a, EVENTS.replace("oom_kill 0", "oom_kill 2")).unwrap();
        assert_eq!(
            w.next_event(Some(Duration::from_secs(5))).as_deref(),
            Some("ctr-a")
        );
        assert_eq!(w.next_event(Some(Duration::from_millis(200))), None);

        // After unwatch, nothing.
        w.unwatch("ctr-b");
        w.unwatch("never-watched");
        append(&b, "oom_kill 9\n");
        assert_eq!(w.next_event(Some(Duration::from_millis(200))), None);
        assert_eq!(w.watched(), ["ctr-a"]);
        w.stop();
    }

    #[test]
    fn vanished_file_is_forgotten_and_can_be_watched_again() {
        let t = tempdir("oom-gone");
        let a = t.file("a/memory.events", EVENTS);
        let w = OomWatcher::start().unwrap();
        let cg = Cgroup::open(t.path().join("a"));
        w.watch("ctr", &cg).unwrap();
        std::fs::remove_file(&a).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !w.watched().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.watched().is_empty(), "IN_IGNORED not handled");
        w.unwatch("ctr");

        t.file("a/memory.events", EVENTS);
        w.watch("ctr", &cg).unwrap();
        append(&a, "oom_kill 1\n");
        assert_eq!(
            w.next_event(Some(Duration::from_secs(5))).as_deref(),
            Some("ctr")
        );
    }

    #[test]
    fn two_ids_on_one_file_and_rewatch() {
        let t = tempdir("oom-shared");
        let a = t.file("a/memory.events", EVENTS);
        let w = OomWatcher::start().unwrap();
        let cg = Cgroup::open(t.path().join("a"));
        w.watch("x", &cg).unwrap();
        w.watch("y", &cg).unwrap();
        w.watch("y", &cg).unwrap();
        // Unwatching one keeps the other's (shared) inotify watch.
        w.unwatch("x");
        append(&a, "oom_kill 1\n");
        assert_eq!(
            w.next_event(Some(Duration::from_secs(5))).as_deref(),
            Some("y")
        );
        assert_eq!(w.next_event(Some(Duration::from_millis(100))), None);
    }

    #[test]
    fn watch_without_memory_events_fails() {
        let t = tempdir("oom-missing");
        let w = OomWatcher::start().unwrap();
        let err = w.watch("c", &Cgroup::open(t.path())).unwrap_err();
        assert!(matches!(err, OomError::Watch { .. }), "{err}");
        assert!(w.watched().is_empty());
    }

    #[test]
    fn queue_drops_oldest() {
        let w = OomWatcher::start().unwrap();
        for i in 0..QUEUE_LIMIT + 5 {
            w.shared.push(format!("c{i}"));
        }
        assert_eq!(w.next_event(Some(Duration::ZERO)).as_deref(), Some("c5"));
        let mut n = 1;
        while w.next_event(Some(Duration::ZERO)).is_some() {
            n += 1;
        }
        assert_eq!(n, QUEUE_LIMIT);
    }

    #[test]
    fn stop_wakes_waiters_and_refuses_watches() {
        let t = tempdir("oom-stop");
        t.file("memory.events", EVENTS);
        let w = OomWatcher::start().unwrap();
        let (tx, woke) = std::sync::mpsc::channel();
        {
            let w = Arc::clone(&w);
            std::thread::spawn(move || tx.send(w.next_event(None)));
        }
        std::thread::sleep(Duration::from_millis(50));
        w.stop();
        // A deadline on the wake-up, not a timing claim: a waiter stop missed blocks forever.
        let event = woke.recv_timeout(Duration::from_secs(30));
        assert_eq!(event, Ok(None), "stop did not wake the waiter");
        assert!(matches!(
            w.watch("c", &Cgroup::open(t.path())),
            Err(OomError::Stopped)
        ));
        w.stop();
        drop(w);
    }
}
