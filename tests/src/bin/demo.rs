//! `moat-demo`: the README's main job. Starts a private containerd (Debian's 1.6) that knows
//! the `io.containerd.moat.v2` runtime (the built `containerd-shim-moat-v2`, the default guest
//! kernel and the moat-agent image), imports a locally built busybox image, and runs
//!
//! ```text
//! ctr run --rm --runtime io.containerd.moat.v2 docker.io/moat/busybox:latest demo \
//!     echo hello from a microVM
//! ```
//!
//! — one microVM booted for the container and torn down after it — then checks nothing of the
//! pod is left behind. Inside the nested test host when this machine has no hardware
//! virtualization.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::moat_stack::Stack;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        eprintln!("usage: moat-demo");
        return ExitCode::from(2);
    }
    if moat_tests::needs_test_host() {
        eprintln!(
            "moat-demo: no hardware virtualization here; running inside the nested test host"
        );
    }
    moat_tests::main_on_kvm(&args, Duration::from_secs(400), || match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-demo: {e}");
            ExitCode::FAILURE
        }
    })
}

fn run() -> Result<(), String> {
    let t = Instant::now();
    let stack = Stack::start()?;
    eprintln!(
        "moat-demo: containerd up with image {} ({:.1} s)",
        stack.image,
        t.elapsed().as_secs_f64()
    );
    let args = ["echo", "hello from a microVM"];
    eprintln!(
        "moat-demo: ctr run --rm --runtime {RUNTIME_ID} {} demo {}",
        stack.image,
        args.join(" ")
    );
    let out = stack.run_rm_with(RUNTIME_ID, "demo", &args, None)?;
    print!("{}", out.stdout_str());
    eprint!("{}", out.stderr_str());
    let result = match out.code() {
        Some(0) => {
            println!(
                "container exited 0; ctr run --rm (VM boot + run + teardown) took {:.2} s",
                out.elapsed.as_secs_f64()
            );
            Ok(())
        }
        code => Err(format!(
            "ctr run exited {code:?}\n--- containerd log ---\n{}",
            stack.log()
        )),
    };
    let left = stack.leftovers();
    stack.stop()?;
    match left {
        Some(left) => Err(format!("the pod left behind: {left}")),
        None => result,
    }
}
