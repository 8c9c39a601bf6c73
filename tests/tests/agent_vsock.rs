//! moat-agent as the guest's PID 1, reached from the host over moat-vmm's hybrid vsock with
//! ttrpc: the whole host → VMM → guest kernel → agent path (inside the test host here).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_agent_protocol::health::ServingStatus;
use moat_agent_protocol::{AgentClient, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use moat_tests::microvm::GuestImage;

struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vm(image: &GuestImage, dir: &Path, vcpus: u8, memory_mib: u64) -> Vm {
    let vmm = moat_tests::cargo_bin("moat-vmm");
    let child = Command::new(vmm)
        .arg("--kernel")
        .arg(&image.kernel)
        .arg("--initrd")
        .arg(&image.initrd)
        .args(["--vcpus", &vcpus.to_string()])
        .args(["--memory-mib", &memory_mib.to_string()])
        .arg(format!("--vsock=3,{}", dir.join("vm.sock").display()))
        .arg(format!("--serial=file:{}", dir.join("console").display()))
        .arg("--metrics-file")
        .arg(dir.join("metrics.json"))
        .arg(format!("--share=moatfs={}", dir.join("share").display()))
        .arg("--append=moat.log=debug moat.share=moatfs")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn moat-vmm");
    Vm { child }
}

#[test]
fn agent_answers_over_hybrid_vsock() {
    let image = GuestImage::agent_image().unwrap_or_else(|e| panic!("agent image: {e}"));
    moat_tests::on_kvm("agent_answers_over_hybrid_vsock", || {
        // Unix sockets can't live on the test host's 9p shares: use its tmpfs /tmp.
        let dir = std::env::temp_dir().join(format!("moat-agent-{}", moat_tests::unique_suffix()));
        std::fs::create_dir_all(dir.join("share")).unwrap();
        let started = Instant::now();
        let mut vm = start_vm(&image, &dir, 2, 256);
        let uds = dir.join("vm.sock");
        let client =
            AgentClient::connect_hybrid_vsock(&uds, AGENT_VSOCK_PORT, Duration::from_secs(90))
                .unwrap_or_else(|e| {
                    let console = std::fs::read_to_string(dir.join("console")).unwrap_or_default();
                    panic!("agent not reachable: {e}\n--- guest console ---\n{console}")
                });
        let ready = started.elapsed();
        assert_eq!(
            client.check().unwrap(),
            ServingStatus::SERVING_STATUS_SERVING
        );
        let version = client.version().unwrap();
        assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(version.protocol_version, PROTOCOL_VERSION);
        let details = client.guest_details().unwrap();
        assert!(details.kernel_release.starts_with("6."), "{details:?}");
        assert_eq!(details.online_cpus, 2, "{details:?}");
        let mib = details.memory_total_bytes >> 20;
        assert!(
            (180..=256).contains(&mib),
            "MemTotal {mib} MiB of 256: {details:?}"
        );
        println!(
            "agent ready (first successful Check) {:.0} ms after moat-vmm spawn; guest {details:?}",
            ready.as_secs_f64() * 1000.0
        );

        // Stopping the VMM (as a shim would) tears the VM down and removes its socket.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
        let status = vm.child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + libc::SIGTERM));
        assert!(!uds.exists(), "vsock socket left behind");
        let console = std::fs::read_to_string(dir.join("console")).unwrap_or_default();
        assert!(console.contains("moat-agent:"), "{console}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
