use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use super::*;

/// Runs `body` in a forked child with `kind`'s compiled filter applied first (and the SIGSYS
/// handler when `handler`); returns how the child ended.
fn in_filtered_child(kind: ThreadKind, handler: bool, body: fn()) -> libc::c_int {
    // Compile before fork: the child only applies it (no allocation after fork).
    let prog = program(kind, SeccompMode::Enforce).unwrap().unwrap();
    // SAFETY: the child only calls async-signal-safe functions (sigaction, prctl, seccomp,
    // raw syscalls) and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if handler {
            let _ = install_sigsys_handler();
        }
        if seccompiler::apply_filter(&prog).is_err() {
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(99) };
        }
        body();
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child into a valid int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

fn getppid() {
    // SAFETY: a raw syscall without pointers.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

#[test]
fn every_filter_compiles_in_each_mode() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Vmm] {
        assert!(program(kind, SeccompMode::Enforce).unwrap().is_some());
        assert!(program(kind, SeccompMode::Log).unwrap().is_some());
        assert!(program(kind, SeccompMode::Off).unwrap().is_none());
    }
}

#[test]
fn a_syscall_outside_the_list_kills_with_sigsys() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Vmm] {
        let status = in_filtered_child(kind, false, getppid);
        assert!(libc::WIFSIGNALED(status), "{kind:?}: status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{kind:?}");
    }
}

#[test]
fn the_handler_reports_and_exits_with_the_seccomp_status() {
    let status = in_filtered_child(ThreadKind::Vcpu, true, getppid);
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), EXIT_SECCOMP);
}

#[test]
fn listed_syscalls_still_work_under_the_filter() {
    fn allowed() {
        // SAFETY: raw syscalls without pointers into freed memory.
        unsafe {
            libc::syscall(libc::SYS_gettid);
            libc::syscall(libc::SYS_write, 2, b"".as_ptr(), 0);
        }
    }
    for kind in [ThreadKind::Vcpu, ThreadKind::Vmm] {
        let status = in_filtered_child(kind, true, allowed);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{kind:?}: {status:#x}"
        );
    }
}

/// The metrics file's fd for [`flush_metrics`] (opened before the fork).
static METRICS_FD: AtomicI32 = AtomicI32::new(-1);

/// What a metrics flush does to its file: `pwrite` at 0, `ftruncate` (raw: no allocation
/// after fork).
fn flush_metrics() {
    let fd = METRICS_FD.load(Ordering::SeqCst);
    let doc = b"{\"seq\": 2}\n";
    // SAFETY: raw syscalls on an fd the parent opened, from a valid buffer.
    unsafe {
        libc::syscall(libc::SYS_pwrite64, fd, doc.as_ptr(), doc.len(), 0);
        libc::syscall(libc::SYS_ftruncate, fd, doc.len());
    }
}

#[test]
fn a_metrics_flush_passes_the_vmm_filter_only() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    std::fs::write(&path, "an older, longer document\n").unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    METRICS_FD.store(file.as_raw_fd(), Ordering::SeqCst);
    let status = in_filtered_child(ThreadKind::Vmm, true, flush_metrics);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"seq\": 2}\n");
    // vCPU threads never write files.
    let status = in_filtered_child(ThreadKind::Vcpu, false, flush_metrics);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
}

#[test]
fn an_ioctl_outside_the_list_is_refused_on_a_vcpu_thread() {
    fn tiocsti() {
        // SAFETY: the filter stops the call before it runs.
        unsafe { libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSTI, 0) };
    }
    let status = in_filtered_child(ThreadKind::Vcpu, false, tiocsti);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
}

#[test]
fn no_list_allows_what_a_compromised_vmm_would_want() {
    let forbidden = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_kexec_load,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_rt_sigaction,
        libc::SYS_prctl,
        libc::SYS_seccomp,
        libc::SYS_open,
        libc::SYS_kill,
        libc::SYS_capset,
    ];
    for kind in [ThreadKind::Vcpu, ThreadKind::Vmm] {
        for a in kind.allow_list() {
            assert!(
                !forbidden.contains(&a.nr),
                "{kind:?} allows {:?}: {}",
                syscall_name(a.nr),
                a.why
            );
        }
    }
    // Files: only the main thread (devices) opens anything; vCPUs never.
    assert!(!ThreadKind::Vcpu
        .allow_list()
        .iter()
        .any(|a| a.nr == libc::SYS_openat));
    // Sockets: unix only.
    let socket = ThreadKind::Vmm
        .allow_list()
        .into_iter()
        .filter(|a| a.nr == libc::SYS_socket);
    for a in socket {
        assert!(matches!(a.when, [Arg::Eq(0, f)] if *f == libc::AF_UNIX as u64));
    }
}

#[test]
fn the_violation_line_names_the_syscall_and_thread() {
    let mut buf = [0u8; 160];
    let n = format_violation(&mut buf, 59, "vcpu");
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        "moat-vmm: stopped by its seccomp filter: syscall 59 (execve) on a vcpu thread\n"
    );
    let mut tiny = [0u8; 8];
    assert_eq!(format_violation(&mut tiny, 59, "vcpu"), 8);
}
