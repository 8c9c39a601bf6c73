//! The product path end to end: a real containerd 1.6 runs `io.containerd.moat.v2`
//! (`containerd-shim-moat-v2`), which boots a moat microVM per pod; driven with `ctr` the way
//! a user would. Runs in the test host (nested KVM) unless this machine has hardware KVM.
//! After each flow nothing of moat may be left: no process, no mount, no pod directory.

use std::time::Duration;

use moat_tests::moat_stack::{with_stack, RUNTIME};

/// How many fresh test hosts a flow may use when the guest crashes (see
/// `moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 4;

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
            s.ctr_ok(&[
                "run",
                "-d",
                "--null-io",
                "--runtime",
                RUNTIME,
                &s.image,
                "box",
                "sh",
                "-c",
                "while true; do sleep 1; done",
            ]);
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
            s.ctr_ok(&["task", "kill", "-s", "SIGKILL", "box"]);
            s.wait_task_status("box", "STOPPED", Duration::from_secs(30));
            s.ctr_ok(&["task", "delete", "box"]);
            s.ctr_ok(&["container", "delete", "box"]);
        })
    });
}
