//! moat's integration-test support, chiefly the nested-KVM **test host**.
//!
//! Real-VM tests wrap their body in [`on_kvm`] (or declare themselves with
//! [`kvm_test!`]): on a machine with hardware KVM the body runs directly;
//! elsewhere (PVM `/dev/kvm`, or none) the test binary re-runs that one test
//! inside an L1 Linux booted in qemu TCG with nested SVM (see [`testhost`]).

pub mod container_suite;
pub mod containerd;
pub mod containers;
pub mod cpio;
pub mod cri;
pub mod guards;
pub mod initramfs;
pub mod kvm_host;
pub mod live_ctr;
pub mod microvm;
pub mod moat_stack;
pub mod ns_agent;
pub mod oci;
pub mod oci_image;
pub mod pod_bench;
pub mod report;
pub mod testhost;
pub mod tsc;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use kvm_host::{detect, KvmKind};
pub use testhost::{RunOutput, TestHost, TestHostBuilder, TestHostError};

/// Set to `1` inside the test host: [`on_kvm`] then runs bodies directly.
pub const IN_TEST_HOST_ENV: &str = "MOAT_IN_TEST_HOST";
/// Overrides the per-test test-host timeout of [`on_kvm`], in seconds.
pub const TIMEOUT_ENV: &str = "MOAT_TEST_HOST_TIMEOUT_SECS";

/// Declares a `#[test]` whose body runs where KVM works, via [`on_kvm`];
/// the libtest name is derived from `module_path!()`, so it is right in
/// nested modules too.
///
/// ```ignore
/// moat_tests::kvm_test!(boots_a_guest, {
///     let vmm = moat_tests::cargo_bin("moat-vmm");
///     // ...
/// });
///
/// moat_tests::kvm_test! {
///     /// Attributes and docs are kept.
///     #[ignore = "slow"]
///     fn boots_two_guests() { /* ... */ }
/// }
/// ```
#[macro_export]
macro_rules! kvm_test {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() {
            $crate::on_kvm(
                &$crate::test_path(::std::module_path!(), ::std::stringify!($name)),
                || $body,
            )
        }
    };
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::on_kvm(
                &$crate::test_path(::std::module_path!(), ::std::stringify!($name)),
                || $body,
            )
        }
    };
}

/// The libtest name of test fn `name` declared in module `module_path`
/// (what `module_path!()` gives): the crate's own name is dropped, so
/// `testhost::boots` becomes `boots` and `testhost::net::ping` `net::ping`.
pub fn test_path(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, rest)) => format!("{rest}::{name}"),
        None => name.to_owned(),
    }
}

/// Whether this process runs inside the test host (`MOAT_IN_TEST_HOST=1`).
pub fn in_test_host() -> bool {
    std::env::var(IN_TEST_HOST_ENV).is_ok_and(|v| v == "1")
}

/// Whether [`on_kvm`] would re-run a test in the test host here (not in
/// it already, and KVM is not hardware or `MOAT_FORCE_TEST_HOST=1`).
pub fn needs_test_host() -> bool {
    !in_test_host() && (kvm_host::test_host_forced() || detect() != KvmKind::Hardware)
}

/// Runs `body` where `/dev/kvm` runs ordinary guests at speed.
///
/// Directly when `MOAT_IN_TEST_HOST=1` or KVM is hardware (unless
/// `MOAT_FORCE_TEST_HOST=1`); otherwise re-runs *this* test binary inside the
/// test host with `--exact <test_name>`, echoes its output, and panics if
/// it failed — or if the test host cannot run at all (never skips).
///
/// `test_name` must be the libtest name: for a top-level fn `bar` in
/// `tests/foo.rs` that is `bar`, in a module `m` it is `m::bar` (use
/// [`kvm_test!`] or [`test_path`] with `module_path!()` to get it right).
pub fn on_kvm(test_name: &str, body: impl FnOnce()) {
    on_kvm_with(test_name, TestHost::builder(), body)
}

/// [`on_kvm`] with a customised test host, e.g. extra read-write
/// directories or a longer timeout. Adds the cwd, a timeout unless the
/// builder has one (`$MOAT_TEST_HOST_TIMEOUT_SECS`, default 600 s), and
/// passes `MOAT_*`, `CARGO*`, `RUST*` and a few other env vars.
pub fn on_kvm_with(test_name: &str, host: TestHostBuilder, body: impl FnOnce()) {
    if !needs_test_host() {
        body();
        return;
    }
    let out = run_in_test_host(test_name, host).unwrap_or_else(|e| {
        panic!("on_kvm({test_name}): running the test in the moat test host failed:\n{e}")
    });
    check_test_host_output(test_name, &out);
}

/// Exit status of a test body inside the test host whose *guest* crashed (see
/// [`on_kvm_retrying`]).
pub const GUEST_CRASH_STATUS: i32 = 75;

/// [`on_kvm`] for tests whose guest may crash for reasons outside the test (the nested TCG
/// test host's L2 triple faults; at times the whole L1 dies with them): `body` returns
/// `Err(why)` when the guest crashed, and is run again — in a fresh test host — up to
/// `attempts` times. Every crash is printed loudly; any other failure fails at once.
pub fn on_kvm_retrying(test_name: &str, attempts: usize, body: impl Fn() -> Result<(), String>) {
    let crash = |attempt: usize, why: &str| {
        eprintln!("\n!!! GUEST CRASH in {test_name} (attempt {attempt}/{attempts}): {why}\n");
        if attempt == attempts {
            panic!("{test_name}: the guest crashed in all {attempts} attempts; last: {why}");
        }
    };
    for attempt in 1..=attempts {
        if !needs_test_host() {
            match body() {
                Ok(()) => return,
                Err(why) if in_test_host() => {
                    eprintln!("\n!!! GUEST CRASH: {why}\n");
                    std::process::exit(GUEST_CRASH_STATUS);
                }
                Err(why) => crash(attempt, &why),
            }
            continue;
        }
        match run_in_test_host(test_name, TestHost::builder()) {
            Ok(out) if out.status == GUEST_CRASH_STATUS => {
                print!("{}", out.stdout_str());
                eprint!("{}", out.stderr_str());
                crash(attempt, "the guest crashed (see above)");
            }
            Ok(out) => return check_test_host_output(test_name, &out),
            Err(e @ testhost::TestHostError::NoStatus { .. }) => {
                crash(attempt, &format!("the test host itself died: {e}"))
            }
            Err(e) => {
                panic!("on_kvm({test_name}): running the test in the moat test host failed:\n{e}")
            }
        }
    }
}

/// Runs this test binary's `test_name` inside a test host built from `host`.
fn run_in_test_host(
    test_name: &str,
    host: TestHostBuilder,
) -> Result<testhost::RunOutput, testhost::TestHostError> {
    let exe = std::env::current_exe().expect("on_kvm: cannot find the current test binary");
    let mut host = inherit_env(host);
    if !host.has_timeout() {
        let secs = std::env::var(TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        host = host.timeout(Duration::from_secs(secs));
    }
    let host = host.build().unwrap_or_else(|e| {
        panic!("on_kvm({test_name}): this machine's KVM is {:?}, so the test must run in the moat test host, which cannot start:\n{e}", detect())
    });
    let mut script = b"exec ".to_vec();
    for arg in [
        exe.as_os_str().as_bytes(),
        test_name.as_bytes(),
        b"--exact",
        b"--nocapture",
        b"--test-threads=1",
        b"--include-ignored",
    ] {
        script.extend_from_slice(&testhost::shell_quote(arg));
        script.push(b' ');
    }
    let script = String::from_utf8(script).expect("on_kvm: test binary path is not UTF-8");
    host.run(&script)
}

/// Echoes a test-host run and panics unless it ran exactly one test that passed.
fn check_test_host_output(test_name: &str, out: &testhost::RunOutput) {
    print!("{}", out.stdout_str());
    eprint!("{}", out.stderr_str());
    if out.status != 0 {
        panic!(
            "on_kvm({test_name}): the test failed inside the moat test host (exit status {}); \
             L1 console tail:\n{}",
            out.status,
            out.console_tail()
        );
    }
    if !out.stdout_str().contains("running 1 test") {
        panic!(
            "on_kvm({test_name}): inside the test host `--exact {test_name}` did not run exactly \
             one test; pass the full libtest name (e.g. via moat_tests::kvm_test! or test_path)"
        );
    }
}

/// [`on_kvm`] for a `main` (a bench or soak binary): runs `body` where KVM
/// works, else re-runs this executable with `args` (its arguments, without
/// argv\[0\]) in the test host under a `budget` timeout, echoes its
/// output and returns its exit status (failure if the test host can't run).
pub fn main_on_kvm(args: &[String], budget: Duration, body: impl FnOnce() -> ExitCode) -> ExitCode {
    if !needs_test_host() {
        return body();
    }
    let run = || -> Result<RunOutput, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut script = b"exec ".to_vec();
        for arg in
            std::iter::once(exe.as_os_str().as_bytes()).chain(args.iter().map(|a| a.as_bytes()))
        {
            script.extend_from_slice(&testhost::shell_quote(arg));
            script.push(b' ');
        }
        let script = String::from_utf8(script).map_err(|_| "exe path is not UTF-8".to_string())?;
        inherit_env(TestHost::builder())
            .timeout(budget)
            .build()
            .and_then(|h| h.run(&script))
            .map_err(|e| e.to_string())
    };
    match run() {
        Ok(out) => {
            print!("{}", out.stdout_str());
            eprint!("{}", out.stderr_str());
            ExitCode::from(u8::try_from(out.status).unwrap_or(1))
        }
        Err(e) => {
            eprintln!(
                "this machine's KVM is {:?}, so this runs in the moat test host, which failed:\n{e}",
                detect()
            );
            ExitCode::FAILURE
        }
    }
}

/// Adds `MOAT_IN_TEST_HOST=1`, the pass-through env vars and the cwd.
fn inherit_env(mut host: TestHostBuilder) -> TestHostBuilder {
    host = host.env(IN_TEST_HOST_ENV, "1");
    for (k, v) in std::env::vars_os() {
        if let Some(k) = k.to_str().filter(|k| passes_through(k)) {
            host = host.env(k, &v);
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        host = host.cwd(cwd);
    }
    host
}

/// Env vars [`on_kvm`] passes into the test host.
fn passes_through(k: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "NO_COLOR", "CI",
    ];
    const PREFIX: &[&str] = &["MOAT_", "CARGO", "RUST"];
    // Only names a shell can export (cargo sets e.g. `CARGO_BIN_EXE_moat-vmm`).
    testhost::valid_env_name(k)
        && (EXACT.contains(&k) || PREFIX.iter().any(|p| k.starts_with(p)))
        && k != kvm_host::FORCE_TEST_HOST_ENV
}

/// The workspace's root directory (where the top-level `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the
/// workspace root if relative), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// Path of the built kernel of `flavor` (`guest`, `test-host`): the file named by
/// `MOAT_GUEST_KERNEL` / `MOAT_TEST_HOST_KERNEL` if set, else what
/// `guest-kernel/build.sh --print-path <flavor>` prints (that never builds); the error
/// says what failed.
pub fn kernel_path(flavor: &str) -> Result<PathBuf, String> {
    let var = format!("MOAT_{}_KERNEL", flavor.to_uppercase().replace('-', "_"));
    cached_artifact(&var, "guest-kernel/build.sh", &[flavor])
}

/// Path of the moat-agent guest initramfs: `$MOAT_AGENT_INITRAMFS` if set, else what
/// `agent/build-image.sh --print-path` prints (build it with `agent/build-image.sh`).
pub fn agent_initramfs_path() -> Result<PathBuf, String> {
    cached_artifact("MOAT_AGENT_INITRAMFS", "agent/build-image.sh", &[])
}

/// Path of the static guest tool `moat-vsock-echo`: `$MOAT_VSOCK_ECHO_BIN` if set, else what
/// `tests/scripts/build-guest-tools.sh --print-path` prints (build it with that script).
pub fn vsock_echo_bin_path() -> Result<PathBuf, String> {
    cached_artifact(
        "MOAT_VSOCK_ECHO_BIN",
        "tests/scripts/build-guest-tools.sh",
        &[],
    )
}

/// A build output cached outside the clone: the file in `$env_var` if set, else the path
/// `<workspace>/<script> --print-path <args>` prints (such scripts never build in that mode).
fn cached_artifact(env_var: &str, script: &str, args: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => Err(format!("{env_var}={} does not exist", p.display())),
        };
    }
    let script = workspace_root().join(script);
    let shown = format!("{} --print-path {}", script.display(), args.join(" "));
    let out = Command::new(&script)
        .arg("--print-path")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().rev().map(str::trim).find(|l| !l.is_empty());
    match path {
        Some(p) if out.status.success() && Path::new(p).is_file() => Ok(PathBuf::from(p)),
        _ => Err(format!(
            "`{shown}` exited {} (stdout {:?}, stderr {:?}); build it by running the script \
             without --print-path",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A string unique within this process (a counter plus the time), for
/// naming scratch files and directories (add the pid for cross-process).
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A workspace binary that is not built (see [`try_cargo_bin`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "binary `{name}` not found (looked in: {}); build it with \
     `cargo build --release --bin {name}` (or set {env_var})",
    looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct BinMissing {
    /// The binary's name.
    pub name: String,
    /// The env var that overrides its path.
    pub env_var: String,
    /// The paths tried.
    pub looked: Vec<PathBuf>,
}

/// Finds built workspace binary `name`: the path in `$MOAT_<NAME>_BIN` if
/// set, else the one built with the caller's own profile (next to the running executable,
/// or one level up from a test's `deps/`), else the newer of `<target>/release/<name>` and
/// `<target>/debug/<name>`.
///
/// `<NAME>` is `name` upper-cased with `-` as `_` and without a `moat-`
/// prefix: `moat-vmm` uses `MOAT_VMM_BIN`, `foo-bar` `MOAT_FOO_BAR_BIN`.
pub fn try_cargo_bin(name: &str) -> Result<PathBuf, BinMissing> {
    let stem = name.strip_prefix("moat-").unwrap_or(name);
    let env_var = format!("MOAT_{}_BIN", stem.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&env_var).map(PathBuf::from) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BinMissing {
                name: name.into(),
                env_var,
                looked: vec![p],
            })
        };
    }
    let own_profile = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.ends_with("deps") {
            dir.parent()?
        } else {
            dir
        };
        Some(dir.join(name)).filter(|p| p.is_file())
    });
    if let Some(p) = own_profile {
        return Ok(p);
    }
    let looked: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|profile| target_dir().join(profile).join(name))
        .collect();
    let newest = looked
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone());
    newest.ok_or(BinMissing {
        name: name.into(),
        env_var,
        looked,
    })
}

/// [`try_cargo_bin`], panicking with its build instructions if missing.
pub fn cargo_bin(name: &str) -> PathBuf {
    try_cargo_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paths() {
        assert_eq!(test_path("testhost", "boots"), "boots");
        assert_eq!(test_path("testhost::net", "ping"), "net::ping");
        assert_eq!(test_path("moat_tests::a::b", "c"), "a::b::c");
    }

    #[test]
    fn workspace_layout() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("tests/Cargo.toml").is_file());
    }

    #[test]
    fn missing_bin_says_how_to_build() {
        let e = try_cargo_bin("moat-no-such-binary").unwrap_err();
        assert_eq!(e.env_var, "MOAT_NO_SUCH_BINARY_BIN");
        let msg = e.to_string();
        assert!(
            msg.contains("cargo build --release --bin moat-no-such-binary"),
            "{msg}"
        );
    }

    #[test]
    fn env_pass_through() {
        assert!(passes_through("MOAT_VMM_BIN"));
        assert!(passes_through("CARGO_TARGET_DIR"));
        assert!(passes_through("RUST_LOG"));
        assert!(!passes_through("MOAT_FORCE_TEST_HOST"));
        assert!(!passes_through("TMPDIR"));
    }
}
