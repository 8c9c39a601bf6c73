//! OCI seccomp profiles (`linux.seccomp`) compiled to classic BPF, and their installation.
//!
//! The agent compiles a container's profile at CreateContainer time ([`compile`]), so a bad
//! profile is an RPC error before anything is spawned; the [`SeccompProgram`] travels
//! (serde) to the container's init process, which installs it right before `execve`
//! ([`apply`]). Without a `linux.seccomp` in the spec a container runs unfiltered, as the
//! spec says and runc does (the VM is the boundary), unless the shim asks for moat's
//! built-in [default profile](default_profile) for such specs. A profile with `defaultAction: SCMP_ACT_ALLOW` and no
//! rule that does anything else compiles to nothing: that is how "unconfined" is spelt.
//!
//! # Semantics
//!
//! libseccomp's, as runc drives it:
//! - `defaultAction` is what a syscall that no rule matches gets. `SCMP_ACT_KILL` is
//!   `SCMP_ACT_KILL_THREAD`; `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` take `errnoRet` /
//!   `defaultErrnoRet` (EPERM when absent; at most 65535). `SCMP_ACT_NOTIFY` is refused.
//! - A rule's `args` are ANDed; if any argument index appears more than once, every
//!   condition becomes a rule of its own (ORed), as runc does. Comparisons are 64-bit and
//!   unsigned; `SCMP_CMP_MASKED_EQ` is `(arg & value) == valueTwo` (a missing `valueTwo` is
//!   0, and a `valueTwo` with bits outside the mask never matches). A non-zero `valueTwo`
//!   with any other operator is refused.
//! - Rules whose action equals the default action are redundant and skipped (as runc does).
//! - Syscall names unknown on x86_64 (`stime`, `vm86`, `chown32`, ...) are skipped.
//! - `architectures` must be empty or list `SCMP_ARCH_X86_64` (or `SCMP_ARCH_NATIVE`); other
//!   entries (`SCMP_ARCH_X86`, `SCMP_ARCH_X32`, ...) are ignored. Syscalls of any other ABI
//!   (i386 `int 0x80`, x32: numbers with bit 30 set) kill the process, as libseccomp's
//!   default bad-architecture action does.
//! - runc's `-ENOSYS` stub: when the default action is not ALLOW, LOG or TRACE, a syscall
//!   numbered above the largest one the profile names gets `ENOSYS`, so that libc falls back
//!   from syscalls newer than the profile instead of failing on the default `EPERM`.
//! - `flags`: `SECCOMP_FILTER_FLAG_LOG`, `_SPEC_ALLOW` and `_TSYNC` are passed to seccomp(2);
//!   `_WAIT_KILLABLE_RECV` (a NOTIFY flag) and `listenerPath` are refused.
//!
//! # Several actions: one program of sections
//!
//! A seccompiler filter has one match and one mismatch action. The kernel, when several
//! filters are installed, runs them all and takes the result of highest precedence
//! (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > TRACE > LOG > ALLOW), so a profile maps to
//! a set of filters:
//! - base (only when the default is not ALLOW): mismatch = default, match = ALLOW, with the
//!   rules of every action;
//! - one per distinct non-ALLOW rule action (per errno value, per trace value): mismatch =
//!   ALLOW, match = that action, with that action's rules.
//!
//! A call no rule matches gets the default from the base filter and ALLOW from the others; a
//! call that matches a rule of action A gets ALLOW from the base filter and A from A's: so
//! default ERRNO + ALLOW rules, default ALLOW + ERRNO rules, default KILL + LOG rules all
//! behave as with libseccomp.
//!
//! Rather than installing these as separate filters (each later seccomp(2) call would have
//! to get past the filters already installed, which an allow-list without `seccomp` forbids),
//! they are concatenated into one program, highest precedence first, each filter's
//! `ret ALLOW` turned into a jump to the next one (same length, so no other jump moves): the
//! first non-ALLOW result is the one of highest precedence, as in the kernel's stacking. The
//! program must therefore fit the kernel's 4096 instructions (Docker's default profile takes
//! about 2000). It starts with seccompiler's architecture check, then kills x32 syscalls and
//! applies the ENOSYS stub.
//!
//! The one deviation from libseccomp: a call that matches rules of two different actions
//! (say an unconditional ALLOW and a conditional ERRNO) gets the higher-precedence action;
//! between two ERRNO (or TRACE) values, the rule listed first in the profile wins.
//! libseccomp resolves such overlaps by its own internal rule order.

mod default_profile;
mod filters;
#[cfg(test)]
mod tests;

use std::io;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
use serde::{Deserialize, Serialize};
use syscalls::x86_64::Sysno;
use tracing::debug;

use self::filters::{Action, Profile, Rule};

/// The seccomp return data for an `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE` without `errnoRet`.
const DEFAULT_ERRNO: u16 = libc::EPERM as u16;

/// One classic BPF instruction, `struct sock_filter`: (code, jt, jf, k).
pub type BpfInsn = (u16, u8, u8, u32);

/// A compiled profile: the BPF filters to install, in order (moat's compiler produces one),
/// and the seccomp(2) flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    filters: Vec<Vec<BpfInsn>>,
    flags: u32,
}

impl SeccompProgram {
    /// The filters, in installation order (each non-empty, at most 4096 instructions).
    #[cfg(test)]
    pub fn filters(&self) -> &[Vec<BpfInsn>] {
        &self.filters
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits passed to seccomp(2) with every filter.
    #[cfg(test)]
    pub fn flags(&self) -> u32 {
        self.flags
    }
}

/// Why a profile does not compile or a program does not install.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An action moat cannot carry out (`SCMP_ACT_NOTIFY`).
    #[error("{field}: {action} is not supported (moat has no seccomp user-notification agent)")]
    UnsupportedAction {
        /// Where in the spec, e.g. `linux.seccomp.syscalls[2].action`.
        field: String,
        /// The action as the spec spells it.
        action: String,
    },
    /// An `errnoRet`/`defaultErrnoRet` that does not fit seccomp's 16 bits of return data.
    #[error("{field}: {value} does not fit seccomp's 16-bit return data (at most 65535)")]
    ErrnoRange {
        /// Where in the spec.
        field: String,
        /// The value given.
        value: u32,
    },
    /// A syscall argument index outside 0..=5.
    #[error("{field}: argument index {index} is out of range (syscalls have arguments 0 to 5)")]
    ArgIndex {
        /// Where in the spec.
        field: String,
        /// The index given.
        index: usize,
    },
    /// A non-zero `valueTwo` with an operator that has no second operand.
    #[error("{field}: valueTwo {value_two:#x} is only used by SCMP_CMP_MASKED_EQ, not {op}")]
    ValueTwo {
        /// Where in the spec.
        field: String,
        /// The operator given.
        op: String,
        /// The stray second operand.
        value_two: u64,
    },
    /// `architectures` lists architectures, none of them x86_64.
    #[error(
        "linux.seccomp.architectures: [{archs}] does not include SCMP_ARCH_X86_64, \
         the only architecture of moat's guest"
    )]
    Architecture {
        /// The architectures given, comma-separated.
        archs: String,
    },
    /// A filter flag moat does not support.
    #[error("linux.seccomp.flags: {flag} is not supported: {why}")]
    Flag {
        /// The flag as the spec spells it.
        flag: String,
        /// Why.
        why: &'static str,
    },
    /// `listenerPath` is set: user notification is not supported.
    #[error(
        "linux.seccomp.listenerPath {path:?}: SCMP_ACT_NOTIFY listeners are not supported by moat"
    )]
    Listener {
        /// The path given.
        path: String,
    },
    /// seccompiler refused a filter.
    #[error("compiling seccomp filter {filter}: {source}")]
    Build {
        /// Which filter (base, or the action of the rule group).
        filter: String,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// A filter longer than the kernel accepts (4096 instructions).
    #[error(
        "seccomp filter {filter} has {len} BPF instructions, the kernel accepts at most 4096: \
         the profile has too many rules"
    )]
    FilterTooLarge {
        /// Which filter.
        filter: String,
        /// Its length.
        len: usize,
    },
    /// seccompiler produced a filter whose architecture prologue is not the one expected.
    #[error("seccomp filter {filter}: unexpected BPF prologue from seccompiler")]
    UnexpectedBpf {
        /// Which filter.
        filter: String,
    },
    /// A program (received over the wire) with an empty or oversized filter.
    #[error("seccomp program: filter {index} has {len} instructions (must be 1 to 4096)")]
    InvalidProgram {
        /// Index of the filter.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// seccomp(2) failed. EACCES means neither no_new_privs nor CAP_SYS_ADMIN.
    #[error("installing seccomp filter {index} of {count}: {source}")]
    Install {
        /// Index of the filter that failed (the ones before it are installed).
        index: usize,
        /// How many filters the program has.
        count: usize,
        /// The error from seccomp(2).
        #[source]
        source: io::Error,
    },
    /// seccomp(2) with SECCOMP_FILTER_FLAG_TSYNC could not synchronize a thread.
    #[error("installing seccomp filter {index}: TSYNC could not synchronize thread {tid}")]
    ThreadSync {
        /// Index of the filter.
        index: usize,
        /// The thread that could not be synchronized.
        tid: libc::c_long,
    },
}

/// Compiles a container's `linux.seccomp` into BPF.
///
/// `None` (the spec has no seccomp) means no filter, as the spec says and runc does, unless
/// `default_for_none` asks for moat's default profile then (the shim's `[container]
/// default_seccomp`). `Ok(None)` means there is nothing to install (an unconfined profile).
pub fn compile(
    profile: Option<&LinuxSeccomp>,
    default_for_none: bool,
) -> Result<Option<SeccompProgram>, SeccompError> {
    let profile = match profile {
        Some(oci) => from_oci(oci)?,
        None if default_for_none => default_profile::profile(),
        None => {
            debug!("the spec has no seccomp profile: no filter to install");
            return Ok(None);
        }
    };
    let filters = filters::build(&profile)?;
    if filters.is_empty() {
        debug!("seccomp profile allows every syscall: no filter to install");
        return Ok(None);
    }
    Ok(Some(SeccompProgram {
        filters,
        flags: profile.flags,
    }))
}

/// Installs a program's filters in the calling thread, in order, with seccomp(2).
///
/// The caller must have set no_new_privs (`PR_SET_NO_NEW_PRIVS`) or hold CAP_SYS_ADMIN:
/// this function does not set no_new_privs itself, since `process.noNewPrivileges` is the
/// spec's decision (without it, install the filters before dropping capabilities). Every
/// syscall the caller makes afterwards, `execve` included, is filtered. If a filter fails,
/// the ones before it stay installed.
pub fn apply(prog: &SeccompProgram) -> Result<(), SeccompError> {
    Prepared::new(prog)?.install()
}

/// A program in the kernel's layout, ready to install without allocating (so that it can be
/// installed in a child forked from a multi-threaded process).
struct Prepared {
    filters: Vec<Vec<libc::sock_filter>>,
    flags: libc::c_ulong,
}

impl Prepared {
    /// Converts and checks the filters of `prog`.
    fn new(prog: &SeccompProgram) -> Result<Self, SeccompError> {
        let mut filters = Vec::with_capacity(prog.filters.len());
        for (index, filter) in prog.filters.iter().enumerate() {
            if filter.is_empty() || filter.len() > filters::BPF_MAX_LEN {
                return Err(SeccompError::InvalidProgram {
                    index,
                    len: filter.len(),
                });
            }
            filters.push(
                filter
                    .iter()
                    .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
                    .collect(),
            );
        }
        Ok(Prepared {
            filters,
            flags: prog.flags.into(),
        })
    }

    /// Installs the filters; makes no allocation.
    fn install(&self) -> Result<(), SeccompError> {
        let count = self.filters.len();
        for (index, filter) in self.filters.iter().enumerate() {
            let fprog = libc::sock_fprog {
                // Checked in `new`: 1..=4096.
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr().cast_mut(),
            };
            // SAFETY: `fprog` points to `filter`, alive for the call; the kernel copies it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    self.flags,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc < 0 {
                let source = io::Error::last_os_error();
                return Err(SeccompError::Install {
                    index,
                    count,
                    source,
                });
            }
            if rc > 0 {
                return Err(SeccompError::ThreadSync { index, tid: rc });
            }
        }
        Ok(())
    }
}

/// Checks an OCI profile and turns it into moat's rule list.
fn from_oci(oci: &LinuxSeccomp) -> Result<Profile, SeccompError> {
    if let Some(path) = oci.listener_path() {
        if !path.as_os_str().is_empty() {
            return Err(SeccompError::Listener {
                path: path.display().to_string(),
            });
        }
    }
    check_architectures(oci.architectures().as_deref().unwrap_or_default())?;
    let flags = filter_flags(oci.flags().as_deref().unwrap_or_default())?;
    let default = action(
        oci.default_action(),
        oci.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;

    let mut rules = Vec::new();
    let mut largest_nr: Option<u32> = None;
    for (i, call) in oci.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let action = action(
            call.action(),
            call.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let alternatives = conditions(call.args().as_deref().unwrap_or_default(), &field)?;
        for name in call.names() {
            let Ok(sysno) = name.parse::<Sysno>() else {
                debug!("{field}: syscall {name:?} is unknown on x86_64, skipped");
                continue;
            };
            // Sysno ids are small and non-negative (0..=~470).
            let nr = sysno.id() as u32;
            largest_nr = Some(largest_nr.map_or(nr, |n| n.max(nr)));
            if action == default {
                continue;
            }
            for conds in &alternatives {
                rules.push(Rule {
                    nr: nr.into(),
                    action,
                    conds: conds.clone(),
                });
            }
        }
    }
    let enosys_above = match default {
        Action::Allow | Action::Log | Action::Trace(_) => None,
        _ => largest_nr,
    };
    Ok(Profile {
        default,
        rules,
        flags,
        enosys_above,
    })
}

/// Accepts an empty list or one with x86_64; logs what it ignores.
fn check_architectures(archs: &[Arch]) -> Result<(), SeccompError> {
    if archs.is_empty() {
        return Ok(());
    }
    let native = |a: &Arch| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative);
    if !archs.iter().any(native) {
        let archs = archs.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        return Err(SeccompError::Architecture {
            archs: archs.join(", "),
        });
    }
    for arch in archs.iter().filter(|a| !native(a)) {
        debug!(
            "linux.seccomp.architectures: {arch} ignored (x86_64 only); its syscalls are killed"
        );
    }
    Ok(())
}

/// The seccomp(2) flag bits of the spec's `flags`.
fn filter_flags(flags: &[LinuxSeccompFilterFlag]) -> Result<u32, SeccompError> {
    let mut bits = 0;
    for flag in flags {
        bits |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::Flag {
                    flag: flag.to_string(),
                    why: "it only applies to SCMP_ACT_NOTIFY, which moat does not support",
                })
            }
        };
    }
    // The three flags are bits 0..=2.
    Ok(bits as u32)
}

/// An OCI action (with its errno/trace data) as a filter action.
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<Action, SeccompError> {
    let data = || match errno_ret {
        None => Ok(DEFAULT_ERRNO),
        Some(value) => u16::try_from(value).map_err(|_| SeccompError::ErrnoRange {
            field: errno_field.to_string(),
            value,
        }),
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActErrno => Action::Errno(data()?),
        LinuxSeccompAction::ScmpActTrace => Action::Trace(data()?),
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction {
                field: field.to_string(),
                action: action.to_string(),
            })
        }
    })
}

/// A rule's `args` as alternatives (ORed) of condition sets (ANDed). No args: one empty set
/// (unconditional). No alternative at all: the rule can never match.
fn conditions(
    args: &[LinuxSeccompArg],
    field: &str,
) -> Result<Vec<Vec<SeccompCondition>>, SeccompError> {
    let mut conds = Vec::with_capacity(args.len());
    let mut seen = [0usize; 6];
    for (j, arg) in args.iter().enumerate() {
        let cond = condition(arg, &format!("{field}.args[{j}]"))?;
        seen[arg.index()] += 1;
        conds.push(cond);
    }
    if seen.iter().any(|&n| n > 1) {
        // runc: conditions on a repeated index each make a rule of their own.
        return Ok(conds.into_iter().flatten().map(|c| vec![c]).collect());
    }
    match conds.into_iter().collect::<Option<Vec<_>>>() {
        Some(all) => Ok(vec![all]),
        None => {
            debug!("{field}: a SCMP_CMP_MASKED_EQ can never match, rule skipped");
            Ok(Vec::new())
        }
    }
}

/// One OCI argument comparison; `None` when it can never match.
fn condition(arg: &LinuxSeccompArg, field: &str) -> Result<Option<SeccompCondition>, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|&i| i <= 5)
        .ok_or_else(|| SeccompError::ArgIndex {
            field: format!("{field}.index"),
            index: arg.index(),
        })?;
    let value = arg.value();
    if arg.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
        if let Some(value_two) = arg.value_two().filter(|&v| v != 0) {
            return Err(SeccompError::ValueTwo {
                field: format!("{field}.valueTwo"),
                op: arg.op().to_string(),
                value_two,
            });
        }
    }
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, value),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, value),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, value),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, value),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, value),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, value),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let datum = arg.value_two().unwrap_or(0);
            if datum & !value != 0 {
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(value), datum)
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map(Some)
        .map_err(|source| SeccompError::Build {
            filter: field.to_string(),
            source,
        })
}
