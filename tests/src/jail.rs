//! What a jailed moat-vmm looks like from the host, read from `/proc` the way an operator
//! would: its threads' seccomp, `no_new_privs` and capability sets, its namespaces, the
//! entries of its root, its mount points, its network interfaces and rlimits.

use std::path::Path;

/// A jailed VMM seen from the host.
#[derive(Debug)]
pub struct JailView {
    /// The jailed VMM's pid (the supervisor's child).
    pub pid: u32,
    /// Per VMM thread (KVM's own kernel workers left out): name and `/proc/.../status`
    /// fields `Seccomp`, `NoNewPrivs`, `CapEff`, `CapPrm`, `CapBnd`, `CapInh`, `CapAmb`.
    pub threads: Vec<(String, Vec<(String, String)>)>,
    /// The namespaces (`mnt`, `pid`, `net`, `ipc`, `uts`) it shares with `/proc/self`.
    pub shared_namespaces: Vec<&'static str>,
    /// The entries of its root directory, sorted.
    pub root_entries: Vec<String>,
    /// Its mount points, sorted.
    pub mount_points: Vec<String>,
    /// Its network interfaces.
    pub interfaces: Vec<String>,
    /// Its `/proc/<pid>/limits` text.
    pub limits: String,
}

/// The status fields [`JailView::threads`] keeps.
const FIELDS: [&str; 7] = [
    "Seccomp",
    "NoNewPrivs",
    "CapEff",
    "CapPrm",
    "CapBnd",
    "CapInh",
    "CapAmb",
];

/// The supervisor `supervisor`'s child (the jailed VMM), if it has one (found by its parent
/// pid: `/proc/<pid>/task/<pid>/children` needs `CONFIG_PROC_CHILDREN`).
pub fn jailed_child(supervisor: u32) -> Option<u32> {
    crate::containerd::sys::list()
        .into_iter()
        .find(|(_, ppid, _)| *ppid == supervisor)
        .map(|(pid, _, _)| pid)
}

/// Reads the view of the jailed VMM `pid`.
pub fn inspect(pid: u32) -> std::io::Result<JailView> {
    let proc = format!("/proc/{pid}");
    let read = |p: &str| std::fs::read_to_string(format!("{proc}/{p}"));
    let mut threads = Vec::new();
    for t in std::fs::read_dir(format!("{proc}/task"))? {
        let tid = t?.file_name().into_string().unwrap_or_default();
        let name = read(&format!("task/{tid}/comm"))?.trim().to_owned();
        if name.starts_with("kvm-") {
            continue; // KVM's worker: kernel code, no VMM code runs there
        }
        let status = read(&format!("task/{tid}/status"))?;
        let fields = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| FIELDS.contains(k))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        threads.push((name, fields));
    }
    let shared_namespaces = ["mnt", "pid", "net", "ipc", "uts"]
        .into_iter()
        .filter(|ns| {
            let link = |p: &str| std::fs::read_link(Path::new(p).join("ns").join(ns)).ok();
            link(&proc) == link("/proc/self")
        })
        .collect();
    let mut root_entries: Vec<String> = std::fs::read_dir(format!("{proc}/root"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    root_entries.sort();
    let mut mount_points: Vec<String> = read("mountinfo")?
        .lines()
        .filter_map(|l| Some(l.split(' ').nth(4)?.to_owned()))
        .collect();
    mount_points.sort();
    let interfaces = read("net/dev")?
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split(':').next()?.trim().to_owned()))
        .collect();
    Ok(JailView {
        pid,
        threads,
        shared_namespaces,
        root_entries,
        mount_points,
        interfaces,
        limits: read("limits")?,
    })
}

impl JailView {
    /// Field `field` of every thread, with the thread's name.
    pub fn field(&self, field: &str) -> Vec<(String, String)> {
        self.threads
            .iter()
            .map(|(name, fields)| {
                let v = fields
                    .iter()
                    .find(|(k, _)| k == field)
                    .map(|(_, v)| v.clone());
                (name.clone(), v.unwrap_or_default())
            })
            .collect()
    }

    /// The soft limit `name` (as `/proc/<pid>/limits` words it, e.g. "Max open files").
    pub fn soft_limit(&self, name: &str) -> Option<String> {
        self.limit(name, 0)
    }

    /// The hard limit `name`.
    pub fn hard_limit(&self, name: &str) -> Option<String> {
        self.limit(name, 1)
    }

    fn limit(&self, name: &str, column: usize) -> Option<String> {
        let line = self.limits.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .split_whitespace()
            .nth(column)
            .map(str::to_owned)
    }
}

/// The attack-hooks build of moat-vmm (`tests/scripts/build-attack-vmm.sh`), which the
/// release build never contains.
pub fn attack_vmm() -> std::path::PathBuf {
    let path = crate::target_dir().join("attack/debug/moat-vmm");
    assert!(
        path.is_file(),
        "{} is missing: build it with tests/scripts/build-attack-vmm.sh",
        path.display()
    );
    path
}
