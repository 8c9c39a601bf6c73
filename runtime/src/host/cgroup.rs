//! Pod accounting on the host, like Kata's `sandbox_cgroup_only`: the pod's `moat-vmm` — the
//! guest's memory, every vCPU and device thread — runs in the host cgroup the pod's first
//! container spec names (`linux.cgroupsPath`: CRI's sandbox cgroup under the kubelet's pod
//! cgroup, `ctr run`'s `/<namespace>/<id>`), so the pod's Kubernetes limits and the node's
//! accounting cover the VM; and with the pod's `oom_score_adj` ([`oom`]).
//!
//! - [`path`]: the two forms of `linux.cgroupsPath` (a path; systemd's `slice:prefix:name`,
//!   mapped to the path systemd uses), validated;
//! - [`hierarchy`]: cgroup v2's one tree, or the v1 hierarchies of the accounting
//!   controllers (memory, cpu/cpuacct, cpuset, pids, blkio), and the work in them;
//! - [`limits`]: the pod cgroup's memory and CPU limits, for [`crate::host::sizing`].
//!
//! [`PodCgroup::create`] records in the pod directory ([`RECORD_FILE`]) which directories it
//! will make before it makes them (and, once made, which it made), so teardown — also
//! `delete` after a dead shim — removes exactly those, leaf first, once the VMM is gone. The
//! VMM joins from its first instruction: the shim opens each `cgroup.procs` before the
//! spawn and the child writes `0` to them between fork and exec ([`join_in_child`]).
//! The cgroup root is a parameter ([`CGROUP_ROOT`] in production) so the tests run against
//! directories laid out like cgroupfs.
//!
//! Not undone: controllers enabled in an existing ancestor's `cgroup.subtree_control` (other
//! cgroups may use them by then); a parent directory two pods of one namespace raced to
//! create stays when the one that did not make it ends last (as runc leaves `/<namespace>`).

pub mod hierarchy;
pub mod limits;
pub mod oom;
pub mod path;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::host::record;
use crate::pod::layout::PodDir;
use hierarchy::Layout;

pub use limits::parent_limits;
pub use oom::OomScoreAdj;
pub use path::CgroupPath;

/// Where the cgroup filesystems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// What the shim created, in the pod directory.
pub const RECORD_FILE: &str = "cgroup.json";
/// How long the pod's own cgroup may stay busy after the VMM was reaped (the kernel still
/// counting its dying threads) before teardown gives up on it.
const RMDIR_PATIENCE: Duration = Duration::from_secs(3);

/// Errors reading a pod's cgroup or oom settings, or setting up its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `linux.cgroupsPath` is not a usable cgroup path.
    #[error("linux.cgroupsPath {path:?}: {why}")]
    BadPath {
        /// The spec's text.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// `process.oomScoreAdj` is not in -1000..=1000.
    #[error("process.oomScoreAdj {0}: not an integer in -1000..=1000")]
    BadOomScoreAdj(String),
    /// No cgroup filesystem under the root.
    #[error("no cgroup v2 tree and no v1 memory/cpu/cpuset/pids/blkio hierarchy under {0}")]
    NoHierarchy(PathBuf),
    /// A directory on the way is not a plain directory inside its hierarchy.
    #[error("cgroup {path}: {why}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A cgroup file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Where a pod's VMM is accounted on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAccounting {
    /// The cgroup the VMM runs in (`None`: the shim's own).
    pub cgroup: Option<CgroupPath>,
    /// The VMM's `oom_score_adj` (`None`: the shim's).
    pub oom_score_adj: Option<OomScoreAdj>,
}

/// The `linux.cgroupsPath` of OCI spec `spec`, if it names one.
pub fn cgroup_of_spec(spec: &Value) -> Result<Option<CgroupPath>, CgroupError> {
    match spec.pointer("/linux/cgroupsPath").and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(p) => CgroupPath::parse(p).map(Some),
    }
}

/// What the shim did to the host's cgroups for one pod, to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    /// `linux.cgroupsPath` as the spec gave it.
    pub cgroups_path: String,
    /// The cgroup root everything is under.
    pub root: PathBuf,
    /// The directories the VMM runs in, one per hierarchy.
    pub joined: Vec<PathBuf>,
    /// The directories the shim created (or is about to), parents first.
    pub created: Vec<PathBuf>,
}

/// A pod's cgroup on the host, made ready for its VMM.
#[derive(Debug)]
pub struct PodCgroup {
    /// What was done.
    pub record: CgroupRecord,
    record_path: PathBuf,
}

/// The pod's `cgroup.procs` files, open for the VMM child to join ([`join_in_child`]).
#[derive(Debug)]
pub struct ProcsFiles(Vec<File>);

impl ProcsFiles {
    /// Their descriptors (close-on-exec: the VMM does not keep them).
    pub fn fds(&self) -> Vec<RawFd> {
        self.0.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// In the VMM child between fork and exec: joins the cgroups whose `cgroup.procs` are open at
/// `fds` by writing `0` (the writer) to each. Only write(2): async-signal-safe.
pub fn join_in_child(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) of one static byte to a descriptor the shim keeps open until the
        // spawn has returned.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The pod's record file in pod directory `dir`.
pub fn record_path(dir: &PodDir) -> PathBuf {
    dir.root.join(RECORD_FILE)
}

impl PodCgroup {
    /// Makes the cgroup `path` under cgroup root `root` in every hierarchy that accounts the
    /// VMM (see the module doc), recording in `record_path` what it makes before making it.
    /// On failure nothing it made is left, nor the record.
    pub fn create(
        root: &Path,
        path: &CgroupPath,
        record_path: &Path,
    ) -> Result<PodCgroup, CgroupError> {
        let layout = Layout::detect(root)?;
        let root = root
            .canonicalize()
            .map_err(|e| hierarchy::io("resolving", root, e))?;
        let trees = layout.hierarchies();
        let mut planned = Vec::new();
        for h in trees {
            planned.extend(hierarchy::missing(h, path)?);
        }
        let mut cg = PodCgroup {
            record: CgroupRecord {
                cgroups_path: path.spec().into(),
                root,
                joined: trees.iter().map(|h| h.root.join(path.relative())).collect(),
                created: planned,
            },
            record_path: record_path.to_path_buf(),
        };
        cg.write_record()?;
        let mut made = Vec::new();
        let result = cg.make(&layout, path, &mut made);
        cg.record.created = made;
        match result.and_then(|()| cg.write_record()) {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.undo();
                Err(e)
            }
        }
    }

    /// Makes the planned directories (pushing each onto `made`) and prepares them.
    fn make(
        &self,
        layout: &Layout,
        path: &CgroupPath,
        made: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        for h in layout.hierarchies() {
            for dir in self
                .record
                .created
                .iter()
                .filter(|d| d.starts_with(&h.root))
            {
                if !hierarchy::make(dir)? {
                    continue;
                }
                made.push(dir.clone());
                if h.controllers.contains(&"cpuset") {
                    hierarchy::init_cpuset(dir)?;
                }
            }
            hierarchy::check_inside(h, &h.root.join(path.relative()))?;
            if let Layout::V2(h) = layout {
                hierarchy::enable_controllers(h, path);
            }
        }
        Ok(())
    }

    /// Opens the `cgroup.procs` of each directory the VMM joins.
    pub fn procs_files(&self) -> Result<ProcsFiles, CgroupError> {
        let open = |dir: &PathBuf| {
            let file = dir.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .map_err(|e| hierarchy::io("opening", &file, e))
        };
        self.record
            .joined
            .iter()
            .map(open)
            .collect::<Result<_, _>>()
            .map(ProcsFiles)
    }

    /// Removes what was made and the record, once the VMM is gone; failures are logged.
    pub fn remove(self) {
        self.undo();
        crate::plog!(Info, "pod cgroup {} removed", self.record.cgroups_path);
    }

    fn undo(&self) {
        remove_dirs(&self.record);
        let _ = std::fs::remove_file(&self.record_path);
    }

    fn write_record(&self) -> Result<(), CgroupError> {
        record::write(&self.record_path, &self.record)
            .map_err(|e| hierarchy::io("writing", &self.record_path, e))
    }
}

/// `delete` after a dead shim: removes what the record at `record_path` says was made, if
/// there is a record. Returns what it did, for the log.
pub fn cleanup_recorded(record_path: &Path) -> Option<String> {
    let record: CgroupRecord = match record::read(record_path)? {
        Ok(r) => r,
        Err(why) => return Some(why),
    };
    remove_dirs(&record);
    let _ = std::fs::remove_file(record_path);
    Some(format!("cgroup {} removed", record.cgroups_path))
}

/// Removes the record's created directories, children first: a directory the VMM ran in is
/// retried while busy (for [`RMDIR_PATIENCE`]); a parent still busy is in use by another pod
/// and stays. Directories not under the record's root are never touched.
fn remove_dirs(record: &CgroupRecord) {
    for dir in record.created.iter().rev() {
        let plain = dir.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
        if !plain || !dir.starts_with(&record.root) || dir == &record.root {
            crate::plog!(
                Warn,
                "pod cgroup: not removing {}: outside {}",
                dir.display(),
                record.root.display()
            );
            continue;
        }
        let patience = if record.joined.contains(dir) {
            RMDIR_PATIENCE
        } else {
            Duration::ZERO
        };
        rmdir(dir, patience);
    }
}

/// rmdir(2) of `dir`, retried while it is busy for up to `patience`.
fn rmdir(dir: &Path, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let e = match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => e,
        };
        let errno = e.raw_os_error();
        if errno == Some(libc::EBUSY) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let in_use = matches!(errno, Some(libc::EBUSY) | Some(libc::ENOTEMPTY));
        if in_use && patience.is_zero() {
            crate::plog!(Debug, "pod cgroup: {} still in use, left", dir.display());
        } else {
            crate::plog!(Warn, "pod cgroup: removing {}: {e}", dir.display());
        }
        return;
    }
}

#[cfg(test)]
mod tests;
