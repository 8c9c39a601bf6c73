//! `moat-soak`: boots the default guest image N times in a row under moat-vmm (inside the
//! test host unless the machine has hardware KVM) and reports how many reached /init, with
//! min/median/max boot time. Exits non-zero if any boot failed.
//!
//! `moat-soak pods [ROUNDS] [PODS]`: the pod lifecycle soak through containerd
//! (`moat_tests::soak`): ROUNDS rounds of PODS pods at once (plain runs, exec and stop, VMM or
//! shim killed, containerd restarted under pods every few rounds), nothing left after each.
//!
//! Usage: `moat-soak [BOOTS] [VCPUS]` (defaults: 50 boots, 1 vCPU), `moat-soak pods [ROUNDS]
//! [PODS]` (defaults: 20 rounds, 3 pods).

use std::process::ExitCode;
use std::time::Duration;

use moat_tests::bench::report::min_median_max;
use moat_tests::containerd::moat_stack::Stack;
use moat_tests::guest::{boot_moat, default_image_for, BootSpec, GuestImage};
use moat_tests::soak;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "pods") {
        return pods(&args);
    }
    let boots: u32 = match args.first().map(|a| a.parse()) {
        None => 50,
        Some(Ok(n)) if n > 0 => n,
        _ => return usage(),
    };
    let vcpus: u8 = match args.get(1).map(|a| a.parse()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        _ => return usage(),
    };
    // About 6 s a boot in the test host, plus L1's own boot.
    let budget = Duration::from_secs(120 + u64::from(boots) * 20);
    let image = match default_image_for("moat-soak") {
        Ok(i) => i,
        Err(code) => return code,
    };
    moat_tests::main_on_kvm(&args, budget, || soak(image, boots, vcpus))
}

fn usage() -> ExitCode {
    eprintln!("usage: moat-soak [BOOTS>0] [VCPUS>0] | moat-soak pods [ROUNDS>0] [PODS>0]");
    ExitCode::from(2)
}

/// `moat-soak pods [ROUNDS] [PODS]`.
fn pods(args: &[String]) -> ExitCode {
    let num = |i: usize, default: usize| match args.get(i).map(|a| a.parse::<usize>()) {
        None => Some(default),
        Some(Ok(n)) if n > 0 => Some(n),
        _ => None,
    };
    let (Some(rounds), Some(pods), true) = (num(1, 20), num(2, 3), args.len() <= 3) else {
        return usage();
    };
    // About a minute a round in the test host, plus containerd's and L1's start.
    let budget = Duration::from_secs(300 + rounds as u64 * 60);
    moat_tests::main_on_kvm(args, budget, || {
        let mut stack = match Stack::start() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("moat-soak: {e}");
                return ExitCode::FAILURE;
            }
        };
        match soak::run(&mut stack, rounds, pods) {
            Ok(r) => {
                println!(
                    "soak: {} rounds, {} pods, {} containerd restarts, {} guest crashes, \
                     leaks 0; slowest round {:.1} s",
                    r.rounds,
                    r.pods,
                    r.restarts,
                    r.guest_crashes,
                    r.slowest_round.as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("moat-soak: {e}\n--- containerd log ---\n{}", stack.log());
                ExitCode::FAILURE
            }
        }
    })
}

fn soak(image: GuestImage, boots: u32, vcpus: u8) -> ExitCode {
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let mut spec = BootSpec::new(image);
    spec.vcpus = vcpus;
    let mut times = Vec::new();
    let mut failures = 0;
    for i in 1..=boots {
        let run = match boot_moat(&vmm, &spec) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("moat-soak: {e}");
                return ExitCode::FAILURE;
            }
        };
        match (run.reached_init(), run.metrics["guest_init_us"].as_u64()) {
            (true, Some(us)) => {
                times.push(us);
                println!("boot {i:>3}: /init after {:.1} ms", us as f64 / 1000.0);
            }
            _ => {
                failures += 1;
                println!("boot {i:>3}: FAILED\n{}", run.describe());
            }
        }
    }
    let ok = boots - failures;
    let summary = min_median_max(&mut times)
        .map(|(a, b, c)| {
            format!(
                "; boot-timer /init min/median/max = {:.0}/{:.0}/{:.0} ms",
                a as f64 / 1000.0,
                b as f64 / 1000.0,
                c as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    println!("soak: {ok}/{boots} reached /init ({vcpus} vCPU){summary}");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
