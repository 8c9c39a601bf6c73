//! virtio-fs seen by the real guest kernel: a host directory shared with `--share` mounts
//! with `mount -t virtiofs`, host files read back, guest writes land in the host directory,
//! and neither a host symlink pointing outside the share nor `..` reaches a file next to it.
//!
//! The share lives under a directory the test host mounts read-write.

use std::path::PathBuf;

use moat_tests::guest::{boot_moat, BootSpec, GuestImage};
use moat_tests::testhost::TestHost;

/// Names the scratch directory of the run inside the test host.
const FS_DIR_ENV: &str = "MOAT_VIRTIOFS_TEST_DIR";

/// The value of `key=` on the guest console.
fn console_value<'a>(serial: &'a str, key: &str) -> Option<&'a str> {
    serial
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn virtiofs_shares_a_host_directory_and_confines_the_guest() {
    let image = GuestImage::default_image().unwrap_or_else(|e| panic!("guest image: {e}"));
    // `<dir>/secret.txt` next to `<dir>/share/`, which links to it by absolute path.
    // Removed on drop; none inside the test host, which uses the outer run's.
    let (_scratch, dir) = match std::env::var_os(FS_DIR_ENV) {
        Some(dir) => (None, PathBuf::from(dir)),
        None => {
            let scratch = tempfile::Builder::new()
                .prefix("moat-virtiofs-")
                .tempdir()
                .expect("scratch dir");
            let dir = scratch.path().to_path_buf();
            let share = dir.join("share");
            std::fs::create_dir_all(&share).expect("share dir");
            let secret = dir.join("secret.txt");
            std::fs::write(&secret, format!("moat-secret-{}\n", std::process::id()))
                .expect("secret");
            std::fs::write(share.join("hello.txt"), "hello-from-the-host\n").expect("hello");
            std::os::unix::fs::symlink(&secret, share.join("link-to-secret")).expect("link");
            (Some(scratch), dir)
        }
    };
    let share = dir.join("share");
    let secret = std::fs::read_to_string(dir.join("secret.txt")).expect("read secret");
    let secret = secret.trim().to_string();
    let host = TestHost::builder().rw_dir(&dir).env(FS_DIR_ENV, &dir);
    let share_in = share.clone();
    moat_tests::on_kvm_with(
        "virtiofs_shares_a_host_directory_and_confines_the_guest",
        host,
        move || {
            let vmm = moat_tests::cargo_bin("moat-vmm");
            let mut spec = BootSpec::new(image);
            spec.append = "-- virtiofs".into();
            spec.extra_args = vec![format!("--share=moatfs={}", share_in.display())];
            let run = boot_moat(&vmm, &spec).expect("boot");
            let d = run.describe();
            println!("{d}");
            assert_eq!(run.status, Some(0), "{d}");
            assert_eq!(console_value(&run.serial, "fs_mount"), Some("0"), "{d}");
            assert_eq!(
                console_value(&run.serial, "fs_hello"),
                Some("hello-from-the-host"),
                "{d}"
            );
            assert_eq!(console_value(&run.serial, "fs_write"), Some("0"), "{d}");
            assert!(
                console_value(&run.serial, "fs_link").is_some()
                    && console_value(&run.serial, "fs_dotdot").is_some(),
                "{d}"
            );
            assert!(!run.serial.contains(&secret), "the secret leaked: {d}");
            assert!(!run.stderr.contains(&secret), "the secret leaked: {d}");
            assert_eq!(console_value(&run.serial, "fs_umount"), Some("0"), "{d}");
        },
    );
    // Back on the host (the directory is shared read-write with the test host).
    let written = std::fs::read_to_string(share.join("from-guest.txt")).expect("from-guest.txt");
    assert_eq!(written, "moat-from-guest\n");
}
