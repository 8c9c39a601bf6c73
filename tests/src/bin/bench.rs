//! `moat-bench`: boot benchmarks of moat-vmm against qemu's `microvm` machine booting the same
//! kernel and initramfs on the same KVM, in the same run (inside the test host unless the
//! machine has hardware KVM). Reports medians and moat/qemu ratios; asserts nothing.
//!
//! Then the agent: boots of the moat-agent image with vsock, timing moat-vmm spawn → first
//! successful `Health.Check` over hybrid vsock, as a ratio to the bare boot's spawn → /init.
//!
//! `moat-bench pod [RUNS]`: the whole stack through containerd against runc in the same run
//! (`moat_tests::bench::pod`): `ctr run --rm busybox true` wall time and the host memory (PSS)
//! of one idle pod, as moat/runc ratios.
//!
//! `moat-bench jail [BOOTS]`: the same boot (the bench's busybox image) with moat-vmm's jail and seccomp
//! filters on, and with neither (`--no-seccomp`, no `--jail`), interleaved: spawn → first
//! KVM_RUN, spawn → /init and the VMM's RSS without guest RAM, as on/off ratios.
//!
//! `moat-bench ops [SECONDS]`: the CPU the metrics path costs one idle pod
//! (`moat_tests::bench::ops`): SECONDS idle, then SECONDS scraping its ops socket once a
//! second; per scrape, and at a 15 s scrape interval as a fraction of one CPU and of the pod's
//! idle use.
//!
//! `moat-bench docker [RUNS]`: `docker run --rm busybox true` through Docker Engine 26 with
//! moat against runc, in the same run (`moat_tests::bench::docker`), as a moat/runc ratio.
//!
//! Usage: `moat-bench [BOOTS]` (default 10 of each, after one warm-up of each),
//! `moat-bench pod [RUNS]` (default 10), `moat-bench jail [BOOTS]` (default 10),
//! `moat-bench ops [SECONDS]` (default 30), `moat-bench docker [RUNS]` (default 10).

use std::process::ExitCode;
use std::time::Duration;

use moat_agent_protocol::{AgentClient, AGENT_VSOCK_PORT};
use moat_tests::bench::docker as docker_bench;
use moat_tests::bench::ops as ops_bench;
use moat_tests::bench::pod as pod_bench;
use moat_tests::bench::report::{self, median, ratio};
use moat_tests::containerd::moat_stack::Stack;
use moat_tests::guest::{
    boot_moat, boot_qemu, default_image_for, AgentVm, BootRun, BootSpec, GuestImage,
};

const USAGE: &str = "usage: moat-bench [BOOTS>0] | moat-bench pod [RUNS>0] | \
                     moat-bench jail [BOOTS>0] | moat-bench ops [SECONDS>0] | \
                     moat-bench docker [RUNS>0]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str);
    let named = matches!(mode, Some("pod" | "jail" | "ops" | "docker"));
    let count: u32 = match args.get(usize::from(named)).map(|a| a.parse()) {
        None if mode == Some("ops") => 30,
        None => 10,
        Some(Ok(n)) if n > 0 && args.len() <= 1 + usize::from(named) => n,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if mode == Some("pod") {
        let budget = Duration::from_secs(300 + u64::from(count) * 40);
        let body = |s: &Stack| pod_bench::run(s, count).map(drop);
        return moat_tests::main_on_kvm(&args, budget, || bench_stack("pod", body));
    }
    if mode == Some("docker") {
        let budget = Duration::from_secs(600 + u64::from(count) * 60);
        return moat_tests::main_on_kvm(&args, budget, || match docker_bench::run(count) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("moat-bench docker: {e}");
                ExitCode::FAILURE
            }
        });
    }
    if mode == Some("ops") {
        let budget = Duration::from_secs(600 + u64::from(count) * 3);
        let body = |s: &Stack| ops_bench::run(s, count).map(drop);
        return moat_tests::main_on_kvm(&args, budget, || bench_stack("ops", body));
    }
    let boots = count;
    let budget = Duration::from_secs(120 + u64::from(boots) * 30);
    let image = match default_image_for("moat-bench") {
        Ok(i) => i,
        Err(code) => return code,
    };
    if mode == Some("jail") {
        return moat_tests::main_on_kvm(&args, budget, || bench_jail(image, count));
    }
    let agent = match GuestImage::agent_image() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("moat-bench: {e} (build it with agent/build-image.sh)");
            return ExitCode::FAILURE;
        }
    };
    moat_tests::main_on_kvm(&args, budget, || match bench(image, boots) {
        Some(bare) => bench_agent(agent, boots, bare),
        None => ExitCode::FAILURE,
    })
}

fn collect(runs: &[BootRun], f: impl Fn(&BootRun) -> Option<u64>) -> Option<u64> {
    median(runs.iter().filter_map(f).collect())
}

fn ms(us: Option<u64>) -> String {
    report::ms(us, 2)
}

fn kib(v: Option<u64>) -> String {
    report::mib(v, 2)
}

/// `moat-bench MODE` on a private containerd with moat and runc (`pod`: [`pod_bench::run`],
/// `ops`: [`ops_bench::run`]): `body` on the stack, then nothing of its pods may be left.
fn bench_stack(mode: &str, body: impl FnOnce(&Stack) -> Result<(), String>) -> ExitCode {
    let result = Stack::start().and_then(|stack| {
        let r = body(&stack);
        let left = stack.leftovers();
        stack.stop()?;
        match left {
            Some(left) => Err(format!("the pods left behind: {left}")),
            None => r,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-bench {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The VMM benchmark; returns moat's median spawn -> /init marker (None after a failure).
fn bench(image: GuestImage, boots: u32) -> Option<u64> {
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let spec = BootSpec::new(image);
    let (mut moat, mut qemu) = (Vec::new(), Vec::new());
    let with_qemu = moat_tests::artifacts::find_on_path("qemu-system-x86_64").is_some();
    if !with_qemu {
        println!(
            "moat-bench: NOTE: qemu-system-x86_64 not found, so no qemu baseline and no ratios"
        );
    }
    // One warm-up each (page cache), then alternate so drift hits both alike.
    for i in 0..=boots {
        let q = match with_qemu {
            true => boot_qemu(&spec),
            false => Ok(BootRun::default()),
        };
        let (m, q) = match (boot_moat(&vmm, &spec), q) {
            (Ok(m), Ok(q)) => (m, q),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("moat-bench: {e}");
                return None;
            }
        };
        for (name, ok, run) in [
            ("moat", m.reached_init(), &m),
            ("qemu", !with_qemu || q.to_marker.is_some(), &q),
        ] {
            if !ok {
                eprintln!("moat-bench: {name} boot failed\n{}", run.describe());
                return None;
            }
        }
        if i > 0 {
            moat.push(m);
            if with_qemu {
                qemu.push(q);
            }
        }
    }
    print_boot_report(boots, &moat, &qemu)
}

/// Prints the medians of the measured boots; returns moat's median spawn -> /init marker.
fn print_boot_report(boots: u32, moat: &[BootRun], qemu: &[BootRun]) -> Option<u64> {
    let to_marker = |r: &BootRun| r.to_marker.map(|d| d.as_micros() as u64);
    let rss = |r: &BootRun| r.rss_kib_at_marker;
    let m_marker = collect(moat, to_marker);
    let q_marker = collect(qemu, to_marker);
    let m_rss = collect(moat, rss);
    let q_rss = collect(qemu, rss);
    println!(
        "moat-bench: {boots} boots each, medians (guest: 1 vCPU, 256 MiB, same kernel+initramfs)"
    );
    println!(
        "  moat-vmm spawn -> first KVM_RUN      {}",
        ms(collect(moat, BootRun::spawn_to_first_run_us))
    );
    println!(
        "  moat-vmm spawn -> /init (boot timer) {}",
        ms(collect(moat, BootRun::spawn_to_init_us))
    );
    println!(
        "  moat-vmm RSS without guest RAM       {}",
        kib(collect(moat, |r| r.metrics["rss_excl_guest_kib"].as_u64()))
    );
    println!(
        "  spawn -> /init marker on console:  moat {}  qemu {}  ratio moat/qemu {}",
        ms(m_marker),
        ms(q_marker),
        ratio(m_marker, q_marker)
    );
    println!(
        "  process RSS at /init (incl. guest): moat {}  qemu {}  ratio moat/qemu {}",
        kib(m_rss),
        kib(q_rss),
        ratio(m_rss, q_rss)
    );
    m_marker
}

/// Median spawn → first successful Check of the agent image, against the bare boot's median
/// spawn → /init measured just before.
fn bench_agent(image: GuestImage, boots: u32, bare_init_us: u64) -> ExitCode {
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let spec = BootSpec::new(image);
    let mut ready = Vec::new();
    for i in 0..=boots {
        let dir = match tempfile::Builder::new().prefix("moat-bench-").tempdir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("moat-bench: scratch dir: {e}");
                return ExitCode::FAILURE;
            }
        };
        let start = std::time::Instant::now();
        let mut vm = match AgentVm::start(&vmm, &spec, dir.path()) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("moat-bench: {e}");
                return ExitCode::FAILURE;
            }
        };
        let client =
            AgentClient::connect_hybrid_vsock(&vm.uds, AGENT_VSOCK_PORT, Duration::from_secs(90));
        let elapsed = start.elapsed().as_micros() as u64;
        vm.stop();
        if let Err(e) = client {
            eprintln!(
                "moat-bench: agent not reachable: {e}\n{}",
                vm.console_text()
            );
            return ExitCode::FAILURE;
        }
        if i > 0 {
            ready.push(elapsed);
        }
    }
    let ready = median(ready);
    println!(
        "  moat-vmm spawn -> agent answers Check over vsock: {}  ratio to bare /init {}",
        ms(ready),
        ratio(ready, Some(bare_init_us))
    );
    ExitCode::SUCCESS
}

/// One row of the jail report: what, how to read it from a boot, how to show it.
type JailRow = (
    &'static str,
    fn(&BootRun) -> Option<u64>,
    fn(Option<u64>) -> String,
);

/// `moat-bench jail`: jailed + filtered against neither, interleaved after a warm-up each.
fn bench_jail(image: GuestImage, boots: u32) -> ExitCode {
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..=boots {
        let jail = match tempfile::Builder::new().prefix("moat-jail-").tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("moat-bench: scratch dir: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut jailed = BootSpec::new(image.clone());
        jailed.extra_args = vec![format!("--jail={}", jail.path().display())];
        let mut bare = BootSpec::new(image.clone());
        bare.extra_args = vec!["--no-seccomp".into()];
        for (name, spec, runs) in [("jailed", &jailed, &mut on), ("bare", &bare, &mut off)] {
            match boot_moat(&vmm, spec) {
                Ok(r) if r.metrics["guest_init_us"].is_u64() => {
                    if i > 0 {
                        runs.push(r);
                    }
                }
                Ok(r) => {
                    eprintln!("moat-bench: {name} boot failed\n{}", r.describe());
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("moat-bench: {name}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!("moat-bench jail: {boots} boots each, medians (busybox image, 1 vCPU, 256 MiB)");
    let rows: [JailRow; 3] = [
        ("spawn -> first KVM_RUN", BootRun::spawn_to_first_run_us, ms),
        ("spawn -> /init (boot timer)", BootRun::spawn_to_init_us, ms),
        (
            "RSS without guest RAM",
            |r| r.metrics["rss_excl_guest_kib"].as_u64(),
            kib,
        ),
    ];
    for (what, f, show) in rows {
        let (a, b) = (collect(&on, f), collect(&off, f));
        println!(
            "  {what:<28} jail+seccomp {}  neither {}  ratio on/off {}",
            show(a),
            show(b),
            ratio(a, b)
        );
    }
    ExitCode::SUCCESS
}
