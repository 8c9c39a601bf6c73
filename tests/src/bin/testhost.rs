//! `moat-testhost SCRIPT`: runs a shell script inside the nested-KVM test host (L1 Linux under
//! qemu TCG, host `/` visible read-only, `/tmp` and `/run` writable) and exits with its status.
//! For developers: try moat-vmm by hand where /dev/kvm can boot Linux.
//!
//! Env: `MOAT_TESTHOST_TIMEOUT` (seconds, default 600), `MOAT_TESTHOST_RW` (a directory to
//! mount read-write at the same path).

use std::process::ExitCode;
use std::time::Duration;

use moat_tests::TestHost;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [script] = args.as_slice() else {
        eprintln!("usage: moat-testhost 'SHELL SCRIPT'");
        return ExitCode::from(2);
    };
    let timeout = std::env::var("MOAT_TESTHOST_TIMEOUT")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(600);
    let mut builder = TestHost::builder().timeout(Duration::from_secs(timeout));
    if let Some(dir) = std::env::var_os("MOAT_TESTHOST_RW") {
        builder = builder.rw_dir(dir);
    }
    match builder.build().and_then(|h| h.run(script)) {
        Ok(out) => {
            print!("{}", out.stdout_str());
            eprint!("{}", out.stderr_str());
            ExitCode::from(u8::try_from(out.status).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("moat-testhost: {e}");
            ExitCode::FAILURE
        }
    }
}
