//! Per-thread seccomp filters, as Firecracker does them: each kind of VMM thread gets its own
//! allow-list ([`allow`]: data, one line per syscall and why), compiled by `seccompiler` and
//! installed by the thread itself before the first guest instruction runs.
//!
//! A syscall outside a thread's list: in [`SeccompMode::Enforce`] the kernel traps it
//! (`SECCOMP_RET_TRAP`, the syscall is *not* run) and `sigsys_handler` writes
//! `moat-vmm: stopped by its seccomp filter: syscall N (name) on thread T` to stderr and ends
//! the whole process with [`EXIT_SECCOMP`]. No list allows `rt_sigaction`, so the handler
//! cannot be replaced, and a SIGSYS that is blocked or ignored is delivered with its default
//! action (the kernel forces it): the process dies either way. In [`SeccompMode::Log`] the
//! kernel allows the call and logs it (audit `type=1326`).

pub mod allow;

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::config::status::EXIT_SECCOMP;
use crate::config::SeccompMode;
pub use allow::{syscall_name, Allow, Arg};

/// The kinds of VMM threads, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: `KVM_RUN` and the device exits it handles inline.
    Vcpu,
    /// The main thread: the event loop and every device backend (virtio-fs included).
    Vmm,
}

impl ThreadKind {
    /// The thread kind's allow-list.
    pub fn allow_list(self) -> Vec<Allow> {
        let own = match self {
            ThreadKind::Vcpu => allow::VCPU,
            ThreadKind::Vmm => allow::VMM,
        };
        allow::COMMON.iter().chain(own).cloned().collect()
    }

    /// The name the SIGSYS message uses.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Vmm => "vmm",
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allow-list does not compile (a bad argument check).
    #[error("the {kind} seccomp filter does not compile: {why}")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's error.
        why: String,
    },
    /// The kernel refused the filter.
    #[error("installing the {kind} seccomp filter: {source}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// The kernel's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// Compiles `kind`'s filter for `mode` (`None` for [`SeccompMode::Off`]).
pub fn program(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |why: String| SeccompError::Build {
        kind: kind.name(),
        why,
    };
    // `None`: allowed with any arguments; `Some(rules)`: allowed when one rule holds.
    let mut by_nr: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for a in kind.allow_list() {
        let conds = a
            .when
            .iter()
            .map(Arg::condition)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build(format!("{} ({}): {e}", a.nr, a.why)))?;
        let slot = by_nr.entry(a.nr).or_insert_with(|| Some(Vec::new()));
        match (conds.is_empty(), slot.as_mut()) {
            (true, _) => *slot = None,
            (false, Some(rules)) => {
                rules.push(SeccompRule::new(conds).map_err(|e| build(e.to_string()))?)
            }
            (false, None) => {}
        }
    }
    let rules = by_nr
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| build(e.to_string()))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))?;
    Ok(Some(prog))
}

thread_local! {
    /// This thread's kind, for the SIGSYS message (const-initialised: safe to read in a
    /// signal handler).
    static KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Installs `kind`'s filter on the calling thread (no-op for [`SeccompMode::Off`]); also
/// sets `no_new_privs`, which seccomp needs.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(prog) = program(kind, mode)? else {
        return Ok(());
    };
    KIND.with(|k| k.set(kind.name()));
    seccompiler::apply_filter(&prog).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })
}

/// Installs `sigsys_handler` for the process (before any filter; no filter allows
/// changing it afterwards).
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: an all-zero sigaction is a valid initial value; the fields set below are the
    // handler (an extern "C" fn with the SA_SIGINFO signature) and flags.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
        sigsys_handler;
    act.sa_sigaction = handler as libc::sighandler_t;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sigemptyset initialises the mask inside the valid struct.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: installs a handler that only reads its arguments, formats on the stack and
    // calls write(2) and _exit(2).
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: i32 = 1;
/// Offset of `si_syscall` in an x86_64 `siginfo_t` (after signo, errno, code, padding and
/// `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

/// The SIGSYS handler: says which syscall on which thread kind broke the filter, then ends
/// the process with [`EXIT_SECCOMP`]. Async-signal-safe: no allocation, no locks.
extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let nr = if code == SYS_SECCOMP {
        // SAFETY: for SYS_SECCOMP the union holds the sigsys fields; si_syscall is an i32 at
        // this offset inside the (at least 128-byte) siginfo_t.
        unsafe {
            std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32)
        }
    } else {
        -1
    };
    let kind = KIND.with(|k| k.get());
    let mut buf = [0u8; 160];
    let len = format_violation(&mut buf, nr, kind);
    // SAFETY: write(2) from a valid buffer of `len` bytes, then _exit(2): both
    // async-signal-safe and allowed by every filter.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Writes the violation line into `buf` without allocating; returns its length.
fn format_violation(buf: &mut [u8], nr: i32, kind: &str) -> usize {
    let mut w = StackWriter { buf, len: 0 };
    let name = syscall_name(i64::from(nr)).unwrap_or("?");
    let _ = std::fmt::Write::write_fmt(
        &mut w,
        format_args!(
            "moat-vmm: stopped by its seccomp filter: syscall {nr} ({name}) on a {kind} thread\n"
        ),
    );
    w.len
}

/// A `fmt::Write` into a fixed buffer that truncates instead of failing.
struct StackWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for StackWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Arg {
    /// The seccompiler condition this check stands for.
    fn condition(&self) -> Result<SeccompCondition, seccompiler::BackendError> {
        let (len, op, value) = match *self {
            Arg::Eq(_, v) if v <= u64::from(u32::MAX) => {
                (SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
            }
            Arg::Eq(_, v) => (SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v),
            Arg::NoBits(_, mask) => (SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), 0),
        };
        SeccompCondition::new(self.index(), len, op, value)
    }
}

#[cfg(test)]
mod tests;
