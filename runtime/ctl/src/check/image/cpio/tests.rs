use std::path::PathBuf;

use super::*;
use crate::check::testing::{agent_with_marker, gzip, Cpio};

fn write(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join("initrd");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn reads_init_and_its_marker() {
    let dir = tempfile::TempDir::new().unwrap();
    let archive = Cpio::default()
        .dir("dev")
        .file("init", &agent_with_marker("1.2.3"))
        .finish();
    for (bytes, compression) in [
        (gzip(&archive), Compression::Gzip),
        (archive.clone(), Compression::None),
    ] {
        let image = read_initramfs(&write(&dir, &bytes)).unwrap();
        assert_eq!(image.compression, compression);
        let init = image.init.unwrap();
        assert_eq!(init.agent_version.as_deref(), Some("1.2.3"));
        assert!(init.is_executable_file());
        assert_eq!(init.size, agent_with_marker("1.2.3").len() as u64);
    }
}

#[test]
fn a_later_archive_replaces_init() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut both = Cpio::default()
        .file("./init", &agent_with_marker("1.0.0"))
        .finish();
    both.extend([0u8; 512]); // padding between archives
    both.extend(
        Cpio::default()
            .file("init", &agent_with_marker("2.0.0"))
            .finish(),
    );
    let image = read_initramfs(&write(&dir, &gzip(&both))).unwrap();
    assert_eq!(image.init.unwrap().agent_version.as_deref(), Some("2.0.0"));
    // Two gzip members, as `cat a.gz b.gz`.
    let mut members = gzip(&Cpio::default().file("init", b"old").finish());
    members.extend(gzip(
        &Cpio::default()
            .file("init", &agent_with_marker("3.0"))
            .finish(),
    ));
    let image = read_initramfs(&write(&dir, &members)).unwrap();
    assert_eq!(image.init.unwrap().agent_version.as_deref(), Some("3.0"));
}

#[test]
fn no_init_and_no_marker() {
    let dir = tempfile::TempDir::new().unwrap();
    let image = read_initramfs(&write(&dir, &gzip(&Cpio::default().dir("init.d").finish())));
    assert_eq!(image.unwrap().init, None);
    let image = read_initramfs(&write(
        &dir,
        &gzip(&Cpio::default().file("init", b"x").finish()),
    ));
    assert_eq!(image.unwrap().init.unwrap().agent_version, None);
    // A marker without its newline, or with a value that is no version, is no marker.
    for bad in [
        &b"MOAT_AGENT_VERSION=1.0"[..],
        b"MOAT_AGENT_VERSION=\n",
        b"MOAT_AGENT_VERSION=a b\n",
    ] {
        let image = read_initramfs(&write(&dir, &Cpio::default().file("init", bad).finish()));
        assert_eq!(image.unwrap().init.unwrap().agent_version, None, "{bad:?}");
    }
}

#[test]
fn corrupt_archives_are_not_cpio() {
    let dir = tempfile::TempDir::new().unwrap();
    let good = Cpio::default()
        .file("init", &agent_with_marker("1"))
        .finish();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() / 2].to_vec(), "cut short"),
        (gzip(&good)[..40].to_vec(), ""),
        (gzip(b"070701 not hex at all, and then some more text to fill 110 bytes of header ......"), "cut short"),
        (gzip(&[b"070701".to_vec(), vec![b'Z'; 104]].concat()), "not hex"),
        (good.iter().map(|&b| if b == b'0' { b'1' } else { b }).collect(), "neither gzip nor newc"),
        (gzip(&[0u8; 64]), "no entries"),
        (b"\x1f".to_vec(), "neither gzip nor newc"),
    ];
    for (bytes, why) in cases {
        let e = read_initramfs(&write(&dir, &bytes)).unwrap_err();
        assert!(matches!(e, ImageError::NotCpio { .. }), "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    let mut huge_name = Cpio::default().file("init", b"x").finish();
    huge_name[94..102].copy_from_slice(b"00100000");
    let e = read_initramfs(&write(&dir, &huge_name)).unwrap_err();
    assert!(e.to_string().contains("name size 1048576"), "{e}");
}

/// The reader agrees with the real `cpio -o -H newc` (when this host has it).
#[test]
fn reads_what_gnu_cpio_writes() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("init"), agent_with_marker("4.5.6")).unwrap();
    std::fs::write(root.join("odd-name-of-7"), b"12345").unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cd \"$0\" && printf 'dev\\nodd-name-of-7\\ninit\\n' | cpio -o -H newc --quiet")
        .arg(&root)
        .output();
    let archive = match out {
        Ok(o) if o.status.success() => o.stdout,
        other => {
            eprintln!("SKIPPED reads_what_gnu_cpio_writes: no working cpio here: {other:?}");
            return;
        }
    };
    let image = read_initramfs(&write(&dir, &gzip(&archive))).unwrap();
    assert_eq!(image.init.unwrap().agent_version.as_deref(), Some("4.5.6"));
}
