use std::path::PathBuf;

use containerd_shim::protos::types::mount::Mount as ApiMount;

use super::*;
use crate::host::testing::{in_private_namespace, mount_points, Flipper};
use crate::pod::cleanup::remove_container_dir;
use crate::pod::layout::PodDir;

const LIMITS: ShareLimits = ShareLimits {
    size_kib: 256,
    inodes: 128,
};

/// A pod dir with its share, host sources and a canary outside.
struct Fixture {
    _tmp: tempfile::TempDir,
    pod: PodDir,
    share: PodShare,
    src: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::TempDir::new().unwrap();
    let pod = PodDir {
        root: tmp.path().join("ns/pod"),
    };
    let src = tmp.path().join("src");
    let outside = tmp.path().join("outside");
    for d in [&pod.root, &src.join("d"), &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(src.join("f"), "file").unwrap();
    std::fs::write(outside.join("canary"), "canary").unwrap();
    let share = PodShare::create(&ConfinedDir::open(&pod.root).unwrap(), LIMITS).unwrap();
    Fixture {
        _tmp: tmp,
        pod,
        share,
        src,
        outside,
    }
}

fn container<'a>(id: &'a str, f: &'a Fixture, binds: &'a [HostBind]) -> ContainerMounts<'a> {
    ContainerMounts {
        id,
        rootfs: &[],
        bundle: &f.pod.root,
        spec_root: &f.src,
        root_readonly: false,
        binds,
    }
}

fn binds(f: &Fixture) -> Vec<HostBind> {
    let bind = |source: PathBuf, share_name: &str, readonly| HostBind {
        source,
        share_name: share_name.into(),
        readonly,
    };
    vec![
        bind(f.src.join("d"), "0-d", false),
        bind(f.src.join("f"), "1-f", true),
    ]
}

/// No mount point lies outside the pod dir that was not there before.
fn assert_nothing_mounted_outside(f: &Fixture, before: &[PathBuf]) {
    for p in mount_points() {
        assert!(
            p.starts_with(&f.pod.root) || before.contains(&p),
            "mount outside the pod dir: {}",
            p.display()
        );
    }
    assert_eq!(
        std::fs::read_dir(&f.outside).unwrap().count(),
        1,
        "the canary dir changed"
    );
}

#[test]
fn share_in_a_private_namespace() {
    in_private_namespace(&format!("{}::share_child", module_path!()));
}

#[test]
#[ignore = "run by share_in_a_private_namespace inside unshare"]
fn share_child() {
    let before = mount_points();
    let f = fixture();
    let binds = binds(&f);
    f.share.add_container(&container("c1", &f, &binds)).unwrap();
    let shared = f.pod.shared_container("c1");
    // The guest's view: mounts are there with their own flags, directories are read-only.
    assert_eq!(
        std::fs::read_to_string(shared.join("rootfs/f")).unwrap(),
        "file"
    );
    std::fs::write(shared.join("mounts/0-d/new"), "rw volume").unwrap();
    let erofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
    assert!(erofs(std::fs::write(shared.join("mounts/1-f"), "x")));
    assert!(erofs(std::fs::create_dir(f.pod.share().join("planted"))));
    assert!(erofs(std::os::unix::fs::symlink(
        "/etc",
        shared.join("mounts/2-x")
    )));
    assert!(erofs(std::fs::remove_dir(shared.join("mounts"))));
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        let fields: Vec<&str> = line.split(' ').collect();
        if Path::new(fields[4]).starts_with(&f.pod.root) {
            assert!(
                fields[5].contains("nosuid") && fields[5].contains("nodev"),
                "{line}"
            );
        }
    }
    // A container directory that exists already is refused.
    let e = f
        .share
        .add_container(&container("c1", &f, &[]))
        .unwrap_err();
    assert!(e.to_string().contains("staging/c1"), "{e}");
    // Removal takes the mounts in both views.
    remove_container_dir(&f.pod, "c1");
    let mut left: Vec<_> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(&f.pod.root))
        .collect();
    left.sort();
    assert_eq!(left, [f.pod.share(), f.pod.staging()], "{left:?}");
    assert_nothing_mounted_outside(&f, &before);
}

#[test]
fn planted_links_in_a_private_namespace() {
    in_private_namespace(&format!("{}::planted_links_child", module_path!()));
}

#[test]
#[ignore = "run by planted_links_in_a_private_namespace inside unshare"]
fn planted_links_child() {
    let before = mount_points();
    let f = fixture();
    let staging = f.pod.staging();
    std::os::unix::fs::symlink(&f.outside, staging.join("c2")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", staging.join("c3")).unwrap();
    for id in ["c2", "c3"] {
        let e = f.share.add_container(&container(id, &f, &[])).unwrap_err();
        assert!(e.to_string().contains(&format!("staging/{id}")), "{e}");
    }
    // Links inside a container's directory: its rootfs and a mount's parent.
    let c4 = f.share.staging.create_dir(Path::new("c4"), 0o700).unwrap();
    std::os::unix::fs::symlink(&f.outside, staging.join("c4/mounts")).unwrap();
    let e = mounts::bind(&f.src, &c4, Path::new("mounts/0-d"), false).unwrap_err();
    assert!(e.to_string().contains("c4/mounts"), "{e}");
    std::os::unix::fs::symlink(&f.outside, staging.join("c4/rootfs")).unwrap();
    let e = c4.dir(Path::new("rootfs")).unwrap_err();
    assert!(e.to_string().contains("c4/rootfs"), "{e}");
    assert_nothing_mounted_outside(&f, &before);
}

#[test]
fn swapped_mount_points_in_a_private_namespace() {
    in_private_namespace(&format!("{}::swapped_mount_points_child", module_path!()));
}

#[test]
#[ignore = "run by swapped_mount_points_in_a_private_namespace inside unshare"]
fn swapped_mount_points_child() {
    let before = mount_points();
    let f = fixture();
    let c = f.share.staging.create_dir(Path::new("c"), 0o700).unwrap();
    std::fs::create_dir(c.path().join("rootfs")).unwrap();
    std::os::unix::fs::symlink(&f.outside, c.path().join("swap")).unwrap();
    let flipper = Flipper::start(c.path().join("rootfs"), c.path().join("swap"));
    let (mut mounted, mut refused) = (0, 0);
    for i in 0..1000 {
        let rel = Path::new("rootfs").join(format!("m{i}"));
        match mounts::bind(&f.src.join("d"), &c, &rel, i % 2 == 0) {
            Ok(()) => mounted += 1,
            Err(e) => {
                assert!(e.to_string().contains("c/rootfs"), "{e}");
                refused += 1;
            }
        }
        assert_nothing_mounted_outside(&f, &before);
    }
    let flips = flipper.stop();
    println!("1000 rounds, {flips} swaps: {mounted} mounted inside, {refused} refused");
    assert!(
        refused > 0,
        "the race never hit a symlink: the test proves nothing"
    );
    remove_container_dir(&f.pod, "c");
    assert_nothing_mounted_outside(&f, &before);
}

#[test]
fn bounded_staging_in_a_private_namespace() {
    in_private_namespace(&format!("{}::bounded_staging_child", module_path!()));
}

#[test]
#[ignore = "run by bounded_staging_in_a_private_namespace inside unshare"]
fn bounded_staging_child() {
    let f = fixture();
    let staging = f.pod.staging();
    let chunk = vec![0u8; 64 << 10];
    let mut bytes = 0u64;
    let mut file = std::fs::File::create(staging.join("fill")).unwrap();
    let err = loop {
        match std::io::Write::write(&mut file, &chunk) {
            Ok(n) => bytes += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(bytes <= LIMITS.size_kib << 10, "{bytes} bytes");
    drop(file);
    std::fs::remove_file(staging.join("fill")).unwrap();
    let mut files = 0u64;
    let err = loop {
        match std::fs::File::create(staging.join(format!("i{files}"))) {
            Ok(_) => files += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(files <= LIMITS.inodes, "{files} inodes");
    // A rootfs mount with containerd's bind type is nosuid,nodev too, and read-only if asked.
    let m = ApiMount {
        type_: "bind".into(),
        source: f.src.display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    };
    for i in 0..files {
        std::fs::remove_file(staging.join(format!("i{i}"))).unwrap();
    }
    let c = ContainerMounts {
        rootfs: std::slice::from_ref(&m),
        ..container("c5", &f, &[])
    };
    f.share.add_container(&c).unwrap();
    let rootfs = f.pod.shared_container("c5").join("rootfs");
    assert!(
        std::fs::write(rootfs.join("x"), "x").is_err(),
        "ro rootfs writable"
    );
}
