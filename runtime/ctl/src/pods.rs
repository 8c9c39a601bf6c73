//! The pods of this host: every `<state_dir>/<namespace>/<pod>/` with an ops socket, and a
//! pod named on the command line (`POD` or `NAMESPACE/POD`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use moat_runtime::config::Config;
use moat_runtime::ops::OPS_SOCKET;

use crate::Globals;

/// One pod's place on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    /// The containerd namespace.
    pub namespace: String,
    /// The pod id.
    pub id: String,
    /// Its shim's ops socket.
    pub socket: PathBuf,
}

/// The state dir of the effective configuration.
pub fn state_dir(g: &Globals) -> anyhow::Result<PathBuf> {
    let cfg = Config::resolve(g.config.as_deref()).context("the moat configuration")?;
    Ok(cfg.runtime.state_dir)
}

/// Every pod under `state_dir`, sorted by namespace and id. A missing state dir has none.
pub fn list(state_dir: &Path) -> anyhow::Result<Vec<PodEntry>> {
    let mut pods = Vec::new();
    let namespaces = match std::fs::read_dir(state_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pods),
        Err(e) => return Err(e).with_context(|| format!("reading {}", state_dir.display())),
    };
    for ns in namespaces.flatten().filter(is_dir) {
        let Ok(entries) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for pod in entries.flatten().filter(is_dir) {
            let socket = pod.path().join(OPS_SOCKET);
            if socket.exists() {
                pods.push(PodEntry {
                    namespace: ns.file_name().to_string_lossy().into_owned(),
                    id: pod.file_name().to_string_lossy().into_owned(),
                    socket,
                });
            }
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    Ok(pods)
}

fn is_dir(e: &std::fs::DirEntry) -> bool {
    e.file_type().is_ok_and(|t| t.is_dir())
}

/// The pod `name` (`POD` or `NAMESPACE/POD`, or a unique prefix of the pod id) among `pods`.
pub fn find<'a>(pods: &'a [PodEntry], name: &str) -> anyhow::Result<&'a PodEntry> {
    let (ns, id) = match name.split_once('/') {
        Some((ns, id)) => (Some(ns), id),
        None => (None, name),
    };
    let in_ns = |p: &&PodEntry| ns.is_none_or(|ns| p.namespace == ns);
    let exact: Vec<_> = pods.iter().filter(in_ns).filter(|p| p.id == id).collect();
    let matches = if exact.is_empty() {
        pods.iter()
            .filter(in_ns)
            .filter(|p| p.id.starts_with(id))
            .collect()
    } else {
        exact
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!("no pod {name:?} on this host (see `moat ps`)"),
        many => anyhow::bail!(
            "{name:?} names {} pods: {}",
            many.len(),
            many.iter()
                .map(|p| format!("{}/{}", p.namespace, p.id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_found_by_id_prefix_and_namespace() {
        let tmp = tempfile::TempDir::new().unwrap();
        for (ns, id) in [("default", "abc1"), ("default", "abd2"), ("k8s.io", "abc1")] {
            let d = tmp.path().join(ns).join(id);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(OPS_SOCKET), "").unwrap();
        }
        // A pod dir without a socket (being torn down) is not listed.
        std::fs::create_dir_all(tmp.path().join("default/gone")).unwrap();
        let pods = list(tmp.path()).unwrap();
        let names: Vec<_> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.id))
            .collect();
        assert_eq!(names, ["default/abc1", "default/abd2", "k8s.io/abc1"]);
        assert_eq!(find(&pods, "k8s.io/abc1").unwrap().namespace, "k8s.io");
        let e = find(&pods, "abc1").unwrap_err().to_string();
        assert!(e.contains("names 2 pods"), "{e}");
        assert_eq!(find(&pods, "abd").unwrap().id, "abd2");
        let e = find(&pods, "ab").unwrap_err().to_string();
        assert!(e.contains("names 3 pods"), "{e}");
        assert!(find(&pods, "zzz").is_err());
        assert!(list(&tmp.path().join("none")).unwrap().is_empty());
    }
}
