//! The cgroup trees under a cgroup root (`/sys/fs/cgroup` in production, a directory of
//! files in the tests) and the directory work in them: the unified tree of cgroup v2, or the
//! v1 hierarchies of the controllers that account a pod's VMM; walking a path down a tree
//! without following a symlink; creating what is missing and preparing it as the kernel
//! needs (v1 cpuset's `cpus`/`mems` copied from the parent, v2 controllers enabled in each
//! parent's `cgroup.subtree_control`).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::path::CgroupPath;
use super::CgroupError;

/// The v1 controllers whose hierarchies the VMM joins: what its memory, CPU time, CPU
/// placement, tasks and block I/O are charged to. (`devices`, `freezer`, `net_*`,
/// `name=systemd` do not account anything.)
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "cpuset", "pids", "blkio"];
/// The v2 controllers enabled on the way down to the pod's cgroup, where available.
pub const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

/// One cgroup tree: its root directory and the controllers it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The tree's root (`/sys/fs/cgroup`, or `/sys/fs/cgroup/cpu,cpuacct` on v1).
    pub root: PathBuf,
    /// Its accounting controllers (v1); empty for the unified v2 tree.
    pub controllers: Vec<&'static str>,
}

/// The cgroup trees under a cgroup root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2: one tree, `<root>/cgroup.controllers` exists.
    V2(Hierarchy),
    /// cgroup v1 (or hybrid): one tree per mounted controller, `<root>/<controller>`.
    V1(Vec<Hierarchy>),
}

impl Layout {
    /// Finds the trees under `root` (their roots resolved, and inside `root`).
    pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
        let root = &root.canonicalize().map_err(|e| io("resolving", root, e))?;
        if root.join("cgroup.controllers").is_file() {
            return Ok(Layout::V2(Hierarchy {
                root: root.to_path_buf(),
                controllers: Vec::new(),
            }));
        }
        let mut trees: Vec<Hierarchy> = Vec::new();
        for &controller in V1_CONTROLLERS {
            // `cpu` and `cpuacct` are usually links to one `cpu,cpuacct` mount. A directory
            // without `cgroup.procs` is not a mounted hierarchy.
            let Ok(real) = root.join(controller).canonicalize() else {
                continue;
            };
            if !real.join("cgroup.procs").is_file() || !real.starts_with(root) {
                continue;
            }
            match trees.iter_mut().find(|t| t.root == real) {
                Some(t) => t.controllers.push(controller),
                None => trees.push(Hierarchy {
                    root: real,
                    controllers: vec![controller],
                }),
            }
        }
        if trees.is_empty() {
            return Err(CgroupError::NoHierarchy(root.to_path_buf()));
        }
        Ok(Layout::V1(trees))
    }

    /// The trees.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        match self {
            Layout::V2(h) => std::slice::from_ref(h),
            Layout::V1(v) => v,
        }
    }

    /// The tree that has v1 `controller`, or the v2 tree.
    pub fn with(&self, controller: &str) -> Option<&Hierarchy> {
        match self {
            Layout::V2(h) => Some(h),
            Layout::V1(v) => v.iter().find(|h| h.controllers.contains(&controller)),
        }
    }
}

/// Walks `path` down tree `h` and returns the directories that do not exist yet, parents
/// first. Refuses a component that exists as anything but a directory (a symlink included:
/// nothing under the root may lead out of it).
pub fn missing(h: &Hierarchy, path: &CgroupPath) -> Result<Vec<PathBuf>, CgroupError> {
    let mut dir = h.root.clone();
    let mut out = Vec::new();
    for c in path.components() {
        dir.push(c);
        if !out.is_empty() {
            out.push(dir.clone());
            continue;
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) => {
                return Err(CgroupError::Unsafe {
                    path: dir,
                    why: if m.file_type().is_symlink() {
                        "is a symlink"
                    } else {
                        "is not a directory"
                    },
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => out.push(dir.clone()),
            Err(source) => return Err(io("reading", &dir, source)),
        }
    }
    Ok(out)
}

/// Makes directory `dir`; `Ok(false)` when it appeared meanwhile (another pod made it).
pub fn make(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dir).map_err(|e| io("reading", dir, e))?;
            if m.file_type().is_dir() {
                Ok(false)
            } else {
                Err(CgroupError::Unsafe {
                    path: dir.to_path_buf(),
                    why: "appeared as something other than a directory",
                })
            }
        }
        Err(source) => Err(io("creating", dir, source)),
    }
}

/// Checks that `dir` (made or found by walking) resolves to a directory inside `h`.
pub fn check_inside(h: &Hierarchy, dir: &Path) -> Result<(), CgroupError> {
    let real = dir.canonicalize().map_err(|e| io("resolving", dir, e))?;
    let root = h
        .root
        .canonicalize()
        .map_err(|e| io("resolving", &h.root, e))?;
    if real.starts_with(&root) && real != root {
        Ok(())
    } else {
        Err(CgroupError::Unsafe {
            path: dir.to_path_buf(),
            why: "resolves outside its cgroup hierarchy",
        })
    }
}

/// v1 cpuset: a new cgroup has no CPUs and no memory nodes, and a task cannot join it
/// (`ENOSPC`) until they are set: copies the parent's.
pub fn init_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let from = parent.join(file);
        let value = std::fs::read_to_string(&from).map_err(|e| io("reading", &from, e))?;
        let to = dir.join(file);
        std::fs::write(&to, value.trim()).map_err(|e| io("writing", &to, e))?;
    }
    Ok(())
}

/// cgroup v2: enables [`V2_CONTROLLERS`] (those available) in the `cgroup.subtree_control`
/// of the root and of each directory above the pod's cgroup, so the pod's cgroup has them.
/// One that cannot be enabled (an ancestor with processes of its own) is logged: the VMM is
/// then charged to the nearest ancestor that has it.
pub fn enable_controllers(h: &Hierarchy, path: &CgroupPath) {
    let mut available = read_list(&h.root.join("cgroup.controllers"));
    let mut dir = h.root.clone();
    let above = &path.components()[..path.components().len() - 1];
    for step in std::iter::once(None).chain(above.iter().map(Some)) {
        if let Some(c) = step {
            dir.push(c);
        }
        let file = dir.join("cgroup.subtree_control");
        let mut enabled = read_list(&file);
        let want: Vec<&str> = V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| available.contains(*c) && !enabled.contains(*c))
            .collect();
        enable(&file, &want, &mut enabled);
        available = enabled;
    }
}

/// Writes `+c` for each of `want` into `file` (a `cgroup.subtree_control`), all at once, else
/// one by one to enable what can be; adds what was enabled to `enabled`.
fn enable(file: &Path, want: &[&str], enabled: &mut BTreeSet<String>) {
    if want.is_empty() {
        return;
    }
    let line = |cs: &[&str]| {
        cs.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if std::fs::write(file, line(want)).is_ok() {
        enabled.extend(want.iter().map(|c| c.to_string()));
        return;
    }
    for c in want {
        match std::fs::write(file, line(&[c])) {
            Ok(()) => {
                enabled.insert(c.to_string());
            }
            Err(e) => crate::plog!(Warn, "pod cgroup: enabling {c} in {}: {e}", file.display()),
        }
    }
}

/// A cgroup list file (`cgroup.controllers`, `cgroup.subtree_control`) as a set of names;
/// empty when absent. (`+` prefixes are dropped.)
fn read_list(file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect()
}

/// An I/O error on `path`.
pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
