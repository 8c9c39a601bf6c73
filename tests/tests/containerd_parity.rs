//! Containers behave under moat as under runc: the same probes, in the same image, with the
//! same `ctr run` flags, run under `io.containerd.runc.v2` (the baseline, Debian's runc) and
//! under moat in one stack, and their outputs are compared probe by probe.
//!
//! The probes: ids and groups, environment, working dir, umask, the spec's rlimit, hostname,
//! `/etc/hosts` and `/etc/resolv.conf`, capabilities / no_new_privs / seccomp mode, the
//! cgroup path, `oom_score_adj`, the `/dev` entries (type, mode, owner, device numbers), the
//! mount table (without `/`, whose filesystem is the runtime's own: overlay under runc, the
//! share in a VM), masked and read-only paths, PID 1; exit codes and the statuses of signalled
//! processes; the network devices (bridge, veth, dummy, macvlan, VLAN) and netfilter a
//! privileged container can use; a setuid-root binary in the image run by `nobody` (euid 0
//! unless no_new_privs is on, as under runc).
//!
//! A difference fails the test unless [`VM_INHERENT`] names the probe with the reason (the
//! kernel is the VM's own); those are printed with both outputs, so the table in the output
//! shows every probe. Runs in the test host (nested KVM) unless this machine has hardware KVM.
//! Needs the static `moat-share-attack` (`tests/scripts/build-guest-tools.sh`), whose
//! `whoami` prints the effective uid.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::moat_stack::{with_stack, Stack};
use moat_tests::containerd::oci_image::build_busybox_image_with_files;

/// Fresh test hosts the flow may use when the guest crashes (`moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 3;
/// The baseline runtime.
const RUNC: &str = "io.containerd.runc.v2";
/// The image: busybox plus a setuid-root `moat-share-attack`.
const IMAGE: &str = "docker.io/moat/parity:latest";
/// Where the setuid tool is in the image.
const SUID_TOOL: &str = "/bin/moat-suid";
/// The flags every probe run gets besides the runtime.
const FLAGS: [&str; 4] = ["--cwd", "/etc", "--env", "MOAT_PARITY=1"];

/// The probes of one container, each printed under a `== name` line.
const PROBES: &str = r#"
p() { echo "== $1"; }
p id; id
p env; env | sort
p cwd; pwd
p umask; umask
p nofile; ulimit -n; ulimit -Hn
p hostname; hostname
p etc-files; cat /etc/hosts /etc/resolv.conf 2>&1
p status; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status
p cgroup; cat /proc/self/cgroup
p oom-score-adj; cat /proc/self/oom_score_adj
p dev; for f in /dev/* /dev/pts/* /dev/shm /dev/mqueue; do stat -c '%n %F %a %u:%g %t:%T' "$f"; done
p mounts; awk '$2 != "/" {print $2, $3, $4}' /proc/self/mounts
p masked; for f in /proc/acpi /proc/asound /proc/kcore /proc/keys /proc/latency_stats \
    /proc/timer_list /proc/timer_stats /proc/sched_debug /proc/scsi /sys/firmware \
    /sys/devices/virtual/powercap; do
  if [ -d "$f" ] && [ -n "$(ls -A "$f" 2>/dev/null)" ]; then echo "$f visible";
  elif [ -f "$f" ] && [ -n "$(head -c 1 "$f" 2>/dev/null)" ]; then echo "$f visible";
  else echo "$f hidden"; fi; done
p read-only; for f in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger; do
  [ -e "$f" ] || { echo "$f absent"; continue; }
  awk -v f="$f" '$2 == f {split($4, o, ","); print f, o[1]}' /proc/self/mounts; done
p pid1; tr '\0' ' ' < /proc/1/cmdline; echo
p uname; uname -s -m
"#;

/// A privileged container's network devices and netfilter: what a node kernel has (the guest
/// kernel must carry it too).
const NETDEV_PROBE: &str = r#"
ip link add br0 type bridge && echo bridge ok
ip link add v0 type veth peer name v1 && echo veth ok
ip link add d0 type dummy && echo dummy ok
ip link add link d0 name mv0 type macvlan && echo macvlan ok
ip link add link d0 name vl5 type vlan id 5 && echo vlan ok
for f in /proc/sys/net/netfilter/nf_conntrack_max /proc/sys/net/bridge/bridge-nf-call-iptables \
    /proc/net/ip_tables_names; do [ -e $f ] && echo "$f ok"; done
true
"#;

/// Probes whose outputs may differ between runc and moat, and why: each is a property of the
/// kernel or its cgroup hierarchy, which in a VM are the guest's, not the host's.
const VM_INHERENT: [(&str, &str); 1] = [(
    "cgroup",
    "without a cgroup namespace (ctr's default spec) /proc/self/cgroup names the container's \
     cgroup in the guest's hierarchy (/moat/<id>), not the host's linux.cgroupsPath; with one \
     (CRI, Docker on cgroup v2) both show 0::/",
)];

/// One runtime's outputs: probe name -> output.
type Outputs = BTreeMap<String, String>;

#[test]
fn containers_behave_as_under_runc() {
    moat_tests::on_kvm_retrying("containers_behave_as_under_runc", ATTEMPTS, || {
        with_stack(|s| {
            import_image(s);
            let runc = run_probes(s, RUNC);
            let netdev = &runc["netdev"];
            assert!(
                netdev.contains("bridge ok"),
                "the baseline makes no bridge: {netdev}"
            );
            let setuid = (&runc["setuid"], &runc["setuid-nnp"]);
            assert!(
                setuid.0.contains("euid=0 ") && setuid.1.contains("euid=65534 "),
                "the baseline's setuid probes: {setuid:?}"
            );
            let moat = run_probes(s, RUNTIME_ID);
            println!("moat, netdev:\n{}", moat["netdev"]);
            let failed = compare(&runc, &moat);
            assert!(failed.is_empty(), "moat differs from runc in: {failed:?}");
        })
    });
}

/// Builds and imports [`IMAGE`]: busybox plus the setuid-root tool at [`SUID_TOOL`].
fn import_image(s: &Stack) {
    let tool = moat_tests::artifacts::share_attack_bin_path().unwrap_or_else(|e| panic!("{e}"));
    let suid = s.dir().join("moat-suid");
    std::fs::copy(&tool, &suid).unwrap_or_else(|e| panic!("copying {}: {e}", tool.display()));
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tar = s.dir().join("parity.tar");
    let files = [(SUID_TOOL.trim_start_matches('/'), suid.as_path())];
    build_busybox_image_with_files(&tar, IMAGE, &files)
        .unwrap_or_else(|e| panic!("parity image: {e}"));
    s.containerd
        .import(&tar)
        .unwrap_or_else(|e| panic!("importing the parity image: {e}"));
}

/// Every probe under `runtime`: the [`PROBES`] container, the exit codes and signals, the
/// privileged container's network devices.
fn run_probes(s: &Stack, runtime: &str) -> Outputs {
    let mut out = Outputs::new();
    let all = ctr_run(s, runtime, "probes", &[], &["sh", "-c", PROBES]);
    assert_eq!(all.0, 0, "{runtime}: the probes failed: {}", all.1);
    let mut name = String::from("(before the first probe)");
    for line in all.1.lines() {
        match line.strip_prefix("== ") {
            Some(n) => name = n.to_string(),
            None => {
                let text = out.entry(name.clone()).or_default();
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    exits(s, runtime, &mut out);
    setuid(s, runtime, &mut out);
    let (code, text) = ctr_run(
        s,
        runtime,
        "netdev",
        &["--privileged"],
        &["sh", "-c", NETDEV_PROBE],
    );
    out.insert("netdev".into(), format!("{text}exit code {code}\n"));
    out
}

/// The setuid-root tool run by `nobody`: with no_new_privs off (`--allow-new-privs`) it runs
/// with euid 0, with ctr's default (no_new_privs on) it does not; `whoami` prints the euid.
fn setuid(s: &Stack, runtime: &str, out: &mut Outputs) {
    let cmd = format!("{SUID_TOOL} whoami");
    let args = ["/bin/busybox", "su", "-s", "/bin/sh", "nobody", "-c", &cmd];
    for (probe, extra) in [
        ("setuid", &["--allow-new-privs"][..]),
        ("setuid-nnp", &[][..]),
    ] {
        let (code, text) = ctr_run(s, runtime, probe, extra, &args);
        println!("{runtime} {probe}: {}", text.trim());
        out.insert(probe.into(), format!("{text}exit code {code}\n"));
    }
}

/// Exit codes: the init process's own (`exit 7`), and of exec'd processes, as statuses and
/// signals (one container, so one VM, for all of them).
fn exits(s: &Stack, runtime: &str, out: &mut Outputs) {
    let (code, _) = ctr_run(s, runtime, "exit", &[], &["sh", "-c", "exit 7"]);
    out.insert("exit-7".into(), format!("exit code {code}\n"));
    let id = "parity-execs";
    let mut run = vec!["run", "-d", "--null-io", "--runtime", runtime];
    run.extend_from_slice(&[IMAGE, id, "sleep", "600"]);
    s.ctr_ok(&run);
    for (probe, script) in [
        ("exec-exit-3", "exit 3"),
        ("sigterm", "kill -TERM $$"),
        ("sigkill", "kill -KILL $$"),
        ("sigsegv", "kill -SEGV $$"),
    ] {
        let o = s.ctr(&["task", "exec", "--exec-id", probe, id, "sh", "-c", script]);
        let code = o
            .code()
            .unwrap_or_else(|| panic!("ctr task exec {probe} was killed"));
        out.insert(probe.into(), format!("exit code {code}\n"));
    }
    s.kill_and_delete(id, std::time::Duration::from_secs(60));
}

/// `ctr run --rm --runtime RUNTIME FLAGS EXTRA IMAGE ID ARGS`: its exit code and stdout
/// (stderr appended).
fn ctr_run(s: &Stack, runtime: &str, id: &str, extra: &[&str], args: &[&str]) -> (i32, String) {
    let id = format!("parity-{id}");
    let mut all = vec!["run", "--rm", "--runtime", runtime];
    all.extend_from_slice(&FLAGS);
    all.extend_from_slice(extra);
    all.extend_from_slice(&[IMAGE, &id]);
    all.extend_from_slice(args);
    let o = s.ctr(&all);
    let code = o.code().unwrap_or_else(|| panic!("ctr {all:?} was killed"));
    (code, format!("{}{}", o.stdout_str(), o.stderr_str()))
}

/// Prints the table and returns the probes that differ without a [`VM_INHERENT`] reason.
fn compare(runc: &Outputs, moat: &Outputs) -> Vec<String> {
    let mut failed = Vec::new();
    let names: std::collections::BTreeSet<&String> = runc.keys().chain(moat.keys()).collect();
    println!("{:<16} {:<10} note", "probe", "result");
    for name in names {
        let (r, m) = (runc.get(name), moat.get(name));
        let inherent = VM_INHERENT
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| *why);
        let verdict = match (r == m, inherent) {
            (true, _) => "same",
            (false, Some(_)) => "differs",
            (false, None) => "DIFFERS",
        };
        println!("{name:<16} {verdict:<10} {}", inherent.unwrap_or(""));
        if r != m {
            println!(
                "  runc:\n{}  moat:\n{}",
                indent(r.map_or("(none)\n", String::as_str)),
                indent(m.map_or("(none)\n", String::as_str))
            );
            if inherent.is_none() {
                failed.push(name.clone());
            }
        }
    }
    failed
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
