//! Helpers shared by the agent's unit tests.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use std::os::unix::fs::PermissionsExt;

use tempfile::TempDir;

/// A fresh directory `$TMPDIR/moat-<tag>-XXXXXX` (mode 0755), removed on drop.
pub(crate) fn tempdir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("moat-{tag}-"))
        .permissions(fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("creating a temp dir")
}

/// Test files in a [`TempDir`].
pub(crate) trait TempDirExt {
    /// Creates `name` (and its parent directories) with `content`.
    fn file(&self, name: &str, content: &str) -> PathBuf;
    /// The text of `name`.
    fn read(&self, name: &str) -> String;
}

impl TempDirExt for TempDir {
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path().join(name);
        fs::create_dir_all(p.parent().expect("a file name")).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path().join(name)).unwrap()
    }
}

/// Parses an OCI spec from JSON.
pub(crate) fn spec(json: &str) -> oci_spec::runtime::Spec {
    serde_json::from_str(json).expect("test spec JSON")
}

/// Runs the test `name` (its full libtest path) of this test binary again in a child process,
/// behind `wrapper` (e.g. `unshare ...`; empty: none) and with `env` set so the child knows
/// it is the child. For tests that must be alone in their process (they reap every child, or
/// change namespaces). Returns the child's exit status; panics unless it ran exactly one test
/// (a wrong name would otherwise run none and pass).
pub(crate) fn rerun_test(
    name: &str,
    wrapper: &[&str],
    env: (&str, &std::ffi::OsStr),
) -> ExitStatus {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = cmd
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .output()
        .unwrap_or_else(|e| panic!("re-running {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("running 1 test"),
        "re-running `--exact {name}` did not run exactly one test: is the name the full \
         libtest path?"
    );
    out.status
}
