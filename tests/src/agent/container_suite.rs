//! The container test flows, run against any agent: the fast rung (agent as PID 1 of fresh
//! host namespaces, `tests/agent_containers.rs`) and a real guest booted by moat-vmm
//! (`tests/guest_containers.rs`). Each flow removes what it creates.

use std::io::{Read, Write};
use std::path::PathBuf;

use moat_agent_protocol::stdio::{Channel, Channels};
use moat_agent_protocol::ttrpc::Code;
use moat_agent_protocol::{AgentClient, CreateOptions};
use serde_json::{json, Value};

use super::{containers, oci};

/// An agent to run the flows against, and the container root filesystem it can see.
pub struct Suite<'a> {
    /// The connected client.
    pub client: &'a AgentClient,
    /// The busybox root filesystem as the agent sees it.
    pub rootfs: PathBuf,
    /// The same directory as this process sees it (differs for a virtio-fs share).
    pub host_rootfs: PathBuf,
    /// A real guest (all uids mapped, cgroup v2) rather than host namespaces.
    pub real_guest: bool,
    /// Printed with a failure (e.g. the agent log).
    pub context: &'a dyn Fn() -> String,
}

impl Suite<'_> {
    /// containerd's default spec for `args` on the suite's root filesystem.
    pub fn spec(&self, args: &[&str]) -> Value {
        oci::default_spec(&self.rootfs, args)
    }

    /// Runs a container to completion.
    pub fn run(&self, id: &str, spec: &Value) -> containers::Outcome {
        containers::run(self.client, id, spec, None)
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", (self.context)()))
    }

    /// Creates and starts container `id` running `sleep 1000`, without stdio (a target for
    /// execs).
    pub fn start_sleeper(&self, id: &str) {
        let spec = self.spec(&["sleep", "1000"]).to_string();
        let c = self.client;
        c.create_container(id, &spec, Channels::default(), CreateOptions::default())
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", (self.context)()));
        c.start_container(id)
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", (self.context)()));
    }

    /// Runs `sh -c script` to completion.
    pub fn sh(&self, id: &str, script: &str) -> containers::Outcome {
        self.run(id, &self.spec(&["sh", "-c", script]))
    }
}

/// output exit codes and signals.
pub fn output_exit_codes_and_signals(s: &Suite) {
    let o = s.sh("c1", "echo out; echo err >&2; exit 3");
    assert_eq!(
        (o.out().as_str(), o.err().as_str(), o.status),
        ("out\n", "err\n", 3)
    );
    assert!(!o.signaled);

    // A signal death: 128 + signal, for init (SIGKILL) and for an exec (SIGTERM).
    let c = s.client;
    s.start_sleeper("c2");
    let pid = c
        .exec_process(
            "c2",
            "e1",
            &oci::default_process(&["sleep", "1000"]).to_string(),
            Channels::default(),
        )
        .unwrap();
    assert!(pid > 1);
    let pids = c.list_processes("c2").unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    c.signal_process("c2", "e1", 15, false).unwrap();
    let w = c.wait_process("c2", "e1", Some(containers::WAIT)).unwrap();
    assert_eq!((w.status, w.signaled), (143, true));
    // Waiting twice gives the same answer.
    assert_eq!(
        c.wait_process("c2", "e1", Some(containers::WAIT))
            .unwrap()
            .status,
        143
    );
    c.signal_process("c2", "", 9, false).unwrap();
    let w = c.wait_process("c2", "", Some(containers::WAIT)).unwrap();
    assert_eq!((w.status, w.signaled), (137, true));
    c.remove_container("c2", None).unwrap();
}

/// stdio is byte exact for 10 mib with stdin eof.
pub fn stdio_is_byte_exact_for_10_mib_with_stdin_eof(s: &Suite) {
    let data: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let o = containers::run(s.client, "cat", &s.spec(&["cat"]), Some(data.clone())).unwrap();
    assert_eq!(o.status, 0, "{}", o.err());
    assert_eq!(o.stdout.len(), data.len());
    assert!(o.stdout == data, "stdout differs from stdin");

    // stdout and stderr stay separate and ordered within each.
    let o = s.sh(
        "seq",
        "for i in $(seq 1 2000); do echo o$i; echo e$i >&2; done",
    );
    let want = |p: &str| (1..=2000).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(o.out(), want("o"));
    assert_eq!(o.err(), want("e"));
}

/// exec joins the container namespaces.
pub fn exec_joins_the_container_namespaces(s: &Suite) {
    let c = s.client;
    s.start_sleeper("box");
    let p = oci::default_process(&[
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline; echo; ls /bin/busybox; exit 7",
    ]);
    let o = containers::exec(c, "box", "x1", &p).unwrap();
    assert_eq!(o.status, 7, "{}", o.err());
    assert_eq!(o.out(), "moat-test\nsleep\u{0}1000\u{0}\n/bin/busybox\n");
    // A missing program is a clear error from ExecProcess, not a silent 127.
    let e = c
        .exec_process(
            "box",
            "x2",
            &oci::default_process(&["no-such-cmd"]).to_string(),
            Channels::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("executable file not found"), "{e}");
    c.remove_container("box", None).unwrap();
}

/// What a terminal process runs: its terminal's name (which must exist in the container's
/// own `/dev/pts`), its window size, its open fds (nothing may leak in), then, after the host
/// resized the window and sent a line, the size again and the line.
const TTY_SCRIPT: &str = "tty; test -c \"$(tty)\" && echo char-device; stty size; \
                          echo fds $(ls /proc/self/fd); read x; stty size; echo got:$x";

/// A terminal process (`id`/`exec_id`, registered, running `TTY_SCRIPT` once `start` is
/// called) sized 30x90: checks its terminal, resizes it to 40x100, checks the rest and that
/// it exits 0.
fn tty_session(s: &Suite, id: &str, exec_id: &str, start: impl FnOnce()) {
    let c = s.client;
    let fail = |what: &str| -> String { format!("{id}/{exec_id}: {what}\n{}", (s.context)()) };
    let mut input = c.open_stdio(id, exec_id, Channel::Stdin).unwrap();
    let mut output = c.open_stdio(id, exec_id, Channel::Stdout).unwrap();
    output.set_read_timeout(Some(containers::WAIT)).unwrap();
    start();
    // Up to the fd list: the resize must come after the first `stty size`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let text = |raw: &[u8]| String::from_utf8_lossy(raw).replace("\r\n", "\n");
    while !text(&raw)
        .split_once("fds ")
        .is_some_and(|(_, t)| t.contains('\n'))
    {
        let n = output
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{}", fail(&format!("{e} after {:?}", text(&raw)))));
        assert!(n > 0, "{}", fail(&format!("EOF after {:?}", text(&raw))));
        raw.extend_from_slice(&buf[..n]);
    }
    let head = text(&raw);
    let lines: Vec<&str> = head.lines().collect();
    let pts = lines[0].strip_prefix("/dev/pts/").unwrap_or_default();
    assert!(pts.parse::<u32>().is_ok(), "{}", fail(&head));
    assert_eq!(
        lines[1..],
        ["char-device", "30 90", "fds 0 1 2 3"],
        "{}",
        fail(&head)
    );
    c.tty_win_resize(id, exec_id, 40, 100).unwrap();
    input.write_all(b"hello\n").unwrap();
    output.read_to_end(&mut raw).unwrap();
    let out = text(&raw);
    let w = c.wait_process(id, exec_id, Some(containers::WAIT)).unwrap();
    assert_eq!(w.status, 0, "{}", fail(&out));
    assert!(out.ends_with("\n40 100\ngot:hello\n"), "{}", fail(&out));
}

/// A terminal (init process and exec): the pty is the container's own (`tty` names a
/// `/dev/pts/N` that exists there), sized by a resize before start or `process.consoleSize`,
/// resized live, and no fd leaks in.
pub fn tty_with_resize(s: &Suite) {
    let c = s.client;
    let mut spec = s.spec(&["sh", "-c", TTY_SCRIPT]);
    spec["process"]["terminal"] = json!(true);
    let ch = Channels {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    c.create_container("tty", &spec.to_string(), ch, CreateOptions::default())
        .unwrap();
    c.tty_win_resize("tty", "", 30, 90).unwrap();
    tty_session(s, "tty", "", || c.start_container("tty").unwrap());
    c.remove_container("tty", None).unwrap();

    // An exec'd terminal process gets its pty from the container's devpts too.
    s.start_sleeper("ttyx");
    let mut p = oci::default_process(&["sh", "-c", TTY_SCRIPT]);
    p["terminal"] = json!(true);
    p["consoleSize"] = json!({"height": 30, "width": 90});
    c.exec_process("ttyx", "t1", &p.to_string(), ch).unwrap();
    tty_session(s, "ttyx", "t1", || {});
    c.remove_container("ttyx", None).unwrap();

    // Without a devpts on /dev/pts there is no terminal to allocate: a clear error.
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["type"] != "devpts");
    let e = c
        .create_container("ttyn", &spec.to_string(), ch, CreateOptions::default())
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(Code::INVALID_ARGUMENT), "{e}");
    assert!(e.to_string().contains("needs devpts on /dev/pts"), "{e}");
}

/// seccomp capabilities readonly and masked paths.
pub fn seccomp_capabilities_readonly_and_masked_paths(s: &Suite) {
    seccomp_profiles(s);
    capabilities_readonly_and_masked_paths(s);
}

/// No profile (unfiltered, or moat's default when asked), and a profile of the spec's.
fn seccomp_profiles(s: &Suite) {
    // No seccomp in the spec: no filter, as under runc; creating a user namespace works ...
    let probe = "grep ^Seccomp: /proc/self/status; unshare -U true && echo allowed || echo denied";
    let o = s.sh("sc1", probe);
    assert_eq!(o.out(), "Seccomp:\t0\nallowed\n", "{}", o.err());
    // ... and is refused by moat's default profile when the shim asks for it for such specs.
    let default = CreateOptions {
        default_seccomp: true,
        ..CreateOptions::default()
    };
    let o = containers::run_with(
        s.client,
        "sc2",
        &s.spec(&["sh", "-c", probe]),
        None,
        default,
    )
    .unwrap_or_else(|e| panic!("sc2: {e}\n{}", (s.context)()));
    assert_eq!(o.out(), "Seccomp:\t2\ndenied\n", "{}", o.err());
    // A profile that denies mkdir with EACCES.
    let mut spec = s.spec(&["sh", "-c", "mkdir /tmp/d 2>&1; echo rc=$?"]);
    spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    let out = s.run("sc3", &spec).out();
    assert!(
        out.contains("Permission denied") && out.contains("rc=1"),
        "{out}"
    );
}

/// Dropped capabilities, read-only and masked paths.
fn capabilities_readonly_and_masked_paths(s: &Suite) {
    // A dropped capability is gone: without CAP_DAC_OVERRIDE root cannot read a 000 file;
    // with it, it can.
    let script = "echo x > /tmp/f; chmod 000 /tmp/f; cat /tmp/f >/dev/null 2>&1 && echo read || echo refused; \
                  grep CapEff /proc/self/status";
    let mut spec = s.spec(&["sh", "-c", script]);
    let caps: Vec<&str> = oci::DEFAULT_CAPS
        .iter()
        .copied()
        .filter(|c| *c != "CAP_DAC_OVERRIDE")
        .collect();
    spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    let out = s.run("cap1", &spec).out();
    assert!(out.starts_with("refused\n"), "{out}");
    let capeff = u64::from_str_radix(out.trim().rsplit('\t').next().unwrap(), 16).unwrap();
    assert_eq!(
        capeff & 2,
        0,
        "CAP_DAC_OVERRIDE (bit 1) still effective: {out}"
    );
    assert!(s.sh("cap2", script).out().starts_with("read\n"));

    // Read-only and masked paths.
    std::fs::create_dir_all(s.host_rootfs.join("ro")).unwrap();
    std::fs::write(s.host_rootfs.join("secret.txt"), "top secret").unwrap();
    let mut spec = s.spec(&["sh", "-c",
        "echo x > /ro/f 2>&1 || echo ro-refused; echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo sys-refused; \
         echo [$(cat /secret.txt)]; echo [$(cat /proc/kcore | wc -c)]"]);
    spec["linux"]["readonlyPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/ro"));
    spec["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/secret.txt"));
    let out = s.run("paths", &spec).out();
    assert!(
        out.contains("ro-refused") && out.contains("sys-refused"),
        "{out}"
    );
    assert!(out.contains("[]\n[0]"), "{out}");
}

/// bad specs get clear errors and leave nothing.
pub fn bad_specs_get_clear_errors_and_leave_nothing(s: &Suite) {
    let c = s.client;
    let bad = |id: &str, spec: Value, want: &str| {
        let e = c
            .create_container(
                id,
                &spec.to_string(),
                Channels::default(),
                CreateOptions::default(),
            )
            .expect_err(id);
        assert_eq!(e.rpc_code(), Some(Code::INVALID_ARGUMENT), "{id}: {e}");
        assert!(e.to_string().contains(want), "{id}: {e}");
    };
    let mut sp = s.spec(&["true"]);
    sp["root"]["path"] = json!("/no/such/rootfs");
    bad("b1", sp, "/no/such/rootfs");
    let mut sp = s.spec(&["true"]);
    sp["linux"]["namespaces"][1] = json!({"type": "ipc", "path": "/proc/999999/ns/ipc"});
    bad("b2", sp, "does not exist");
    let mut sp = s.spec(&["true"]);
    sp["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"});
    bad("b3", sp, "SCMP_ACT_BOGUS");
    let mut sp = s.spec(&["true"]);
    sp["process"]["rlimits"] =
        json!([{"type": "RLIMIT_NOFILE", "soft": 1u64 << 40, "hard": 1u64 << 40}]);
    bad("b4", sp, "nr_open");
    let e = c
        .create_container(
            "b5",
            "{not json",
            Channels::default(),
            CreateOptions::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("bad OCI spec"), "{e}");
    let e = c
        .create_container(
            "../x",
            &s.spec(&["true"]).to_string(),
            Channels::default(),
            CreateOptions::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("invalid container id"), "{e}");
    // The ids are free again: nothing was registered.
    let o = s.sh("b1", "echo fine");
    assert_eq!(o.out(), "fine\n");
    // Streams for unknown processes are refused.
    assert!(c.open_stdio("nope", "", Channel::Stdout).is_err());
}

/// User, groups, cwd, env, rlimits, OOM score and sysctls of the process reach it.
pub fn process_attributes(s: &Suite) {
    let mut sp = s.spec(&[
        "sh",
        "-c",
        "pwd; echo $GREETING; ulimit -n; cat /proc/self/oom_score_adj; \
         cat /proc/sys/kernel/shmmni; id",
    ]);
    sp["process"]["cwd"] = json!("/tmp");
    sp["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("GREETING=hi there"));
    sp["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]);
    sp["process"]["oomScoreAdj"] = json!(500);
    sp["linux"]["sysctl"] = json!({"kernel.shmmni": "1234"});
    let mut want = "/tmp\nhi there\n321\n500\n1234\n".to_string();
    if s.real_guest {
        // Only a real guest maps other uids; the fast rung's user namespace maps root only.
        sp["process"]["user"] = json!({"uid": 65534, "gid": 65534, "additionalGids": [1234]});
        want.push_str("uid=65534(nobody) gid=65534(nobody) groups=1234\n");
    } else {
        want.push_str("uid=0(root) gid=0(root)\n");
    }
    let o = s.run("attrs", &sp);
    assert_eq!(o.out(), want, "{}", o.err());
}

/// A container in its own user namespace: the spec's uid/gid maps reach `/proc/self/uid_map`
/// and `gid_map`, its root is root only there, and an exec joins the same maps.
pub fn user_namespace_with_id_maps(s: &Suite) {
    // A real guest maps every uid; the fast rung's own user namespace maps root only.
    let (host, size) = if s.real_guest {
        (100_000, 65_536)
    } else {
        (0, 1)
    };
    let show = "cat /proc/self/uid_map /proc/self/gid_map; id -u";
    let mut sp = s.spec(&["sleep", "1000"]);
    let map = json!([{"containerID": 0, "hostID": host, "size": size}]);
    sp["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    sp["linux"]["uidMappings"] = map.clone();
    sp["linux"]["gidMappings"] = map;
    let want = format!("0 {host} {size}\n0 {host} {size}\n0\n");
    let words = |t: &str| -> String {
        t.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
            .collect()
    };
    let c = s.client;
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("userns: {e}\n{}", (s.context)()) };
    c.create_container(
        "userns",
        &sp.to_string(),
        Channels::default(),
        CreateOptions::default(),
    )
    .unwrap_or_else(|e| fail(&e));
    c.start_container("userns").unwrap_or_else(|e| fail(&e));
    let p = oci::default_process(&["sh", "-c", show]);
    let o = containers::exec(c, "userns", "maps", &p).unwrap_or_else(|e| fail(&e));
    assert_eq!(words(&o.out()), want, "exec: {}", o.err());
    c.remove_container("userns", None)
        .unwrap_or_else(|e| fail(&e));
}

/// Every flow, in order (one agent, one VM).
pub fn all(s: &Suite) {
    output_exit_codes_and_signals(s);
    stdio_is_byte_exact_for_10_mib_with_stdin_eof(s);
    exec_joins_the_container_namespaces(s);
    tty_with_resize(s);
    seccomp_capabilities_readonly_and_masked_paths(s);
    bad_specs_get_clear_errors_and_leave_nothing(s);
    process_attributes(s);
    user_namespace_with_id_maps(s);
}
