//! The VMM the real shim spawns during `ctr run` is jailed (issue 12): read from `/proc` on
//! the host, every VMM thread runs under its seccomp filter with `no_new_privs` and only the
//! virtio-fs capabilities, in namespaces of its own, with the jail as its root and nothing
//! but `lo` in its network namespace. And a VMM that tries what a compromised one would
//! (the test-only attack-hooks build) is refused or stopped, and the shim says so.

use std::time::Duration;

use moat_tests::containerd::moat_stack::{self, with_stack, Stack};
use moat_tests::jail::{attack_vmm, inspect, jailed_child};

/// How many fresh test hosts a flow may use when the guest crashes.
const ATTEMPTS: usize = 4;
/// The capability sets of a VMM with a share (every pod has one): CHOWN, DAC_OVERRIDE,
/// DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID.
const SHARE_CAPS: &str = "00000000000000df";
/// No capabilities.
const NO_CAPS: &str = "0000000000000000";
/// The jail root's mount points besides the share's (vmm/SPECIFICATION.md, "Jail").
const JAIL_MOUNTS: [&str; 7] = [
    "/",
    "/dev/kvm",
    "/dev/urandom",
    "/initrd",
    "/kernel",
    "/metrics.json",
    "/vsock",
];

/// The fallback tunnel devices the kernel puts in every network namespace (when the
/// tunnel's driver is built in).
const FALLBACK_TUNNELS: [&str; 7] = [
    "sit0", "tunl0", "ip6tnl0", "ip6gre0", "gre0", "ip_vti0", "ip6_vti0",
];

/// The jailed VMM of pod `pod` and its supervisor.
fn jailed_vmm(s: &Stack, pod: &str) -> (u32, u32) {
    let supervisor = s.vmm_pid(pod).expect("the pod's moat-vmm");
    let vmm = jailed_child(supervisor).expect("the supervisor's jailed child");
    (supervisor, vmm)
}

#[test]
fn vmm_spawned_by_the_shim_is_jailed() {
    moat_tests::on_kvm_retrying("vmm_spawned_by_the_shim_is_jailed", ATTEMPTS, || {
        with_stack(|s| {
            s.run_detached("jailed", &["sleep", "600"]);
            let (supervisor, vmm) = jailed_vmm(s, "jailed");
            let v = inspect(vmm).unwrap();
            println!("jailed moat-vmm {vmm}: {v:#?}");
            assert_eq!(v.threads.len(), 2, "main + 1 vCPU: {:?}", v.threads);
            for (field, want) in [
                ("Seccomp", "2"),
                ("NoNewPrivs", "1"),
                ("CapEff", SHARE_CAPS),
                ("CapPrm", SHARE_CAPS),
                ("CapBnd", SHARE_CAPS),
                ("CapInh", NO_CAPS),
                ("CapAmb", NO_CAPS),
            ] {
                for (thread, got) in v.field(field) {
                    assert_eq!(got, want, "{field} of thread {thread}");
                }
            }
            assert!(
                v.shared_namespaces.is_empty(),
                "shares {:?}",
                v.shared_namespaces
            );
            assert_eq!(
                v.root_entries,
                [
                    "dev",
                    "initrd",
                    "kernel",
                    "metrics.json",
                    "proc",
                    "shares",
                    "vsock"
                ]
            );
            for m in &v.mount_points {
                assert!(
                    JAIL_MOUNTS.contains(&m.as_str()) || m.starts_with("/shares/pod"),
                    "undocumented mount {m} in the jail: {:?}",
                    v.mount_points
                );
            }
            assert!(v
                .mount_points
                .iter()
                .any(|m| m.starts_with("/shares/pod/jailed")));
            // Besides lo, at most the kernel's per-namespace fallback tunnels (sit0 when sit is
            // built in): down, without addresses (net.core.fb_tunnels_only_for_init_net=1
            // removes them).
            assert_eq!(v.interfaces[0], "lo", "{:?}", v.interfaces);
            for i in &v.interfaces[1..] {
                assert!(
                    FALLBACK_TUNNELS.contains(&i.as_str()),
                    "interface {i} in the jail"
                );
            }
            assert_eq!(v.soft_limit("Max core file size").as_deref(), Some("0"));
            // 1024 + 1024 (vsock) + 262144 (one share), capped by the hard limit it inherited.
            let sup = inspect(supervisor).unwrap();
            let inherited: u64 = match sup.hard_limit("Max open files").as_deref() {
                Some("unlimited") | None => u64::MAX,
                Some(n) => n.parse().unwrap(),
            };
            let nofile = 264_192.min(inherited).to_string();
            assert_eq!(v.soft_limit("Max open files"), Some(nofile.clone()));
            assert_eq!(v.hard_limit("Max open files"), Some(nofile));
            for set in ["CapEff", "CapPrm", "CapBnd"] {
                assert_eq!(sup.field(set)[0].1, NO_CAPS, "supervisor {set}");
            }
            assert_eq!(sup.field("NoNewPrivs")[0].1, "1", "supervisor no_new_privs");
            // The pod works as before: exec, then stop.
            let o = s.ctr_ok(&["task", "exec", "--exec-id", "e1", "jailed", "echo", "in"]);
            assert_eq!(o.stdout_str(), "in\n");
            s.kill_and_delete("jailed", Duration::from_secs(30));
        })
    });
}

/// Points the stack's shim at the attack-hooks VMM with `moat.attack=<attack>`.
fn arm(s: &Stack, attack: &str) {
    let mut cfg = moat_stack::config().unwrap();
    cfg.vm.vmm = attack_vmm();
    cfg.vm.kernel_params = format!("{} moat.attack={attack}", cfg.vm.kernel_params);
    std::fs::write(&s.config, cfg.to_toml()).unwrap();
}

#[test]
fn a_compromised_vmm_is_refused_or_stopped() {
    moat_tests::on_kvm_retrying("a_compromised_vmm_is_refused_or_stopped", ATTEMPTS, || {
        with_stack(|s| {
            // execve at /init: stopped by the filter before the agent answers.
            arm(s, "execve");
            let o = s.run_rm("exe", &["true"], None);
            assert_ne!(o.code(), Some(0));
            let err = o.stderr_str();
            assert!(
                err.contains("exit status 5: moat-vmm stopped by its seccomp filter"),
                "{err}"
            );
            let log = s.log();
            assert!(log.contains("syscall 59 (execve) on a vmm thread"), "{log}");
            s.ctr(&["container", "delete", "exe"]);

            // ptrace of the supervisor while a container runs: the task ends, with the reason.
            // 15 s after /init: a slow nested boot has its container running by then (at
            // 3 s, one CI run's attack came during StartContainer).
            arm(s, "ptrace@15000");
            s.run_detached("ptr", &["sleep", "600"]);
            s.wait_task_status("ptr", "RUNNING", Duration::from_secs(60));
            s.wait_task_status("ptr", "STOPPED", Duration::from_secs(60));
            let log = s.log();
            assert!(
                log.contains("syscall 101 (ptrace) on a vmm thread"),
                "{log}"
            );
            assert!(
                log.contains("moat-vmm stopped by its seccomp filter"),
                "{log}"
            );
            s.ctr_ok(&["task", "delete", "ptr"]);
            s.ctr_ok(&["container", "delete", "ptr"]);

            // /etc/shadow: the jail has none; the VMM goes on serving the pod.
            arm(s, "open-shadow");
            s.run_detached("shadow", &["sleep", "600"]);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !s
                .log()
                .contains("open-shadow returned -1: refused: No such file")
            {
                assert!(std::time::Instant::now() < deadline, "{}", s.log());
                std::thread::sleep(Duration::from_millis(200));
            }
            let o = s.ctr_ok(&["task", "exec", "--exec-id", "e1", "shadow", "echo", "alive"]);
            assert_eq!(o.stdout_str(), "alive\n");
            s.kill_and_delete("shadow", Duration::from_secs(30));
        })
    });
}
