//! The attack logic against ordinary directories on the host (what runs unprivileged; the
//! privileged results, e.g. mknod of a device, are only checked for their form).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use super::probes::{self, FillCaps};
use super::race::{self, RaceConfig};
use super::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `key=value` of the final line `line`.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn errno_names() {
    assert_eq!(errno_name(libc::EROFS), "EROFS");
    assert_eq!(errno_name(libc::EPERM), "EPERM");
    assert_eq!(errno_name(9999), "E9999");
    assert_eq!(outcome(&Ok::<(), io::Error>(())), "ok");
    let e = io::Error::from_raw_os_error(libc::ENOSPC);
    assert_eq!(outcome(&Err::<(), _>(e)), "ENOSPC");
}

#[test]
fn args_parse() {
    let a = Args::parse(&strings(&["d", "--tag", "x"]), &["tag"]).unwrap();
    assert_eq!(a.one_positional("dir").unwrap(), "d");
    assert_eq!(a.flags["tag"], "x");
    assert!(Args::parse(&strings(&["--tag"]), &["tag"]).is_err());
    assert!(Args::parse(&strings(&["--nope", "1"]), &["tag"]).is_err());
    let a = Args::parse(&strings(&["--seconds", "x"]), &["seconds"]).unwrap();
    assert!(a.number("seconds").is_err());
    assert!(a.path("share").is_err());
    assert!(
        run("race", &strings(&["--share", "/s"])).is_err(),
        "no --target"
    );
    assert!(run("whoami", &strings(&["extra"])).is_err());
    assert!(run("bogus", &[]).is_err());
}

#[test]
fn predicted_ids_follow_the_highest_seen() {
    let names = |v: &[&str]| v.iter().map(Into::into).collect::<Vec<_>>();
    assert_eq!(race::predicted("v", &[]), ["v-0", "v-1", "v-2"]);
    let seen = names(&["v-3", "v-10", "v-x", "w-20", "v"]);
    assert_eq!(race::predicted("v", &seen), ["v-11", "v-12", "v-13"]);
}

/// `<share>/{v-0/{rootfs/, mounts/0-vol/}, v-1/rootfs/}`, all writable: one round plants at
/// every slot of both containers and of the predicted `v-2`..`v-4`.
#[test]
fn race_plants_everywhere_in_a_writable_share() {
    let tmp = TempDir::new().unwrap();
    let share = tmp.path().join("share");
    for d in ["v-0/rootfs", "v-0/mounts/0-vol", "v-1/rootfs"] {
        std::fs::create_dir_all(share.join(d)).unwrap();
    }
    let target = tmp.path().join("canary");
    let cfg = RaceConfig {
        share: share.clone(),
        target: target.clone(),
        predict: Some("v".into()),
        duration: Duration::ZERO,
        stop_file: None,
    };
    let t = race::race(&cfg);
    assert_eq!(t.rounds, 1);
    assert_eq!(t.attempts, t.planted + t.erofs() + t.other());
    let is_link_to_target =
        |p: &str| std::fs::read_link(share.join(p)).ok() == Some(target.clone());
    for slot in [
        "v-0/rootfs",
        "v-0/mounts/0-vol",
        "v-1/rootfs",
        "v-2/rootfs",
        "v-4/rootfs",
    ] {
        assert!(is_link_to_target(slot), "{slot} not planted: {t:?}");
    }
    // Learned from v-0: predicted directories get a `mounts/0-vol` too, as does v-1.
    assert!(is_link_to_target("v-2/mounts/0-vol"), "{t:?}");
    assert!(is_link_to_target("v-1/mounts/0-vol"), "{t:?}");
    assert!(t.planted >= 8, "{t:?}");
    assert_eq!(t.erofs(), 0);
    let last = t.report().pop().unwrap();
    assert!(last.starts_with("ATTACK race attempts="), "{last}");
    assert_eq!(field(&last, "planted"), t.planted.to_string());
    assert_eq!(field(&last, "seen"), "2");
    // Nothing of the tool's own temporary names is left.
    let left = std::fs::read_dir(share.join("v-0")).unwrap();
    assert!(left
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".moat-attack-")));
}

/// A stop file ends the race after the round that sees it; with nothing to attack there are
/// no attempts.
#[test]
fn race_stops_on_the_stop_file() {
    let tmp = TempDir::new().unwrap();
    let stop = tmp.path().join("stop");
    std::fs::write(&stop, "").unwrap();
    let cfg = RaceConfig {
        share: tmp.path().join("empty"),
        target: "/nowhere".into(),
        predict: None,
        duration: Duration::from_secs(3600),
        stop_file: Some(stop),
    };
    std::fs::create_dir(&cfg.share).unwrap();
    let t = race::race(&cfg);
    assert_eq!((t.rounds, t.attempts), (1, 0));
}

#[test]
fn fill_stops_at_its_caps_and_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let caps = FillCaps {
        mib: Some(2),
        files: Some(5),
    };
    let r = probes::fill(tmp.path(), caps);
    assert_eq!((r.bytes, r.files, r.removed), (2 << 20, 5, 5), "{r:?}");
    assert_eq!((r.data_errno, r.errno, r.capped), (None, None, true));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    let line = r.report().pop().unwrap();
    assert_eq!(field(&line, "bytes"), (2u64 << 20).to_string());
    assert_eq!(field(&line, "errno"), "none");
}

/// A directory that cannot take files fails at once: nothing written, the errno reported.
#[test]
fn fill_reports_the_first_error() {
    let tmp = TempDir::new().unwrap();
    let r = probes::fill(&tmp.path().join("missing"), FillCaps::default());
    assert_eq!((r.bytes, r.files, r.capped), (0, 0, false));
    assert_eq!(
        (r.data_errno, r.errno),
        (Some(libc::ENOENT), Some(libc::ENOENT))
    );
    let line = r.report().pop().unwrap();
    assert_eq!(field(&line, "data_errno"), "ENOENT");
}

/// A FIFO is made; the devices are made or refused as this process's privileges say; nothing
/// is left behind.
#[test]
fn mknod_reports_each_node_and_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("nodes");
    let lines = probes::mknod(&dir);
    let last = lines.last().unwrap();
    assert!(last.starts_with("ATTACK mknod dir="), "{last}");
    assert_eq!(field(last, "fifo"), "ok");
    for key in ["chr", "blk"] {
        assert!(matches!(field(last, key), "ok" | "EPERM"), "{last}");
    }
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        assert!(!ft.is_char_device() && !ft.is_block_device() && !ft.is_fifo());
    }
}

/// The copy is this program; chown to root works only for root, and then the mode is 4755.
#[test]
fn setuid_copies_itself() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("suid");
    let line = probes::setuid(&path).pop().unwrap();
    assert_eq!(field(&line, "copy"), "ok", "{line}");
    let exe = std::fs::metadata("/proc/self/exe").unwrap().len();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), exe);
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        assert_eq!(field(&line, "chmod"), "ok", "{line}");
        assert_eq!(field(&line, "mode"), "4755");
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), 0);
    } else {
        println!("not root: chown to 0 is refused ({line})");
        assert_eq!(field(&line, "chown"), "EPERM", "{line}");
        assert_eq!(field(&line, "chmod"), "skipped", "{line}");
    }
}

#[test]
fn whoami_names_the_effective_uid() {
    let line = probes::whoami();
    // SAFETY: geteuid(2) cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(field(&line, "euid"), euid.to_string());
    assert!(line.starts_with("ATTACK whoami "));
}

/// mount(2) of a tag that does not exist here fails and says so (exit status 1, not 2).
#[test]
fn mount_share_reports_failure() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("m");
    let (lines, ok) = probes::mount_share(&dir, "moat-no-such-tag");
    assert!(!ok);
    let last = lines.last().unwrap();
    assert!(field(last, "result") != "ok", "{last}");
    assert!(Path::new(&dir).is_dir());
}
