//! `moat-crash-ab`: is a guest crash moat-vmm's fault or the KVM's below it? Boots the same
//! guest kernel + initramfs running the same container-like workload (fork/exec, namespaces,
//! memory and FPU churn) RUNS times under moat-vmm and RUNS times under
//! `qemu-system-x86_64 -accel kvm -M microvm` (the same virtio-mmio disk and entropy devices),
//! interleaved, on the same KVM (inside the test
//! host unless the machine has hardware KVM), and prints the crash counts side by side with
//! each failed run's evidence (moat-vmm's vCPU state at the triple fault, qemu's reset dump,
//! the console's last lines). Exits non-zero if any run failed; asserts nothing else.
//!
//! Usage: `moat-crash-ab [RUNS] [VCPUS] [SECONDS]` (defaults: 40 runs of each, 2 vCPUs, a
//! 20 s workload). `MOAT_CRASH_AB_L1_LOAD=N` runs N fork/exec loops beside the VMs (in L1 when
//! in the test host), as a container-heavy host keeps the kernel below the guests busy.

use std::process::ExitCode;
use std::time::Duration;

use moat_tests::bench::crash_ab::{self, Arm, Outcome, Tally};

const USAGE: &str = "usage: moat-crash-ab [RUNS>0] [VCPUS>0] [SECONDS>0]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((runs, vcpus, secs)) = parse(&args) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if moat_tests::artifacts::find_on_path("qemu-system-x86_64").is_none() {
        eprintln!("moat-crash-ab: qemu-system-x86_64 is not on PATH: no baseline to compare with");
        return ExitCode::FAILURE;
    }
    let image = match crash_ab::workload_image() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("moat-crash-ab: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Two boots a run, each about the workload plus ~10 s of boot in the test host.
    let budget = Duration::from_secs(180 + u64::from(runs) * 2 * (u64::from(secs) + 15));
    moat_tests::main_on_kvm(&args, budget, || {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let disk = scratch.path().join("disk.img");
        crash_ab::write_disk(&disk).expect("writing the disk");
        let spec = crash_ab::workload_spec(image, vcpus, secs, &disk);
        let _load = crash_ab::HostLoad::from_env();
        ab(&spec, &disk, runs)
    })
}

/// `[RUNS] [VCPUS] [SECONDS]`, each positive, with their defaults.
fn parse(args: &[String]) -> Option<(u32, u8, u32)> {
    fn arg<T: std::str::FromStr + PartialOrd + Default>(a: Option<&String>, d: T) -> Option<T> {
        match a {
            None => Some(d),
            Some(s) => s.parse().ok().filter(|v| *v > T::default()),
        }
    }
    if args.len() > 3 {
        return None;
    }
    Some((
        arg(args.first(), 40)?,
        arg(args.get(1), 2)?,
        arg(args.get(2), 20)?,
    ))
}

fn ab(spec: &moat_tests::guest::BootSpec, disk: &std::path::Path, runs: u32) -> ExitCode {
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let mut tallies = [(Arm::Moat, Tally::default()), (Arm::Qemu, Tally::default())];
    println!(
        "moat-crash-ab: {runs} runs of each VMM, {} vCPU, {} MiB, `{}`",
        spec.vcpus, spec.memory_mib, spec.append
    );
    for i in 1..=runs {
        for (arm, tally) in tallies.iter_mut() {
            let (outcome, run) = match crash_ab::run_once(*arm, &vmm, spec, disk) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("moat-crash-ab: {}: {e}", arm.name());
                    return ExitCode::FAILURE;
                }
            };
            tally.add(outcome);
            println!("run {i:>3} {:<16} {}", arm.name(), outcome.name());
            if outcome != Outcome::Done {
                println!("{}", crash_ab::evidence(*arm, &run));
            }
        }
    }
    println!("{}", crash_ab::report(&tallies));
    if tallies.iter().all(|(_, t)| t.failures() == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
