//! Configuration parsing and validation tests.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::limits::MAX_BLOCK_DEVICES;
use super::*;

fn fake_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("vmlinux");
    let mut header = vec![0u8; 64];
    header[0..4].copy_from_slice(b"\x7fELF");
    header[4] = 2;
    header[18] = 62;
    File::create(&path).unwrap().write_all(&header).unwrap();
    path
}

fn tmpdir() -> TempDir {
    TempDir::new().unwrap()
}

#[test]
fn defaults_validate_with_a_kernel() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let cfg = VmConfig {
        kernel: Some(fake_kernel(dir)),
        ..Default::default()
    };
    let valid = cfg.validate().unwrap();
    assert_eq!(valid.vcpus, 1);
    assert_eq!(valid.memory_bytes, 128 << 20);
    assert_eq!(valid.cmdline, build_cmdline(None, None).unwrap());
    assert!(valid.cmdline.contains("reboot=k,c,panic_w"));
}

#[test]
fn missing_kernel_is_named() {
    let err = VmConfig::default().validate().unwrap_err();
    assert!(matches!(err, ConfigError::MissingKernel));
    let err = VmConfig {
        kernel: Some("/nonexistent/vmlinux".into()),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(err
        .to_string()
        .starts_with("kernel: cannot open /nonexistent/vmlinux"));
}

#[test]
fn bzimage_or_directory_is_refused() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let path = dir.join("bzImage");
    std::fs::write(&path, b"MZ not an elf at all, but long enough").unwrap();
    let err = VmConfig {
        kernel: Some(path),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(matches!(err, ConfigError::NotElf { .. }), "{err}");
    let err = VmConfig {
        kernel: Some(dir.to_path_buf()),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(matches!(err, ConfigError::NotAFile { .. }), "{err}");
}

#[test]
fn ranges_are_enforced() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let kernel = Some(fake_kernel(dir));
    for (vcpus, mem, field) in [(0, 128, "vcpus"), (65, 128, "vcpus"), (1, 16, "memory_mib")] {
        let err = VmConfig {
            kernel: kernel.clone(),
            vcpus,
            memory_mib: mem,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        match err {
            ConfigError::OutOfRange { field: f, .. } => assert_eq!(f, field),
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn initrd_must_exist_and_fit() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let kernel = Some(fake_kernel(dir));
    let err = VmConfig {
        kernel: kernel.clone(),
        initrd: Some(dir.join("missing.cpio")),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().starts_with("initrd: cannot open"), "{err}");
    let big = dir.join("big.cpio");
    File::create(&big).unwrap().set_len(40 << 20).unwrap();
    let err = VmConfig {
        kernel,
        initrd: Some(big),
        memory_mib: 64,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(matches!(err, ConfigError::InitrdTooLarge { .. }), "{err}");
}

#[test]
fn json_rejects_unknown_fields_and_bad_types() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let path = dir.join("vm.json");
    std::fs::write(&path, r#"{"kernel": "/k", "memory": 12}"#).unwrap();
    let err = VmConfig::from_json_file(&path).unwrap_err();
    assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    std::fs::write(&path, r#"{"vcpus": "two"}"#).unwrap();
    assert!(VmConfig::from_json_file(&path).is_err());
    std::fs::write(
        &path,
        r#"{"kernel": "/k", "vcpus": 2, "serial": {"output": {"file": "/tmp/x"}}}"#,
    )
    .unwrap();
    let cfg = VmConfig::from_json_file(&path).unwrap();
    assert_eq!(cfg.vcpus, 2);
    assert_eq!(cfg.serial.output, SerialOutput::File("/tmp/x".into()));
}

#[test]
fn kernel_args_go_before_init_args() {
    let a = vec!["x=1".to_string(), "y=2".to_string()];
    assert_eq!(insert_kernel_args("quiet", &a), "quiet x=1 y=2");
    assert_eq!(
        insert_kernel_args("quiet -- blk a", &a),
        "quiet x=1 y=2 -- blk a"
    );
    assert_eq!(insert_kernel_args("-- rng", &a), "x=1 y=2 -- rng");
    assert_eq!(insert_kernel_args("a--b", &a), "a--b x=1 y=2");
    assert_eq!(insert_kernel_args("", &a), "x=1 y=2");
    assert_eq!(insert_kernel_args("q", &[]), "q");
}

#[test]
fn cmdline_rules() {
    assert_eq!(build_cmdline(Some("a"), Some(" b ")).unwrap(), "a b");
    assert_eq!(build_cmdline(Some(""), Some("b")).unwrap(), "b");
    assert!(build_cmdline(Some("a\0b"), None).is_err());
    assert!(build_cmdline(Some(&"x".repeat(2000)), None).is_err());
}

#[test]
fn block_devices_are_checked() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let kernel = Some(fake_kernel(dir));
    let disk = |path: PathBuf, read_only| BlockDeviceConfig { path, read_only };
    let with = |disks: Vec<BlockDeviceConfig>| VmConfig {
        kernel: kernel.clone(),
        block_devices: disks,
        ..Default::default()
    };
    let img = dir.join("disk.img");
    File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let valid = with(vec![disk(img.clone(), false), disk(img.clone(), true)])
        .validate()
        .unwrap();
    assert_eq!(valid.block_devices.len(), 2);
    assert!(valid.rng, "rng is on by default");
    let err = with(vec![disk(dir.join("nope.img"), true)])
        .validate()
        .unwrap_err();
    assert!(
        err.to_string().starts_with("block_devices: cannot open"),
        "{err}"
    );
    let err = with(vec![disk(dir.to_path_buf(), true)])
        .validate()
        .unwrap_err();
    assert!(matches!(err, ConfigError::NotADisk { .. }), "{err}");
    let err = with(vec![disk(img.clone(), true); MAX_BLOCK_DEVICES + 1])
        .validate()
        .unwrap_err();
    assert!(matches!(err, ConfigError::OutOfRange { .. }), "{err}");
    // Root may open a 0444 file for writing, so only an unprivileged run sees the refusal.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        let ro = dir.join("ro.img");
        File::create(&ro).unwrap();
        let mut perms = std::fs::metadata(&ro).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&ro, perms).unwrap();
        let err = with(vec![disk(ro, false)]).validate().unwrap_err();
        assert!(matches!(err, ConfigError::DiskNotWritable { .. }), "{err}");
    }
}

#[test]
fn json_block_devices_and_rng() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let path = dir.join("vm.json");
    std::fs::write(
        &path,
        r#"{"block_devices": [{"path": "/a.img"}, {"path": "/b.img", "read_only": true}], "rng": false}"#,
    )
    .unwrap();
    let cfg = VmConfig::from_json_file(&path).unwrap();
    assert!(!cfg.rng);
    assert_eq!(
        cfg.block_devices,
        vec![
            BlockDeviceConfig {
                path: "/a.img".into(),
                read_only: false
            },
            BlockDeviceConfig {
                path: "/b.img".into(),
                read_only: true
            },
        ]
    );
    std::fs::write(&path, r#"{"block_devices": [{"path": "/a", "ro": true}]}"#).unwrap();
    let err = VmConfig::from_json_file(&path).unwrap_err();
    assert!(err.to_string().contains("unknown field `ro`"), "{err}");
}

#[test]
fn the_jail_is_checked() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    std::fs::create_dir(dir.join("vsock")).unwrap();
    let base = VmConfig {
        kernel: Some(fake_kernel(dir)),
        jail: Some(JailConfig { dir: jail.clone() }),
        vsock: Some(VsockDeviceConfig {
            guest_cid: 3,
            uds_path: dir.join("vsock/vm.sock"),
        }),
        ..Default::default()
    };
    let err = |cfg: &VmConfig| match cfg.validate() {
        Err(ConfigError::Jail { field, why }) => format!("{field}: {why}"),
        other => panic!("expected a jail error, got {other:?}"),
    };
    let with = |f: &dyn Fn(&mut VmConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    assert!(with(&|_| {}).validate().is_ok());
    let rel = with(&|c| c.jail = Some(JailConfig { dir: "jail".into() }));
    assert!(err(&rel).starts_with("dir: jail is not an absolute path"));
    let missing = with(&|c| {
        c.jail = Some(JailConfig {
            dir: dir.join("nope"),
        })
    });
    assert!(err(&missing).starts_with("dir: "));
    std::fs::write(jail.join("x"), "").unwrap();
    assert!(err(&with(&|_| {})).contains("is not empty"));
    std::fs::remove_file(jail.join("x")).unwrap();
    let in_root = with(&|c| c.vsock.as_mut().unwrap().uds_path = "/vm.sock".into());
    assert!(err(&in_root).starts_with("vsock: the socket /vm.sock needs a directory"));
    let tap = with(&|c| {
        c.net_devices = vec![NetDeviceConfig {
            tap: Some("tap0".into()),
            ..Default::default()
        }]
    });
    assert!(err(&tap).starts_with("net_devices: net_devices[0] names a tap"));
    assert_eq!(
        ConfigError::Jail {
            field: "dir",
            why: "x".into()
        }
        .to_string(),
        "jail.dir: x"
    );
}

#[test]
fn vsock_is_checked() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let kernel = Some(fake_kernel(dir));
    let with = |guest_cid, uds_path: PathBuf| VmConfig {
        kernel: kernel.clone(),
        vsock: Some(VsockDeviceConfig {
            guest_cid,
            uds_path,
        }),
        ..Default::default()
    };
    let ok = with(3, dir.join("v.sock")).validate().unwrap();
    assert_eq!(ok.vsock.unwrap().guest_cid, 3);
    for cid in [0, 1, 2, u32::MAX] {
        let err = with(cid, dir.join("v.sock")).validate().unwrap_err();
        assert!(err.to_string().starts_with("vsock.guest_cid"), "{err}");
    }
    let err = with(3, dir.join("missing/v.sock")).validate().unwrap_err();
    assert!(
        err.to_string().contains("directory does not exist"),
        "{err}"
    );
    let err = with(3, dir.join("x".repeat(120))).validate().unwrap_err();
    assert!(err.to_string().contains("bytes long"), "{err}");
}

#[test]
fn json_vsock() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let path = dir.join("vm.json");
    std::fs::write(
        &path,
        r#"{"vsock": {"guest_cid": 7, "uds_path": "/run/moat/v.sock"}}"#,
    )
    .unwrap();
    let cfg = VmConfig::from_json_file(&path).unwrap();
    assert_eq!(cfg.vsock.unwrap().guest_cid, 7);
    std::fs::write(&path, r#"{"vsock": {"cid": 7, "uds_path": "/x"}}"#).unwrap();
    let err = VmConfig::from_json_file(&path).unwrap_err();
    assert!(err.to_string().contains("unknown field `cid`"), "{err}");
}

#[test]
fn shared_dirs_are_checked() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let kernel = Some(fake_kernel(dir));
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let with = |shares: Vec<(&str, PathBuf)>| VmConfig {
        kernel: kernel.clone(),
        shared_dirs: shares
            .into_iter()
            .map(|(tag, path)| SharedDirConfig {
                tag: tag.into(),
                path,
            })
            .collect(),
        ..Default::default()
    };
    let ok = with(vec![("moat_fs-1", share.clone())]).validate().unwrap();
    assert_eq!(ok.shared_dirs[0].path, share.canonicalize().unwrap());
    let err_of = |shares| with(shares).validate().unwrap_err().to_string();
    let long = "t".repeat(37);
    for tag in ["", "a b", "a/b", "tag.x", long.as_str()] {
        let err = err_of(vec![(tag, share.clone())]);
        assert!(err.contains("tag must be"), "{tag:?}: {err}");
    }
    let max = "t".repeat(36);
    assert!(with(vec![(max.as_str(), share.clone())]).validate().is_ok());
    let err = err_of(vec![("a", share.clone()), ("a", share.clone())]);
    assert!(err.contains("tag used twice"), "{err}");
    let err = err_of(vec![("a", dir.join("missing"))]);
    assert!(err.starts_with("shared_dirs: \"a\""), "{err}");
    let err = err_of(vec![("a", dir.join("vmlinux"))]);
    assert!(err.contains("not a directory"), "{err}");
    let five = (0..5).map(|_| ("x", share.clone())).collect();
    let err = err_of(five);
    assert!(err.starts_with("shared_dirs (count)"), "{err}");
}

#[test]
fn json_shared_dirs() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let path = dir.join("vm.json");
    std::fs::write(
        &path,
        r#"{"shared_dirs": [{"tag": "data", "path": "/srv/data"}]}"#,
    )
    .unwrap();
    let cfg = VmConfig::from_json_file(&path).unwrap();
    assert_eq!(
        cfg.shared_dirs,
        vec![SharedDirConfig {
            tag: "data".into(),
            path: "/srv/data".into()
        }]
    );
}

#[test]
fn net_flags_parse() {
    let cfg: NetDeviceConfig = "tap=tap0,mac=02:AB:cd:00:00:01,mtu=9000".parse().unwrap();
    assert_eq!(cfg.tap.as_deref(), Some("tap0"));
    assert_eq!(cfg.mac, Some(MacAddr([2, 0xab, 0xcd, 0, 0, 1])));
    assert_eq!(cfg.mtu, Some(9000));
    let cfg: NetDeviceConfig = "fd=7".parse().unwrap();
    assert_eq!((cfg.fd, cfg.tap, cfg.mac), (Some(7), None, None));
    for (bad, why) in [
        ("tap", "KEY=VALUE"),
        ("tap=a,tap=b", "given twice"),
        ("fd=x", "not a valid fd"),
        ("tap=a,mac=02:00:00:00:00", "not a MAC"),
        ("tap=a,mac=02:00:00:00:00:0g", "not a MAC"),
        ("tap=a,mtu=70000", "not a valid MTU"),
        ("tap=a,queues=2", "unknown net option"),
    ] {
        let err = bad.parse::<NetDeviceConfig>().unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn net_devices_are_checked() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let kernel = Some(fake_kernel(dir));
    let with = |devs: Vec<&str>| VmConfig {
        kernel: kernel.clone(),
        net_devices: devs.into_iter().map(|d| d.parse().unwrap()).collect(),
        ..Default::default()
    };
    let ok = with(vec!["tap=tap0", "tap=tap1,mac=02:00:00:00:00:01,mtu=1400"])
        .validate()
        .unwrap();
    assert_eq!(ok.net_devices.len(), 2);
    let null = File::open("/dev/null").unwrap();
    let null_fd = format!("fd={}", std::os::fd::AsRawFd::as_raw_fd(&null));
    for (devs, want) in [
        (vec!["tap=a/b"], "net_devices[0].tap: \"a/b\" must be"),
        (vec!["tap=sixteen-bytes-xx"], "net_devices[0].tap"),
        (
            vec!["tap=t0", "tap=t0"],
            "net_devices[1].tap: t0 used twice",
        ),
        (
            vec!["tap=t0,fd=5"],
            "net_devices[0].tap: give tap or fd, not both",
        ),
        (
            vec!["mtu=1500"],
            "net_devices[0].tap: give tap=NAME or fd=N",
        ),
        (vec!["fd=2"], "net_devices[0].fd: 2 is stdio"),
        (vec!["fd=987654"], "not an open file descriptor"),
        (vec![null_fd.as_str()], "not a /dev/net/tun"),
        (
            vec!["tap=t0,mac=01:00:5e:00:00:01"],
            "net_devices[0].mac: 01:00:5e:00:00:01 is a multicast",
        ),
        (vec!["tap=t0,mac=00:00:00:00:00:00"], "net_devices[0].mac"),
        (
            vec!["tap=t0,mtu=67"],
            "net_devices[0].mtu: 67 is out of range",
        ),
        (vec!["tap=t0,mtu=65519"], "net_devices[0].mtu"),
        (
            vec!["tap=a", "tap=b", "tap=c", "tap=d", "tap=e"],
            "net_devices (count)",
        ),
    ] {
        let err = with(devs.clone()).validate().unwrap_err().to_string();
        assert!(
            err.starts_with(want) || err.contains(want),
            "{devs:?}: {err}"
        );
    }
}

#[test]
fn json_net_devices() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let path = dir.join("vm.json");
    std::fs::write(
        &path,
        r#"{"net_devices": [{"tap": "tap0", "mac": "02:00:00:00:00:09"}, {"fd": 5, "mtu": 1400}]}"#,
    )
    .unwrap();
    let cfg = VmConfig::from_json_file(&path).unwrap();
    assert_eq!(cfg.net_devices[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
    assert_eq!(
        (cfg.net_devices[1].fd, cfg.net_devices[1].mtu),
        (Some(5), Some(1400))
    );
    let json = serde_json::to_string(&cfg.net_devices[0]).unwrap();
    assert!(json.contains(r#""mac":"02:00:00:00:00:09""#), "{json}");
    std::fs::write(&path, r#"{"net_devices": [{"tap": "t", "mac": "nope"}]}"#).unwrap();
    let err = VmConfig::from_json_file(&path).unwrap_err();
    assert!(err.to_string().contains("not a MAC address"), "{err}");
}

#[test]
fn a_full_config_round_trips_through_json() {
    let tmp = tmpdir();
    let cfg = VmConfig {
        kernel: Some("/k/vmlinux".into()),
        initrd: Some("/k/initrd.cpio".into()),
        cmdline: Some("console=ttyS0 -- init".into()),
        extra_cmdline: Some("moat.share=moatfs".into()),
        vcpus: 3,
        memory_mib: 512,
        serial: SerialConfig {
            output: SerialOutput::File("/run/pod/console".into()),
            stdin: true,
            limit_bytes: 4096,
        },
        metrics_file: Some("/run/pod/metrics.json".into()),
        metrics_interval_ms: Some(250),
        block_devices: vec![BlockDeviceConfig {
            path: "/img/rootfs.ext4".into(),
            read_only: true,
        }],
        rng: false,
        vsock: Some(VsockDeviceConfig {
            guest_cid: 3,
            uds_path: "/run/pod/vsock".into(),
        }),
        shared_dirs: vec![SharedDirConfig {
            tag: "moatfs".into(),
            path: "/run/pod/share".into(),
        }],
        net_devices: vec![
            NetDeviceConfig {
                fd: Some(7),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                mtu: Some(1400),
                ..Default::default()
            },
            NetDeviceConfig {
                tap: Some("tap0".into()),
                ..Default::default()
            },
        ],
        jail: Some(JailConfig {
            dir: "/run/pod/jail".into(),
        }),
        seccomp: SeccompMode::Log,
    };
    let path = tmp.path().join("vm.json");
    serde_json::to_writer_pretty(File::create(&path).unwrap(), &cfg).unwrap();
    assert_eq!(VmConfig::from_json_file(&path).unwrap(), cfg);
    for output in [SerialOutput::Stdout, SerialOutput::Null] {
        let cfg = VmConfig {
            serial: SerialConfig {
                output,
                ..Default::default()
            },
            ..Default::default()
        };
        std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        assert_eq!(VmConfig::from_json_file(&path).unwrap(), cfg);
    }
}

#[test]
fn an_empty_file_is_the_default_config() {
    let tmp = tmpdir();
    let path = tmp.path().join("vm.json");
    std::fs::write(&path, "{}").unwrap();
    assert_eq!(
        VmConfig::from_json_file(&path).unwrap(),
        VmConfig::default()
    );
}

#[test]
fn per_field_checks_match_validate() {
    assert!(check_vcpus(1).is_ok());
    assert!(check_vcpus(limits::MAX_VCPUS.into()).is_ok());
    for bad in [0, u64::from(limits::MAX_VCPUS) + 1, 1 << 40] {
        let err = check_vcpus(bad).unwrap_err();
        assert!(err.to_string().starts_with("vcpus: "), "{err}");
    }
    assert!(check_memory_mib(limits::MIN_MEMORY_MIB).is_ok());
    assert!(check_memory_mib(limits::MAX_MEMORY_MIB).is_ok());
    for bad in [0, limits::MIN_MEMORY_MIB - 1, limits::MAX_MEMORY_MIB + 1] {
        let err = check_memory_mib(bad).unwrap_err();
        assert!(err.to_string().starts_with("memory_mib: "), "{err}");
    }
    assert!(check_extra_cmdline("moat.share=moatfs -- init").is_ok());
    assert!(check_extra_cmdline("").is_ok());
    assert!(check_extra_cmdline("a\0b").is_err());
    assert!(check_extra_cmdline(&"x".repeat(limits::CMDLINE_MAX_SIZE)).is_err());
}

#[test]
fn metrics_interval_is_bounded_and_defaults_with_a_metrics_file() {
    let tmp = tmpdir();
    let base = VmConfig {
        kernel: Some(fake_kernel(tmp.path())),
        ..Default::default()
    };
    let with = |metrics_file: Option<&str>, ms: Option<u64>| VmConfig {
        metrics_file: metrics_file.map(PathBuf::from),
        metrics_interval_ms: ms,
        ..base.clone()
    };
    // No metrics file: nothing to flush, whatever the interval.
    assert_eq!(
        with(None, None).validate().unwrap().metrics_interval_ms,
        None
    );
    let m = Some("/run/m.json");
    let default = limits::DEFAULT_METRICS_INTERVAL_MS;
    assert_eq!(
        with(m, None).validate().unwrap().metrics_interval_ms,
        Some(default)
    );
    for ok in [
        limits::MIN_METRICS_INTERVAL_MS,
        limits::MAX_METRICS_INTERVAL_MS,
    ] {
        assert_eq!(
            with(m, Some(ok)).validate().unwrap().metrics_interval_ms,
            Some(ok)
        );
    }
    let bad = [
        0,
        limits::MIN_METRICS_INTERVAL_MS - 1,
        limits::MAX_METRICS_INTERVAL_MS + 1,
        u64::MAX,
    ];
    for ms in bad {
        for file in [m, None] {
            let err = with(file, Some(ms)).validate().unwrap_err();
            assert!(
                err.to_string().starts_with(&format!(
                    "metrics_interval_ms: {ms} is out of range (100..=3600000)"
                )),
                "{err}"
            );
        }
        assert!(check_metrics_interval_ms(ms).is_err());
    }
    // The JSON field, as the shim writes it.
    let path = tmp.path().join("vm.json");
    std::fs::write(&path, r#"{"metrics_interval_ms": 1000}"#).unwrap();
    let cfg = VmConfig::from_json_file(&path).unwrap();
    assert_eq!(cfg.metrics_interval_ms, Some(1000));
}
