use std::io::{Read, Seek, SeekFrom, Write};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use super::*;

const SMAPS: &str = "\
55d0c0000000-55d0c0010000 r-xp 00000000 fd:00 1 /usr/bin/moat-vmm
Size:                 64 kB
Rss:                  40 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:              100000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
";

#[test]
fn guest_ram_is_left_out() {
    assert_eq!(rss_excluding(SMAPS, &[]), 100_052);
    assert_eq!(rss_excluding(SMAPS, &[(0x7f00_0000_0000, 0x800_0000)]), 52);
}

#[test]
fn first_marks_win() {
    let m = Metrics::new();
    // Opens /proc/self/smaps (as Vmm::new does, before any jail drops /proc).
    m.set_guest_ranges(Vec::new());
    m.mark_first_kvm_run();
    let first = m.snapshot().first_kvm_run_us;
    std::thread::sleep(Duration::from_millis(2));
    m.mark_first_kvm_run();
    assert_eq!(m.snapshot().first_kvm_run_us, first);
    assert!(m.mark_guest_init());
    assert!(!m.mark_guest_init());
    assert!(m.snapshot().rss_excl_guest_kib.unwrap() > 0);
}

/// Metrics with one of every counter source registered and a few values counted.
fn with_every_source() -> Metrics {
    let m = Metrics::new();
    let (v0, v1) = (
        Arc::new(VcpuExitCounters::default()),
        Arc::new(VcpuExitCounters::default()),
    );
    v0.record(ExitKind::IoOut);
    v1.record(ExitKind::IoOut);
    v1.record(ExitKind::MmioRead);
    m.add_vcpu(v0);
    m.add_vcpu(v1);
    let net = Arc::new(NetCounters::default());
    bump(&net.rx_frames, 3);
    m.add_net("tap:tap0".into(), "02:00:00:00:00:01".into(), net);
    let blk = Arc::new(BlkCounters::default());
    bump(&blk.read_bytes, 4096);
    m.add_blk(blk);
    m.add_blk(Arc::new(BlkCounters::default()));
    let vsock = Arc::new(VsockCounters::default());
    bump(&vsock.connections_opened, 1);
    m.set_vsock(vsock);
    for n in [2, 5] {
        let fs = Arc::new(FsCounters::default());
        bump(&fs.requests, n);
        m.add_fs(fs);
    }
    let rng = Arc::new(RngCounters::default());
    bump(&rng.bytes, 64);
    m.set_rng(rng);
    m
}

#[test]
fn the_json_has_every_field() {
    let m = with_every_source();
    let json = serde_json::to_value(m.next_snapshot()).unwrap();
    for key in [
        "seq",
        "uptime_us",
        "vmm_start_monotonic_ns",
        "first_kvm_run_us",
        "guest_init_us",
        "rss_excl_guest_kib",
        "exit_reason",
        "phases_us",
        "vcpu_exits",
        "net",
        "blk",
        "vsock",
        "fs",
        "rng",
    ] {
        assert!(json.get(key).is_some(), "{key} missing: {json}");
    }
    assert_eq!(json["seq"], 1);
    let exits = json["vcpu_exits"].as_object().unwrap();
    let names: Vec<&str> = ExitKind::ALL.iter().map(|k| k.name()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(exits.keys().map(String::as_str).collect::<Vec<_>>(), sorted);
    assert_eq!(exits["io_out"], 2, "summed over the vCPUs");
    assert_eq!(exits["mmio_read"], 1);
    assert_eq!(exits["hlt"], 0);
    // The net counters stay fields of each device's object, next to its labels.
    assert_eq!(json["net"][0]["backend"], "tap:tap0");
    assert_eq!(json["net"][0]["rx_frames"], 3);
    assert_eq!(json["net"][0]["tx_bad_chains"], 0);
    assert_eq!(json["blk"].as_array().unwrap().len(), 2);
    assert_eq!(json["blk"][0]["read_bytes"], 4096);
    for key in ["reads", "writes", "write_bytes", "flushes", "errors"] {
        assert_eq!(json["blk"][1][key], 0, "{key}");
    }
    assert_eq!(json["vsock"]["connections_opened"], 1);
    assert_eq!(json["vsock"]["dropped_malformed"], 0);
    assert_eq!(json["fs"]["requests"], 7, "summed over the shares");
    assert_eq!(json["fs"]["write_bytes"], 0);
    assert_eq!(json["rng"]["bytes"], 64);
}

#[test]
fn devices_the_vm_lacks_are_null_or_empty() {
    let json = serde_json::to_value(Metrics::new().snapshot()).unwrap();
    for key in ["vsock", "fs", "rng", "exit_reason", "rss_excl_guest_kib"] {
        assert!(json[key].is_null(), "{key}: {json}");
    }
    assert_eq!(json["blk"], serde_json::json!([]));
    assert_eq!(json["vcpu_exits"]["io_in"], 0);
}

#[test]
fn seq_counts_flushes_and_uptime_grows() {
    let m = Metrics::new();
    m.set_guest_ranges(Vec::new());
    assert_eq!(m.snapshot().seq, 0);
    let first = m.next_snapshot();
    std::thread::sleep(Duration::from_millis(2));
    let second = m.next_snapshot();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert!(second.uptime_us > first.uptime_us);
    assert_eq!(m.snapshot().seq, 2, "a plain snapshot is no flush");
    // RSS is sampled at each flush, not only at /init.
    assert!(first.rss_excl_guest_kib.unwrap() > 0);
}

/// The file's whole content, read through `file` (an fd opened before the flushes).
fn content(file: &mut std::fs::File) -> String {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn a_flush_rewrites_the_file_in_place_and_truncates() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    std::fs::write(&path, "x".repeat(64 << 10)).unwrap();
    // A reader's fd opened before: it sees every flush, so the file was never replaced.
    let mut reader = std::fs::File::open(&path).unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let out = MetricsFile::from_file(writer);
    let m = with_every_source();
    let long = "x".repeat(4096);
    assert_eq!(out.flush(&m, Some(long.clone())).unwrap(), 1);
    let text = content(&mut reader);
    assert!(text.ends_with("}\n"), "one document and a newline");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (json["seq"].as_u64(), json["exit_reason"].as_str()),
        (Some(1), Some(&*long))
    );
    // A shorter document after a longer one: no tail of the old one is left.
    assert_eq!(out.flush(&m, None).unwrap(), 2);
    let text = content(&mut reader);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), text.len() as u64);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["seq"], 2);
    assert!(json["exit_reason"].is_null());
}

#[test]
fn open_empties_an_old_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"{\"seq\": 99}\n")
        .unwrap();
    let out = MetricsFile::open(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    out.write(&Metrics::new().snapshot()).unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"seq\": 0"));
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Runs `manager` until the file at `path` holds `seq` at least (5 s at most).
fn run_until_seq(manager: &mut EventManager<Subscriber>, path: &std::path::Path, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let now = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["seq"].as_u64());
        if now.is_some_and(|s| s >= seq) {
            return;
        }
        assert!(Instant::now() < deadline, "seq {now:?}, wanted {seq}");
        manager.run_with_timeout(50).unwrap();
    }
}

#[test]
fn the_flusher_writes_on_its_timer_and_on_request() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    let metrics = Arc::new(Metrics::new());
    let out = Arc::new(MetricsFile::open(&path).unwrap());
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    // A request: long before the (one hour) timer.
    let flusher = MetricsFlusher::new(metrics.clone(), out.clone(), Duration::from_secs(3600));
    manager.add_subscriber(Arc::new(Mutex::new(flusher.unwrap())));
    flush::request_flush();
    run_until_seq(&mut manager, &path, 1);
    assert_eq!(metrics.snapshot().seq, 1);
    // The timer: flushes keep coming with nothing asked (a loop of its own: the request
    // eventfd is the process's one, watched once per loop).
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    let flusher = MetricsFlusher::new(metrics.clone(), out, Duration::from_millis(100));
    manager.add_subscriber(Arc::new(Mutex::new(flusher.unwrap())));
    run_until_seq(&mut manager, &path, 3);
}

#[test]
fn vcpu_exit_counters_are_per_kind() {
    let c = VcpuExitCounters::default();
    for kind in ExitKind::ALL {
        c.record(kind);
    }
    c.record(ExitKind::IoIn);
    assert_eq!(c.get(ExitKind::IoIn), 2);
    assert_eq!(c.get(ExitKind::Other), 1);
    assert_eq!(align_of::<VcpuExitCounters>(), 64);
}
