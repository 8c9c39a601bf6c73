//! moat-agent as the guest's PID 1, reached from the host over moat-vmm's hybrid vsock with
//! ttrpc: the whole host → VMM → guest kernel → agent path (inside the test host here), with
//! a virtio-fs share the agent mounts and virtio-rng (on by default).

use std::time::{Duration, Instant};

use moat_agent_protocol::health::ServingStatus;
use moat_agent_protocol::{AgentClient, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use moat_tests::guest::{AgentVm, BootSpec, GuestImage};

#[test]
fn agent_answers_over_hybrid_vsock() {
    let image = GuestImage::agent_image().unwrap_or_else(|e| panic!("agent image: {e}"));
    moat_tests::on_kvm("agent_answers_over_hybrid_vsock", || {
        // Unix sockets can't live on the test host's 9p shares: use its tmpfs /tmp.
        let scratch = tempfile::Builder::new()
            .prefix("moat-agent-")
            .tempdir()
            .unwrap();
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("share")).unwrap();
        let mut spec = BootSpec::new(image);
        spec.vcpus = 2;
        spec.extra_args = vec![format!("--share=moatfs={}", dir.join("share").display())];
        spec.append = "moat.log=debug moat.share=moatfs".into();
        let started = Instant::now();
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let mut vm = AgentVm::start(&vmm, &spec, dir).expect("start moat-vmm");
        let client =
            AgentClient::connect_hybrid_vsock(&vm.uds, AGENT_VSOCK_PORT, Duration::from_secs(90))
                .unwrap_or_else(|e| {
                    panic!(
                        "agent not reachable: {e}\n--- guest console ---\n{}",
                        vm.console_text()
                    )
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
        // The agent mounted the virtio-fs share named by `moat.share=` on the kernel cmdline.
        let shares: Vec<_> = details
            .shares
            .iter()
            .map(|s| (s.tag.as_str(), s.mount_point.as_str()))
            .collect();
        assert_eq!(
            shares,
            [("moatfs", "/run/moat/shares/moatfs")],
            "{details:?}"
        );
        println!(
            "agent ready (first successful Check) {:.0} ms after moat-vmm spawn",
            ready.as_secs_f64() * 1000.0
        );

        // Stopping the VMM (as a shim would) tears the VM down and removes its socket.
        assert_eq!(vm.stop(), Some(128 + libc::SIGTERM));
        assert!(!vm.uds.exists(), "vsock socket left behind");
        assert!(
            vm.console_text().contains("moat-agent:"),
            "{}",
            vm.console_text()
        );
    });
}
