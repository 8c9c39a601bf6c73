//! The product path end to end: a real containerd 1.6 runs `io.containerd.moat.v2`
//! (`containerd-shim-moat-v2`), which boots a moat microVM per pod; driven with `ctr` the way
//! a user would. Runs in the test host (nested KVM) unless this machine has hardware KVM.
//! After each flow nothing of moat may be left: no process, no mount, no pod directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_tests::containerd::{sys, Containerd, ContainerdOptions, CtrOutput};
use moat_tests::microvm::GuestImage;
use moat_tests::oci_image;

/// Where the shim keeps pod state in these tests.
const STATE_DIR: &str = "/run/moat";
/// The runtime under test.
const RUNTIME: &str = "io.containerd.moat.v2";
/// How many fresh test hosts a flow may use when the guest crashes (see
/// `moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 4;

/// The moat config these tests use: the built moat-vmm, the cached guest kernel, the agent
/// image, 1 vCPU, 256 MiB.
fn write_config(dir: &Path) -> PathBuf {
    let kernel = moat_tests::kernel_path("guest").unwrap_or_else(|e| panic!("guest kernel: {e}"));
    let image = GuestImage::agent_image().unwrap_or_else(|e| panic!("agent image: {e}"));
    let path = dir.join("moat.toml");
    let toml = format!(
        "[vm]\nvmm = {:?}\nkernel = {:?}\ninitrd = {:?}\nvcpus = 1\nmemory_mib = 256\n\
         [runtime]\nstate_dir = {STATE_DIR:?}\nlog_level = \"debug\"\n",
        moat_tests::cargo_bin("moat-vmm"),
        kernel,
        image.initrd,
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// A private containerd that finds the shim (target dir on its PATH), with the busybox image
/// imported.
struct Stack {
    containerd: Containerd,
    image: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Stack {
    fn start() -> Stack {
        let dir = std::env::temp_dir().join(format!("moat-ctrd-{}", moat_tests::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = write_config(&dir);
        let shim = moat_tests::cargo_bin("containerd-shim-moat-v2");
        assert!(
            shim.is_file(),
            "{} is not built (cargo build -p moat-runtime)",
            shim.display()
        );
        let opts = ContainerdOptions {
            extra_path: vec![shim.parent().unwrap().to_path_buf()],
            env: vec![(
                OsString::from("MOAT_CONFIG"),
                config.clone().into_os_string(),
            )],
            moat_runtime_path: Some(shim),
            moat_config_path: Some(config),
            log_level: "debug".into(),
            ..Default::default()
        };
        let containerd = Containerd::start(opts).unwrap_or_else(|e| panic!("containerd: {e}"));
        let tar = dir.join("busybox.tar");
        let image = oci_image::build_busybox_image(&tar, oci_image::DEFAULT_BUSYBOX_IMAGE)
            .unwrap_or_else(|e| panic!("image: {e}"));
        containerd
            .import(&tar)
            .unwrap_or_else(|e| panic!("import: {e}"));
        Stack {
            containerd,
            image: image.name,
            _dir: tempdir::Dir(dir),
        }
    }

    fn ctr(&self, args: &[&str]) -> CtrOutput {
        self.containerd
            .ctr(args)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
    }

    fn ctr_ok(&self, args: &[&str]) -> CtrOutput {
        self.containerd
            .ctr_ok(args)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
    }

    /// `ctr run --rm --runtime moat IMAGE ID ARGS...` with `stdin`.
    fn run_rm(&self, id: &str, args: &[&str], stdin: Option<&[u8]>) -> CtrOutput {
        let mut all = vec!["run", "--rm", "--runtime", RUNTIME, &self.image, id];
        all.extend_from_slice(args);
        self.containerd
            .ctr_with(&all, stdin, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("ctr {all:?}: {e}"))
    }

    /// The shim's and containerd's log, for messages.
    fn log(&self) -> String {
        self.containerd.log_tail()
    }
}

/// Fails unless no moat process, mount or pod directory is left.
fn assert_no_leftovers(stack: &Stack) {
    // Teardown is synchronous in Delete/Shutdown, but containerd reaps its shims lazily.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let procs = moat_processes();
        let mounts = sys::mounts_under(Path::new(STATE_DIR));
        let dirs = pod_dirs();
        if procs.is_empty() && mounts.is_empty() && dirs.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "left behind: processes {procs:?}, mounts {mounts:?}, pod dirs {dirs:?}\n--- log ---\n{}",
                stack.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// moat-vmm and shim processes (not zombies).
fn moat_processes() -> Vec<String> {
    sys::list()
        .into_iter()
        .filter(|(pid, _, _)| sys::alive(*pid))
        .map(|(pid, _, argv)| {
            let argv: Vec<String> = argv
                .iter()
                .map(|a| String::from_utf8_lossy(a).into())
                .collect();
            format!("{pid}: {}", argv.join(" "))
        })
        .filter(|cmd| cmd.contains("moat-vmm") || cmd.contains("containerd-shim-moat"))
        .collect()
}

/// Pod directories under the state dir.
fn pod_dirs() -> Vec<PathBuf> {
    let Ok(nss) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    nss.flatten()
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

/// `Err` (retry in a fresh test host) when the log shows the guest crashed.
fn guest_crashed(stack: &Stack) -> Option<String> {
    let log = stack.log();
    log.lines()
        .find(|l| l.contains("guest crashed") || l.contains("triple fault"))
        .map(String::from)
}

/// Runs `flow` on a fresh stack, converting a panic after a guest crash into `Err`.
fn with_stack(flow: fn(&Stack)) -> Result<(), String> {
    let stack = Stack::start();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flow(&stack)));
    if let Err(p) = r {
        if let Some(why) = guest_crashed(&stack) {
            eprintln!("--- containerd log ---\n{}", stack.log());
            return Err(why);
        }
        eprintln!("--- containerd log ---\n{}", stack.log());
        std::panic::resume_unwind(p);
    }
    assert_no_leftovers(&stack);
    stack
        .containerd
        .stop()
        .unwrap_or_else(|e| panic!("stopping containerd: {e}"));
    Ok(())
}

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
            assert_no_leftovers(s);

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
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !s.ctr(&["task", "ls"]).stdout_str().contains("RUNNING") {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "sig never ran\n{}",
                        s.log()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
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
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !s.ctr_ok(&["task", "ls"]).stdout_str().contains("STOPPED") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "box never stopped\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            s.ctr_ok(&["task", "delete", "box"]);
            s.ctr_ok(&["container", "delete", "box"]);
        })
    });
}
