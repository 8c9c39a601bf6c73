//! The two forms of an OCI `linux.cgroupsPath` containerd writes, read into one validated
//! path below a hierarchy's root:
//! - a path (cgroupfs driver): `/kubepods/burstable/pod<uid>/<id>` (CRI's `cgroup_parent` +
//!   the sandbox id), `/<namespace>/<id>` (`ctr run`);
//! - systemd's `slice:prefix:name` (CRI with `SystemdCgroup`): the path systemd gives the
//!   scope `prefix-name.scope` in that slice, as runc and Kata compute it:
//!   `kubepods-burstable-pod1.slice:cri-containerd:<id>` →
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-<id>.scope`.
//!
//! Every component is a plain directory name: no `.`, `..`, empty or control characters, so
//! the path cannot leave the hierarchy it is joined to (symlinks are checked on disk, see
//! [`super::hierarchy`]).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// The longest `linux.cgroupsPath` accepted.
const MAX_LEN: usize = 4096;
/// systemd's default slice, for `:prefix:name` (as runc).
const DEFAULT_SLICE: &str = "system.slice";

/// A validated cgroup path below a hierarchy's root, and the spec's text it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPath {
    /// `linux.cgroupsPath` as the spec gave it.
    spec: String,
    /// The directory names from the hierarchy's root down, never empty.
    components: Vec<String>,
}

impl CgroupPath {
    /// Reads `linux.cgroupsPath` text `spec` (a path, or systemd's `slice:prefix:name`).
    pub fn parse(spec: &str) -> Result<CgroupPath, CgroupError> {
        let bad = |why: String| CgroupError::BadPath {
            path: spec.into(),
            why,
        };
        if spec.len() > MAX_LEN {
            return Err(bad(format!("longer than {MAX_LEN} bytes")));
        }
        let components = if spec.starts_with('/') {
            let parts: Vec<String> = spec
                .split('/')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect();
            for c in &parts {
                check_component(c).map_err(&bad)?;
            }
            parts
        } else if let [slice, prefix, name] = spec.split(':').collect::<Vec<_>>()[..] {
            systemd_components(slice, prefix, name).map_err(&bad)?
        } else {
            return Err(bad(
                "neither an absolute path nor systemd's slice:prefix:name".into(),
            ));
        };
        if components.is_empty() {
            return Err(bad("names the root cgroup, not a pod's own".into()));
        }
        Ok(CgroupPath {
            spec: spec.into(),
            components,
        })
    }

    /// The directory names from the hierarchy's root down.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The path relative to a hierarchy's root (`kubepods/burstable/pod1/<id>`).
    pub fn relative(&self) -> PathBuf {
        self.components.iter().collect()
    }

    /// The text the spec gave.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The cgroup above (the kubelet's pod cgroup for a CRI sandbox); `None` when that is
    /// the root.
    pub fn parent(&self) -> Option<CgroupPath> {
        let (_, above) = self.components.split_last()?;
        (!above.is_empty()).then(|| CgroupPath {
            spec: format!("/{}", above.join("/")),
            components: above.to_vec(),
        })
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.components.join("/"))
    }
}

/// One directory name: not `.`, `..` or empty, no `/`, NUL or other control characters.
fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() || c == "." || c == ".." {
        return Err(format!("component {c:?} is not a directory name"));
    }
    if c.contains('/') || c.chars().any(char::is_control) {
        return Err(format!("component {c:?} has a '/' or a control character"));
    }
    Ok(())
}

/// The path systemd uses for scope `prefix-name.scope` in `slice` (empty: `system.slice`).
fn systemd_components(slice: &str, prefix: &str, name: &str) -> Result<Vec<String>, String> {
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    let mut out = expand_slice(slice)?;
    if name.is_empty() || name.ends_with(".slice") {
        return Err(format!(
            "unit name {name:?}: must name a scope (not empty, not a .slice)"
        ));
    }
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    check_component(&unit)?;
    out.push(unit);
    Ok(out)
}

/// systemd's slice hierarchy (runc's `ExpandSlice`): `a-b-c.slice` →
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<Vec<String>, String> {
    let bad = || format!("slice {slice:?} is not a systemd slice name");
    let base = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if base.is_empty() || slice.contains('/') {
        return Err(bad());
    }
    if base == "-" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if part.is_empty() {
            return Err(bad());
        }
        prefix.push_str(part);
        let dir = format!("{prefix}.slice");
        check_component(&dir)?;
        out.push(dir);
        prefix.push('-');
    }
    Ok(out)
}
