//! A blocking CRI (Kubernetes Container Runtime Interface, `runtime.v1`) client for tests: what
//! the kubelet says to containerd's CRI plugin, over containerd's grpc socket
//! ([`crate::containerd::Containerd::address`]), with [`k8s_cri`]'s tonic client on a tokio
//! runtime of its own. Every call has a deadline; errors name the call.
//!
//! [`pod_config`] and [`container_config`] build requests the way the kubelet does for a plain
//! pod (labels, annotations, cgroup parent, namespace options, seccomp `Unconfined`, the
//! default masked and read-only paths), so the runtime under test sees what it would see under
//! Kubernetes; [`KubeletCgroup`] makes the pod cgroup the kubelet would (a pod's
//! `cgroup_parent`). [`leftovers`] lists what CRI itself may leave on the host after
//! `RemovePodSandbox` (network namespaces, sandbox directories).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use k8s_cri::v1 as api;

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{sys, Containerd};

/// How long a CRI call may take unless [`CriClient::with_timeout`] says otherwise (a pod boots
/// a VM in a TCG test host: tens of seconds).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(240);
/// The CRI plugin's directory under containerd's `state` and `root` directories.
const CRI_PLUGIN_DIR: &str = "io.containerd.grpc.v1.cri";

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The client's tokio runtime could not be built.
    #[error("starting the CRI client's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// containerd's socket did not take the connection.
    #[error("connecting to CRI on {socket}: {source}")]
    Connect {
        /// containerd's grpc socket.
        socket: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The call returned a gRPC error.
    #[error("CRI {call} failed: {code:?}: {message}")]
    Rpc {
        /// The CRI method.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The call, or a wait for a state, took longer than allowed.
    #[error("CRI {call} did not finish within {timeout:?}")]
    Timeout {
        /// The CRI method (or what was waited for).
        call: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The answer lacked something CRI promises.
    #[error("CRI {call}: the answer has no {what}")]
    Missing {
        /// The CRI method.
        call: &'static str,
        /// What was missing.
        what: &'static str,
    },
}

/// A connected CRI client (runtime and image services); every call blocks.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// Connects to the CRI plugin on containerd's grpc unix socket `socket`.
    pub fn connect(socket: &Path) -> Result<Self, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_path_buf();
        let connect_err = |source| CriError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        // The URI is ignored: the connector dials the unix socket.
        let endpoint =
            Endpoint::from_static("http://[::]:0").connect_timeout(Duration::from_secs(10));
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    tokio::net::UnixStream::connect(path.clone())
                })),
            )
            .map_err(connect_err)?;
        Ok(Self {
            rt,
            channel: channel.clone(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Connects to `containerd`'s CRI plugin.
    pub fn for_containerd(containerd: &Containerd) -> Result<Self, CriError> {
        Self::connect(containerd.address())
    }

    /// Sets the deadline of each call (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs one call to its end or the deadline.
    fn call<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        let timeout = self.timeout;
        // The timer must be made inside the runtime.
        match self
            .rt
            .block_on(async move { tokio::time::timeout(timeout, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(CriError::Rpc {
                call,
                code: s.code(),
                message: s.message().to_owned(),
            }),
            Err(_) => Err(CriError::Timeout {
                call: call.into(),
                timeout,
            }),
        }
    }

    /// `Version`: the runtime's name and version and the CRI version.
    pub fn version(&self) -> Result<api::VersionResponse, CriError> {
        let mut c = self.runtime.clone();
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        self.call("Version", async move { c.version(req).await })
    }

    /// `ImageStatus` of `image`: `None` if containerd does not have it.
    pub fn image_status(&self, image: &str) -> Result<Option<api::Image>, CriError> {
        let mut c = self.images.clone();
        let req = api::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        Ok(self
            .call("ImageStatus", async move { c.image_status(req).await })?
            .image)
    }

    /// `RunPodSandbox` with runtime handler `handler`; returns the pod's id.
    pub fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call("RunPodSandbox", async move { c.run_pod_sandbox(req).await })?
            .pod_sandbox_id)
    }

    /// `PodSandboxStatus` of pod `id`.
    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus, CriError> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", async move {
            c.pod_sandbox_status(req).await
        })?
        .status
        .ok_or(CriError::Missing {
            call: "PodSandboxStatus",
            what: "status",
        })
    }

    /// `StopPodSandbox` of pod `id` (stops its containers too).
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(
            "StopPodSandbox",
            async move { c.stop_pod_sandbox(req).await },
        )
        .map(drop)
    }

    /// `RemovePodSandbox` of pod `id` (removes its containers too).
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `CreateContainer` in pod `pod_id` (whose config was `pod`); returns the container's id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        pod: &api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        };
        Ok(self
            .call(
                "CreateContainer",
                async move { c.create_container(req).await },
            )?
            .container_id)
    }

    /// `StartContainer` of container `id`.
    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.call(
            "StartContainer",
            async move { c.start_container(req).await },
        )
        .map(drop)
    }

    /// `StopContainer` of container `id`, SIGKILL after `grace_secs`.
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout: grace_secs,
        };
        self.call("StopContainer", async move { c.stop_container(req).await })
            .map(drop)
    }

    /// `RemoveContainer` of container `id` (which must not be running).
    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(
            "RemoveContainer",
            async move { c.remove_container(req).await },
        )
        .map(drop)
    }

    /// `UpdateContainerResources` of container `id` to `resources`.
    pub fn update_container_resources(
        &self,
        id: &str,
        resources: &api::LinuxContainerResources,
    ) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources.clone()),
            ..Default::default()
        };
        self.call("UpdateContainerResources", async move {
            c.update_container_resources(req).await
        })
        .map(drop)
    }

    /// `ExecSync`: runs `cmd` in container `id`, `timeout` at most (whole seconds, at least 1).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse, CriError> {
        let mut c = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|a| a.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        self.call("ExecSync", async move { c.exec_sync(req).await })
    }

    /// `PortForward` to `ports` of pod `pod_sandbox_id` (in its network namespace): the URL of
    /// the streaming server, good for one connection ([`super::portforward`] speaks it).
    pub fn port_forward(&self, pod_sandbox_id: &str, ports: &[i32]) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let req = api::PortForwardRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            port: ports.to_vec(),
        };
        let url = self
            .call("PortForward", async move { c.port_forward(req).await })?
            .url;
        match url.is_empty() {
            true => Err(CriError::Missing {
                call: "PortForward",
                what: "url",
            }),
            false => Ok(url),
        }
    }

    /// `ContainerStatus` of container `id`.
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus, CriError> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call(
            "ContainerStatus",
            async move { c.container_status(req).await },
        )?
        .status
        .ok_or(CriError::Missing {
            call: "ContainerStatus",
            what: "status",
        })
    }

    /// `ContainerStats` of container `id`.
    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats, CriError> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call(
            "ContainerStats",
            async move { c.container_stats(req).await },
        )?
        .stats
        .ok_or(CriError::Missing {
            call: "ContainerStats",
            what: "stats",
        })
    }

    /// `ListContainers`, of pod `pod_id` only if given.
    pub fn list_containers(&self, pod_id: Option<&str>) -> Result<Vec<api::Container>, CriError> {
        let mut c = self.runtime.clone();
        let req = api::ListContainersRequest {
            filter: pod_id.map(|p| api::ContainerFilter {
                pod_sandbox_id: p.into(),
                ..Default::default()
            }),
        };
        Ok(self
            .call(
                "ListContainers",
                async move { c.list_containers(req).await },
            )?
            .containers)
    }

    /// `ListPodSandbox`: every pod CRI knows.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, CriError> {
        let mut c = self.runtime.clone();
        let req = api::ListPodSandboxRequest { filter: None };
        Ok(self
            .call(
                "ListPodSandbox",
                async move { c.list_pod_sandbox(req).await },
            )?
            .items)
    }

    /// Polls `ContainerStatus` of `id` until its state is `state`; returns that status.
    pub fn wait_container_state(
        &self,
        id: &str,
        state: api::ContainerState,
        timeout: Duration,
    ) -> Result<api::ContainerStatus, CriError> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(id)?;
            if st.state == state as i32 {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(CriError::Timeout {
                    call: format!("wait for container {id} to be {state:?} (is {})", st.state),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// An image reference for a request.
pub fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.into(),
        annotations: HashMap::new(),
    }
}

/// Who a pod is: its Kubernetes name, namespace and uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
}

impl PodIdentity {
    /// The labels the kubelet puts on a pod's sandbox and containers.
    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            ("io.kubernetes.pod.name".into(), self.name.clone()),
            ("io.kubernetes.pod.namespace".into(), self.namespace.clone()),
            ("io.kubernetes.pod.uid".into(), self.uid.clone()),
        ])
    }
}

/// The kubelet's namespace options for a plain pod: pod network and IPC, a PID namespace per
/// container.
pub fn pod_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// A seccomp profile of type `ty` (the kubelet's default is `Unconfined`).
pub fn seccomp(ty: api::security_profile::ProfileType) -> api::SecurityProfile {
    api::SecurityProfile {
        profile_type: ty as i32,
        localhost_ref: String::new(),
    }
}

/// What the kubelet sends for a plain pod (no `securityContext`, DNS policy `ClusterFirst`
/// with cluster DNS 10.96.0.10, best-effort QoS under the cgroupfs driver): metadata,
/// labels, `kubernetes.io/config.*` annotations, `hostname`, `log_directory`, DNS config, and
/// a Linux config with the pod's cgroup parent, pod namespaces and seccomp `Unconfined`.
pub fn pod_config(
    pod: &PodIdentity,
    hostname: &str,
    log_directory: &Path,
) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        hostname: hostname.into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        dns_config: Some(api::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                format!("{}.svc.cluster.local", pod.namespace),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: Vec::new(),
        labels: pod.labels(),
        annotations: HashMap::from([
            ("kubernetes.io/config.source".into(), "api".into()),
            (
                "kubernetes.io/config.seen".into(),
                "2024-01-01T00:00:00.000000000Z".into(),
            ),
        ]),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{}", pod.uid),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                seccomp: Some(seccomp(api::security_profile::ProfileType::Unconfined)),
                ..Default::default()
            }),
            sysctls: HashMap::new(),
        }),
    }
}

/// The paths the kubelet masks in every unprivileged container (`/proc/...`, `/sys/firmware`).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// The paths the kubelet makes read-only in every unprivileged container.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the kubelet sends to create container `name` of `pod` from `image` running
/// `command` (the pod spec's `command`, empty for the image's entrypoint) with `args` and
/// environment `env`: metadata, image, labels, the `io.kubernetes.container.*` annotations,
/// `log_path` `<name>/0.log`, best-effort resources (cpu shares 2, OOM score adj 1000), pod
/// namespaces, the default masked and read-only paths and seccomp `Unconfined`. Add mounts
/// (the kubelet's `/dev/termination-log`, volumes...) to the result as needed.
pub fn container_config(
    pod: &PodIdentity,
    name: &str,
    image: &str,
    command: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> api::ContainerConfig {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut labels = pod.labels();
    labels.insert("io.kubernetes.container.name".into(), name.into());
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: strings(command),
        args: strings(args),
        working_dir: String::new(),
        envs: env
            .iter()
            .map(|(k, v)| api::KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        labels,
        annotations: HashMap::from([
            ("io.kubernetes.container.hash".into(), "1a2b3c4d".into()),
            ("io.kubernetes.container.restartCount".into(), "0".into()),
            (
                "io.kubernetes.container.terminationMessagePath".into(),
                "/dev/termination-log".into(),
            ),
            (
                "io.kubernetes.container.terminationMessagePolicy".into(),
                "File".into(),
            ),
            (
                "io.kubernetes.pod.terminationGracePeriod".into(),
                "30".into(),
            ),
        ]),
        log_path: format!("{name}/0.log"),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                masked_paths: strings(DEFAULT_MASKED_PATHS),
                readonly_paths: strings(DEFAULT_READONLY_PATHS),
                seccomp: Some(seccomp(api::security_profile::ProfileType::Unconfined)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A bind mount of host path `host` at `container` in a container (as the kubelet sends its
/// `/dev/termination-log` and volumes).
pub fn bind_mount(host: &Path, container: &str, readonly: bool) -> api::Mount {
    api::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        selinux_relabel: false,
        propagation: api::MountPropagation::PropagationPrivate as i32,
    }
}

/// Where cgroup v2 is mounted (the test host mounts it there).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The controllers a kubelet pod cgroup has.
const POD_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// A pod cgroup as the kubelet makes one (cgroupfs driver, cgroup v2): `/sys/fs/cgroup<path>`
/// with memory, cpu and pids enabled on the way down and a `memory.max`; a pod's
/// `cgroup_parent`. Dropping it removes the directories it made (its pods' must be gone).
#[derive(Debug)]
pub struct KubeletCgroup {
    path: String,
    dir: PathBuf,
    made: Vec<PathBuf>,
}

impl KubeletCgroup {
    /// Makes cgroup `path` (`/kubepods/burstable/pod<uid>`) with `memory.max` = `memory_max`
    /// bytes; `Ok(None)` when `/sys/fs/cgroup` is not cgroup v2 (a v1 host running the tests on
    /// hardware KVM).
    pub fn create(path: &str, memory_max: u64) -> Result<Option<KubeletCgroup>, String> {
        let root = Path::new(CGROUP_ROOT);
        if !root.join("cgroup.controllers").is_file() {
            return Ok(None);
        }
        let mut cg = KubeletCgroup {
            path: path.into(),
            dir: root.to_path_buf(),
            made: Vec::new(),
        };
        for c in path.split('/').filter(|c| !c.is_empty()) {
            enable_controllers(&cg.dir)?;
            cg.dir.push(c);
            match std::fs::create_dir(&cg.dir) {
                Ok(()) => {
                    super::moat_stack::test_made_cgroup(&cg.dir);
                    cg.made.push(cg.dir.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", cg.dir.display())),
            }
        }
        let max = cg.dir.join("memory.max");
        std::fs::write(&max, memory_max.to_string())
            .map_err(|e| format!("writing {}: {e}", max.display()))?;
        Ok(Some(cg))
    }

    /// The cgroup's path (CRI's `cgroup_parent`).
    pub fn cgroup_parent(&self) -> &str {
        &self.path
    }

    /// Its `memory.current`, bytes: what it and every cgroup under it use.
    pub fn memory_current(&self) -> u64 {
        let file = self.dir.join("memory.current");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}: {text:?}", file.display()))
    }

    /// The cgroups directly under it (a pod's sandbox cgroup while the pod runs).
    pub fn children(&self) -> Vec<String> {
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        entries
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for KubeletCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // The kernel may still count a pod's dying tasks for a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = std::fs::remove_dir(dir) {
                if Instant::now() >= deadline {
                    eprintln!("KubeletCgroup: removing {}: {e}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Enables [`POD_CONTROLLERS`] for the children of cgroup `dir`, one by one (memory must be).
fn enable_controllers(dir: &Path) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    for c in POD_CONTROLLERS {
        if let Err(e) = std::fs::write(&file, format!("+{c}")) {
            if c == "memory" {
                return Err(format!("enabling memory in {}: {e}", file.display()));
            }
            eprintln!("KubeletCgroup: enabling {c} in {}: {e}", file.display());
        }
    }
    Ok(())
}

/// What `containerd`'s CRI plugin left on the host for pods: network namespaces (files or
/// mounts under its `netns` directory, with `netns_mounts_under_state_dir`) and sandbox
/// directories under its state and root directories. Empty when nothing.
pub fn leftovers(containerd: &Containerd) -> Vec<String> {
    let state = containerd.dir().join("state").join(CRI_PLUGIN_DIR);
    let root = containerd.dir().join("root").join(CRI_PLUGIN_DIR);
    let mut left: Vec<String> = sys::mounts_under(&state.join("netns"))
        .into_iter()
        .map(|m| format!("netns mount {}", m.display()))
        .collect();
    for dir in [
        state.join("netns"),
        state.join("sandboxes"),
        root.join("sandboxes"),
    ] {
        let entries = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        left.extend(entries.map(|e| format!("{}", e.path().display())));
    }
    left
}

mod sized;

#[cfg(test)]
mod tests;
