//! Running a test (or a bench's `main`) where `/dev/kvm` boots ordinary guests at speed:
//! directly on hardware KVM, else re-run by name inside the [test host](super).
//!
//! [`on_kvm`] re-runs *this* test binary in the test host with `--exact <libtest name>`, so
//! the name passed must be the test's full libtest path ([`kvm_test!`](crate::kvm_test) and
//! [`test_path`] derive it from `module_path!()`).

use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Duration;

use super::kvm::{detect, test_host_forced, KvmKind, FORCE_TEST_HOST_ENV};
use super::retries;
use super::{shell_quote, RunOutput, TestHost, TestHostBuilder, TestHostError};

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
    !in_test_host() && (test_host_forced() || detect() != KvmKind::Hardware)
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

/// What L1's kernel prints when its clocksource watchdog rejects the TSC (seen under a
/// loaded TCG host: the jiffies it is checked against lag); a test that then fails, typically
/// on a nested guest's `sleep` that never returns, is run again in a fresh test host.
const L1_CLOCK_BROKEN: &str = "Marking TSC unstable";

/// [`on_kvm`] for tests whose guest may crash for reasons outside the test (the nested TCG
/// test host's L2 triple faults; at times the whole L1 dies with them): `body` returns
/// `Err(why)` when the guest crashed, and is run again — in a fresh test host — up to
/// `attempts` times. Every retry is counted ([`super::retries`]); any other failure fails at
/// once, except in a test host whose TSC was found unstable at boot (its console says
/// "Marking TSC unstable"). Only the
/// nested test host retries: on hardware KVM a guest crash is a dead pod, so it fails the
/// test.
pub fn on_kvm_retrying(test_name: &str, attempts: usize, body: impl Fn() -> Result<(), String>) {
    if !needs_test_host() {
        match body() {
            Ok(()) => return,
            Err(why) if in_test_host() => {
                eprintln!("\n!!! GUEST CRASH: {why}\n");
                std::process::exit(GUEST_CRASH_STATUS);
            }
            Err(why) => panic!(
                "{test_name}: the guest crashed on {:?} KVM: {why}",
                detect()
            ),
        }
    }
    for attempt in 1..=attempts {
        let why = match run_in_test_host(test_name, TestHost::builder()) {
            Ok(out) if out.status == GUEST_CRASH_STATUS => {
                print!("{}", out.stdout_str());
                eprint!("{}", out.stderr_str());
                retries::relay(&out.stdout_str());
                if let Some(dump) = retries::l1_crash_evidence(&out.console) {
                    eprintln!("--- the test host's kernel at the L2 triple fault ---\n{dump}");
                }
                match retries::l1_crash_signature(&out.console) {
                    Some(sig) => format!("the guest crashed (see above); L1 saw: {sig}"),
                    None => "the guest crashed (see above)".to_owned(),
                }
            }
            Ok(out) if out.status != 0 && out.console.contains(L1_CLOCK_BROKEN) => {
                print!("{}", out.stdout_str());
                eprint!("{}", out.stderr_str());
                retries::relay(&out.stdout_str());
                format!(
                    "the test failed in a test host whose kernel found its TSC unstable at \
                     boot (\"{L1_CLOCK_BROKEN}\": L1's timekeeping fell back to jiffies, and \
                     nested guests' timers stall)"
                )
            }
            Ok(out) => return check_test_host_output(test_name, &out),
            Err(e @ (TestHostError::NoStatus { .. } | TestHostError::Frozen { .. })) => {
                format!("the test host itself died: {e}")
            }
            Err(e) => {
                panic!("on_kvm({test_name}): running the test in the moat test host failed:\n{e}")
            }
        };
        if attempt == attempts {
            panic!("{test_name}: the guest crashed in all {attempts} attempts; last: {why}");
        }
        retries::record(test_name, &format!("attempt {attempt}/{attempts}: {why}"));
    }
}

/// Runs this test binary's `test_name` inside a test host built from `host`.
fn run_in_test_host(test_name: &str, host: TestHostBuilder) -> Result<RunOutput, TestHostError> {
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
        script.extend_from_slice(&shell_quote(arg));
        script.push(b' ');
    }
    let script = String::from_utf8(script).expect("on_kvm: test binary path is not UTF-8");
    host.run(&script)
}

/// Echoes a test-host run, counts the retries it reported, and panics unless it ran exactly
/// one test that passed.
fn check_test_host_output(test_name: &str, out: &RunOutput) {
    print!("{}", out.stdout_str());
    eprint!("{}", out.stderr_str());
    retries::relay(&out.stdout_str());
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
            script.extend_from_slice(&shell_quote(arg));
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
            retries::relay(&out.stdout_str());
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
    super::valid_env_name(k)
        && (EXACT.contains(&k) || PREFIX.iter().any(|p| k.starts_with(p)))
        && k != FORCE_TEST_HOST_ENV
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
    fn env_pass_through() {
        assert!(passes_through("MOAT_VMM_BIN"));
        assert!(passes_through("CARGO_TARGET_DIR"));
        assert!(passes_through("RUST_LOG"));
        assert!(!passes_through("MOAT_FORCE_TEST_HOST"));
        assert!(!passes_through("TMPDIR"));
    }
}
