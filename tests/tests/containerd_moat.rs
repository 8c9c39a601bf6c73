//! The product path end to end: a real containerd 1.6 runs `io.containerd.moat.v2`
//! (`containerd-shim-moat-v2`), which boots a moat microVM per pod; driven with `ctr` the way
//! a user would. Runs in the test host (nested KVM) unless this machine has hardware KVM.
//! After each flow nothing of moat may be left: no process, no mount, no pod directory.

use std::time::Duration;

use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::moat_stack::{with_stack, with_stack_tuned};

/// How many fresh test hosts a flow may use when the guest crashes (see
/// `moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 4;
/// The Kata Containers runtime name, which moat also answers to.
const KATA_RUNTIME: &str = "io.containerd.kata.v2";

/// `ctr run --rm`: output, exit codes, stdin byte-exact, a signal death.
#[test]
fn ctr_run_rm() {
    moat_tests::on_kvm_retrying("ctr_run_rm", ATTEMPTS, || {
        with_stack(|s| {
            let t = std::time::Instant::now();
            let o = s.run_rm(
                "hello",
                &["sh", "-c", "echo hello from a microVM; exit 3"],
                None,
            );
            println!("ctr run --rm (boot + run + teardown): {:?}", t.elapsed());
            assert_eq!(
                o.stdout_str(),
                "hello from a microVM\n",
                "{}\n{}",
                o.stderr_str(),
                s.log()
            );
            assert_eq!(o.code(), Some(3), "{}", o.stderr_str());
            s.assert_no_leftovers();

            let data: Vec<u8> = (0..1024 * 1024u32)
                .map(|i| (i * 7 + i / 251) as u8)
                .collect();
            let o = s.run_rm("cat", &["cat"], Some(&data));
            assert!(
                o.stdout == data,
                "stdin echo differs ({} bytes back): {}",
                o.stdout.len(),
                o.stderr_str()
            );
            assert_eq!(o.code(), Some(0));

            // A signal death from outside (PID 1 of the container ignores its own SIGKILL).
            std::thread::scope(|sc| {
                let run = sc.spawn(|| s.run_rm("sig", &["sleep", "600"], None));
                s.wait_task_status("sig", "RUNNING", Duration::from_secs(60));
                s.ctr_ok(&["task", "kill", "-s", "SIGKILL", "sig"]);
                let o = run.join().unwrap();
                assert_eq!(o.code(), Some(137), "{}", o.stderr_str());
            });
            let o = s.run_rm("err", &["sh", "-c", "echo oops >&2; exit 1"], None);
            assert_eq!((o.stderr_str().as_str(), o.code()), ("oops\n", Some(1)));
        })
    });
}

/// `ctr run -d` then task exec/ps/metrics/pause/resume/kill/delete.
#[test]
fn ctr_task_lifecycle() {
    moat_tests::on_kvm_retrying("ctr_task_lifecycle", ATTEMPTS, || {
        with_stack(|s| {
            s.run_detached("box", &["sh", "-c", "while true; do sleep 1; done"]);
            let o = s.ctr_ok(&[
                "task",
                "exec",
                "--exec-id",
                "e1",
                "box",
                "sh",
                "-c",
                "echo in the box; hostname",
            ]);
            assert!(
                o.stdout_str().starts_with("in the box\n"),
                "{}",
                o.stderr_str()
            );
            let o = s.ctr(&[
                "task",
                "exec",
                "--exec-id",
                "e2",
                "box",
                "sh",
                "-c",
                "exit 7",
            ]);
            assert_eq!(o.code(), Some(7));
            let o = s.ctr_ok(&["task", "ps", "box"]);
            assert!(
                o.stdout_str().lines().count() >= 2,
                "task ps: {}",
                o.stdout_str()
            );
            let o = s.ctr_ok(&["task", "metrics", "box"]);
            let m = o.stdout_str();
            assert!(
                m.contains("pids.current") || m.contains("memory.usage"),
                "metrics: {m}"
            );
            s.ctr_ok(&["task", "pause", "box"]);
            let o = s.ctr_ok(&["task", "ls"]);
            assert!(o.stdout_str().contains("PAUSED"), "{}", o.stdout_str());
            s.ctr_ok(&["task", "resume", "box"]);
            let o = s.ctr_ok(&["task", "ls"]);
            assert!(o.stdout_str().contains("RUNNING"), "{}", o.stdout_str());
            s.kill_and_delete("box", Duration::from_secs(30));
        })
    });
}

/// `ctr run --rm -t` on a pty of 31x97: the container's stdio is a terminal (a
/// `/dev/pts/N` of the container's own devpts, so `tty` names it) of that size, resized live
/// when the outer pty is (ctr's SIGWINCH → ResizePty); output arrives and the exit code
/// propagates.
#[test]
fn ctr_run_tty() {
    moat_tests::on_kvm_retrying("ctr_run_tty", ATTEMPTS, || {
        with_stack(|s| {
            // ctr may resize the pty only just after the start: wait for the size first.
            let script = "[ -t 0 ] && [ -t 1 ] && echo isatty; \
                echo \"fd0 $(readlink /proc/self/fd/0)\"; echo \"tty $(tty)\"; \
                [ -c \"$(tty)\" ] && echo tty-in-container; i=0; \
                while [ \"$(stty size)\" != '31 97' ] && [ $i -lt 100 ]; do \
                  sleep 0.1; i=$((i+1)); done; \
                echo \"size $(stty size)\"; \
                while [ \"$(stty size)\" = '31 97' ]; do sleep 0.1; done; \
                echo \"resized $(stty size)\"; exit 5";
            let args = [
                "run",
                "--rm",
                "-t",
                "--runtime",
                RUNTIME_ID,
                &s.image,
                "tty",
                "sh",
                "-c",
                script,
            ];
            let run = s.ctr_on_pty(&args, 31, 97);
            let out = run.wait_for("size ", Duration::from_secs(60));
            println!("ctr run -t: {out:?}");
            assert!(out.starts_with("isatty\nfd0 /dev/pts/"), "{out:?}");
            // `tty` (ttyname(0)) names the pty, which is the container's own: its init process
            // allocated it from the container's /dev/pts instance, as runc does.
            let tty = out
                .lines()
                .find_map(|l| l.strip_prefix("tty /dev/pts/"))
                .unwrap_or_else(|| panic!("tty printed no /dev/pts/N: {out:?}"));
            assert!(tty.parse::<u32>().is_ok(), "{out:?}");
            assert!(out.contains("\ntty-in-container\n"), "{out:?}");
            assert!(out.contains("size 31 97\n"), "{out:?}");
            run.resize(40, 120);
            run.wait_for("resized 40 120\n", Duration::from_secs(30));
            let o = run.finish(Duration::from_secs(30));
            assert_eq!(o.code(), Some(5), "{}", o.stdout_str());
        })
    });
}

/// Installed as `containerd-shim-kata-v2` (a symlink, as `runtime/install.sh` makes it), the
/// shim answers `--runtime io.containerd.kata.v2`.
#[test]
fn kata_runtime_name() {
    moat_tests::on_kvm_retrying("kata_runtime_name", ATTEMPTS, || {
        let shim = moat_tests::cargo_bin("containerd-shim-moat-v2");
        let scratch = tempfile::Builder::new()
            .prefix("moat-kata-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        std::os::unix::fs::symlink(&shim, dir.join("containerd-shim-kata-v2")).unwrap();
        let r = with_stack_tuned(
            // Only the kata name is on containerd's PATH, in front of the target dir.
            |o| o.extra_path.insert(0, dir.clone()),
            |s| {
                let o = s
                    .run_rm_with(KATA_RUNTIME, "kata", &["echo", "hello from kata"], None)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(o.stdout_str(), "hello from kata\n", "{}", o.stderr_str());
                assert_eq!(o.code(), Some(0));
                // No Kata is installed: it was moat that booted a VM for it.
                let log = std::fs::read_to_string(s.containerd.log_path()).unwrap();
                assert!(log.contains("pod kata: VM up"), "{}", s.log());
            },
        );
        drop(scratch);
        r
    });
}
