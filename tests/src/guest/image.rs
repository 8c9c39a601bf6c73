//! The guest images the tests boot: the guest kernel with either moat-agent's initramfs or a
//! busybox test initramfs whose `/init` (`GUEST_INIT`) runs what the kernel command line
//! asks, optionally with static guest tools packed in.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use super::cpio::{self, Archive};
use super::GuestError;

/// Line the test /init prints once it runs (after signalling the boot timer).
pub const INIT_MARKER: &str = "moat-test-init: reached /init";

/// The test /init: mount devtmpfs, write the boot-timer magic (123 at 0xd000_0000), print
/// the marker, run what the kernel command line asks after `--`, and stop the VM.
/// `vsock-echo` (image from [`GuestImage::with_vsock_echo`]) serves an AF_VSOCK echo on port
/// [`VSOCK_ECHO_PORT`] (an optional second argument caps its write size) and keeps the VM
/// up for an hour, until the host stops it. `script PATH ARGS...` runs a shell script a
/// test packed into the image (see [`test_initramfs_with`]), then stops the VM.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox devmem 0xd0000000 8 123
echo "moat-test-init: reached /init"
echo "moat-test-init: args: $*; cmdline: $(/bin/busybox cat /proc/cmdline)"
case "$1" in
  hello) echo "hello from a microVM: $(/bin/busybox uname -sr), $(/bin/busybox nproc) vCPU" ;;
  exit) echo "moat-test-init: exiting PID 1"; exit 1 ;;
  info) echo "cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)"
        echo "mem=$(/bin/busybox grep MemTotal /proc/meminfo)"
        echo "clocksource=$(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)" ;;
  rng) echo "rng_current=$(/bin/busybox cat /sys/class/misc/hw_random/rng_current)"
       echo "rng_bytes=$(/bin/busybox dd if=/dev/hwrng bs=64 count=1 2>/dev/null | /bin/busybox od -An -tx1 | /bin/busybox tr -d ' \n')" ;;
  blk) echo "vda_sha256=$(/bin/busybox sha256sum /dev/vda | /bin/busybox cut -d' ' -f1)"
       echo "vda_serial=$(/bin/busybox cat /sys/block/vda/serial)"
       echo "ro=$(/bin/busybox cat /sys/block/vda/ro),$(/bin/busybox cat /sys/block/vdb/ro)"
       echo "moat-blk-marker" | /bin/busybox dd of=/dev/vdb bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null
       echo "vdb_write=$?"
       echo "moat-blk-marker" | /bin/busybox dd of=/dev/vda bs=512 count=1 conv=sync,notrunc,fsync 2>&1
       echo "vda_write=$?" ;;
  virtiofs) /bin/busybox mkdir -p /mnt
       /bin/busybox mount -t virtiofs moatfs /mnt; echo "fs_mount=$?"
       echo "fs_hello=$(/bin/busybox cat /mnt/hello.txt)"
       echo "moat-from-guest" > /mnt/from-guest.txt; echo "fs_write=$?"
       echo "fs_link=$(/bin/busybox cat /mnt/link-to-secret 2>&1)"
       echo "fs_dotdot=$(/bin/busybox cat /mnt/../secret 2>&1)"
       echo "fs_ls=$(/bin/busybox ls -a /mnt/.. /mnt | /bin/busybox tr '\n' ' ')"
       /bin/busybox umount /mnt; echo "fs_umount=$?" ;;
  script) shift; /bin/busybox sh "$@" ;;
  vsock-echo) /bin/moat-vsock-echo 5000 $2 &
       /bin/busybox sleep 3600 ;;
esac
/bin/busybox reboot -f
"#;

/// The AF_VSOCK port the `vsock-echo` init case serves `moat-vsock-echo` on.
pub const VSOCK_ECHO_PORT: u32 = 5000;

/// Where `moat-vsock-echo` lands in the image from [`GuestImage::with_vsock_echo`].
pub const VSOCK_ECHO_GUEST_PATH: &str = "bin/moat-vsock-echo";

/// A kernel plus the test initramfs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The guest vmlinux.
    pub kernel: PathBuf,
    /// The test initramfs (cpio.gz).
    pub initrd: PathBuf,
}

impl GuestImage {
    /// The agent image: the guest kernel + the moat-agent initramfs (`agent/build-image.sh`).
    pub fn agent_image() -> Result<GuestImage, GuestError> {
        let kernel = crate::kernel_path("guest").map_err(GuestError::KernelMissing)?;
        let initrd = crate::agent_initramfs_path().map_err(GuestError::Initramfs)?;
        Ok(GuestImage { kernel, initrd })
    }

    /// The default image: `guest-kernel/build.sh --print-path guest` + the busybox initramfs.
    pub fn default_image() -> Result<GuestImage, GuestError> {
        let kernel = crate::kernel_path("guest").map_err(GuestError::KernelMissing)?;
        let initrd = test_initramfs(&crate::target_dir().join("moat-test-images"))?;
        Ok(GuestImage { kernel, initrd })
    }

    /// The default image plus the static `moat-vsock-echo` as `/bin/moat-vsock-echo` (boot
    /// it with `-- vsock-echo`). The tool comes from `$MOAT_VSOCK_ECHO_BIN` or
    /// `tests/scripts/build-guest-tools.sh --print-path`; build it with that script.
    pub fn with_vsock_echo() -> Result<GuestImage, GuestError> {
        let kernel = crate::kernel_path("guest").map_err(GuestError::KernelMissing)?;
        let tool = crate::vsock_echo_bin_path().map_err(GuestError::Initramfs)?;
        let bytes = std::fs::read(&tool)
            .map_err(|e| GuestError::Initramfs(format!("{}: {e}", tool.display())))?;
        let initrd = test_initramfs_with(
            &crate::target_dir().join("moat-test-images"),
            &[(VSOCK_ECHO_GUEST_PATH, bytes)],
        )?;
        Ok(GuestImage { kernel, initrd })
    }
}

/// The default image for a program named `prog`, or the exit code after reporting why not.
/// Programs call this before entering the test host (where the workspace is read-only).
pub fn default_image_for(prog: &str) -> Result<GuestImage, std::process::ExitCode> {
    GuestImage::default_image().map_err(|e| {
        eprintln!("{prog}: {e}");
        std::process::ExitCode::FAILURE
    })
}

/// Builds (once per content hash) the busybox test initramfs under `dir`.
pub fn test_initramfs(dir: &Path) -> Result<PathBuf, GuestError> {
    test_initramfs_with(dir, &[])
}

/// [`test_initramfs`] plus `extra_files`: (path inside the image under an existing top-level
/// directory such as `bin/`, contents) pairs, added as executable files. The cache name
/// hashes them too.
pub fn test_initramfs_with(
    dir: &Path,
    extra_files: &[(&str, Vec<u8>)],
) -> Result<PathBuf, GuestError> {
    let busybox = crate::testhost::initramfs::busybox_bytes()
        .map_err(|e| GuestError::Initramfs(e.to_string()))?;
    let mut h = DefaultHasher::new();
    GUEST_INIT.hash(&mut h);
    busybox.hash(&mut h);
    extra_files.hash(&mut h);
    let path = dir.join(format!("guest-test-{:016x}.cpio.gz", h.finish()));
    if path.exists() {
        return Ok(path);
    }
    let mut a = Archive::new();
    let err = |e: cpio::CpioError| GuestError::Initramfs(e.to_string());
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        a.dir(d, 0o755).map_err(err)?;
    }
    a.file("bin/busybox", 0o755, busybox).map_err(err)?;
    for (name, bytes) in extra_files {
        a.file(name, 0o755, bytes.clone()).map_err(err)?;
    }
    a.file("init", 0o755, GUEST_INIT.as_bytes().to_vec())
        .map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| GuestError::Initramfs(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    a.write_gzip_file(&tmp).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(|e| GuestError::Initramfs(e.to_string()))?;
    Ok(path)
}
