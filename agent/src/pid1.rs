//! Duties of the agent as the guest's PID 1: the base filesystems, the console, the boot-timer
//! signal to moat-vmm, and rebooting (never exiting) when the agent stops.
//!
//! These run before logging is set up (logging needs `/dev/console` and `/proc/cmdline`), so
//! each step returns its outcome for `main` to log.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

use nix::errno::Errno;
use nix::mount::MsFlags;

/// Guest-physical address of moat-vmm's boot timer device (`devices/boot_timer.rs`).
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// The byte that tells moat-vmm "/init is running" (Firecracker's convention).
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// One filesystem PID 1 mounts.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    /// Filesystem type, also used as the source.
    pub fstype: &'static str,
    /// Mount point (created if missing).
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: &'static str,
    /// Whether the agent cannot work without it (a failure stops boot).
    pub essential: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What PID 1 mounts, in order (each target's parent comes first).
pub const MOUNTS: &[MountSpec] = &[
    MountSpec {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        essential: true,
    },
    MountSpec {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        essential: true,
    },
    MountSpec {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        essential: true,
    },
    MountSpec {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        essential: false,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
        essential: false,
    },
    MountSpec {
        fstype: "mqueue",
        target: "/dev/mqueue",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        essential: false,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
        essential: false,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
        essential: false,
    },
    MountSpec {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        essential: false,
    },
];

/// The result of mounting one [`MountSpec`].
#[derive(Debug)]
pub enum MountOutcome {
    /// Mounted now.
    Mounted,
    /// Something was already mounted there (`EBUSY`).
    AlreadyMounted,
    /// Creating the mount point or mounting failed.
    Failed(io::Error),
}

/// Mounts one filesystem, creating its mount point first.
pub fn mount_one(spec: &MountSpec) -> MountOutcome {
    if let Err(e) = std::fs::create_dir_all(spec.target) {
        return MountOutcome::Failed(io::Error::new(
            e.kind(),
            format!("creating mount point {}: {e}", spec.target),
        ));
    }
    let data = (!spec.data.is_empty()).then_some(spec.data);
    match nix::mount::mount(
        Some(spec.fstype),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        data,
    ) {
        Ok(()) => MountOutcome::Mounted,
        Err(Errno::EBUSY) => MountOutcome::AlreadyMounted,
        Err(e) => MountOutcome::Failed(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Mounts every entry of [`MOUNTS`], returning each spec with its outcome.
pub fn mount_all() -> Vec<(&'static MountSpec, MountOutcome)> {
    MOUNTS.iter().map(|m| (m, mount_one(m))).collect()
}

/// Mounts the virtio-fs share `tag` at `mount_point` (created if missing), nosuid + nodev:
/// the share holds files from the host, never device nodes or setuid binaries for the guest.
pub fn mount_share(tag: &str, mount_point: &str) -> io::Result<()> {
    std::fs::create_dir_all(mount_point)?;
    nix::mount::mount(
        Some(tag),
        mount_point,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Makes sure fds 0, 1 and 2 are open, on `/dev/console` where the kernel left them closed
/// (an initramfs without a `/dev/console` node). Returns which fds were reopened.
pub fn ensure_console_fds() -> io::Result<Vec<i32>> {
    let missing: Vec<i32> = (0..=2)
        .filter(|&fd| {
            // SAFETY: F_GETFD on any integer is harmless; it only reports EBADF if not open.
            unsafe { libc::fcntl(fd, libc::F_GETFD) == -1 }
        })
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")?;
    for &fd in &missing {
        nix::unistd::dup2(console.as_raw_fd(), fd).map_err(io::Error::from)?;
    }
    // `console` itself closes here; the dup'ed fds stay.
    Ok(missing)
}

/// Writes [`BOOT_TIMER_MAGIC`] to the boot timer at [`BOOT_TIMER_ADDR`] through `/dev/mem`.
pub fn signal_boot_timer() -> io::Result<()> {
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC | libc::O_CLOEXEC)
        .open("/dev/mem")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/mem: {e}")))?;
    let len = 4096;
    // SAFETY: a fresh shared mapping of one page of /dev/mem; no Rust object aliases it.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            BOOT_TIMER_ADDR as libc::off_t,
        )
    };
    if page == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mmap of /dev/mem at {BOOT_TIMER_ADDR:#x}: {e}"),
        ));
    }
    // SAFETY: `page` is a valid writable mapping of `len` bytes; the write is an MMIO access.
    unsafe {
        std::ptr::write_volatile(page.cast::<u8>(), BOOT_TIMER_MAGIC);
        libc::munmap(page, len);
    }
    Ok(())
}

/// Ends the guest the way moat-vmm reads as a clean stop (exit status 0): sync, then
/// `reboot(RB_AUTOBOOT)`. PID 1 must never exit (the kernel would panic). Returns only if the
/// reboot call failed, with its error.
pub fn reboot() -> io::Error {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => io::Error::from_raw_os_error(e as i32),
    }
}
