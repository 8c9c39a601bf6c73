//! Test helpers of the host layer.

/// Runs the ignored test `child` (a path below the crate root, e.g. from `module_path!()`) in
/// a child process of this test binary inside a new user + mount namespace (root mapped to
/// the caller, mounts private), so its mounts never reach the host's table; fails unless the
/// child ran exactly one test and passed.
pub fn in_private_namespace(child: &str) {
    let child = child.trim_start_matches("moat_runtime::");
    let out = std::process::Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", child, "--include-ignored", "--nocapture"])
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("running 1 test"),
        "`--exact {child}` did not run exactly one test"
    );
    assert!(out.status.success(), "{child} failed: {}", out.status);
}

/// The mount points of this process's mount table (mountinfo's 5th field, unescaped).
pub fn mount_points() -> Vec<std::path::PathBuf> {
    super::mounts::mounts_under(std::path::Path::new("/")).unwrap()
}

/// A thread that atomically exchanges `a` and `b` (`renameat2(RENAME_EXCHANGE)`) until
/// stopped: the classic race against a path being set up (a directory swapped for a symlink).
pub struct Flipper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Flipper {
    /// Starts exchanging `a` and `b`.
    pub fn start(a: std::path::PathBuf, b: std::path::PathBuf) -> Flipper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut flips = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let flags = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
                nix::fcntl::renameat2(None, &a, None, &b, flags).unwrap();
                flips += 1;
            }
            flips
        });
        Flipper { stop, thread }
    }

    /// Stops it; returns how many exchanges it made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
