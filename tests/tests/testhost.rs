//! Self-tests of the nested-KVM test host (`moat_tests::testhost`) and of
//! `on_kvm`. They boot real L1 guests in qemu TCG (a few seconds each).

use std::path::Path;
use std::time::Duration;

use moat_tests::{kvm_test, KvmKind, TestHost, TestHostError};

/// `KVM_GET_API_VERSION` = `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

fn host() -> TestHost {
    TestHost::builder()
        .timeout(Duration::from_secs(240))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn test_host_runs_a_command() {
    let out = host()
        .run("echo hello; echo err >&2; uname -r; printf 'no newline\\0'; exit 7")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "boot to script: {:?}, whole run: {:?}",
        out.boot_time, out.elapsed
    );
    assert_eq!(out.status, 7, "console:\n{}", out.console_tail());
    let stdout = out.stdout_str();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("hello"));
    let release = lines.next().expect("uname -r output");
    assert!(
        out.console.contains(release),
        "L1 kernel {release} not in console"
    );
    assert!(out.stdout.ends_with(b"no newline\0"), "{stdout:?}");
    assert_eq!(out.stderr, b"err\n");
    assert!(out.console.contains("moat-testhost: running script"));
}

#[test]
fn test_host_has_nested_kvm() {
    let script = r#"
        set -e
        test -c /dev/kvm
        echo "npt=$(cat /sys/module/kvm_amd/parameters/npt)"
        echo "nested=$(cat /sys/module/kvm_amd/parameters/nested)"
        grep -qw svm /proc/cpuinfo && echo svm
        # Host binaries (dynamically linked, via 9p) work in the chroot.
        /usr/bin/env | grep -q '^MOAT_IN_TEST_HOST=1$' && echo env-ok
        ls / > /dev/null && echo ls-ok
        pwd
        # /tmp is a fresh writable tmpfs; the host root is read-only.
        echo x > /tmp/x && echo tmp-ok
        if touch /moat-should-fail 2>/dev/null; then echo root-rw; else echo root-ro; fi
        echo "greeting=$GREETING"
    "#;
    let out = TestHost::builder()
        .timeout(Duration::from_secs(240))
        .env("GREETING", "it's a 'quoted' value")
        .cwd(env!("CARGO_MANIFEST_DIR"))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .run(script)
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = out.stdout_str();
    assert_eq!(
        out.status,
        0,
        "stdout:\n{stdout}\nstderr:\n{}\nconsole:\n{}",
        out.stderr_str(),
        out.console_tail()
    );
    for want in [
        "npt=Y",
        "nested=1",
        "svm",
        "env-ok",
        "ls-ok",
        env!("CARGO_MANIFEST_DIR"),
        "tmp-ok",
        "root-ro",
        "greeting=it's a 'quoted' value",
    ] {
        assert!(
            stdout.lines().any(|l| l == want),
            "missing {want:?} in:\n{stdout}"
        );
    }
}

#[test]
fn test_host_rw_dir_is_shared() {
    let scratch = tempfile::Builder::new()
        .prefix("moat-rw-test-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    std::fs::write(dir.join("from-host"), b"host data").unwrap();
    let script = format!(
        "cd '{}' && cat from-host && echo guest-data > from-guest && mkdir sub && echo y > sub/f",
        dir.display()
    );
    let result = TestHost::builder()
        .timeout(Duration::from_secs(240))
        .rw_dir(dir)
        .build()
        .and_then(|h| h.run(&script));
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).ok();
    let (from_guest, sub) = (read("from-guest"), read("sub/f"));
    drop(scratch);
    let out = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 0, "stderr:\n{}", out.stderr_str());
    assert_eq!(out.stdout, b"host data");
    assert_eq!(from_guest.as_deref(), Some("guest-data\n"));
    assert_eq!(sub.as_deref(), Some("y\n"));
}

kvm_test!(on_kvm_round_trip, {
    // SAFETY: open(2) of a NUL-terminated literal path; the fd is checked below.
    let fd = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open /dev/kvm: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: KVM_GET_API_VERSION takes no argument and touches no memory of ours.
    let version = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION as _, 0) };
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    assert_eq!(version, 12, "KVM_GET_API_VERSION");
    // Where the machine's KVM is PVM, the body must run in L1, whose KVM
    // is kvm_amd (nested SVM), never on the PVM host itself.
    assert_ne!(moat_tests::detect(), KvmKind::Pvm);
    if moat_tests::in_test_host() {
        assert!(Path::new("/sys/module/kvm_amd").exists());
        println!("on_kvm body ran inside the test host");
    }
});

mod nested {
    moat_tests::kvm_test! {
        /// The macro's name derivation works in a nested module too.
        fn on_kvm_in_a_module() {
            assert!(std::path::Path::new("/dev/kvm").exists());
        }
    }
}

#[test]
fn test_host_reports_l1_failure() {
    // A missing /init makes L1 panic (panic=-1 reboots at once): no status.
    let err = TestHost::builder()
        .timeout(Duration::from_secs(120))
        .kernel_arg("rdinit=/no-such-init")
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .run("true")
        .expect_err("L1 without /init must fail");
    let TestHostError::NoStatus { console_tail, .. } = &err else {
        panic!("expected NoStatus, got {err}");
    };
    assert!(console_tail.contains("Kernel panic"), "{console_tail}");
    assert!(err.to_string().contains("last lines of the L1 console"));
}

#[test]
fn test_host_timeout_kills_qemu() {
    let started = std::time::Instant::now();
    // L1's heartbeat (what tells a frozen L1 from a hung script) changes while the script
    // sleeps, and what the script printed before it hung is in the error.
    let script = "hb=/run/moat-testhost/heartbeat; a=$(cat $hb); sleep 6; \
                  [ \"$a\" != \"$(cat $hb)\" ] && echo heartbeat-moves; sleep 600";
    let err = TestHost::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .run(script)
        .expect_err("sleep 600 must time out");
    assert!(started.elapsed() < Duration::from_secs(60));
    let TestHostError::Timeout {
        console_tail,
        script_tail,
        ..
    } = &err
    else {
        panic!("expected Timeout, got {err}");
    };
    assert!(
        console_tail.contains("moat-testhost: running script"),
        "{console_tail}"
    );
    assert!(script_tail.contains("heartbeat-moves"), "{script_tail}");
    // No qemu child of ours is left: our test process has no children.
    let me = std::process::id().to_string();
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // stat: "pid (comm) state ppid ..."; comm may contain spaces.
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
            after.split_whitespace().nth(1) == Some(me.as_str()) && stat.contains("(qemu-system")
        })
        .count();
    assert_eq!(children, 0, "qemu left running after a timeout");
}

/// Prints L1 boot time, run overhead and 9p read throughput (cold, then
/// page-cached). `cargo test -p moat-tests --test testhost -- --ignored
/// --nocapture test_host_timings`
#[test]
#[ignore = "benchmark; prints numbers"]
fn test_host_timings() {
    let dir = moat_tests::target_dir().join("moat-testhost");
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("bench-50M.bin");
    if std::fs::metadata(&big).map(|m| m.len()).ok() != Some(50 << 20) {
        std::fs::write(&big, vec![0x5au8; 50 << 20]).unwrap();
    }
    let out = host()
        .run(&format!(
            "dd if='{0}' of=/dev/null bs=1M 2>&1 | tail -n1; dd if='{0}' of=/dev/null bs=1M 2>&1 | tail -n1",
            big.display()
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 0, "{}", out.stderr_str());
    println!(
        "L1 boot to script start: {:?}; whole run(): {:?}\n9p reads (cold, cached):\n{}",
        out.boot_time,
        out.elapsed,
        out.stdout_str()
    );
}
