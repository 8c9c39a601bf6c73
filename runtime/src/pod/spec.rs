//! Turns the OCI spec containerd wrote for a host runtime into the spec the guest agent runs:
//! the root filesystem at its place in the pod's share, host files the spec binds shared
//! into the guest (hooks stay on the host), and namespace paths of the host (the CRI pause process's
//! `/proc/<pid>/ns/*`) replaced by what they mean in a VM.
//!
//! In a moat pod the VM is the pod: its network, IPC and UTS namespaces are the pod's, so a
//! container that joins the pod's (by path) stays in the agent's (the network namespace by
//! the agent's path, [`POD_NETNS_PATH`], so that `net.*` sysctls are allowed as in a joined
//! namespace under runc); one that asks for a new one gets a new one inside the guest. A pod-shared PID namespace becomes the agent's pod PID
//! namespace (`pod_pidns`).

use std::path::{Path, PathBuf};

use moat_agent_protocol::{POD_NETNS_PATH, POD_SHM_DIR};
use serde_json::{json, Value};

use crate::pod::layout::guest_container_dir;

/// The largest config.json accepted (containerd's own are a few KiB).
pub const MAX_SPEC_BYTES: u64 = 4 << 20;

/// Errors translating a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The bundle's config.json could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is too big.
    #[error("{path} is {len} bytes, more than the {MAX_SPEC_BYTES} accepted")]
    TooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The spec is not what OCI says.
    #[error("invalid OCI spec: {0}")]
    Invalid(String),
}

/// A host path to bind into the pod's share before the container is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The host file or directory.
    pub source: PathBuf,
    /// Its name under the container's share directory (`mounts/<n>`).
    pub share_name: String,
    /// Bind it read-only.
    pub readonly: bool,
}

/// The result of [`translate`].
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The spec for the agent.
    pub spec: Value,
    /// Join the pod's PID namespace.
    pub pod_pidns: bool,
    /// Host paths to share first.
    pub binds: Vec<HostBind>,
    /// What was dropped or changed, for the log.
    pub notes: Vec<String>,
}

/// Reads `bundle/config.json` (bounded).
pub fn read_bundle_spec(bundle: &Path) -> Result<Value, SpecError> {
    let path = bundle.join("config.json");
    let read_err = |source| SpecError::Read {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(&path).map_err(read_err)?.len();
    if len > MAX_SPEC_BYTES {
        return Err(SpecError::TooBig { path, len });
    }
    let bytes = std::fs::read(&path).map_err(read_err)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| SpecError::Invalid(format!("{}: {e}", path.display())))
}

/// The spec's `root.path` (relative to the bundle unless absolute).
pub fn root_path(spec: &Value) -> Result<PathBuf, SpecError> {
    spec.pointer("/root/path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| SpecError::Invalid("root.path is missing".into()))
}

/// The spec's `root.readonly`.
pub fn root_readonly(spec: &Value) -> bool {
    spec.pointer("/root/readonly")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A CRI annotation.
pub fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// The CRI annotation naming a container's kind (`sandbox` or `container`).
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming a container's pod.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The pod a container belongs to: its CRI sandbox id when it is a CRI app container, else
/// its own id (a pod sandbox, or a lone `ctr run` container).
pub fn pod_of(spec: &Value, id: &str) -> String {
    match (
        annotation(spec, CRI_CONTAINER_TYPE),
        annotation(spec, CRI_SANDBOX_ID),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_string(),
        _ => id.to_string(),
    }
}

/// The network namespace path of the spec (`linux.namespaces[type=network].path`): CRI's pod
/// netns, or `ctr run --with-ns network:PATH`. `None` without one (a new, empty namespace).
pub fn netns_path(spec: &Value) -> Option<PathBuf> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Translates the host spec of container `id` for the guest. `sandbox_pid` is the guest pid
/// (in the agent's PID namespace) of the pod sandbox's init when `id` is a CRI app container
/// of that pod: the pod's IPC and UTS namespaces are the sandbox's, as they are the pause
/// container's under runc. A bind of `/dev/shm` (CRI's pod shm) becomes the guest's pod
/// `/dev/shm` ([`POD_SHM_DIR`]), shared by the pod's containers.
pub fn translate(host: &Value, id: &str, sandbox_pid: Option<u32>) -> Result<GuestSpec, SpecError> {
    check_vm_namespaces(host)?;
    let mut spec = host.clone();
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| SpecError::Invalid("the spec is not a JSON object".into()))?;
    let mut notes = Vec::new();
    let guest_dir = guest_container_dir(id);

    // Root: the container's rootfs in the share.
    let readonly = root_readonly(host);
    obj.insert(
        "root".into(),
        json!({"path": guest_dir.join("rootfs"), "readonly": readonly}),
    );
    // Hooks run on the host, by the shim (crate::host::hooks), never in the guest.
    if obj.remove("hooks").is_some_and(|h| !h.is_null()) {
        notes.push("OCI hooks: run on the host by the shim".into());
    }
    let mut pod_pidns = false;
    if let Some(nss) = obj
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    {
        pod_pidns = guest_namespaces(nss, sandbox_pid, &mut notes)?;
    }
    let mut binds = Vec::new();
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        for (i, m) in mounts.iter_mut().enumerate() {
            binds.extend(guest_mount(i, m, &guest_dir, &mut notes)?);
        }
    }
    Ok(GuestSpec {
        spec,
        pod_pidns,
        binds,
        notes,
    })
}

/// The namespaces a container's spec must list (new, or the pod's by path), with the request
/// that leaving one out spells. Without one a container shares the host's, which a container
/// in a VM cannot: it would get the VM's instead, silently.
const VM_NAMESPACES: [(&str, &str); 5] = [
    ("network", "host network (CRI hostNetwork, --net=host)"),
    ("pid", "host PID namespace (CRI hostPID, --pid=host)"),
    ("ipc", "host IPC namespace (CRI hostIPC, --ipc=host)"),
    ("uts", "host UTS namespace (--uts=host)"),
    ("mount", "host mount namespace"),
];

/// Refuses a spec that asks to share a host namespace ([`VM_NAMESPACES`]), naming it.
fn check_vm_namespaces(host: &Value) -> Result<(), SpecError> {
    let listed = host
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |kind: &str| {
        listed
            .iter()
            .any(|ns| ns.get("type").and_then(Value::as_str) == Some(kind))
    };
    match VM_NAMESPACES.iter().find(|(kind, _)| !has(kind)) {
        Some((kind, what)) => Err(SpecError::Invalid(format!(
            "the spec shares the {what}: it has no {kind} namespace, and a moat container \
             runs in its pod's VM, which cannot share the host's; run this pod with a \
             runtime that shares host namespaces (runc)"
        ))),
        None => Ok(()),
    }
}

/// Makes the guest spec join the VM's network namespace ([`POD_NETNS_PATH`]) instead of a
/// new one: for a container whose new namespace the shim made on the host for its hooks
/// (Docker), which filled it with the interface that moved into the VM.
pub fn join_vm_netns(spec: &mut Value) {
    let nss = spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut);
    for ns in nss.into_iter().flatten() {
        if ns.get("type").and_then(Value::as_str) == Some("network") {
            *ns = json!({"type": "network", "path": POD_NETNS_PATH});
        }
    }
}

/// Gives the spec's process `inherited` (the shim's own `oom_score_adj`) when it names no
/// `oomScoreAdj`: what a runc container inherits from its shim.
pub fn fill_oom_score_adj(spec: &mut Value, inherited: i32) {
    if let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) {
        process
            .entry("oomScoreAdj")
            .or_insert_with(|| json!(inherited));
    }
}

/// The hostname of a pod whose spec names none: the host's, which a runc container in a new
/// UTS namespace starts with (`None` if unreadable).
pub fn host_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim_end().to_string()).filter(|n| !n.is_empty())
}

/// Rewrites the spec's namespaces for the VM: joining the pod's network/IPC/UTS namespaces
/// means the VM's own (or the sandbox's IPC/UTS for an app container), the pod's PID
/// namespace the agent's pod PID namespace (returns `true`), a cgroup namespace a new one;
/// joining any other host namespace is refused.
fn guest_namespaces(
    nss: &mut Vec<Value>,
    sandbox_pid: Option<u32>,
    notes: &mut Vec<String>,
) -> Result<bool, SpecError> {
    let mut pod_pidns = false;
    let mut kept = Vec::new();
    for ns in nss.drain(..) {
        let kind = ns.get("type").and_then(Value::as_str).unwrap_or("");
        let path = ns.get("path").and_then(Value::as_str).unwrap_or("");
        if path.is_empty() {
            kept.push(ns);
            continue;
        }
        match (kind, sandbox_pid) {
            ("ipc" | "uts", Some(pid)) => {
                notes.push(format!("{kind} namespace {path}: the pod sandbox's"));
                kept.push(json!({"type": kind, "path": format!("/proc/{pid}/ns/{kind}")}));
            }
            ("network", _) => {
                notes.push(format!("network namespace {path}: the pod's, the VM's own"));
                kept.push(json!({"type": "network", "path": POD_NETNS_PATH}));
            }
            ("ipc" | "uts", _) => {
                notes.push(format!(
                    "{kind} namespace {path}: the pod's, i.e. the VM's own"
                ));
            }
            ("pid", _) => {
                pod_pidns = true;
                notes.push(format!("pid namespace {path}: the pod's PID namespace"));
            }
            ("cgroup", _) => {
                notes.push(format!("cgroup namespace {path}: a new one in the guest"));
                kept.push(json!({"type": "cgroup"}));
            }
            (other, _) => {
                return Err(SpecError::Invalid(format!(
                    "joining the host's {other} namespace {path} is not possible in a VM"
                )))
            }
        }
    }
    *nss = kept;
    Ok(pod_pidns)
}

/// Rewrites mount `i` for the guest: a host bind becomes a bind of the container's share
/// directory (the host side to mount there is returned), the pod's `/dev/shm` the guest's
/// pod tmpfs; other mounts stay as they are.
fn guest_mount(
    i: usize,
    m: &mut Value,
    guest_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Option<HostBind>, SpecError> {
    let text = |m: &Value, key: &str| m.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let options: Vec<String> = m
        .get("options")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let is_bind = text(m, "type") == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
    if !is_bind {
        return Ok(None);
    }
    let (dest, source) = (text(m, "destination"), text(m, "source"));
    if !Path::new(&source).is_absolute() {
        return Err(SpecError::Invalid(format!(
            "mount {dest}: bind source {source:?} is not an absolute path"
        )));
    }
    if dest == "/dev/shm" {
        // The pod's (CRI's sandbox shm dir on the host): the agent's pod tmpfs.
        *m = json!({"destination": "/dev/shm", "type": "bind", "source": POD_SHM_DIR,
            "options": ["rbind", "nosuid", "noexec", "nodev"]});
        notes.push(format!("/dev/shm from {source}: the pod's, in the guest"));
        return Ok(None);
    }
    let base = Path::new(&source)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let share_name = format!("{i}-{base}");
    m["source"] = json!(guest_dir.join("mounts").join(&share_name));
    Ok(Some(HostBind {
        source: PathBuf::from(&source),
        share_name,
        readonly: options.iter().any(|o| o == "ro"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri_spec() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "annotations": {CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod9"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind",
                 "source": "/var/lib/containerd/sandboxes/pod9/hosts", "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind",
                 "source": "/run/containerd/sandboxes/pod9/shm", "options": ["rbind"]}
            ],
            "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/42/ns/pid"},
                {"type": "network", "path": "/proc/42/ns/net"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "mount"}
            ]}
        })
    }

    /// A lone container's new namespaces (ctr's default spec), plus `extra`.
    fn lone_namespaces(extra: &[Value]) -> Value {
        let mut nss: Vec<Value> = ["pid", "ipc", "uts", "mount", "network"]
            .iter()
            .map(|t| json!({"type": t}))
            .collect();
        nss.extend_from_slice(extra);
        Value::Array(nss)
    }

    #[test]
    fn netns_paths() {
        assert_eq!(
            netns_path(&cri_spec()),
            Some(PathBuf::from("/proc/42/ns/net"))
        );
        let fresh = json!({"linux": {"namespaces": [{"type": "network"}, {"type": "pid"}]}});
        assert_eq!(netns_path(&fresh), None);
        assert_eq!(netns_path(&json!({})), None);
    }

    #[test]
    fn cri_container_in_a_pod() {
        let s = cri_spec();
        assert_eq!(pod_of(&s, "c1"), "pod9");
        let g = translate(&s, "c1", None).unwrap();
        assert!(g.pod_pidns);
        assert_eq!(
            g.spec["root"],
            json!({"path": "/run/moat/shares/pod/c1/rootfs", "readonly": true})
        );
        assert!(g.spec.get("hooks").is_none());
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([{"type": "network", "path": POD_NETNS_PATH}, {"type": "mount"}])
        );
        assert_eq!(
            g.binds,
            vec![HostBind {
                source: "/var/lib/containerd/sandboxes/pod9/hosts".into(),
                share_name: "1-hosts".into(),
                readonly: true
            }]
        );
        assert_eq!(
            g.spec["mounts"][1]["source"],
            "/run/moat/shares/pod/c1/mounts/1-hosts"
        );
        assert_eq!(g.spec["mounts"][2]["source"], POD_SHM_DIR);
        assert_eq!(g.spec["process"], s["process"]);
    }

    #[test]
    fn app_container_shares_the_sandbox_ipc_uts_and_the_pod_shm() {
        let g = translate(&cri_spec(), "c1", Some(7)).unwrap();
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([
                {"type": "network", "path": POD_NETNS_PATH},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "mount"}
            ])
        );
        assert_eq!(g.spec["mounts"][2]["type"], "bind");
        assert_eq!(g.spec["mounts"][2]["source"], POD_SHM_DIR);
        assert!(g.binds.iter().all(|b| !b.source.ends_with("shm")));
    }

    #[test]
    fn lone_container_keeps_new_namespaces() {
        let s = json!({"root": {"path": "/abs/rootfs"},
            "linux": {"namespaces": lone_namespaces(&[])}});
        assert_eq!(pod_of(&s, "c1"), "c1");
        let g = translate(&s, "c1", None).unwrap();
        assert!(!g.pod_pidns);
        assert_eq!(g.spec["linux"]["namespaces"], s["linux"]["namespaces"]);
        assert_eq!(root_path(&s).unwrap(), Path::new("/abs/rootfs"));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(translate(&json!([1]), "c", None).is_err());
        let user = json!({"type": "user", "path": "/proc/1/ns/user"});
        let s = json!({"linux": {"namespaces": lone_namespaces(&[user])}});
        let e = translate(&s, "c", None).unwrap_err().to_string();
        assert!(e.contains("user") && e.contains("not possible"), "{e}");
        let s = json!({"mounts": [{"destination": "/x", "type": "bind", "source": "rel"}],
            "linux": {"namespaces": lone_namespaces(&[])}});
        assert!(translate(&s, "c", None)
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        assert!(root_path(&json!({})).is_err());
    }

    #[test]
    fn a_hooked_new_netns_is_the_vms() {
        let mut s = json!({"linux": {"namespaces": lone_namespaces(&[])}});
        join_vm_netns(&mut s);
        let kinds: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(s["linux"]["namespaces"][4]["path"], POD_NETNS_PATH);
    }

    #[test]
    fn an_unset_oom_score_adj_is_inherited() {
        let mut s = json!({"process": {"args": ["sh"]}});
        fill_oom_score_adj(&mut s, 1);
        assert_eq!(s["process"]["oomScoreAdj"], 1);
        let mut s = json!({"process": {"oomScoreAdj": -5}});
        fill_oom_score_adj(&mut s, 1);
        assert_eq!(s["process"]["oomScoreAdj"], -5);
    }

    #[test]
    fn host_namespaces_are_refused_by_name() {
        for (left_out, named) in [
            ("network", "CRI hostNetwork"),
            ("pid", "CRI hostPID"),
            ("ipc", "CRI hostIPC"),
            ("uts", "--uts=host"),
            ("mount", "host mount namespace"),
        ] {
            let mut s = cri_spec();
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|ns| ns["type"] != left_out);
            let e = translate(&s, "c1", None).unwrap_err().to_string();
            assert!(e.contains(named) && e.contains("VM"), "{left_out}: {e}");
        }
        let e = translate(&json!({"root": {"path": "r"}}), "c1", None).unwrap_err();
        assert!(e.to_string().contains("hostNetwork"), "{e}");
    }
}
