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
