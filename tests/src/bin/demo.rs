//! `moat-demo`: boots moat's default guest (guest-kernel/ vmlinux + the moat-agent initramfs)
//! under moat-vmm with a busybox root filesystem on a virtio-fs share, and runs
//! `echo hello from a microVM` in a container there through the agent — inside the nested
//! test host when this machine has no hardware virtualization. The README's first command
//! runs this.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use moat_agent_protocol::{AgentClient, AGENT_VSOCK_PORT};
use moat_tests::containers;
use moat_tests::microvm::{AgentVm, BootSpec, GuestImage};
use moat_tests::oci;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        eprintln!("usage: moat-demo");
        return ExitCode::from(2);
    }
    let image = match GuestImage::agent_image() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("moat-demo: {e}\n(run agent/build-image.sh and guest-kernel/build.sh guest)");
            return ExitCode::FAILURE;
        }
    };
    if moat_tests::needs_test_host() {
        eprintln!(
            "moat-demo: no hardware virtualization here; running inside the nested test host"
        );
    }
    moat_tests::main_on_kvm(&args, Duration::from_secs(300), || match run(image) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-demo: {e}");
            ExitCode::FAILURE
        }
    })
}

fn run(image: GuestImage) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("moat-demo-{}", moat_tests::unique_suffix()));
    let share = dir.join("share");
    oci::busybox_rootfs(&share.join("rootfs"), std::path::Path::new("/bin/busybox"))
        .map_err(|e| format!("building the busybox rootfs: {e}"))?;
    let mut spec = BootSpec::new(image);
    spec.extra_args = vec![format!("--share=pod={}", share.display())];
    spec.append = "moat.share=pod".into();
    let started = Instant::now();
    let mut vm = AgentVm::start(&moat_tests::cargo_bin("moat-vmm"), &spec, &dir)
        .map_err(|e| format!("starting moat-vmm: {e}"))?;
    let result = (|| {
        let client =
            AgentClient::connect_hybrid_vsock(&vm.uds, AGENT_VSOCK_PORT, Duration::from_secs(120))
                .map_err(|e| e.to_string())?;
        let ready = started.elapsed();
        let rootfs = std::path::Path::new("/run/moat/shares/pod/rootfs");
        let spec = oci::default_spec(rootfs, &["echo", "hello from a microVM"]);
        let t = Instant::now();
        let out = containers::run(&client, "demo", &spec, None).map_err(|e| e.to_string())?;
        print!("{}", out.out());
        eprint!("{}", out.err());
        println!(
            "container exited {}; agent ready {:.0} ms after moat-vmm start, container ran in {:.0} ms",
            out.status,
            ready.as_secs_f64() * 1000.0,
            t.elapsed().as_secs_f64() * 1000.0
        );
        if out.status == 0 {
            Ok(())
        } else {
            Err(format!("the container exited {}", out.status))
        }
    })();
    let stop = vm.stop();
    let console = vm.console_text();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| format!("{e}\nmoat-vmm: {stop:?}\n--- guest console ---\n{console}"))
}
