//! Tests of the OCI to cgroup v2 mapping ([`super::plan`]) and of [`Cgroup::apply`] on a fake
//! cgroup directory.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::container::cgroup::Cgroup;
use crate::testing::{tempdir, TempDirExt};

/// Every control file a cgroup with all controllers (and BFQ off, swap on) has.
const ALL_FILES: &[&str] = &[
    "cpuset.cpus",
    "cpuset.mems",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "memory.max",
    "memory.low",
    "memory.high",
    "memory.swap.max",
    "pids.max",
    "io.weight",
    "io.max",
    "hugetlb.2MB.max",
    "hugetlb.1GB.max",
    "rdma.max",
    "cgroup.procs",
];

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

fn plan_with(json: &str, files: &[&str]) -> Result<Vec<(String, String)>, CgroupError> {
    let files: BTreeSet<String> = files.iter().map(|s| s.to_string()).collect();
    let exists = move |f: &str| files.contains(f);
    let writes = plan(&res(json), Path::new("/fake/ctr"), &exists)?;
    Ok(writes.into_iter().map(|w| (w.file, w.value)).collect())
}

fn plan_all(json: &str) -> Vec<(String, String)> {
    plan_with(json, ALL_FILES).unwrap()
}

fn w(file: &str, value: &str) -> (String, String) {
    (file.to_string(), value.to_string())
}

#[test]
fn empty_resources_write_nothing() {
    assert!(plan_all("{}").is_empty());
    assert!(plan_all(r#"{"memory": {}, "cpu": {}, "blockIO": {}}"#).is_empty());
}

#[test]
fn memory_limit_reservation_swap() {
    let got = plan_all(r#"{"memory": {"limit": 1048576, "reservation": 524288, "swap": 3145728}}"#);
    assert_eq!(
        got,
        [
            w("memory.swap.max", "2097152"),
            w("memory.max", "1048576"),
            w("memory.low", "524288")
        ]
    );
    // -1: unlimited; unlimited memory with swap unset: swap unlimited too.
    let got = plan_all(r#"{"memory": {"limit": -1, "reservation": -1}}"#);
    assert_eq!(
        got,
        [
            w("memory.swap.max", "max"),
            w("memory.max", "max"),
            w("memory.low", "max")
        ]
    );
    // swap == limit: no swap.
    let got = plan_all(r#"{"memory": {"limit": 1000, "swap": 1000}}"#);
    assert_eq!(got, [w("memory.swap.max", "0"), w("memory.max", "1000")]);
    let got = plan_all(r#"{"memory": {"limit": 1000, "swap": -1}}"#);
    assert_eq!(got, [w("memory.swap.max", "max"), w("memory.max", "1000")]);
}

#[test]
fn memory_errors() {
    let err = plan_with(r#"{"memory": {"limit": 2000, "swap": 1000}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "memory.swap",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("memory.swap"), "{err}");
    let err = plan_with(r#"{"memory": {"swap": 1000}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "memory.swap",
                ..
            }
        ),
        "{err}"
    );
    let err = plan_with(r#"{"memory": {"limit": -5}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "memory.limit",
                ..
            }
        ),
        "{err}"
    );
    let err = plan_with(r#"{"memory": {"reservation": -2}}"#, ALL_FILES).unwrap_err();
    assert!(matches!(
        err,
        CgroupError::OutOfRange {
            field: "memory.reservation",
            ..
        }
    ));
    let err = plan_with(r#"{"memory": {"disableOOMKiller": true}}"#, ALL_FILES).unwrap_err();
    assert!(matches!(
        err,
        CgroupError::Unsupported {
            field: "memory.disableOOMKiller",
            ..
        }
    ));
    // false is fine, and kernel/kernelTCP/swappiness are ignored.
    let got = plan_all(
        r#"{"memory": {"disableOOMKiller": false, "kernel": 1, "kernelTCP": 2, "swappiness": 10}}"#,
    );
    assert!(got.is_empty());
}

#[test]
fn missing_memory_controller_is_named() {
    let err = plan_with(r#"{"memory": {"limit": 1000}}"#, &["cpu.weight"]).unwrap_err();
    match &err {
        CgroupError::ControllerNotEnabled {
            controller, file, ..
        } => {
            assert_eq!(
                (controller.as_str(), file.as_str()),
                ("memory", "memory.max")
            );
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("memory controller not enabled"),
        "{err}"
    );
}

#[test]
fn no_swap_file_skips_max_and_zero_only() {
    let files = &["memory.max"];
    let got = plan_with(r#"{"memory": {"limit": 1000, "swap": 1000}}"#, files).unwrap();
    assert_eq!(got, [w("memory.max", "1000")]);
    let got = plan_with(r#"{"memory": {"limit": 1000, "swap": -1}}"#, files).unwrap();
    assert_eq!(got, [w("memory.max", "1000")]);
    let err = plan_with(r#"{"memory": {"limit": 1000, "swap": 3000}}"#, files).unwrap_err();
    assert!(
        matches!(err, CgroupError::ControllerNotEnabled { .. }),
        "{err}"
    );
}

#[test]
fn cpu_weight_from_shares() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1), 1);
    assert_eq!(shares_to_weight(1 << 40), 10_000);
    assert_eq!(
        plan_all(r#"{"cpu": {"shares": 512}}"#),
        [w("cpu.weight", "20")]
    );
    // 0: not set.
    assert!(plan_all(r#"{"cpu": {"shares": 0}}"#).is_empty());
}

#[test]
fn cpu_max_from_quota_and_period() {
    assert_eq!(
        plan_all(r#"{"cpu": {"quota": 50000}}"#),
        [w("cpu.max", "50000 100000")]
    );
    assert_eq!(
        plan_all(r#"{"cpu": {"quota": 20000, "period": 50000}}"#),
        [w("cpu.max", "20000 50000")]
    );
    assert_eq!(
        plan_all(r#"{"cpu": {"quota": -1, "period": 50000}}"#),
        [w("cpu.max", "max 50000")]
    );
    assert_eq!(
        plan_all(r#"{"cpu": {"period": 200000}}"#),
        [w("cpu.max", "max 200000")]
    );
    let err = plan_with(r#"{"cpu": {"quota": 500}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "cpu.quota",
                ..
            }
        ),
        "{err}"
    );
    let err = plan_with(r#"{"cpu": {"quota": 5000, "period": 10}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "cpu.period",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn cpuset_burst_idle() {
    assert_eq!(
        plan_all(r#"{"cpu": {"cpus": "0-3,6", "mems": "0", "burst": 1000, "idle": 1}}"#),
        [
            w("cpuset.cpus", "0-3,6"),
            w("cpuset.mems", "0"),
            w("cpu.max.burst", "1000"),
            w("cpu.idle", "1")
        ]
    );
    assert!(plan_all(r#"{"cpu": {"cpus": "", "mems": " "}}"#).is_empty());
    let err = plan_with(r#"{"cpu": {"cpus": "0\n1"}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "cpu.cpus",
                ..
            }
        ),
        "{err}"
    );
    let err = plan_with(r#"{"cpu": {"idle": 2}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "cpu.idle",
                ..
            }
        ),
        "{err}"
    );
    let err = plan_with(r#"{"cpu": {"realtimeRuntime": 950000}}"#, ALL_FILES).unwrap_err();
    assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    let err = plan_with(r#"{"cpu": {"cpus": "1"}}"#, &["cpu.weight"]).unwrap_err();
    assert!(
        err.to_string().contains("cpuset controller not enabled"),
        "{err}"
    );
}

#[test]
fn pids_max() {
    assert_eq!(
        plan_all(r#"{"pids": {"limit": 100}}"#),
        [w("pids.max", "100")]
    );
    assert_eq!(
        plan_all(r#"{"pids": {"limit": 0}}"#),
        [w("pids.max", "max")]
    );
    assert_eq!(
        plan_all(r#"{"pids": {"limit": -1}}"#),
        [w("pids.max", "max")]
    );
}

#[test]
fn block_io_weights() {
    assert_eq!(blkio_to_io_weight(10), 1);
    assert_eq!(blkio_to_io_weight(500), 4950);
    assert_eq!(blkio_to_io_weight(1000), 10_000);
    let json = r#"{"blockIO": {"weight": 500, "leafWeight": 300,
        "weightDevice": [{"major": 8, "minor": 0, "weight": 1000}, {"major": 8, "minor": 16}]}}"#;
    assert_eq!(
        plan_all(json),
        [w("io.weight", "default 4950"), w("io.weight", "8:0 10000")]
    );
    // With BFQ: its own file, unconverted.
    let mut files = ALL_FILES.to_vec();
    files.push("io.bfq.weight");
    assert_eq!(
        plan_with(json, &files).unwrap(),
        [w("io.bfq.weight", "500"), w("io.bfq.weight", "8:0 1000")]
    );
    let err = plan_with(r#"{"blockIO": {"weight": 5}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::OutOfRange {
                field: "blockIO.weight",
                ..
            }
        ),
        "{err}"
    );
    let err = plan_with(
        r#"{"blockIO": {"weightDevice": [{"major": -1, "minor": 0, "weight": 100}]}}"#,
        ALL_FILES,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        CgroupError::OutOfRange {
            field: "blockIO.weightDevice",
            ..
        }
    ));
    let err = plan_with(r#"{"blockIO": {"weight": 100}}"#, &["memory.max"]).unwrap_err();
    assert!(
        err.to_string().contains("io controller not enabled"),
        "{err}"
    );
}

#[test]
fn block_io_throttles_grouped_per_device() {
    let json = r#"{"blockIO": {
        "throttleReadBpsDevice": [{"major": 8, "minor": 16, "rate": 1048576}, {"major": 8, "minor": 0, "rate": 0}],
        "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2097152}],
        "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 200}]}}"#;
    assert_eq!(
        plan_all(json),
        [
            w("io.max", "8:0 rbps=max wbps=2097152 riops=100 wiops=200"),
            w("io.max", "8:16 rbps=1048576")
        ]
    );
    let err = plan_with(
        r#"{"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": -3, "rate": 1}]}}"#,
        ALL_FILES,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        CgroupError::OutOfRange {
            field: "blockIO.throttleReadBpsDevice",
            ..
        }
    ));
}

#[test]
fn hugetlb_limits() {
    let json = r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}, {"pageSize": "1GB", "limit": -1}]}"#;
    assert_eq!(
        plan_all(json),
        [w("hugetlb.2MB.max", "4194304"), w("hugetlb.1GB.max", "max")]
    );
    let mut files = ALL_FILES.to_vec();
    files.push("hugetlb.2MB.rsvd.max");
    assert_eq!(
        plan_with(
            r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}"#,
            &files
        )
        .unwrap(),
        [w("hugetlb.2MB.rsvd.max", "0"), w("hugetlb.2MB.max", "0")]
    );
    let err = plan_with(
        r#"{"hugepageLimits": [{"pageSize": "64KB", "limit": 1}]}"#,
        ALL_FILES,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("hugetlb controller not enabled"),
        "{err}"
    );
    assert!(err.to_string().contains("hugetlb.64KB.max"), "{err}");
    for bad in [r#""../x""#, r#""""#] {
        let json = format!(r#"{{"hugepageLimits": [{{"pageSize": {bad}, "limit": 1}}]}}"#);
        let err = plan_with(&json, ALL_FILES).unwrap_err();
        assert!(matches!(
            err,
            CgroupError::OutOfRange {
                field: "hugepageLimits.pageSize",
                ..
            }
        ));
    }
    let err = plan_with(
        r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": -7}]}"#,
        ALL_FILES,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        CgroupError::OutOfRange {
            field: "hugepageLimits.limit",
            ..
        }
    ));
}

#[test]
fn rdma_limits() {
    let json = r#"{"rdma": {"mlx5_1": {"hcaHandles": 3}, "mlx4_0": {"hcaHandles": 2, "hcaObjects": 2000}, "none": {}}}"#;
    assert_eq!(
        plan_all(json),
        [
            w("rdma.max", "mlx4_0 hca_handle=2 hca_object=2000"),
            w("rdma.max", "mlx5_1 hca_handle=3")
        ]
    );
    let err = plan_with(r#"{"rdma": {"a b": {"hcaHandles": 1}}}"#, ALL_FILES).unwrap_err();
    assert!(
        matches!(err, CgroupError::OutOfRange { field: "rdma", .. }),
        "{err}"
    );
}

#[test]
fn unified_written_last_and_checked() {
    let json =
        r#"{"memory": {"limit": 1000}, "unified": {"memory.max": "2000", "memory.high": "1500"}}"#;
    assert_eq!(
        plan_all(json),
        [
            w("memory.max", "1000"),
            w("memory.high", "1500"),
            w("memory.max", "2000")
        ]
    );
    for (key, reason) in [
        ("../memory.max", "plain file name"),
        ("a/b", "plain file name"),
        ("..", "plain file name"),
        ("", "plain file name"),
        ("memory.oom.group", "no such control file"),
        ("cgroup.procs", "not a resource"),
    ] {
        let json = format!(r#"{{"unified": {{"{key}": "1"}}}}"#);
        let err = plan_with(&json, ALL_FILES).unwrap_err();
        match &err {
            CgroupError::UnifiedKey { key: k, .. } => assert_eq!(k, key),
            other => panic!("{key}: {other}"),
        }
        assert!(err.to_string().contains(reason), "{key}: {err}");
    }
}

#[test]
fn devices_and_network_ignored() {
    let json = r#"{"devices": [{"allow": false, "access": "rwm"}], "network": {"classID": 1}}"#;
    assert!(plan_with(json, &[]).unwrap().is_empty());
}

#[test]
fn apply_writes_files_and_stops_before_writing_on_error() {
    let t = tempdir("apply");
    for f in [
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "cpu.weight",
        "cpu.max",
        "pids.max",
    ] {
        t.file(f, "");
    }
    let cg = Cgroup::open(t.path());
    cg.apply(&res(
        r#"{"memory": {"limit": 268435456, "swap": 536870912}, "cpu": {"shares": 1024, "quota": 150000},
            "pids": {"limit": 64}}"#,
    ))
    .unwrap();
    assert_eq!(t.read("memory.max"), "268435456");
    assert_eq!(t.read("memory.swap.max"), "268435456");
    assert_eq!(t.read("memory.low"), "");
    assert_eq!(t.read("cpu.weight"), "39");
    assert_eq!(t.read("cpu.max"), "150000 100000");
    assert_eq!(t.read("pids.max"), "64");

    // The io controller is missing: nothing at all is written.
    let err = cg
        .apply(&res(
            r#"{"pids": {"limit": 5}, "blockIO": {"weight": 100}}"#,
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("io controller not enabled"),
        "{err}"
    );
    assert_eq!(t.read("pids.max"), "64");

    // A unified key that is a directory, not a control file.
    std::fs::create_dir(t.path().join("child")).unwrap();
    let err = cg
        .apply(&res(r#"{"unified": {"child": "1"}}"#))
        .unwrap_err();
    assert!(matches!(err, CgroupError::UnifiedKey { .. }), "{err}");
}
