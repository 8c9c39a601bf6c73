//! Processes and mounts of the containerd harness, read from `/proc`.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A process: pid, ppid, argv.
pub type Proc = (u32, u32, Vec<Vec<u8>>);

/// Every process in `/proc` (those that vanish while reading are skipped).
pub fn list() -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let one = |pid: u32| {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some((
            pid,
            stat(pid)?.0,
            argv.split(|&b| b == 0).map(<[u8]>::to_vec).collect(),
        ))
    };
    let pids = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok());
    pids.filter_map(one).collect()
}

/// `(ppid, state)` of `pid` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u8)> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.iter().rposition(|&b| b == b')')? + 2..];
    let mut fields = after.split(|&b| b == b' ');
    let state = *fields.next()?.first()?;
    Some((
        std::str::from_utf8(fields.next()?).ok()?.parse().ok()?,
        state,
    ))
}

/// User plus system CPU time, in clock ticks, of process `pid` (every thread, live or
/// exited) or, with `tid`, of its one thread; `None` once it is gone.
pub fn cpu_ticks(pid: u32, tid: Option<u32>) -> Option<u64> {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // After the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// How many threads process `pid` has (0 once it is gone).
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, st)| st != b'Z')
}

/// Processes whose argv has `-address <socket>` (how containerd starts shims).
pub fn with_address(procs: &[Proc], socket: &Path) -> Vec<u32> {
    let sock = socket.as_os_str().as_bytes();
    let matches = |w: &[Vec<u8>]| w[0] == b"-address" && w[1] == sock;
    let shims = procs.iter().filter(|p| p.2.windows(2).any(matches));
    shims.map(|p| p.0).collect()
}

/// `roots` and all their descendants.
pub fn descendants(procs: &[Proc], roots: &[u32]) -> Vec<u32> {
    let mut out = roots.to_vec();
    let mut i = 0;
    while let Some(&parent) = out.get(i) {
        let children = procs.iter().filter(|p| p.1 == parent).map(|p| p.0);
        let new: Vec<u32> = children.filter(|c| !out.contains(c)).collect();
        out.extend(new);
        i += 1;
    }
    out
}

/// SIGKILLs `pids`, waits up to `timeout` for them to be gone (or zombies), returns
/// those still alive.
pub fn kill_and_wait(pids: &[u32], timeout: Duration) -> Vec<u32> {
    for pid in pids.iter().filter_map(|&p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: plain kill(2) of the harness's shims and their process trees.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount points at or under `dir` (from `/proc/self/mountinfo`), in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let points = info
        .split(|&b| b == b'\n')
        .filter_map(|l| l.split(|&b| b == b' ').nth(4));
    let points = points.map(|m| PathBuf::from(OsStr::from_bytes(&unescape(m))));
    points.filter(|m| m.starts_with(dir)).collect()
}

/// Lazily unmounts everything at or under `dir`, deepest (then latest) first, for a few
/// rounds (stacked mounts); returns what is still mounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..8 {
        let mut mounts: Vec<_> = mounts_under(dir).into_iter().enumerate().collect();
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|(i, m)| std::cmp::Reverse((m.components().count(), *i)));
        for (_, m) in mounts {
            if let Ok(c) = CString::new(m.as_os_str().as_bytes()) {
                // SAFETY: `c` is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    mounts_under(dir)
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let oct = s
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (s[i], oct) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape(br"/x\0"), br"/x\0");
    }

    #[test]
    fn shims_are_found_by_address_with_their_trees() {
        let p = |pid, ppid, args: &str| (pid, ppid, args.split(' ').map(Into::into).collect());
        let procs: Vec<Proc> = vec![
            p(10, 1, "shim -namespace k8s.io -address /r/c.sock"),
            p(11, 10, "sh"),
            p(12, 11, "sleep"),
            p(20, 1, "shim -address /r/other.sock"),
        ];
        assert_eq!(with_address(&procs, Path::new("/r/c.sock")), [10]);
        assert_eq!(descendants(&procs, &[10]), [10, 11, 12]);
        let me = std::process::id();
        assert!(list()
            .iter()
            .any(|p| p.0 == me && p.1 == stat(me).unwrap().0));
    }
}
