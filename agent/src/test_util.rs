//! Helpers shared by the agent's unit tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, uniquely named directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/moat-<tag>-<pid>-<n>`.
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("moat-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Creates `name` (and its parent directories) with `content`.
    pub(crate) fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::create_dir_all(p.parent().expect("a file name")).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    /// The text of `name`.
    pub(crate) fn read(&self, name: &str) -> String {
        fs::read_to_string(self.0.join(name)).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the test `name` (its full libtest path) of this test binary again in a child process,
/// behind `wrapper` (e.g. `unshare ...`; empty: none) and with `env` set so the child knows
/// it is the child. For tests that must be alone in their process (they reap every child, or
/// change namespaces). Returns the child's exit status.
pub(crate) fn rerun_test(
    name: &str,
    wrapper: &[&str],
    env: (&str, &std::ffi::OsStr),
) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = std::process::Command::new(prog);
            c.args(args).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .status()
        .unwrap_or_else(|e| panic!("re-running {name}: {e}"))
}
