//! Fast container tests: the real `moat-agent` as PID 1 of fresh user/pid/mount/net/uts/ipc
//! namespaces on this host, serving on a unix socket (no VM), driven by `AgentClient`.
//! What needs cgroup v2 (this host has v1) is covered by the real-guest tests.

use std::io::Write;
use std::time::Duration;

use moat_agent_protocol::stdio::{Channel, Channels};
use moat_agent_protocol::ttrpc::Code;
use moat_agent_protocol::AgentClient;
use moat_tests::containers::{self, Attached};
use moat_tests::ns_agent::NsAgent;
use moat_tests::oci;
use serde_json::{json, Value};

struct Fixture {
    agent: NsAgent,
    client: AgentClient,
    rootfs: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let agent = NsAgent::start(&moat_tests::cargo_bin("moat-agent")).expect("agent in namespaces");
    let client = agent
        .client(Duration::from_secs(20))
        .expect("agent serving");
    let rootfs = agent.dir().join("rootfs");
    oci::busybox_rootfs(&rootfs, std::path::Path::new("/bin/busybox")).expect("rootfs");
    Fixture {
        agent,
        client,
        rootfs,
    }
}

impl Fixture {
    fn spec(&self, args: &[&str]) -> Value {
        oci::default_spec(&self.rootfs, args)
    }

    fn run(&self, id: &str, spec: &Value) -> containers::Outcome {
        containers::run(&self.client, id, spec, None)
            .unwrap_or_else(|e| panic!("{id}: {e}\n--- agent log ---\n{}", self.agent.log()))
    }

    fn sh(&self, id: &str, script: &str) -> containers::Outcome {
        self.run(id, &self.spec(&["sh", "-c", script]))
    }

    /// The agent's children, once the reaper had a moment (empty = nothing left behind).
    fn agent_children(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.agent.agent_children();
            if c.is_empty() || std::time::Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn output_exit_codes_and_signals() {
    let f = fixture();
    let o = f.sh("c1", "echo out; echo err >&2; exit 3");
    assert_eq!(
        (o.out().as_str(), o.err().as_str(), o.status),
        ("out\n", "err\n", 3)
    );
    assert!(!o.signaled);

    // A signal death: 128 + signal, for init (SIGKILL) and for an exec (SIGTERM).
    let c = &f.client;
    c.create_container(
        "c2",
        &f.spec(&["sleep", "1000"]).to_string(),
        Channels::default(),
        false,
    )
    .unwrap();
    c.start_container("c2").unwrap();
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
    assert_eq!(
        f.agent_children(),
        Vec::<String>::new(),
        "processes left behind"
    );
}

#[test]
fn stdio_is_byte_exact_for_10_mib_with_stdin_eof() {
    let f = fixture();
    let data: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let o = containers::run(&f.client, "cat", &f.spec(&["cat"]), Some(data.clone())).unwrap();
    assert_eq!(o.status, 0, "{}", o.err());
    assert_eq!(o.stdout.len(), data.len());
    assert!(o.stdout == data, "stdout differs from stdin");

    // stdout and stderr stay separate and ordered within each.
    let o = f.sh(
        "seq",
        "for i in $(seq 1 2000); do echo o$i; echo e$i >&2; done",
    );
    let want = |p: &str| (1..=2000).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(o.out(), want("o"));
    assert_eq!(o.err(), want("e"));
}

#[test]
fn exec_joins_the_container_namespaces() {
    let f = fixture();
    let c = &f.client;
    c.create_container(
        "box",
        &f.spec(&["sleep", "1000"]).to_string(),
        Channels::default(),
        false,
    )
    .unwrap();
    c.start_container("box").unwrap();
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
    assert_eq!(f.agent_children(), Vec::<String>::new());
}

#[test]
fn tty_with_resize() {
    let f = fixture();
    let c = &f.client;
    let mut spec = f.spec(&["sh", "-c", "stty size; read x; echo got:$x"]);
    spec["process"]["terminal"] = json!(true);
    let ch = Channels {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    c.create_container("tty", &spec.to_string(), ch, false)
        .unwrap();
    c.tty_win_resize("tty", "", 40, 100).unwrap();
    let mut att = Attached::open(c, "tty", "", ch).unwrap();
    c.start_container("tty").unwrap();
    att.stdin().unwrap().write_all(b"hello\n").unwrap();
    let o = containers::finish(c, "tty", "", att).unwrap();
    let out = o.out();
    assert_eq!(o.status, 0, "{out}");
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("got:hello"), "{out:?}");
    c.remove_container("tty", None).unwrap();
}

#[test]
fn seccomp_capabilities_readonly_and_masked_paths() {
    let f = fixture();
    // Default profile (no seccomp in the spec): creating a user namespace is refused ...
    let o = f.sh("sc1", "unshare -U true && echo allowed || echo denied");
    assert_eq!(o.out(), "denied\n", "{}", o.err());
    // ... and allowed with an explicit unconfined profile.
    let mut spec = f.spec(&["sh", "-c", "unshare -U true && echo allowed || echo denied"]);
    spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
    assert_eq!(f.run("sc2", &spec).out(), "allowed\n");
    // A profile that denies mkdir with EACCES.
    let mut spec = f.spec(&["sh", "-c", "mkdir /tmp/d 2>&1; echo rc=$?"]);
    spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    let out = f.run("sc3", &spec).out();
    assert!(
        out.contains("Permission denied") && out.contains("rc=1"),
        "{out}"
    );

    // A dropped capability is gone: without CAP_DAC_OVERRIDE root cannot read a 000 file;
    // with it, it can.
    let script = "echo x > /tmp/f; chmod 000 /tmp/f; cat /tmp/f >/dev/null 2>&1 && echo read || echo refused; \
                  grep CapEff /proc/self/status";
    let mut spec = f.spec(&["sh", "-c", script]);
    let caps: Vec<&str> = oci::DEFAULT_CAPS
        .iter()
        .copied()
        .filter(|c| *c != "CAP_DAC_OVERRIDE")
        .collect();
    spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    let out = f.run("cap1", &spec).out();
    assert!(out.starts_with("refused\n"), "{out}");
    let capeff = u64::from_str_radix(out.trim().rsplit('\t').next().unwrap(), 16).unwrap();
    assert_eq!(
        capeff & 2,
        0,
        "CAP_DAC_OVERRIDE (bit 1) still effective: {out}"
    );
    assert!(f.sh("cap2", script).out().starts_with("read\n"));

    // Read-only and masked paths.
    std::fs::create_dir_all(f.rootfs.join("ro")).unwrap();
    std::fs::write(f.rootfs.join("secret.txt"), "top secret").unwrap();
    let mut spec = f.spec(&["sh", "-c",
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
    let out = f.run("paths", &spec).out();
    assert!(
        out.contains("ro-refused") && out.contains("sys-refused"),
        "{out}"
    );
    assert!(out.contains("[]\n[0]"), "{out}");
}

#[test]
fn bad_specs_get_clear_errors_and_leave_nothing() {
    let f = fixture();
    let c = &f.client;
    let bad = |id: &str, spec: Value, want: &str| {
        let e = c
            .create_container(id, &spec.to_string(), Channels::default(), false)
            .expect_err(id);
        assert_eq!(e.rpc_code(), Some(Code::INVALID_ARGUMENT), "{id}: {e}");
        assert!(e.to_string().contains(want), "{id}: {e}");
    };
    let mut s = f.spec(&["true"]);
    s["root"]["path"] = json!("/no/such/rootfs");
    bad("b1", s, "/no/such/rootfs");
    let mut s = f.spec(&["true"]);
    s["linux"]["namespaces"][1] = json!({"type": "ipc", "path": "/proc/999999/ns/ipc"});
    bad("b2", s, "does not exist");
    let mut s = f.spec(&["true"]);
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"});
    bad("b3", s, "SCMP_ACT_BOGUS");
    let mut s = f.spec(&["true"]);
    s["process"]["rlimits"] =
        json!([{"type": "RLIMIT_NOFILE", "soft": 1u64 << 40, "hard": 1u64 << 40}]);
    bad("b4", s, "nr_open");
    let e = c
        .create_container("b5", "{not json", Channels::default(), false)
        .unwrap_err();
    assert!(e.to_string().contains("bad OCI spec"), "{e}");
    let e = c
        .create_container(
            "../x",
            &f.spec(&["true"]).to_string(),
            Channels::default(),
            false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("invalid container id"), "{e}");
    assert_eq!(
        f.agent_children(),
        Vec::<String>::new(),
        "processes left behind"
    );
    // The ids are free again: nothing was registered.
    let o = f.sh("b1", "echo fine");
    assert_eq!(o.out(), "fine\n");
    // Streams for unknown processes are refused.
    assert!(c.open_stdio("nope", "", Channel::Stdout).is_err());
}
