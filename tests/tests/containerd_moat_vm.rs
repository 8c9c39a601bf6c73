//! The pod VM's size and container limits through containerd: the sizing annotations a pod
//! carries (`moat.vm.vcpus`, `moat.vm.memory_mib`, CRI's `io.kubernetes.cri.sandbox-memory`)
//! size the VM the guest sees, bad ones are refused with the annotation named, and a
//! container's memory limit reaches the guest cgroup (ctr 1.6 has no `task update`; Update is
//! driven through CRI in `containerd_cri.rs`) and outgrowing it is reported as `TaskOOM`. Runs in the test host
//! unless this machine has hardware KVM; leak check after each flow.

use std::time::Duration;

use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::moat_stack::{with_stack, Stack};

/// Fresh test hosts a flow may use when the guest crashes (`moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 4;

/// `ctr run --rm` with `annotations`, printing `nproc` and MemTotal (KiB).
fn run_sized(s: &Stack, id: &str, annotations: &[&str]) -> (String, String, Option<i32>) {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME_ID];
    for a in annotations {
        args.extend(["--annotation", a]);
    }
    let script = "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo";
    args.extend([s.image.as_str(), id, "sh", "-c", script]);
    let o = s
        .containerd
        .ctr_with(&args, None, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"));
    (o.stdout_str(), o.stderr_str(), o.code())
}

/// `(vcpus, MemTotal MiB)` from [`run_sized`]'s output.
fn parse_size(out: &str) -> (u32, u64) {
    let mut lines = out.lines();
    let parse = |l: Option<&str>| l.and_then(|l| l.trim().parse::<u64>().ok());
    let (Some(cpus), Some(kib)) = (parse(lines.next()), parse(lines.next())) else {
        panic!("unexpected output {out:?}");
    };
    (cpus as u32, kib / 1024)
}

/// MemTotal is guest RAM minus what the kernel reserves: within 48 MiB below `mib`.
fn assert_memory_about(total_mib: u64, mib: u64) {
    assert!(
        total_mib <= mib && total_mib + 48 >= mib,
        "MemTotal {total_mib} MiB for a {mib} MiB VM"
    );
}

#[test]
fn vm_sizing_annotations() {
    moat_tests::on_kvm_retrying("vm_sizing_annotations", ATTEMPTS, || {
        with_stack(|s| {
            let (out, err, code) = run_sized(s, "base", &[]);
            assert_eq!(code, Some(0), "{err}");
            let (cpus, mib) = parse_size(&out);
            assert_eq!(cpus, 1);
            assert_memory_about(mib, moat_tests::containerd::moat_stack::VM_MEMORY_MIB);

            let (out, err, code) =
                run_sized(s, "sized", &["moat.vm.vcpus=2", "moat.vm.memory_mib=384"]);
            assert_eq!(code, Some(0), "{err}");
            let (cpus, mib) = parse_size(&out);
            assert_eq!(cpus, 2, "moat.vm.vcpus=2");
            assert_memory_about(mib, 384);

            // CRI's pod memory limit (containerd >= 1.7 sets it) adds to the base.
            let (out, err, code) =
                run_sized(s, "cri", &["io.kubernetes.cri.sandbox-memory=134217728"]);
            assert_eq!(code, Some(0), "{err}");
            assert_memory_about(
                parse_size(&out).1,
                moat_tests::containerd::moat_stack::VM_MEMORY_MIB + 128,
            );

            // Out of range: refused, named, nothing left behind.
            let (_, err, code) = run_sized(s, "huge", &["moat.vm.vcpus=99"]);
            assert_ne!(code, Some(0));
            assert!(err.contains("moat.vm.vcpus=99"), "stderr: {err}");
            s.assert_no_leftovers();
            let _ = s.ctr(&["container", "delete", "huge"]);
        })
    });
}

#[test]
fn memory_limit_reaches_the_guest_cgroup() {
    moat_tests::on_kvm_retrying("memory_limit_reaches_the_guest_cgroup", ATTEMPTS, || {
        with_stack(|s| {
            s.run_detached_with(&["--memory-limit", "134217728"], "upd", &["sleep", "600"]);
            assert_eq!(memory_limit(s, "upd"), Some(134217728));
            s.kill_and_delete("upd", Duration::from_secs(30));
            oom_kill_is_reported(s);
        })
    });
}

/// A container that outgrows its 32 MiB limit is OOM-killed in the guest: `ctr run` returns
/// 137 and the shim publishes `TaskOOM` (containerd forwards `/tasks/oom`).
fn oom_kill_is_reported(s: &Stack) {
    let limit = (32u64 << 20).to_string();
    let args = [
        "run",
        "--rm",
        "--runtime",
        RUNTIME_ID,
        "--memory-limit",
        &limit,
        &s.image,
        "oomer",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ];
    let o = s
        .containerd
        .ctr_with(&args, None, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"));
    assert_eq!(o.code(), Some(137), "not OOM-killed: {}", o.stderr_str());
    moat_tests::wait_until(
        "containerd forwards /tasks/oom",
        Duration::from_secs(30),
        || s.log_all().contains("topic=/tasks/oom"),
    );
}

/// `memory.usage_limit` from `ctr task metrics` (the guest cgroup's memory.max).
fn memory_limit(s: &Stack, id: &str) -> Option<u64> {
    let m = s.ctr_ok(&["task", "metrics", id]).stdout_str();
    m.lines()
        .find_map(|l| l.trim().strip_prefix("memory.usage_limit"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .or_else(|| panic!("no memory.usage_limit in metrics:\n{m}"))
}
