//! Unit tests of the pod cgroup against directories laid out like cgroupfs (the kernel's part
//! — control files appearing in a new cgroup, vanishing at rmdir — done by the test), and one
//! ignored test against the real `/sys/fs/cgroup`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use tempfile::TempDir;

use super::*;

fn p(spec: &str) -> CgroupPath {
    CgroupPath::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A cgroup v2 root with a kubelet-made pod cgroup `kubepods/burstable/pod1`.
fn fake_v2() -> TempDir {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    write(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    write(&root.join("cgroup.subtree_control"), "cpu memory pids\n");
    for dir in ["kubepods", "kubepods/burstable", "kubepods/burstable/pod1"] {
        write(
            &root.join(dir).join("cgroup.subtree_control"),
            "cpu memory pids\n",
        );
    }
    write(
        &root.join("kubepods/burstable/pod1/memory.max"),
        "536870912\n",
    );
    write(
        &root.join("kubepods/burstable/pod1/cpu.max"),
        "150000 100000\n",
    );
    write(&root.join("kubepods/burstable/memory.max"), "max\n");
    write(&root.join("kubepods/burstable/cpu.max"), "max 100000\n");
    tmp
}

/// A cgroup v1 (hybrid) root: `cpu` and `cpuacct` link to one `cpu,cpuacct` hierarchy.
fn fake_v1() -> TempDir {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    for h in [
        "memory",
        "cpu,cpuacct",
        "cpuset",
        "pids",
        "blkio",
        "hugetlb",
        "devices",
        "systemd",
        "unified",
    ] {
        write(&root.join(h).join("cgroup.procs"), "");
    }
    for link in ["cpu", "cpuacct"] {
        std::os::unix::fs::symlink("cpu,cpuacct", root.join(link)).unwrap();
    }
    write(&root.join("cpuset/cpuset.cpus"), "0-3\n");
    write(&root.join("cpuset/cpuset.mems"), "0\n");
    tmp
}

/// What the kernel does at mkdir: a new cgroup has its `cgroup.procs`.
fn kernel_populates(dirs: &[PathBuf]) {
    for d in dirs {
        write(&d.join("cgroup.procs"), "");
    }
}

/// What the kernel does at rmdir: a cgroup's control files go with it.
fn kernel_empties(dirs: &[PathBuf]) {
    for d in dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_file() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

#[test]
fn paths_and_systemd_forms_map_like_runc() {
    let cri = p("/kubepods/burstable/pod1/abc");
    assert_eq!(cri.components(), ["kubepods", "burstable", "pod1", "abc"]);
    assert_eq!(cri.relative(), Path::new("kubepods/burstable/pod1/abc"));
    assert_eq!(
        cri.parent().unwrap().to_string(),
        "/kubepods/burstable/pod1"
    );
    assert_eq!(p("//default//c1/").to_string(), "/default/c1");
    assert_eq!(p("/top").parent(), None, "the root's limits are no pod's");
    let sd = p("kubepods-burstable-pod1.slice:cri-containerd:abc");
    assert_eq!(
        sd.to_string(),
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
         cri-containerd-abc.scope"
    );
    assert_eq!(
        sd.spec(),
        "kubepods-burstable-pod1.slice:cri-containerd:abc"
    );
    assert_eq!(
        sd.parent().unwrap().to_string(),
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
    );
    assert_eq!(
        p(":cri-containerd:x").to_string(),
        "/system.slice/cri-containerd-x.scope"
    );
    assert_eq!(p("-.slice:pre:x").to_string(), "/pre-x.scope");
    assert_eq!(p("machine.slice::x").to_string(), "/machine.slice/x.scope");
}

#[test]
fn bad_names_are_refused() {
    for bad in [
        "",
        "/",
        "relative/path",
        "/a/../b",
        "/..",
        "/a/./b",
        "/a/b\n",
        "/a\0b",
        "a:b",
        "a:b:c:d",
        "kubepods.slice:cri:../x",
        "kubepods.slice:cri:a/b",
        "kubepods.slice:cri:x.slice",
        "kubepods.slice:cri:",
        "kubepods:cri:x",
        "a--b.slice:cri:x",
        "-a.slice:cri:x",
        "a/b.slice:cri:x",
        ".slice:cri:x",
    ] {
        let e = CgroupPath::parse(bad).expect_err(bad);
        assert!(
            e.to_string().starts_with("linux.cgroupsPath"),
            "{bad:?}: {e}"
        );
    }
    let long = format!("/{}", "a/".repeat(3000));
    assert!(CgroupPath::parse(&long).is_err());
}

#[test]
fn the_spec_names_the_cgroup_and_the_oom_score() {
    let spec = json!({
        "linux": { "cgroupsPath": "/kubepods/pod1/abc" },
        "process": { "oomScoreAdj": -998 },
    });
    assert_eq!(
        cgroup_of_spec(&spec).unwrap(),
        Some(p("/kubepods/pod1/abc"))
    );
    assert_eq!(OomScoreAdj::of_spec(&spec).unwrap().unwrap().value(), -998);
    let none = json!({ "linux": { "cgroupsPath": "" }, "process": {} });
    assert_eq!(cgroup_of_spec(&none).unwrap(), None);
    assert_eq!(OomScoreAdj::of_spec(&none).unwrap(), None);
    assert_eq!(OomScoreAdj::of_spec(&json!({})).unwrap(), None);
    let e = cgroup_of_spec(&json!({ "linux": { "cgroupsPath": "/a/../b" } })).unwrap_err();
    assert!(e.to_string().contains("\"/a/../b\""), "{e}");
    for bad in [json!(1001), json!(-1001), json!("5"), json!(1.5)] {
        let spec = json!({ "process": { "oomScoreAdj": bad } });
        let e = OomScoreAdj::of_spec(&spec).unwrap_err();
        assert!(e.to_string().contains("process.oomScoreAdj"), "{e}");
    }
    assert_eq!(OomScoreAdj::new(-1000).unwrap().value(), -1000);
}

#[test]
fn v2_cri_pod_gets_its_leaf_under_the_kubelets_pod_cgroup() {
    let tmp = fake_v2();
    let root = tmp.path();
    let record_path = root.join("pod.json");
    let cg = PodCgroup::create(root, &p("/kubepods/burstable/pod1/abc"), &record_path).unwrap();
    let leaf = root.join("kubepods/burstable/pod1/abc");
    assert!(leaf.is_dir());
    assert_eq!(cg.record.joined, std::slice::from_ref(&leaf));
    assert_eq!(
        cg.record.created,
        std::slice::from_ref(&leaf),
        "only the leaf is new"
    );
    // The record is on disk as it is in memory.
    let on_disk: CgroupRecord =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(on_disk, cg.record);
    // Controllers the pod cgroup lacked are enabled down the path; the root had cpu, memory
    // and pids, and gets cpuset and io.
    assert_eq!(read(&root.join("cgroup.subtree_control")), "+cpuset +io");
    assert_eq!(
        read(&root.join("kubepods/burstable/pod1/cgroup.subtree_control")),
        "+cpuset +io"
    );
    kernel_empties(std::slice::from_ref(&leaf));
    cg.remove();
    assert!(!leaf.exists() && !record_path.exists());
    assert!(
        root.join("kubepods/burstable/pod1/memory.max").is_file(),
        "the kubelet's stays"
    );
}

#[test]
fn v2_ctr_pod_makes_and_removes_its_namespace_cgroup() {
    let tmp = fake_v2();
    let root = tmp.path();
    let record_path = root.join("pod.json");
    let cg = PodCgroup::create(root, &p("/default/c1"), &record_path).unwrap();
    let (ns, leaf) = (root.join("default"), root.join("default/c1"));
    assert_eq!(cg.record.created, [ns.clone(), leaf.clone()]);
    assert_eq!(cg.record.cgroups_path, "/default/c1");
    // The new parent enables for its child what the root enables for it.
    assert_eq!(
        read(&ns.join("cgroup.subtree_control")),
        "+cpu +cpuset +io +memory +pids"
    );
    kernel_empties(&[ns.clone(), leaf.clone()]);
    cg.remove();
    assert!(
        !ns.exists(),
        "the namespace cgroup the pod made is gone too"
    );
}

#[test]
fn v2_systemd_form_lands_where_systemd_puts_the_scope() {
    let tmp = fake_v2();
    let root = tmp.path();
    let slice = root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice");
    std::fs::create_dir_all(&slice).unwrap();
    let path = p("kubepods-burstable-pod1.slice:cri-containerd:abc");
    let cg = PodCgroup::create(root, &path, &root.join("pod.json")).unwrap();
    let scope = slice.join("cri-containerd-abc.scope");
    assert_eq!(cg.record.created, std::slice::from_ref(&scope));
    assert!(scope.is_dir());
}

#[test]
fn v1_joins_every_accounting_hierarchy_and_seeds_cpuset() {
    let tmp = fake_v1();
    let root = tmp.path();
    // A directory that is not a mounted hierarchy (no cgroup.procs) is skipped.
    std::fs::remove_file(root.join("blkio/cgroup.procs")).unwrap();
    let record_path = root.join("pod.json");
    let cg = PodCgroup::create(root, &p("/kubepods/pod1/abc"), &record_path).unwrap();
    let trees = ["memory", "cpu,cpuacct", "cpuset", "pids"];
    let real = root.canonicalize().unwrap();
    let joined: Vec<PathBuf> = trees
        .iter()
        .map(|t| real.join(t).join("kubepods/pod1/abc"))
        .collect();
    assert_eq!(
        cg.record.joined, joined,
        "one per hierarchy, cpu and cpuacct once"
    );
    assert_eq!(cg.record.created.len(), 3 * trees.len());
    for h in ["blkio", "hugetlb", "devices", "systemd", "unified"] {
        assert!(!root.join(h).join("kubepods").exists(), "{h} is not joined");
    }
    // Each new cpuset cgroup has its parent's CPUs and memory nodes.
    for dir in ["kubepods", "kubepods/pod1", "kubepods/pod1/abc"] {
        let d = root.join("cpuset").join(dir);
        assert_eq!(
            (read(&d.join("cpuset.cpus")), read(&d.join("cpuset.mems"))),
            ("0-3".into(), "0".into()),
            "{dir}"
        );
    }
    kernel_empties(&cg.record.created);
    let created = cg.record.created.clone();
    cg.remove();
    assert!(created.iter().all(|d| !d.exists()), "{created:?}");
    assert!(root.join("cpuset/cpuset.cpus").is_file());
}

#[test]
fn v1_limits_come_from_the_pod_cgroup() {
    let tmp = fake_v1();
    let root = tmp.path();
    write(
        &root.join("memory/kubepods/pod1/memory.limit_in_bytes"),
        "268435456\n",
    );
    write(
        &root.join("cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us"),
        "250000\n",
    );
    write(
        &root.join("cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us"),
        "100000\n",
    );
    let l = parent_limits(root, &p("/kubepods/pod1/abc")).unwrap();
    assert_eq!(l.memory_bytes, Some(256 << 20));
    assert_eq!(l.cpu.map(|q| q.vcpus()), Some(3));
    assert_eq!(l.source, "pod cgroup /kubepods/pod1");
    // No limit: v1's huge "unlimited" and a quota of -1.
    write(
        &root.join("memory/kubepods/pod1/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    write(
        &root.join("cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us"),
        "-1\n",
    );
    assert_eq!(parent_limits(root, &p("/kubepods/pod1/abc")), None);
}

#[test]
fn v2_limits_come_from_the_pod_cgroup() {
    let tmp = fake_v2();
    let root = tmp.path();
    let l = parent_limits(root, &p("/kubepods/burstable/pod1/abc")).unwrap();
    assert_eq!(l.memory_bytes, Some(512 << 20));
    assert_eq!(
        l.cpu.map(|q| (q.quota, q.period, q.vcpus())),
        Some((150000, 100000, 2))
    );
    // "max" is no limit; no cgroup, or the root above, neither.
    assert_eq!(parent_limits(root, &p("/kubepods/burstable/x")), None);
    assert_eq!(parent_limits(root, &p("/nothing/here")), None);
    assert_eq!(parent_limits(root, &p("/top")), None);
}

#[test]
fn symlinks_and_files_on_the_way_are_refused() {
    let tmp = fake_v2();
    let root = tmp.path();
    let outside = TempDir::new().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("escape")).unwrap();
    let record_path = root.join("pod.json");
    let e = PodCgroup::create(root, &p("/escape/abc"), &record_path).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::Unsafe {
                why: "is a symlink",
                ..
            }
        ),
        "{e}"
    );
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    write(&root.join("afile"), "");
    let e = PodCgroup::create(root, &p("/afile/abc"), &record_path).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    // The limits are not read through a symlink either.
    write(&outside.path().join("memory.max"), "1048576\n");
    assert_eq!(parent_limits(root, &p("/escape/abc")), None);
    assert!(!record_path.exists());
}

#[test]
fn a_failed_setup_leaves_nothing() {
    let tmp = fake_v1();
    let root = tmp.path();
    // A cpuset parent without CPUs to copy.
    std::fs::remove_file(root.join("cpuset/cpuset.cpus")).unwrap();
    let record_path = root.join("pod.json");
    let e = PodCgroup::create(root, &p("/default/c1"), &record_path).unwrap_err();
    assert!(e.to_string().contains("cpuset.cpus"), "{e}");
    for h in ["memory", "cpu,cpuacct", "cpuset", "pids", "blkio"] {
        assert!(!root.join(h).join("default").exists(), "{h}");
    }
    assert!(!record_path.exists());
    let empty = TempDir::new().unwrap();
    let e = PodCgroup::create(empty.path(), &p("/default/c1"), &record_path).unwrap_err();
    assert!(matches!(e, CgroupError::NoHierarchy(_)), "{e}");
}

#[test]
fn the_vmm_child_joins_through_the_open_procs_files() {
    let tmp = fake_v1();
    let root = tmp.path();
    let cg = PodCgroup::create(root, &p("/default/c1"), &root.join("pod.json")).unwrap();
    kernel_populates(&cg.record.joined);
    let procs = cg.procs_files().unwrap();
    let fds = procs.fds();
    assert_eq!(fds.len(), cg.record.joined.len());
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: join_in_child only calls write(2).
    unsafe { cmd.pre_exec(move || join_in_child(&fds)) };
    assert!(cmd.status().unwrap().success());
    for dir in &cg.record.joined {
        assert_eq!(read(&dir.join("cgroup.procs")), "0", "{}", dir.display());
    }
}

#[test]
fn delete_after_a_dead_shim_removes_what_the_record_says() {
    let tmp = fake_v2();
    let root = tmp.path();
    let record_path = root.join("pod.json");
    let cg = PodCgroup::create(root, &p("/default/c1"), &record_path).unwrap();
    let created = cg.record.created.clone();
    drop(cg); // the shim died
    kernel_empties(&created);
    let what = cleanup_recorded(&record_path).unwrap();
    assert_eq!(what, "cgroup /default/c1 removed");
    assert!(created.iter().all(|d| !d.exists()) && !record_path.exists());
    assert_eq!(
        cleanup_recorded(&record_path),
        None,
        "nothing recorded, nothing done"
    );
    // A record naming directories outside its root (or climbing out) removes nothing there.
    let victim = TempDir::new().unwrap();
    let inner = victim.path().join("keep");
    std::fs::create_dir(&inner).unwrap();
    let bad = CgroupRecord {
        cgroups_path: "/x".into(),
        root: root.to_path_buf(),
        joined: Vec::new(),
        created: vec![
            inner.clone(),
            root.join("../")
                .join(victim.path().file_name().unwrap())
                .join("keep"),
        ],
    };
    std::fs::write(&record_path, serde_json::to_vec(&bad).unwrap()).unwrap();
    cleanup_recorded(&record_path).unwrap();
    assert!(inner.is_dir());
}

/// Against the real cgroup filesystem (root, a writable `/sys/fs/cgroup`): a child cgroup of
/// this process's own, joined by a child process before exec, then removed.
#[test]
#[ignore = "needs root and the host's /sys/fs/cgroup; run with --ignored"]
fn real_cgroupfs_round_trip() {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    // v2's line, else v1 memory's: the new cgroup goes under the one this test runs in.
    let base = own
        .lines()
        .find_map(|l| {
            l.strip_prefix("0::")
                .filter(|_| Path::new(CGROUP_ROOT).join("cgroup.controllers").exists())
        })
        .or_else(|| {
            own.lines()
                .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))
        })
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let path = p(&format!("{base}/moat-unit-{}/pod", std::process::id()));
    let tmp = TempDir::new().unwrap();
    let record_path = tmp.path().join("pod.json");
    let cg = PodCgroup::create(Path::new(CGROUP_ROOT), &path, &record_path).unwrap();
    let procs = cg.procs_files().unwrap();
    let fds = procs.fds();
    let mut cmd = std::process::Command::new("/bin/cat");
    cmd.arg("/proc/self/cgroup");
    // SAFETY: join_in_child only calls write(2).
    unsafe { cmd.pre_exec(move || join_in_child(&fds)) };
    let out = cmd.output().unwrap();
    drop(procs);
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    let joined = seen
        .lines()
        .filter(|l| l.ends_with(&path.to_string()))
        .count();
    assert_eq!(joined, cg.record.joined.len(), "{seen}");
    let created = cg.record.created.clone();
    cg.remove();
    assert!(created.iter().all(|d| !d.exists()), "{created:?}");
}
