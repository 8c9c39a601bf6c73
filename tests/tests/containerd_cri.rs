//! The Kubernetes path end to end: containerd 1.6's CRI plugin runs a pod with runtime handler
//! `moat` (`io.containerd.moat.v2`), driven over CRI the way the kubelet drives it
//! (`moat_tests::containerd::cri`): RunPodSandbox with the locally built pause image, two busybox
//! containers in the one VM of the pod, ExecSync, ContainerStatus/Stats, ListContainers,
//! UpdateContainerResources, a container exiting on its own, StopContainer, RemoveContainer,
//! the pod's CNI address reaching a container in the VM, PortForward to a container's port
//! through containerd's streaming server, pod accounting (the pod's moat-vmm
//! in its sandbox cgroup under a kubelet-style pod cgroup, charged there, with the pod's
//! `oom_score_adj`), `moat ps` listing the pod with its containers, StopPodSandbox and
//! RemovePodSandbox; then nothing of moat or of the pod may be left, its cgroup included, and
//! `moat ps` no longer lists it. A pod whose `moat.vm.memory_mib` annotation exceeds its
//! pod cgroup's `memory.max` is refused. Runs in the test host (nested KVM) unless this
//! machine has hardware KVM.

use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_runtime::ops::status::PodStatus;
use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::cri::{
    self, api, api::ContainerState, api::PodSandboxState, CriClient, KubeletCgroup, PodIdentity,
};
use moat_tests::containerd::moat_stack::{
    self, moat_processes, vm_processes, with_stack_tuned, Stack,
};
use moat_tests::containerd::oci_image::DEFAULT_PAUSE_IMAGE;
use moat_tests::containerd::portforward;
use moat_tests::containerd::ContainerdOptions;
use moat_tests::ops::moat;

/// How many fresh test hosts the flow may use when the guest crashes (see
/// `moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 4;
/// The CRI runtime handler the harness's containerd config defines for moat.
const HANDLER: &str = "moat";
/// A second moat handler this test adds: pod annotations `moat.*` passed to the shim, whose
/// config enables the `moat.vm.*` sizing annotations.
const SIZED_HANDLER: &str = "moat-sized";
/// The pod cgroup's `memory.max` (room for the 256 MiB VM and the VMM).
const POD_MEMORY_MAX: u64 = 1 << 30;
/// The refused pod's `memory.max`, and what its annotation asks for, MiB.
const SMALL_POD_MIB: u64 = 512;
const ASKED_MIB: u64 = 1024;
/// The memory limit of the pod [`check_sandbox_sizing`] runs, MiB.
const SIZED_POD_MIB: u64 = 256;
/// The pod's hostname.
const HOSTNAME: &str = "moat-cri-pod";
/// Container `alpha`: prints a line, then sleeps forever (ignoring SIGTERM as PID 1).
const ALPHA: &str = "echo alpha up as $WHO; while :; do sleep 1; done";
/// Container `beta`: prints a line, waits for `/tmp/stop`, says bye on stderr and exits 7 (2 s
/// later, as its exit kills whatever runs in its PID namespace: the `touch` exec'd to stop it).
const BETA: &str = "echo beta up as $WHO; while [ ! -e /tmp/stop ]; do sleep 1; done; \
    sleep 2; echo bye >&2; exit 7";
/// Where alpha gets a kubelet-style read-only volume.
const SECRETS: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long an ExecSync may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long state changes (an exit, a log line, teardown) may take to show.
const SETTLE: Duration = Duration::from_secs(60);

/// One pod, two containers, the whole CRI lifecycle.
#[test]
fn cri_pod_lifecycle() {
    lifecycle("cri_pod_lifecycle", None);
}

/// The same on containerd 1.7 (Debian 13's, `tests/scripts/fetch-trixie.sh`).
#[test]
fn cri_pod_lifecycle_on_containerd_1_7() {
    lifecycle(
        "cri_pod_lifecycle_on_containerd_1_7",
        Some(TRIXIE_CONTAINERD),
    );
}

/// Where containerd 1.7 and its ctr are in the trixie prefix.
const TRIXIE_CONTAINERD: &str = "usr/bin";

/// The CRI flow on the host's containerd, or on the one in `trixie` under the trixie prefix.
fn lifecycle(name: &str, trixie: Option<&str>) {
    moat_tests::on_kvm_retrying(name, ATTEMPTS, || {
        let scratch = tempfile::TempDir::new().unwrap();
        let containerd_dir = trixie.map(|dir| {
            let prefix = moat_tests::artifacts::trixie_prefix().unwrap_or_else(|e| panic!("{e}"));
            prefix.join(dir)
        });
        with_stack_tuned(
            |o| {
                o.sandbox_image = DEFAULT_PAUSE_IMAGE.into();
                add_sized_handler(o, scratch.path());
                o.extra_path.splice(0..0, containerd_dir.clone());
            },
            |s| {
                let version = s.ctr_ok(&["version"]).stdout_str();
                println!("{name}: {}", version.replace('\n', " "));
                let pod = Pod::run(s);
                pod.check_one_vm();
                pod.check_moat_ps();
                pod.check_accounting();
                pod.check_network();
                pod.check_port_forward();
                pod.check_pod_files();
                pod.check_exec_stats_update();
                pod.check_own_exit();
                pod.teardown();
                check_annotation_over_the_limit(s);
                check_host_namespaces_refused(s);
                if trixie.is_some() {
                    check_sandbox_sizing(s);
                }
            },
        )
    });
}

/// Adds [`SIZED_HANDLER`] to containerd's config: the built shim, `pod_annotations =
/// ["moat.*"]`, and a shim config (written into `dir`) with the sizing annotations enabled.
fn add_sized_handler(o: &mut ContainerdOptions, dir: &Path) {
    let mut cfg = moat_stack::config().unwrap_or_else(|e| panic!("{e}"));
    cfg.vm.enable_annotations = true;
    let config = dir.join("moat-sized.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let shim = o
        .moat_runtime_path
        .clone()
        .expect("the stack names the shim");
    // A TOML basic string (JSON's escapes are TOML's).
    let q = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
    let table =
        format!(r#"plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{SIZED_HANDLER}"#);
    o.extra_toml.push_str(&format!(
        "[{table}]\n  runtime_type = \"{RUNTIME_ID}\"\n  runtime_path = {}\n  \
         pod_annotations = [\"moat.*\"]\n[{table}.options]\n  ConfigPath = {}\n",
        q(&shim),
        q(&config),
    ));
}

/// A kubelet-style pod cgroup `/kubepods/burstable/pod<uid>` with `memory.max` = `max` bytes,
/// `None` on a cgroup v1 host (then the accounting checks are skipped, said so).
fn pod_cgroup(who: &PodIdentity, max: u64) -> Option<KubeletCgroup> {
    let path = format!("/kubepods/burstable/pod{}", who.uid);
    let cg = KubeletCgroup::create(&path, max).unwrap_or_else(|e| panic!("{e}"));
    if cg.is_none() {
        println!("/sys/fs/cgroup is not cgroup v2: pod accounting checks skipped");
    }
    cg
}

/// containerd 1.7 passes the pod's summed limits (`linux.resources` of RunPodSandbox, as the
/// kubelet sends them) to the runtime as `io.kubernetes.cri.sandbox-*` annotations: the VM is
/// the configured base plus those limits (`runtime/src/host/sizing.rs`).
fn check_sandbox_sizing(s: &Stack) {
    let who = PodIdentity {
        name: "moat-cri-sized".into(),
        namespace: "default".into(),
        uid: format!("uid-{}", moat_tests::unique_suffix()),
    };
    let base = moat_runtime::config::Config::load(&s.config)
        .unwrap_or_else(|e| panic!("{e}"))
        .vm;
    let c = CriClient::for_containerd(&s.containerd).unwrap_or_else(|e| panic!("{e}"));
    let pod_cfg = cri::pod_config(&who, "sized", &s.dir().join("sized-logs"));
    let limits = api::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        cpu_shares: 1024,
        memory_limit_in_bytes: (SIZED_POD_MIB << 20) as i64,
        ..Default::default()
    };
    let id = c
        .run_pod_sandbox_with_resources(&pod_cfg, HANDLER, &limits)
        .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()));
    let rows = moat_ps(s);
    let row = rows.iter().find(|r| r.pod_id == id);
    let status = row.and_then(|r| r.status.as_ref());
    let status = status.unwrap_or_else(|| panic!("moat ps has no status of {id}: {rows:?}"));
    println!(
        "sized pod: {} vCPUs, {} MiB (base {} vCPUs, {} MiB; limits 1 CPU, {SIZED_POD_MIB} MiB)",
        status.vcpus, status.memory_mib, base.vcpus, base.memory_mib
    );
    assert_eq!(status.vcpus, base.vcpus + 1, "{status:?}");
    assert_eq!(
        status.memory_mib,
        base.memory_mib + SIZED_POD_MIB,
        "{status:?}"
    );
    c.stop_pod_sandbox(&id).unwrap_or_else(|e| panic!("{e}"));
    c.remove_pod_sandbox(&id).unwrap_or_else(|e| panic!("{e}"));
    s.assert_no_leftovers();
}

/// A pod asking (`moat.vm.memory_mib`) for more memory than its pod cgroup's `memory.max` is
/// refused with the annotation, its value and the limit named; nothing is left of it.
fn check_annotation_over_the_limit(s: &Stack) {
    let who = PodIdentity {
        name: "moat-cri-big".into(),
        namespace: "default".into(),
        uid: format!("uid-{}", moat_tests::unique_suffix()),
    };
    let Some(cg) = pod_cgroup(&who, SMALL_POD_MIB << 20) else {
        return;
    };
    let c = CriClient::for_containerd(&s.containerd).unwrap_or_else(|e| panic!("{e}"));
    let mut pod_cfg = cri::pod_config(&who, "big", &s.dir().join("big-logs"));
    pod_cfg.linux.as_mut().unwrap().cgroup_parent = cg.cgroup_parent().into();
    let asked = ASKED_MIB.to_string();
    pod_cfg
        .annotations
        .insert("moat.vm.memory_mib".into(), asked);
    let e = c
        .run_pod_sandbox(&pod_cfg, SIZED_HANDLER)
        .expect_err("a pod asking for more than its memory limit ran");
    let msg = e.to_string();
    let want = format!("moat.vm.memory_mib={ASKED_MIB}: exceeds the pod's limit of {SMALL_POD_MIB} MiB (pod cgroup {})", cg.cgroup_parent());
    assert!(msg.contains(&want), "{msg}");
    println!("refused as it should be: {msg}");
    s.assert_no_leftovers();
    assert_eq!(
        cg.children(),
        Vec::<String>::new(),
        "the refused pod left a cgroup"
    );
    settle("CRI to drop the refused pod", || {
        let left = cri::leftovers(&s.containerd);
        left.is_empty().then_some(()).ok_or(left)
    });
}

/// Pods asking for the host's network, PID or IPC namespace, which a VM cannot share, are
/// refused at once by the shim with the request named (not a boot timeout); nothing is left.
fn check_host_namespaces_refused(s: &Stack) {
    let c = CriClient::for_containerd(&s.containerd).unwrap_or_else(|e| panic!("{e}"));
    let node = api::NamespaceMode::Node as i32;
    type Mode = fn(&mut api::NamespaceOption, i32);
    let cases: [(&str, Mode); 3] = [
        ("hostNetwork", |o, m| o.network = m),
        ("hostPID", |o, m| o.pid = m),
        ("hostIPC", |o, m| o.ipc = m),
    ];
    for (asked, set) in cases {
        let who = PodIdentity {
            name: format!("moat-cri-{}", asked.to_lowercase()),
            namespace: "default".into(),
            uid: format!("uid-{}", moat_tests::unique_suffix()),
        };
        let mut pod_cfg = cri::pod_config(&who, "host-ns", &s.dir().join("host-ns-logs"));
        let linux = pod_cfg.linux.as_mut().unwrap();
        let sc = linux.security_context.as_mut().unwrap();
        set(sc.namespace_options.as_mut().unwrap(), node);
        let started = Instant::now();
        let e = c
            .run_pod_sandbox(&pod_cfg, HANDLER)
            .expect_err("a pod sharing a host namespace ran in a VM");
        let msg = e.to_string();
        assert!(msg.contains(&format!("CRI {asked}")), "{asked}: {msg}");
        println!(
            "{asked} refused after {:.1} s: {msg}",
            started.elapsed().as_secs_f64()
        );
    }
    s.assert_no_leftovers();
    settle("CRI to drop the refused pods", || {
        let left = cri::leftovers(&s.containerd);
        left.is_empty().then_some(()).ok_or(left)
    });
}

/// A running pod of the flow: alpha and beta started.
struct Pod<'a> {
    s: &'a Stack,
    c: CriClient,
    id: String,
    /// alpha's container id.
    a: String,
    /// beta's container id.
    b: String,
    /// The pod's `log_directory`.
    logs: PathBuf,
    /// The host file bound at alpha's `/dev/termination-log`.
    termination_log: PathBuf,
    /// The pod's cgroup (its `cgroup_parent`), `None` on a cgroup v1 host.
    cgroup: Option<KubeletCgroup>,
    /// Its `memory.current` before the pod ran.
    memory_before: u64,
}

impl<'a> Pod<'a> {
    /// Imports the pause image, runs the pod and starts alpha and beta.
    fn run(s: &'a Stack) -> Self {
        let c = s.cri_client();
        let v = c.version().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.runtime_name, "containerd", "{v:?}");
        for image in [&s.image, DEFAULT_PAUSE_IMAGE] {
            let found = c.image_status(image).unwrap_or_else(|e| panic!("{e}"));
            assert!(found.is_some(), "CRI does not see the imported {image}");
        }

        let who = PodIdentity {
            name: "moat-cri".into(),
            namespace: "default".into(),
            uid: format!("uid-{}", moat_tests::unique_suffix()),
        };
        let logs = s.dir().join("pod-logs");
        for name in ["alpha", "beta"] {
            // The kubelet makes each container's log directory.
            std::fs::create_dir_all(logs.join(name)).unwrap();
        }
        let mut pod_cfg = cri::pod_config(&who, HOSTNAME, &logs);
        let cgroup = pod_cgroup(&who, POD_MEMORY_MAX);
        if let Some(cg) = &cgroup {
            pod_cfg.linux.as_mut().unwrap().cgroup_parent = cg.cgroup_parent().into();
        }
        let memory_before = cgroup.as_ref().map_or(0, KubeletCgroup::memory_current);
        let t = Instant::now();
        let id = c
            .run_pod_sandbox(&pod_cfg, HANDLER)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()));
        println!("RunPodSandbox (VM boot): {:?}", t.elapsed());
        let st = c.pod_sandbox_status(&id).unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{st:?}");
        assert_eq!(st.runtime_handler, HANDLER);
        let ip = st.network.as_ref().map(|n| n.ip.as_str()).unwrap_or("");
        assert!(ip.starts_with("10.88.77."), "no CNI address: {st:?}");

        // Different command lines, environments, mounts and seccomp profiles.
        let host_files = s.dir().join("host-files");
        let termination_log = host_files.join("termination-log");
        let secrets = host_files.join("serviceaccount");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(&termination_log, b"").unwrap();
        std::fs::write(secrets.join("token"), b"t0ken").unwrap();
        let env = |who| [("WHO", who)];
        let mut alpha = cri::container_config(
            &who,
            "alpha",
            &s.image,
            &["sh", "-c"],
            &[ALPHA],
            &env("alpha"),
        );
        alpha.mounts = vec![
            cri::bind_mount(&termination_log, "/dev/termination-log", false),
            cri::bind_mount(&secrets, SECRETS, true),
        ];
        // beta keeps the image's (empty) entrypoint and replaces its Cmd; RuntimeDefault seccomp.
        let args = ["sh", "-c", BETA];
        let mut beta = cri::container_config(&who, "beta", &s.image, &[], &args, &env("beta"));
        let sc = beta
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut());
        sc.unwrap().seccomp = Some(cri::seccomp(
            api::security_profile::ProfileType::RuntimeDefault,
        ));
        let mut ids = Vec::new();
        for cfg in [&alpha, &beta] {
            let t = Instant::now();
            let cid = c
                .create_container(&id, cfg, &pod_cfg)
                .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()));
            let created = t.elapsed();
            c.start_container(&cid)
                .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()));
            let name = &cfg.metadata.as_ref().unwrap().name;
            let started = t.elapsed() - created;
            println!("{name}: CreateContainer {created:?}, StartContainer {started:?}");
            let st = c.container_status(&cid).unwrap();
            assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
            ids.push(cid);
        }
        let b = ids.pop().unwrap();
        let a = ids.pop().unwrap();
        Pod {
            s,
            c,
            id,
            a,
            b,
            logs,
            termination_log,
            cgroup,
            memory_before,
        }
    }

    /// The pod's moat-vmm pid.
    fn vmm_pid(&self) -> u32 {
        let vmms = Self::vmms();
        let ours = vmms.iter().find(|p| p.contains(&self.id));
        let pid: Option<u32> = ours.and_then(|p| p.split(':').next()?.parse().ok());
        let pid = pid.unwrap_or_else(|| panic!("no moat-vmm of pod {}: {vmms:?}", self.id));
        // The jailed VMM (the supervisor's child) runs the VM.
        moat_tests::jail::jailed_child(pid).unwrap_or(pid)
    }

    /// Pod accounting: every thread of the pod's moat-vmm runs in the pod's sandbox cgroup
    /// (CRI's `linux.cgroupsPath`: `<cgroup_parent>/<sandbox id>`), the VM's memory is charged
    /// to the pod cgroup, and the VMM has the sandbox spec's `oom_score_adj`.
    fn check_accounting(&self) {
        let Some(cg) = &self.cgroup else { return };
        let pid = self.vmm_pid();
        let want = format!("0::{}/{}", cg.cgroup_parent(), self.id);
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let mut threads = 0;
        for t in tasks.flatten() {
            let cgroup = std::fs::read_to_string(t.path().join("cgroup")).unwrap_or_default();
            assert_eq!(
                cgroup.trim(),
                want,
                "thread {:?} of moat-vmm {pid}",
                t.file_name()
            );
            threads += 1;
        }
        let grown = cg.memory_current().saturating_sub(self.memory_before);
        println!(
            "moat-vmm {pid}: {threads} threads in {want}; pod cgroup memory +{} KiB",
            grown >> 10
        );
        assert!(
            grown >= 8 << 20,
            "the pod cgroup's memory grew by only {grown} bytes"
        );
        let bundle = self
            .s
            .containerd
            .dir()
            .join("state/io.containerd.runtime.v2.task/k8s.io");
        let spec = std::fs::read(bundle.join(&self.id).join("config.json")).unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        let pod_adj = spec
            .pointer("/process/oomScoreAdj")
            .and_then(|v| v.as_i64());
        let pod_adj = pod_adj.expect("CRI sets the sandbox's oomScoreAdj");
        let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(adj.trim(), pod_adj.to_string(), "moat-vmm's oom_score_adj");
    }

    /// The pod's CNI address is the guest's: eth0 in the containers has it, and a listener in
    /// a container answers the test host at it (through CNI's bridge, the pod netns' bridge to
    /// the VM's tap, virtio-net).
    fn check_network(&self) {
        let st = self.c.pod_sandbox_status(&self.id).unwrap();
        let ip = st
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let addr = self.exec_ok(&self.b, &["sh", "-c", "ip -4 addr show eth0"]);
        assert!(addr.contains(&format!("inet {ip}/")), "pod IP {ip}: {addr}");
        let to: SocketAddr = format!("{ip}:8080").parse().unwrap();
        std::thread::scope(|sc| {
            let script = "echo pong from the pod | nc -l -p 8080";
            let server = sc.spawn(|| self.exec_ok(&self.a, &["sh", "-c", script]));
            let deadline = Instant::now() + SETTLE;
            let line = loop {
                match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    Ok(conn) => {
                        conn.set_read_timeout(Some(SETTLE)).unwrap();
                        let mut line = String::new();
                        std::io::BufReader::new(conn).read_line(&mut line).unwrap();
                        break line;
                    }
                    Err(e) if Instant::now() >= deadline => panic!("connecting to {to}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            assert_eq!(line, "pong from the pod\n");
            server.join().unwrap();
        });
        println!("pod IP {ip}: reached from the test host");
    }

    /// CRI `PortForward` (`kubectl port-forward`): containerd dials `localhost:PORT` in the
    /// pod's network namespace on the host; the shim's redirect carries it to busybox httpd in
    /// alpha, in the VM, and the page comes back through containerd's streaming server. A port
    /// nothing listens on in the guest ends at once, without a byte.
    fn check_port_forward(&self) {
        const PORT: u16 = 8081;
        let page = "pong via port-forward";
        let serve = format!(
            "mkdir -p /tmp/www && echo {page} > /tmp/www/index.html && httpd -p {PORT} -h /tmp/www"
        );
        self.exec_ok(&self.a, &["sh", "-c", &serve]);
        let request = b"GET /index.html HTTP/1.0\r\n\r\n";
        let forward = |port: u16| {
            let url = self
                .c
                .port_forward(&self.id, &[i32::from(port)])
                .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", self.s.log()));
            let t = Instant::now();
            let got = portforward::exchange(&url, port, request, SETTLE)
                .unwrap_or_else(|e| panic!("port-forward to {port} ({url}): {e}"));
            (got, t.elapsed())
        };
        let deadline = Instant::now() + SETTLE;
        let (got, took) = loop {
            let (got, took) = forward(PORT);
            if !got.data.is_empty() || Instant::now() >= deadline {
                break (got, took);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let text = String::from_utf8_lossy(&got.data);
        assert!(
            text.starts_with("HTTP/1.") && text.contains(page),
            "port-forward to {PORT}: {got:?}\n--- log ---\n{}",
            self.s.log()
        );
        assert_eq!(got.end, portforward::End::Closed, "{got:?}");
        println!(
            "port-forward to {PORT}: {} bytes of httpd's answer in {took:?}",
            got.data.len()
        );
        let (closed, took) = forward(PORT + 1);
        assert!(
            closed.data.is_empty(),
            "nothing listens on {}: {closed:?}",
            PORT + 1
        );
        assert_eq!(closed.end, portforward::End::Closed, "{closed:?}");
        println!("port-forward to a closed port: ended in {took:?}");
        self.check_port_forward_flood();
    }

    /// A port in the guest that sends without end (`yes`): the client reads some, goes away,
    /// and the shim lets the stream go (its thread count comes back) rather than buffer what
    /// the guest still sends.
    fn check_port_forward_flood(&self) {
        const PORT: u16 = 8083;
        const READ: usize = 512 << 10;
        let shim = moat_ps(self.s)
            .into_iter()
            .find(|r| r.pod_id == self.id)
            .and_then(|r| r.status)
            .map(|st| st.shim_pid)
            .expect("moat ps shows the pod's shim");
        let threads = || moat_tests::containerd::sys::thread_count(shim);
        let before = threads();
        let flood = format!("yes flood | nc -l -p {PORT}");
        std::thread::scope(|sc| {
            sc.spawn(|| self.exec(&self.a, &["sh", "-c", &flood]));
            let deadline = Instant::now() + SETTLE;
            let got = loop {
                let url = self.c.port_forward(&self.id, &[i32::from(PORT)]).unwrap();
                let mut pf = portforward::PortForward::connect(&url, &[PORT], SETTLE)
                    .unwrap_or_else(|e| panic!("port-forward to {PORT}: {e}"));
                let mut got = 0;
                while got < READ {
                    match pf.recv() {
                        Ok(Some(portforward::Event::Data { bytes, .. })) => got += bytes.len(),
                        Ok(Some(portforward::Event::Error { text, .. })) => panic!("{text}"),
                        Ok(None) => break,
                        Err(e) => panic!("port-forward to {PORT}: {e}"),
                    }
                }
                pf.close();
                if got >= READ || Instant::now() >= deadline {
                    break got;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            assert!(got >= READ, "the flood gave {got} bytes");
            settle("the shim to let the flooded stream go", || {
                let now = threads();
                (now <= before).then_some(()).ok_or((before, now))
            });
        });
        println!(
            "port-forward flood: {READ} bytes read, then let go; shim threads back to {before}"
        );
    }

    /// ExecSync of `cmd` in container `cid`.
    fn exec(&self, cid: &str, cmd: &[&str]) -> api::ExecSyncResponse {
        self.c
            .exec_sync(cid, cmd, EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}\n--- log ---\n{}", self.s.log()))
    }

    /// ExecSync of `cmd` in container `cid`, which must exit 0; its stdout.
    fn exec_ok(&self, cid: &str, cmd: &[&str]) -> String {
        let r = self.exec(cid, cmd);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.exit_code, 0, "{cmd:?} in {cid}: {err}");
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    /// The pod's containers as (name, CRI state), sorted by name.
    fn states(&self) -> Vec<(String, i32)> {
        let list = self.c.list_containers(Some(&self.id));
        let mut v: Vec<(String, i32)> = list
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|c| (c.metadata.map(|m| m.name).unwrap_or_default(), c.state))
            .collect();
        v.sort();
        v
    }

    /// The moat-vmm processes on this host.
    fn vmms() -> Vec<String> {
        vm_processes()
    }

    /// Both containers run in the pod's one VM: the same kernel, not the host's.
    fn check_one_vm(&self) {
        let boot_id = "/proc/sys/kernel/random/boot_id";
        let host = std::fs::read_to_string(boot_id).unwrap();
        let in_a = self.exec_ok(&self.a, &["cat", boot_id]);
        let in_b = self.exec_ok(&self.b, &["cat", boot_id]);
        assert_eq!(in_a.trim().len(), 36, "boot id {in_a:?}");
        assert_eq!(in_a, in_b, "the containers run in different kernels");
        assert_ne!(in_a, host, "the container runs in the host's kernel");
        let vmms = Self::vmms();
        assert_eq!(vmms.len(), 1, "moat-vmm processes: {vmms:#?}");
        assert!(vmms[0].contains(&self.id), "not the pod's VMM: {vmms:?}");
    }

    /// `moat ps` (issue 16) lists the pod in `k8s.io` under its sandbox id, with its sandbox
    /// container, alpha and beta running.
    fn check_moat_ps(&self) {
        let listed = moat_ps(self.s);
        let row = listed.iter().find(|r| r.pod_id == self.id);
        let row = row.unwrap_or_else(|| panic!("{} not listed: {listed:?}", self.id));
        assert_eq!(row.namespace, "k8s.io", "{row:?}");
        let pod = row.status.as_ref();
        let pod = pod.unwrap_or_else(|| panic!("its shim did not answer: {:?}", row.error));
        assert_eq!(pod.vm_state, "running", "{pod:?}");
        let mut got: Vec<(&str, &str, bool)> = pod
            .containers
            .iter()
            .map(|c| (c.id.as_str(), c.status.as_str(), c.is_sandbox))
            .collect();
        got.sort();
        let mut want = vec![
            (self.id.as_str(), "running", true),
            (self.a.as_str(), "running", false),
            (self.b.as_str(), "running", false),
        ];
        want.sort();
        assert_eq!(got, want, "{pod:?}");
    }

    /// The files of containerd's sandbox directories, kubelet-style mounts, env, seccomp.
    fn check_pod_files(&self) {
        let (a, b) = (self.a.as_str(), self.b.as_str());
        for cid in [a, b] {
            assert_eq!(self.exec_ok(cid, &["hostname"]).trim(), HOSTNAME);
            assert_eq!(
                self.exec_ok(cid, &["cat", "/etc/hostname"]).trim(),
                HOSTNAME
            );
            let resolv = self.exec_ok(cid, &["cat", "/etc/resolv.conf"]);
            assert!(
                resolv.contains("nameserver 10.96.0.10") && resolv.contains("ndots:5"),
                "/etc/resolv.conf: {resolv}"
            );
            assert!(self
                .exec_ok(cid, &["cat", "/etc/hosts"])
                .contains("localhost"));
            let shm = self.exec_ok(cid, &["sh", "-c", "grep ' /dev/shm ' /proc/mounts"]);
            assert!(shm.contains("tmpfs"), "/dev/shm: {shm}");
        }
        // The pod shares one /dev/shm and one IPC namespace (the sandbox's), as under runc.
        self.exec_ok(a, &["sh", "-c", "echo from-alpha > /dev/shm/pod-shm"]);
        assert_eq!(
            self.exec_ok(b, &["cat", "/dev/shm/pod-shm"]),
            "from-alpha\n"
        );
        let ipc = |cid: &str| self.exec_ok(cid, &["readlink", "/proc/self/ns/ipc"]);
        assert_eq!(ipc(a), ipc(b), "the containers' IPC namespaces differ");
        assert_eq!(self.exec_ok(a, &["sh", "-c", "echo $WHO"]), "alpha\n");
        assert_eq!(self.exec_ok(b, &["sh", "-c", "echo $WHO"]), "beta\n");
        let token = format!("{SECRETS}/token");
        assert_eq!(self.exec_ok(a, &["cat", &token]), "t0ken");
        let write = format!("echo x > {token}");
        assert_ne!(self.exec(a, &["sh", "-c", &write]).exit_code, 0);
        self.exec_ok(a, &["sh", "-c", "echo terminated > /dev/termination-log"]);
        let message = std::fs::read_to_string(&self.termination_log).unwrap();
        assert_eq!(message, "terminated\n");
        // Filter mode (2) for beta's init (RuntimeDefault) and, as runc does, for what is
        // exec'd in it; none (0) for alpha's (`Unconfined`: no profile in its spec), as under
        // runc, since `[container] default_seccomp` is off by default.
        for (cid, want) in [(a, "0"), (b, "2")] {
            for proc in ["1", "self"] {
                let status = format!("/proc/{proc}/status");
                let mode = self.exec_ok(cid, &["grep", "^Seccomp:", &status]);
                let mode_of = mode.split_whitespace().nth(1);
                assert_eq!(mode_of, Some(want), "{cid}'s {proc}: {mode}");
            }
        }
    }

    /// ExecSync's streams and exit code, ContainerStats, ListContainers, the CRI log files,
    /// UpdateContainerResources.
    fn check_exec_stats_update(&self) {
        let a = self.a.as_str();
        let r = self.exec(a, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
        let got = (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code);
        assert_eq!(got, (&b"out\n"[..], &b"err\n"[..], 3));

        let stats = self.c.container_stats(a).unwrap_or_else(|e| panic!("{e}"));
        let cpu = stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref());
        let mem = stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref());
        assert!(cpu.is_some_and(|v| v.value > 0), "cpu: {stats:?}");
        assert!(mem.is_some_and(|v| v.value > 0), "memory: {stats:?}");
        let running = ContainerState::ContainerRunning as i32;
        let want = [
            ("alpha".to_string(), running),
            ("beta".to_string(), running),
        ];
        assert_eq!(self.states(), want);
        wait_log(&self.logs.join("alpha/0.log"), "stdout F alpha up as alpha");
        wait_log(&self.logs.join("beta/0.log"), "stdout F beta up as beta");

        // What the kubelet sends for an in-place resize to 128 MiB and half a CPU.
        let resources = api::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 1000,
            ..Default::default()
        };
        self.c
            .update_container_resources(a, &resources)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", self.s.log()));
        let cg = "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max";
        let limits = self.exec_ok(a, &["sh", "-c", cg]);
        assert_eq!(limits, format!("{}\n50000 100000\n", 128 << 20));
    }

    /// beta exits on its own, alpha and the VM go on; beta is removed, alpha stopped.
    fn check_own_exit(&self) {
        let (a, b) = (self.a.as_str(), self.b.as_str());
        let boot_id = self.exec_ok(a, &["cat", "/proc/sys/kernel/random/boot_id"]);
        self.exec_ok(b, &["touch", "/tmp/stop"]);
        let st = self
            .c
            .wait_container_state(b, ContainerState::ContainerExited, SETTLE)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", self.s.log()));
        assert_eq!((st.exit_code, st.reason.as_str()), (7, "Error"), "{st:?}");
        assert!(
            st.started_at > 0 && st.finished_at >= st.started_at,
            "{st:?}"
        );
        wait_log(&self.logs.join("beta/0.log"), "stderr F bye");
        let (running, exited) = (
            ContainerState::ContainerRunning as i32,
            ContainerState::ContainerExited as i32,
        );
        let want = [("alpha".to_string(), running), ("beta".to_string(), exited)];
        assert_eq!(self.states(), want);
        let again = self.exec_ok(a, &["cat", "/proc/sys/kernel/random/boot_id"]);
        assert_eq!(again, boot_id, "alpha's VM changed");

        // The kubelet removes a dead container, and stops one with a grace period (alpha's
        // sh ignores SIGTERM as PID 1: SIGKILL after the grace period).
        self.c
            .remove_container(b)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", self.s.log()));
        assert_eq!(self.states(), [("alpha".to_string(), running)]);
        let t = Instant::now();
        self.c
            .stop_container(a, 2)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", self.s.log()));
        println!("StopContainer (2 s grace): {:?}", t.elapsed());
        let st = self.c.container_status(a).unwrap();
        assert_eq!((st.state, st.exit_code), (exited, 137), "{st:?}");
        assert_eq!(
            Self::vmms().len(),
            1,
            "the pod's VM is gone with its containers"
        );
    }

    /// StopPodSandbox frees the VM; RemovePodSandbox the rest: nothing may be left.
    fn teardown(self) {
        let Pod {
            s, c, id, cgroup, ..
        } = self;
        let t = Instant::now();
        c.stop_pod_sandbox(&id)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()));
        println!("StopPodSandbox: {:?}", t.elapsed());
        let st = c.pod_sandbox_status(&id).unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxNotready as i32, "{st:?}");
        settle("the VM and shim to exit after StopPodSandbox", || {
            let procs = moat_processes();
            procs.is_empty().then_some(()).ok_or(procs)
        });
        let t = Instant::now();
        c.remove_pod_sandbox(&id)
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()));
        println!("RemovePodSandbox: {:?}", t.elapsed());
        assert!(c.list_containers(None).unwrap().is_empty());
        assert!(c.list_pod_sandboxes().unwrap().is_empty());
        s.assert_no_leftovers();
        let listed = moat_ps(s);
        assert!(
            listed.iter().all(|r| r.pod_id != id),
            "moat ps still lists the removed pod: {listed:?}"
        );
        settle("CRI to remove the pod's netns and directories", || {
            let left = cri::leftovers(&s.containerd);
            left.is_empty().then_some(()).ok_or(left)
        });
        if let Some(cg) = &cgroup {
            assert_eq!(
                cg.children(),
                Vec::<String>::new(),
                "the pod's cgroup is left"
            );
        }
    }
}

/// One pod of `moat ps --json`: its namespace, id, and its shim's answer (`None`: the shim did
/// not answer, `error` says why).
#[derive(Debug)]
struct PsRow {
    namespace: String,
    pod_id: String,
    status: Option<PodStatus>,
    error: Option<String>,
}

/// `moat ps --json` with the stack's shim config (the state dir every handler's config names).
fn moat_ps(s: &Stack) -> Vec<PsRow> {
    let out = moat(&s.config, &["ps", "--json"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_str());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    rows.into_iter()
        .map(|r| PsRow {
            namespace: text(&r["namespace"]).unwrap_or_default(),
            pod_id: text(&r["pod_id"]).unwrap_or_default(),
            status: serde_json::from_value(r["status"].clone()).ok(),
            error: text(&r["error"]),
        })
        .collect()
}

/// Polls `check` until it is `Ok` or [`SETTLE`] has passed (then panics with its last `Err`).
fn settle<E: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> Result<(), E>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("waiting for {what}: still {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until the CRI log file `path` has a line containing `needle`.
fn wait_log(path: &Path, needle: &str) {
    settle(&format!("{needle:?} in {}", path.display()), || {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        log.contains(needle).then_some(()).ok_or(log)
    });
}
