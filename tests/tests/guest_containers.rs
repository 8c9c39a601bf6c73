//! Containers in a real guest: moat-vmm boots the guest kernel with moat-agent as PID 1 (in
//! the test host here), the container root filesystem comes over virtio-fs, and the host
//! drives the agent over hybrid vsock. cgroup v2 is real here: limits are enforced.

use std::time::{Duration, SystemTime};

use moat_agent_protocol::agent::{CopyFileRequest, CreatePodRequest};
use moat_agent_protocol::stdio::Channels;
use moat_agent_protocol::{AgentClient, CreateOptions, AGENT_VSOCK_PORT};
use moat_tests::agent::container_suite::{self, Suite};
use moat_tests::agent::containers::{self, WAIT};
use moat_tests::agent::oci;
use moat_tests::guest::{AgentVm, BootSpec, GuestImage};
use serde_json::json;

/// Where the agent mounts the share `moatfs` in the guest.
const SHARE_IN_GUEST: &str = "/run/moat/shares/moatfs";

/// How many fresh VMs (and test hosts) the test may use when the *guest* crashes (triple
/// fault, moat-vmm exit status 4), or the test host dies with it: under the nested TCG test
/// host this container-heavy L2 triple-faults now and then (about one run in four here; at
/// times qemu resets the whole L1 instead). Every crash is reported loudly; any other
/// failure ends the test at once.
const ATTEMPTS: usize = 4;

/// How many lines of the guest console a failure shows (the tail; the agent logs every step).
const CONSOLE_TAIL: usize = 40;
/// The deadline on a condition the suite waits for (cpu usage moving).
const SETTLE: Duration = Duration::from_secs(30);

/// The flows of the fast rung (`container_suite::all`), in a real guest.
#[test]
fn container_suite_in_a_real_guest() {
    let image = GuestImage::agent_image().unwrap_or_else(|e| panic!("agent image: {e}"));
    moat_tests::on_kvm_retrying("container_suite_in_a_real_guest", ATTEMPTS, || {
        one_vm(&image, suite_flows)
    });
}

/// What only a real guest shows: enforced cgroup limits, OOM events, stats, pause, the pod
/// PID namespace, the guest clock, CopyFile, cgroup leftovers.
#[test]
fn cgroups_pods_and_files_in_a_real_guest() {
    let image = GuestImage::agent_image().unwrap_or_else(|e| panic!("agent image: {e}"));
    moat_tests::on_kvm_retrying("cgroups_pods_and_files_in_a_real_guest", ATTEMPTS, || {
        one_vm(&image, guest_flows)
    });
}

/// The last [`CONSOLE_TAIL`] lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(CONSOLE_TAIL);
    let mut out = if skip > 0 {
        format!("[... {skip} earlier lines]\n")
    } else {
        String::new()
    };
    out.push_str(&lines[skip..].join("\n"));
    out
}

/// Boots one VM and runs `flows` in it. `Err` only when the guest crashed (moat-vmm status
/// 4); other failures panic.
fn one_vm(image: &GuestImage, flows: fn(&Suite)) -> Result<(), String> {
    let scratch = tempfile::Builder::new()
        .prefix("moat-gc-")
        .tempdir()
        .expect("scratch dir");
    let dir = scratch.path();
    let share = dir.join("share");
    oci::busybox_rootfs(&share.join("rootfs"), std::path::Path::new("/bin/busybox"))
        .expect("rootfs");
    let mut spec = BootSpec::new(image.clone());
    spec.vcpus = 2;
    spec.memory_mib = 512;
    spec.extra_args = vec![format!("--share=moatfs={}", share.display())];
    spec.append = "moat.share=moatfs".into();
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let mut vm = AgentVm::start(&vmm, &spec, dir).expect("start moat-vmm");
    let client =
        AgentClient::connect_hybrid_vsock(&vm.uds, AGENT_VSOCK_PORT, Duration::from_secs(120))
            .unwrap_or_else(|e| {
                panic!(
                    "agent not reachable: {e}\n--- console ---\n{}\n--- moat-vmm stderr ---\n{}",
                    vm.console_text(),
                    std::fs::read_to_string(dir.join("vmm.stderr")).unwrap_or_default()
                )
            });
    let console = || format!("--- guest console (tail) ---\n{}", tail(&vm.console_text()));
    let suite = Suite {
        client: &client,
        rootfs: format!("{SHARE_IN_GUEST}/rootfs").into(),
        host_rootfs: share.join("rootfs"),
        real_guest: true,
        context: &console,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flows(&suite)));
    if let Err(p) = result {
        let vmm_log = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap_or_default();
        let status = vm.child.try_wait().ok().flatten().and_then(|s| s.code());
        eprintln!("--- guest console (tail) ---\n{}", tail(&vm.console_text()));
        eprintln!("--- moat-vmm exit {status:?}: {vmm_log}");
        if status == Some(4) {
            return Err(vmm_log.trim().to_string());
        }
        std::panic::resume_unwind(p);
    }
    // PID 1 left the initramfs, so containers were pivot_root'ed, not chroot'ed.
    assert!(
        vm.console_text()
            .contains("left the initramfs for a tmpfs root"),
        "{}",
        vm.console_text()
    );
    assert_eq!(vm.stop(), Some(128 + libc::SIGTERM));
    Ok(())
}

/// The suite's default spec with a cgroup namespace (the container sees its own cgroup).
fn rootfs_spec(suite: &Suite, args: &[&str]) -> serde_json::Value {
    let mut s = suite.spec(args);
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "cgroup"}));
    s
}

/// Creates the pod every flow runs in.
fn create_pod(suite: &Suite) {
    let mut sb = CreatePodRequest::new();
    sb.pod_id = "pod1".into();
    sb.hostname = "pod1-host".into();
    sb.dns_servers = vec!["10.0.0.10".into()];
    sb.pod_pidns = true;
    suite.client.create_pod(&sb).unwrap();
}

fn suite_flows(suite: &Suite) {
    create_pod(suite);
    container_suite::all(suite);
    suite.client.destroy_pod("pod1").unwrap();
}

fn guest_flows(suite: &Suite) {
    let c = suite.client;
    create_pod(suite);

    // Output, exit code, a 1 MiB stdin round trip.
    let o = containers::run(
        c,
        "hello",
        &rootfs_spec(suite, &["sh", "-c", "echo hello from a microVM; exit 5"]),
        None,
    )
    .unwrap();
    assert_eq!(
        (o.out().as_str(), o.status),
        ("hello from a microVM\n", 5),
        "{}",
        o.err()
    );
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let o = containers::run(c, "cat", &rootfs_spec(suite, &["cat"]), Some(data.clone())).unwrap();
    assert!(
        o.stdout == data,
        "stdin echo differs ({} bytes back)",
        o.stdout.len()
    );

    // Memory limit: a hog is OOM-killed and the OOM event names the container.
    // One 64 MiB read buffer: the charge fails at once, no realloc storm.
    let mut s = rootfs_spec(
        suite,
        &[
            "sh",
            "-c",
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
        ],
    );
    s["linux"]["resources"] = json!({"memory": {"limit": 33554432}});
    let o = containers::run(c, "hog", &s, None).unwrap();
    assert_eq!(
        (o.status, o.signaled),
        (137, true),
        "hog: {} {}",
        o.out(),
        o.err()
    );
    assert_eq!(
        c.get_oom_event(Duration::from_secs(10)).unwrap().as_deref(),
        Some("hog")
    );

    // pids limit stops a fork bomb.
    let mut s = rootfs_spec(
        suite,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 64); do sleep 30 & done; sleep 1; ps | wc -l",
        ],
    );
    s["linux"]["resources"] = json!({"pids": {"limit": 16}});
    let o = containers::run(c, "forks", &s, None).unwrap();
    assert!(
        o.err().contains("fork"),
        "no fork failure: {} / {}",
        o.out(),
        o.err()
    );

    // A busy container: stats move, pause freezes them, resume thaws; update is observed.
    let mut s = rootfs_spec(suite, &["sh", "-c", "while :; do :; done"]);
    s["linux"]["resources"] =
        json!({"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}});
    c.create_container(
        "busy",
        &s.to_string(),
        Channels::default(),
        CreateOptions::default(),
    )
    .unwrap();
    c.start_container("busy").unwrap();
    let cpu = || c.stats_container("busy").unwrap().cpu.usage_usec;
    let t1 = cpu();
    moat_tests::wait_until("cpu usage moves", SETTLE, || cpu() > t1);
    c.pause_container("busy").unwrap();
    let t3 = cpu();
    // The one fixed wait: a window in which a frozen container must not run at all.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(cpu(), t3, "cpu usage moved while paused");
    c.resume_container("busy").unwrap();
    moat_tests::wait_until("cpu usage moves after resume", SETTLE, || cpu() > t3);
    let st = c.stats_container("busy").unwrap();
    assert_eq!(st.memory.limit, 64 << 20);
    assert!(st.pids.current >= 1);
    c.update_container("busy", &json!({"memory": {"limit": 134217728}}).to_string())
        .unwrap();
    assert_eq!(c.stats_container("busy").unwrap().memory.limit, 128 << 20);
    let o = containers::exec(
        c,
        "busy",
        "e1",
        &oci::default_process(&["cat", "/sys/fs/cgroup/memory.max"]),
    )
    .unwrap();
    assert_eq!(o.out(), "134217728\n", "{}", o.err());

    // The pod-wide PID namespace: a container joining it sees the holder as PID 1.
    let s = rootfs_spec(
        suite,
        &[
            "sh",
            "-c",
            "hostname; cat /proc/1/cmdline | head -c 32; echo",
        ],
    );
    let mut s2 = s.clone();
    s2["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "uts");
    c.create_container(
        "shared",
        &s2.to_string(),
        Channels {
            stdin: false,
            stdout: true,
            stderr: true,
        },
        CreateOptions {
            pod_pidns: true,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let att = containers::Attached::open(
        c,
        "shared",
        "",
        Channels {
            stdin: false,
            stdout: true,
            stderr: true,
        },
    )
    .unwrap();
    c.start_container("shared").unwrap();
    let o = containers::finish(c, "shared", "", att).unwrap();
    assert!(
        o.out().starts_with("pod1-host\n"),
        "{} {}",
        o.out(),
        o.err()
    );
    assert!(
        !o.out().contains("sh"),
        "PID 1 should be the pod's holder: {}",
        o.out()
    );
    c.remove_container("shared", None).unwrap();

    // The guest's wall clock is the host's from boot (kvm-clock's wall clock), before any
    // SetGuestDateTime.
    let host_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let o = containers::run(c, "clock0", &rootfs_spec(suite, &["date", "+%s"]), None).unwrap();
    let guest_now: u64 = o.out().trim().parse().unwrap_or(0);
    assert!(
        guest_now.abs_diff(host_now) < 120,
        "guest clock {guest_now} vs host {host_now}"
    );
    // Guest clock and files from the host: CopyFile + a bind mount of it in the spec.
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    c.set_guest_date_time(t).unwrap();
    let mut f = CopyFileRequest::new();
    f.path = "/run/moat/files/etc/motd".into();
    f.data = b"hello motd\n".to_vec();
    c.copy_file(&f).unwrap();
    let mut s = rootfs_spec(suite, &["sh", "-c", "date -u +%Y; cat /etc/motd"]);
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/etc/motd", "type": "bind",
        "source": "/run/moat/files/etc/motd", "options": ["rbind", "ro"]}));
    let o = containers::run(c, "clock", &s, None).unwrap();
    assert_eq!(o.out(), "2030\nhello motd\n", "{}", o.err());
    c.set_guest_date_time(SystemTime::now()).unwrap();

    // Nothing left of removed or refused containers: only busy's cgroup and the lister's.
    // (No cgroup namespace: it sees the whole hierarchy.)
    let s = suite.spec(&[
        "sh",
        "-c",
        "find /sys/fs/cgroup/moat -mindepth 1 -maxdepth 1 -type d | sort",
    ]);
    let o = containers::run(c, "lister", &s, None).unwrap();
    assert_eq!(
        o.out(),
        "/sys/fs/cgroup/moat/busy\n/sys/fs/cgroup/moat/lister\n",
        "{}",
        o.err()
    );

    c.signal_process("busy", "", 9, true).unwrap();
    assert_eq!(c.wait_process("busy", "", Some(WAIT)).unwrap().status, 137);
    c.destroy_pod("pod1").unwrap();
    assert!(
        c.list_processes("busy").is_err(),
        "destroy left the container"
    );
}
