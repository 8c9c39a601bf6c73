use std::os::unix::fs::MetadataExt;

use super::*;
use crate::host::testing::Flipper;

/// A confining dir `root/tree` and an `outside` dir beside it.
struct Fixture {
    _tmp: tempfile::TempDir,
    tree: ConfinedDir,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::TempDir::new().unwrap();
    let root = tmp.path().join("tree");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let tree = ConfinedDir::open(&root).unwrap();
    Fixture {
        _tmp: tmp,
        tree,
        outside,
    }
}

/// The (dev, ino) an fd refers to.
fn ident(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap();
    (st.st_dev, st.st_ino)
}

fn ident_of(path: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.dev(), m.ino())
}

#[test]
fn makes_and_opens_plain_paths() {
    let f = fixture();
    let d = f.tree.create_dir_all(Path::new("a/b/c"), 0o700).unwrap();
    assert_eq!(d.path(), f.tree.path().join("a/b/c"));
    let fd = f.tree.create_file(Path::new("a/m/file"), 0o600).unwrap();
    assert_eq!(ident(fd.as_fd()), ident_of(&f.tree.path().join("a/m/file")));
    let mode = std::fs::metadata(f.tree.path().join("a/b")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn existing_entries_are_refused() {
    let f = fixture();
    f.tree.create_dir(Path::new("c1"), 0o700).unwrap();
    let e = f.tree.create_dir(Path::new("c1"), 0o700).unwrap_err();
    assert!(
        matches!(e, PathError::Exists(ref p) if p.ends_with("c1")),
        "{e}"
    );
    f.tree.create_file(Path::new("c1/f"), 0o600).unwrap();
    let e = f.tree.create_file(Path::new("c1/f"), 0o600).unwrap_err();
    assert!(e.to_string().contains("c1/f"), "{e}");
}

#[test]
fn symlinks_dangling_links_and_dotdot_are_refused() {
    let f = fixture();
    let root = f.tree.path().to_path_buf();
    std::os::unix::fs::symlink(&f.outside, root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink(".", root.join("self")).unwrap();
    for rel in ["link", "link/sub", "dangling", "self/x"] {
        let e = f.tree.create_dir_all(Path::new(rel), 0o700).unwrap_err();
        assert!(matches!(e, PathError::Escapes { .. }), "{rel}: {e}");
        assert!(e.to_string().contains(&*root.to_string_lossy()), "{e}");
    }
    for rel in ["link/f", "dangling"] {
        let e = f.tree.create_file(Path::new(rel), 0o600).unwrap_err();
        let first = rel.split('/').next().unwrap();
        assert!(e.to_string().contains(first), "{rel}: {e}");
    }
    for rel in ["../outside", "/etc", "", "a/../../outside"] {
        let e = f.tree.create_dir_all(Path::new(rel), 0o700).unwrap_err();
        assert!(matches!(e, PathError::NotRelative { .. }), "{rel:?}: {e}");
    }
    // The dangling link's target was not created through it.
    assert!(!Path::new("/nonexistent").exists());
    assert_eq!(std::fs::read_dir(&f.outside).unwrap().count(), 0);
}

#[test]
fn a_dir_swapped_for_a_symlink_during_setup_is_never_followed() {
    let f = fixture();
    let parent = f.tree.create_dir(Path::new("c"), 0o700).unwrap();
    let target = parent.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    let swap = parent.path().join("swap");
    std::os::unix::fs::symlink(&f.outside, &swap).unwrap();
    // The classic attack: atomically exchange the real directory with a symlink out.
    let flipper = Flipper::start(target, swap);
    let outside_id = ident_of(&f.outside);
    let (mut opened, mut refused) = (0, 0);
    for i in 0..1000 {
        match parent.create_dir_all(&Path::new("rootfs").join(format!("sub{i}")), 0o700) {
            Ok(d) => {
                assert_ne!(ident(d.fd()), outside_id);
                opened += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("rootfs"), "{e}");
                refused += 1;
            }
        }
        if let Ok(fd) = parent.create_file(&Path::new("rootfs").join(format!("f{i}")), 0o600) {
            assert_ne!(ident(fd.as_fd()), outside_id);
        }
    }
    let flips = flipper.stop();
    println!("1000 rounds, {flips} swaps: {opened} opened inside, {refused} refused");
    assert!(
        refused > 0,
        "the race never hit a symlink: the test proves nothing"
    );
    assert_eq!(
        std::fs::read_dir(&f.outside).unwrap().count(),
        0,
        "something was made outside the tree"
    );
}
