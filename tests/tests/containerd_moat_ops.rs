//! The operator's tool against real pods (issue 16): `moat ps` lists what the shims run and
//! nothing after delete, `moat exec` reaches a pod started with the debug console and is
//! refused for one without, `moat monitor`'s scrape of three pods passes `promtool check
//! metrics` with every pod's series, labelled, and its values move when a container works;
//! `moat check` passes inside the test host; the shim's log lines name their pod and container
//! as fields and the guest console has a file in the pod's directory.

use std::time::Duration;

use moat_tests::containerd::moat_stack::{self, with_stack, Stack};
// The series below name the stack's namespace, containerd::DEFAULT_NAMESPACE (k8s.io).
use moat_tests::ops::{moat, promtool_check, sample, Monitor};

/// How many fresh test hosts a flow may use when the guest crashes.
const ATTEMPTS: usize = 4;
/// The pods of the flow: the first with the debug console.
const PODS: [&str; 3] = ["ops-a", "ops-b", "ops-c"];

/// Writes the stack's config with the debug console on or off (read at each pod's create).
fn console(s: &Stack, on: bool) {
    let mut cfg = moat_stack::config().unwrap();
    cfg.debug.console = on;
    std::fs::write(&s.config, cfg.to_toml()).unwrap();
}

/// The labels of pod `pod`'s series (the shim's own, before a family's).
fn pod_labels(pod: &str) -> String {
    format!("namespace=\"k8s.io\",sandbox_id=\"{pod}\"")
}

/// The series every pod must have, for pod `pod`.
fn pod_series(pod: &str) -> Vec<String> {
    let p = pod_labels(pod);
    let l = |name: &str| format!("{name}{{{p}}}");
    let with = |name: &str, labels: &str| format!("{name}{{{p},{labels}}}");
    let container = format!("container_id=\"{pod}\"");
    vec![
        l("moat_vm_boot_seconds"),
        l("moat_vm_memory_bytes"),
        l("moat_vmm_rss_excl_guest_bytes"),
        l("moat_vmm_guest_init_seconds"),
        l("moat_guest_memory_available_bytes"),
        l("moat_guest_load1"),
        with("moat_container_cpu_usage_seconds_total", &container),
        with("moat_container_memory_usage_bytes", &container),
        with("moat_vmm_vcpu_exits_total", "reason=\"io_out\""),
        l("moat_vmm_vsock_rx_packets_total"),
        l("moat_vmm_fs_requests_total"),
        with(
            "moat_agent_rpcs_total",
            "method=\"CreateContainer\",result=\"ok\"",
        ),
        with("moat_scrape_source_ok", "source=\"vmm\"") + " 1",
        with("moat_scrape_source_ok", "source=\"guest\"") + " 1",
    ]
}

#[test]
fn moat_ps_exec_and_monitor_follow_pods() {
    moat_tests::on_kvm_retrying("moat_ps_exec_and_monitor_follow_pods", ATTEMPTS, || {
        with_stack(|s| {
            for (i, pod) in PODS.iter().enumerate() {
                console(s, i == 0);
                s.run_detached(pod, &["sleep", "600"]);
            }
            let ps = moat(&s.config, &["ps"]);
            assert_eq!(ps.code(), Some(0));
            for pod in PODS {
                assert!(ps.stdout_str().contains(pod), "{}", ps.stdout_str());
            }
            assert!(ps.stdout_str().contains("running (debug console)"));
            exec_flows(s);
            monitor_flows(s);
            for pod in PODS {
                s.kill_and_delete(pod, Duration::from_secs(30));
            }
            let ps = moat(&s.config, &["ps", "--json"]);
            assert_eq!(ps.stdout_str().trim(), "[]", "nothing after delete");
            // Inside the test host /dev/kvm is real: every hard requirement holds.
            let check = moat(&s.config, &["check"]);
            assert_eq!(check.code(), Some(0), "{}", check.stdout_str());
        })
    });
}

/// `moat exec` in the pod with the console, refused in one without.
fn exec_flows(s: &Stack) {
    let o = moat(&s.config, &["exec", "ops-a", "uname", "-r"]);
    assert_eq!(o.code(), Some(0), "{}", o.stderr_str());
    let release = o.stdout_str();
    assert!(
        release.trim().starts_with("6."),
        "the guest kernel: {release:?}"
    );
    let o = moat(&s.config, &["exec", "ops-a", "exit", "3"]);
    assert_eq!(o.code(), Some(3));
    // Outside any container: the guest's root sees the share with the container's rootfs.
    let o = moat(&s.config, &["exec", "ops-a", "ls", "/run/moat/shares/pod"]);
    assert!(o.stdout_str().contains("ops-a"), "{}", o.stdout_str());
    let o = moat(&s.config, &["exec", "ops-b", "uname", "-r"]);
    assert_ne!(o.code(), Some(0));
    assert!(
        o.stderr_str().contains("without the debug console"),
        "{}",
        o.stderr_str()
    );
    // Every shim line names its pod as a field; a container's lines also the container.
    let log = s.log_all();
    let opened = "level=warn pod=\"ops-a\" msg=\"pod ops-a: debug console opened by uid 0";
    assert!(log.contains(opened), "{log}");
    assert!(log.contains("pod=\"ops-b\" msg=\"pod ops-b: debug console refused"));
    let created = "pod=\"ops-c\" container=\"ops-c\" msg=\"ops-c: created in pod ops-c";
    assert!(log.contains(created), "{log}");
    // The guest console also has a file of its own in the pod's directory.
    // The agent's lines about a container carry it as a field too.
    let console = std::fs::read_to_string(s.pod_dir("ops-a").console_log()).unwrap();
    assert!(console.contains("container=ops-a"), "{console}");
    assert!(
        console.contains("debug console session 1: started"),
        "{console}"
    );
}

/// One scrape of three pods passes promtool and has every pod's series; CPU work moves them.
fn monitor_flows(s: &Stack) {
    let m = Monitor::start(&s.config, "127.0.0.1:18090");
    let before = m.scrape();
    if let Err(e) = promtool_check(&before) {
        panic!("promtool check metrics:\n{e}\n{before}");
    }
    for pod in PODS {
        for series in pod_series(pod) {
            assert!(before.contains(&series), "no {series} in:\n{before}");
        }
    }
    assert!(before.contains("moat_monitor_pods 3"), "{before}");
    let b_labels = pod_labels("ops-b");
    let cpu =
        format!("moat_container_cpu_usage_seconds_total{{{b_labels},container_id=\"ops-b\"}}");
    let busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
    s.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "busy",
        "ops-b",
        "sh",
        "-c",
        busy,
    ]);
    let after = m.scrape();
    let (b, a) = (
        sample(&before, &cpu).unwrap(),
        sample(&after, &cpu).unwrap(),
    );
    assert!(a > b + 0.05, "ops-b's CPU time {b} -> {a}");
    // The exec's agent logs reach the console through port I/O (HLT and ioeventfd
    // notifications stay in KVM).
    let exits = format!("moat_vmm_vcpu_exits_total{{{b_labels},reason=\"io_out\"}}");
    let (b, a) = (sample(&before, &exits), sample(&after, &exits));
    assert!(a > b, "ops-b's io_out exits {b:?} -> {a:?}");
    let rpcs = format!("moat_agent_rpcs_total{{{b_labels},method=\"ExecProcess\",result=\"ok\"}}");
    assert_eq!(sample(&after, &rpcs), Some(1.0), "{after}");
    let one = moat(&s.config, &["metrics", "ops-c"]);
    assert_eq!(one.code(), Some(0));
    assert!(one.stdout_str().contains("sandbox_id=\"ops-c\""));
    assert!(!one.stdout_str().contains("sandbox_id=\"ops-a\""));
}
