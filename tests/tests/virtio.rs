//! virtio-mmio devices seen by the real guest kernel: virtio-rng feeds /dev/hwrng, virtio-blk
//! disks read back byte-exact, writes to a read-write disk land in the host file, and a
//! read-only disk refuses writes.
//!
//! Disk images are created on the host under a directory the test host mounts read-write.

use std::path::{Path, PathBuf};
use std::process::Command;

use moat_tests::guest::{boot_moat, BootSpec, GuestImage};
use moat_tests::testhost::TestHost;
use tempfile::TempDir;

/// Names the disk-image directory for the run inside the test host.
const DISK_DIR_ENV: &str = "MOAT_VIRTIO_TEST_DISKS";

fn image() -> GuestImage {
    GuestImage::default_image().unwrap_or_else(|e| panic!("guest image: {e}"))
}

/// The value of `key=` on the guest console.
fn console_value<'a>(serial: &'a str, key: &str) -> Option<&'a str> {
    serial
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

fn scratch_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("moat-virtio-{name}-"))
        .tempdir()
        .expect("scratch dir")
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn virtio_rng_feeds_hwrng() {
    let image = image();
    moat_tests::on_kvm("virtio_rng_feeds_hwrng", || {
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let mut spec = BootSpec::new(image);
        spec.append = "-- rng".into();
        let run = boot_moat(&vmm, &spec).expect("boot");
        assert_eq!(run.status, Some(0), "{}", run.describe());
        assert_eq!(
            console_value(&run.serial, "rng_current"),
            Some("virtio_rng.0"),
            "{}",
            run.describe()
        );
        let hex = console_value(&run.serial, "rng_bytes").unwrap_or_default();
        assert_eq!(hex.len(), 128, "64 bytes expected: {}", run.describe());
        assert!(
            hex.as_bytes().chunks(2).any(|b| b != &hex.as_bytes()[..2]),
            "constant bytes: {hex}"
        );
        println!("guest /dev/hwrng: {hex}");
    });
}

#[test]
fn guest_without_rng_still_boots() {
    let image = image();
    moat_tests::on_kvm("guest_without_rng_still_boots", || {
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let mut spec = BootSpec::new(image);
        spec.append = "-- rng".into();
        spec.extra_args = vec!["--no-rng".into()];
        let run = boot_moat(&vmm, &spec).expect("boot");
        assert_eq!(run.status, Some(0), "{}", run.describe());
        assert_ne!(
            console_value(&run.serial, "rng_current"),
            Some("virtio_rng.0"),
            "{}",
            run.describe()
        );
    });
}

#[test]
fn virtio_blk_reads_writes_and_enforces_read_only() {
    let image = image();
    // 4 MiB of a non-trivial pattern for the read-only disk, zeros for the writable one.
    let pattern: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // Inside the test host, use the images the outer run made (shared read-write).
    // Removed on drop; none inside the test host, which uses the outer run's.
    let (_scratch, dir) = match std::env::var_os(DISK_DIR_ENV) {
        Some(dir) => (None, PathBuf::from(dir)),
        None => {
            let scratch = scratch_dir("blk");
            let dir = scratch.path().to_path_buf();
            std::fs::write(dir.join("vda.img"), &pattern).expect("vda");
            std::fs::write(dir.join("vdb.img"), vec![0u8; 1 << 20]).expect("vdb");
            (Some(scratch), dir)
        }
    };
    let vda = dir.join("vda.img");
    let vdb = dir.join("vdb.img");
    let host = TestHost::builder().rw_dir(&dir).env(DISK_DIR_ENV, &dir);
    let (vda_in, vdb_in) = (vda.clone(), vdb.clone());
    moat_tests::on_kvm_with(
        "virtio_blk_reads_writes_and_enforces_read_only",
        host,
        move || {
            let vmm = moat_tests::cargo_bin("moat-vmm");
            let mut spec = BootSpec::new(image);
            spec.append = "-- blk".into();
            spec.extra_args = vec![
                format!("--block={},ro", vda_in.display()),
                format!("--block={}", vdb_in.display()),
            ];
            let run = boot_moat(&vmm, &spec).expect("boot");
            assert_eq!(run.status, Some(0), "{}", run.describe());
            let d = run.describe();
            assert_eq!(
                console_value(&run.serial, "vda_sha256"),
                Some(sha256_hex(&vda_in).as_str()),
                "{d}"
            );
            let serial = console_value(&run.serial, "vda_serial").unwrap_or_default();
            assert!(serial.starts_with("moat-"), "{d}");
            assert_eq!(console_value(&run.serial, "ro"), Some("1,0"), "{d}");
            assert_eq!(console_value(&run.serial, "vdb_write"), Some("0"), "{d}");
            assert_ne!(console_value(&run.serial, "vda_write"), Some("0"), "{d}");
        },
    );
    // Back on the host (the file is shared read-write with the test host).
    let written = std::fs::read(&vdb).expect("read vdb");
    assert!(
        written.starts_with(b"moat-blk-marker\n"),
        "marker not in the host file: {:?}",
        &written[..32]
    );
    assert!(written[16..512].iter().all(|&b| b == 0));
    assert!(
        std::fs::read(&vda).expect("read vda") == pattern,
        "read-only disk changed"
    );
}
