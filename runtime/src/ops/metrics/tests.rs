use moat_agent_protocol::agent::{CpuStats, IoStats, MemoryStats, PidsStats};

use super::*;

const VMM_FILE: &str = r#"{"vmm_start_monotonic_ns":1,"seq":4,"uptime_us":2500000,
  "first_kvm_run_us":30000,"guest_init_us":400000,"rss_excl_guest_kib":3000,
  "exit_reason":null,"phases_us":[["kvm_open",10]],
  "vcpu_exits":{"io_out":120,"hlt":7},
  "net":[{"backend":"tap:tap0","mac":"02:00:00:00:00:01","rx_frames":5,"tx_frames":6}],
  "vsock":{"rx_packets":9,"tx_bytes":100},
  "blk":[],"some_future_field":{"x":1}}"#;

fn figures() -> PodFigures {
    let mut stats = StatsContainerResponse::new();
    stats.cpu = Some(CpuStats {
        usage_usec: 1_500_000,
        ..Default::default()
    })
    .into();
    stats.memory = Some(MemoryStats {
        usage: 4096,
        limit: u64::MAX,
        events_oom_kill: 1,
        ..Default::default()
    })
    .into();
    stats.pids = Some(PidsStats {
        current: 3,
        limit: 0,
        ..Default::default()
    })
    .into();
    stats.io = vec![
        IoStats {
            rbytes: 10,
            wbytes: 1,
            ..Default::default()
        },
        IoStats {
            rbytes: 5,
            ..Default::default()
        },
    ];
    PodFigures {
        sandbox_id: "pod1".into(),
        namespace: "k8s.io".into(),
        size: (2, 512),
        boot: Some(Duration::from_millis(1500)),
        vmm: Some(VmmFigures::parse(VMM_FILE.as_bytes()).unwrap()),
        guest: Some(GuestFigures {
            mem_total_kib: 1000,
            mem_free_kib: 500,
            mem_available_kib: 700,
            load_milli: [250, 100, 0],
            procs: (1, 40),
        }),
        containers: vec![("c1".into(), stats)],
        sources: vec![("vmm", true), ("guest", true), ("containers", false)],
    }
}

#[test]
fn every_source_becomes_labelled_series() {
    let rpc = RpcMetrics::default();
    rpc.record("StatsContainer", Duration::from_millis(1), &Ok::<(), _>(()));
    let text = encode(&figures(), &rpc);
    let pod = "namespace=\"k8s.io\",sandbox_id=\"pod1\"";
    let want = [
        "# TYPE moat_vm_boot_seconds gauge".to_string(),
        "moat_vm_memory_bytes{".to_string(),
        format!("moat_vmm_vcpu_exits_total{{{pod},reason=\"io_out\"}}"),
        "moat_vmm_rss_excl_guest_bytes{".to_string(),
        format!("moat_vmm_net_rx_frames_total{{{pod},device=\"0\",backend=\"tap:tap0\",mac="),
        "moat_vmm_vsock_rx_packets_total{".to_string(),
        "moat_guest_memory_available_bytes{".to_string(),
        "moat_guest_load1{".to_string(),
        format!("moat_container_cpu_usage_seconds_total{{{pod},container_id=\"c1\"}} 1.5"),
        format!("moat_agent_rpcs_total{{{pod},method=\"StatsContainer\",result=\"ok\"}} 1"),
        format!("moat_scrape_source_ok{{{pod},source=\"containers\"}} 0"),
    ];
    for w in &want {
        assert!(text.contains(w.as_str()), "missing {w}:\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains(pod), "unlabelled: {line}");
    }
    assert!(text.contains(&format!(
        "moat_container_io_read_bytes_total{{{pod},container_id=\"c1\"}} 15"
    )));
    assert!(text.contains(&format!(
        "moat_guest_memory_available_bytes{{{pod}}} 716800"
    )));
    // No limit: no sample.
    assert!(
        !text.contains("moat_container_memory_limit_bytes{"),
        "{text}"
    );
    assert!(!text.contains("some_future_field"));
}

#[test]
fn missing_sources_leave_their_series_out() {
    let f = PodFigures {
        sandbox_id: "p".into(),
        namespace: "default".into(),
        size: (1, 256),
        sources: vec![("vmm", false)],
        ..Default::default()
    };
    let text = encode(&f, &RpcMetrics::default());
    assert!(
        !text.contains("moat_vmm_") && !text.contains("moat_guest_"),
        "{text}"
    );
    let ok = "moat_scrape_source_ok{namespace=\"default\",sandbox_id=\"p\",source=\"vmm\"} 0";
    assert!(text.contains(ok), "{text}");
}

#[test]
fn a_torn_or_hostile_vmm_file_is_an_error_not_a_panic() {
    assert!(VmmFigures::parse(&VMM_FILE.as_bytes()[..100]).is_err());
    let odd = r#"{"seq":1,"net":[{"rx_frames":-1,"Bad-Name":2,"mac":7}],"vsock":3}"#;
    let v = VmmFigures::parse(odd.as_bytes()).unwrap();
    let mut r = Registry::default();
    vmm::register(&mut r, &v);
    let mut t = String::new();
    text::encode(&mut t, &r).unwrap();
    assert!(!t.contains("Bad-Name") && !t.contains("rx_frames"), "{t}");
}
