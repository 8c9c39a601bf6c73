//! The allow-lists: one line per syscall (and argument check) with why the thread makes it.
//! A reviewer reads these tables; [`super::program`] compiles them. A syscall listed without
//! [`Arg`] checks is allowed with any arguments; several lines for one syscall are
//! alternatives; the checks of one line must all hold.

use std::mem::size_of;

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};

/// One allowed syscall (maybe only with certain arguments) and why.
#[derive(Clone, Copy, Debug)]
pub struct Allow {
    /// The syscall number (x86_64).
    pub nr: i64,
    /// Checks on its arguments, all of which must hold (none: any arguments).
    pub when: &'static [Arg],
    /// Why the thread makes it.
    pub why: &'static str,
}

/// A check on argument `index` (0-based) of a syscall.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// The argument equals the value (32-bit compare when the value fits).
    Eq(u8, u64),
    /// The argument has none of the mask's bits set.
    NoBits(u8, u64),
}

impl Arg {
    /// The argument index checked.
    pub fn index(&self) -> u8 {
        match *self {
            Arg::Eq(i, _) | Arg::NoBits(i, _) => i,
        }
    }
}

const fn any(nr: libc::c_long, why: &'static str) -> Allow {
    Allow { nr, when: &[], why }
}

const fn when(nr: libc::c_long, when: &'static [Arg], why: &'static str) -> Allow {
    Allow { nr, when, why }
}

/// `_IOC(dir, 0xAE (KVMIO), nr, size)`.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_READ: u64 = 2;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, size_of::<kvm_regs>());
/// `KVM_GET_SREGS`: `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub const KVM_GET_SREGS: u64 = kvm_ioc(IOC_READ, 0x83, size_of::<kvm_sregs>());
/// `KVM_GET_VCPU_EVENTS`: `_IOR(KVMIO, 0x9f, struct kvm_vcpu_events)`.
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>());

/// mmap/mprotect `prot` bit that no thread may ask for once the VM runs.
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// What every VMM thread does: memory, locks, time, logging, exit.
pub const COMMON: &[Allow] = &[
    any(
        libc::SYS_read,
        "eventfds, timerfds (metrics flush, vsock), the tap, sockets, files the VMM opened",
    ),
    any(
        libc::SYS_write,
        "eventfds (interrupts, kicks, and from the stop/SIGUSR1 handlers on any thread), the \
         console, logs on stderr",
    ),
    any(
        libc::SYS_futex,
        "Mutex/Condvar of device state shared between threads",
    ),
    when(
        libc::SYS_mmap,
        &[Arg::NoBits(2, PROT_EXEC)],
        "the allocator (never executable)",
    ),
    when(
        libc::SYS_mprotect,
        &[Arg::NoBits(2, PROT_EXEC)],
        "the allocator (never executable)",
    ),
    any(
        libc::SYS_munmap,
        "the allocator; thread exit frees its stacks",
    ),
    any(libc::SYS_mremap, "the allocator growing a large buffer"),
    any(libc::SYS_madvise, "the allocator returning memory"),
    any(libc::SYS_brk, "the allocator"),
    any(
        libc::SYS_clock_gettime,
        "timestamps when the vDSO falls back",
    ),
    any(libc::SYS_clock_nanosleep, "short sleeps while stopping"),
    any(libc::SYS_nanosleep, "short sleeps while stopping"),
    any(libc::SYS_sched_yield, "spin-wait backoff"),
    any(
        libc::SYS_rt_sigreturn,
        "return from the vCPU kick, stop-signal and metrics-flush (SIGUSR1) handlers",
    ),
    any(
        libc::SYS_rt_sigprocmask,
        "thread exit (glibc blocks signals)",
    ),
    any(
        libc::SYS_sigaltstack,
        "thread exit removes the signal stack",
    ),
    any(libc::SYS_gettid, "logging, thread exit"),
    any(libc::SYS_getpid, "pthread_kill (vCPU kick)"),
    any(libc::SYS_tgkill, "kick a vCPU out of KVM_RUN at stop"),
    any(libc::SYS_exit, "a thread ends"),
    any(
        libc::SYS_exit_group,
        "the VMM ends (also the SIGSYS handler)",
    ),
    any(libc::SYS_close, "closing fds the VMM opened"),
    when(
        libc::SYS_fcntl,
        &[Arg::Eq(1, libc::F_GETFD as u64)],
        "std checks that an fd is open before closing it (debug builds)",
    ),
    any(libc::SYS_fstat, "std's buffered reads"),
    any(libc::SYS_statx, "std's metadata and buffered reads"),
    any(libc::SYS_newfstatat, "metadata"),
    any(libc::SYS_lseek, "files the VMM opened"),
    any(
        libc::SYS_pread64,
        "metrics (own smaps through an fd opened before the jail)",
    ),
    any(libc::SYS_getrandom, "HashMap seeds; virtio-rng"),
];

/// The vCPU threads: KVM_RUN and what the exits they handle inline need (MMIO and port I/O
/// to devices, crash state).
pub const VCPU: &[Allow] = &[
    when(libc::SYS_ioctl, &[Arg::Eq(1, KVM_RUN)], "enter the guest"),
    when(
        libc::SYS_ioctl,
        &[Arg::Eq(1, KVM_GET_REGS)],
        "registers at a triple fault (log)",
    ),
    when(
        libc::SYS_ioctl,
        &[Arg::Eq(1, KVM_GET_SREGS)],
        "segments/CRs at a triple fault (log)",
    ),
    when(
        libc::SYS_ioctl,
        &[Arg::Eq(1, KVM_GET_VCPU_EVENTS)],
        "pending exception at a triple fault (log)",
    ),
];

/// The main thread: the event loop and every device backend (virtio-blk, -net, -rng,
/// -vsock and the virtio-fs server, which acts on the share as the guest's root).
pub const VMM: &[Allow] = &[
    any(libc::SYS_epoll_wait, "the event loop"),
    any(libc::SYS_epoll_pwait, "the event loop"),
    any(
        libc::SYS_epoll_ctl,
        "devices (de)registering fds (vsock streams, the tap)",
    ),
    any(
        libc::SYS_timerfd_settime,
        "vsock handshake timeouts (the metrics timer is armed before the filter)",
    ),
    any(libc::SYS_readv, "virtio-net TX/RX, vsock"),
    any(libc::SYS_writev, "virtio-net TX, vsock"),
    any(
        libc::SYS_pwrite64,
        "virtio-blk writes; the metrics file, rewritten in place at offset 0",
    ),
    any(
        libc::SYS_preadv,
        "virtio-blk/virtio-fs reads into guest buffers",
    ),
    any(
        libc::SYS_pwritev,
        "virtio-blk/virtio-fs writes from guest buffers",
    ),
    any(libc::SYS_preadv2, "virtio-fs reads"),
    any(libc::SYS_pwritev2, "virtio-fs writes"),
    any(libc::SYS_fsync, "virtio-blk FLUSH, virtio-fs FSYNC"),
    any(libc::SYS_fdatasync, "virtio-blk FLUSH, virtio-fs FSYNC"),
    // vsock: the hybrid unix-socket backend.
    when(
        libc::SYS_socket,
        &[Arg::Eq(0, libc::AF_UNIX as u64)],
        "vsock: connect to <uds>_<port>",
    ),
    any(libc::SYS_connect, "vsock: connect to <uds>_<port>"),
    any(
        libc::SYS_accept4,
        "vsock: accept CONNECT streams on the listener",
    ),
    any(libc::SYS_recvfrom, "vsock streams"),
    any(libc::SYS_sendto, "vsock streams"),
    any(libc::SYS_recvmsg, "vsock streams"),
    any(libc::SYS_sendmsg, "vsock streams"),
    any(libc::SYS_shutdown, "vsock: RST/SHUTDOWN from the guest"),
    any(libc::SYS_poll, "std's socket helpers"),
    any(libc::SYS_getsockopt, "vsock: connect errors"),
    when(
        libc::SYS_ioctl,
        &[Arg::Eq(1, libc::FIONBIO)],
        "std set_nonblocking on streams",
    ),
    when(
        libc::SYS_ioctl,
        &[Arg::Eq(1, libc::FIOCLEX)],
        "std close-on-exec on new fds",
    ),
    any(libc::SYS_fcntl, "fd flags (vsock streams, virtio-fs)"),
    any(libc::SYS_dup, "virtio-fs handles"),
    // virtio-fs (fuse-backend-rs PassthroughFs), confined to the share by fd-relative calls.
    any(
        libc::SYS_openat,
        "virtio-fs lookups/opens relative to inode fds (the metrics file is opened before)",
    ),
    any(libc::SYS_mkdirat, "virtio-fs MKDIR"),
    any(
        libc::SYS_mknodat,
        "virtio-fs MKNOD (FIFOs, sockets; devices refused before)",
    ),
    any(
        libc::SYS_unlinkat,
        "virtio-fs UNLINK/RMDIR; the vsock socket at teardown",
    ),
    any(libc::SYS_unlink, "the vsock socket at teardown"),
    any(libc::SYS_renameat2, "virtio-fs RENAME"),
    any(libc::SYS_linkat, "virtio-fs LINK"),
    any(libc::SYS_symlinkat, "virtio-fs SYMLINK"),
    any(libc::SYS_readlinkat, "virtio-fs READLINK"),
    any(libc::SYS_fchownat, "virtio-fs SETATTR (owner)"),
    any(libc::SYS_fchown, "virtio-fs SETATTR (owner)"),
    any(libc::SYS_fchmodat, "virtio-fs SETATTR (mode)"),
    any(libc::SYS_fchmod, "virtio-fs SETATTR (mode)"),
    any(libc::SYS_utimensat, "virtio-fs SETATTR (times)"),
    any(
        libc::SYS_ftruncate,
        "virtio-fs SETATTR (size); the metrics file, cut to its new document's length",
    ),
    any(libc::SYS_fallocate, "virtio-fs FALLOCATE"),
    any(libc::SYS_getdents64, "virtio-fs READDIR"),
    any(libc::SYS_fstatfs, "virtio-fs STATFS"),
    any(
        libc::SYS_umask,
        "virtio-fs CREATE/MKDIR apply the guest's umask",
    ),
    any(
        libc::SYS_setresuid,
        "virtio-fs acts as the requesting guest uid (per thread)",
    ),
    any(
        libc::SYS_setresgid,
        "virtio-fs acts as the requesting guest gid (per thread)",
    ),
    any(libc::SYS_getuid, "virtio-fs"),
    any(libc::SYS_getgid, "virtio-fs"),
    any(libc::SYS_geteuid, "virtio-fs"),
    any(libc::SYS_getegid, "virtio-fs"),
    any(libc::SYS_copy_file_range, "virtio-fs COPY_FILE_RANGE"),
];

/// The name of syscall `nr` (x86_64), for messages.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u32::try_from(nr).ok()?;
    syscalls::Sysno::new(nr as usize).map(|s| s.name())
}
