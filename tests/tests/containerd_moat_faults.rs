//! moat under faults, through a real containerd 1.6 driven with `ctr`: the pod's `moat-vmm` or
//! its shim (`containerd-shim-moat-v2`) killed with SIGKILL while a container and an exec run,
//! the guest kernel panicked by a container escaped to guest root, and containerd itself
//! killed and restarted under a running pod.
//! Every flow must end with the task reported exited, `ctr` returning, deletes working and
//! nothing of moat left (process, mount, pod directory with its vsock socket, shim socket).
//! Runs in the test host (nested KVM) unless this machine has hardware KVM.

use std::time::{Duration, Instant};

use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::cri::{self, api, CriClient, KubeletCgroup, PodIdentity};
use moat_tests::containerd::moat_stack::{sigkill, with_stack, with_stack_mut, Stack};
use moat_tests::containerd::oci_image::DEFAULT_PAUSE_IMAGE;
use moat_tests::containerd::{CtrOutput, LiveCtr};

/// How many fresh test hosts a flow may use when the guest crashes (see
/// `moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 4;
/// The status the shim reports for a process whose VM died under it.
const VM_DIED: i32 = 255;
/// How long the task may take to be reported exited after a kill.
const EXIT_REPORTED: Duration = Duration::from_secs(30);
/// The container that gets its VMM or shim killed.
const VICTIM: &str = "victim";

/// What an exec or a foreground `ctr run` runs: a line once it runs, then a long sleep.
const UP_THEN_SLEEP: &[&str] = &["sh", "-c", "echo up; exec sleep 600"];
/// How long ctr may take to print the first line of a process.
const STARTED: Duration = Duration::from_secs(60);

/// Starts [`VICTIM`] detached (a lone container: its own pod, VM and shim) and a foreground
/// `ctr task exec` in it; returns the exec's ctr once the exec's output reaches it.
fn start_victim_with_exec(s: &Stack) -> LiveCtr {
    s.run_detached(VICTIM, &["sleep", "100000"]);
    s.wait_task_status(VICTIM, "RUNNING", STARTED);
    let mut args = vec!["task", "exec", "--exec-id", "long", VICTIM];
    args.extend_from_slice(UP_THEN_SLEEP);
    let exec = s.ctr_live(&args);
    exec.wait_for("up\n", STARTED);
    exec
}

/// A foreground `ctr run --rm` of container `id`, once its output reaches ctr.
fn start_foreground(s: &Stack, id: &str) -> LiveCtr {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME_ID, &s.image, id];
    args.extend_from_slice(UP_THEN_SLEEP);
    let run = s.ctr_live(&args);
    run.wait_for("up\n", STARTED);
    run
}

/// Waits until nothing of moat is left, returning how long that took.
fn time_to_clean(s: &Stack, since: Instant) -> Duration {
    s.assert_no_leftovers();
    since.elapsed()
}

/// `kill -9` of the pod's moat-vmm: the shim reports every process exited with 255; the
/// exec's ctr returns it, `task ls` shows the task STOPPED; `task delete` (which tears the
/// pod down) and `container delete` work; nothing is left.
#[test]
fn vmm_killed() {
    moat_tests::on_kvm_retrying("vmm_killed", ATTEMPTS, || {
        with_stack(|s| {
            let vsock = s.pod_dir(VICTIM).vsock();
            let exec = start_victim_with_exec(s);
            assert!(vsock.exists(), "{} missing", vsock.display());
            let vmm = s.vmm_pid(VICTIM).expect("the victim's moat-vmm");
            let killed = Instant::now();
            sigkill(vmm);
            s.wait_task_status(VICTIM, "STOPPED", EXIT_REPORTED);
            println!("VMM killed: task STOPPED after {:?}", killed.elapsed());
            let exec = exec.finish(EXIT_REPORTED);
            println!(
                "VMM killed: the exec's ctr returned after {:?}",
                killed.elapsed()
            );
            assert_eq!(exec.code(), Some(VM_DIED), "exec: {}", exec.stderr_str());
            // The VMM is gone; the pod (directory, mounts, vsock socket) stays until delete.
            assert_eq!(s.vmm_pid(VICTIM), None);
            assert!(
                vsock.exists(),
                "{} gone before task delete",
                vsock.display()
            );
            // ctr only warns about the status.
            let err = s.ctr_ok(&["task", "delete", VICTIM]).stderr_str();
            assert!(err.contains("non-zero exit code 255"), "task delete: {err}");
            assert!(
                !vsock.exists(),
                "{} left after task delete",
                vsock.display()
            );
            s.ctr_ok(&["container", "delete", VICTIM]);
            let ls = s.ctr_ok(&["task", "ls"]).stdout_str();
            assert!(!ls.contains(VICTIM), "{ls}");
            println!(
                "VMM killed: cleaned up after {:?}",
                time_to_clean(s, killed)
            );
        })
    });
}

/// `kill -9` of the moat-vmm under a foreground `ctr run --rm`: ctr returns 255 and removes
/// the container; nothing is left.
#[test]
fn vmm_killed_under_ctr_run_rm() {
    moat_tests::on_kvm_retrying("vmm_killed_under_ctr_run_rm", ATTEMPTS, || {
        with_stack(|s| {
            let run = start_foreground(s, "fg");
            let killed = Instant::now();
            sigkill(s.vmm_pid("fg").expect("the moat-vmm of fg"));
            let o = run.finish(EXIT_REPORTED);
            println!(
                "VMM killed under ctr run --rm: returned {:?} after {:?}: {:?}",
                o.code(),
                killed.elapsed(),
                o.stderr_str()
            );
            assert_eq!(o.code(), Some(VM_DIED), "{}", o.stderr_str());
            let ls = s.ctr_ok(&["container", "ls", "-q"]).stdout_str();
            assert!(!ls.contains("fg"), "{ls}");
            println!(
                "VMM killed under ctr run --rm: cleaned up after {:?}",
                time_to_clean(s, killed)
            );
        })
    });
}

/// What ctr says when the shim serving its process is killed: containerd's Wait fails with
/// the shim's connection (no exit status: the shim that knew it is gone).
fn assert_shim_gone_error(o: &CtrOutput) {
    assert_eq!(o.code(), Some(1), "{}", o.stderr_str());
    assert!(
        o.stderr_str().contains("ttrpc: closed"),
        "{}",
        o.stderr_str()
    );
}

/// `kill -9` of the shim serving a detached container: the VMM dies with it (PDEATHSIG),
/// containerd runs `containerd-shim-moat-v2 delete`, which cleans the pod up; the exec's ctr
/// returns, containerd drops the task, `container delete` works; nothing is left (the dead
/// shim's socket included).
#[test]
fn shim_killed() {
    moat_tests::on_kvm_retrying("shim_killed", ATTEMPTS, || {
        with_stack(|s| {
            let vsock = s.pod_dir(VICTIM).vsock();
            let exec = start_victim_with_exec(s);
            let (shim, socket) = s.shim_process(VICTIM).expect("the victim's shim");
            assert!(socket.exists(), "{} missing", socket.display());
            let killed = Instant::now();
            sigkill(shim);
            let exec = exec.finish(EXIT_REPORTED);
            let returned = killed.elapsed();
            println!("shim killed: the exec's ctr returned after {returned:?}");
            assert_shim_gone_error(&exec);
            let clean = time_to_clean(s, killed);
            println!("shim killed: cleaned up after {clean:?}");
            assert!(!vsock.exists(), "{} left", vsock.display());
            let gone = !socket.exists();
            assert!(gone, "the dead shim's {} left", socket.display());
            // containerd dropped the task with the shim (and published its exit).
            let ls = s.ctr_ok(&["task", "ls"]).stdout_str();
            assert!(!ls.contains(VICTIM), "{ls}");
            let del = s.ctr(&["task", "delete", VICTIM]);
            assert_eq!(del.code(), Some(1), "task delete: {}", del.stderr_str());
            let err = del.stderr_str();
            assert!(err.contains("not found"), "task delete: {err}");
            s.ctr_ok(&["container", "delete", VICTIM]);
        })
    });
}

/// `kill -9` of the shim under a foreground `ctr run --rm`: ctr returns (it must not hang),
/// still removing the container; nothing of moat is left.
#[test]
fn shim_killed_under_ctr_run_rm() {
    moat_tests::on_kvm_retrying("shim_killed_under_ctr_run_rm", ATTEMPTS, || {
        with_stack(|s| {
            let run = start_foreground(s, "fg");
            let (shim, socket) = s.shim_process("fg").expect("the shim of fg");
            let killed = Instant::now();
            sigkill(shim);
            let o = run.finish(EXIT_REPORTED);
            let returned = killed.elapsed();
            println!("shim killed under ctr run --rm: returned after {returned:?}");
            assert_shim_gone_error(&o);
            let clean = time_to_clean(s, killed);
            println!("shim killed under ctr run --rm: cleaned up after {clean:?}");
            let gone = !socket.exists();
            assert!(gone, "the dead shim's {} left", socket.display());
            let ls = s.ctr_ok(&["container", "ls", "-q"]).stdout_str();
            assert!(!ls.contains("fg"), "{ls}");
            let ls = s.ctr_ok(&["task", "ls"]).stdout_str();
            assert!(!ls.contains("fg"), "{ls}");
        })
    });
}

/// containerd killed with SIGKILL and started again under running pods (a crash, or an
/// upgrade): the shims and the VMs keep running, the new containerd reconnects to them. The
/// ctr pod: `ctr task ls` lists the task RUNNING, an exec works, and kill, `task delete` and
/// `container delete` end the pod. The CRI pod: CRI lists the sandbox ready and its container
/// running, ExecSync works, and StopPodSandbox and RemovePodSandbox end it. Nothing is left.
#[test]
fn containerd_restarted() {
    moat_tests::on_kvm_retrying("containerd_restarted", ATTEMPTS, || {
        with_stack_mut(
            |o| o.sandbox_image = DEFAULT_PAUSE_IMAGE.into(),
            |s| {
                s.run_detached(VICTIM, &["sleep", "100000"]);
                s.wait_task_status(VICTIM, "RUNNING", STARTED);
                let cri_pod = CriPod::start(s);
                let (shim, _) = s.shim_process(VICTIM).expect("the victim's shim");
                let vmm = s.vmm_pid(VICTIM).expect("the victim's VMM");
                let cri_vmm = s.vmm_pid(&cri_pod.pod).expect("the CRI pod's VMM");
                s.restart_containerd();
                assert_eq!(s.vmm_pid(&cri_pod.pod), Some(cri_vmm), "CRI pod's VMM");
                cri_pod.check_and_remove(s);
                let same = (s.shim_process(VICTIM).map(|p| p.0), s.vmm_pid(VICTIM));
                assert_eq!(same, (Some(shim), Some(vmm)), "shim or VMM did not survive");
                s.wait_task_status(VICTIM, "RUNNING", STARTED);
                let args = [
                    "task",
                    "exec",
                    "--exec-id",
                    "after",
                    VICTIM,
                    "echo",
                    "still-here",
                ];
                let out = s.ctr_ok(&args).stdout_str();
                assert_eq!(out.trim(), "still-here");
                // SIGKILL: `sleep` as its pid namespace's init ignores SIGTERM.
                s.kill_and_delete(VICTIM, EXIT_REPORTED);
            },
        )
    });
}

/// `kill -9` of a CRI pod's moat-vmm (what a guest crash does to it): its container is
/// reported exited, StopPodSandbox and RemovePodSandbox end the pod, and nothing is left, the
/// shim included (its teardown of the pod network and port forwarding after a dead VM).
#[test]
fn vmm_killed_under_a_cri_pod() {
    moat_tests::on_kvm_retrying("vmm_killed_under_a_cri_pod", ATTEMPTS, || {
        with_stack_mut(
            |o| o.sandbox_image = DEFAULT_PAUSE_IMAGE.into(),
            |s| {
                let pod = CriPod::start(s);
                let vmm = s.vmm_pid(&pod.pod).expect("the CRI pod's VMM");
                let killed = Instant::now();
                sigkill(vmm);
                let exited = api::ContainerState::ContainerExited;
                or_log(
                    s,
                    pod.c
                        .wait_container_state(&pod.container, exited, EXIT_REPORTED),
                );
                println!(
                    "CRI pod's VMM killed: container exited after {:?}",
                    killed.elapsed()
                );
                let c = CriClient::for_containerd(&s.containerd).unwrap();
                pod.remove(s, &c);
                println!(
                    "CRI pod's VMM killed: cleaned up after {:?}",
                    time_to_clean(s, killed)
                );
            },
        )
    });
}

/// What the panicking container runs as guest root: a fresh proc mount (the spec's /proc/sys
/// is read-only), `vm.panic_on_oom = 2`, then more memory than the guest has.
const PANIC_SCRIPT: &str =
    "mkdir -p /p && mount -t proc proc /p && echo 2 > /p/sys/vm/panic_on_oom && \
                            for i in $(seq 1 32); do dd if=/dev/zero of=/dev/null bs=64M count=1 & \
                            done; wait";

/// A container escaped to guest root (CAP_SYS_ADMIN, no seccomp filter) panics the guest
/// kernel: `ctr run --rm` returns 255, the shim says the guest panicked, and nothing of the
/// pod is left.
#[test]
fn guest_kernel_panics() {
    moat_tests::on_kvm_retrying("guest_kernel_panics", ATTEMPTS, || {
        with_stack(|s| {
            let root = s.guest_root_flags();
            let mut args = vec!["run", "--rm", "--runtime", RUNTIME_ID];
            args.extend(root.iter().map(String::as_str));
            args.extend([s.image.as_str(), "panicker", "sh", "-c", PANIC_SCRIPT]);
            let o = s
                .containerd
                .ctr_with(&args, None, Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("ctr run: {e}"));
            assert_eq!(o.code(), Some(VM_DIED), "ctr run: {}", o.stderr_str());
            let log = s.log_all();
            assert!(
                log.contains("the guest panicked"),
                "no panic reported:\n{log}"
            );
            let ls = s.ctr_ok(&["container", "ls", "-q"]).stdout_str();
            assert!(!ls.contains("panicker"), "{ls}");
        })
    });
}

/// A CRI pod with one container running `sleep`, started as the kubelet starts one (its pod
/// cgroup first), for [`containerd_restarted`].
struct CriPod {
    c: CriClient,
    pod: String,
    container: String,
    cgroup: Option<KubeletCgroup>,
}

impl CriPod {
    /// The CRI runtime handler of the stack's moat shim.
    const HANDLER: &'static str = "moat";

    fn start(s: &Stack) -> CriPod {
        let c = s.cri_client();
        let who = PodIdentity {
            name: "restart".into(),
            namespace: "default".into(),
            uid: format!("uid-{}", moat_tests::unique_suffix()),
        };
        let logs = s.dir().join("cri-logs");
        std::fs::create_dir_all(logs.join("sleeper")).unwrap();
        let mut pod_cfg = cri::pod_config(&who, "restart", &logs);
        let path = format!("/kubepods/burstable/pod{}", who.uid);
        let cgroup = KubeletCgroup::create(&path, 1 << 30).unwrap_or_else(|e| panic!("{e}"));
        if let (Some(cg), Some(linux)) = (&cgroup, pod_cfg.linux.as_mut()) {
            linux.cgroup_parent = cg.cgroup_parent().into();
        }
        let pod = or_log(s, c.run_pod_sandbox(&pod_cfg, Self::HANDLER));
        let sleep = ["sleep", "100000"];
        let cfg = cri::container_config(&who, "sleeper", &s.image, &sleep, &[], &[]);
        let container = or_log(s, c.create_container(&pod, &cfg, &pod_cfg));
        or_log(s, c.start_container(&container));
        CriPod {
            c,
            pod,
            container,
            cgroup,
        }
    }

    /// After the restart: listed as before, ExecSync works; then stopped and removed, with
    /// nothing left of it.
    fn check_and_remove(self, s: &Stack) {
        // A fresh connection: the old one went with the old containerd.
        let c = CriClient::for_containerd(&s.containerd).unwrap_or_else(|e| panic!("{e}"));
        let ready = api::PodSandboxState::SandboxReady as i32;
        let pods = c.list_pod_sandboxes().unwrap_or_else(|e| panic!("{e}"));
        let listed = pods.iter().any(|p| p.id == self.pod && p.state == ready);
        assert!(listed, "the CRI pod is not listed ready: {pods:?}");
        let running = api::ContainerState::ContainerRunning as i32;
        let ctrs = c.list_containers(Some(&self.pod)).unwrap();
        let listed = ctrs
            .iter()
            .any(|x| x.id == self.container && x.state == running);
        assert!(listed, "the CRI container is not listed running: {ctrs:?}");
        let out = or_log(
            s,
            c.exec_sync(&self.container, &["echo", "still-here"], STARTED),
        );
        assert_eq!(out.exit_code, 0, "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still-here");
        self.remove(s, &c);
    }

    /// StopPodSandbox and RemovePodSandbox through `c`; then nothing may be left of the pod in
    /// CRI.
    fn remove(self, s: &Stack, c: &CriClient) {
        or_log(s, c.stop_pod_sandbox(&self.pod));
        or_log(s, c.remove_pod_sandbox(&self.pod));
        assert!(c.list_pod_sandboxes().unwrap().is_empty());
        drop(self.c);
        // The shim removes the sandbox's cgroup and CRI its netns once the VM is gone.
        let deadline = Instant::now() + EXIT_REPORTED * 2;
        loop {
            let mut left = cri::leftovers(&s.containerd);
            left.extend(self.cgroup.iter().flat_map(KubeletCgroup::children));
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "left of the CRI pod: {left:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `r`'s value, or a panic with the error and the stack's log.
fn or_log<T>(s: &Stack, r: Result<T, cri::CriError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log()))
}
