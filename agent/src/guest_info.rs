//! Facts about the guest for `GetGuestDetails`: kernel release, memory, online CPUs.

use std::io;

/// Why a fact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GuestInfoError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file's content is not what the kernel writes.
    #[error("parsing {path}: {detail}")]
    Parse {
        /// The file.
        path: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// `uname(2)` failed.
    #[error("uname: {0}")]
    Uname(#[from] nix::Error),
}

/// The kernel's memory figures.
pub(crate) const MEMINFO: &str = "/proc/meminfo";
const CPU_ONLINE: &str = "/sys/devices/system/cpu/online";

/// `uname -r`.
pub fn kernel_release() -> Result<String, GuestInfoError> {
    Ok(nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned())
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn memory_total_bytes() -> Result<u64, GuestInfoError> {
    let text = std::fs::read_to_string(MEMINFO).map_err(|source| GuestInfoError::Read {
        path: MEMINFO,
        source,
    })?;
    parse_mem_total(&text).ok_or_else(|| GuestInfoError::Parse {
        path: MEMINFO,
        detail: "no `MemTotal: N kB` line".into(),
    })
}

/// Number of online CPUs, from `/sys/devices/system/cpu/online`, falling back to
/// `sysconf(_SC_NPROCESSORS_ONLN)` where sysfs is not mounted.
pub fn online_cpus() -> Result<u32, GuestInfoError> {
    match std::fs::read_to_string(CPU_ONLINE) {
        Ok(text) => parse_cpu_list(&text).ok_or_else(|| GuestInfoError::Parse {
            path: CPU_ONLINE,
            detail: format!("bad CPU list {:?}", text.trim()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // SAFETY: sysconf has no memory-safety preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
            u32::try_from(n).map_err(|_| GuestInfoError::Read {
                path: CPU_ONLINE,
                source: io::Error::last_os_error(),
            })
        }
        Err(source) => Err(GuestInfoError::Read {
            path: CPU_ONLINE,
            source,
        }),
    }
}

/// The `MemTotal` line of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo_kib(meminfo, "MemTotal")?.checked_mul(1024)
}

/// The value of the `KEY:   N kB` line of a `/proc/meminfo` text, in KiB; `None` if the first
/// line of that key is missing or not in that form.
pub fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let mut it = line[key.len() + 1..].split_whitespace();
    let kib: u64 = it.next()?.parse().ok()?;
    (it.next() == Some("kB")).then_some(kib)
}

/// Counts the CPUs of a kernel CPU list such as `0-3,5,7-8`.
pub fn parse_cpu_list(list: &str) -> Option<u32> {
    let list = list.trim();
    if list.is_empty() {
        return Some(0);
    }
    let mut n = 0u32;
    for part in list.split(',') {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)?.checked_add(1)?
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
        n = n.checked_add(count)?;
    }
    Some(n)
}

/// The virtio-fs mounts of the guest as (tag, mount point), from `/proc/self/mounts`.
pub fn virtiofs_mounts() -> Result<Vec<(String, String)>, GuestInfoError> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(|source| GuestInfoError::Read {
            path: "/proc/self/mounts",
            source,
        })?;
    Ok(parse_virtiofs_mounts(&mounts))
}

/// Picks the `virtiofs` entries out of a mounts table (`source target fstype ...` lines).
pub fn parse_virtiofs_mounts(mounts: &str) -> Vec<(String, String)> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (source, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "virtiofs").then(|| (source.to_string(), target.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofs_mounts_are_picked_out() {
        let table = "proc /proc proc rw 0 0\npod /run/moat/shares/pod virtiofs rw,nosuid,nodev 0 0\nbad line\n";
        assert_eq!(
            parse_virtiofs_mounts(table),
            vec![("pod".to_string(), "/run/moat/shares/pod".to_string())]
        );
    }

    #[test]
    fn mem_total() {
        let t = "MemFree:  10 kB\nMemTotal:       16318412 kB\nBuffers: 1 kB\n";
        assert_eq!(parse_mem_total(t), Some(16318412 * 1024));
        assert_eq!(parse_mem_total("MemTotal: 12\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
        assert_eq!(parse_mem_total(""), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }

    #[test]
    fn this_machine() {
        assert!(!kernel_release().unwrap().is_empty());
        assert!(memory_total_bytes().unwrap() > 1 << 20);
        assert!(online_cpus().unwrap() >= 1);
    }
}
