//! `moat-demo`: boots moat's default guest (guest-kernel/ vmlinux + the busybox test
//! initramfs) under moat-vmm and prints what the guest printed — inside the nested test host
//! when this machine has no hardware virtualization. The README's first command runs this.

use std::process::ExitCode;
use std::time::Duration;

use moat_tests::microvm::{boot_moat, default_image_for, BootSpec};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        eprintln!("usage: moat-demo");
        return ExitCode::from(2);
    }
    let image = match default_image_for("moat-demo") {
        Ok(i) => i,
        Err(code) => return code,
    };
    if moat_tests::needs_test_host() {
        eprintln!(
            "moat-demo: no hardware virtualization here; running inside the nested test host"
        );
    }
    moat_tests::main_on_kvm(&args, Duration::from_secs(180), || {
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let mut spec = BootSpec::new(image);
        spec.append = "-- hello".into();
        match boot_moat(&vmm, &spec) {
            Ok(run) if run.reached_init() => {
                for line in run.serial.lines().filter(|l| l.starts_with("hello from")) {
                    println!("{line}");
                }
                println!(
                    "moat-vmm exited {:?}; guest reached /init {:.0} ms after VMM start",
                    run.status,
                    run.metrics["guest_init_us"].as_u64().unwrap_or(0) as f64 / 1000.0
                );
                ExitCode::SUCCESS
            }
            Ok(run) => {
                eprintln!("moat-demo: the microVM failed\n{}", run.describe());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("moat-demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
