//! The containerd test harness (`moat_tests::containerd`) and the OCI image builder
//! (`moat_tests::containerd::oci_image`) with runc as the runtime: a private containerd runs busybox
//! containers from a locally built image, and leaves nothing behind. Runs in the test host
//! (root, cgroup2, overlayfs; no KVM needed) unless this machine has hardware KVM.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use moat_runtime::RUNTIME_ID;
use moat_tests::containerd::oci_image::{build_busybox_image, DEFAULT_BUSYBOX_IMAGE};
use moat_tests::containerd::{sys, Containerd, ContainerdOptions, CtrOutput};

moat_tests::kvm_test!(containerd_runs_busybox_with_runc, {
    let t0 = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("moat-containerd-runc-")
        .tempdir()
        .unwrap();
    let tar = scratch.path().join("busybox.tar");
    let image = build_busybox_image(&tar, DEFAULT_BUSYBOX_IMAGE).unwrap_or_else(|e| panic!("{e}"));
    let t_image = t0.elapsed();

    let t = Instant::now();
    let opts = ContainerdOptions {
        // Not used by runc containers; shows the moat runtime's settings parse.
        moat_runtime_path: Some("/nonexistent/containerd-shim-moat-v2".into()),
        moat_config_path: Some("/nonexistent/moat.toml".into()),
        ..Default::default()
    };
    let cd = Containerd::start(opts).unwrap_or_else(|e| panic!("{e}"));
    let t_start = t.elapsed();
    let dir = cd.dir().to_owned();
    let pid = cd.pid().expect("containerd pid");

    // The CRI plugin loaded with the harness's config (the moat runtime needs it).
    let plugins = cd.ctr_ok(&["plugins", "ls"]).unwrap().stdout_str();
    let cri = plugins
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == "io.containerd.grpc.v1" && f[1] == "cri");
    assert_eq!(
        cri.as_ref().and_then(|f| f.last()).copied(),
        Some("ok"),
        "CRI plugin not ok:\n{plugins}\ncontainerd log:\n{}",
        cd.log_tail()
    );

    let config = cd.dir().join("config.toml");
    let dump = std::process::Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    let moat_runtime_type = format!(r#"runtime_type = "{RUNTIME_ID}""#);
    for want in [
        r#"runtime_path = "/nonexistent/containerd-shim-moat-v2""#,
        r#"ConfigPath = "/nonexistent/moat.toml""#,
        &moat_runtime_type,
        r#"sandbox_image = "docker.io/moat/busybox:latest""#,
        "restrict_oom_score_adj = true",
    ] {
        assert!(
            dump.contains(want),
            "`containerd config dump` lacks {want}:\n{dump}"
        );
    }

    let t = Instant::now();
    cd.import(&tar).unwrap_or_else(|e| panic!("{e}"));
    let t_import = t.elapsed();
    let images = cd.ctr_ok(&["images", "ls"]).unwrap().stdout_str();
    assert!(
        images.contains(&image.name) && images.contains(&image.manifest_digest),
        "{} ({}) not in `ctr images ls`:\n{images}",
        image.name,
        image.manifest_digest
    );

    // Output and the task's exit status come back through ctr.
    let name = image.name.as_str();
    let run = cd
        .ctr(&["run", "--rm", name, "id1", "sh", "-c", "echo hi; exit 3"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (run.stdout_str().as_str(), run.code()),
        ("hi\n", Some(3)),
        "ctr run: stderr:\n{}\ncontainerd log:\n{}",
        run.stderr_str(),
        cd.log_tail()
    );

    // stdin reaches the task, then EOF, byte-exact both ways. ctr loses an EOF it reads
    // before the task exists, so stdin is closed once the task runs...
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = cd
        .ctr_spawn(&["run", "--rm", name, "id2", "cat"], true)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stdin = child.stdin.take().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&to_send).map(|()| stdin));
    cd.wait_task_status("id2", "RUNNING", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(writer.join().unwrap().expect("writing ctr's stdin"));
    let cat = child
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    check_echo(&cat, &data);

    // ... or there is more than the pipes on the way buffer, so EOF comes after the start.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 13 % 253) as u8).collect();
    let args = ["run", "--rm", name, "id3", "cat"];
    let cat_big = cd
        .ctr_with(&args, Some(&big), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    check_echo(&cat_big, &big);

    // `--rm` removed the containers.
    let left = cd.ctr_ok(&["containers", "ls", "-q"]).unwrap().stdout_str();
    assert_eq!(left.trim(), "", "containers left");

    let t = Instant::now();
    cd.stop().unwrap_or_else(|e| panic!("{e}"));
    let t_stop = t.elapsed();
    assert!(!sys::alive(pid), "containerd (pid {pid}) still running");
    assert_harness_gone(&dir);

    println!(
        "timings: build image {t_image:?} ({} KiB), start containerd {t_start:?}, import \
         {t_import:?}, ctr run sh {:?}, ctr run cat (100 kB stdin) {:?}, (1 MiB) {:?}, \
         stop {t_stop:?}, total {:?}",
        std::fs::metadata(&tar).map(|m| m.len() / 1024).unwrap_or(0),
        run.elapsed,
        cat.elapsed,
        cat_big.elapsed,
        t0.elapsed()
    );
});

moat_tests::kvm_test!(containerd_is_cleaned_up_after_a_panic, {
    let scratch = tempfile::Builder::new()
        .prefix("moat-containerd-runc-")
        .tempdir()
        .unwrap();
    let tar = scratch.path().join("busybox.tar");
    build_busybox_image(&tar, DEFAULT_BUSYBOX_IMAGE).unwrap_or_else(|e| panic!("{e}"));
    // A test that panics with a running container (its shim, a process tree, the rootfs
    // mount): unwinding drops the harness, which must take all of it down.
    let (tx, rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    println!("a deliberate panic follows:");
    let panicked = std::panic::catch_unwind(move || {
        let cd = Containerd::start(ContainerdOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        tx.send((cd.dir().to_owned(), Vec::new())).unwrap();
        cd.import(&tar).unwrap_or_else(|e| panic!("{e}"));
        let script = "sleep 1000 & sleep 1000";
        let args = [
            "run",
            "-d",
            DEFAULT_BUSYBOX_IMAGE,
            "sleeper",
            "sh",
            "-c",
            script,
        ];
        cd.ctr_ok(&args).unwrap_or_else(|e| panic!("{e}"));
        cd.wait_task_status("sleeper", "RUNNING", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = cd.dir().to_string_lossy().into_owned();
        assert!(mounts.contains(&dir), "no rootfs mount:\n{mounts}");
        let sleeps = pids(|comm, cmdline| comm == "sleep" && cmdline.contains("1000"));
        assert_eq!(sleeps.len(), 2, "the container's sleeps are not running");
        tx.send((cd.dir().to_owned(), sleeps)).unwrap();
        panic!("deliberate panic with a running container");
    });
    let payload = panicked.expect_err("the body did not panic");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"deliberate panic with a running container"),
        "the body panicked early (see above)"
    );
    let (dir, sleeps) = rx.iter().last().unwrap();
    println!("run + unwind: {:?}", t.elapsed());
    assert!(
        !sleeps.iter().any(|&p| sys::alive(p)),
        "the container's sleeps {sleeps:?} run"
    );
    assert_harness_gone(&dir);
});

/// Fails unless everything of the harness in `dir` is gone: the directory, any process naming
/// it, (in the test host, where nothing else runs) any containerd, shim or runc, any mount
/// under it.
fn assert_harness_gone(dir: &Path) {
    assert!(!dir.exists(), "{} not removed", dir.display());
    let ours = processes(|_, cmdline| cmdline.contains(&*dir.to_string_lossy()));
    assert!(ours.is_empty(), "processes of the harness left: {ours:?}");
    if moat_tests::in_test_host() {
        let names = ["containerd", "containerd-shim", "runc"];
        let left = processes(|comm, _| names.contains(&comm));
        assert!(left.is_empty(), "processes left: {left:?}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts left under {}:\n{mounts}",
        dir.display()
    );
}

/// Asserts that `cat` exited 0 having echoed exactly `data`.
fn check_echo(cat: &CtrOutput, data: &[u8]) {
    assert_eq!(cat.code(), Some(0), "stderr:\n{}", cat.stderr_str());
    assert!(
        cat.stdout == data,
        "cat echoed {} bytes, not the {} sent",
        cat.stdout.len(),
        data.len()
    );
}

/// Live processes for which `pred(comm, cmdline)` holds, as `pid comm cmdline`.
fn processes(pred: impl Fn(&str, &str) -> bool) -> Vec<String> {
    scan(pred)
        .into_iter()
        .map(|(pid, desc)| format!("{pid} {desc}"))
        .collect()
}

/// The pids of live processes for which `pred(comm, cmdline)` holds.
fn pids(pred: impl Fn(&str, &str) -> bool) -> Vec<u32> {
    scan(pred).into_iter().map(|(pid, _)| pid).collect()
}

/// Live processes (but this one) for which `pred(comm, cmdline)` holds: pid, `comm cmdline`.
fn scan(pred: impl Fn(&str, &str) -> bool) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = Path::new("/proc").join(pid.to_string());
        let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != std::process::id() && sys::alive(pid) && pred(comm.trim(), &cmdline) {
            out.push((pid, format!("{} {cmdline}", comm.trim())));
        }
    }
    out
}
