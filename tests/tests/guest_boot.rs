//! The guest kernel (guest-kernel/, built from linux-source-6.12) boots under moat-vmm to
//! its /init: inside the nested test host here, directly on hardware KVM.
//!
//! The guest image is prepared on the host (the workspace is read-only inside the test host),
//! then each body runs where KVM works.

use moat_tests::guest::{boot_moat, BootSpec, GuestImage, INIT_MARKER};

fn image() -> GuestImage {
    GuestImage::default_image().unwrap_or_else(|e| panic!("guest image: {e}"))
}

#[test]
fn guest_kernel_boots_to_init_and_powers_off() {
    let image = image();
    moat_tests::on_kvm("guest_kernel_boots_to_init_and_powers_off", || {
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let run = boot_moat(&vmm, &BootSpec::new(image)).expect("boot");
        assert!(run.serial.contains(INIT_MARKER), "{}", run.describe());
        assert_eq!(run.status, Some(0), "{}", run.describe());
        let init_us = run.metrics["guest_init_us"]
            .as_u64()
            .unwrap_or_else(|| panic!("boot timer not recorded: {}", run.describe()));
        let first_us = run.metrics["first_kvm_run_us"].as_u64().expect("first run");
        assert!(first_us < init_us, "{}", run.describe());
        println!(
            "boot timer: guest reached /init {:.1} ms after VMM start (first KVM_RUN at {:.2} ms, \
             VMM RSS without guest RAM {} KiB)",
            init_us as f64 / 1000.0,
            first_us as f64 / 1000.0,
            run.metrics["rss_excl_guest_kib"]
        );
    });
}

#[test]
fn pid1_exit_is_reported_as_guest_panic() {
    let image = image();
    moat_tests::on_kvm("pid1_exit_is_reported_as_guest_panic", || {
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let mut spec = BootSpec::new(image);
        spec.append = "-- exit".into();
        let run = boot_moat(&vmm, &spec).expect("boot");
        assert!(run.serial.contains("exiting PID 1"), "{}", run.describe());
        assert_eq!(run.status, Some(3), "{}", run.describe());
        assert!(
            run.stderr.contains("guest kernel panicked"),
            "{}",
            run.describe()
        );
    });
}

#[test]
fn smp_guest_sees_its_cpus_memory_and_kvm_clock() {
    let image = image();
    moat_tests::on_kvm("smp_guest_sees_its_cpus_memory_and_kvm_clock", || {
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let mut spec = BootSpec::new(image);
        spec.vcpus = 2;
        spec.memory_mib = 512;
        spec.append = "-- info".into();
        let run = boot_moat(&vmm, &spec).expect("boot");
        assert_eq!(run.status, Some(0), "{}", run.describe());
        assert!(run.serial.contains("cpus=2"), "{}", run.describe());
        assert!(
            run.serial.contains("clocksource=kvm-clock"),
            "{}",
            run.describe()
        );
        let mem_kib: u64 = run
            .serial
            .lines()
            .find_map(|l| l.strip_prefix("mem=MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no MemTotal: {}", run.describe()));
        // MemTotal is RAM minus the kernel's own reservations: most of 512 MiB.
        assert!((400 << 10..=512 << 10).contains(&mem_kib), "{mem_kib} KiB");
    });
}
